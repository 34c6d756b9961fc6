"""Integer and quantized compute ops: matmul_integer, conv_integer, qlinear_matmul,
qlinear_conv (family OUT_FUSABLE) and dynamic_quantize_linear (OPAQUE).

Quantized tensors are i8/u8. Integer products accumulate exactly and wrap in 32 bits
(ONNX: "accumulation may overflow if and only if in 32 bits"). The references multiply
in f64 through BLAS, which is exact: every product and partial sum is an integer below
2^53 for any realistic reduction length.

Zero points and scales broadcast numpy-style. The ONNX converter writes them so that:
- for the matmuls, A's parameters broadcast against A's rows ([..., M, 1] or scalar; a 1-D
  per-row vector becomes [M, 1]) and B's against B's columns ([..., 1, N], [N] or scalar);
- for the convolutions, the input's parameters are per tensor and the weight's per tensor
  or per output channel ([M]).

Requantization (qlinear_*) is onnxruntime's: the multiplier a_scale * b_scale / y_scale
is formed in the scale dtype, the accumulator is scaled in f32 (f64 for f64 scales),
rounded half to even, offset by the output zero point and saturated.
"""

from __future__ import annotations

import numpy as np

from einfuse.ir.ops import OPAQUE, OUT_FUSABLE, Attr, register
from einfuse.ir.ops.nn import conv as conv_reference
from einfuse.ir.ops.nn import conv_out_dim, window_params
from einfuse.ir.types import DType, TensorType, broadcast_shapes, dim_known_ne, simplify_dim

QUANT_DTYPES = frozenset({DType.i8, DType.u8})
SCALE_DTYPES = frozenset({DType.f32, DType.f16, DType.bf16, DType.f64})


# ---------------------------------------------------------------------------
# inference helpers


def _check_quantized(ctx, i: int, what: str) -> TensorType:
    t = ctx.type(i)
    if t.dtype not in QUANT_DTYPES:
        raise ctx.error(f"{what} must be i8 or u8, got {t}")
    return t


def _check_param(ctx, i: int, target: tuple, what: str, dtype: DType | None = None, dtypes=None) -> None:
    """Operand i (if present) must broadcast to `target` without growing it, with `dtype`
    (or a dtype in `dtypes`)."""
    if not ctx.has(i):
        return
    t = ctx.type(i)
    if dtype is not None and t.dtype != dtype:
        raise ctx.error(f"{what} {t} must have dtype {dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ctx.error(f"{what} {t} must be one of {', '.join(sorted(str(d) for d in dtypes))}")
    ok = t.rank <= len(target)
    for d, e in zip(reversed(t.shape), reversed(target)):
        if not (isinstance(d, int) and d == 1) and dim_known_ne(d, e):
            ok = False
    if not ok:
        shape = ",".join(str(d) for d in target)
        raise ctx.error(f"{what} {t} does not broadcast to [{shape}]")


def _check_per_tensor(ctx, i: int, what: str, dtype: DType | None = None, dtypes=None) -> None:
    """Operand i (if present) is one value: a scalar or a tensor of one element ([1] is common in exports)."""
    if not ctx.has(i):
        return
    _check_param(ctx, i, ctx.type(i).shape, what, dtype, dtypes)
    if any(not (isinstance(d, int) and d == 1) for d in ctx.type(i).shape):
        raise ctx.error(f"{what} {ctx.type(i)} must hold a single value (per-tensor quantization)")


def _matmul_shapes(ctx, a: TensorType, b: TensorType) -> tuple[tuple, tuple, tuple]:
    """(output shape, A-parameter target [..., M, 1], B-parameter target [..., 1, N])."""
    if a.rank == 0 or b.rank == 0:
        raise ctx.error(f"operands must have rank >= 1, got {a} and {b}")
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    if dim_known_ne(a_shape[-1], b_shape[-2]):
        raise ctx.error(f"contracted dims differ: {a} @ {b}")
    try:
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise ctx.error(f"batch dims of {a} and {b} do not broadcast") from None
    shape = batch + ((a_shape[-2],) if a.rank > 1 else ()) + ((b_shape[-1],) if b.rank > 1 else ())
    a_target = a.shape[:-1] + (1,) if a.rank > 1 else ()
    b_target = b.shape[:-2] + (1, b.shape[-1]) if b.rank > 1 else ()
    return shape, a_target, b_target


def _conv_shape(ctx, x: TensorType, w: TensorType) -> tuple:
    """Output shape of an integer convolution of x (N, C, D...) with w (M, C/group, K...)."""
    if x.rank < 3 or w.rank != x.rank:
        raise ctx.error(f"input {x} must be (N, C, spatial...) and weight {w} (M, C/group, K...) of the same rank")
    a = ctx.attrs
    nd = x.rank - 2
    group = a["group"]
    kernel, strides, pads, dilations = window_params(a, nd, w.shape[2:])
    for name, vals, n, lo in (
        ("kernel_shape", kernel, nd, 1),
        ("strides", strides, nd, 1),
        ("pads", pads, 2 * nd, 0),
        ("dilations", dilations, nd, 1),
    ):
        if len(vals) != n or any(isinstance(v, int) and v < lo for v in vals):
            raise ctx.error(f"{name}={tuple(vals)} should have {n} entries >= {lo}")
    if any(dim_known_ne(k, wk) for k, wk in zip(kernel, w.shape[2:])):
        raise ctx.error(f"kernel_shape={tuple(kernel)} does not match the weight {w}")
    if group < 1:
        raise ctx.error(f"group={group} must be >= 1")
    if dim_known_ne(x.shape[1], simplify_dim(w.shape[1] * group)):
        raise ctx.error(
            f"input {x} has {x.shape[1]} channels but the weight {w} with group={group} expects {w.shape[1] * group}"
        )
    m = w.shape[0]
    if isinstance(m, int) and m % group:
        raise ctx.error(f"weight {w} has {m} output channels, not a multiple of group={group}")
    spatial = [
        conv_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]) for i in range(nd)
    ]
    if any(isinstance(d, int) and d < 1 for d in spatial):
        raise ctx.error(f"the output would have spatial size {spatial} (input too small for kernel/pads/strides)")
    return (x.shape[0], m, *spatial)


_CONV_ATTRS = {
    "kernel_shape": Attr("ints", ()),
    "strides": Attr("ints", ()),
    "pads": Attr("ints", ()),
    "dilations": Attr("ints", ()),
    "group": Attr("int", 1),
}


# ---------------------------------------------------------------------------
# reference helpers


def _centred(q: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """q - zero_point as exact f64 (BLAS-ready)."""
    out = q.astype(np.float64)
    if zero_point is not None:
        out = out - zero_point.astype(np.float64)
    return out


def _wrap_i32(acc: np.ndarray) -> np.ndarray:
    """Exact integer-valued f64 accumulator -> i32, wrapping modulo 2^32 like int32 arithmetic."""
    return np.asarray(acc).astype(np.int64).astype(np.int32)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-tensor (one element) or per-output-channel ([M]) parameter shaped to broadcast
    over (N, M, spatial...)."""
    if v.size == 1:
        return v.reshape(())
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray) -> np.ndarray:
    """saturate(round_half_even(acc * multiplier) + y_zero_point) in the zero point's dtype."""
    wt = np.float64 if multiplier.dtype == np.float64 else np.float32
    scaled = np.rint(acc.astype(wt) * multiplier.astype(wt))
    info = np.iinfo(y_zero_point.dtype)
    return np.clip(scaled + y_zero_point.astype(wt), info.min, info.max).astype(y_zero_point.dtype)


def _multiplier(*scales: np.ndarray, y_scale: np.ndarray) -> np.ndarray:
    """prod(scales) / y_scale, rounded to the scale dtype after each operation."""
    dt = scales[0].dtype
    wt = np.float64 if dt == np.float64 else np.float32
    m = scales[0].astype(wt)
    for s in scales[1:]:
        m = (m * s.astype(wt)).astype(dt).astype(wt)
    return (m / y_scale.astype(wt)).astype(dt)


# ---------------------------------------------------------------------------
# matmul_integer, qlinear_matmul


def _infer_matmul_integer(ctx):
    a, b = _check_quantized(ctx, 0, "A"), _check_quantized(ctx, 1, "B")
    shape, a_target, b_target = _matmul_shapes(ctx, a, b)
    _check_param(ctx, 2, a_target, "a_zero_point", a.dtype)
    _check_param(ctx, 3, b_target, "b_zero_point", b.dtype)
    return [TensorType(shape, DType.i32)]


@register("matmul_integer", family=OUT_FUSABLE, inputs=(2, 4), infer=_infer_matmul_integer)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """(A - a_zero_point) @ (B - b_zero_point) in i32 (numpy matmul broadcasting)."""
    return _wrap_i32(np.matmul(_centred(a, a_zero_point), _centred(b, b_zero_point)))


def _infer_qlinear_matmul(ctx):
    a, b = _check_quantized(ctx, 0, "a"), _check_quantized(ctx, 3, "b")
    shape, a_target, b_target = _matmul_shapes(ctx, a, b)
    scale_dt = ctx.type(1).dtype
    if scale_dt not in SCALE_DTYPES:
        raise ctx.error(f"a_scale {ctx.type(1)} must be a float tensor")
    _check_param(ctx, 1, a_target, "a_scale", scale_dt)
    _check_param(ctx, 2, a_target, "a_zero_point", a.dtype)
    _check_param(ctx, 4, b_target, "b_scale", scale_dt)
    _check_param(ctx, 5, b_target, "b_zero_point", b.dtype)
    _check_param(ctx, 6, shape, "y_scale", scale_dt)
    _check_param(ctx, 7, shape, "y_zero_point", dtypes=QUANT_DTYPES)
    return [TensorType(shape, ctx.type(7).dtype)]


@register("qlinear_matmul", family=OUT_FUSABLE, inputs=8, infer=_infer_qlinear_matmul)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """Quantized matmul: requantize((a - a_zp) @ (b - b_zp), a_scale * b_scale / y_scale, y_zp)."""
    acc = matmul_integer(a, b, a_zero_point, b_zero_point)
    return _requantize(acc, _multiplier(a_scale, b_scale, y_scale=y_scale), y_zero_point)


# ---------------------------------------------------------------------------
# conv_integer, qlinear_conv


def _infer_conv_integer(ctx):
    x, w = _check_quantized(ctx, 0, "input"), _check_quantized(ctx, 1, "weight")
    shape = _conv_shape(ctx, x, w)
    _check_per_tensor(ctx, 2, "x_zero_point", x.dtype)
    _check_param(ctx, 3, (w.shape[0],), "w_zero_point", w.dtype)
    return [TensorType(shape, DType.i32)]


def _integer_conv(x, x_zero_point, w, w_zero_point, attrs: dict) -> np.ndarray:
    """Exact f64 accumulator of conv(x - x_zp, w - w_zp); padding is zero after centring
    (the input's zero point before it), as ONNX and onnxruntime define it."""
    if w_zero_point is not None and w_zero_point.size > 1:
        w_zero_point = w_zero_point.reshape((-1,) + (1,) * (w.ndim - 1))  # [M, 1, 1...] against w (M, C/g, K...)
    return conv_reference(_centred(x, x_zero_point), _centred(w, w_zero_point), None, **attrs)


@register("conv_integer", family=OUT_FUSABLE, inputs=(2, 4), attrs=_CONV_ATTRS, infer=_infer_conv_integer)
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **attrs):
    """conv(x - x_zero_point, w - w_zero_point) in i32; w_zero_point per tensor or per output channel."""
    return _wrap_i32(_integer_conv(x, x_zero_point, w, w_zero_point, attrs))


def _infer_qlinear_conv(ctx):
    x, w = _check_quantized(ctx, 0, "x"), _check_quantized(ctx, 3, "w")
    shape = _conv_shape(ctx, x, w)
    scale_dt = ctx.type(1).dtype
    if scale_dt not in SCALE_DTYPES:
        raise ctx.error(f"x_scale {ctx.type(1)} must be a float tensor")
    m = w.shape[0]
    _check_per_tensor(ctx, 1, "x_scale", scale_dt)
    _check_per_tensor(ctx, 2, "x_zero_point", x.dtype)
    _check_param(ctx, 4, (m,), "w_scale", scale_dt)
    _check_param(ctx, 5, (m,), "w_zero_point", w.dtype)
    _check_per_tensor(ctx, 6, "y_scale", scale_dt)
    _check_per_tensor(ctx, 7, "y_zero_point", dtypes=QUANT_DTYPES)
    if ctx.has(8):
        bias = ctx.type(8)
        if bias.dtype != DType.i32 or bias.rank != 1 or dim_known_ne(bias.shape[0], m):
            raise ctx.error(f"bias {bias} must be i32[{m}]")
    return [TensorType(shape, ctx.type(7).dtype)]


@register("qlinear_conv", family=OUT_FUSABLE, inputs=(8, 9), attrs=_CONV_ATTRS, infer=_infer_qlinear_conv)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None, **attrs):
    """Quantized conv: requantize(conv(x - x_zp, w - w_zp) + bias, x_scale * w_scale / y_scale, y_zp)."""
    acc = _wrap_i32(_integer_conv(x, x_zero_point, w, w_zero_point, attrs))
    if bias is not None:
        acc = (acc.astype(np.int64) + bias.astype(np.int64).reshape((1, -1) + (1,) * (x.ndim - 2))).astype(np.int32)
    multiplier = _multiplier(x_scale.reshape(()), w_scale, y_scale=y_scale.reshape(()))
    channel = _per_channel(multiplier, x.ndim)
    return _requantize(acc, channel, y_zero_point.reshape(()))


# ---------------------------------------------------------------------------
# dynamic_quantize_linear


def _infer_dynamic_quantize(ctx):
    x = ctx.type(0)
    if x.dtype not in SCALE_DTYPES:
        raise ctx.error(f"x must be a float tensor, got {x}")
    return [x.with_dtype(DType.u8), TensorType((), DType.f32), TensorType((), DType.u8)]


# OPAQUE, not ELEMENTWISE: every output element depends on the min and max of the whole
# tensor, so a kernel computing it element by element (or row by row, or tile by tile)
# would quantize each piece with its own scale. The fuse pass keeps opaque ops alone.
@register("dynamic_quantize_linear", family=OPAQUE, inputs=1, outputs=3, infer=_infer_dynamic_quantize)
def dynamic_quantize_linear(x):
    """u8 quantization over x's range widened to include 0: (y, scale, zero_point)."""
    # f32 throughout, as onnxruntime computes it.
    xf = x.astype(np.float32)
    lo = np.float32(min(float(xf.min()), 0.0)) if xf.size else np.float32(0)
    hi = np.float32(max(float(xf.max()), 0.0)) if xf.size else np.float32(0)
    qmin, qmax = 0, 255
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(qmax - qmin))
    zero_point = np.rint(np.clip(np.float32(qmin) - lo / scale, qmin, qmax))
    y = np.clip(np.rint(xf / scale) + zero_point, qmin, qmax)
    return y.astype(np.uint8), np.asarray(scale, np.float32), np.asarray(zero_point).astype(np.uint8)
