"""`make demo`: compile the bundled model for this CPU, run it, compare with onnxruntime.

The bundled model is ResNet-50 from the onnx package's own model zoo
(onnx/backend/test/data/light), with seeded random weights in place of its constant
0.02 ones so that the comparison means something. It is compiled with the TVM backend
(target llvm, the host CPU); kernels land in the on-disk cache, so a second `make demo`
compiles in a fraction of the time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from einfuse.testing.models import load_light, randomize_weights


def _median_time(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m einfuse.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="light_resnet50", help="a light model-zoo name (default light_resnet50)")
    ap.add_argument("--target", default="llvm", choices=("llvm", "reference"), help="einfuse target (default llvm)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per runtime (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # TVM reads its thread count when its pool starts: before anything imports TVM.
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import onnxruntime as ort

    import einfuse

    model = randomize_weights(load_light(args.model), seed=args.seed)
    print(f"model      {args.model} (seeded random weights, seed {args.seed}); target {args.target}")
    t0 = time.perf_counter()
    compiled = einfuse.compile(model, target=args.target)
    compile_s = time.perf_counter() - t0
    report = compiled.report
    print(
        f"compiled   {report.groups} fused groups, {report.kernels} kernels in {compile_s:.1f} s "
        f"(kernel cache: {report.cache or 'off'})"
    )
    print(f"memory     planned peak {_mib(report.arena_bytes)} of intermediates (sum without reuse "
          f"{_mib(report.intermediate_bytes)}), weights {_mib(report.weight_bytes)}")  # fmt: skip
    if report.fallbacks:
        ops = sorted({"+".join(f["ops"][:3]) for f in report.fallbacks})
        print(f"fallback   {len(report.fallbacks)} group(s) on the reference backend: {', '.join(ops[:6])}")

    rng = np.random.default_rng(args.seed)
    inputs = {v.name: rng.standard_normal(tuple(v.shape)).astype(v.dtype.np) for v in compiled.inputs}

    ours = compiled.run(inputs)
    compiled.reset_profile()
    ours_s = _median_time(lambda: compiled.run(inputs), args.repeat, warmup=0)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    ort_s = _median_time(lambda: sess.run(None, inputs), args.repeat)

    ok = True
    for name, y in ours.items():
        ref = theirs[name]
        err = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        close = np.allclose(y, ref, rtol=1e-3, atol=1e-4 * max(scale, 1.0))
        ok &= bool(close)
        flat = y.reshape(y.shape[0], -1)[0]
        top = np.argsort(-flat)[:5]
        ref_top = np.argsort(-ref.reshape(ref.shape[0], -1)[0])[:5]
        print(f"output     {name}: {y.dtype}{list(y.shape)}")
        print("top-5      " + ", ".join(f"#{i}={flat[i]:.4f}" for i in top))
        print(f"agreement  max |einfuse - onnxruntime| = {err:.3g} (output scale {scale:.3g}); "
              f"top-5 {'identical' if list(top) == list(ref_top) else 'DIFFERENT'}; {'OK' if close else 'MISMATCH'}")
    print(f"time       einfuse {ours_s * 1e3:.1f} ms, onnxruntime {ort_s * 1e3:.1f} ms "
          f"({args.threads} threads, median of {args.repeat}): ratio vs onnxruntime {ours_s / ort_s:.2f}x")
    print("where time went (einfuse, per kernel, mean per run):")
    print(compiled.profile.table(limit=10))
    return 0 if ok else 1


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
