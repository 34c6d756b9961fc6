"""Converters for the ONNX integer/quantized compute ops (see einfuse/ir/ops/quant.py):
MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv, DynamicQuantizeLinear.

QuantizeLinear/DequantizeLinear belong to the elementwise group. Convolution attributes
are resolved like Conv's (auto_pad into explicit pads, every default written out). A
1-D per-row zero point or scale of a matmul's A ([M]) becomes [M, 1], so that in the
core op every quantization parameter broadcasts numpy-style against its tensor.
Float8 QLinearMatMul (opset 21) is refused: onnxruntime's CPU kernel has no float8 either.
"""

from __future__ import annotations

from einfuse.frontends.onnx_ops import converter
from einfuse.frontends.onnx_ops.nn import _static_kernel, _window_attrs
from einfuse.ir.ops.quant import QUANT_DTYPES


def _check_integer(ctx, node, values) -> None:
    for v in values:
        if v is not None and v.dtype not in QUANT_DTYPES:
            raise ctx.unsupported(node, f"operand {v.name!r} has type {v.type}; only i8/u8 quantization is supported")


def _per_row(ctx, a, param):
    """A's 1-D per-row parameter [M] -> [M, 1] (scalars and 1-element vectors stay)."""
    if param is None or a.rank < 2 or param.rank != 1 or param.shape[0] == 1:
        return param
    return ctx.op("unsqueeze", [param], axes=(1,))


@converter("MatMulInteger")
def matmul_integer(ctx, node):
    a, b, a_zp, b_zp = (ctx.input(node, i) for i in range(4))
    _check_integer(ctx, node, (a, b))
    return [ctx.op("matmul_integer", [a, b, _per_row(ctx, a, a_zp), b_zp])]


@converter("QLinearMatMul")
def qlinear_matmul(ctx, node):
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (ctx.input(node, i) for i in range(8))
    _check_integer(ctx, node, (a, b, y_zp))
    if any(v is None for v in (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp)):
        raise ctx.error(node, "QLinearMatMul needs every scale and zero point")
    a_scale, a_zp = _per_row(ctx, a, a_scale), _per_row(ctx, a, a_zp)
    return [ctx.op("qlinear_matmul", [a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp])]


def _conv_attrs(ctx, node, x, w) -> dict:
    attrs = _window_attrs(ctx, node, x, _static_kernel(ctx, node, w))
    return {**attrs, "group": ctx.attr(node, "group", 1)}


@converter("ConvInteger")
def conv_integer(ctx, node):
    x, w, x_zp, w_zp = (ctx.input(node, i) for i in range(4))
    _check_integer(ctx, node, (x, w))
    return [ctx.op("conv_integer", [x, w, x_zp, w_zp], **_conv_attrs(ctx, node, x, w))]


@converter("QLinearConv")
def qlinear_conv(ctx, node):
    operands = [ctx.input(node, i) for i in range(9)]
    x, w, y_zp = operands[0], operands[3], operands[7]
    _check_integer(ctx, node, (x, w, y_zp))
    if any(v is None for v in operands[:8]):
        raise ctx.error(node, "QLinearConv needs every scale and zero point")
    return [ctx.op("qlinear_conv", operands, **_conv_attrs(ctx, node, x, w))]


@converter("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx, node):
    return list(ctx.op("dynamic_quantize_linear", [ctx.input(node, 0)]))
