"""Reproduces benchmarks/RESULTS.md: einfuse (TVM backend, target llvm) vs onnxruntime on
the nine light model-zoo graphs (seeded random weights), a BERT-like encoder and a
GPT-2-like decoder, batch 1, fp32, the same thread count for both.

    .venv/bin/python benchmarks/bench_models.py                  # all models, print a table
    .venv/bin/python benchmarks/bench_models.py --write          # ... and rewrite RESULTS.md
    .venv/bin/python benchmarks/bench_models.py resnet50 bert    # a subset (name substrings)
    .venv/bin/python benchmarks/bench_models.py --relax          # add TVM Relax's own pipeline

Each model goes through `einfuse.runtime.profiler.bench_model`, the code behind
`einfuse bench`: every runtime is set up, warmed up and timed in its own block (never
interleaved), median latency over up to --runs runs. The generated 1024^3 fp32 matmul
against numpy is benchmarks/bench_matmul.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def model_list():
    """(name, build() -> (ModelProto, inputs)) for every benchmarked model."""
    from einfuse.testing import models as zoo

    def light(name):
        def build():
            m = zoo.randomize_weights(zoo.load_light(name), seed=0)
            return m, zoo.light_random_input(m, seed=0)

        return build

    def bert():
        m = zoo.bert_like(seq=128, hidden=384, layers=6, heads=12, batch=1, seed=0)
        return m, zoo.token_inputs(m, seed=0)

    def gpt2():
        m = zoo.gpt2_like(seq=128, hidden=384, layers=6, heads=12, batch=1, seed=0)
        return m, zoo.token_inputs(m, seed=0)

    out = [(name.removeprefix("light_"), light(name)) for name in zoo.LIGHT_MODELS]
    out.append(("bert_like (seq 128, hidden 384, 6 layers)", bert))
    out.append(("gpt2_like (seq 128, hidden 384, 6 layers)", gpt2))
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        return sha.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def versions() -> str:
    from importlib.metadata import version

    parts = []
    for pkg in ("apache-tvm", "onnxruntime", "numpy"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="model name substrings (default: all)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per runtime (default 50)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    ap.add_argument("--relax", action="store_true", help="also time TVM Relax's own ONNX pipeline")
    ap.add_argument("--write", action="store_true", help="rewrite benchmarks/RESULTS.md with the results")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

    from einfuse.runtime.profiler import bench_model

    load_before = _loadavg()
    rows = []
    for name, build in model_list():
        if args.only and not any(s in name for s in args.only):
            continue
        model, inputs = build()
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        result = bench_model(
            model, label=name, inputs=inputs, runs=args.runs, threads=args.threads, relax=args.relax, progress=True
        )
        print(result.table())
        if result.agreement:
            print(result.agreement)
        print(result.closing_line(), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append(result)

    table = results_table(rows, args.relax)
    print()
    print(table)
    if args.write:
        write_results(table, args, f"load average {load_before} at the start, {_loadavg()} at the end")
    return 0


def results_table(rows, relax: bool) -> str:
    head = ["model", "einfuse ms", "onnxruntime ms", "ratio vs ort", "compile s", "fallback groups", "max rel diff"]
    if relax:
        head.insert(4, "relax ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours, ort = r.get("einfuse"), r.get("onnxruntime")
        ratio = r.ratio
        flag = " (**slower than 2x**)" if ratio is not None and ratio > 2 else ""
        cells = [
            r.model,
            f"{ours.median_ms:.1f}" if ours and ours.ok else "-",
            f"{ort.median_ms:.1f}" if ort and ort.ok else "-",
            (f"{ratio:.2f}x" if ratio is not None else "n/a") + flag,
            f"{ours.setup_s:.0f}" if ours and ours.ok else "-",
            str(len(r.report.fallbacks)) if r.report is not None else "-",
            r.agreement.split(": ", 1)[-1] if r.agreement else "-",
        ]
        if relax:
            rx = r.get("relax")
            cells.insert(4, f"{rx.median_ms:.1f}" if rx and rx.ok else (rx.note if rx else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loadavg() -> str:
    try:
        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "?"


def write_results(table: str, args, load: str) -> None:
    today = datetime.date.today().isoformat()
    text = f"""# einfuse benchmark results

Measured {today} on {machine()}; commit {commit()}; {versions()}.
Batch 1, fp32, {args.threads} threads for every runtime ({load} on {os.cpu_count()} CPUs: other work
shared the machine), median over up to {args.runs} runs after warm-up, each runtime timed in its own block; seeded random weights (seed 0).
Reproduce: `.venv/bin/python benchmarks/bench_models.py --write` (this file is its output,
plus the notes below). "compile s" is the first compile with an empty kernel cache when
the run started with one, else a cache-warm compile; "max rel diff" is the largest
|einfuse - onnxruntime| relative to the output's scale. The generated 1024^3 fp32 matmul
against numpy/OpenBLAS is `benchmarks/bench_matmul.py`.

{table}
"""
    # Hand-written notes under "## Notes" in the old file survive a rewrite.
    old = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    if "\n## Notes" in old:
        text += "\n## Notes" + old.split("\n## Notes", 1)[1]
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
