"""Attention kernels on this CPU: einfuse's TVM kernel vs torch SDPA vs onnxruntime.

    .venv/bin/python benchmarks/bench_attention.py                 # the full table (several minutes)
    .venv/bin/python benchmarks/bench_attention.py --quick         # small sizes, few runs
    .venv/bin/python benchmarks/bench_attention.py --prefill 512 2048 --decode 32768 --splits 16
    .venv/bin/python benchmarks/bench_attention.py --write         # also append "## Attention" to RESULTS.md

Contenders, at B=1, H=12, D=64, fp32, every one on --threads threads (2):
- einfuse: the einsum_cascade kernel of einfuse/codegen/tvm/attention.py (the one the TVM
  backend emits), 1-pass FlashAttention form; decode also with the kv split (kv_splits).
- torch: torch.nn.functional.scaled_dot_product_attention on CPU (torch.set_num_threads).
- ort: an onnxruntime graph MatMul(Q, K^T) -> Mul(scale) [-> Add(causal mask)] -> Softmax ->
  MatMul(V), all graph optimizations, intra_op_num_threads = --threads. It materialises the
  H x S x M logits, so sizes needing more than --ort-max-gb of them are skipped.
- ort-mha: onnxruntime's fused com.microsoft MultiHeadAttention (when it builds; causal via
  its unidirectional attribute).

Each contender is warmed up and timed in its own block (never interleaved), median over
--runs runs (fewer when one run takes long, at least 3). GFLOP/s uses 4*B*H*S*M*D for every
row (causal rows too, as is customary, so causal GFLOP/s are "effective"). Peak extra memory:
for einfuse, the workspace its TIR allocates (per-thread tiles x threads + split partials);
for every contender, the peak RSS growth over one call (/proc/self/status VmHWM after
resetting it through /proc/self/clear_refs), which also catches memory a native library
allocates (and, for torch and onnxruntime, the output they allocate on each call).
Extra decode rows with grouped-query attention (--gqa kv head counts; 1 = multi-query): the
kernel packs a group's query heads into one unit, so with few kv heads the split is what
keeps both threads busy.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Attention"

H, D = 12, 64
PREFILL = [128, 512, 2048, 8192]
DECODE = [2048, 8192, 32768]


# -- memory -----------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_growth(fn) -> int | None:
    """Bytes the process's peak RSS grows by while fn() runs (None if it cannot be measured)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - before) * 1024


# -- timing -----------------------------------------------------------------------------------


def time_block(fn, runs: int, budget_s: float) -> float:
    """Median seconds of fn() after two warm-up calls; fewer runs when a run is slow."""
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    n = max(3, min(runs, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    time.sleep(0.2)  # let the thread pool go idle before the next block
    return statistics.median(times)


# -- contenders -------------------------------------------------------------------------------


def einfuse_runner(q, k, v, causal: bool, splits: int, threads: int):
    from einfuse.codegen.tvm.attention import AttentionSpec, choose_tiling, compile_attention, workspace_bytes

    S, M = q.shape[2], k.shape[2]
    spec = AttentionSpec(
        B=1,
        Hq=q.shape[1],
        Hkv=k.shape[1],
        S=S,
        M=M,
        D=D,
        Dv=D,
        scale=D**-0.5,
        causal="bottom_right" if causal else "none",
        kv_splits=splits,
    )
    run = compile_attention(spec)
    out = np.zeros((1, q.shape[1], S, D), np.float32)  # touched now: its pages are not kernel memory
    info = {"workspace": workspace_bytes(run.func, threads), "splits": choose_tiling(spec).splits}
    return (lambda: run(q, k, v, out=out)), (lambda: out), info


def torch_runner(q, k, v, causal: bool, threads: int):
    import torch

    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    result = {}

    def call():
        with torch.no_grad():
            result["o"] = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, **gqa)

    return call, (lambda: result["o"].numpy()), {}


def _ort_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_naive_runner(q, k, v, causal: bool, threads: int):
    """MatMul(Q, K^T) * scale [+ mask] -> Softmax -> MatMul(V): the textbook 3-pass graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    S, M = q.shape[2], k.shape[2]
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
    ]
    inits = [numpy_helper.from_array(np.array(D**-0.5, np.float32), "scale")]
    logits = "ss"
    if causal:
        # bottom_right alignment, as the other contenders: key j visible iff j <= i + M - S.
        visible = np.arange(M)[None, :] <= np.arange(S)[:, None] + (M - S)
        inits.append(numpy_helper.from_array(np.where(visible, 0.0, -np.inf).astype(np.float32), "mask"))
        nodes.append(helper.make_node("Add", ["ss", "mask"], ["sm"]))
        logits = "sm"
    nodes += [
        helper.make_node("Softmax", [logits], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("q", f, [1, H, S, D]),
            helper.make_tensor_value_info("k", f, [1, H, M, D]),
            helper.make_tensor_value_info("v", f, [1, H, M, D]),
        ],
        [helper.make_tensor_value_info("o", f, [1, H, S, D])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    sess = _ort_session(model, threads)
    feeds = {"q": q, "k": k, "v": v}
    result = {}

    def call():
        result["o"] = sess.run(None, feeds)[0]

    return call, (lambda: result["o"]), {}


def ort_mha_runner(q, k, v, causal: bool, threads: int):
    """com.microsoft MultiHeadAttention on [B, S, H*D] inputs (unidirectional = causal)."""
    from onnx import TensorProto, helper

    S, M = q.shape[2], k.shape[2]
    f = TensorProto.FLOAT
    attrs = {"num_heads": H, "scale": D**-0.5}
    if causal:
        attrs["unidirectional"] = 1
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "mha",
        [
            helper.make_tensor_value_info("q", f, [1, S, H * D]),
            helper.make_tensor_value_info("k", f, [1, M, H * D]),
            helper.make_tensor_value_info("v", f, [1, M, H * D]),
        ],
        [helper.make_tensor_value_info("o", f, [1, S, H * D])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    sess = _ort_session(model, threads)

    def packed(x):
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(1, x.shape[2], H * D))

    feeds = {"q": packed(q), "k": packed(k), "v": packed(v)}
    result = {}

    def call():
        result["o"] = sess.run(None, feeds)[0]

    def output():
        return result["o"].reshape(1, S, H, D).transpose(0, 2, 1, 3)

    return call, output, {}


# -- one case ---------------------------------------------------------------------------------


def run_case(label, S, M, causal, contenders, args, rng, kv_heads=H):
    """Times every contender on one (S, M) attention; returns table rows."""
    q = rng.standard_normal((1, H, S, D), dtype=np.float32)
    k = rng.standard_normal((1, kv_heads, M, D), dtype=np.float32)
    v = rng.standard_normal((1, kv_heads, M, D), dtype=np.float32)
    flops = 4 * H * S * M * D
    rows = []
    outputs = {}
    for name, make in contenders:
        if name == "ort" and 2 * H * S * M * 4 > args.ort_max_gb * 2**30:
            rows.append([label, name, "-", "-", "-", "-", f"skipped: {2 * H * S * M * 4 / 2**30:.1f} GB of logits"])
            continue
        try:
            call, output, info = make(q, k, v, causal)
            mem = peak_rss_growth(call)
            sec = time_block(call, args.runs, args.budget)
        except Exception as e:  # noqa: BLE001 - a contender that cannot run is reported, not fatal
            rows.append([label, name, "-", "-", "-", "-", f"failed: {type(e).__name__}: {str(e)[:80]}"])
            continue
        outputs[name] = np.array(output(), dtype=np.float32, copy=True)
        notes = []
        if "splits" in info:
            notes.append(f"kv_splits={info['splits']}")
        work = info.get("workspace")
        rows.append([label, name, sec * 1e3, flops / sec / 1e9, mem, work, ", ".join(notes)])
        del call, output
        gc.collect()
    # Every contender must agree with torch (or the first that ran).
    base = outputs.get("torch") if "torch" in outputs else next(iter(outputs.values()), None)
    for row in rows:
        got = outputs.get(row[1])
        if got is not None and base is not None:
            err = float(np.abs(got - base).max())
            row.append(err)
            if err > 1e-3:
                row[6] = (row[6] + ", " if row[6] else "") + f"**MISMATCH {err:.1e}**"
        else:
            row.append(None)
    return rows


def fmt_bytes(n) -> str:
    if n is None or n == "-":
        return "-"
    if n == 0:
        return "0"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render(rows, args) -> list[str]:
    """The markdown table, with latency ratios vs torch SDPA per case."""
    torch_ms = {r[0]: r[2] for r in rows if r[1] == "torch" and r[2] != "-"}
    lines = [
        "| case | runtime | median ms | GFLOP/s | vs torch SDPA | peak RSS growth | kernel workspace | max abs diff | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name, ms, gf, mem, work, notes, err in rows:
        if ms == "-":
            lines.append(f"| {label} | {name} | - | - | - | - | - | - | {notes} |")
            continue
        ratio = f"{ms / torch_ms[label]:.2f}x" if label in torch_ms else "-"
        diff = "-" if err is None else f"{err:.1e}"
        lines.append(
            f"| {label} | {name} | {ms:.2f} | {gf:.1f} | {ratio} | {fmt_bytes(mem)} | {fmt_bytes(work)} | {diff} | {notes} |"
        )
    return lines


def summary(rows) -> list[str]:
    """The lines the issue asks about: einfuse vs torch per prefill size, decode split vs not."""
    by = {(r[0], r[1]): r for r in rows if r[2] != "-"}
    out = []
    for label in dict.fromkeys(r[0] for r in rows):
        e, t = by.get((label, "einfuse")), by.get((label, "torch"))
        if e and t and label.startswith("prefill"):
            verdict = "faster" if e[2] < t[2] else "slower"
            out.append(f"- {label}: einfuse {e[2]:.2f} ms vs torch SDPA {t[2]:.2f} ms ({t[2] / e[2]:.2f}x, {verdict})")
    for label in dict.fromkeys(r[0] for r in rows):
        if label.startswith("decode") and "split" not in label:
            one, split = by.get((label, "einfuse")), by.get((label + " split", "einfuse"))
            if one and split:
                verdict = "faster" if split[2] < one[2] else "NOT faster"
                out.append(
                    f"- {label}: kv split {split[2]:.2f} ms vs no split {one[2]:.2f} ms "
                    f"({one[2] / split[2]:.2f}x, split {verdict})"
                )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prefill", type=int, nargs="*", default=None, help=f"query = key lengths (default {PREFILL})")
    p.add_argument("--decode", type=int, nargs="*", default=None, help=f"decode context lengths (default {DECODE})")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both", help="prefill masks to run")
    p.add_argument("--splits", type=int, default=0, help="kv_splits for the decode split (0: 16 per 32k keys, >= 4)")
    p.add_argument(
        "--gqa", type=int, nargs="*", default=[2, 1], help="kv head counts for extra grouped-query decode rows"
    )
    p.add_argument("--runs", type=int, default=20, help="timed runs per contender (fewer when slow)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timed runs per contender at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ort-max-gb", type=float, default=4.0, help="skip the MatMul/Softmax graph above this")
    p.add_argument("--no-ort", action="store_true", help="leave out both onnxruntime contenders")
    p.add_argument("--quick", action="store_true", help="S=128,512, decode 2k,8k, 5 runs")
    p.add_argument("--write", action="store_true", help=f"append the table to benchmarks/RESULTS.md ({SECTION})")
    args = p.parse_args(argv)
    if args.quick:
        args.prefill = args.prefill if args.prefill is not None else [128, 512]
        args.decode = args.decode if args.decode is not None else [2048, 8192]
        args.runs = min(args.runs, 5)
        args.budget = min(args.budget, 2.0)
    prefill = PREFILL if args.prefill is None else args.prefill
    decode = DECODE if args.decode is None else args.decode

    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    t = args.threads

    def contenders(causal: bool, splits: int | None = None, rivals: bool = True):
        out = [("einfuse", lambda q, k, v, c: einfuse_runner(q, k, v, c, splits or 1, t))]
        if rivals:
            out.append(("torch", lambda q, k, v, c: torch_runner(q, k, v, c, t)))
            if not args.no_ort:
                out.append(("ort", lambda q, k, v, c: ort_naive_runner(q, k, v, c, t)))
                out.append(("ort-mha", lambda q, k, v, c: ort_mha_runner(q, k, v, c, t)))
        return out

    rng = np.random.default_rng(0)
    rows = []
    masks = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for S in prefill:
        for causal in masks:
            label = f"prefill S={S}" + (" causal" if causal else "")
            print(f"{label} ...", file=sys.stderr, flush=True)
            rows += run_case(label, S, S, causal, contenders(causal), args, rng)
    for M in decode:
        splits = args.splits or max(4, 16 * M // 32768)
        label = f"decode M={M // 1024}k"
        print(f"{label} ...", file=sys.stderr, flush=True)
        rows += run_case(label, 1, M, False, contenders(False, 1), args, rng)
        rows += run_case(label + " split", 1, M, False, contenders(False, splits, rivals=False), args, rng)
    for hkv in args.gqa:
        # Grouped-query decode: the kernel reads each K/V tile once per group of H/hkv heads.
        M = max(decode)
        label = f"decode M={M // 1024}k GQA {H}/{hkv}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        gqa_rivals = [("torch", lambda q, k, v, c: torch_runner(q, k, v, c, t))]
        rows += run_case(label, 1, M, False, contenders(False, 1, rivals=False) + gqa_rivals, args, rng, hkv)
        splits = args.splits or max(4, 16 * M // 32768)
        rows += run_case(label + " split", 1, M, False, contenders(False, splits, rivals=False), args, rng, hkv)

    table = render(rows, args)
    lines = summary(rows)
    load = os.getloadavg()
    header = [
        SECTION,
        "",
        (
            f"Measured {started} by `benchmarks/bench_attention.py{' --quick' if args.quick else ''}` on "
            f"{_cpu_name()}, {t} threads for every runtime, load average {load[0]:.1f} at the end "
            "(the machine is shared: compare ratios within a row group, not absolute times)."
        ),
        (
            f"B=1, H={H}, D={D}, fp32; prefill S = M (causal rows: bottom_right = top_left); decode: 1 query. "
            'GFLOP/s = 4*B*H*S*M*D for every row; "vs torch SDPA" is the latency ratio (< 1: faster than torch).'
        ),
        "",
    ]
    text = "\n".join(header + table + ["", *lines, ""])
    print(text)
    if args.write:
        path = ROOT / "benchmarks" / "RESULTS.md"
        old = path.read_text(encoding="utf-8")
        if SECTION + "\n" in old:
            # Replace only our own section (up to the next "## " heading).
            start = old.index(SECTION + "\n")
            nxt = old.find("\n## ", start + len(SECTION))
            old = old[:start] + (old[nxt + 1 :] if nxt >= 0 else "")
        path.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "this CPU"


if __name__ == "__main__":
    sys.exit(main())
