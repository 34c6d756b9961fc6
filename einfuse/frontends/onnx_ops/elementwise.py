"""Converters for elementwise ONNX ops (see einfuse/ir/ops/elementwise.py).

Most ONNX elementwise ops are one core op of the same meaning; the tables below map
them by name. The others fill defaults, turn old-opset attributes into operands
(Clip before opset 11), or map onto existing core ops (CastLike -> cast,
Dropout -> identity, Swish -> mul/sigmoid).
"""

from __future__ import annotations

import numpy as np
import onnx

from einfuse.frontends.onnx import onnx_dtype
from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.elementwise import SELU_ALPHA, SELU_GAMMA
from einfuse.ir.types import DType

# ONNX op -> core op, for ops without attributes.
_UNARY = {
    "Abs": "abs",
    "Neg": "neg",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Floor": "floor",
    "Ceil": "ceil",
    "Round": "round",
    "Sign": "sign",
    "Sin": "sin",
    "Cos": "cos",
    "Tan": "tan",
    "Asin": "asin",
    "Acos": "acos",
    "Atan": "atan",
    "Sinh": "sinh",
    "Cosh": "cosh",
    "Asinh": "asinh",
    "Acosh": "acosh",
    "Atanh": "atanh",
    "Erf": "erf",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "HardSwish": "hard_swish",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Mish": "mish",
    "Not": "not",
    "IsNaN": "is_nan",
    "BitwiseNot": "bitwise_not",
    "Identity": "identity",
}

_BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Pow": "pow",
    "PRelu": "prelu",
    "And": "and",
    "Or": "or",
    "Xor": "xor",
    "Equal": "equal",
    "Less": "less",
    "LessOrEqual": "less_or_equal",
    "Greater": "greater",
    "GreaterOrEqual": "greater_or_equal",
    "BitwiseAnd": "bitwise_and",
    "BitwiseOr": "bitwise_or",
    "BitwiseXor": "bitwise_xor",
}

_VARIADIC = {"Sum": "sum", "Mean": "mean", "Max": "max", "Min": "min"}

# ONNX op -> (core op, {attribute: default}) for ops whose attributes keep their names.
_WITH_ATTRS = {
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Celu": ("celu", {"alpha": 1.0}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": SELU_ALPHA, "gamma": SELU_GAMMA}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "Shrink": ("shrink", {"bias": 0.0, "lambd": 0.5}),
    "Gelu": ("gelu", {"approximate": "none"}),
    "BitShift": ("bitshift", {"direction": None}),
}

# ONNX 0/1 flags that core ops hold as bools.
_FLAGS = {
    "Mod": ("mod", {"fmod": 0}),
    "IsInf": ("is_inf", {"detect_positive": 1, "detect_negative": 1}),
}


@converter(*_UNARY)
def unary(ctx, node):
    return [ctx.op(_UNARY[node.op_type], [ctx.input(node, 0)])]


@converter(*_BINARY)
def binary(ctx, node):
    return [ctx.op(_BINARY[node.op_type], [ctx.input(node, 0), ctx.input(node, 1)])]


@converter(*_VARIADIC)
def variadic(ctx, node):
    operands = [v for v in ctx.inputs(node) if v is not None]
    return [ctx.op(_VARIADIC[node.op_type], operands)]


@converter(*_WITH_ATTRS)
def with_attrs(ctx, node):
    op, defaults = _WITH_ATTRS[node.op_type]
    attrs = {}
    for name, default in defaults.items():
        if isinstance(default, float):
            default = float(np.float32(default))  # ONNX float attributes (defaults too) are f32
        value = ctx.attr(node, name, default)
        if value is None:
            raise ctx.error(node, f"attribute {name!r} is required")
        attrs[name] = value
    return [ctx.op(op, [ctx.input(node, i) for i in range(len(node.input))], **attrs)]


@converter(*_FLAGS)
def with_flags(ctx, node):
    op, defaults = _FLAGS[node.op_type]
    attrs = {name: bool(ctx.attr(node, name, default)) for name, default in defaults.items()}
    return [ctx.op(op, [ctx.input(node, i) for i in range(len(node.input))], **attrs)]


@converter("Swish")
def swish(ctx, node):
    # x * sigmoid(alpha * x), opset 24.
    x = ctx.input(node, 0)
    alpha = ctx.attr(node, "alpha", 1.0)
    z = x if alpha == 1.0 else ctx.op("mul", [x, ctx.const(np.asarray(alpha, x.dtype.np), "alpha")])
    return [ctx.op("mul", [x, ctx.op("sigmoid", [z])])]


@converter("Where")
def where(ctx, node):
    return [ctx.op("where", [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)])]


@converter("Clip")
def clip(ctx, node):
    x = ctx.input(node, 0)
    if ctx.opset >= 11:
        lo, hi = ctx.input(node, 1), ctx.input(node, 2)
    else:
        # Before opset 11 the bounds are float attributes; an absent one does not clip.
        lo, hi = (ctx.attr(node, name) for name in ("min", "max"))
        lo = None if lo is None else ctx.const(np.asarray(lo).astype(x.dtype.np), "clip_min")
        hi = None if hi is None else ctx.const(np.asarray(hi).astype(x.dtype.np), "clip_max")
    return [ctx.op("clip", [x, lo, hi])]


def _dtype_attr(ctx, node, name: str) -> DType:
    code = ctx.attr(node, name)
    if code is None:
        raise ctx.error(node, f"attribute {name!r} is required")
    return onnx_dtype(code, f"{ctx.node_label(node)} attribute {name!r}")


def _cast_attrs(ctx, node) -> dict:
    # round_mode (opset 24) only matters for casts to f8e8m0.
    return {"saturate": bool(ctx.attr(node, "saturate", 1)), "round_mode": ctx.attr(node, "round_mode", "up")}


@converter("Cast")
def cast(ctx, node):
    to = _dtype_attr(ctx, node, "to")
    return [ctx.op("cast", [ctx.input(node, 0)], to=to, **_cast_attrs(ctx, node))]


@converter("CastLike")
def cast_like(ctx, node):
    to = ctx.input(node, 1).dtype
    return [ctx.op("cast", [ctx.input(node, 0)], to=to, **_cast_attrs(ctx, node))]


@converter("Dropout")
def dropout(ctx, node):
    """Inference-mode dropout: the identity, and an all-true mask if asked for."""
    x = ctx.input(node, 0)
    if ctx.opset >= 12 and ctx.has_input(node, 2):
        training = bool(np.asarray(ctx.const_input(node, 2)).reshape(-1)[0])
        ratio = float(np.asarray(ctx.const_input(node, 1, default=np.asarray(0.5))).reshape(-1)[0])
        if training and ratio != 0.0:
            raise ctx.unsupported(
                node, f"training-mode dropout (ratio {ratio:g}) drops random elements; only inference mode is supported"
            )
    outs = [ctx.op("identity", [x])]
    if len(node.output) > 1 and node.output[1]:
        # not(x < x) is true for every element, NaN included, and needs no static shape.
        mask = ctx.op("not", [ctx.op("less", [x, x])])
        if ctx.opset < 10:
            mask = ctx.op("cast", [mask], to=x.dtype)  # opset 7-9 masks have the input's type
        outs.append(mask)
    return outs


# -- linear quantization ---------------------------------------------------------------


def _is_per_tensor(scale) -> bool:
    return scale.rank == 0 or (scale.rank == 1 and scale.shape[0] == 1)


def _quant_attrs(ctx, node, x, scale) -> dict:
    """axis (normalised) and block_size; none for per-tensor scales (the core defaults)."""
    block_size = int(ctx.attr(node, "block_size", 0))
    if _is_per_tensor(scale) and block_size == 0:
        return {}
    axis = int(ctx.attr(node, "axis", 1))
    if not -x.rank <= axis < x.rank:
        raise ctx.error(node, f"axis {axis} is out of range for an input of rank {x.rank}")
    return {"axis": axis % x.rank, "block_size": block_size}


@converter("QuantizeLinear")
def quantize_linear(ctx, node):
    x, scale, zero_point = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    out = _dtype_attr(ctx, node, "output_dtype") if ctx.attr(node, "output_dtype", 0) else None
    precision = ctx.attr(node, "precision", 0)
    if precision not in (0, onnx.TensorProto.FLOAT):
        raise ctx.unsupported(node, "a division precision other than float32 is not supported")
    if zero_point is None:
        # The core op takes the output dtype from its zero point; ONNX defaults to uint8.
        if not scale.type.is_static:
            raise ctx.unsupported(node, "a scale of symbolic shape without a zero point")
        zero_point = ctx.const(np.zeros(scale.type.static_shape, (out or DType.u8).np), "zero_point")
    elif out is not None and out != zero_point.dtype:
        raise ctx.error(node, f"output_dtype {out} differs from the zero point's dtype {zero_point.dtype}")
    attrs = _quant_attrs(ctx, node, x, scale)
    saturate = bool(ctx.attr(node, "saturate", 1))
    return [ctx.op("quantize_linear", [x, scale, zero_point], saturate=saturate, **attrs)]


@converter("DequantizeLinear")
def dequantize_linear(ctx, node):
    x, scale, zero_point = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    if ctx.attr(node, "output_dtype", 0):
        # The output dtype is also the precision of the multiplication: scale in it first.
        out = _dtype_attr(ctx, node, "output_dtype")
        if out != scale.dtype:
            scale = ctx.op("cast", [scale], to=out)
    attrs = _quant_attrs(ctx, node, x, scale)
    return [ctx.op("dequantize_linear", [x, scale, zero_point], **attrs)]
