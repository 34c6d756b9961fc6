"""TVM dense kernels (matmul, gemm, conv, conv_transpose) vs the numpy reference.

Each case compiles one fused out_fusable region through the TVM backend and compares it
with the reference evaluator. Shapes are deliberately not tile multiples (odd M/N/K, a
single row, batch broadcasting). Weights are exercised both ways the lowering can see
them: as region inputs (the kernel packs them in-kernel) and as region constants (packed
once at compile time into an extra kernel parameter). Epilogues (bias, relu, gelu,
residual add, scale) are fused into the anchor's output write; `meta["schedule"]` shows
the dense scheduler ran (a scheduler failure would silently fall back to the generic one).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tvm")

from einfuse.codegen import reference
from einfuse.codegen.backend import LoweringError, get_backend
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType

TOL = {np.dtype(np.float32): (2e-5, 2e-5), np.dtype(np.float16): (5e-3, 5e-3), np.dtype(np.float64): (1e-12, 1e-12)}


def _dtype(a: np.ndarray) -> DType:
    return DType.from_numpy(a.dtype)


def compile_region(inputs: dict, build, consts: dict | None = None):
    """A fused out_fusable node over `inputs` ({name: array}) and region constants `consts`;
    build(builder, *input values, **constant values) returns the region output(s)."""
    region = Graph("region")
    vals = [region.add_input(n, TensorType(a.shape, _dtype(a))) for n, a in inputs.items()]
    cvals = {k: region.add_constant(k, v) for k, v in (consts or {}).items()}
    outs = build(Builder(region), *vals, **cvals)
    region.outputs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    outer = Graph("main")
    ops = [outer.add_input(n, TensorType(a.shape, _dtype(a))) for n, a in inputs.items()]
    Builder(outer).op("fused", ops, region=region, kind="out_fusable")
    node = outer.nodes[-1]
    return get_backend("tvm").compile(node), region


def check(inputs: dict, build, consts: dict | None = None, tol=None, schedule: str = "out_fusable"):
    kernel, region = compile_region(inputs, build, consts)
    assert kernel.meta["schedule"] == schedule
    want = reference.run(region, dict(inputs))
    outs = [np.empty(w.shape, w.dtype) for w in want.values()]
    kernel(list(inputs.values()), outs)
    for got, w in zip(outs, want.values()):
        assert got.dtype == w.dtype and got.shape == w.shape
        if w.dtype.kind == "f":
            rtol, atol = tol or TOL[w.dtype]
            np.testing.assert_allclose(got.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got, w)
    return kernel


def rand(*shape, dtype=np.float32, seed=None):
    rng = np.random.default_rng(seed if seed is not None else sum(shape) * 7 + len(shape))
    return rng.standard_normal(shape).astype(dtype)


# -- matmul ----------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((13, 19), (19, 37)),  # nothing divides the 4/6 x 32/64 tiles
    ((1, 40), (40, 50)),  # one row (decode), padded columns
    ((1, 40), (40, 128)),  # one row, whole panels: the pack is inlined
    ((70, 96), (96, 200)),  # several panels: packed per panel in-kernel
    ((2, 3, 13, 19), (19, 37)),  # batch rows flattened against a 2-D weight
    ((2, 3, 13, 19), (3, 19, 37)),  # batch broadcast over B's batch
    ((3, 1, 5, 8), (1, 4, 8, 6)),  # both sides broadcast; N below one vector
    ((19,), (19, 37)),  # 1-D A: a row vector
    ((5, 19), (19,)),  # 1-D B: a column vector
    ((19,), (19,)),  # dot product
]


@pytest.mark.parametrize("weight", ["operand", "constant"])
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb, weight):
    from einfuse.codegen.tvm.dense import DENSE_PATH

    a, b = rand(*sa), rand(*sb)
    if weight == "operand":
        kernel = check({"a": a, "b": b}, lambda bl, a, b: bl.op("matmul", [a, b]))
    else:
        kernel = check({"a": a}, lambda bl, a, b: bl.op("matmul", [a, b]), consts={"b": b})
    if len(sa) + len(sb) > 2:  # not a dot product: the output write is the register tile's
        assert f'"{DENSE_PATH}": "gemm_fused"' in kernel.meta["source"]


def test_matmul_attention_shapes():
    """Q @ K^T and P @ V per head: batched, both operands computed (nothing packed ahead)."""
    check({"q": rand(4, 33, 16), "kt": rand(4, 16, 70)}, lambda bl, q, kt: bl.op("matmul", [q, kt]))
    check({"p": rand(4, 33, 70), "v": rand(4, 70, 16)}, lambda bl, p, v: bl.op("matmul", [p, v]))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_matmul_dtypes(dtype):
    a, b = rand(13, 19, dtype=dtype), rand(19, 37, dtype=dtype)
    check({"a": a, "b": b}, lambda bl, a, b: bl.op("matmul", [a, b]))
    check({"a": a}, lambda bl, a, b: bl.op("matmul", [a, b]), consts={"b": b})


def test_matmul_int32():
    rng = np.random.default_rng(3)
    a, b = rng.integers(-50, 50, (7, 11), dtype=np.int32), rng.integers(-50, 50, (11, 21), dtype=np.int32)
    check({"a": a, "b": b}, lambda bl, a, b: bl.op("matmul", [a, b]))


# -- gemm ------------------------------------------------------------------------------------

GEMM_CASES = [
    # (A shape, B shape, C shape or None, attrs)
    ((13, 19), (19, 37), None, {}),
    ((19, 13), (19, 37), (13, 1), {"transA": True}),
    ((13, 19), (37, 19), (37,), {"transB": True, "alpha": 0.5, "beta": 2.0}),
    ((19, 13), (37, 19), (13, 37), {"transA": True, "transB": True, "beta": -1.0}),
    ((13, 19), (19, 37), (), {"alpha": 3.0, "beta": 0.0}),
    ((1, 64), (100, 64), (100,), {"transB": True}),  # a classifier head, batch 1
    ((3, 70), (37, 70), None, {"transB": True, "alpha": 2.0}),  # few rows, K not a vector multiple
]


@pytest.mark.parametrize("weight", ["operand", "constant"])
@pytest.mark.parametrize("sa,sb,sc,attrs", GEMM_CASES, ids=[str(i) for i in range(len(GEMM_CASES))])
def test_gemm(sa, sb, sc, attrs, weight):
    a, b = rand(*sa), rand(*sb)
    c = rand(*sc, seed=5) if sc is not None else None
    if weight == "operand":
        inputs = {"a": a, "b": b, **({"c": c} if c is not None else {})}
        check(inputs, lambda bl, *ops: bl.op("gemm", list(ops), **attrs))
    else:
        inputs = {"a": a, **({"c": c} if c is not None else {})}

        def build(bl, a, *c, b):
            return bl.op("gemm", [a, b, *c], **attrs)

        check(inputs, build, consts={"b": b})


# -- fused epilogues -------------------------------------------------------------------------


def test_matmul_bias_relu_epilogue():
    x, w, bias = rand(2, 13, 40), rand(40, 70), rand(70)

    def build(bl, x, w, bias):
        return bl.op("relu", [bl.op("add", [bl.op("matmul", [x, w]), bias])])

    kernel = check({"x": x, "w": w, "bias": bias}, build)
    # One output stage: the epilogue is applied to the register tile, not a second pass.
    assert kernel.meta["source"].count('scope="local"') == 1


def test_matmul_bias_gelu_residual_scale_epilogue():
    x, r = rand(2, 13, 40), rand(2, 13, 70)

    def build(bl, x, r, w, bias, scale):
        y = bl.op("gelu", [bl.op("add", [bl.op("matmul", [x, w]), bias])])
        return bl.op("add", [bl.op("mul", [y, scale]), r])

    consts = {"w": rand(40, 70), "bias": rand(70), "scale": np.array(0.5, np.float32)}
    kernel = check({"x": x, "r": r}, build, consts=consts)
    assert any(name.startswith("param:") for name in kernel.meta["const_params"])  # packed weight


def test_anchor_with_two_outputs():
    """matmul and relu(matmul) both leave the region: the anchor is tiled on its own."""

    def build(bl, a, b):
        y = bl.op("matmul", [a, b])
        return [y, bl.op("relu", [y])]

    check({"a": rand(13, 19), "b": rand(19, 37)}, build)


@pytest.mark.parametrize("group", [1, 4])
def test_conv_with_two_outputs(group):
    """conv and relu(conv) both leave the region (direct and depthwise kernels)."""
    attrs = _conv_attrs((8, 4 // group, 3, 3), {"pads": (1, 1, 1, 1), "group": group})

    def build(bl, x, w):
        y = bl.op("conv", [x, w], **attrs)
        return [y, bl.op("relu", [y])]

    check({"x": rand(1, 4, 9, 10), "w": rand(8, 4 // group, 3, 3)}, build)


def test_conv_bias_relu_residual_epilogue():
    x, r = rand(1, 8, 10, 11), rand(1, 16, 10, 11)

    def build(bl, x, r, w, bias):
        y = bl.op("conv", [x, w, bias], kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
        return bl.op("relu", [bl.op("add", [y, r])])

    kernel = check({"x": x, "r": r}, build, consts={"w": rand(16, 8, 3, 3), "bias": rand(16)})
    assert kernel.meta["source"].count('scope="local"') == 1


# -- conv ------------------------------------------------------------------------------------

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((1, 8, 10, 10), (16, 8, 3, 3), {"pads": (1, 1, 1, 1)}),
    ((2, 5, 9, 11), (7, 5, 3, 2), {"strides": (2, 1), "pads": (1, 0, 2, 1), "dilations": (1, 2)}),
    ((1, 3, 23, 23), (20, 3, 7, 7), {"strides": (2, 2), "pads": (3, 3, 3, 3)}),  # a stem conv
    ((1, 24, 7, 7), (40, 24, 1, 1), {}),  # 1x1, OC not a multiple of 16
    ((1, 6, 9, 9), (6, 2, 3, 3), {"group": 3, "pads": (1, 1, 1, 1)}),  # grouped
    ((1, 32, 9, 9), (64, 16, 3, 3), {"group": 2, "pads": (1, 1, 1, 1)}),  # grouped, vector blocks
    ((1, 8, 9, 9), (8, 1, 3, 3), {"group": 8, "pads": (1, 1, 1, 1), "strides": (2, 2)}),  # depthwise
    ((1, 4, 9, 20), (8, 1, 3, 3), {"group": 4, "pads": (0, 1, 2, 1), "dilations": (2, 1)}),  # multiplier 2
    ((1, 4, 20), (40, 4, 3), {"pads": (1, 1)}),  # 1-D
    ((2, 3, 19), (3, 1, 5), {"group": 3, "pads": (2, 2), "strides": (2,)}),  # 1-D depthwise
    ((1, 3, 5, 6, 7), (4, 3, 2, 3, 2), {"pads": (1, 0, 1, 0, 1, 1)}),  # 3-D (direct kernel)
]


def _conv_attrs(w_shape, attrs):
    nd = len(w_shape) - 2
    full = {"kernel_shape": tuple(w_shape[2:]), "strides": (1,) * nd, "pads": (0,) * 2 * nd, "dilations": (1,) * nd}
    return {**full, **attrs}


@pytest.mark.parametrize("weight", ["operand", "constant"])
@pytest.mark.parametrize("sx,sw,attrs", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv(sx, sw, attrs, weight):
    x, w, bias = rand(*sx), rand(*sw), rand(sw[0])
    attrs = _conv_attrs(sw, attrs)
    if weight == "operand":
        check({"x": x, "w": w}, lambda bl, x, w: bl.op("conv", [x, w], **attrs))
    else:
        check({"x": x}, lambda bl, x, w, b: bl.op("conv", [x, w, b], **attrs), consts={"w": w, "b": bias})


def test_conv_f16():
    x, w, b = rand(1, 8, 10, 10, dtype=np.float16), rand(16, 8, 3, 3, dtype=np.float16), rand(16, dtype=np.float16)
    attrs = _conv_attrs(w.shape, {"pads": (1, 1, 1, 1)})
    check({"x": x, "w": w, "b": b}, lambda bl, x, w, b: bl.op("conv", [x, w, b], **attrs), tol=(1e-2, 1e-2))


CONV_T_CASES = [
    ((1, 4, 5, 5), (4, 3, 3, 3), {"strides": (2, 2), "pads": (1, 1, 0, 0), "output_padding": (1, 1)}),
    ((2, 4, 5, 6), (4, 2, 3, 2), {"strides": (1, 2), "pads": (0, 1, 1, 0), "dilations": (2, 1), "group": 2}),
    ((1, 3, 7), (3, 5, 4), {"strides": (3,), "pads": (1, 2)}),
]


@pytest.mark.parametrize("sx,sw,attrs", CONV_T_CASES, ids=[str(i) for i in range(len(CONV_T_CASES))])
def test_conv_transpose(sx, sw, attrs):
    x, w, b = rand(*sx), rand(*sw), rand(sw[1] * attrs.get("group", 1))
    nd = len(sx) - 2
    attrs = {"kernel_shape": tuple(sw[2:]), "dilations": (1,) * nd, **attrs}
    check({"x": x, "w": w, "b": b}, lambda bl, x, w, b: bl.op("conv_transpose", [x, w, b], **attrs))


# -- errors ----------------------------------------------------------------------------------


def test_unsupported_dtype_is_a_lowering_error():
    from tvm import te

    from einfuse.codegen.tvm.dense import emit_matmul
    from einfuse.codegen.tvm.emit import EmitCtx

    a, b = te.placeholder((4, 4), "int8", name="a"), te.placeholder((4, 4), "int8", name="b")
    with pytest.raises(LoweringError, match="no TVM dense kernel for dtype int8"):
        emit_matmul(EmitCtx(target=None), None, a, b)


def test_dynamic_shape_is_a_lowering_error():
    from tvm import te

    from einfuse.codegen.tvm.dense import emit_matmul
    from einfuse.codegen.tvm.emit import EmitCtx

    a, b = te.placeholder((te.var("m"), 4), "float32", name="a"), te.placeholder((4, 4), "float32", name="b")
    with pytest.raises(LoweringError, match="dynamic shape"):
        emit_matmul(EmitCtx(target=None), None, a, b)


# -- weights the runtime stores packed -----------------------------------------------------------


@pytest.mark.parametrize("op", ["matmul", "gemm_transB", "conv"])
def test_weight_operand_is_prepacked(op):
    """A fused node's constant operand (how the fusion pass passes weights): the emitter
    asks the lowering for it packed (ctx.prepack_operand), the kernel lists the JSON-able
    layout steps in meta["prepack"], and the runtime applies them once (apply_prepack)."""
    from einfuse.runtime.executable import apply_prepack

    if op == "matmul":
        arrays, attrs, name = [rand(13, 19), rand(19, 70)], {}, "matmul"
    elif op == "gemm_transB":
        arrays, attrs, name = [rand(13, 19), rand(70, 19), rand(70)], {"transB": True}, "gemm"
    else:
        arrays, name = [rand(1, 5, 9, 9), rand(20, 5, 3, 3)], "conv"
        attrs = _conv_attrs((20, 5, 3, 3), {"pads": (1, 1, 1, 1), "strides": (2, 2)})
    region = Graph("region")
    values = [region.add_input(f"x{i}", TensorType(a.shape, DType.f32)) for i, a in enumerate(arrays)]
    region.outputs = [Builder(region).op(name, values, **attrs)]
    outer = Graph("main")
    operands = [outer.add_input("x0", TensorType(arrays[0].shape, DType.f32)), outer.add_constant("w", arrays[1])]
    operands += [outer.add_input(f"x{i}", TensorType(a.shape, DType.f32)) for i, a in enumerate(arrays) if i > 1]
    Builder(outer).op("fused", operands, region=region, kind="out_fusable")
    kernel = get_backend("tvm").compile(outer.nodes[-1])
    assert kernel.meta["schedule"] == "out_fusable"
    steps = kernel.meta["prepack"][1]
    assert list(kernel.meta["prepack"]) == [1]  # the weight, and only it
    assert json.loads(json.dumps(steps)) == steps  # storable in the executable's manifest
    want = next(iter(reference.run(region, {f"x{i}": a for i, a in enumerate(arrays)}).values()))
    out = np.empty_like(want)
    kernel([arrays[0], apply_prepack(arrays[1], steps), *arrays[2:]], [out])
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)


# -- views in the epilogue -------------------------------------------------------------------

# (x shape, weight shape, reshape to, dense path): the reshape regroups the result's rows
# and/or columns (GPT-2's addmm -> view), so it is inlined into the register tile's write.
VIEW_CASES = [
    ((26, 40), (40, 70), (1, 26, 70), "gemm_fused"),  # GPT-2: [S, H] -> [1, S, H]
    ((26, 40), (40, 70), (2, 13, 70), "gemm_fused"),  # rows split
    ((26, 40), (40, 70), (1, 26, 7, 10), "gemm_fused"),  # columns split (heads)
    ((26, 40), (40, 70), (26, 70, 1), "gemm_fused"),  # a trailing unit dim
    ((2, 13, 40), (40, 70), (26, 70), "gemm_alone"),  # merged rows: div/mod indices (see below)
    ((26, 40), (40, 70), (70, 26), "gemm_alone"),  # same rank, rows and columns mixed
]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("sx,sw,shape,path", VIEW_CASES, ids=[str(c[2]) for c in VIEW_CASES])
def test_matmul_bias_reshape_epilogue(sx, sw, shape, path, residual):
    """matmul + add + reshape (+ add): the fused groups of GPT-2's linear layers. The dense
    schedule must take them (not the generic one), with the epilogue in the tile's write."""
    from einfuse.codegen.tvm.dense import DENSE_PATH

    inputs = {"x": rand(*sx), **({"r": rand(*shape, seed=9)} if residual else {})}

    def build(bl, x, *r, w, bias):
        y = bl.op("reshape", [bl.op("add", [bl.op("matmul", [x, w]), bias])], shape=shape)
        return bl.op("add", [y, *r]) if r else y

    kernel = check(inputs, build, consts={"w": rand(*sw), "bias": rand(sw[-1])})
    assert f'"{DENSE_PATH}": "{path}"' in kernel.meta["source"]


def test_single_row_epilogue_is_fused():
    """BERT's pooler: one row, whose unit loop TIR reads as the constant 0."""
    from einfuse.codegen.tvm.dense import DENSE_PATH

    def build(bl, x, w, bias):
        return bl.op("tanh", [bl.op("add", [bl.op("matmul", [x, w]), bias])])

    kernel = check({"x": rand(1, 40)}, build, consts={"w": rand(40, 70), "bias": rand(70)})
    assert f'"{DENSE_PATH}": "gemm_fused"' in kernel.meta["source"]


def test_matmul_transpose_epilogue_is_not_fused():
    """A transpose keeps the group sizes but moves elements across rows: the output does
    not read one register tile per tile, so the anchor is tiled on its own."""
    from einfuse.codegen.tvm.dense import DENSE_PATH

    def build(bl, x, w):
        y = bl.op("reshape", [bl.op("matmul", [x, w])], shape=(2, 13, 70))
        return bl.op("transpose", [y], perm=(1, 0, 2))

    kernel = check({"x": rand(26, 40)}, build, consts={"w": rand(40, 70)})
    assert f'"{DENSE_PATH}": "gemm_alone"' in kernel.meta["source"]


@pytest.mark.parametrize("shape,path", [((2, 3, 1, 13, 37), "gemm_fused"), ((6, 13, 37), "gemm_alone")])
def test_batched_matmul_reshape_epilogue(shape, path):
    """One GEMM per batch entry (B has a batch). A reshape that merges dims reads the
    result through div/mod of a flat index (ops_injective.reshape_index), which
    compute_at cannot tile: correct, but the anchor is scheduled on its own."""
    from einfuse.codegen.tvm.dense import DENSE_PATH

    def build(bl, a, b):
        return bl.op("reshape", [bl.op("matmul", [a, b])], shape=shape)

    kernel = check({"a": rand(2, 3, 13, 19), "b": rand(3, 19, 37)}, build)
    assert f'"{DENSE_PATH}": "{path}"' in kernel.meta["source"]


def test_gemv_reshape_residual_epilogue():
    """The dot-product kernel (a few rows, transposed B as an operand) with a view epilogue."""
    from einfuse.codegen.tvm.dense import DENSE_PATH

    def build(bl, a, b, r):
        y = bl.op("reshape", [bl.op("gemm", [a, b], transB=True)], shape=(1, 3, 37))
        return bl.op("add", [y, r])

    kernel = check({"a": rand(3, 70), "b": rand(37, 70), "r": rand(1, 3, 37)}, build)
    assert f'"{DENSE_PATH}": "gemv_fused"' in kernel.meta["source"]
