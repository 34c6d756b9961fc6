"""The reduce op group (einfuse/ir/ops/reduce.py + frontends/onnx_ops/reduce.py) against
onnxruntime: reductions over every opset's way of giving axes, argmax/argmin, cumsum;
their symbolic shape inference, their errors, and the ONNX conformance cases."""

from __future__ import annotations

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.errors import ShapeError
from einfuse.frontends.onnx import DynamicOperandError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType, sym
from tests.onnx_helpers import (
    OnnxModel,
    assert_same,
    conformance_cases,
    conformance_failures,
    param_id,
    rand,
    seeded_rng,  # noqa: F401 (the rng fixture)
    tolerances,
)


class Model(OnnxModel):
    default_opset = 18
    # (rtol, atol) per result dtype; integers and bools compare exactly. Reductions may sum in
    # another order than onnxruntime: a few ulps of the result's dtype.
    tol = tolerances(f16=(4e-3, 1e-3), f32=(1e-5, 1e-6), f64=(1e-12, 1e-12))


REDUCE_OPS = [
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
]


def inputs_for(op: str, rng, shape, dtype) -> np.ndarray:
    """Data in a range where the op is well conditioned (positive for log_sum, modest for prod)."""
    if op == "ReduceLogSum":
        return rand(rng, shape, dtype, 1, 4)
    if op == "ReduceProd":
        return rand(rng, shape, dtype, 1, 2) if np.dtype(dtype).kind == "f" else rand(rng, shape, dtype, -2, 2)
    return rand(rng, shape, dtype, -3, 3) if np.dtype(dtype).kind == "f" else rand(rng, shape, dtype, -9, 9)


# ---------------------------------------------------------------------------
# reductions

# Every axes/keepdims combination in f32; a few for the other dtypes.
AXES = [(1,), (0, 2), (-1,), (2, 0), None]
REDUCE_GRID = [(np.float32, axes, keepdims) for axes in AXES for keepdims in (0, 1)] + [
    (dtype, axes, keepdims)
    for dtype in (np.float64, np.float16, np.int32, np.int64)
    for axes, keepdims in (((1,), 0), ((2, 0), 1), (None, 0))
]


@pytest.mark.parametrize("dtype,axes,keepdims", REDUCE_GRID, ids=param_id)
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_with_axes_operand(op, dtype, axes, keepdims, rng):
    x = inputs_for(op, rng, (3, 4, 5), dtype)
    operands = [("x", x)] if axes is None else [("x", x), ("@axes", np.array(axes, np.int64))]
    m = Model(op, operands, keepdims=keepdims, opset=18)
    if op == "ReduceLogSumExp" and np.dtype(dtype).kind == "i":
        # einfuse truncates the exact result; onnxruntime sums the exp terms in the integer
        # type (each truncated), which is not log-sum-exp. ONNX leaves integers unspecified.
        ax = tuple(range(3)) if axes is None else tuple(a % 3 for a in axes)
        want = np.trunc(np.log(np.exp(x.astype(np.float64)).sum(axis=ax, keepdims=bool(keepdims))))
        assert_same(m.einfuse()[0], want.astype(dtype), table=Model.tol)
        return
    m.check()


# Before opset 18 (13 for ReduceSum) axes are an attribute.
AXES_ATTR_GRID = [(op, 11) for op in REDUCE_OPS] + [(op, 13) for op in REDUCE_OPS if op != "ReduceSum"]


@pytest.mark.parametrize("op,opset", AXES_ATTR_GRID)
def test_reduce_with_axes_attribute(op, opset, rng):
    x = inputs_for(op, rng, (2, 3, 4), np.float32)
    Model(op, [("x", x)], axes=[-1, 0], keepdims=0, opset=opset).check()
    Model(op, [("x", x)], opset=opset).check()


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("noop", [0, 1])
def test_empty_axes(op, noop, rng):
    # Empty axes reduce everything, or with noop_with_empty_axes nothing: each element is then
    # reduced on its own (x*x for ReduceSumSquare, |x| for ReduceL2...), as onnxruntime does.
    x = inputs_for(op, rng, (3, 4), np.float32)
    m = Model(op, [("x", x), ("@axes", np.zeros((0,), np.int64))], noop_with_empty_axes=noop, opset=18)
    (got,) = m.check()
    assert got.shape == ((3, 4) if noop else (1, 1))


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_over_an_empty_set(op):
    # The reduction's identity: 0, 1, -inf, the dtype's extremes.
    x = np.zeros((2, 0, 3), np.float32)
    m = Model(op, [("x", x), ("@axes", np.array([1], np.int64))], keepdims=0, opset=18)
    if op == "ReduceMean":
        # 0 / 0: NaN, as numpy and torch say (onnxruntime returns 0; ONNX leaves it undefined).
        assert np.isnan(m.einfuse()[0]).all()
    else:
        m.check()
    Model(op, [("x", x.astype(np.int32)), ("@axes", np.array([1], np.int64))], opset=18).check()


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_on_bools_and_small_ints(op, rng):
    x = rand(rng, (3, 4), bool)
    Model(op, [("x", x), ("@axes", np.array([1], np.int64))], opset=20).check()
    Model(op, [("x", rand(rng, (3, 4), np.int8, -128, 127)), ("@axes", np.array([0], np.int64))], opset=20).check()


def test_nan_propagates_through_max():
    # onnxruntime skips NaN in ReduceMax; einfuse propagates it, like the ONNX reference and
    # torch (and like its elementwise max).
    x = np.array([[1.0, np.nan, 5.0], [1.0, 2.0, 3.0]], np.float32)
    got = Model("ReduceMax", [("x", x), ("@axes", np.array([1], np.int64))], keepdims=0).einfuse()[0]
    np.testing.assert_array_equal(got, np.array([np.nan, 3.0], np.float32))


def test_integer_mean_truncates_like_onnxruntime():
    x = np.array([[-1, -2], [3, 4], [-7, 2]], np.int32)
    (got,) = Model("ReduceMean", [("x", x), ("@axes", np.array([1], np.int64))], keepdims=0).check()
    np.testing.assert_array_equal(got, [-1, 3, -2])


def test_core_reductions_directly():
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), DType.f32))
    b = Builder(g)
    outs = [
        b.op("reduce_sum_square", [x], noop_with_empty_axes=True),
        b.op("reduce_l1", [x], axes=(1,), keepdims=False),
        b.op("reduce_log_sum_exp", [x]),  # axes=() without the flag: every axis
    ]
    g.outputs = list(outs)
    data = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, 1000.0]], np.float32)
    sq, l1, lse = reference.run(g, {"x": data}).values()
    np.testing.assert_array_equal(sq, data * data)
    np.testing.assert_array_equal(l1, [6.0, 1009.0])
    assert lse.shape == (1, 1) and np.isclose(lse[0, 0], 1000.0)  # no overflow: max subtracted


# ---------------------------------------------------------------------------
# argmax / argmin


ARG_GRID = [(np.float32, axis, keepdims, last) for axis in (0, 1, -1) for keepdims in (0, 1) for last in (0, 1)] + [
    (dtype, axis, keepdims, last)
    for dtype in (np.float64, np.float16, np.int32, np.int64, np.uint8)
    for axis, keepdims, last in ((1, 0, 1), (-1, 1, 0))
]


@pytest.mark.parametrize("dtype,axis,keepdims,select_last_index", ARG_GRID, ids=param_id)
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_extremum(op, dtype, axis, keepdims, select_last_index, rng):
    x = rand(rng, (3, 4, 5), dtype, 0, 3)  # few distinct values: many ties
    m = Model(op, [("x", x)], axis=axis, keepdims=keepdims, select_last_index=select_last_index, opset=13)
    (got,) = m.check()
    assert got.dtype == np.int64


def test_arg_extremum_before_select_last_index(rng):
    Model("ArgMax", [("x", rand(rng, (4, 6), lo=-3, hi=3))], axis=1, opset=11).check()


# ---------------------------------------------------------------------------
# cumsum


CUMSUM_GRID = [(np.float32, axis, excl, rev) for axis in (0, 1, -1) for excl in (0, 1) for rev in (0, 1)] + [
    (dtype, axis, exclusive, reverse)
    for dtype in (np.float64, np.float16, np.int32, np.int64)
    for axis, exclusive, reverse in ((1, 0, 0), (-1, 1, 1))
]


@pytest.mark.parametrize("dtype,axis,exclusive,reverse", CUMSUM_GRID, ids=param_id)
def test_cumsum(dtype, axis, exclusive, reverse, rng):
    x = rand(rng, (3, 4, 5), dtype, -9, 9)
    axis_dtype = np.int32 if axis == 1 else np.int64
    operands = [("x", x), ("@axis", np.array(axis, axis_dtype))]
    Model("CumSum", operands, exclusive=exclusive, reverse=reverse, opset=14).check()


def test_cumsum_axis_must_be_constant():
    m = Model("CumSum", [("x", np.ones((2, 3), np.float32)), ("axis", np.array(1, np.int64))], opset=14)
    with pytest.raises(DynamicOperandError, match="operand 1 .* must be a constant") as e:
        m.graph()
    assert e.value.value_name == "axis"
    # Bound to its value, the model imports.
    g = m.graph(bind_inputs={"axis": np.array(1, np.int64)})
    out = next(iter(reference.run(g, {"x": np.ones((2, 3), np.float32)}).values()))
    np.testing.assert_array_equal(out, [[1, 2, 3], [1, 2, 3]])


# ---------------------------------------------------------------------------
# symbolic shapes


def test_symbolic_shapes():
    x = np.ones((2, 5, 4), np.float32)
    dims = {"x": ["B", "S", 4]}
    m = Model("ReduceMean", [("x", x), ("@axes", np.array([1], np.int64))], keepdims=0, input_shapes=dims)
    assert m.graph().outputs[0].type == TensorType((sym("B"), 4), DType.f32)
    m.check()
    m = Model("ReduceSum", [("x", x), ("@axes", np.array([-1], np.int64))], input_shapes=dims, opset=13)
    assert m.graph().outputs[0].type == TensorType((sym("B"), sym("S"), 1), DType.f32)
    m.check()
    m = Model("ArgMax", [("x", x)], axis=1, keepdims=0, input_shapes=dims, opset=13)
    assert m.graph().outputs[0].type == TensorType((sym("B"), 4), DType.i64)
    m.check()
    m = Model("CumSum", [("x", x), ("@axis", np.array(1, np.int64))], input_shapes=dims, opset=14)
    assert m.graph().outputs[0].type == TensorType((sym("B"), sym("S"), 4), DType.f32)
    m.check()


# ---------------------------------------------------------------------------
# errors

F32 = np.ones((2, 3), np.float32)


@pytest.mark.parametrize(
    "op,operands,attrs,match",
    [
        pytest.param("ReduceSum", [("x", F32), ("@a", np.array([2], np.int64))], {}, "axis 2 is out of", id="axis"),
        pytest.param("ReduceMax", [("x", F32)], {"axes": [0, -2], "opset": 13}, "repeat an axis", id="repeat"),
        pytest.param("ReduceSum", [("x", F32 > 0)], {}, "bool, but numeric operands", id="sum-bool"),
        pytest.param("ArgMax", [("x", F32)], {"axis": 3, "opset": 13}, "axis 3 is out of range", id="argmax-axis"),
        pytest.param("ArgMin", [("x", F32[:, :0])], {"axis": 1, "opset": 13}, "size 0", id="argmin-empty"),
        pytest.param("CumSum", [("x", F32), ("@a", np.array([0, 1]))], {"opset": 14}, "one integer", id="cumsum"),
    ],
)
def test_bad_models_raise_shape_errors(op, operands, attrs, match):
    opset = attrs.pop("opset", 18)
    with pytest.raises(ShapeError, match=match):
        Model(op, operands, opset=opset, **attrs).graph()


def test_dynamic_axes_are_a_clean_error():
    m = Model("ReduceMean", [("x", F32), ("axes", np.array([1], np.int64))], opset=18)
    with pytest.raises(DynamicOperandError, match="must be a constant"):
        m.graph()


def test_core_op_rejects_unnormalised_axes():
    g = Graph()
    x = g.add_input("x", TensorType((sym("B"), 3), DType.f32))
    with pytest.raises(ShapeError, match="axis -1 is out of range"):
        Builder(g).op("reduce_sum", [x], axes=(-1,))
    with pytest.raises(ShapeError, match="should be bool"):
        Builder(g).op("reduce_sum", [x], axes=(1,), keepdims=1)


# ---------------------------------------------------------------------------
# ONNX conformance cases

ONNX_OPS = frozenset(REDUCE_OPS) | {"ArgMax", "ArgMin", "CumSum"}
# The *_expanded cases write reductions with these (elementwise group) ops.
HELPER_OPS = frozenset({"Abs", "Mul", "Log", "Exp", "Cast", "CastLike", "Sqrt", "Constant", "Add", "Sub", "Neg"})


def test_onnx_conformance_cases():
    cases = conformance_cases(ONNX_OPS, helpers=HELPER_OPS)
    assert len(cases) > 150
    wrong = conformance_failures(cases)
    assert not wrong, "\n".join(wrong)
