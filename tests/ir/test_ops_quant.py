"""The integer/quantized compute group (einfuse/ir/ops/quant.py + frontends/onnx_ops/quant.py):
MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv and DynamicQuantizeLinear against
onnxruntime (exact: the outputs are integers), symbolic shapes, errors, and the ONNX
conformance cases."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from einfuse.codegen import reference
from einfuse.errors import ShapeError, UnsupportedOpError
from einfuse.ir.ops import OPAQUE, OUT_FUSABLE, get_op
from einfuse.ir.types import DType, TensorType, sym
from tests.onnx_helpers import (
    OnnxModel,
    case_ids,
    check_conformance_case,
    conformance_cases,
    rand,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)


class Model(OnnxModel):
    default_opset = 21
    tol = uniform_tol(0.0, 0.0)  # integer results: exact


def q(rng, *shape, dtype=np.uint8) -> np.ndarray:
    """Integers over the whole range of `dtype`."""
    return rand(rng, shape, dtype, np.iinfo(dtype).min, np.iinfo(dtype).max)


def scale(value, shape=()) -> np.ndarray:
    return np.full(shape, value, np.float32)


# ---------------------------------------------------------------------------
# MatMulInteger


@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize(
    "a_shape,b_shape", [((3, 8), (8, 5)), ((2, 3, 8), (8, 5)), ((2, 1, 3, 8), (4, 8, 5)), ((8,), (8, 5))]
)
@pytest.mark.parametrize("zero_points", ["none", "scalar", "per_column"])
def test_matmul_integer(rng, a_dtype, b_dtype, a_shape, b_shape, zero_points):
    a, b = q(rng, *a_shape, dtype=a_dtype), q(rng, *b_shape, dtype=b_dtype)
    operands = [("a", a), ("b", b)]
    if zero_points != "none":
        # Per column: [N] for a matrix B, [..., 1, N] for a batch of them (as onnxruntime wants).
        zp_shape = (1,) if zero_points == "scalar" else b_shape[:-2] + (1,) * (len(b_shape) > 2) + b_shape[-1:]
        operands += [("@a_zp", q(rng, dtype=a_dtype)), ("@b_zp", q(rng, *zp_shape, dtype=b_dtype))]
    Model("MatMulInteger", operands, opset=10).check()


def test_matmul_integer_per_row_a(rng):
    """A 1-D a_zero_point of M entries is per row (onnxruntime only takes a scalar)."""
    a, b = q(rng, 4, 6), q(rng, 6, 3)
    a_zp = q(rng, 4)
    (y,) = Model("MatMulInteger", [("a", a), ("b", b), ("@azp", a_zp)], opset=10).einfuse()
    want = (a.astype(np.int64) - a_zp[:, None]) @ b.astype(np.int64)
    np.testing.assert_array_equal(y, want)


def test_matmul_integer_wraps_in_32_bits():
    a = np.full((1, 70000), 255, np.uint8)
    b = np.full((70000, 1), 255, np.uint8)
    y = get_op("matmul_integer").reference(a, b)
    assert y.dtype == np.int32 and int(y[0, 0]) == (255 * 255 * 70000 + 2**31) % 2**32 - 2**31


# ---------------------------------------------------------------------------
# QLinearMatMul


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("a_shape,b_shape", [((3, 8), (8, 5)), ((2, 3, 16), (2, 16, 7)), ((4, 2, 3, 8), (8, 6))])
@pytest.mark.parametrize("opset", [10, 21])
def test_qlinear_matmul(rng, dtype, a_shape, b_shape, opset):
    a, b = q(rng, *a_shape, dtype=dtype), q(rng, *b_shape, dtype=dtype)
    operands = [
        ("a", a),
        ("@as", scale(0.013, (1,))),
        ("@az", q(rng, 1, dtype=dtype)),
        ("b", b),
        ("@bs", scale(0.007, (1,))),
        ("@bz", q(rng, 1, dtype=dtype)),
        ("@ys", scale(0.9, (1,))),
        ("@yz", q(rng, 1, dtype=dtype)),
    ]
    Model("QLinearMatMul", operands, opset=opset).check()


@pytest.mark.parametrize("a_dtype,b_dtype,y_dtype", [(np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8)])
def test_qlinear_matmul_mixed_types_per_column(rng, a_dtype, b_dtype, y_dtype):
    a, b = q(rng, 5, 12, dtype=a_dtype), q(rng, 12, 4, dtype=b_dtype)
    operands = [
        ("a", a),
        ("@as", scale(0.02)),
        ("@az", q(rng, dtype=a_dtype)),
        ("b", b),
        ("@bs", rng.uniform(0.002, 0.01, 4).astype(np.float32)),
        ("@bz", np.zeros(4, b_dtype)),  # onnxruntime: per-column B needs symmetric zero points
        ("@ys", scale(0.5)),
        ("@yz", q(rng, dtype=y_dtype)),
    ]
    Model("QLinearMatMul", operands).check()


def test_qlinear_matmul_per_row_a(rng):
    """Per-row A parameters ([M], made [M, 1]) against a numpy computation of the definition."""
    a, b = q(rng, 3, 8), q(rng, 8, 2)
    a_s, a_z = np.array([0.01, 0.02, 0.03], np.float32), np.array([120, 128, 130], np.uint8)
    operands = [("a", a), ("@as", a_s), ("@az", a_z), ("b", b), ("@bs", scale(0.05)), ("@bz", np.uint8(128))]
    operands += [("@ys", scale(0.4)), ("@yz", np.uint8(100))]
    (y,) = Model("QLinearMatMul", operands).einfuse()
    acc = (a.astype(np.int64) - a_z[:, None]) @ (b.astype(np.int64) - 128)
    want = np.clip(np.rint(acc * (a_s[:, None] * np.float32(0.05) / np.float32(0.4))) + 100, 0, 255)
    np.testing.assert_array_equal(y, want)


def test_qlinear_matmul_float16_scales(rng):
    """f16 scales (opset 21): onnxruntime has no kernel; the multiplier is formed in f16."""
    a, b = q(rng, 2, 4), q(rng, 4, 3)
    s16 = [np.array([v], np.float16) for v in (0.0066, 0.00705, 0.0107)]
    operands = [("a", a), ("@as", s16[0]), ("@az", np.array([113], np.uint8)), ("b", b), ("@bs", s16[1])]
    operands += [("@bz", np.array([114], np.uint8)), ("@ys", s16[2]), ("@yz", np.array([118], np.uint8))]
    (y,) = Model("QLinearMatMul", operands).einfuse()
    acc = (a.astype(np.int64) - 113) @ (b.astype(np.int64) - 114)
    multiplier = (s16[0] * s16[1] / s16[2]).astype(np.float32)
    np.testing.assert_array_equal(y, np.clip(np.rint(acc * multiplier) + 118, 0, 255))


# ---------------------------------------------------------------------------
# ConvInteger, QLinearConv

CONV_CASES = [
    # (x shape, w shape, attributes)
    ((1, 3, 7, 7), (4, 3, 3, 3), {}),
    ((2, 4, 9, 8), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ((1, 2, 10, 10), (3, 2, 3, 3), {"dilations": [2, 2], "pads": [2, 1, 2, 2]}),
    ((1, 2, 9, 8), (3, 2, 3, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((2, 3, 11), (5, 3, 4), {"strides": [3], "pads": [2, 1]}),
    ((1, 2, 4, 5, 6), (2, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1]}),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES)
@pytest.mark.parametrize("w_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("zero_points", [False, True])
def test_conv_integer(rng, x_shape, w_shape, attrs, w_dtype, zero_points):
    x, w = q(rng, *x_shape), q(rng, *w_shape, dtype=w_dtype)
    operands = [("x", x), ("@w", w)]
    if zero_points:
        operands += [("@xz", q(rng)), ("@wz", q(rng, dtype=w_dtype))]
    Model("ConvInteger", operands, opset=10, **attrs).check()


def test_conv_integer_per_channel_zero_point(rng):
    """onnxruntime's ConvInteger only takes a scalar w_zero_point: check per channel against
    channel-by-channel runs with scalar zero points."""
    x, w, wz = q(rng, 1, 2, 6, 6), q(rng, 3, 2, 3, 3), q(rng, 3)
    (y,) = Model("ConvInteger", [("x", x), ("@w", w), ("@xz", np.uint8(7)), ("@wz", wz)], opset=10).einfuse()
    for m in range(3):
        operands = [("x", x), ("@w", w[m : m + 1]), ("@xz", np.uint8(7)), ("@wz", wz[m])]
        (want,) = Model("ConvInteger", operands, opset=10).ort()
        np.testing.assert_array_equal(y[:, m : m + 1], want)


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_conv(rng, x_shape, w_shape, attrs, dtype, per_channel, bias):
    m = w_shape[0]
    x, w = q(rng, *x_shape, dtype=dtype), q(rng, *w_shape, dtype=dtype)
    w_scale = rng.uniform(0.002, 0.02, m if per_channel else ()).astype(np.float32)
    # onnxruntime: signed weights need zero weight zero points.
    w_zp = np.zeros(w_scale.shape, dtype) if dtype == np.int8 else q(rng, *w_scale.shape, dtype=dtype)
    operands = [("x", x), ("@xs", scale(0.05)), ("@xz", q(rng, dtype=dtype)), ("@w", w), ("@ws", w_scale)]
    operands += [("@wz", w_zp), ("@ys", scale(0.3)), ("@yz", q(rng, dtype=dtype))]
    if bias:
        operands.append(("@b", rng.integers(-5000, 5000, m).astype(np.int32)))
    Model("QLinearConv", operands, opset=10, **attrs).check()


def test_qlinear_conv_one_element_parameters(rng):
    """Per-tensor parameters given as [1] tensors, as exporters often write them."""
    x, w = q(rng, 1, 2, 6, 6), q(rng, 4, 2, 3, 3)
    one = (1,)
    operands = [("x", x), ("@xs", scale(0.05, one)), ("@xz", q(rng, *one)), ("@w", w), ("@ws", scale(0.01, one))]
    operands += [("@wz", q(rng, *one)), ("@ys", scale(0.2, one)), ("@yz", q(rng, *one))]
    Model("QLinearConv", operands, opset=10, pads=[1, 1, 1, 1]).check()
    operands[2] = ("@xz", q(rng, 2))
    with pytest.raises(ShapeError, match=r"x_zero_point u8\[2\] must hold a single value"):
        Model("QLinearConv", operands, opset=10).graph()


# ---------------------------------------------------------------------------
# DynamicQuantizeLinear


@pytest.mark.parametrize(
    "values",
    ["mixed", "positive", "negative", "zeros", "one_value", "wide"],
)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4)])
def test_dynamic_quantize_linear(rng, values, shape):
    x = {
        "mixed": lambda: rng.uniform(-3, 5, shape),
        "positive": lambda: rng.uniform(0.5, 2, shape),
        "negative": lambda: rng.uniform(-4, -1, shape),
        "zeros": lambda: np.zeros(shape),
        "one_value": lambda: np.full(shape, 2.5),
        "wide": lambda: rng.standard_normal(shape) * 1e4,
    }[values]().astype(np.float32)
    y, s, z = Model("DynamicQuantizeLinear", [("x", x)], opset=11, outputs=3).check()
    assert y.shape == shape and s.shape == () and z.shape == ()


def test_dynamic_quantize_linear_family_and_empty():
    assert get_op("dynamic_quantize_linear").family == OPAQUE
    y, s, z = get_op("dynamic_quantize_linear").reference(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 3) and float(s) == 1.0 and int(z) == 0


def test_dynamic_quantize_linear_is_not_elementwise(rng):
    # Why it is OPAQUE: each element's result depends on the whole tensor's range, so
    # quantizing two halves separately (as an elementwise kernel's tiles would) differs.
    x = rng.standard_normal((8, 300)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None]
    ref = get_op("dynamic_quantize_linear").reference
    whole, scale, _ = ref(x)
    top, top_scale, _ = ref(x[:4])
    assert float(top_scale) < float(scale)
    assert not np.array_equal(top, whole[:4])


def test_families():
    for op in ("matmul_integer", "qlinear_matmul", "conv_integer", "qlinear_conv"):
        assert get_op(op).family == OUT_FUSABLE


# ---------------------------------------------------------------------------
# symbolic shapes and errors


def test_symbolic_shapes(rng):
    b = sym("B")
    a = q(rng, 2, 3, 8)
    m = Model("MatMulInteger", [("a", a), ("@b", q(rng, 8, 5))], opset=10, input_shapes={"a": ["B", 3, 8]})
    g = m.graph()
    assert g.outputs[0].type == TensorType((b, 3, 5), DType.i32)
    x = q(rng, 1, 2, 9, 9)
    operands = [("x", x), ("@xs", scale(0.1)), ("@xz", np.uint8(3)), ("@w", q(rng, 4, 2, 3, 3))]
    operands += [("@ws", scale(0.1)), ("@wz", np.uint8(3)), ("@ys", scale(0.1)), ("@yz", np.uint8(3))]
    m = Model("QLinearConv", operands, opset=10, strides=[2, 2], input_shapes={"x": ["N", 2, "H", 9]})
    out = m.graph().outputs[0].type
    assert out.shape[0] == sym("N") and out.shape[1:] == (4, (sym("H") - 3) // 2 + 1, 4)
    (y,) = reference.run(m.graph(), {"x": q(rng, 3, 2, 11, 9)}).values()
    assert y.shape == (3, 4, 5, 4)


def test_errors(rng):
    a8, b8 = q(rng, 3, 8), q(rng, 8, 5)
    with pytest.raises(UnsupportedOpError, match="only i8/u8"):
        Model("MatMulInteger", [("a", a8.astype(np.float32)), ("b", b8)], opset=10).graph()
    with pytest.raises(ShapeError, match="contracted dims differ"):
        Model("MatMulInteger", [("a", a8), ("b", q(rng, 7, 5))], opset=10).graph()
    with pytest.raises(ShapeError, match=r"b_zero_point u8\[4\] does not broadcast to \[1,5\]"):
        Model("MatMulInteger", [("a", a8), ("b", b8), ("@az", np.uint8(1)), ("@bz", q(rng, 4))], opset=10).graph()
    with pytest.raises(ShapeError, match=r"a_zero_point u8\[2,1\] does not broadcast to \[3,1\]"):
        Model("MatMulInteger", [("a", a8), ("b", b8), ("@az", q(rng, 2))], opset=10).graph()
    x, w = q(rng, 1, 2, 5, 5), q(rng, 3, 2, 3, 3)
    base = [("x", x), ("@xs", scale(0.1)), ("@xz", np.uint8(3)), ("@w", w), ("@ws", scale(0.1, (2,)))]
    base += [("@wz", np.uint8(3)), ("@ys", scale(0.1)), ("@yz", np.uint8(3))]
    with pytest.raises(ShapeError, match=r"w_scale f32\[2\] does not broadcast to \[3\]"):
        Model("QLinearConv", base, opset=10).graph()
    base[4] = ("@ws", scale(0.1, (3,)))
    with pytest.raises(ShapeError, match=r"bias i64\[3\] must be i32\[3\]"):
        Model("QLinearConv", base + [("@b", np.zeros(3, np.int64))], opset=10).graph()
    with pytest.raises(ShapeError, match="3 channels but the weight"):
        Model("ConvInteger", [("x", q(rng, 1, 3, 5, 5)), ("@w", w)], opset=10).graph()
    with pytest.raises(ShapeError, match="x must be a float tensor"):
        Model("DynamicQuantizeLinear", [("x", np.zeros(3, np.int32))], opset=11, outputs=3).graph()
    symbolic = {"x": [1, 2, "H", 5]}
    with pytest.raises(UnsupportedOpError, match="auto_pad with stride 2 needs static spatial dims"):
        Model("QLinearConv", base, opset=10, auto_pad="SAME_UPPER", strides=[2, 2], input_shapes=symbolic).graph()


def test_float8_qlinear_matmul_is_refused():
    a = np.zeros((2, 3), np.float32)
    m = Model("QLinearMatMul", [("a", a)] + [(f"@p{i}", np.float32(1)) for i in range(7)])
    m.proto.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN
    with pytest.raises(UnsupportedOpError, match="FLOAT8E4M3FN|float8|only i8/u8"):
        m.graph()


# ---------------------------------------------------------------------------
# ONNX conformance cases

QUANT_OPS = {"QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


CASES = conformance_cases(QUANT_OPS)


def test_conformance_cases_are_collected():
    assert len(CASES) == 15


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_onnx_conformance(case):
    check_conformance_case(case)
