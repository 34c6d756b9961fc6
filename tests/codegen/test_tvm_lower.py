"""The TVM backend around the emitters: region lowering (parameters, constants, symbolic
dims, errors), the generic schedules on fused chains, the kernel calling convention,
export/reload, kernel-name safety and target detection."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

pytest.importorskip("tvm")

from einfuse.codegen.backend import LoweringError, get_backend
from einfuse.codegen.tvm import aligned_empty, load_kernel, region_cost
from einfuse.codegen.tvm.emit import SCHEDULERS
from einfuse.codegen.tvm.target import get_target, host_mcpu, num_threads, target_dict, vector_lanes
from einfuse.errors import EinfuseError, ExecutionError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType, sym
from tests.codegen.test_tvm_ops import build_region, run_and_compare

F32 = DType.f32
SAFE_SYMBOL = re.compile(r"^k_[a-z0-9_]+$")


def compile_node(node, **kw):
    return get_backend("tvm").compile(node, **kw)


# -- fused chains: one kernel, scheduled ------------------------------------------------------


def test_elementwise_chain_is_one_parallel_vectorized_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    b = rng.standard_normal((1000,)).astype(np.float32)

    def build(bld, x, b):
        return {"y": bld.op("mul", [bld.op("relu", [bld.op("add", [x, b])]), x])}

    node, region, labels = build_region({"x": ((64, 1000), F32), "b": ((1000,), F32)}, build)
    kernel = run_and_compare(node, region, labels, [x, b])
    src = kernel.meta["source"]
    assert kernel.meta["schedule"] == "elementwise"
    assert kernel.ops == ("add", "relu", "mul")
    # One loop nest (the producers are inlined), parallel outside, 16 lanes inside.
    assert len(re.findall(r'T\.sblock\("(?!root)', src)) == 1
    assert "T.parallel" in src and "T.vectorized(16)" in src
    assert kernel.flops == 3 * 64 * 1000
    assert kernel.bytes_moved == (2 * 64 * 1000 + 1000) * 4


def test_softmax_with_scale_is_a_row_reduction():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 128, 128)).astype(np.float32) * 4

    def build(bld, x, scale):
        return {"p": bld.op("softmax", [bld.op("mul", [x, scale])], axis=-1)}

    consts = {"scale": np.array(0.125, np.float32)}
    node, region, labels = build_region({"x": (x.shape, F32)}, build, kind="normalize", consts=consts)
    kernel = run_and_compare(node, region, labels, [x], tol={"f": (1e-5, 1e-7)})
    src = kernel.meta["source"]
    # Rows in parallel; the max/sum reductions computed per row inside that loop
    # (rfactor'ed into 16 lanes), the output row vectorized.
    assert "T.parallel(1536)" in src
    assert "T.vectorized(16)" in src
    assert "rf" in src


def test_layer_norm_with_residual_and_epilogue():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((128, 384)).astype(np.float32)
    res = rng.standard_normal((128, 384)).astype(np.float32)
    w = rng.standard_normal((384,)).astype(np.float32)
    bias = rng.standard_normal((384,)).astype(np.float32)

    def build(bld, x, res, w, bias):
        h = bld.op("add", [x, res])
        y = bld.op("layer_norm", [h, w, bias], axis=-1, epsilon=1e-12)
        return {"y": bld.op("gelu", [y])}

    inputs = {"x": (x.shape, F32), "res": (res.shape, F32), "w": ((384,), F32), "bias": ((384,), F32)}
    node, region, labels = build_region(inputs, build, kind="normalize")
    kernel = run_and_compare(node, region, labels, [x, res, w, bias], tol={"f": (2e-5, 2e-6)})
    assert "T.parallel(128)" in kernel.meta["source"]


def test_reduce_then_pool_shapes_and_global_pool_parallel_over_channels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)

    def build(bld, x):
        return {"gap": bld.op("global_average_pool", [bld.op("relu", [x])])}

    node, region, labels = build_region({"x": (x.shape, F32)}, build, kind="reduce")
    kernel = run_and_compare(node, region, labels, [x])
    assert "T.parallel(128)" in kernel.meta["source"]


# -- constants and parameters --------------------------------------------------------------------


def test_large_constants_are_parameters_and_small_ones_are_inlined():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 20)).astype(np.float32)
    x = rng.standard_normal((4, 20)).astype(np.float32)

    def build(bld, x, w, small):
        return {"y": bld.op("add", [bld.op("mul", [x, w]), small])}

    consts = {"w": w, "small": np.array([1.0, 2.0, 3.0, 4.0] * 5, np.float32)[:16].reshape(16)[:4].reshape(4, 1)}
    node, region, labels = build_region({"x": ((4, 20), F32)}, build, consts=consts)
    kernel = run_and_compare(node, region, labels, [x])
    assert kernel.meta["const_params"] == ["w"]
    # The constant may also be passed explicitly (e.g. the runtime's copy of the weight).
    out = np.empty((4, 20), np.float32)
    kernel([x, np.ones_like(w)], [out])
    np.testing.assert_allclose(out, x + consts["small"], rtol=1e-6)
    with pytest.raises(ExecutionError, match="takes 1 operands"):
        kernel([x, w, w], [out])


def test_kernel_accepts_any_numpy_layout():
    x_base = np.random.default_rng(5).standard_normal((3, 40)).astype(np.float32)

    def build(bld, x):
        return {"y": bld.op("exp", [x])}

    node, _, _ = build_region({"x": ((3, 20), F32)}, build)
    kernel = compile_node(node)
    want = np.exp(x_base[:, ::2])
    # Non-contiguous input and output, misaligned input, read-only input.
    out_wide = np.zeros((3, 40), np.float32)
    kernel([x_base[:, ::2]], [out_wide[:, ::2]])
    np.testing.assert_allclose(out_wide[:, ::2], want, rtol=2e-6)
    raw = np.zeros(3 * 20 + 1, np.float32)
    misaligned = raw[1:].reshape(3, 20)
    misaligned[:] = x_base[:, ::2]
    readonly = np.array(x_base[:, ::2])
    readonly.flags.writeable = False
    for arr in (misaligned, readonly, aligned_empty((3, 20), np.float32)):
        if arr is not misaligned and arr is not readonly:
            arr[:] = x_base[:, ::2]
        out = np.empty((3, 20), np.float32)
        kernel([arr], [out])
        np.testing.assert_allclose(out, want, rtol=2e-6)
    assert aligned_empty((5, 7), np.float32).ctypes.data % 64 == 0
    with pytest.raises(ExecutionError, match="failed"):
        kernel([np.zeros((3, 21), np.float32)], [np.empty((3, 20), np.float32)])


def test_scalar_and_empty_tensors():
    def build(bld, x, e):
        return {"s": bld.op("neg", [x]), "e": bld.op("exp", [e])}

    node, region, labels = build_region({"x": ((), F32), "e": ((0, 3), F32)}, build)
    run_and_compare(node, region, labels, [np.array(2.5, np.float32), np.zeros((0, 3), np.float32)])


def test_region_output_that_is_an_input_is_copied():
    region = Graph("region")
    x = region.add_input("x", TensorType((5,), F32))
    y = Builder(region).op("relu", [x])
    region.outputs = [x, y, y]
    outer = Graph("main")
    Builder(outer).op("fused", [outer.add_input("x", TensorType((5,), F32))], region=region, kind="elementwise")
    kernel = compile_node(outer.nodes[-1])
    xs = np.array([-1, 2, -3, 4, 5], np.float32)
    outs = [np.empty(5, np.float32) for _ in range(3)]
    kernel([xs], outs)
    np.testing.assert_array_equal(outs[0], xs)
    np.testing.assert_array_equal(outs[2], np.maximum(xs, 0))


# -- errors -------------------------------------------------------------------------------------------


def test_unsupported_op_is_a_lowering_error_naming_it():
    def build(bld, x):
        return {"nz": bld.op("nonzero", [bld.op("relu", [x])])}

    node, _, _ = build_region({"x": ((4,), F32)}, build, kind="opaque")
    with pytest.raises(LoweringError, match=r"no lowering for op 'nonzero'"):
        compile_node(node)


def test_float8_is_a_lowering_error():
    def build(bld, x):
        return {"y": bld.op("cast", [x], to=DType.f8e4m3)}

    node, _, _ = build_region({"x": ((4,), F32)}, build)
    with pytest.raises(LoweringError, match="f8e4m3"):
        compile_node(node)


def test_symbolic_dims_must_be_bound():
    B = sym("B")

    def build(bld, x):
        return {"y": bld.op("softmax", [bld.op("relu", [x])], axis=-1)}

    node, region, labels = build_region({"x": ((B, 19), F32)}, build, kind="normalize")
    with pytest.raises(LoweringError, match=r"dim B .* is symbolic"):
        compile_node(node)
    x = np.random.default_rng(6).standard_normal((3, 19)).astype(np.float32)
    kernel = run_and_compare(node, region, labels, [x], dims={"B": 3})
    assert kernel.meta["dims"] == {"B": 3}


def test_failing_scheduler_falls_back_to_the_generic_one(monkeypatch):
    def broken(sch, info):
        raise RuntimeError("scheduler bug")

    monkeypatch.setitem(SCHEDULERS, "opaque", broken)

    def build(bld, x):
        return {"y": bld.op("sigmoid", [x])}

    node, region, labels = build_region({"x": ((7, 9), F32)}, build, kind="opaque")
    kernel = run_and_compare(node, region, labels, [np.linspace(-5, 5, 63, dtype=np.float32).reshape(7, 9)])
    assert kernel.meta["schedule"] == "generic"


# -- names, export ------------------------------------------------------------------------------------

HOSTILE = 'x"; os.system(1)'


def test_hostile_value_names_never_reach_kernel_code(tmp_path):
    region = Graph("region")
    x = region.add_input(HOSTILE, TensorType((8, 3), F32))
    w = region.add_constant("w\n}; import os #", np.arange(24, dtype=np.float32).reshape(8, 3))
    b = Builder(region)
    y = b.op("add", [b.op("relu", [x]), w], out_names=["__import__('os')"])
    region.outputs = [y]
    outer = Graph("main")
    Builder(outer).op("fused", [outer.add_input("in", TensorType((8, 3), F32))], region=region, kind="elementwise")
    kernel = compile_node(outer.nodes[-1])
    assert SAFE_SYMBOL.fullmatch(kernel.name)
    fragments = ["os.system", "system(", "__import__", "import os", 'x"', "\n}"]
    for text in (kernel.meta["source"], kernel.name):
        assert not any(f in text for f in fragments)
    lib = tmp_path / "k.so"
    kernel.artifact(lib)
    data = lib.read_bytes()
    assert not any(f.encode() in data for f in fragments) and kernel.name.encode() in data
    try:
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        symbols = None
    if symbols is not None:
        names = [ln.split()[-1] for ln in symbols.stdout.splitlines() if ln.strip()]
        assert "__tvm_ffi_" + kernel.name in names
        assert all(re.fullmatch(r"[A-Za-z0-9_.@]+", n) for n in names)
    # The exported library reloads without recompiling and computes the same.
    fn = load_kernel(lib, kernel.meta, [region.constants[n][1] for n in kernel.meta["const_params"]])
    xs = np.random.default_rng(7).standard_normal((8, 3)).astype(np.float32)
    out1, out2 = np.empty((8, 3), np.float32), np.empty((8, 3), np.float32)
    kernel([xs], [out1])
    fn([xs], [out2])
    np.testing.assert_array_equal(out1, out2)


def test_kernel_name_is_deterministic_and_depends_on_the_target():
    def build(bld, x):
        return {"y": bld.op("tanh", [x])}

    n1, _, _ = build_region({"a": ((4,), F32)}, build)
    n2, _, _ = build_region({"a": ((4,), F32)}, build)
    k1, k2 = compile_node(n1), compile_node(n2)
    assert k1.name == k2.name
    k3 = compile_node(n1, target="haswell")
    assert k3.name != k1.name and k3.meta["target"]["mcpu"] == "haswell"
    x = np.linspace(-3, 3, 4, dtype=np.float32)
    out = np.empty(4, np.float32)
    k3([x], [out])  # AVX2 code runs here too
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-6)


# -- cost model ---------------------------------------------------------------------------------------


def test_region_cost_counts_matmul_flops():
    def build(bld, a, b):
        return {"y": bld.op("relu", [bld.op("matmul", [a, b])])}

    _, region, _ = build_region({"a": ((8, 32), F32), "b": ((32, 16), F32)}, build, kind="out_fusable")
    flops, moved = region_cost(region, {})
    assert flops == 2 * 8 * 16 * 32 + 8 * 16
    assert moved == (8 * 32 + 32 * 16 + 8 * 16) * 4


# -- target -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vendor,family,flags,want",
    [
        ("AuthenticAMD", 25, {"avx2", "fma", "avx512f"}, "znver4"),
        ("AuthenticAMD", 25, {"avx2", "fma"}, "znver3"),
        ("GenuineIntel", 6, {"avx2", "fma", "avx512f"}, "skylake-avx512"),
        ("GenuineIntel", 6, {"avx2", "fma"}, "haswell"),
        ("GenuineIntel", 6, {"sse4_2"}, None),
    ],
)
def test_host_mcpu(vendor, family, flags, want):
    info = {"vendor": vendor, "family": family, "model_name": "", "flags": frozenset(flags)}
    assert host_mcpu(info) == want


def test_target_specs():
    assert target_dict("llvm") == target_dict(None)
    assert target_dict("znver4") == {"kind": "llvm", "mcpu": "znver4"}
    assert target_dict("llvm -mcpu=haswell") == {"kind": "llvm", "mcpu": "haswell"}
    assert target_dict({"kind": "llvm", "mcpu": "skylake-avx512"})["mcpu"] == "skylake-avx512"
    assert str(get_target("znver4").attrs["mcpu"]) == "znver4"
    assert vector_lanes("znver4") == 16 and vector_lanes("haswell") == 8 and vector_lanes("znver4", 64) == 8
    assert num_threads() >= 1
    with pytest.raises(EinfuseError, match="bad target"):
        target_dict("llvm; rm -rf /")
    with pytest.raises(EinfuseError, match="CPUs"):
        target_dict({"kind": "cuda"})


def test_weight_operands_are_prepacked_by_the_runtime():
    """A dense emitter asks for a weight operand in a packed layout: when the fused node's
    operand is a graph constant, the kernel takes it pre-packed (meta["prepack"])."""
    from einfuse.runtime.executable import apply_prepack

    rng = np.random.default_rng(8)
    region = Graph("region")
    x = region.add_input("x", TensorType((5, 40), F32))
    w = region.add_input("w", TensorType((40, 24), F32))
    b = Builder(region)
    region.outputs = [b.op("relu", [b.op("matmul", [x, w])])]
    outer = Graph("main")
    weight = rng.standard_normal((40, 24)).astype(np.float32)
    Builder(outer).op(
        "fused",
        [outer.add_input("x", TensorType((5, 40), F32)), outer.add_constant("w", weight)],
        region=region,
        kind="out_fusable",
    )
    kernel = compile_node(outer.nodes[-1])
    assert list(kernel.meta["prepack"]) == [1]
    xs = rng.standard_normal((5, 40)).astype(np.float32)
    out = np.empty((5, 24), np.float32)
    kernel([xs, apply_prepack(weight, kernel.meta["prepack"][1])], [out])
    np.testing.assert_allclose(out, np.maximum(xs @ weight, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_ml_dtypes_arrays_pass_to_tvm_without_a_copy(dtype):
    """numpy refuses DLPack for ml_dtypes arrays; the kernel calling convention views their
    bits instead, so bf16/fp8 tensors reach TVM kernels and results land in the caller's array."""
    import ml_dtypes  # noqa: F401 - registers the dtypes with numpy

    from einfuse.codegen.tvm import _to_tvm

    x = np.arange(12, dtype=np.float32).reshape(3, 4).astype(dtype)
    t = _to_tvm(x)
    assert t.dtype == dtype and tuple(t.shape) == (3, 4)
    np.testing.assert_array_equal(t.numpy().astype(np.float32), x.astype(np.float32))
    # Writing through the TVM view changes the numpy array: same memory.
    t.copyfrom(np.full((3, 4), 2.0, np.float32).astype(dtype))
    np.testing.assert_array_equal(x.astype(np.float32), np.full((3, 4), 2.0, np.float32))


def test_tvm_backend_import_leaves_torch_out_but_importable():
    """tvm_ffi imports torch eagerly (seconds per process); the backend keeps it out, and a
    later `import torch` in the same process still works."""
    import sys

    code = (
        "import sys, einfuse.codegen.tvm; assert 'torch' not in sys.modules, 'torch was imported'; "
        "import torch; assert float(torch.ones(2).sum()) == 2.0; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
