"""Reductions (reduce_*), argmax/argmin, and the cumsum scan.

Reductions take attributes `axes` (non-negative, unique; the frontends emit them
sorted), `keepdims` (bool) and `noop_with_empty_axes` (bool), with ONNX's meaning:

- axes=(a, b, ...): reduce over those axes;
- axes=() and noop_with_empty_axes=False: reduce over every axis;
- axes=() and noop_with_empty_axes=True: reduce over no axis, i.e. apply the
  reduction to each element on its own (x for sum/mean/max, x*x for sum_square,
  |x| for l1/l2, log(x) for log_sum): what onnxruntime does.

Reducing an empty set gives the reduction's identity: 0 for sum/l1/l2/sum_square,
1 for prod, -inf for log_sum/log_sum_exp, the dtype's lowest (highest) value for max
(min), and NaN for mean (0/0; onnxruntime gives 0). Float reductions propagate NaN
(onnxruntime's max/min skip it). 16- and 8-bit floats accumulate in f32; integers
accumulate in their own dtype (wrapping). Integer mean truncates toward zero, and
integer l2/log_sum/log_sum_exp are the exact values, computed in f64, truncated (as
onnxruntime does for mean/l2/log_sum; its integer log_sum_exp truncates every exp term).
"""

from __future__ import annotations

import numpy as np

from einfuse.ir.ops import OPAQUE, REDUCE, Attr, register
from einfuse.ir.ops.elementwise import BOOL, NUMERIC, check_dtype, recast, upcast
from einfuse.ir.types import DType, TensorType

# The ONNX Reduce* family: one input, `axes`, `keepdims`, `noop_with_empty_axes`; the
# fuser, the TVM emitters, the graph strategies and the ONNX exporter all key on it.
AXIS_REDUCTIONS: tuple[str, ...] = (
    "reduce_sum",
    "reduce_mean",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_l1",
    "reduce_l2",
    "reduce_sum_square",
    "reduce_log_sum",
    "reduce_log_sum_exp",
)

_REDUCE_ATTRS = {
    "axes": Attr("ints", ()),
    "keepdims": Attr("bool", True),
    "noop_with_empty_axes": Attr("bool", False),
}


def reduced_axes(axes: tuple, noop_with_empty_axes: bool, rank: int) -> tuple:
    """The axes a reduction reduces over (see the module docstring)."""
    if axes:
        return tuple(axes)
    return () if noop_with_empty_axes else tuple(range(rank))


def _check_axes(ctx, axes, rank: int) -> None:
    for a in axes:
        if not 0 <= a < rank:
            raise ctx.error(f"axis {a} is out of range for rank {rank} (axes must be normalised to 0..{rank - 1})")
    if len(set(axes)) != len(axes):
        raise ctx.error(f"axes {tuple(axes)} repeat an axis")


def _reduce_infer(allowed: frozenset):
    def infer(ctx):
        check_dtype(ctx, 0, allowed)
        t = ctx.type(0)
        _check_axes(ctx, ctx.attrs["axes"], t.rank)
        axes = reduced_axes(ctx.attrs["axes"], ctx.attrs["noop_with_empty_axes"], t.rank)
        if ctx.attrs["keepdims"]:
            shape = tuple(1 if k in axes else d for k, d in enumerate(t.shape))
        else:
            shape = tuple(d for k, d in enumerate(t.shape) if k not in axes)
        return [TensorType(shape, t.dtype)]

    return infer


def _wide(x: np.ndarray) -> np.ndarray:
    """x in f64 when it is an integer array (for reductions with float results), else upcast(x)."""
    return x.astype(np.float64) if x.dtype.kind in "iub" else upcast(x)


def _squeeze(r: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    return r if keepdims else np.squeeze(r, axis=axes)


def _reduction(name: str, allowed: frozenset = NUMERIC):
    def deco(fn):
        def ref(x, *, axes, keepdims, noop_with_empty_axes):
            ax = reduced_axes(axes, noop_with_empty_axes, x.ndim)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                r = fn(x, ax)  # keepdims=True result
            return recast(_squeeze(np.asarray(r), ax, keepdims), x.dtype)

        ref.__name__ = fn.__name__
        ref.__doc__ = fn.__doc__
        return register(name, family=REDUCE, inputs=1, attrs=_REDUCE_ATTRS, infer=_reduce_infer(allowed))(ref)

    return deco


@_reduction("reduce_sum")
def reduce_sum(x, axes):
    """sum over axes"""
    a = upcast(x)
    return np.sum(a, axis=axes, keepdims=True, dtype=a.dtype)


@_reduction("reduce_mean")
def reduce_mean(x, axes):
    """mean over axes (integers: truncated)"""
    count = int(np.prod([x.shape[k] for k in axes], dtype=np.int64))
    if x.dtype.kind in "iu":
        s = np.sum(x, axis=axes, keepdims=True, dtype=np.int64 if x.dtype.kind == "i" else np.uint64)
        # C division truncates toward zero; numpy's // floors.
        return np.sign(s) * (np.abs(s) // max(count, 1))
    a = upcast(x)
    return np.sum(a, axis=axes, keepdims=True, dtype=a.dtype) / np.asarray(count, a.dtype)


def _lowest(dt: np.dtype):
    if dt.kind == "b":
        return False
    if dt.kind in "iu":
        return np.iinfo(dt).min
    return -np.inf


def _highest(dt: np.dtype):
    if dt.kind == "b":
        return True
    if dt.kind in "iu":
        return np.iinfo(dt).max
    return np.inf


@_reduction("reduce_max", NUMERIC | BOOL)
def reduce_max(x, axes):
    """maximum over axes (NaN propagates)"""
    a = upcast(x)
    return np.max(a, axis=axes, keepdims=True, initial=_lowest(a.dtype))


@_reduction("reduce_min", NUMERIC | BOOL)
def reduce_min(x, axes):
    """minimum over axes (NaN propagates)"""
    a = upcast(x)
    return np.min(a, axis=axes, keepdims=True, initial=_highest(a.dtype))


@_reduction("reduce_prod")
def reduce_prod(x, axes):
    """product over axes"""
    a = upcast(x)
    return np.prod(a, axis=axes, keepdims=True, dtype=a.dtype)


@_reduction("reduce_l1")
def reduce_l1(x, axes):
    """sum of |x| over axes"""
    a = upcast(x)
    return np.sum(np.abs(a), axis=axes, keepdims=True, dtype=a.dtype)


@_reduction("reduce_l2")
def reduce_l2(x, axes):
    """sqrt of the sum of x*x over axes"""
    a = _wide(x)
    return np.sqrt(np.sum(a * a, axis=axes, keepdims=True))


@_reduction("reduce_sum_square")
def reduce_sum_square(x, axes):
    """sum of x*x over axes"""
    a = upcast(x)
    return np.sum(a * a, axis=axes, keepdims=True, dtype=a.dtype)


@_reduction("reduce_log_sum")
def reduce_log_sum(x, axes):
    """log of the sum over axes"""
    a = _wide(x)
    return np.log(np.sum(a, axis=axes, keepdims=True))


@_reduction("reduce_log_sum_exp")
def reduce_log_sum_exp(x, axes):
    """log of the sum of e**x over axes, computed stably (max subtracted)"""
    a = _wide(x)
    m = np.max(a, axis=axes, keepdims=True, initial=-np.inf)
    # An infinite (or empty-set) maximum cannot be subtracted: use 0 there.
    m = np.where(np.isfinite(m), m, 0)
    return np.log(np.sum(np.exp(a - m), axis=axes, keepdims=True)) + m


# -- argmax / argmin -----------------------------------------------------------------

_ARG_ATTRS = {"axis": Attr("int", 0), "keepdims": Attr("bool", True), "select_last_index": Attr("bool", False)}


def _arg_infer(ctx):
    check_dtype(ctx, 0, NUMERIC)
    t = ctx.type(0)
    axis = ctx.attrs["axis"]
    if not 0 <= axis < t.rank:
        raise ctx.error(f"axis {axis} is out of range for rank {t.rank}")
    if isinstance(t.shape[axis], int) and t.shape[axis] == 0:
        raise ctx.error(f"axis {axis} has size 0: there is no extremum to index")
    if ctx.attrs["keepdims"]:
        shape = tuple(1 if k == axis else d for k, d in enumerate(t.shape))
    else:
        shape = tuple(d for k, d in enumerate(t.shape) if k != axis)
    return [TensorType(shape, DType.i64)]


def _arg(fn, x, axis, keepdims, select_last_index):
    a = upcast(x)
    if select_last_index:
        idx = x.shape[axis] - 1 - fn(np.flip(a, axis=axis), axis=axis, keepdims=True)
    else:
        idx = fn(a, axis=axis, keepdims=True)
    return _squeeze(np.asarray(idx, np.int64), (axis,), keepdims)


@register("argmax", family=REDUCE, inputs=1, attrs=_ARG_ATTRS, infer=_arg_infer)
def argmax(x, *, axis, keepdims, select_last_index):
    """index of the maximum along axis (first one, or last with select_last_index; a NaN counts as the maximum)"""
    return _arg(np.argmax, x, axis, keepdims, select_last_index)


@register("argmin", family=REDUCE, inputs=1, attrs=_ARG_ATTRS, infer=_arg_infer)
def argmin(x, *, axis, keepdims, select_last_index):
    """index of the minimum along axis (first one, or last with select_last_index; a NaN counts as the minimum)"""
    return _arg(np.argmin, x, axis, keepdims, select_last_index)


# -- cumsum ----------------------------------------------------------------------------


def _cumsum_infer(ctx):
    check_dtype(ctx, 0, NUMERIC)
    t = ctx.type(0)
    axis = ctx.attrs["axis"]
    if not 0 <= axis < t.rank:
        raise ctx.error(f"axis {axis} is out of range for rank {t.rank}")
    return [t]


# A scan: each output reads a prefix of its row, so it fuses like nothing else here.
@register(
    "cumsum",
    family=OPAQUE,
    inputs=1,
    attrs={"axis": Attr("int"), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)},
    infer=_cumsum_infer,
)
def cumsum(x, *, axis, exclusive, reverse):
    """running sum along axis; exclusive leaves out the element itself; reverse runs from the end"""
    a = np.moveaxis(upcast(x), axis, 0)
    if reverse:
        a = a[::-1]
    c = np.cumsum(a, axis=0, dtype=a.dtype)
    if exclusive:
        shifted = np.zeros_like(c)
        shifted[1:] = c[:-1]
        c = shifted
    if reverse:
        c = c[::-1]
    return recast(np.moveaxis(c, 0, axis), x.dtype)
