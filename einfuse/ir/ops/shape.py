"""Shape and data-movement ops: reshapes, transposes, slicing, concatenation and
splitting, gathers and scatters, padding, tiling, resizing, top-k, and the small
generators (shape, size, constant_of_shape, range, eye_like, one_hot) that ONNX shape
computations are made of.

Static parameters (target shapes, axes, pads, slice bounds, split sizes, repeats,
resize scales...) are attributes. The ONNX converter reads them from constant operands
and normalises them: defaults filled, axes non-negative, so inference here only checks
them. Semantics are those of the newest ONNX opset.

Generators compute their output shape exactly from their attributes: the frontend folds
all-constant nodes and refuses a result over the memory limit *from the inferred type*,
before the reference allocates anything.
"""

from __future__ import annotations

import math

import numpy as np
import sympy

from einfuse.ir.ops import INJECTIVE, OPAQUE, SHAPE, Attr, register
from einfuse.ir.types import (
    Dim,
    DType,
    TensorType,
    broadcast_shapes,
    ceildiv,
    dim_known_ne,
    dim_max,
    floordiv,
    prod,
    simplify_dim,
)

INDEX_DTYPES = (DType.i64, DType.i32)

# Slice bounds at or beyond this magnitude mean "to the end" (exporters write INT32_MAX or
# INT64_MAX). Against a symbolic dim we assume the dim is smaller, which keeps the inferred
# size readable ("S" rather than "min(S, 2147483647)"); the evaluator checks it at run time.
_SLICE_INF = 2**31 - 1


# ---------------------------------------------------------------------------
# Helpers shared by inference functions


def _check_axis(ctx, axis: int, rank: int, what: str = "axis") -> int:
    if not 0 <= axis < rank:
        raise ctx.error(f"{what} {axis} is out of range for rank {rank} (the converter normalises axes)")
    return axis


def _check_axes(ctx, axes: tuple, rank: int, what: str = "axes") -> tuple:
    for a in axes:
        _check_axis(ctx, a, rank, what)
    if len(set(axes)) != len(axes):
        raise ctx.error(f"{what} {list(axes)} repeat an axis")
    return axes


def _check_index_dtype(ctx, i: int, what: str = "indices") -> None:
    t = ctx.type(i)
    if t.dtype not in INDEX_DTYPES:
        raise ctx.error(f"{what} must be i64 or i32, got {t.dtype}")


def _exact_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it is provably a whole number (a polynomial over the symbols), else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b != 0 and a % b == 0 else None
    num, den = sympy.fraction(sympy.cancel(sympy.sympify(a) / sympy.sympify(b)))
    if den == 1:
        return simplify_dim(num)
    return None


def _normalize_index(idx: np.ndarray, dim: int) -> np.ndarray:
    """ONNX indices may be negative (counted from the end); out-of-range stays out of range."""
    idx = np.asarray(idx, dtype=np.int64)
    return np.where(idx < 0, idx + dim, idx)


# ---------------------------------------------------------------------------
# reshape / flatten / transpose / squeeze / unsqueeze


def resolve_reshape(in_shape: tuple, target: tuple, allowzero: bool, error) -> list:
    """Output dims of reshaping `in_shape` to ONNX `target` (0 copies the input dim unless
    allowzero, -1 is inferred). Dims may be symbolic; `error(msg)` builds the exception."""
    dims: list = []
    infer_at = None
    for i, t in enumerate(target):
        if t == -1:
            if infer_at is not None:
                raise error(f"target shape {list(target)} has more than one -1")
            infer_at = i
            dims.append(None)
        elif t == 0 and not allowzero:
            if i >= len(in_shape):
                raise error(f"target shape {list(target)} copies dim {i} (0) but the input has rank {len(in_shape)}")
            dims.append(in_shape[i])
        elif t < 0:
            raise error(f"target shape {list(target)} has a negative dim {t}")
        else:
            dims.append(t)
    if allowzero and infer_at is not None and 0 in target:
        raise error(f"target shape {list(target)} has both 0 and -1 with allowzero=1")
    numel = prod(in_shape)
    if infer_at is not None:
        known = prod(d for d in dims if d is not None)
        if isinstance(known, int) and known == 0:
            raise error(f"cannot infer the -1 of target shape {list(target)}: the other dims multiply to 0")
        q = _exact_div(numel, known)
        if q is None:
            if isinstance(numel, int) and isinstance(known, int):
                raise error(f"cannot reshape {numel} elements to {list(target)}")
            q = floordiv(numel, known)
        dims[infer_at] = q
    elif dim_known_ne(prod(dims), numel):
        raise error(f"cannot reshape {numel} elements to {list(target)}")
    return dims


def _reshape_infer(ctx):
    x = ctx.type(0)
    dims = resolve_reshape(x.shape, ctx.attrs["shape"], ctx.attrs["allowzero"], ctx.error)
    return [TensorType(tuple(dims), x.dtype)]


@register(
    "reshape",
    family=INJECTIVE,
    inputs=1,
    attrs={"shape": Attr("ints"), "allowzero": Attr("bool", False)},
    infer=_reshape_infer,
)
def reshape(x, *, shape, allowzero):
    """x with a new shape (ONNX Reshape: 0 copies a dim unless allowzero, -1 is inferred)"""

    def fail(msg):
        return ValueError(msg)

    dims = resolve_reshape(x.shape, shape, allowzero, fail)
    return np.reshape(x, tuple(int(d) for d in dims))


def _flatten_infer(ctx):
    x = ctx.type(0)
    axis = ctx.attrs["axis"]
    if not 0 <= axis <= x.rank:
        raise ctx.error(f"axis {axis} is out of range for rank {x.rank}")
    return [TensorType((prod(x.shape[:axis]), prod(x.shape[axis:])), x.dtype)]


@register("flatten", family=INJECTIVE, inputs=1, attrs={"axis": Attr("int", 1)}, infer=_flatten_infer)
def flatten(x, *, axis):
    """x as a matrix: dims before `axis` become rows, the rest columns"""
    rows = math.prod(x.shape[:axis])
    return np.reshape(x, (rows, math.prod(x.shape[axis:])))


def _transpose_infer(ctx):
    x = ctx.type(0)
    perm = ctx.attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ctx.error(f"perm {list(perm)} is not a permutation of the {x.rank} axes")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


@register("transpose", family=INJECTIVE, inputs=1, attrs={"perm": Attr("ints")}, infer=_transpose_infer)
def transpose(x, *, perm):
    """x with its axes permuted: output axis i is input axis perm[i]"""
    return np.transpose(x, perm)


def _squeeze_infer(ctx):
    x = ctx.type(0)
    axes = _check_axes(ctx, ctx.attrs["axes"], x.rank)
    for a in axes:
        d = x.shape[a]
        if isinstance(d, int) and d != 1:
            raise ctx.error(f"cannot squeeze axis {a} of {x}: its size is {d}, not 1")
    return [TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


@register("squeeze", family=INJECTIVE, inputs=1, attrs={"axes": Attr("ints")}, infer=_squeeze_infer)
def squeeze(x, *, axes):
    """x without the size-1 axes `axes`"""
    return np.squeeze(x, axis=tuple(axes)) if axes else x


def _unsqueeze_infer(ctx):
    x = ctx.type(0)
    axes = ctx.attrs["axes"]
    rank = x.rank + len(axes)
    _check_axes(ctx, axes, rank)
    it = iter(x.shape)
    return [TensorType(tuple(1 if i in axes else next(it) for i in range(rank)), x.dtype)]


@register("unsqueeze", family=INJECTIVE, inputs=1, attrs={"axes": Attr("ints")}, infer=_unsqueeze_infer)
def unsqueeze(x, *, axes):
    """x with size-1 axes inserted at `axes` (positions in the output)"""
    return np.expand_dims(x, tuple(axes)) if axes else x


# ---------------------------------------------------------------------------
# concat / split / slice


def _concat_infer(ctx):
    types = [ctx.type(i) for i in range(len(ctx.types))]
    first = types[0]
    axis = _check_axis(ctx, ctx.attrs["axis"], first.rank)
    out = list(first.shape)
    total: Dim = 0
    for t in types:
        if t.dtype != first.dtype:
            raise ctx.error(f"operand dtypes differ: {first} and {t}")
        if t.rank != first.rank:
            raise ctx.error(f"operand ranks differ: {first} and {t}")
        for i, (a, b) in enumerate(zip(out, t.shape)):
            if i == axis:
                continue
            if dim_known_ne(a, b):
                raise ctx.error(f"operands {first} and {t} differ in dim {i}")
            if not isinstance(a, int) and isinstance(b, int):
                out[i] = b  # a static size pins the symbolic one
        total = simplify_dim(total + t.shape[axis])
    out[axis] = total
    return [TensorType(tuple(out), first.dtype)]


@register("concat", family=INJECTIVE, inputs=(1, None), attrs={"axis": Attr("int")}, infer=_concat_infer)
def concat(*xs, axis):
    """the operands joined along `axis`"""
    return np.concatenate(xs, axis=axis)


def _split_infer(ctx):
    x = ctx.type(0)
    axis = _check_axis(ctx, ctx.attrs["axis"], x.rank)
    sizes = ctx.attrs["split"]
    if not sizes or any(s < 0 for s in sizes):
        raise ctx.error(f"split sizes {list(sizes)} must be non-empty and non-negative")
    if dim_known_ne(sum(sizes), x.shape[axis]):
        raise ctx.error(f"split sizes {list(sizes)} do not add up to dim {axis} of {x}")
    return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1 :]) for s in sizes]


@register(
    "split",
    family=INJECTIVE,
    inputs=1,
    attrs={"axis": Attr("int", 0), "split": Attr("ints")},
    outputs=lambda attrs: len(attrs["split"]),
    infer=_split_infer,
)
def split(x, *, axis, split):
    """x cut along `axis` into pieces of the sizes `split`"""
    cuts = np.cumsum(split)[:-1]
    return tuple(np.split(x, cuts, axis=axis))


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice clamping for a static dim: (first index, stop) with stop == -1 meaning
    'before index 0' for negative steps."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def slice_length(dim: Dim, start: int, end: int, step: int) -> Dim:
    """Number of elements ONNX Slice takes along one axis (dim may be symbolic)."""
    if isinstance(dim, int):
        s, e = slice_bounds(dim, start, end, step)
        n = e - s if step > 0 else s - e
        return max(0, -(-n // abs(step)))
    d = sympy.sympify(dim)
    if step > 0 and 0 <= start < _SLICE_INF:
        # Inside max(0, end - start) the clamp min(start, d) may be dropped: the clamped end
        # never exceeds d. Keeps x[1:] as max(0, S - 1) instead of max(0, S - min(1, S)).
        start_expr = sympy.Integer(start)
    else:
        start_expr = None
    if step > 0:
        lo, hi = 0, d
    else:
        lo, hi = -1, d - 1

    def clamp(v: int) -> sympy.Expr:
        if v >= _SLICE_INF:
            return hi
        if v <= -_SLICE_INF:
            return sympy.Integer(lo)
        if v < 0:
            return sympy.Max(d + v, lo)
        return sympy.Min(v, hi)

    s, e = clamp(start) if start_expr is None else start_expr, clamp(end)
    n = e - s if step > 0 else s - e
    return ceildiv(dim_max(0, simplify_dim(n)), abs(step))


def _slice_infer(ctx):
    x = ctx.type(0)
    starts, ends, axes, steps = (ctx.attrs[k] for k in ("starts", "ends", "axes", "steps"))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps must have the same length")
    _check_axes(ctx, axes, x.rank)
    if 0 in steps:
        raise ctx.error("slice steps cannot be 0")
    out = list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        out[a] = slice_length(x.shape[a], s, e, st)
    return [x.with_shape(out)]


@register(
    "slice",
    family=INJECTIVE,
    inputs=1,
    attrs={"starts": Attr("ints"), "ends": Attr("ints"), "axes": Attr("ints"), "steps": Attr("ints")},
    infer=_slice_infer,
)
def slice_(x, *, starts, ends, axes, steps):
    """x[starts:ends:steps] along `axes` (ONNX clamping, negative steps allowed)"""
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        lo, hi = slice_bounds(x.shape[a], s, e, st)
        index[a] = slice(lo, hi if hi >= 0 else None, st)
    return x[tuple(index)]


# ---------------------------------------------------------------------------
# gathers and scatters


def _gather_infer(ctx):
    x, idx = ctx.type(0), ctx.type(1)
    axis = _check_axis(ctx, ctx.attrs["axis"], x.rank)
    _check_index_dtype(ctx, 1)
    return [x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])]


@register("gather", family=INJECTIVE, inputs=2, attrs={"axis": Attr("int", 0)}, infer=_gather_infer)
def gather(x, indices, *, axis):
    """x indexed along `axis` by `indices` (negative indices count from the end)"""
    return np.take(x, _normalize_index(indices, x.shape[axis]), axis=axis)


def _gather_elements_infer(ctx):
    x, idx = ctx.type(0), ctx.type(1)
    _check_axis(ctx, ctx.attrs["axis"], x.rank)
    _check_index_dtype(ctx, 1)
    if idx.rank != x.rank:
        raise ctx.error(f"indices {idx} must have the rank of data {x}")
    for d, (a, b) in enumerate(zip(idx.shape, x.shape)):
        if d != ctx.attrs["axis"] and isinstance(a, int) and isinstance(b, int) and a > b:
            raise ctx.error(f"indices {idx} are larger than data {x} on axis {d}")
    return [x.with_shape(idx.shape)]


@register("gather_elements", family=INJECTIVE, inputs=2, attrs={"axis": Attr("int", 0)}, infer=_gather_elements_infer)
def gather_elements(x, indices, *, axis):
    """out[i][j][k] = x[indices[i][j][k]][j][k] for axis 0 (take_along_axis)"""
    # Indices may be smaller than the data on the other axes (ONNX allows it): take the
    # leading block of x there, or take_along_axis would broadcast the indices instead.
    block = tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(indices.shape))
    return np.take_along_axis(x[block], _normalize_index(indices, x.shape[axis]), axis=axis)


def _gather_nd_infer(ctx):
    x, idx = ctx.type(0), ctx.type(1)
    b = ctx.attrs["batch_dims"]
    _check_index_dtype(ctx, 1)
    if idx.rank < 1 or not isinstance(idx.shape[-1], int):
        raise ctx.error(f"indices {idx} need a static last dim")
    k = idx.shape[-1]
    if not 0 <= b < min(x.rank, idx.rank):
        raise ctx.error(f"batch_dims {b} is out of range for data {x} and indices {idx}")
    if b + k > x.rank:
        raise ctx.error(f"indices {idx} index {k} dims past batch_dims {b}, but data {x} has rank {x.rank}")
    for i in range(b):
        if dim_known_ne(x.shape[i], idx.shape[i]):
            raise ctx.error(f"batch dim {i} differs between data {x} and indices {idx}")
    return [x.with_shape(idx.shape[:-1] + x.shape[b + k :])]


@register("gather_nd", family=INJECTIVE, inputs=2, attrs={"batch_dims": Attr("int", 0)}, infer=_gather_nd_infer)
def gather_nd(x, indices, *, batch_dims):
    """slices of x picked by index tuples (the last axis of `indices`), after `batch_dims` shared dims"""
    b, k = batch_dims, indices.shape[-1]
    batch = math.prod(x.shape[:b])
    data = x.reshape((batch,) + x.shape[b:])
    idx = np.asarray(indices, dtype=np.int64).reshape(batch, -1, k)
    idx = np.where(idx < 0, idx + np.asarray(x.shape[b : b + k], dtype=np.int64), idx)
    rows = np.arange(batch)[:, None]
    picked = data[(rows,) + tuple(idx[..., j] for j in range(k))]
    return picked.reshape(indices.shape[:-1] + x.shape[b + k :])


_SCATTER_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _check_reduction(ctx) -> None:
    r = ctx.attrs["reduction"]
    if r not in _SCATTER_REDUCTIONS:
        raise ctx.error(f"unknown reduction {r!r} (expected one of {sorted(_SCATTER_REDUCTIONS)})")


def _scatter_elements_infer(ctx):
    x, idx, upd = ctx.type(0), ctx.type(1), ctx.type(2)
    _check_axis(ctx, ctx.attrs["axis"], x.rank)
    _check_index_dtype(ctx, 1)
    _check_reduction(ctx)
    if upd.dtype != x.dtype:
        raise ctx.error(f"updates {upd} must have the dtype of data {x}")
    if idx.rank != x.rank or upd.rank != x.rank:
        raise ctx.error(f"indices {idx} and updates {upd} must have the rank of data {x}")
    for a, b in zip(idx.shape, upd.shape):
        if dim_known_ne(a, b):
            raise ctx.error(f"indices {idx} and updates {upd} must have the same shape")
    return [x]


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    fn = _SCATTER_REDUCTIONS[reduction]
    if fn is None:
        out[index] = updates
    else:
        fn.at(out, index, updates)
    return out


@register(
    "scatter_elements",
    family=OPAQUE,
    inputs=3,
    attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none")},
    infer=_scatter_elements_infer,
)
def scatter_elements(x, indices, updates, *, axis, reduction):
    """a copy of x where out[indices[i][j]][j] (axis 0) is updates[i][j], or combined with it by `reduction`"""
    idx = _normalize_index(indices, x.shape[axis])
    coords = list(np.indices(idx.shape, sparse=True))
    coords[axis] = idx
    return _scatter(np.array(x, copy=True), tuple(coords), updates, reduction)


def _scatter_nd_infer(ctx):
    x, idx, upd = ctx.type(0), ctx.type(1), ctx.type(2)
    _check_index_dtype(ctx, 1)
    _check_reduction(ctx)
    if upd.dtype != x.dtype:
        raise ctx.error(f"updates {upd} must have the dtype of data {x}")
    if idx.rank < 1 or not isinstance(idx.shape[-1], int) or idx.shape[-1] > x.rank:
        raise ctx.error(f"indices {idx} need a static last dim of at most the rank of data {x}")
    want = idx.shape[:-1] + x.shape[idx.shape[-1] :]
    if upd.rank != len(want) or any(dim_known_ne(a, b) for a, b in zip(upd.shape, want)):
        raise ctx.error(f"updates {upd} should have shape [{','.join(map(str, want))}]")
    return [x]


@register("scatter_nd", family=OPAQUE, inputs=3, attrs={"reduction": Attr("str", "none")}, infer=_scatter_nd_infer)
def scatter_nd(x, indices, updates, *, reduction):
    """a copy of x where the slices addressed by index tuples are updates (or combined by `reduction`)"""
    k = indices.shape[-1]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, k)
    idx = np.where(idx < 0, idx + np.asarray(x.shape[:k], dtype=np.int64), idx)
    upd = updates.reshape((idx.shape[0],) + x.shape[k:])
    return _scatter(np.array(x, copy=True), tuple(idx[:, j] for j in range(k)), upd, reduction)


# ---------------------------------------------------------------------------
# expand / tile / pad


def _expand_infer(ctx):
    x = ctx.type(0)
    shape = ctx.attrs["shape"]
    if any(d < 0 for d in shape):
        raise ctx.error(f"target shape {list(shape)} has a negative dim")
    try:
        out = broadcast_shapes(x.shape, tuple(shape))
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return [x.with_shape(out)]


@register("expand", family=INJECTIVE, inputs=1, attrs={"shape": Attr("ints")}, infer=_expand_infer)
def expand(x, *, shape):
    """x broadcast (both ways, numpy rules) with `shape`"""
    out = np.broadcast_shapes(x.shape, tuple(shape))
    return np.array(np.broadcast_to(x, out))


def _tile_infer(ctx):
    x = ctx.type(0)
    reps = ctx.attrs["repeats"]
    if len(reps) != x.rank or any(r < 0 for r in reps):
        raise ctx.error(f"repeats {list(reps)} must be {x.rank} non-negative counts")
    return [x.with_shape(tuple(simplify_dim(d * r) for d, r in zip(x.shape, reps)))]


@register("tile", family=INJECTIVE, inputs=1, attrs={"repeats": Attr("ints")}, infer=_tile_infer)
def tile(x, *, repeats):
    """x repeated `repeats[i]` times along each axis i"""
    return np.tile(x, tuple(repeats))


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_infer(ctx):
    x = ctx.type(0)
    pads, mode = ctx.attrs["pads"], ctx.attrs["mode"]
    if len(pads) != 2 * x.rank:
        raise ctx.error(f"pads {list(pads)} should have 2 * rank = {2 * x.rank} entries")
    if mode not in PAD_MODES:
        raise ctx.error(f"unknown pad mode {mode!r} (expected one of {', '.join(PAD_MODES)})")
    out = []
    for i, d in enumerate(x.shape):
        n = simplify_dim(d + pads[i] + pads[i + x.rank])
        if isinstance(n, int) and n < 0:
            raise ctx.error(f"pads {list(pads)} remove more than dim {i} of {x}")
        out.append(n)
    return [x.with_shape(out)]


@register(
    "pad",
    family=INJECTIVE,
    inputs=1,
    attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"), "value": Attr("float", 0.0)},
    infer=_pad_infer,
)
def pad(x, *, pads, mode, value):
    """x padded by pads = (begin_0, ..., begin_n, end_0, ..., end_n); negative pads crop"""
    r = x.ndim
    # Negative pads crop first, then the rest is padded (ONNX/onnxruntime order).
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    x = x[crop]
    width = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


# ---------------------------------------------------------------------------
# shape / size and generators


def _shape_infer(ctx):
    x = ctx.type(0)
    n = len(range(x.rank)[ctx.attrs["start"] : ctx.attrs["end"]])
    return [TensorType((n,), DType.i64)]


@register(
    "shape",
    family=SHAPE,
    inputs=1,
    attrs={"start": Attr("int", 0), "end": Attr("int", 2**62)},
    infer=_shape_infer,
)
def shape(x, *, start, end):
    """the dims of x (from `start` to `end`, Python slice rules) as an i64 vector"""
    return np.asarray(x.shape[start:end], dtype=np.int64).reshape(-1)


@register("size", family=SHAPE, inputs=1, infer=lambda ctx: [TensorType((), DType.i64)])
def size(x):
    """the number of elements of x, an i64 scalar"""
    return np.asarray(x.size, dtype=np.int64)


def _constant_of_shape_infer(ctx):
    shape = ctx.attrs["shape"]
    if any(d < 0 for d in shape):
        raise ctx.error(f"shape {list(shape)} has a negative dim")
    return [TensorType(tuple(shape), ctx.attrs["dtype"])]


@register(
    "constant_of_shape",
    family=INJECTIVE,
    inputs=0,
    attrs={"shape": Attr("ints"), "value": Attr("float", 0.0), "dtype": Attr("dtype", DType.f32)},
    infer=_constant_of_shape_infer,
)
def constant_of_shape(*, shape, value, dtype):
    """a tensor of `shape` filled with `value`"""
    return np.full(tuple(shape), np.asarray(value).astype(dtype.np), dtype=dtype.np)


def range_length(start, limit, delta) -> int:
    """ONNX Range: max(ceil((limit - start) / delta), 0), exact for integers."""
    if delta == 0:
        raise ValueError("range delta cannot be 0")
    if all(isinstance(v, int) for v in (start, limit, delta)):
        return max(-((start - limit) // delta), 0)
    n = (limit - start) / delta
    if not math.isfinite(n):
        raise ValueError(f"range from {start} to {limit} by {delta} has no finite length")
    return max(math.ceil(n), 0)


def _range_infer(ctx):
    a = ctx.attrs
    dtype = a["dtype"]
    if dtype == DType.bool:
        raise ctx.error("range cannot produce bool")
    if a["delta"] == 0:
        raise ctx.error("delta cannot be 0")
    try:
        n = range_length(a["start"], a["limit"], a["delta"])
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return [TensorType((n,), dtype)]


@register(
    "range",
    family=INJECTIVE,
    inputs=0,
    attrs={"start": Attr("float"), "limit": Attr("float"), "delta": Attr("float"), "dtype": Attr("dtype")},
    infer=_range_infer,
)
def range_(*, start, limit, delta, dtype):
    """start, start + delta, ... up to `limit` (exclusive)"""
    n = range_length(start, limit, delta)
    if dtype.is_int:
        return (np.arange(n, dtype=np.int64) * int(delta) + int(start)).astype(dtype.np)
    return (start + np.arange(n, dtype=np.float64) * delta).astype(dtype.np)


def _eye_like_infer(ctx):
    x = ctx.type(0)
    if x.rank != 2:
        raise ctx.error(f"eye_like takes a matrix, got {x}")
    return [TensorType(x.shape, ctx.attrs["dtype"])]


@register(
    "eye_like",
    family=INJECTIVE,
    inputs=1,
    attrs={"k": Attr("int", 0), "dtype": Attr("dtype")},
    infer=_eye_like_infer,
)
def eye_like(x, *, k, dtype):
    """a matrix shaped like x with ones on diagonal k"""
    return np.eye(x.shape[0], x.shape[1], k, dtype=dtype.np)


def _one_hot_infer(ctx):
    idx, values = ctx.type(0), ctx.type(1)
    depth, axis = ctx.attrs["depth"], ctx.attrs["axis"]
    if depth < 0:
        raise ctx.error(f"depth {depth} is negative")
    _check_axis(ctx, axis, idx.rank + 1)
    if not values.is_static or values.numel != 2:
        raise ctx.error(f"values must hold 2 elements (off, on), got {values}")
    if idx.dtype == DType.bool:
        raise ctx.error("indices cannot be bool")
    return [TensorType(idx.shape[:axis] + (depth,) + idx.shape[axis:], values.dtype)]


@register(
    "one_hot",
    family=INJECTIVE,
    inputs=2,
    attrs={"depth": Attr("int"), "axis": Attr("int")},
    infer=_one_hot_infer,
)
def one_hot(indices, values, *, depth, axis):
    """values[1] where the position along `axis` equals the index, values[0] elsewhere"""
    idx = np.asarray(indices)
    if idx.dtype.kind == "f":
        idx = np.trunc(idx)  # onnxruntime casts float indices to integers
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + depth, idx)
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape((-1,) + (1,) * (idx.ndim - axis))
    off, on = np.asarray(values).reshape(2)
    return np.where(hot, on, off).astype(values.dtype)


# ---------------------------------------------------------------------------
# trilu, depth_to_space, space_to_depth, reverse_sequence


def _trilu_infer(ctx):
    x = ctx.type(0)
    if x.rank < 2:
        raise ctx.error(f"trilu needs rank >= 2, got {x}")
    return [x]


@register(
    "trilu", family=INJECTIVE, inputs=1, attrs={"upper": Attr("bool", True), "k": Attr("int", 0)}, infer=_trilu_infer
)
def trilu(x, *, upper, k):
    """the upper (or lower) triangle of the last two axes, from diagonal k; zeros elsewhere"""
    return np.triu(x, k) if upper else np.tril(x, k)


def _check_mode(ctx) -> str:
    mode = ctx.attrs["mode"]
    if mode not in ("DCR", "CRD"):
        raise ctx.error(f"mode must be DCR or CRD, got {mode!r}")
    return mode


def _depth_to_space_infer(ctx):
    x = ctx.type(0)
    b = ctx.attrs["blocksize"]
    _check_mode(ctx)
    if x.rank != 4 or b <= 0:
        raise ctx.error(f"depth_to_space takes an NCHW tensor and a positive blocksize, got {x}, {b}")
    n, c, h, w = x.shape
    c_out = _exact_div(c, b * b)
    if c_out is None:
        if isinstance(c, int):
            raise ctx.error(f"channels {c} are not a multiple of blocksize^2 = {b * b}")
        c_out = floordiv(c, b * b)
    return [x.with_shape((n, c_out, simplify_dim(h * b), simplify_dim(w * b)))]


@register(
    "depth_to_space",
    family=INJECTIVE,
    inputs=1,
    attrs={"blocksize": Attr("int"), "mode": Attr("str", "DCR")},
    infer=_depth_to_space_infer,
)
def depth_to_space(x, *, blocksize, mode):
    """moves channel blocks into blocksize x blocksize spatial tiles (DCR or CRD order)"""
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth_infer(ctx):
    x = ctx.type(0)
    b = ctx.attrs["blocksize"]
    _check_mode(ctx)
    if x.rank != 4 or b <= 0:
        raise ctx.error(f"space_to_depth takes an NCHW tensor and a positive blocksize, got {x}, {b}")
    n, c, h, w = x.shape
    out = []
    for d in (h, w):
        q = _exact_div(d, b)
        if q is None:
            if isinstance(d, int):
                raise ctx.error(f"spatial dims of {x} are not multiples of blocksize {b}")
            q = floordiv(d, b)
        out.append(q)
    return [x.with_shape((n, simplify_dim(c * b * b), out[0], out[1]))]


@register(
    "space_to_depth",
    family=INJECTIVE,
    inputs=1,
    attrs={"blocksize": Attr("int"), "mode": Attr("str", "DCR")},
    infer=_space_to_depth_infer,
)
def space_to_depth(x, *, blocksize, mode):
    """moves blocksize x blocksize spatial tiles into channels (the inverse of depth_to_space)"""
    n, c, h, w = x.shape
    b = blocksize
    t = x.reshape(n, c, h // b, b, w // b, b)
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    return t.transpose(perm).reshape(n, c * b * b, h // b, w // b)


def _reverse_sequence_infer(ctx):
    x, lens = ctx.type(0), ctx.type(1)
    b, t = ctx.attrs["batch_axis"], ctx.attrs["time_axis"]
    if x.rank < 2 or {b, t} not in ({0, 1},):
        raise ctx.error(f"batch_axis/time_axis must be 0 and 1 (in some order) of a rank >= 2 tensor, got {b}, {t}")
    _check_index_dtype(ctx, 1, "sequence_lens")
    if lens.rank != 1 or dim_known_ne(lens.shape[0], x.shape[b]):
        raise ctx.error(f"sequence_lens {lens} must be a vector of the batch size {x.shape[b]}")
    return [x]


@register(
    "reverse_sequence",
    family=INJECTIVE,
    inputs=2,
    attrs={"batch_axis": Attr("int", 1), "time_axis": Attr("int", 0)},
    infer=_reverse_sequence_infer,
)
def reverse_sequence(x, sequence_lens, *, batch_axis, time_axis):
    """each batch entry's first sequence_lens[i] time steps reversed, the rest kept"""
    steps = x.shape[time_axis]
    t = np.arange(steps)[:, None]
    lens = np.asarray(sequence_lens, dtype=np.int64)[None, :]
    src = np.where(t < lens, lens - 1 - t, t)  # [time, batch]
    if time_axis > batch_axis:
        src = src.T
    src = src.reshape(src.shape + (1,) * (x.ndim - 2))
    return np.take_along_axis(x, np.broadcast_to(src, x.shape), axis=time_axis)


# ---------------------------------------------------------------------------
# data-dependent ops: nonzero, compress, topk


def _nonzero_infer(ctx):
    x = ctx.type(0)
    const = ctx.const(0)
    n = int(np.count_nonzero(const)) if const is not None else ctx.fresh_dim("nnz")
    return [TensorType((x.rank, n), DType.i64)]


@register("nonzero", family=OPAQUE, inputs=1, infer=_nonzero_infer)
def nonzero(x):
    """the indices of x's nonzero elements, one column per element (i64[rank, count])"""
    return np.asarray(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _compress_infer(ctx):
    x, cond = ctx.type(0), ctx.type(1)
    axis = _check_axis(ctx, ctx.attrs["axis"], x.rank)
    if cond.rank != 1 or cond.dtype != DType.bool:
        raise ctx.error(f"condition must be a bool vector, got {cond}")
    const, d = ctx.const(1), x.shape[axis]
    if const is not None and isinstance(d, int):
        n: Dim = int(np.count_nonzero(const[:d]))
    else:
        n = ctx.fresh_dim("sel")
    return [x.with_shape(x.shape[:axis] + (n,) + x.shape[axis + 1 :])]


@register("compress", family=OPAQUE, inputs=2, attrs={"axis": Attr("int")}, infer=_compress_infer)
def compress(x, condition, *, axis):
    """the slices of x along `axis` where `condition` is true (a shorter condition drops the rest)"""
    cond = np.asarray(condition, dtype=bool)[: x.shape[axis]]
    return np.compress(cond, x, axis=axis)


def _topk_infer(ctx):
    x = ctx.type(0)
    k, axis = ctx.attrs["k"], ctx.attrs["axis"]
    _check_axis(ctx, axis, x.rank)
    if k < 0:
        raise ctx.error(f"k {k} is negative")
    d = x.shape[axis]
    if isinstance(d, int) and k > d:
        raise ctx.error(f"k {k} is larger than dim {axis} of {x}")
    out = x.shape[:axis] + (k,) + x.shape[axis + 1 :]
    return [x.with_shape(out), TensorType(out, DType.i64)]


@register(
    "topk",
    family=OPAQUE,
    inputs=1,
    attrs={"k": Attr("int"), "axis": Attr("int"), "largest": Attr("bool", True), "sorted": Attr("bool", True)},
    outputs=2,
    infer=_topk_infer,
)
def topk(x, *, k, axis, largest, sorted):
    """the k largest (or smallest) elements along `axis` and their indices; ties go to the lower index"""
    if largest:
        # A stable ascending sort of the reversed axis, read backwards, is descending with
        # ties in ascending index order; it works for unsigned and bool too (no negation).
        n = x.shape[axis]
        order = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        idx = (n - 1) - np.flip(order, axis)
    else:
        idx = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


# ---------------------------------------------------------------------------
# resize

RESIZE_MODES = ("nearest", "linear", "cubic")
COORD_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "tf_crop_and_resize",
)
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_out_dim(d: Dim, scale: float) -> Dim:
    if isinstance(d, int):
        return int(d * scale)  # truncation, as onnxruntime and the ONNX reference do
    return floordiv(sympy.Rational(scale) * d, 1)


def _resize_infer(ctx):
    x = ctx.type(0)
    a = ctx.attrs
    r = x.rank
    for key, allowed in (
        ("mode", RESIZE_MODES),
        ("coordinate_transformation_mode", COORD_MODES),
        ("nearest_mode", NEAREST_MODES),
    ):
        if a[key] not in allowed:
            raise ctx.error(f"unknown {key} {a[key]!r} (expected one of {', '.join(allowed)})")
    scales, sizes, roi = a["scales"], a["sizes"], a["roi"]
    if scales and (len(scales) != r or any(s <= 0 for s in scales)):
        raise ctx.error(f"scales {list(scales)} should be {r} positive numbers")
    if sizes and (len(sizes) != r or any(s < 0 for s in sizes)):
        raise ctx.error(f"sizes {list(sizes)} should be {r} non-negative sizes")
    if not scales and not sizes:
        raise ctx.error("one of scales and sizes is required")
    if a["coordinate_transformation_mode"] == "tf_crop_and_resize" and len(roi) != 2 * r:
        raise ctx.error(f"tf_crop_and_resize needs a roi of 2 * rank = {2 * r} numbers, got {list(roi)}")
    if a["mode"] != "nearest" and not x.dtype.is_float:
        raise ctx.error(f"{a['mode']} resize needs a float tensor, got {x}")
    if a["antialias"] and a["mode"] == "nearest":
        raise ctx.error("antialias applies to linear and cubic modes only")
    out = tuple(sizes) if sizes else tuple(_resize_out_dim(d, s) for d, s in zip(x.shape, scales))
    return [x.with_shape(out)]


def _source_coords(mode: str, out_len: int, in_len: int, scale: float, length: float, roi) -> np.ndarray:
    """x_original for every output position along one axis.

    Computed in float32 in onnxruntime's order of operations, so that nearest rounding ties
    break the same way (float64 moves e.g. 3.5 / 0.7f off the .5 tie). `length` is the spec's
    length_resized: scale * in_len when scales are given (fractional, as in the ONNX
    reference), else the output size.
    """
    f32 = np.float32
    y = np.arange(out_len, dtype=f32)
    s = f32(scale)
    half = f32(0.5)
    if mode == "asymmetric":
        xo = y / s
    elif mode == "half_pixel":
        xo = (y + half) / s - half
    elif mode == "pytorch_half_pixel":
        xo = (y + half) / s - half if length > 1 else np.zeros(out_len, f32)
    elif mode == "tf_half_pixel_for_nn":
        xo = (y + half) / s
    elif mode == "align_corners":
        xo = y * f32(in_len - 1) / f32(length - 1) if length != 1 else np.zeros(out_len, f32)
    elif mode == "half_pixel_symmetric":
        adjustment = f32(out_len) / (s * f32(in_len))
        offset = f32(in_len) / 2 * (1 - adjustment)
        xo = (offset + (y.astype(np.float64) + 0.5) / s - 0.5).astype(f32)
    else:  # tf_crop_and_resize, in double like onnxruntime
        start, end = roi
        yd = y.astype(np.float64)
        if length != 1:
            xo = start * (in_len - 1) + yd * (end - start) * (in_len - 1) / (length - 1)
        else:
            xo = np.full(out_len, 0.5 * (start + end) * (in_len - 1))
        xo = xo.astype(f32)
    return xo.astype(np.float64)


def _nearest_index(xo: np.ndarray, nearest_mode: str, in_len: int) -> np.ndarray:
    fl = np.floor(xo)
    frac = xo - fl
    if nearest_mode == "round_prefer_floor":
        idx = np.where(frac <= 0.5, fl, fl + 1)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.where(frac < 0.5, fl, fl + 1)
    elif nearest_mode == "floor":
        idx = fl
    else:
        idx = np.ceil(xo)
    return np.clip(idx, 0, max(in_len - 1, 0)).astype(np.int64)


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient a."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _interp_weights(xo: np.ndarray, in_len: int, scale: float, attrs) -> np.ndarray:
    """Dense [out, in] interpolation matrix for linear/cubic along one axis.

    Taps sit at floor(x) + offsets; out-of-range taps are clamped to the edge (their
    weight merges into the edge pixel) unless exclude_outside drops and renormalises them.
    With antialias, downsampling stretches the kernel by 1/scale (and renormalises).
    """
    cubic = attrs["mode"] == "cubic"
    support = 2.0 if cubic else 1.0
    s = min(scale, 1.0) if attrs["antialias"] else 1.0
    # Taps floor(x) + start .. floor(x) - start + (1 if x is fractional), symmetric around x.
    start = math.floor(-support / s) + 1
    base = np.floor(xo)
    frac = xo - base
    # An integer x takes its taps one to the left with ratio 1, as the ONNX reference does;
    # the kernel value is then identical, only the (zero-weight) far tap differs.
    on_grid = frac == 0
    base = np.where(on_grid, base - 1, base)
    frac = np.where(on_grid, 1.0, frac)
    offsets = np.arange(start, 2 - start)  # len = 2 - 2 * start taps
    dist = (offsets[None, :] - frac[:, None]) * s
    if cubic:
        w = _cubic_kernel(dist, attrs["cubic_coeff_a"])
    else:
        w = np.clip(1 - np.abs(dist), 0, None)
    taps = base[:, None].astype(np.int64) + offsets[None, :]
    if attrs["exclude_outside"]:
        w = np.where((taps < 0) | (taps >= in_len), 0.0, w)
    total = w.sum(axis=1, keepdims=True)
    if attrs["antialias"] or attrs["exclude_outside"]:
        w = w / np.where(total == 0, 1.0, total)
    mat = np.zeros((len(xo), in_len))
    rows = np.broadcast_to(np.arange(len(xo))[:, None], taps.shape)
    np.add.at(mat, (rows, np.clip(taps, 0, in_len - 1)), w)
    return mat


@register(
    "resize",
    family=OPAQUE,
    inputs=1,
    attrs={
        "mode": Attr("str", "nearest"),
        "coordinate_transformation_mode": Attr("str", "half_pixel"),
        "nearest_mode": Attr("str", "round_prefer_floor"),
        "cubic_coeff_a": Attr("float", -0.75),
        "exclude_outside": Attr("bool", False),
        "extrapolation_value": Attr("float", 0.0),
        "antialias": Attr("bool", False),
        # Full rank. scales (when given) drive the coordinate transform; sizes (when given)
        # are the output shape, else floor(dim * scale). With sizes only, scale = out / in.
        "scales": Attr("floats", ()),
        "sizes": Attr("ints", ()),
        "roi": Attr("floats", ()),  # (starts..., ends...) for tf_crop_and_resize
    },
    infer=_resize_infer,
)
def resize(x, **attrs):
    """x resampled to a new size (ONNX Resize: nearest / N-linear / N-cubic, separable per axis)"""
    r = x.ndim
    scales, sizes, roi = attrs["scales"], attrs["sizes"], attrs["roi"]
    coord = attrs["coordinate_transformation_mode"]
    out_shape = tuple(sizes) if sizes else tuple(int(d * s) for d, s in zip(x.shape, scales))
    nearest = attrs["mode"] == "nearest"
    result = x if nearest else x.astype(np.float64)
    outside = np.zeros(out_shape, dtype=bool) if coord == "tf_crop_and_resize" else None
    for axis in range(r):
        in_len, out_len = x.shape[axis], out_shape[axis]
        if scales:
            scale = scales[axis]
            length = scale * in_len
        else:
            scale = float(np.float32(out_len) / np.float32(in_len)) if in_len else 1.0
            length = float(out_len)
        axis_roi = (roi[axis], roi[axis + r]) if coord == "tf_crop_and_resize" else None
        identity = in_len == out_len and scale == 1.0 and (axis_roi is None or axis_roi == (0.0, 1.0))
        if identity or out_len == 0 or in_len == 0:
            if not identity:
                shape = list(result.shape)
                shape[axis] = out_len
                result = np.zeros(shape, result.dtype)
            continue
        xo = _source_coords(coord, out_len, in_len, scale, length, axis_roi)
        if outside is not None:
            mask = (xo < 0) | (xo > in_len - 1)
            outside |= mask.reshape((-1,) + (1,) * (r - axis - 1))
        if nearest:
            result = np.take(result, _nearest_index(xo, attrs["nearest_mode"], in_len), axis=axis)
        else:
            w = _interp_weights(xo, in_len, scale, attrs)
            result = np.moveaxis(np.tensordot(w, result, axes=([1], [axis])), 0, axis)
    if outside is not None and outside.any():
        result = np.where(outside, np.asarray(attrs["extrapolation_value"]).astype(result.dtype), result)
    if result.dtype != x.dtype:
        result = result.astype(x.dtype)
    return np.asarray(result).reshape(out_shape)
