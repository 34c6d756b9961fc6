"""TE emitters for injective ops: each output element reads one input element through an
index map (reshape, transpose, slice, concat, gather, pad, ...). The generic schedule
inlines them into their consumers, so a chain of layout ops costs no memory traffic.

Reads are always in bounds: concat and constant padding pick their source with
if_then_else (never a load past the end), and runtime gather indices are wrapped
(negative) and clamped, so a bad index gives a wrong element, never a wild read.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm.emit import emitter
from einfuse.codegen.tvm.ops_elementwise import (
    cast,
    clamp_index,
    const,
    convert,
    dtype_of,
    guarded_read,
    is_float,
    load,
    out_dtype,
    shape_of,
)
from einfuse.ir.ops.shape import range_length, slice_bounds


def _strides(shape) -> list[int]:
    return [math.prod(shape[k + 1 :]) for k in range(len(shape))]


def reshape_index(in_shape: tuple, out_shape: tuple, idx) -> list:
    """Input index of output element `idx` when reshaping in_shape -> out_shape (row major)."""
    in_nz = [(k, d) for k, d in enumerate(in_shape) if d != 1]
    out_nz = [(k, d) for k, d in enumerate(out_shape) if d != 1]
    if [d for _, d in in_nz] == [d for _, d in out_nz]:
        # Only size-1 dims move (squeeze/unsqueeze): a direct axis map, no div/mod.
        src = [0] * len(in_shape)
        for (ki, _), (ko, _) in zip(in_nz, out_nz):
            src[ki] = idx[ko]
        return src
    runs = _matching_runs(in_shape, out_shape)
    if runs is None or any(i1 - i0 > 1 for i0, i1, _, _ in runs):
        # Merged input dims keep the one flat index: the dense schedule's tile matching
        # takes per-run div/mod of a merged row index for a plain row, then cannot
        # vectorize the tile (it schedules such a group with the anchor alone instead).
        runs = [(0, len(in_shape), 0, len(out_shape))]
    # Each run of input dims is indexed from its own run of output dims only: a split or
    # merge of dims (shufflenet's [1, 272, 14, 14] -> [1, 4, 68, 14, 14]) then reads
    # x[0, 68*g + c, h, w], not div/mod of the whole flat index, which kernels tiling
    # the epilogue's loops (conv.py, dense.py) cannot see through.
    src = []
    for i0, i1, o0, o1 in runs:
        if i1 - i0 == 1 and o1 - o0 == 1:
            src.append(idx[o0])
            continue
        flat = 0
        for k in range(o0, o1):
            flat = flat * out_shape[k] + idx[k] if k > o0 else idx[k]
        for k in range(i0, i1):
            s = math.prod(in_shape[k + 1 : i1])
            v = tirx.floordiv(flat, s) if s != 1 else flat
            src.append(v if k == i0 else tirx.floormod(v, in_shape[k]))
    return src


def _matching_runs(in_shape: tuple, out_shape: tuple) -> list[tuple[int, int, int, int]] | None:
    """[(in_lo, in_hi, out_lo, out_hi)]: consecutive runs of input and output dims with
    equal products (at least one dim each), or None when the shapes do not split so
    (a zero-size dim)."""
    if 0 in in_shape or 0 in out_shape:
        return None
    runs, i, o = [], 0, 0
    while i < len(in_shape) and o < len(out_shape):
        i0, o0 = i, o
        pi, po = in_shape[i], out_shape[o]
        i, o = i + 1, o + 1
        while pi != po:
            if pi < po and i < len(in_shape):
                pi, i = pi * in_shape[i], i + 1
            elif po < pi and o < len(out_shape):
                po, o = po * out_shape[o], o + 1
            else:
                return None
        runs.append((i0, i, o0, o))
    if runs and (i < len(in_shape) or o < len(out_shape)):
        # Trailing unit dims join the last run.
        if any(d != 1 for d in in_shape[i:]) or any(d != 1 for d in out_shape[o:]):
            return None
        i0, _, o0, _ = runs[-1]
        runs[-1] = (i0, len(in_shape), o0, len(out_shape))
    return runs or None


def _compute(ctx, node, shape, fcompute, op: str | None = None):
    return te.compute(tuple(shape), fcompute, name=ctx.name(op or node.op))


def _reshape_like(ctx, node, x):
    out_shape = ctx.shape(node.outputs[0])
    in_shape = shape_of(x)
    return [_compute(ctx, node, out_shape, lambda *i: x(*reshape_index(in_shape, out_shape, i)))]


for _op in ("reshape", "flatten", "squeeze", "unsqueeze"):
    emitter(_op)(_reshape_like)


@emitter("transpose")
def transpose(ctx, node, x):
    perm = node.attrs["perm"]

    def f(*i):
        src = [None] * len(perm)
        for k, p in enumerate(perm):
            src[p] = i[k]
        return x(*src)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("expand")
def expand(ctx, node, x):
    return [_compute(ctx, node, ctx.shape(node.outputs[0]), lambda *i: load(x, i))]


@emitter("tile")
def tile(ctx, node, x):
    shape = shape_of(x)

    def f(*i):
        return x(*[tirx.floormod(v, d) if d != 1 else 0 for v, d in zip(i, shape)])

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("concat")
def concat(ctx, node, *xs):
    axis = node.attrs["axis"]
    parts = [x for x in xs if shape_of(x)[axis] > 0]
    offsets = []
    off = 0
    for x in parts:
        offsets.append(off)
        off += shape_of(x)[axis]

    def f(*i):
        # Each part is read at its own (clamped) index; selects pick the right one, so
        # the stage vectorizes and never reads out of bounds.
        def read(k):
            src = list(i)
            src[axis] = clamp_index(i[axis] - offsets[k], shape_of(parts[k])[axis])
            return parts[k](*src)

        out = read(len(parts) - 1)
        for k in range(len(parts) - 2, -1, -1):
            out = tirx.Select(i[axis] < offsets[k + 1], read(k), out)
        return out

    if not parts:
        raise LoweringError("concat of empty operands")
    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("split")
def split(ctx, node, x):
    axis = node.attrs["axis"]
    outs = []
    off = 0
    for o in node.outputs:
        shape = ctx.shape(o)
        outs.append(_compute(ctx, node, shape, _shifted(x, axis, off)))
        off += shape[axis]
    return outs


def _shifted(x, axis: int, off: int):
    def f(*i):
        src = list(i)
        src[axis] = i[axis] + off
        return x(*src)

    return f


@emitter("slice")
def slice_(ctx, node, x):
    in_shape = shape_of(x)
    first = {}
    for s, e, a, st in zip(*(node.attrs[k] for k in ("starts", "ends", "axes", "steps"))):
        lo, _ = slice_bounds(in_shape[a], s, e, st)
        first[a] = (lo, st)

    def f(*i):
        src = list(i)
        for a, (lo, st) in first.items():
            src[a] = lo + i[a] * st
        return x(*src)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


def _index(v, dim: int):
    """A runtime index made safe: negative counts from the end, then clamped into [0, dim)."""
    v = v.astype("int64") if dtype_of(v) != "int64" else v
    v = tirx.Select(v < const(0, "int64"), v + const(dim, "int64"), v)
    v = tirx.max(tirx.min(v, const(max(dim - 1, 0), "int64")), const(0, "int64"))
    return v.astype("int32") if dim < 2**31 else v


@emitter("gather")
def gather(ctx, node, x, indices):
    axis = node.attrs["axis"]
    q = len(shape_of(indices))
    dim = shape_of(x)[axis]

    def f(*i):
        j = _index(indices(*i[axis : axis + q]), dim)
        return x(*i[:axis], j, *i[axis + q :])

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("gather_elements")
def gather_elements(ctx, node, x, indices):
    axis = node.attrs["axis"]
    dim = shape_of(x)[axis]

    def f(*i):
        src = list(i)
        src[axis] = _index(indices(*i), dim)
        return x(*src)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("gather_nd")
def gather_nd(ctx, node, x, indices):
    b = node.attrs["batch_dims"]
    ishape = shape_of(indices)
    k = ishape[-1]
    xshape = shape_of(x)
    lead = len(ishape) - 1  # output dims that address index tuples

    def f(*i):
        picked = [_index(indices(*i[:lead], j), xshape[b + j]) for j in range(k)]
        return x(*i[:b], *picked, *i[lead:])

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


def _reflect(i, n: int):
    """numpy 'reflect' padding index for i in any range (the pattern repeats every 2(n-1))."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = tirx.floormod(i, period)
    return tirx.Select(j >= n, period - j, j)


@emitter("pad")
def pad(ctx, node, x):
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    shape = shape_of(x)
    r = len(shape)
    # Negative pads crop first: the padded source is x[cb : n - ce] along each axis.
    crop_begin = [max(-pads[k], 0) for k in range(r)]
    sizes = [shape[k] - crop_begin[k] - max(-pads[k + r], 0) for k in range(r)]
    begin = [max(pads[k], 0) for k in range(r)]
    out_shape = ctx.shape(node.outputs[0])
    if mode != "constant" and any(s == 0 for s in sizes):
        raise LoweringError(f"pad mode {mode!r} of an empty axis")

    def f(*i):
        rel = [i[k] - begin[k] for k in range(r)]
        if mode == "constant":
            inside = None
            for k in range(r):
                if begin[k] == 0 and out_shape[k] == sizes[k]:
                    continue  # not padded along this axis
                cond = tirx.And(rel[k] >= 0, rel[k] < sizes[k])
                inside = cond if inside is None else tirx.And(inside, cond)
            index = [rel[k] + crop_begin[k] for k in range(r)]
            if inside is None:
                return x(*index)
            return guarded_read(x, index, inside, _pad_value(node, dtype_of(x)))
        if mode == "edge":
            src = [tirx.max(tirx.min(rel[k], sizes[k] - 1), 0) for k in range(r)]
        elif mode == "reflect":
            src = [_reflect(rel[k], sizes[k]) for k in range(r)]
        elif mode == "wrap":
            src = [tirx.floormod(rel[k], sizes[k]) for k in range(r)]
        else:
            raise LoweringError(f"pad mode {mode!r} is not supported")
        return x(*[s + c for s, c in zip(src, crop_begin)])

    return [_compute(ctx, node, out_shape, f)]


def _pad_value(node, dtype: str):
    v = float(node.attrs["value"])
    if dtype == "bool":
        return const(bool(v), "bool")
    if not is_float(dtype):
        return convert(const(v, "float64"), dtype)
    return const(v, dtype)


@emitter("depth_to_space")
def depth_to_space(ctx, node, x):
    b, mode = node.attrs["blocksize"], node.attrs["mode"]
    c_out = ctx.shape(node.outputs[0])[1]

    def f(n, c, y, w):
        b1, b2 = tirx.floormod(y, b), tirx.floormod(w, b)
        ch = b1 * (b * c_out) + b2 * c_out + c if mode == "DCR" else c * (b * b) + b1 * b + b2
        return x(n, ch, tirx.floordiv(y, b), tirx.floordiv(w, b))

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("space_to_depth")
def space_to_depth(ctx, node, x):
    b, mode = node.attrs["blocksize"], node.attrs["mode"]
    c_in = shape_of(x)[1]

    def f(n, ch, y, w):
        if mode == "DCR":
            b1, b2, c = tirx.floordiv(ch, b * c_in), tirx.floormod(tirx.floordiv(ch, c_in), b), tirx.floormod(ch, c_in)
        else:
            c, b1, b2 = tirx.floordiv(ch, b * b), tirx.floormod(tirx.floordiv(ch, b), b), tirx.floormod(ch, b)
        return x(n, c, y * b + b1, w * b + b2)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("trilu")
def trilu(ctx, node, x):
    upper, k = node.attrs["upper"], node.attrs["k"]
    zero = const(0, dtype_of(x))

    def f(*i):
        row, col = i[-2], i[-1]
        keep = (col - row >= k) if upper else (col - row <= k)
        return tirx.Select(keep, x(*i), zero)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


@emitter("reverse_sequence")
def reverse_sequence(ctx, node, x, lens):
    batch_axis, time_axis = node.attrs["batch_axis"], node.attrs["time_axis"]
    steps = shape_of(x)[time_axis]

    def f(*i):
        n = lens(i[batch_axis]).astype("int32")
        n = tirx.max(tirx.min(n, steps), 0)
        t = i[time_axis]
        src = list(i)
        src[time_axis] = tirx.Select(t < n, n - 1 - t, t)
        return x(*src)

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]


# -- generators ------------------------------------------------------------------------------


@emitter("constant_of_shape")
def constant_of_shape(ctx, node):
    dtype = out_dtype(node)
    v = node.attrs["value"]
    value = convert(const(v, "float64"), dtype) if dtype != "bool" else const(bool(v), "bool")
    return [_compute(ctx, node, ctx.shape(node.outputs[0]), lambda *i: value)]


@emitter("range")
def range_(ctx, node):
    a = node.attrs
    dtype = out_dtype(node)
    n = range_length(a["start"], a["limit"], a["delta"])
    if dtype.startswith(("int", "uint")):
        start, delta = int(a["start"]), int(a["delta"])
        body = lambda i: (i.astype("int64") * delta + start).astype(dtype)
    else:
        body = lambda i: cast(const(a["start"], "float64") + i.astype("float64") * const(a["delta"], "float64"), dtype)
    return [_compute(ctx, node, (n,), body)]


@emitter("eye_like")
def eye_like(ctx, node, x):
    dtype, k = out_dtype(node), node.attrs["k"]
    one, zero = convert(const(1, "int32"), dtype), convert(const(0, "int32"), dtype)
    return [_compute(ctx, node, ctx.shape(node.outputs[0]), lambda i, j: tirx.Select(j - i == k, one, zero))]


@emitter("one_hot")
def one_hot(ctx, node, indices, values):
    depth, axis = node.attrs["depth"], node.attrs["axis"]

    def f(*i):
        v = indices(*i[:axis], *i[axis + 1 :])
        if is_float(dtype_of(v)):
            v = tirx.trunc(v)
        v = v.astype("int64")
        v = tirx.Select(v < const(0, "int64"), v + const(depth, "int64"), v)
        hot = v == i[axis].astype("int64")
        return tirx.Select(hot, values(1), values(0))

    return [_compute(ctx, node, ctx.shape(node.outputs[0]), f)]
