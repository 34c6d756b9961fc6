"""Pooling windows for the TVM backend: max_pool, average_pool and lp_pool (the global
pools are row reductions and stay in ops_reduce.py).

2-D max and average pooling of floats run as row-vector window kernels, the layout of
the depthwise convolution (conv.py): per channel, the input is copied once into a small
padded buffer (filled with the lowest value for max, zero for average; split into
stride phases for strided windows, so that a vector of output pixels reads consecutive
inputs), then each register tile of a few output rows x one vector of columns reduces
the window taps. The average divides by the count of taps inside the input (or inside
input + pads with count_include_pad), the reference's rule. Their accumulator carries
the depthwise kernel annotation: the "reduce" scheduler below hands such groups to the
anchored schedule (conv.schedule_depthwise) and every other reduce group to the
generic one.

Other pools (1-D, 3-D, integer max pooling, lp_pool, outputs under 4 columns) use a direct
formulation: one reduction per output element with branch-free guarded reads, scheduled
generically.
"""

from __future__ import annotations

from tvm import te, tirx

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm import conv, dense
from einfuse.codegen.tvm.emit import SCHEDULERS, emitter
from einfuse.codegen.tvm.ops_elementwise import (
    cast,
    const,
    dtype_of,
    guarded_read,
    ipow,
    is_float,
    let,
    out_dtype,
    shape_of,
    work_dtype,
)
from einfuse.codegen.tvm.ops_reduce import _compute, _lowest
from einfuse.ir.ops.nn import pool_out_dim, window_params


def _window(node, x):
    shape = shape_of(x)
    nd = len(shape) - 2
    kernel, strides, pads, dilations = window_params(node.attrs, nd)
    ceil_mode = node.attrs.get("ceil_mode", 0)
    outs = [
        int(pool_out_dim(shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], ceil_mode))
        for i in range(nd)
    ]
    return shape, nd, kernel, strides, pads, dilations, outs


def _window_read(x, shape, nd, strides, pads, dilations, i, taps, fill):
    """x at the window tap `taps` of output position i (fill outside the input), as a
    branch-free, always-in-bounds read that vectorizes."""
    pos = [i[2 + d] * strides[d] - pads[d] + taps[d] * dilations[d] for d in range(nd)]
    inside = None
    for d in range(nd):
        cond = tirx.And(pos[d] >= 0, pos[d] < shape[2 + d])
        inside = cond if inside is None else tirx.And(inside, cond)
    return guarded_read(x, [i[0], i[1], *pos], inside, fill)


def _tap_count(o, k: int, stride: int, pad: int, dilation: int, lo: int, hi: int):
    """How many taps t in [0, k) of output position o land in [lo, hi)."""
    start = o * stride - pad
    # t >= ceil((lo - start) / d) and t <= floor((hi - 1 - start) / d)
    t_min = tirx.max(-tirx.floordiv(start - lo, dilation), 0)
    t_max = tirx.min(tirx.floordiv(hi - 1 - start, dilation), k - 1)
    return tirx.max(t_max - t_min + 1, 0)


def _count(i, shape, nd, kernel, strides, pads, dilations, include_pad: bool):
    """The average's divisor at output position i: taps inside the input, or inside the
    input and its pads (count_include_pad; never the ceil_mode overhang)."""
    count = None
    for d in range(nd):
        lo, hi = (-pads[d], shape[2 + d] + pads[nd + d]) if include_pad else (0, shape[2 + d])
        c = _tap_count(i[2 + d], kernel[d], strides[d], pads[d], dilations[d], lo, hi)
        count = c if count is None else count * c
    return count


def _pool_tiles(oh: int, ow: int, lanes: int) -> tuple[int, int]:
    """(rows, vw) of a pooling tile: the depthwise tiles (conv.row_tiles), except that an
    output row the vector width does not divide (SqueezeNet's 55 and 27 columns) takes a
    width that divides it when one fills at least half a vector: a ragged last vector
    puts a predicate on the output store of every tile (measured single-op, 3x3/2 max
    pool: 64x111x111 0.40 -> 0.33 ms, ResNet-50's 64x112x112 0.36 -> 0.26 ms)."""
    rows, vw = conv.row_tiles(oh, ow, lanes)
    if ow % vw == 0:
        return rows, vw
    even = conv._row_width(ow, lanes)
    if ow % even:
        return rows, vw
    return conv.row_tiles(oh, even, lanes)[0], even


def _row_pool(ctx, node, x, kind: str):
    """The row-vector window kernel (see the module docstring) for 2-D float pooling;
    None when it does not apply."""
    shape, nd, kernel, strides, pads, dilations, outs = _window(node, x)
    xdt = dtype_of(x)
    # Narrow outputs (a 7x7 window over a 7x7 map) are better served by the direct
    # reduction: the per-channel padded copy would outweigh the few vectors of output.
    if nd != 2 or not is_float(xdt) or min(outs) < 1 or outs[1] < 4 or 0 in shape:
        return None
    try:
        static = dense.static_shape(x, f"{node.op} input")
    except LoweringError:
        return None
    n, c, h, wd = static
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    pt, pl, pb, pr = pads
    oh, ow = outs
    acc_t = work_dtype(xdt)
    g = conv.Geometry(n, c, h, wd, c, 1, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, nd)
    rows, vw = _pool_tiles(oh, ow, dense.vector_lanes(ctx, acc_t))
    ow_p, oh_p = dense.round_up(ow, vw), dense.round_up(oh, rows)
    # Also covers ceil_mode's last window, which may reach past the end pads.
    hp = max(h + pt + pb, (oh_p - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (ow_p - 1) * sw + (kw - 1) * dw + 1)
    fill = _lowest(acc_t) if kind == "max" else const(0, acc_t)
    read, pad, sub = conv.window_input(ctx, x, lambda *i: x(*i), g, hp, wp, ow_p, acc_t, fill, force=acc_t != xdt)
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")
    reducer = te.max if kind == "max" else te.sum

    def acc_fn(nn, cc, y, xx, *phase):
        ph = phase[0] if phase else 0
        return reducer(read(nn, cc, y * sh + rkh * dh, xx, ph, rkw * dw), axis=[rkh, rkw])

    ann = conv.window_annotations(rows, vw, 1, nd, sub, pad, (n, c, oh, ow), per_channel=True)
    acc_shape = (n, c, oh_p, ow_p) + ((sub,) if sub > 1 else ())
    acc = te.compute(acc_shape, acc_fn, name=ctx.name("pool_acc"), attrs=ann)
    dense.record(ctx, acc, node.op)
    odt = out_dtype(node)
    include_pad = bool(node.attrs.get("count_include_pad", 0))

    def view_fn(*i):
        value = acc(*i, *((0,) if sub > 1 else ()))
        if kind == "avg":
            value = value / _count(i, shape, nd, kernel, strides, pads, dilations, include_pad).astype(acc_t)
        return cast(value, odt)

    return te.compute((n, c, oh, ow), view_fn, name=ctx.name(node.op))


@emitter("max_pool")
def max_pool(ctx, node, x):
    if node.attrs.get("with_indices"):
        raise LoweringError("max_pool with an indices output is not supported")
    fast = _row_pool(ctx, node, x, "max")
    if fast is not None:
        return [fast]
    shape, nd, kernel, strides, pads, dilations, outs = _window(node, x)
    lowest = _lowest(dtype_of(x))
    taps = [te.reduce_axis((0, kernel[d]), name=f"kw{d}") for d in range(nd)]

    def f(*i):
        v = _window_read(x, shape, nd, strides, pads, dilations, i, [t.var for t in taps], lowest)
        return te.max(v, axis=taps)

    return [_compute(ctx, "max_pool", (shape[0], shape[1], *outs), f)]


@emitter("average_pool", "lp_pool")
def average_pool(ctx, node, x):
    if node.op == "average_pool":
        fast = _row_pool(ctx, node, x, "avg")
        if fast is not None:
            return [fast]
    shape, nd, kernel, strides, pads, dilations, outs = _window(node, x)
    acc = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    taps = [te.reduce_axis((0, kernel[d]), name=f"kw{d}") for d in range(nd)]
    p = node.attrs.get("p", 1)
    is_lp = node.op == "lp_pool"

    def elem(v):
        if not is_lp or p == 1:
            return tirx.abs(v) if is_lp else v
        return let(v, lambda t: t * t) if p == 2 else ipow(tirx.abs(v), p)

    def f(*i):
        v = _window_read(x, shape, nd, strides, pads, dilations, i, [t.var for t in taps], const(0, dtype_of(x)))
        return te.sum(elem(cast(v, acc)), axis=taps)

    out_shape = (shape[0], shape[1], *outs)
    total = _compute(ctx, "pool_sum", out_shape, f)
    include_pad = bool(node.attrs.get("count_include_pad", 0))

    def finish(*i):
        s = total(*i)
        if is_lp:
            r = s if p == 1 else tirx.sqrt(s) if p == 2 else tirx.power(s, const(1.0 / p, acc))
            return cast(r, odt)
        return cast(s / _count(i, shape, nd, kernel, strides, pads, dilations, include_pad).astype(acc), odt)

    return [_compute(ctx, node.op, out_shape, finish)]


# -- scheduling ----------------------------------------------------------------------------------

_generic_reduce = SCHEDULERS["reduce"]


def schedule_reduce(sch, info):
    """Reduce groups: those holding a window kernel (an accumulator with a kernel
    annotation) get its anchored schedule, every other one the generic schedule."""
    for blk in dense.all_blocks(sch):
        if dense._annotations(sch, blk).get(dense.KERNEL) in dense.ANCHOR_SCHEDULES:
            return dense.schedule_out_fusable(sch, info)
    return _generic_reduce(sch, info)


# Replaces the generic entry for "reduce" (registered when schedule_generic was imported),
# which stays the fallback for groups without a window kernel.
SCHEDULERS["reduce"] = schedule_reduce
