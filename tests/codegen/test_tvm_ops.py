"""TVM emitters vs the numpy reference, op by op.

Compilation dominates the cost, so each test builds ONE region holding many ops (one
region output per op) and compiles it once; a mismatch names the op. Shapes are odd
(not multiples of the 16 vector lanes) and include size-1 and broadcast dims.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from einfuse.codegen import reference
from einfuse.codegen.backend import get_backend
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType

F32, F16, F64 = DType.f32, DType.f16, DType.f64


def build_region(inputs: dict, build, kind: str = "elementwise", consts: dict | None = None):
    """A fused node whose region takes `inputs` ({name: (shape, dtype)}) and returns
    build(builder, *input values, **constant values) -> {label: value}."""
    region = Graph("region")
    vals = [region.add_input(n, TensorType(s, d)) for n, (s, d) in inputs.items()]
    cvals = {k: region.add_constant(k, v) for k, v in (consts or {}).items()}
    outs = build(Builder(region), *vals, **cvals)
    labels = list(outs)
    region.outputs = [outs[k] for k in labels]
    outer = Graph("main")
    ops = [outer.add_input(n, TensorType(s, d)) for n, (s, d) in inputs.items()]
    Builder(outer).op("fused", ops, region=region, kind=kind)
    return outer.nodes[-1], region, labels


def run_and_compare(node, region, labels, arrays, tol=None, dims=None):
    """Compiles the node, runs it on preallocated outputs, compares with the reference.
    tol: {dtype char or label: (rtol, atol)}."""
    kernel = get_backend("tvm").compile(node, dims=dims)
    ref = reference.run(region, {v.name: a for v, a in zip(region.inputs, arrays)})
    outs = [np.empty(r.shape, r.dtype) for r in ref.values()]
    kernel(arrays, outs)
    for label, got, want in zip(labels, outs, ref.values()):
        assert got.dtype == want.dtype and got.shape == want.shape, label
        if want.dtype.kind == "f":
            rtol, atol = (tol or {}).get(label) or (tol or {}).get(want.dtype.char) or _default_tol(want.dtype)
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, err_msg=label, equal_nan=True
            )
        else:
            np.testing.assert_array_equal(got, want, err_msg=label)
    return kernel


def _default_tol(dtype):
    if dtype == np.float16:
        return 1e-3, 1e-3
    if dtype == np.float64:
        return 1e-12, 1e-12
    return 2e-6, 1e-6


# -- elementwise ------------------------------------------------------------------------------

# op -> which input it reads: x (any real), p (positive), u (inside (-1, 1)).
UNARY_FLOAT = {
    "exp": "x", "log": "p", "sqrt": "p", "reciprocal": "p", "floor": "x", "ceil": "x", "round": "x",
    "sin": "x", "cos": "x", "tan": "u", "asin": "u", "acos": "u", "atan": "x", "sinh": "x", "cosh": "x",
    "asinh": "x", "acosh": "p1", "atanh": "u", "erf": "x", "tanh": "x", "sigmoid": "x", "neg": "x",
    "abs": "x", "sign": "x", "relu": "x", "softplus": "x", "softsign": "x", "mish": "x", "hard_swish": "x",
    "elu": "x", "selu": "x", "celu": "x", "gelu": "x", "leaky_relu": "x", "hard_sigmoid": "x",
    "thresholded_relu": "x", "is_nan": "x", "is_inf": "x", "identity": "x", "shrink": "x",
}  # fmt: skip


# Low-precision and f64 variants run the ops whose code paths differ by dtype.
UNARY_SUBSET = ["exp", "log", "sqrt", "round", "erf", "tanh", "sigmoid", "gelu", "softplus", "elu", "abs", "sign", "relu", "is_inf", "asin"]  # fmt: skip


@pytest.mark.parametrize("dtype", [F32, F16, F64])
def test_unary_float_ops(dtype):
    shape = (3, 37)
    rng = np.random.default_rng(1)
    npdt = dtype.np
    x = (rng.standard_normal(shape) * 4).astype(npdt)
    x[0, :6] = [0.0, -0.0, 0.5, -2.5, 1e-4, -30.0]
    arrays = {
        "x": x,
        "p": rng.uniform(0.05, 6.0, shape).astype(npdt),
        "p1": rng.uniform(1.0, 6.0, shape).astype(npdt),
        "u": rng.uniform(-0.95, 0.95, shape).astype(npdt),
    }

    def build(b, x, p, p1, u):
        src = {"x": x, "p": p, "p1": p1, "u": u}
        ops = UNARY_FLOAT if dtype == F32 else {op: UNARY_FLOAT[op] for op in UNARY_SUBSET}
        outs = {op: b.op(op, [src[which]]) for op, which in ops.items()}
        outs["gelu_tanh"] = b.op("gelu", [x], approximate="tanh")
        outs["leaky_relu_0.2"] = b.op("leaky_relu", [x], alpha=0.2)
        outs["is_inf_pos"] = b.op("is_inf", [x], detect_negative=False)
        return outs

    node, region, labels = build_region({k: (shape, dtype) for k in arrays}, build)
    tol = {"e": (2e-3, 2e-3), "f": (3e-6, 2e-6), "d": (1e-12, 1e-12)}
    # Polynomial f32 erf/tanh are within a few 1e-7 absolute (and exact-ish in f64).
    tol.update({"erf": (1e-6, 1e-6), "gelu": (1e-6, 2e-6), "tanh": (1e-6, 1e-6), "mish": (1e-6, 2e-6)})
    if dtype == F64:
        # f64 exp-based ops go through libm exp; 1e-12 relative is libm agreement.
        tol.update({op: (1e-11, 1e-12) for op in ("sinh", "cosh", "elu", "selu", "celu", "softplus", "mish")})
    run_and_compare(node, region, labels, list(arrays.values()), tol=tol)


def test_special_float_values():
    """inf, nan and huge values through exp/sigmoid/tanh/erf/relu/softplus (f32)."""
    vals = np.array(
        [
            0.0,
            1.0,
            -1.0,
            88.0,
            89.0,
            -87.0,
            -104.0,
            -110.0,
            1e30,
            -1e30,
            np.inf,
            -np.inf,
            np.nan,
            20.0,
            -20.0,
            5e-5,
            -5e-5,
        ]
    )
    x = np.tile(vals, 3).astype(np.float32)

    def build(b, x):
        return {
            op: b.op(op, [x])
            for op in ("exp", "sigmoid", "tanh", "erf", "relu", "softplus", "neg", "abs", "sign", "is_nan")
        }

    node, region, labels = build_region({"x": (x.shape, F32)}, build)
    run_and_compare(node, region, labels, [x], tol={"f": (2e-6, 1e-6), "erf": (1e-6, 1e-6), "tanh": (1e-6, 1e-6)})


BINARY_FLOAT = ["add", "sub", "mul", "div", "pow", "min", "max", "sum", "mean", "equal", "less", "less_or_equal", "greater", "greater_or_equal", "prelu"]  # fmt: skip


@pytest.mark.parametrize(
    "dtype,sa,sb",
    [(F32, (5, 1, 7), (3, 1)), (F32, (2, 17), ()), (F16, (4, 19), (19,)), (F64, (1, 9), (6, 9))],
)
def test_binary_float_ops(dtype, sa, sb):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(sa).astype(dtype.np) * 3
    b_ = rng.standard_normal(sb).astype(dtype.np) * 3
    pos = np.abs(a) + 0.5
    unidirectional = len(sb) <= len(sa) and all(d in (1, e) for d, e in zip(sb[::-1], sa[::-1]))
    shape_prelu = sb if unidirectional else ()
    slope = rng.standard_normal(shape_prelu).astype(dtype.np)

    def build(bld, a, b, pos, slope):
        outs = {}
        for op in BINARY_FLOAT:
            if op == "pow":
                outs[op] = bld.op("pow", [pos, b])
            elif op == "prelu":
                outs[op] = bld.op("prelu", [a, slope])
            else:
                outs[op] = bld.op(op, [a, b])
        outs["mod"] = bld.op("mod", [a, b])
        outs["fmod"] = bld.op("mod", [a, b], fmod=True)
        outs["max3"] = bld.op("max", [a, b, a])
        outs["where"] = bld.op("where", [bld.op("less", [a, b]), a, b])
        if unidirectional:
            outs["clip"] = bld.op("clip", [a, bld.op("neg", [bld.op("abs", [b])]), bld.op("abs", [b])])
        return outs

    inputs = {"a": (sa, dtype), "b": (sb, dtype), "pos": (sa, dtype), "slope": (shape_prelu, dtype)}
    node, region, labels = build_region(inputs, build)
    tol = {"pow": (1e-5, 1e-5)} if dtype == F32 else None
    run_and_compare(node, region, labels, [a, b_, pos, slope], tol=tol)


def test_pow_constant_exponent_and_int_base():
    x = np.linspace(-3, 3, 21, dtype=np.float32)
    n = np.arange(-4, 17, dtype=np.int64)

    def build(b, x, n, two, e, three, m1):
        return {
            "sq": b.op("pow", [x, two]),
            "cube": b.op("pow", [x, three]),
            "inverse": b.op("pow", [x, m1]),
            "computed_exp": b.op("pow", [x, b.op("add", [two, b.op("div", [two, two])])]),
            "int_pow": b.op("pow", [n, e]),
            "f_int_exp": b.op("pow", [x, b.op("cast", [e], to=DType.f32)]),
        }

    consts = {"two": np.array(2.0, np.float32), "e": np.array([2, 3, 0, 1, -1, 2, 2] * 3, np.int64)}
    consts.update({"three": np.array(3.0, np.float32), "m1": np.array([-1.0], np.float32)})
    node, region, labels = build_region({"x": ((21,), F32), "n": ((21,), DType.i64)}, build, consts=consts)
    run_and_compare(node, region, labels, [x, n])


INT_OPS = ["add", "sub", "mul", "div", "min", "max", "bitwise_and", "bitwise_or", "bitwise_xor", "equal", "less", "greater_or_equal"]  # fmt: skip


@pytest.mark.parametrize("dtype", [DType.i64, DType.i32, DType.i8, DType.u8])
def test_integer_ops(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype.np)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    a = rng.integers(lo, hi, (3, 23), endpoint=True).astype(dtype.np)
    b = rng.integers(lo, hi, (23,), endpoint=True).astype(dtype.np)
    b[:3] = [1, 2, 3] if info.min == 0 else [-1, -7, 3]  # -1 divisor: MIN / -1 must not trap
    b[b == 0] = 5
    a[0, 0] = info.min
    shift = rng.integers(0, info.bits + 2, (23,)).astype(dtype.np)

    def build(bld, a, b, s):
        outs = {op: bld.op(op, [a, b]) for op in INT_OPS}
        outs["mod"] = bld.op("mod", [a, b])
        outs["fmod"] = bld.op("mod", [a, b], fmod=True)
        outs["bitwise_not"] = bld.op("bitwise_not", [a])
        outs["abs"] = bld.op("abs", [a])
        outs["sign"] = bld.op("sign", [a])
        outs["shl"] = bld.op("bitshift", [a, s], direction="LEFT")
        outs["shr"] = bld.op("bitshift", [a, s], direction="RIGHT")
        outs["clip"] = bld.op("clip", [a, bld.op("min", [b, bld.op("neg", [b])]) if info.min < 0 else b])
        if info.min < 0:
            outs["neg"] = bld.op("neg", [a])
            outs["relu"] = bld.op("relu", [a])
        outs["to_f32"] = bld.op("cast", [a], to=F32)
        outs["shrink"] = bld.op("shrink", [a], bias=1.5, lambd=50.0)
        return outs

    node, region, labels = build_region({"a": ((3, 23), dtype), "b": ((23,), dtype), "s": ((23,), dtype)}, build)
    run_and_compare(node, region, labels, [a, b, shift])


def test_bool_ops():
    rng = np.random.default_rng(4)
    a = rng.random((4, 1, 9)) > 0.5
    b = rng.random((3, 9)) > 0.5
    x = rng.standard_normal((3, 9)).astype(np.float32)

    def build(bld, a, b, x):
        return {
            "not": bld.op("not", [a]),
            "and": bld.op("and", [a, b]),
            "or": bld.op("or", [a, b]),
            "xor": bld.op("xor", [a, b]),
            "equal": bld.op("equal", [a, b]),
            "less": bld.op("less", [a, b]),
            "where": bld.op("where", [a, x, bld.op("neg", [x])]),
            "to_f32": bld.op("cast", [a], to=F32),
            "to_i64": bld.op("cast", [a], to=DType.i64),
            "from_f32": bld.op("cast", [x], to=DType.bool),
        }

    node, region, labels = build_region(
        {"a": ((4, 1, 9), DType.bool), "b": ((3, 9), DType.bool), "x": ((3, 9), F32)}, build
    )
    run_and_compare(node, region, labels, [a, b, x])


CAST_TYPES = [F32, F16, F64, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool]


def test_cast_grid():
    vals = np.array([0.0, -0.0, 1.5, -1.5, 2.5, -2.7, 100.9, -100.9, 65504.0, 0.1, 1e-3, 127.0, 255.0, 7.0, -7.0])
    arrays = {str(d): vals.astype(d.np) for d in CAST_TYPES}

    def build(b, *xs):
        outs = {}
        for src, x in zip(CAST_TYPES, xs):
            for dst in CAST_TYPES:
                if src != dst:
                    outs[f"{src}->{dst}"] = b.op("cast", [x], to=dst)
        outs["bit_cast f32->i32"] = b.op("bit_cast", [xs[0]], to=DType.i32)
        outs["bit_cast i64->f64"] = b.op("bit_cast", [xs[3]], to=F64)
        return outs

    node, region, labels = build_region({str(d): ((15,), d) for d in CAST_TYPES}, build)
    run_and_compare(node, region, labels, list(arrays.values()), tol={"e": (0, 0), "f": (0, 0), "d": (0, 0)})


def test_quantize_dequantize():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32) * 50
    scale_axis = np.array([0.5, 1.0, 2.0], np.float32)
    zp_axis = np.array([1, -3, 7], np.int8)
    q = rng.integers(0, 255, (2, 3, 5)).astype(np.uint8)

    def build(b, x, q, s, zp, s0, z0):
        return {
            "q_tensor": b.op("quantize_linear", [x, s0, z0]),
            "q_axis": b.op("quantize_linear", [x, s, zp], axis=1),
            "dq_tensor": b.op("dequantize_linear", [q, s0, z0]),
            "dq_axis": b.op("dequantize_linear", [b.op("quantize_linear", [x, s, zp], axis=1), s, zp], axis=1),
        }

    consts = {"s": scale_axis, "zp": zp_axis, "s0": np.array(0.37, np.float32), "z0": np.array(128, np.uint8)}
    node, region, labels = build_region({"x": ((2, 3, 5), F32), "q": ((2, 3, 5), DType.u8)}, build, consts=consts)
    run_and_compare(node, region, labels, [x, q])


# -- injective --------------------------------------------------------------------------------


def test_layout_ops():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = rng.standard_normal((2, 1, 4, 5)).astype(np.float32)

    def build(b, x, y):
        parts = b.op("split", [x], axis=1, split=(1, 2))
        return {
            "reshape": b.op("reshape", [x], shape=(6, -1)),
            "reshape2": b.op("reshape", [x], shape=(2, 0, 10, 2)),
            "flatten": b.op("flatten", [x], axis=2),
            "transpose": b.op("transpose", [x], perm=(0, 2, 3, 1)),
            "squeeze": b.op("squeeze", [y], axes=(1,)),
            "unsqueeze": b.op("unsqueeze", [y], axes=(0, 5)),
            "concat": b.op("concat", [x, y, x], axis=1),
            "concat_last": b.op("concat", [x, x], axis=3),
            "split0": parts[0],
            "split1": parts[1],
            "slice": b.op("slice", [x], starts=(1, -1), ends=(100, -6), axes=(2, 3), steps=(2, -2)),
            "slice_neg": b.op("slice", [x], starts=(-1,), ends=(-100,), axes=(1,), steps=(-1,)),
            "expand": b.op("expand", [y], shape=(3, 2, 4, 4, 5)),
            "tile": b.op("tile", [y], repeats=(1, 3, 1, 2)),
            "d2s_dcr": b.op("depth_to_space", [b.op("concat", [x, x, y, y], axis=1)], blocksize=2),
            "d2s_crd": b.op("depth_to_space", [b.op("concat", [x, x, y, y], axis=1)], blocksize=2, mode="CRD"),
            "s2d": b.op(
                "space_to_depth", [b.op("slice", [x], starts=(0,), ends=(4,), axes=(3,), steps=(1,))], blocksize=2
            ),
            "s2d_crd": b.op(
                "space_to_depth",
                [b.op("slice", [x], starts=(0,), ends=(4,), axes=(3,), steps=(1,))],
                blocksize=2,
                mode="CRD",
            ),
            "trilu": b.op("trilu", [x], upper=False, k=1),
            "triu": b.op("trilu", [x], upper=True, k=-1),
        }

    node, region, labels = build_region({"x": ((2, 3, 4, 5), F32), "y": ((2, 1, 4, 5), F32)}, build, kind="injective")
    run_and_compare(node, region, labels, [x, y])


@pytest.mark.parametrize("dtype", [F32, DType.i64, DType.bool])
def test_pad_modes(dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((2, 5, 6)) * 10).astype(dtype.np)

    def build(b, x):
        outs = {
            "constant": b.op("pad", [x], pads=(0, 1, 2, 0, 3, 1), value=1.5),
            "crop": b.op("pad", [x], pads=(0, -1, 2, 0, -2, -1)),
        }
        if dtype != DType.bool:
            outs["edge"] = b.op("pad", [x], pads=(1, 2, 0, 0, 3, 4), mode="edge")
            outs["reflect"] = b.op("pad", [x], pads=(0, 3, 4, 1, 4, 5), mode="reflect")
            outs["wrap"] = b.op("pad", [x], pads=(0, 2, 7, 0, 1, 3), mode="wrap")
        return outs

    node, region, labels = build_region({"x": ((2, 5, 6), dtype)}, build, kind="injective")
    run_and_compare(node, region, labels, [x])


def test_gathers():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 7, 3)).astype(np.float32)
    idx = np.array([[0, -1, 3], [6, 2, -7]], np.int64)
    ie = rng.integers(-7, 7, (5, 2, 3)).astype(np.int32)
    ind = np.array([[[1, 2], [4, -1]], [[0, 0], [2, 6]]], np.int64)

    def build(b, x, idx, ie, ind, lens, cidx, big):
        return {
            "reverse_sequence": b.op("reverse_sequence", [x, lens], batch_axis=0, time_axis=1),
            "gather_rt": b.op("gather", [x, idx], axis=1),
            "gather_const": b.op("gather", [x, cidx], axis=0),
            "gather_big_const": b.op("gather", [x, big], axis=1),
            "gather_last": b.op("gather", [x, b.op("sub", [cidx, b.op("add", [cidx, cidx])])], axis=1),
            "gather_elements": b.op("gather_elements", [x, ie], axis=1),
            "gather_nd": b.op("gather_nd", [x, ind]),
            "one_hot": b.op("one_hot", [idx, b.op("cast", [cidx], to=F32)], depth=7, axis=1),
        }

    consts = {"cidx": np.array([4, -1], np.int64), "big": rng.integers(-7, 7, (20,)).astype(np.int64)}
    inputs = {
        "x": ((5, 7, 3), F32),
        "idx": ((2, 3), DType.i64),
        "ie": ((5, 2, 3), DType.i32),
        "ind": ((2, 2, 2), DType.i64),
        "lens": ((5,), DType.i64),
    }
    lens = np.array([7, 1, 0, 4, 3], np.int64)
    node, region, labels = build_region(inputs, build, kind="injective", consts=consts)
    run_and_compare(node, region, labels, [x, idx, ie, ind, lens])


def test_generators():
    def build(b, x):
        return {
            "range_i": b.op("range", [], start=3.0, limit=-8.0, delta=-2.0, dtype=DType.i64),
            "range_f": b.op("range", [], start=0.5, limit=3.0, delta=0.3, dtype=F32),
            "cos": b.op("add", [x, b.op("constant_of_shape", [], shape=(3, 4), value=2.5)]),
            "eye": b.op("eye_like", [x], k=1, dtype=DType.i32),
        }

    node, region, labels = build_region({"x": ((3, 4), F32)}, build, kind="injective")
    run_and_compare(node, region, labels, [np.ones((3, 4), np.float32)])


# -- reductions -------------------------------------------------------------------------------

REDUCE_OPS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l1", "reduce_l2", "reduce_sum_square", "reduce_log_sum", "reduce_log_sum_exp"]  # fmt: skip


@pytest.mark.parametrize("dtype", [F32, F16, DType.i64, DType.i32])
def test_reductions(dtype):
    """Every reduction along the last axis, a middle axis and all axes (f32); the other
    dtypes check accumulation and rounding on fewer layouts."""
    rng = np.random.default_rng(9)
    shape = (3, 5, 35)
    if dtype.is_int:
        x = rng.integers(1, 9, shape).astype(dtype.np)
    else:
        x = rng.uniform(0.5, 1.5, shape).astype(dtype.np)

    def build(b, x):
        outs = {}
        for op in REDUCE_OPS:
            outs[op + "_last"] = b.op(op, [x], axes=(2,), keepdims=False)
            if dtype == F32:
                outs[op + "_mid"] = b.op(op, [x], axes=(1,), keepdims=True)
                outs[op + "_all"] = b.op(op, [x], axes=(), keepdims=False)
        outs["sum_02"] = b.op("reduce_sum", [x], axes=(0, 2))
        outs["sum_noop"] = b.op("reduce_sum_square", [x], noop_with_empty_axes=True)
        outs["argmax"] = b.op("argmax", [x], axis=2)
        outs["argmin_last"] = b.op("argmin", [x], axis=1, keepdims=False, select_last_index=True)
        return outs

    node, region, labels = build_region({"x": (shape, dtype)}, build, kind="reduce")
    tol = {"e": (2e-3, 2e-3), "f": (1e-5, 1e-5)}
    run_and_compare(node, region, labels, [x], tol=tol)


def test_reductions_over_empty_axes():
    x = np.zeros((2, 0, 3), np.float32)

    def build(b, x):
        return {op: b.op(op, [x], axes=(1,)) for op in REDUCE_OPS}

    node, region, labels = build_region({"x": ((2, 0, 3), F32)}, build, kind="reduce")
    run_and_compare(node, region, labels, [x])


def test_arg_ties_and_nan():
    x = np.array([[1, 3, 3, 0, 3], [2, 2, 2, 2, 2], [np.nan, 1, np.nan, 5, 0], [-1, -5, -5, 4, 4]], np.float32)

    def build(b, x):
        return {
            "amax": b.op("argmax", [x], axis=1),
            "amax_last": b.op("argmax", [x], axis=1, select_last_index=True),
            "amin": b.op("argmin", [x], axis=1, keepdims=False),
            "amin_last": b.op("argmin", [x], axis=1, select_last_index=True),
            "amax0": b.op("argmax", [x], axis=0),
        }

    node, region, labels = build_region({"x": ((4, 5), F32)}, build, kind="reduce")
    run_and_compare(node, region, labels, [x])
    # A middle axis with a vectorizable last axis (the pooling-window schedule's shape).
    y = np.random.default_rng(14).standard_normal((2, 3, 8)).astype(np.float32)
    node, region, labels = build_region(
        {"y": ((2, 3, 8), F32)},
        lambda b, y: {"amax": b.op("argmax", [y], axis=1), "amin": b.op("argmin", [y], axis=1, keepdims=False)},
        kind="reduce",
    )
    run_and_compare(node, region, labels, [y])


# -- normalisations -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F16])
def test_normalizations(dtype):
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 6, 5, 7)) * 3).astype(dtype.np)
    r = (rng.standard_normal((3, 50)) * 3).astype(dtype.np)
    c = rng.standard_normal((6,)).astype(dtype.np)
    var = rng.uniform(0.5, 2, (6,)).astype(dtype.np)
    row = rng.standard_normal((50,)).astype(dtype.np)

    def build(b, x, r, c, var, row, w2):
        if dtype == F16:
            return {
                "softmax": b.op("softmax", [r], axis=-1),
                "layer_norm": b.op("layer_norm", [r, row, row], axis=-1),
                "rms_norm": b.op("rms_norm", [r, row], axis=1),
                "group_norm": b.op("group_norm", [x, c, var], num_groups=3),
                "batch_norm": b.op("batch_norm", [x, c, c, c, var]),
            }
        return {
            "softmax": b.op("softmax", [r], axis=-1),
            "softmax_mid": b.op("softmax", [x], axis=1),
            "log_softmax": b.op("log_softmax", [r], axis=1),
            "hardmax": b.op("hardmax", [x], axis=3),
            "layer_norm": b.op("layer_norm", [r, row, row], axis=-1),
            "layer_norm_2d": b.op("layer_norm", [x, w2], axis=2),
            "rms_norm": b.op("rms_norm", [r, row], axis=1),
            "batch_norm": b.op("batch_norm", [x, c, c, c, var]),
            "instance_norm": b.op("instance_norm", [x, c, var]),
            "group_norm": b.op("group_norm", [x, c, var], num_groups=3),
            "lrn": b.op("lrn", [x], size=3),
            "lp_norm": b.op("lp_normalization", [r], axis=1, p=2),
            "lp_norm1": b.op("lp_normalization", [x], axis=1, p=1),
            "mvn": b.op("mean_variance_normalization", [x]),
        }

    w2 = rng.standard_normal((5, 7)).astype(dtype.np)
    inputs = {
        "x": (x.shape, dtype),
        "r": (r.shape, dtype),
        "c": ((6,), dtype),
        "var": ((6,), dtype),
        "row": ((50,), dtype),
    }
    inputs["w2"] = ((5, 7), dtype)
    node, region, labels = build_region(inputs, build, kind="normalize")
    tol = {"e": (4e-3, 4e-3), "f": (2e-5, 2e-6)}
    run_and_compare(node, region, labels, [x, r, c, var, row, w2], tol=tol)


def test_layer_norm_with_stats():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 33)).astype(np.float32)
    w = rng.standard_normal((33,)).astype(np.float32)

    def build(b, x, w):
        y, mean, inv = b.op("layer_norm", [x, w], axis=1, with_stats=True)
        return {"y": y, "mean": mean, "inv_std": inv}

    node, region, labels = build_region({"x": ((4, 33), F32), "w": ((33,), F32)}, build, kind="normalize")
    run_and_compare(node, region, labels, [x, w], tol={"f": (2e-5, 2e-6)})


# -- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F16])
def test_pools(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 11, 9)).astype(dtype.np)
    x1 = rng.standard_normal((1, 2, 13)).astype(dtype.np)
    win = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1)}

    def build(b, x, x1):
        return {
            "max": b.op("max_pool", [x], **win),
            "max_ceil_dil": b.op(
                "max_pool", [x], kernel_shape=(2, 3), strides=(2, 3), pads=(0, 1, 1, 1), dilations=(2, 1), ceil_mode=True
            ),
            "avg": b.op("average_pool", [x], **win),
            "avg_incl": b.op("average_pool", [x], count_include_pad=True, **win),
            "avg_ceil": b.op(
                "average_pool",
                [x],
                kernel_shape=(3, 2),
                strides=(3, 2),
                pads=(1, 0, 1, 1),
                dilations=(1, 1),
                ceil_mode=True,
            ),
            "avg_ceil_incl": b.op(
                "average_pool",
                [x],
                kernel_shape=(3, 2),
                strides=(3, 2),
                pads=(1, 0, 1, 1),
                dilations=(1, 2),
                ceil_mode=True,
                count_include_pad=True,
            ),
            "lp": b.op("lp_pool", [x], kernel_shape=(2, 2), strides=(1, 1), pads=(0, 0, 1, 1), dilations=(1, 1), p=3),
            "max_1d": b.op("max_pool", [x1], kernel_shape=(4,), strides=(3,), pads=(2, 2), dilations=(1,)),
            "gap": b.op("global_average_pool", [x]),
            "gmp": b.op("global_max_pool", [x]),
            "glp": b.op("global_lp_pool", [x], p=2),
        }

    node, region, labels = build_region({"x": (x.shape, dtype), "x1": (x1.shape, dtype)}, build, kind="reduce")
    run_and_compare(node, region, labels, [x, x1], tol={"e": (2e-3, 2e-3), "f": (2e-5, 2e-6)})


def test_max_pool_int8():
    x = np.random.default_rng(13).integers(-128, 127, (1, 2, 7, 7)).astype(np.int8)

    def build(b, x):
        return {"max": b.op("max_pool", [x], kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1))}

    node, region, labels = build_region({"x": (x.shape, DType.i8)}, build, kind="reduce")
    run_and_compare(node, region, labels, [x])
