"""Converters for ONNX shape and data-movement ops (see einfuse/ir/ops/shape.py).

Operands that set a static parameter (a target shape, axes, pads, slice bounds, split
sizes, repeats, resize scales, k...) are read with `ctx.const_input` and become
attributes in canonical form: defaults filled, negative axes made non-negative, opset
differences (attributes before opset 10/11/13, operands after) folded away.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from einfuse.errors import UnsafeModelError
from einfuse.frontends.onnx import DynamicOperandError, onnx_dtype
from einfuse.frontends.onnx_io import tensor_to_numpy
from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops import infer_types
from einfuse.ir.ops.shape import COORD_MODES, NEAREST_MODES, PAD_MODES, RESIZE_MODES, resolve_reshape, slice_bounds
from einfuse.ir.types import DType, dims_equal, format_dim

# --------------------------------------------------------------------------- helpers


def _op(ctx, op: str, inputs, **attrs):
    """ctx.op, refusing first (with exact integer arithmetic) a constant fold whose result
    would exceed the memory limit: generators (range, constant_of_shape, expand, tile,
    pad...) can ask for arbitrarily large outputs from a few bytes of model."""
    present = [v for v in inputs if v is not None]
    if all(v.is_const for v in present):
        try:
            types = [v.type if v is not None else None for v in inputs]
            consts = [ctx.graph.const_value(v) for v in inputs]
            out = infer_types(op, types, attrs, consts)
        except Exception:  # noqa: BLE001 - ctx.op reports the error with the node named
            out = []
        total = 0
        for t in out:
            if t.is_static:
                total += math.prod(t.shape) * t.dtype.itemsize
        if total > ctx.max_const_bytes:
            label = ctx.node_label(ctx.node) if ctx.node is not None else op
            raise UnsafeModelError(
                f"{label}: folding it would create a constant of {total} bytes, over the "
                f"limit of {ctx.max_const_bytes} bytes",
                hint="raise the limit with max_const_bytes= (einfuse --max-const-bytes) if the model is trusted",
            )
    return ctx.op(op, inputs, **attrs)


def _ints(arr) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(arr).reshape(-1))


def _scalar(ctx, node, arr: np.ndarray, what: str):
    """The single element of a scalar (or 1-element) operand as a Python number."""
    arr = np.asarray(arr)
    if arr.size != 1:
        raise ctx.error(node, f"{what} must hold one element, got shape {list(arr.shape)}")
    v = arr.reshape(-1)[0]
    if arr.dtype == np.bool_:
        return int(v)
    if arr.dtype.kind in "iu":
        return int(v)
    return float(v)


def _axis(ctx, node, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.error(node, f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _axes(ctx, node, axes, rank: int, what: str = "axes") -> tuple[int, ...]:
    out = tuple(_axis(ctx, node, int(a), rank, what) for a in axes)
    if len(set(out)) != len(out):
        raise ctx.error(node, f"{what} {list(axes)} repeat an axis")
    return out


def _attr_or_input(ctx, node, name: str, index: int, since: int):
    """A parameter that is attribute `name` before opset `since` and operand `index` from it."""
    if ctx.opset < since:
        v = ctx.attr(node, name)
        return None if v is None else np.asarray(v)
    return ctx.const_input(node, index)


def _fill_value(value, dtype: DType):
    """A fill value as an attribute: exact ints for integer/bool dtypes, floats otherwise."""
    if dtype.is_int or dtype == DType.bool:
        return int(value)
    return float(value)


def _outputs(res) -> list:
    return list(res) if isinstance(res, tuple) else [res]


def _static_dim(ctx, node, x, axis: int, why: str) -> int:
    d = x.shape[axis]
    if not isinstance(d, int):
        raise ctx.unsupported(node, f"{why} needs a static dim {axis}, but {x.name!r} has type {x.type}")
    return d


# --------------------------------------------------------------------------- symbolic shape values
# Exporters compute reshape targets from the input's shape at run time (Shape -> Gather ->
# Unsqueeze -> Concat -> Reshape). On static shapes this folds to constants. On symbolic
# shapes we remember the symbolic elements of these small integer tensors, so that Reshape can
# still take its target as an attribute: a dim equal to the input's becomes 0 (copy), one
# leftover dim -1. The nodes that computed the target stay in the graph, dead once consumed.

_MAX_TRACKED = 64  # elements; shape vectors are short


def _shape_values(ctx) -> dict:
    """{Value: tuple of dims} for non-constant integer tensors whose elements are known."""
    table = getattr(ctx, "shape_values", None)
    if table is None:
        table = ctx.shape_values = {}
    return table


def _track(ctx, value, dims) -> None:
    if dims is None or value is None or value.is_const or not value.dtype.is_int:
        return
    dims = tuple(dims)
    if len(dims) > _MAX_TRACKED:
        return
    if value.type.is_static and value.type.numel == len(dims):
        _shape_values(ctx)[value] = dims


def _elements(ctx, value) -> tuple | None:
    """The elements (ints or symbolic dims, flattened) of an integer tensor, when known."""
    if value is None:
        return None
    arr = ctx.graph.const_value(value)
    if arr is not None:
        if arr.dtype.kind not in "iu" or arr.size > _MAX_TRACKED:
            return None
        return tuple(int(v) for v in arr.reshape(-1))
    return _shape_values(ctx).get(value)


def _tracked_only(ctx, value) -> tuple | None:
    """Known elements of a value that is not a constant (constants fold without help)."""
    return None if value is None or value.is_const else _shape_values(ctx).get(value)


# --------------------------------------------------------------------------- Constant


@converter("Constant")
def constant(ctx, node):
    attrs = {a.name: a for a in node.attribute}
    where = f"attribute of {ctx.node_label(node)}"
    if "value" in attrs:
        t = attrs["value"].t
        if t.data_type == onnx.TensorProto.STRING:
            raise ctx.unsupported(node, "string constants are not supported")
        onnx_dtype(t.data_type, where)
        # The graph's limit, not the loader's: a Constant is a folded value like any other.
        arr = tensor_to_numpy(t, where=where, max_bytes=ctx.max_const_bytes)
    elif "value_float" in attrs:
        arr = np.asarray(attrs["value_float"].f, dtype=np.float32)
    elif "value_floats" in attrs:
        arr = np.asarray(list(attrs["value_floats"].floats), dtype=np.float32)
    elif "value_int" in attrs:
        arr = np.asarray(attrs["value_int"].i, dtype=np.int64)
    elif "value_ints" in attrs:
        arr = np.asarray(list(attrs["value_ints"].ints), dtype=np.int64)
    elif "value_string" in attrs or "value_strings" in attrs:
        raise ctx.unsupported(node, "string constants are not supported")
    elif "sparse_value" in attrs:
        raise ctx.unsupported(node, "sparse constants are not supported")
    else:
        raise ctx.error(node, "Constant has no value attribute")
    return [ctx.const(arr, node.output[0])]


# --------------------------------------------------------------------------- reshapes


def normalize_reshape(ctx, node, x, target: tuple, allowzero: bool) -> tuple[tuple, bool]:
    """Resolves a Reshape target as far as the input type allows: every dim that is known
    becomes explicit; only 0 (copy) of a symbolic dim and an unresolvable -1 remain."""
    dims = resolve_reshape(x.shape, target, allowzero, lambda msg: ctx.error(node, msg))
    if all(isinstance(d, int) for d in dims):
        return tuple(dims), 0 in dims
    # A resolved 0 is kept as written: re-encoding it as an explicit 0 would change its
    # meaning when allowzero=0.
    out = tuple(d if isinstance(d, int) and d != 0 else t for d, t in zip(dims, target))
    return out, allowzero


def reshape_value(ctx, node, x, target: tuple, allowzero: bool = False):
    shape, allowzero = normalize_reshape(ctx, node, x, tuple(target), allowzero)
    return _op(ctx, "reshape", [x], shape=shape, allowzero=allowzero)


@converter("Reshape")
def reshape(ctx, node):
    x = ctx.input(node, 0)
    allowzero = bool(ctx.attr(node, "allowzero", 0)) if ctx.opset >= 14 else False
    try:
        target = _ints(ctx.const_input(node, 1))
    except DynamicOperandError:
        dims = _tracked_only(ctx, ctx.input(node, 1))
        if dims is None:
            raise
        target = _symbolic_reshape_target(ctx, node, x, dims, allowzero)
    y = reshape_value(ctx, node, x, target, allowzero)
    _track(ctx, y, _tracked_only(ctx, x))
    return [y]


def _symbolic_reshape_target(ctx, node, x, dims: tuple, allowzero: bool) -> tuple:
    """A Reshape target (ints, 0 = copy, -1 = inferred) giving the symbolic `dims`."""
    target: list = []
    for i, d in enumerate(dims):
        if isinstance(d, int):
            target.append(d)
        elif not allowzero and i < x.rank and dims_equal(x.shape[i], d):
            target.append(0)
        else:
            target.append(-1)
    why = f"its target shape [{', '.join(format_dim(d) for d in dims)}] is computed at run time"
    if target.count(-1) > 1:
        raise ctx.unsupported(node, f"{why} and is not expressible with one -1")
    out = resolve_reshape(x.shape, tuple(target), allowzero, lambda msg: ctx.error(node, msg))
    if any(not dims_equal(a, b) for a, b in zip(out, dims) if not isinstance(b, int)):
        raise ctx.unsupported(node, f"{why} and einfuse could not match it to the input's dims")
    return tuple(target)


@converter("Flatten")
def flatten(ctx, node):
    x = ctx.input(node, 0)
    axis = ctx.attr(node, "axis", 1)
    if not -x.rank <= axis <= x.rank:
        raise ctx.error(node, f"axis {axis} is out of range for rank {x.rank}")
    return [_op(ctx, "flatten", [x], axis=axis + x.rank if axis < 0 else axis)]


@converter("Transpose")
def transpose(ctx, node):
    x = ctx.input(node, 0)
    perm = ctx.attr(node, "perm")
    perm = tuple(reversed(range(x.rank))) if perm is None else _axes(ctx, node, perm, x.rank, "perm")
    if len(perm) != x.rank:
        raise ctx.error(node, f"perm {list(perm)} does not cover the {x.rank} axes")
    return [_op(ctx, "transpose", [x], perm=perm)]


@converter("Squeeze")
def squeeze(ctx, node):
    x = ctx.input(node, 0)
    axes = _attr_or_input(ctx, node, "axes", 1, since=13)
    if axes is None:
        if not x.type.is_static:
            raise ctx.unsupported(node, f"Squeeze without axes needs a static input shape, got {x.type}")
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    y = _op(ctx, "squeeze", [x], axes=tuple(sorted(_axes(ctx, node, _ints(axes), x.rank))))
    _track(ctx, y, _tracked_only(ctx, x))
    return [y]


@converter("Unsqueeze")
def unsqueeze(ctx, node):
    x = ctx.input(node, 0)
    axes = _attr_or_input(ctx, node, "axes", 1, since=13)
    if axes is None:
        raise ctx.error(node, "Unsqueeze needs axes")
    axes = _ints(axes)
    y = _op(ctx, "unsqueeze", [x], axes=tuple(sorted(_axes(ctx, node, axes, x.rank + len(axes)))))
    _track(ctx, y, _tracked_only(ctx, x))
    return [y]


# --------------------------------------------------------------------------- concat / split / slice


@converter("Concat")
def concat(ctx, node):
    xs = [v for v in ctx.inputs(node) if v is not None]
    if not xs:
        raise ctx.error(node, "Concat needs at least one operand")
    axis = ctx.attr(node, "axis")
    if axis is None:
        raise ctx.error(node, "Concat needs an axis")
    y = _op(ctx, "concat", xs, axis=_axis(ctx, node, axis, xs[0].rank))
    if xs[0].rank == 1 and any(_tracked_only(ctx, v) is not None for v in xs):
        parts = [_elements(ctx, v) for v in xs]
        if all(p is not None for p in parts):
            _track(ctx, y, [d for p in parts for d in p])
    return [y]


@converter("Split")
def split(ctx, node):
    x = ctx.input(node, 0)
    axis = _axis(ctx, node, ctx.attr(node, "axis", 0), x.rank)
    sizes = _attr_or_input(ctx, node, "split", 1, since=13)
    n_out = len(node.output)
    if sizes is not None and np.asarray(sizes).size > 0:
        sizes = _ints(sizes)
    else:
        num = ctx.attr(node, "num_outputs") if ctx.opset >= 18 else None
        n = int(num) if num is not None else n_out
        if n <= 0:
            raise ctx.error(node, f"cannot split into {n} outputs")
        d = _static_dim(ctx, node, x, axis, "Split without sizes")
        if d % n == 0:
            sizes = (d // n,) * n
        elif num is not None:
            # Opset 18: chunks of ceil(d / n), the last one smaller.
            chunk = -(-d // n)
            sizes = (chunk,) * (n - 1) + (d - chunk * (n - 1),)
            if sizes[-1] < 0:
                raise ctx.error(node, f"cannot split dim {d} into {n} chunks of {chunk}")
        else:
            raise ctx.error(node, f"dim {axis} of size {d} does not split evenly into {n} outputs")
    if len(sizes) != n_out:
        raise ctx.error(node, f"{len(sizes)} split sizes for {n_out} outputs")
    return _outputs(_op(ctx, "split", [x], axis=axis, split=sizes))


@converter("Slice")
def slice_(ctx, node):
    x = ctx.input(node, 0)
    if ctx.opset < 10:
        starts, ends = ctx.attr(node, "starts"), ctx.attr(node, "ends")
        axes, steps = ctx.attr(node, "axes"), None
        if starts is None or ends is None:
            raise ctx.error(node, "Slice needs starts and ends")
    else:
        starts, ends = ctx.const_input(node, 1), ctx.const_input(node, 2)
        axes, steps = ctx.const_input(node, 3), ctx.const_input(node, 4)
    starts, ends = _ints(starts), _ints(ends)
    n = len(starts)
    axes = tuple(range(n)) if axes is None else _axes(ctx, node, _ints(axes), x.rank)
    steps = (1,) * n if steps is None else _ints(steps)
    if not len(ends) == len(axes) == len(steps) == n:
        raise ctx.error(node, "starts, ends, axes and steps must have the same length")
    if 0 in steps:
        raise ctx.error(node, "slice steps cannot be 0")
    out = ([], [], [], [])
    for s, e, a, st in zip(starts, ends, axes, steps):
        d = x.shape[a]
        if isinstance(d, int):
            # Canonical bounds for a static dim: clamped, and identity axes dropped.
            s, e = slice_bounds(d, s, e, st)
            if st == 1 and s == 0 and e == d:
                continue
            if e < 0:
                e = -d - 1  # 'before index 0' for a negative step, in ONNX's own encoding
        for lst, v in zip(out, (s, e, a, st)):
            lst.append(v)
    if not out[0]:
        return [x]
    starts, ends, axes, steps = (tuple(v) for v in out)
    y = _op(ctx, "slice", [x], starts=starts, ends=ends, axes=axes, steps=steps)
    elems = _tracked_only(ctx, x)
    if elems is not None and x.rank == 1:
        lo, hi = slice_bounds(len(elems), starts[0], ends[0], steps[0])
        _track(ctx, y, elems[lo : hi if hi >= 0 else None : steps[0]])
    return [y]


# --------------------------------------------------------------------------- gathers / scatters


@converter("Gather")
def gather(ctx, node):
    x, idx = ctx.input(node, 0), ctx.input(node, 1)
    axis = _axis(ctx, node, ctx.attr(node, "axis", 0), x.rank)
    y = _op(ctx, "gather", [x, idx], axis=axis)
    elems, picks = _tracked_only(ctx, x), ctx.graph.const_value(idx)
    if elems is not None and picks is not None and x.rank == 1:
        n = len(elems)
        if all(-n <= int(i) < n for i in picks.reshape(-1)):
            _track(ctx, y, [elems[int(i)] for i in picks.reshape(-1)])
    return [y]


@converter("GatherElements")
def gather_elements(ctx, node):
    x, idx = ctx.input(node, 0), ctx.input(node, 1)
    axis = _axis(ctx, node, ctx.attr(node, "axis", 0), x.rank)
    return [_op(ctx, "gather_elements", [x, idx], axis=axis)]


@converter("GatherND")
def gather_nd(ctx, node):
    x, idx = ctx.input(node, 0), ctx.input(node, 1)
    return [_op(ctx, "gather_nd", [x, idx], batch_dims=ctx.attr(node, "batch_dims", 0))]


def _reduction(ctx, node) -> str:
    r = ctx.attr(node, "reduction", "none") if ctx.opset >= 16 else "none"
    if r not in ("none", "add", "mul", "max", "min"):
        raise ctx.unsupported(node, f"reduction {r!r} is not supported")
    return r


@converter("ScatterElements", "Scatter")
def scatter_elements(ctx, node):
    x, idx, upd = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    axis = _axis(ctx, node, ctx.attr(node, "axis", 0), x.rank)
    reduction = _reduction(ctx, node) if node.op_type == "ScatterElements" else "none"
    return [_op(ctx, "scatter_elements", [x, idx, upd], axis=axis, reduction=reduction)]


@converter("ScatterND")
def scatter_nd(ctx, node):
    x, idx, upd = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    return [_op(ctx, "scatter_nd", [x, idx, upd], reduction=_reduction(ctx, node))]


# --------------------------------------------------------------------------- expand / tile / pad


@converter("Expand")
def expand(ctx, node):
    x = ctx.input(node, 0)
    return [_op(ctx, "expand", [x], shape=_ints(ctx.const_input(node, 1)))]


@converter("Tile")
def tile(ctx, node):
    x = ctx.input(node, 0)
    return [_op(ctx, "tile", [x], repeats=_ints(ctx.const_input(node, 1)))]


@converter("Pad")
def pad(ctx, node):
    x = ctx.input(node, 0)
    r = x.rank
    mode = ctx.attr(node, "mode", "constant")
    if mode not in PAD_MODES:
        raise ctx.unsupported(node, f"pad mode {mode!r} is not supported")
    if ctx.opset < 11:
        pads = ctx.attr(node, "pads")
        if pads is None:
            raise ctx.error(node, "Pad needs pads")
        value = ctx.attr(node, "value", 0.0)
        axes = None
    else:
        pads = _ints(ctx.const_input(node, 1))
        cv = ctx.const_input(node, 2)
        value = 0 if cv is None or cv.size == 0 else _scalar(ctx, node, cv, "constant_value")
        axes = ctx.const_input(node, 3) if ctx.opset >= 18 else None
    pads = _ints(pads)
    if axes is not None:
        axes = _axes(ctx, node, _ints(axes), r)
        if len(pads) != 2 * len(axes):
            raise ctx.error(node, f"pads {list(pads)} should have 2 entries per axis of {list(axes)}")
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            full[a], full[a + r] = pads[i], pads[i + len(axes)]
        pads = tuple(full)
    if len(pads) != 2 * r:
        raise ctx.error(node, f"pads {list(pads)} should have 2 * rank = {2 * r} entries")
    return [_op(ctx, "pad", [x], pads=pads, mode=mode, value=_fill_value(value, x.dtype))]


# --------------------------------------------------------------------------- shape, size, generators


@converter("Shape")
def shape(ctx, node):
    x = ctx.input(node, 0)
    r = x.rank
    start, end = (ctx.attr(node, "start", 0), ctx.attr(node, "end", r)) if ctx.opset >= 15 else (0, r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    y = _op(ctx, "shape", [x], start=start, end=max(start, end))
    _track(ctx, y, x.shape[start:end])
    return [y]


@converter("Size")
def size(ctx, node):
    x = ctx.input(node, 0)
    y = _op(ctx, "size", [x])
    _track(ctx, y, (x.type.numel,))
    return [y]


@converter("ConstantOfShape")
def constant_of_shape(ctx, node):
    shape = ctx.const_input(node, 0)
    value = ctx.attr(node, "value")
    if value is None:
        dtype, fill = DType.f32, 0.0
    else:
        if value.size != 1:
            raise ctx.error(node, f"value must hold one element, got shape {list(value.shape)}")
        dtype = DType.from_numpy(value.dtype)
        fill = _fill_value(value.reshape(-1)[0], dtype)
    return [_op(ctx, "constant_of_shape", [], shape=_ints(shape), value=fill, dtype=dtype)]


@converter("Range")
def range_(ctx, node):
    vals = [ctx.const_input(node, i) for i in range(3)]
    dtypes = {v.dtype for v in vals}
    if len(dtypes) != 1:
        raise ctx.error(node, f"start, limit and delta must share a dtype, got {sorted(map(str, dtypes))}")
    dtype = DType.from_numpy(vals[0].dtype)
    if dtype == DType.bool:
        raise ctx.error(node, "Range cannot produce bool")
    stash = ctx.attr(node, "stash_type", 1) if ctx.opset >= 27 else 1
    if stash != 1 and dtype in (DType.f16, DType.bf16):
        # stash_type=0 accumulates in the 16-bit type itself, which the reference does not model.
        raise ctx.unsupported(node, f"stash_type={stash} for {dtype} is not supported")
    start, limit, delta = (_scalar(ctx, node, v, n) for v, n in zip(vals, ("start", "limit", "delta")))
    if delta == 0:
        raise ctx.error(node, "delta cannot be 0")
    return [_op(ctx, "range", [], start=start, limit=limit, delta=delta, dtype=dtype)]


@converter("EyeLike")
def eye_like(ctx, node):
    x = ctx.input(node, 0)
    code = ctx.attr(node, "dtype")
    dtype = x.dtype if code is None else onnx_dtype(code, f"dtype of {ctx.node_label(node)}")
    return [_op(ctx, "eye_like", [x], k=ctx.attr(node, "k", 0), dtype=dtype)]


@converter("OneHot")
def one_hot(ctx, node):
    idx, values = ctx.input(node, 0), ctx.input(node, 2)
    depth = _scalar(ctx, node, ctx.const_input(node, 1), "depth")
    axis = _axis(ctx, node, ctx.attr(node, "axis", -1), idx.rank + 1)
    return [_op(ctx, "one_hot", [idx, values], depth=int(depth), axis=axis)]


@converter("Trilu")
def trilu(ctx, node):
    x = ctx.input(node, 0)
    k = ctx.const_input(node, 1)
    k = 0 if k is None else _scalar(ctx, node, k, "k")
    return [_op(ctx, "trilu", [x], upper=bool(ctx.attr(node, "upper", 1)), k=int(k))]


def _blocks(ctx, node, op: str):
    x = ctx.input(node, 0)
    blocksize = ctx.attr(node, "blocksize")
    if blocksize is None:
        raise ctx.error(node, "blocksize is required")
    mode = ctx.attr(node, "mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ctx.unsupported(node, f"mode {mode!r} is not supported")
    return [_op(ctx, op, [x], blocksize=blocksize, mode=mode)]


@converter("DepthToSpace")
def depth_to_space(ctx, node):
    return _blocks(ctx, node, "depth_to_space")


@converter("SpaceToDepth")
def space_to_depth(ctx, node):
    return _blocks(ctx, node, "space_to_depth")


@converter("ReverseSequence")
def reverse_sequence(ctx, node):
    x, lens = ctx.input(node, 0), ctx.input(node, 1)
    b = _axis(ctx, node, ctx.attr(node, "batch_axis", 1), x.rank, "batch_axis")
    t = _axis(ctx, node, ctx.attr(node, "time_axis", 0), x.rank, "time_axis")
    return [_op(ctx, "reverse_sequence", [x, lens], batch_axis=b, time_axis=t)]


# --------------------------------------------------------------------------- data-dependent ops


@converter("NonZero")
def nonzero(ctx, node):
    return [_op(ctx, "nonzero", [ctx.input(node, 0)])]


@converter("Compress")
def compress(ctx, node):
    x, cond = ctx.input(node, 0), ctx.input(node, 1)
    axis = ctx.attr(node, "axis")
    if axis is None:
        x = reshape_value(ctx, node, x, (-1,))
        axis = 0
    return [_op(ctx, "compress", [x, cond], axis=_axis(ctx, node, axis, x.rank))]


@converter("TopK")
def topk(ctx, node):
    x = ctx.input(node, 0)
    axis = _axis(ctx, node, ctx.attr(node, "axis", -1), x.rank)
    if ctx.opset < 10:
        k = ctx.attr(node, "k")
        if k is None:
            raise ctx.error(node, "TopK needs k")
    else:
        k = _scalar(ctx, node, ctx.const_input(node, 1), "k")
    largest = bool(ctx.attr(node, "largest", 1)) if ctx.opset >= 11 else True
    is_sorted = bool(ctx.attr(node, "sorted", 1)) if ctx.opset >= 11 else True
    return _outputs(_op(ctx, "topk", [x], k=int(k), axis=axis, largest=largest, sorted=is_sorted))


# --------------------------------------------------------------------------- Resize / Upsample


def _legacy_nearest_mode(ctx, node, scales) -> str:
    """Opset <= 10 nearest resize (onnxruntime's 'simple' rounding): floor when upsampling,
    ceil when downsampling, decided per axis; one mode must fit every resized axis."""
    down = any(s < 1 for s in scales)
    up = any(s > 1 for s in scales)
    if down and up:
        raise ctx.unsupported(node, "opset <= 10 nearest resize that both up- and downsamples is not supported")
    return "ceil" if down else "floor"


@converter("Upsample")
def upsample(ctx, node):
    x = ctx.input(node, 0)
    scales = ctx.attr(node, "scales") if ctx.opset < 9 else ctx.const_input(node, 1)
    if scales is None:
        raise ctx.error(node, "Upsample needs scales")
    return [_legacy_resize(ctx, node, x, tuple(float(s) for s in np.asarray(scales).reshape(-1)))]


def _legacy_resize(ctx, node, x, scales: tuple):
    mode = ctx.attr(node, "mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise ctx.unsupported(node, f"mode {mode!r} is not supported")
    if len(scales) != x.rank:
        raise ctx.error(node, f"scales {list(scales)} should have one entry per axis of {x.type}")
    nearest_mode = _legacy_nearest_mode(ctx, node, scales) if mode == "nearest" else "round_prefer_floor"
    if mode != "nearest" and not x.dtype.is_float:
        raise ctx.unsupported(node, f"linear resize of {x.dtype} is not supported")
    return _op(
        ctx,
        "resize",
        [x],
        mode=mode,
        coordinate_transformation_mode="asymmetric",
        nearest_mode=nearest_mode,
        scales=scales,
    )


def _optional_const(ctx, node, i: int):
    arr = ctx.const_input(node, i)
    return None if arr is None or arr.size == 0 else arr


@converter("Resize")
def resize(ctx, node):
    x = ctx.input(node, 0)
    r = x.rank
    if ctx.opset < 11:
        scales = ctx.const_input(node, 1)
        return [_legacy_resize(ctx, node, x, tuple(float(s) for s in scales.reshape(-1)))]

    mode = ctx.attr(node, "mode", "nearest")
    coord = ctx.attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = ctx.attr(node, "nearest_mode", "round_prefer_floor")
    for what, v, allowed in (
        ("mode", mode, RESIZE_MODES),
        ("coordinate_transformation_mode", coord, COORD_MODES),
        ("nearest_mode", nearest_mode, NEAREST_MODES),
    ):
        if v not in allowed:
            raise ctx.unsupported(node, f"{what} {v!r} is not supported")
    if mode != "nearest" and not x.dtype.is_float:
        raise ctx.unsupported(node, f"{mode} resize of {x.dtype} is not supported (only nearest for non-floats)")
    antialias = bool(ctx.attr(node, "antialias", 0)) if ctx.opset >= 18 else False
    if mode == "nearest":
        antialias = False  # the spec applies it to linear and cubic only
    axes = ctx.attr(node, "axes") if ctx.opset >= 18 else None
    axes = tuple(range(r)) if axes is None else _axes(ctx, node, axes, r)
    policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch") if ctx.opset >= 18 else "stretch"
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise ctx.unsupported(node, f"keep_aspect_ratio_policy {policy!r} is not supported")

    roi = _optional_const(ctx, node, 1) if coord == "tf_crop_and_resize" else None
    scales = _optional_const(ctx, node, 2)
    sizes = _optional_const(ctx, node, 3)
    if (scales is None) == (sizes is None):
        raise ctx.error(node, "exactly one of scales and sizes must be given")
    given = scales if scales is not None else sizes
    if given.size != len(axes):
        raise ctx.error(node, f"{given.size} scales/sizes for {len(axes)} axes")

    full_scales: tuple = ()
    full_sizes: tuple = ()
    if scales is not None:
        s = [1.0] * r
        for a, v in zip(axes, scales.reshape(-1)):
            s[a] = float(v)
        if any(v <= 0 for v in s):
            raise ctx.error(node, f"scales {[float(v) for v in scales.reshape(-1)]} must be positive")
        full_scales = tuple(s)
    else:
        wanted = dict(zip(axes, _ints(sizes)))
        out = []
        for i in range(r):
            if i in wanted:
                out.append(wanted[i])
            else:
                out.append(_static_dim(ctx, node, x, i, "Resize with sizes on some axes"))
        if policy != "stretch":
            # One scale for every resized axis; the output rounds half up (spec: round_int).
            ins = [_static_dim(ctx, node, x, a, f"keep_aspect_ratio_policy={policy}") for a in axes]
            ratios = [wanted[a] / d for a, d in zip(axes, ins)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            s = [1.0] * r
            for a, d in zip(axes, ins):
                s[a] = scale
                out[a] = math.floor(scale * d + 0.5)
            full_scales = tuple(s)
        full_sizes = tuple(out)

    full_roi: tuple = ()
    if coord == "tf_crop_and_resize":
        roi_vals = [0.0] * r + [1.0] * r
        if roi is not None:
            flat = [float(v) for v in roi.reshape(-1)]
            if len(flat) != 2 * len(axes):
                raise ctx.error(node, f"roi {flat} should have 2 entries per resized axis")
            for i, a in enumerate(axes):
                roi_vals[a], roi_vals[a + r] = flat[i], flat[i + len(axes)]
        full_roi = tuple(roi_vals)

    return [
        _op(
            ctx,
            "resize",
            [x],
            mode=mode,
            coordinate_transformation_mode=coord,
            nearest_mode=nearest_mode,
            cubic_coeff_a=float(ctx.attr(node, "cubic_coeff_a", -0.75)),
            exclude_outside=bool(ctx.attr(node, "exclude_outside", 0)),
            extrapolation_value=float(ctx.attr(node, "extrapolation_value", 0.0)),
            antialias=antialias,
            scales=full_scales,
            sizes=full_sizes,
            roi=full_roi,
        )
    ]
