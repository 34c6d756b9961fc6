"""Where the time goes: the per-kernel profile of an Executable, and the side-by-side
benchmark behind `einfuse bench` (einfuse vs onnxruntime vs TVM Relax).

The Executable times every launch on every run (two clock reads per launch: well
under a microsecond against kernels of tens of microseconds and more), so a profile
is always at hand:

    model = einfuse.compile("resnet50.onnx")
    for _ in range(10):
        model(data=x)
    print(model.profile)     # kernel, kind, ops, calls, ms, %, GFLOP/s

Benchmark rules (what makes the numbers comparable): each runtime is timed in its
own block after its own warm-up, never interleaved with another; the figure is the
median over many runs; every runtime gets the same thread count (onnxruntime's
intra_op_num_threads, TVM_NUM_THREADS for TVM's pool, which must be set before TVM
starts its pool: the CLI does it first thing). Peak memory is the growth of the
process's peak resident set during that runtime's block (compile/session setup and
runs), read from /proc/self/status after resetting the peak through
/proc/self/clear_refs (Linux); where that is not possible it is reported as unknown.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from einfuse.passes.plan_memory import format_bytes

# ------------------------------------------------------------------------ the profile


@dataclass
class KernelRow:
    kernel: str
    backend: str
    kind: str
    ops: str
    calls: float  # launches per run
    ms: float  # milliseconds per run
    percent: float
    gflops: float | None  # GFLOP/s, when the backend reports FLOPs


@dataclass
class Profile:
    rows: list[KernelRow]  # slowest first
    runs: int
    total_ms: float  # per run, summed over kernels

    def __str__(self) -> str:
        return self.table()

    def table(self, limit: int | None = None) -> str:
        """A plain-text table (slowest first; `limit` rows, the rest summed on one line)."""
        if not self.runs:
            return "profile: no runs yet (call the model first)"
        rows = self.rows if limit is None else self.rows[:limit]
        head = ("kernel", "kind", "ops", "calls", "ms", "%", "GFLOP/s")
        body = [
            (r.kernel, r.kind, _clip(r.ops, 36), _num(r.calls), f"{r.ms:.3f}", f"{r.percent:.1f}",
             "" if r.gflops is None else f"{r.gflops:.1f}")
            for r in rows
        ]  # fmt: skip
        rest = self.rows[len(rows) :]
        if rest:
            ms = sum(r.ms for r in rest)
            pct = 100 * ms / self.total_ms if self.total_ms else 0.0
            calls = _num(sum(r.calls for r in rest))
            body.append((f"({len(rest)} more)", "", "", calls, f"{ms:.3f}", f"{pct:.1f}", ""))
        body.append(("total", "", "", _num(sum(r.calls for r in self.rows)), f"{self.total_ms:.3f}", "100.0", ""))
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        lines = [f"per-kernel time, mean of {self.runs} run(s):"]
        for j, row in enumerate([head, *body]):
            cells = [str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  " + "  ".join(cells).rstrip())
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def profile_of(exe) -> Profile:
    """The per-kernel profile of every run `exe` (an Executable) made so far."""
    runs = exe.runs
    per_kernel: dict[int, list] = {}
    for step, launch in enumerate(exe.launches):
        entry = per_kernel.setdefault(launch.kernel, [0.0, 0])
        entry[0] += float(exe.step_seconds[step])
        entry[1] += 1
    total = sum(s for s, _ in per_kernel.values())
    rows = []
    for k, (seconds, launches) in per_kernel.items():
        kernel = exe.kernels[k].kernel
        flops = (kernel.flops or 0) * launches * runs
        rows.append(
            KernelRow(
                kernel=kernel.name,
                backend=kernel.backend,
                kind=kernel.kind,
                ops="+".join(_compact_ops(kernel.ops)),
                calls=launches,
                ms=1e3 * seconds / runs if runs else 0.0,
                percent=100 * seconds / total if total else 0.0,
                gflops=flops / seconds / 1e9 if flops and seconds > 0 else None,
            )
        )
    rows.sort(key=lambda r: -r.ms)
    return Profile(rows, runs, 1e3 * total / runs if runs else 0.0)


def _compact_ops(ops) -> list[str]:
    """['add', 'relu', 'relu', 'relu'] -> ['add', 'relu x3']."""
    out: list[str] = []
    prev, count = None, 0
    for op in list(ops) + [None]:
        if op == prev:
            count += 1
            continue
        if prev is not None:
            out.append(prev if count == 1 else f"{prev} x{count}")
        prev, count = op, 1
    return out


# ------------------------------------------------------------------------ timing


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 3, budget_s: float = 20.0) -> list[float]:
    """Seconds per call of `fn` over up to `runs` calls after `warmup` calls; stops early
    (after at least 3 timed calls) once `budget_s` is spent, so a slow runtime cannot
    hold the benchmark for minutes."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > budget_s and len(times) >= 3:
            break
    return times


class PeakMemory:
    """Growth of the process's peak RSS inside a `with` block (Linux), else None."""

    def __enter__(self):
        self.base = _rss_kib()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.ok = self.base is not None
        except OSError:
            self.ok = False
        self.bytes: int | None = None
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM") if self.ok else None
        if peak is not None and self.base is not None:
            self.bytes = max(peak - self.base, 0) * 1024
        return False


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kib() -> int | None:
    return _status_kib("VmRSS")


# ------------------------------------------------------------------------ side by side


@dataclass
class RuntimeResult:
    name: str  # "einfuse", "onnxruntime", "relax"
    ok: bool
    median_ms: float = 0.0
    runs: int = 0
    setup_s: float = 0.0  # compile / session creation
    peak_bytes: int | None = None
    note: str = ""  # why it did not run, or a remark (fallbacks)
    outputs: dict = field(default_factory=dict, repr=False)


@dataclass
class BenchResult:
    model: str
    results: list[RuntimeResult]
    profile: Profile | None = None
    report: object = None  # the einfuse CompileReport
    agreement: str = ""

    def get(self, name: str) -> RuntimeResult | None:
        return next((r for r in self.results if r.name == name), None)

    @property
    def ratio(self) -> float | None:
        """einfuse latency / onnxruntime latency (below 1: einfuse is faster)."""
        ours, ort = self.get("einfuse"), self.get("onnxruntime")
        if ours is None or ort is None or not (ours.ok and ort.ok) or ort.median_ms <= 0:
            return None
        return ours.median_ms / ort.median_ms

    def table(self) -> str:
        ort = self.get("onnxruntime")
        lines = [f"{'runtime':<12} {'median ms':>10} {'runs':>5} {'vs ort':>7} {'setup s':>8} {'peak mem':>10}  note"]
        for r in self.results:
            if not r.ok:
                lines.append(f"{r.name:<12} {'-':>10} {'-':>5} {'-':>7} {'-':>8} {'-':>10}  {r.note}")
                continue
            vs = f"{r.median_ms / ort.median_ms:.2f}x" if ort is not None and ort.ok and ort.median_ms > 0 else "-"
            mem = "?" if r.peak_bytes is None else format_bytes(r.peak_bytes)
            lines.append(
                f"{r.name:<12} {r.median_ms:>10.2f} {r.runs:>5} {vs:>7} {r.setup_s:>8.2f} {mem:>10}  {r.note}".rstrip()
            )
        return "\n".join(lines)

    def closing_line(self) -> str:
        ratio = self.ratio
        return f"ratio vs onnxruntime: {ratio:.2f}x" if ratio is not None else "ratio vs onnxruntime: n/a"


def bench_model(
    model,
    *,
    label: str = "model",
    inputs: dict[str, np.ndarray],
    target: str = "llvm",
    dims: dict | None = None,
    runs: int = 50,
    warmup: int = 3,
    threads: int | None = None,
    relax: bool = True,
    budget_s: float = 20.0,
    cache_dir=None,
    progress: bool = False,
) -> BenchResult:
    """einfuse, onnxruntime and (where it imports) TVM Relax on one ONNX model, each in
    its own block: setup, warm-up, timed runs. `inputs` are numpy feeds by name."""
    import onnx

    threads = threads or os.cpu_count() or 1
    if not isinstance(model, onnx.ModelProto):
        from einfuse.frontends.onnx_io import load_model_proto

        model = load_model_proto(model)  # a path or serialized bytes
    results = []

    # Imports (TVM: seconds and hundreds of MiB, once per process) happen before any
    # timed block, so that neither setup times nor peak memory include them.
    from einfuse.codegen.backend import get_backend
    from einfuse.compiler import TARGETS
    from einfuse.compiler import compile as einfuse_compile

    get_backend(TARGETS.get(target, "reference"))
    for module in ("onnxruntime", "tvm.relax.frontend.onnx") if relax else ("onnxruntime",):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - reported by that runtime's block
            pass

    # einfuse

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        compiled = einfuse_compile(model, target=target, dims=dims, cache_dir=cache_dir, progress=progress)
        setup = time.perf_counter() - t0
        ours = compiled.run(inputs)
        for _ in range(warmup):
            compiled.run(inputs)
        compiled.reset_profile()  # the profile covers the timed runs only
        times = time_runs(lambda: compiled.run(inputs), runs, 0, budget_s)
    note = ""
    if compiled.report.fallbacks:
        note = f"{len(compiled.report.fallbacks)} group(s) on the reference backend"
    results.append(
        RuntimeResult("einfuse", True, 1e3 * statistics.median(times), len(times), setup, mem.bytes, note, ours)
    )
    profile = compiled.profile

    # onnxruntime
    try:
        import onnxruntime as ort

        with PeakMemory() as mem:
            t0 = time.perf_counter()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            setup = time.perf_counter() - t0
            names = [o.name for o in sess.get_outputs()]
            feeds = {i.name: inputs[i.name] for i in sess.get_inputs() if i.name in inputs}
            theirs = dict(zip(names, sess.run(names, feeds)))
            times = time_runs(lambda: sess.run(names, feeds), runs, warmup, budget_s)
        results.append(
            RuntimeResult("onnxruntime", True, 1e3 * statistics.median(times), len(times), setup, mem.bytes, "", theirs)
        )
    except Exception as e:  # noqa: BLE001 - a runtime that cannot run is reported, not fatal
        results.append(RuntimeResult("onnxruntime", False, note=f"onnxruntime: did not run ({_reason(e)})"))

    if relax:
        results.append(_bench_relax(model, inputs, target, runs, warmup, budget_s))

    bench = BenchResult(label, results, profile, compiled.report)
    bench.agreement = _agreement(results)
    return bench


def _bench_relax(model, inputs, target, runs, warmup, budget_s) -> RuntimeResult:
    """TVM Relax's own ONNX pipeline: from_onnx, the default relax build, the VM."""
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
    except Exception as e:  # noqa: BLE001
        return RuntimeResult("relax", False, note=f"relax: did not import ({_reason(e)})")
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            shapes = {k: list(v.shape) for k, v in inputs.items()}
            dtypes = {k: str(v.dtype) for k, v in inputs.items()}
            mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as e:  # noqa: BLE001
        return RuntimeResult("relax", False, note=f"relax: did not import ({_reason(e)})")
    try:
        with PeakMemory() as mem2:
            from einfuse.compiler import tvm_target

            ex = tvm.compile(mod, target=tvm_target(target))
            vm = relax.VirtualMachine(ex, tvm.cpu())
            setup = time.perf_counter() - t0
            # Relax's parameters follow the model's (non-initializer) inputs, in order.
            init = {t.name for t in model.graph.initializer}
            order = [vi.name for vi in model.graph.input if vi.name not in init]
            args = [tvm.runtime.tensor(inputs[n]) for n in order]
            out = vm["main"](*args)
            outs = _relax_outputs(out)
            times = time_runs(lambda: vm["main"](*args), runs, warmup, budget_s)
    except Exception as e:  # noqa: BLE001
        return RuntimeResult("relax", False, note=f"relax: did not build or run ({_reason(e)})")
    peak = max(x for x in (mem.bytes, mem2.bytes, 0) if x is not None) if mem.ok else None
    names = [o.name for o in model.graph.output]
    return RuntimeResult("relax", True, 1e3 * statistics.median(times), len(times), setup, peak, "",
                         dict(zip(names, outs)))  # fmt: skip


def _relax_outputs(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [o.numpy() for o in out]


def _agreement(results: list[RuntimeResult]) -> str:
    """max |einfuse - other| per output, relative to the output's scale."""
    ours = next((r for r in results if r.name == "einfuse" and r.ok), None)
    parts = []
    for r in results:
        if r is ours or not r.ok or ours is None:
            continue
        worst = 0.0
        for name, y in ours.outputs.items():
            ref = r.outputs.get(name)
            if ref is None or np.shape(ref) != np.shape(y) or not np.size(y):
                continue
            diff = float(np.max(np.abs(np.asarray(y, np.float64) - np.asarray(ref, np.float64))))
            scale = max(float(np.max(np.abs(np.asarray(ref, np.float64)))), 1e-30)
            worst = max(worst, diff / scale)
        parts.append(f"{r.name} {worst:.2g}")
    return "max relative difference: " + ", ".join(parts) if parts else ""


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    # TVM errors open with a traceback header; the last line names the problem.
    if len(text) > 1 and ("Traceback" in first or not first):
        first = text[-1]
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__
