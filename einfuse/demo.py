"""`make demo`: import the bundled model, run it, compare with onnxruntime.

The bundled model is ResNet-50 from the onnx package's own model zoo
(onnx/backend/test/data/light), with seeded random weights in place of its constant
0.02 ones so that the comparison means something.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.testing.models import load_light, randomize_weights


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m einfuse.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="light_resnet50", help="a light model-zoo name (default light_resnet50)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per runtime (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    model = randomize_weights(load_light(args.model), seed=args.seed)
    t0 = time.perf_counter()
    graph = convert_model(model)
    import_s = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for n in graph.nodes:
        counts[n.op] = counts.get(n.op, 0) + 1
    print(f"model      {args.model} (seeded random weights, seed {args.seed})")
    print(f"imported   {len(graph.nodes)} nodes, {len(graph.constants)} constants in {import_s * 1e3:.0f} ms")
    print("ops        " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))

    rng = np.random.default_rng(args.seed)
    inputs = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else 1 for d in v.shape)
        inputs[v.name] = rng.standard_normal(shape).astype(v.dtype.np)

    profile: dict = {}
    ours = reference.run(graph, inputs, profile=profile)
    ours_s = _median_time(lambda: reference.run(graph, inputs), args.repeat)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
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
    print(f"time       einfuse (numpy reference executor) {ours_s * 1e3:.1f} ms, "
          f"onnxruntime {ort_s * 1e3:.1f} ms: ratio vs onnxruntime {ours_s / ort_s:.2f}x "
          f"(median of {args.repeat})")
    total = sum(t for t, _ in profile.values())
    print("where time went (reference executor, one run):")
    for op, (t, calls) in sorted(profile.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"  {op:<22} {t * 1e3:8.1f} ms  {100 * t / total:5.1f}%  ({calls} calls)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
