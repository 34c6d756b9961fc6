"""Generated dense kernels on this CPU: matmul vs numpy/OpenBLAS and conv2d vs onnxruntime.

    .venv/bin/python benchmarks/bench_matmul.py                # matmul shapes and ResNet-50 convs
    .venv/bin/python benchmarks/bench_matmul.py --only 1024    # the 1024^3 headline only
    .venv/bin/python benchmarks/bench_matmul.py --threads 2 --json results.json

Every kernel is one fused out_fusable region compiled by the TVM backend (einfuse.codegen.
backend.get_backend("tvm")), called the way the runtime calls it (numpy arrays in, a
preallocated output). Each contender is warmed up and then timed in its own block (never
interleaved), median over many runs, with a pause between blocks so that neither thread
pool (TVM's, OpenBLAS's) is still spinning when the other starts; all use --threads.

matmul columns: "operand" gives the kernel B as an input, as for any computed matrix (the
kernel packs B's panels itself on every call); "prepacked" makes B a region constant, as a
weight is, so B is packed once at compile time into the layout the micro-kernel reads.
numpy's time includes nothing but the matmul (np.matmul into a preallocated output).
conv columns: the weight and bias are constants for both einfuse and onnxruntime (a
one-node ONNX model, all graph optimizations, intra_op_num_threads = --threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MATMULS = [
    # (label, A shape, B shape)
    ("1024^3", (1024, 1024), (1024, 1024)),
    ("M=128 qkv/out proj", (128, 384), (384, 384)),
    ("M=128 ffn up", (128, 384), (384, 1536)),
    ("M=128 ffn down", (128, 1536), (1536, 384)),
    ("attention QK^T 12 heads", (12, 128, 32), (12, 32, 128)),
    ("attention PV 12 heads", (12, 128, 128), (12, 128, 32)),
    ("M=1 decode 768x768", (1, 768), (768, 768)),
    ("M=1 decode 768x3072", (1, 768), (768, 3072)),
]

CONVS = [
    # (label, x shape, w shape, stride, pad)
    ("conv1 7x7/2", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    ("res2 3x3", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    ("res2 1x1 reduce", (1, 256, 56, 56), (64, 256, 1, 1), 1, 0),
    ("res3 3x3", (1, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    ("res4 1x1 reduce", (1, 1024, 14, 14), (256, 1024, 1, 1), 1, 0),
    ("res5 3x3", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
]


def timed(fn, args) -> float:
    """Median (or, with --stat min, best) seconds per call after warm-up; as many runs as fit
    in args.budget seconds (at least 10, at most args.runs)."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    runs = int(min(args.runs, max(10, args.budget / once)))
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples) if args.stat == "min" else statistics.median(samples)


def quiesce(seconds: float) -> None:
    """Lets worker pools stop spinning before the next contender's block."""
    time.sleep(seconds)


def compile_matmul(a_shape, b_shape, b_value=None):
    """The einfuse kernel for A @ B; B a region constant when b_value is given."""
    from einfuse.codegen.backend import get_backend
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.types import DType, TensorType

    f32 = DType.f32
    region = Graph("region")
    a = region.add_input("a", TensorType(a_shape, f32))
    b = region.add_constant("b", b_value) if b_value is not None else region.add_input("b", TensorType(b_shape, f32))
    region.outputs = [Builder(region).op("matmul", [a, b])]
    outer = Graph("main")
    operands = [outer.add_input("a", TensorType(a_shape, f32))]
    if b_value is None:
        operands.append(outer.add_input("b", TensorType(b_shape, f32)))
    Builder(outer).op("fused", operands, region=region, kind="out_fusable")
    return get_backend("tvm").compile(outer.nodes[-1])


def compile_conv(x_shape, w, bias, stride: int, pad: int):
    from einfuse.codegen.backend import get_backend
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.types import DType, TensorType

    attrs = {"kernel_shape": tuple(w.shape[2:]), "strides": (stride, stride), "pads": (pad,) * 4, "dilations": (1, 1)}
    region = Graph("region")
    x = region.add_input("x", TensorType(x_shape, DType.f32))
    wv, bv = region.add_constant("w", w), region.add_constant("b", bias)
    region.outputs = [Builder(region).op("conv", [x, wv, bv], **attrs)]
    outer = Graph("main")
    Builder(outer).op(
        "fused", [outer.add_input("x", TensorType(x_shape, DType.f32))], region=region, kind="out_fusable"
    )
    return get_backend("tvm").compile(outer.nodes[-1])


def ort_conv_session(x_shape, w, bias, stride: int, pad: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=list(w.shape[2:]), strides=[stride] * 2, pads=[pad] * 4
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def bench_matmul(label: str, sa: tuple, sb: tuple, args) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    want = np.matmul(a, b)
    flops = 2.0 * want.size * sa[-1]
    out = np.empty_like(want)
    row = {"case": label, "A": list(sa), "B": list(sb), "gflop": flops / 1e9}

    kernel = compile_matmul(sa, sb)
    kernel([a, b], [out])
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)
    row["einfuse_operand"] = flops / timed(lambda: kernel([a, b], [out]), args) / 1e9
    quiesce(args.pause)

    if len(sb) == 2:  # a weight: also the compile-time packed variant
        packed = compile_matmul(sa, sb, b_value=b)
        packed([a], [out])
        np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)
        row["einfuse_prepacked"] = flops / timed(lambda: packed([a], [out]), args) / 1e9
        quiesce(args.pause)

    row["numpy"] = flops / timed(lambda: np.matmul(a, b, out=out), args) / 1e9
    quiesce(args.pause)
    row["ratio"] = max(row["einfuse_operand"], row.get("einfuse_prepacked", 0.0)) / row["numpy"]
    return row


def bench_conv(label: str, sx: tuple, sw: tuple, stride: int, pad: int, args) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(sx).astype(np.float32)
    w = (rng.standard_normal(sw) * 0.1).astype(np.float32)
    bias = rng.standard_normal(sw[0]).astype(np.float32)
    sess = ort_conv_session(sx, w, bias, stride, pad, args.threads)
    want = sess.run(None, {"x": x})[0]
    flops = 2.0 * want.size * sw[1] * sw[2] * sw[3]
    out = np.empty_like(want)
    row = {"case": label, "x": list(sx), "w": list(sw), "stride": stride, "pad": pad, "gflop": flops / 1e9}

    kernel = compile_conv(sx, w, bias, stride, pad)
    kernel([x], [out])
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)
    row["einfuse"] = flops / timed(lambda: kernel([x], [out]), args) / 1e9
    quiesce(args.pause)

    row["onnxruntime"] = flops / timed(lambda: sess.run(None, {"x": x}), args) / 1e9
    quiesce(args.pause)
    row["ratio"] = row["einfuse"] / row["onnxruntime"]
    return row


def _print_matmul(row: dict) -> None:
    pre = row.get("einfuse_prepacked")
    pre_text = f"{pre:9.1f}" if pre is not None else f"{'-':>9}"
    shape = f"{'x'.join(map(str, row['A']))} @ {'x'.join(map(str, row['B']))}"
    print(
        f"{row['case']:<26} {shape:<24} {row['einfuse_operand']:9.1f} {pre_text} {row['numpy']:9.1f} {row['ratio']:6.2f}x",
        flush=True,
    )


def _print_conv(row: dict) -> None:
    shape = f"{'x'.join(map(str, row['x']))} * {'x'.join(map(str, row['w']))} /{row['stride']}"
    print(
        f"{row['case']:<18} {shape:<34} {row['einfuse']:9.1f} {row['onnxruntime']:9.1f} {row['ratio']:6.2f}x",
        flush=True,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=300, help="at most this many timed runs per block")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timed runs per block (at least 10 runs)")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between blocks")
    ap.add_argument("--only", choices=["1024", "matmul", "conv"], help="run a subset")
    ap.add_argument(
        "--stat", choices=["median", "min"], default="median", help="min: best run, for a machine other jobs share"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    # Thread counts must be fixed before numpy (OpenBLAS) and TVM start their pools.
    for var in ("EINFUSE_NUM_THREADS", "TVM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    print(f"threads {args.threads}; numpy {np.__version__}; {args.stat} of up to {args.runs} runs per block (GFLOP/s)")
    results: dict = {"threads": args.threads, "stat": args.stat}
    if args.only in (None, "1024", "matmul"):
        cases = MATMULS[:1] if args.only == "1024" else MATMULS
        print(f"\n{'matmul':<26} {'shape':<24} {'operand':>9} {'prepacked':>9} {'numpy':>9} {'ratio':>7}")
        results["matmul"] = []
        for case in cases:
            results["matmul"].append(bench_matmul(*case, args))
            _print_matmul(results["matmul"][-1])
    if args.only in (None, "conv"):
        print(f"\n{'conv2d (ResNet-50)':<18} {'shape':<34} {'einfuse':>9} {'ort':>9} {'ratio':>7}")
        results["conv"] = []
        for case in CONVS:
            results["conv"].append(bench_conv(*case, args))
            _print_conv(results["conv"][-1])
    if "matmul" in results:
        head = results["matmul"][0]
        best = max(head["einfuse_operand"], head.get("einfuse_prepacked", 0.0))
        print(
            f"\n1024^3 fp32 matmul: einfuse {best:.1f} GFLOP/s, numpy {head['numpy']:.1f} GFLOP/s "
            f"= {100 * best / head['numpy']:.0f}% of numpy"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
