"""Convolution kernels for the TVM backend: conv (2-D first-class, 1-D as 2-D with H=1,
grouped and depthwise) and conv_transpose, on NCHW tensors in and out.

Direct convolution (groups with more than one input channel each). The accumulator is
blocked like NCHWc, acc[n, oc/ocb, oh, ow, ocb], so that one register tile holds `reg_n`
output pixels of a row x `ocb` output channels (ocb = 32: two zmm per pixel). Per reduction
step (ic, kh, kw) the micro-kernel broadcasts reg_n input pixels straight from the NCHW
input (a broadcast is one load whatever the stride or dilation, so strided and dilated
convs need no special case) and multiplies them by ocb packed weights, one vector load:

    Wp[oc/ocb, ic, kh, kw, ocb]     packed once at compile time from OIHW (zero-padded OC)

Zero padding of the input is a separate stage (an in-kernel padded copy, a cheap O(input)
pass next to the O(input x OC x K) convolution) so the micro-kernel never tests bounds;
it also covers the extra columns of a last, partial tile of a row. The epilogue writes the
tile back to NCHW with bias, activation and residual applied, as for matmul (dense.py).

Row-vector kernels (_row_conv, schedule_depthwise): the vector runs along the output row
(up to 16 pixels of one channel, read straight from NCHW, weights broadcast).
- Depthwise convs (one input channel per group): a tile stacks a few rows of a channel;
  the padded copy is made one channel at a time inside the parallel loop (cache-resident).
- Grouped convs with few channels per group (shufflenet's 1x1 group convs, 34 or 68
  channels a group, would get 2- or 4-lane channel vectors in the blocked kernel): a tile
  is `ocr` output channels x rows, each broadcast weight reused across the rows.
- Strided windows compute every input column with a phase axis (window_input) and keep
  phase 0: vectors of consecutive inputs instead of strided loads.
The 2-D pools share this kernel (pool.py).

Epilogues that reshape the output (the channel shuffle's [N, C, H, W] -> [N, G, C/G, H,
W]) are re-indexed onto the conv's output dims so that the tile still writes them; when
that fails (or the accumulator has several consumers) the accumulator is tiled on its own
and the epilogue runs as a separate pass.

3-D and higher convolutions and conv_transpose use a plain direct formulation (correct,
parallel over output channels, not tuned).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx
from tvm.sym import Analyzer

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm import dense
from einfuse.codegen.tvm.dense import (
    ANCHOR_SCHEDULES,
    KERNEL,
    acc_dtype,
    cast,
    extent,
    inline_epilogue,
    is_output,
    micro_kernel,
    packed_operand,
    ravel,
    record,
    round_up,
    schedule_leftovers,
    schedule_simple,
    static_shape,
    vector_lanes,
)
from einfuse.codegen.tvm.emit import emitter
from einfuse.ir.ops.nn import conv_out_dim, window_params


def _conv_params(node, x_shape, w_shape):
    nd = len(x_shape) - 2
    kernel, strides, pads, dilations = window_params(dict(node.attrs), nd, w_shape[2:])
    return nd, tuple(kernel), tuple(strides), tuple(pads), tuple(dilations), int(node.attrs.get("group", 1))


def conv_tiles(oc: int, ocg: int, groups: int, ow: int, lanes: int, max_acc: int = 16) -> tuple[int, int]:
    """(ocb, reg_n): output channels per tile (vectors) and output pixels per tile (unrolled).

    At most 16 accumulators (zmm registers): 7-8 pixels x 2 vectors measured best on Zen 4
    (ResNet-50's 3x3 layers: ~105 GFLOP/s per core); 12-14 pixels x 2 vectors spill."""
    if groups == 1:
        if oc < lanes:
            ocb = oc
        else:
            # Two vectors per pixel unless that pads much more than one vector does.
            ocb = 2 * lanes if round_up(oc, 2 * lanes) <= round_up(oc, lanes) else lanes
    else:
        ocb = _channel_block(ocg, lanes)
    n_vec = max(1, -(-ocb // lanes))
    reg_max = max(1, max_acc // n_vec)
    if ow <= reg_max:
        return ocb, ow
    # Odd widths (SqueezeNet's 55, 27, 13) that no tile of 2 vectors x reg_max pixels
    # divides: one vector of channels x up to max_acc pixels when that divides the row
    # (55 = 5 x 11): a ragged last tile costs a predicated store on every tile.
    if groups == 1 and ocb == 2 * lanes and _width_divisor(ow, reg_max) is None:
        exact = _width_divisor(ow, max_acc)
        if exact is not None:
            return lanes, exact
    # The tile width with the least padding of the row, preferring wide tiles.
    best = min(range(max(1, reg_max // 2), reg_max + 1), key=lambda r: (round_up(ow, r) - ow, -r))
    return ocb, best


def _width_divisor(ow: int, reg_max: int) -> int | None:
    """The widest tile width in [reg_max / 2, reg_max] that divides the row, if any."""
    return next((r for r in range(reg_max, max(1, reg_max // 2) - 1, -1) if ow % r == 0), None)


def _pad_input(ctx, x, x_at, n, c, h, w, pads2d, hp: int, wp: int, acc_t: str, force: bool, fill=None):
    """x as a padded [n, c, hp, wp] stage (acc dtype; `fill`, default zero, outside x), or
    a reader of x itself when no padding or cast is needed."""
    fill = tirx.const(0, acc_t) if fill is None else fill
    pt, pl = pads2d
    if not force and pt == 0 and pl == 0 and hp <= h and wp <= w and str(x.dtype) == acc_t:
        return lambda nn, cc, hh, ww: x_at(nn, cc, hh, ww), None

    def fn(nn, cc, hh, ww):
        inside = tirx.all(hh >= pt, hh < pt + h, ww >= pl, ww < pl + w)
        hi = tirx.min(tirx.max(hh - pt, 0), h - 1)
        wi = tirx.min(tirx.max(ww - pl, 0), w - 1)
        return tirx.if_then_else(inside, cast(x_at(nn, cc, hi, wi), acc_t), fill)

    xp = te.compute((n, c, hp, wp), fn, name=ctx.name("conv_pad"))
    return (lambda nn, cc, hh, ww: xp[nn, cc, hh, ww]), xp


@emitter("conv")
def emit_conv(ctx, node, x, w, bias=None):
    """Grouped N-d convolution (cross-correlation), NCHW in and out."""
    dtype = dense._check_dtypes("conv", x, w, bias)
    acc_t = acc_dtype(dtype, "conv")
    if not acc_t.startswith("float"):
        raise LoweringError(f"conv: no TVM kernel for dtype {dtype}")
    x_shape, w_shape = static_shape(x, "conv input"), static_shape(w, "conv weight")
    nd, kernel, strides, pads, dilations, groups = _conv_params(node, x_shape, w_shape)
    if nd > 2:
        return [_naive_conv(ctx, x, w, bias, x_shape, w_shape, kernel, strides, pads, dilations, groups, acc_t, dtype)]
    n, c = x_shape[:2]
    oc, icg = w_shape[:2]
    if c != icg * groups or oc % groups:
        raise LoweringError(f"conv: weight {list(w_shape)} does not fit input {list(x_shape)} with group={groups}")
    ocg = oc // groups
    # 1-D is 2-D with a unit height.
    if nd == 1:
        h, wd = 1, x_shape[2]
        kh, kw = 1, kernel[0]
        sh, sw = 1, strides[0]
        dh, dw = 1, dilations[0]
        pt, pl, pb, pr = 0, pads[0], 0, pads[1]
    else:
        h, wd = x_shape[2:]
        kh, kw = kernel
        sh, sw = strides
        dh, dw = dilations
        pt, pl, pb, pr = pads
    oh = conv_out_dim(h, kh, sh, dh, pt, pb)
    ow = conv_out_dim(wd, kw, sw, dw, pl, pr)
    if oh < 1 or ow < 1:
        raise LoweringError(f"conv: empty output {oh}x{ow}")

    def x_at(nn, cc, hh, ww):
        return x[nn, cc, ww] if nd == 1 else x[nn, cc, hh, ww]

    def w_at(o, i, a, b):
        return w[o, i, b] if nd == 1 else w[o, i, a, b]

    lanes = vector_lanes(ctx, acc_t)
    g = Geometry(n, c, h, wd, oc, ocg, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow, nd)
    if groups > 1 and icg == 1:
        return [_row_conv(ctx, x_at, w_at, bias, x, g, acc_t, dtype, lanes, icg=1)]
    if groups > 1 and _rows_beat_blocks(ocg, ow, lanes):
        return [_row_conv(ctx, x_at, w_at, bias, x, g, acc_t, dtype, lanes, icg=icg)]
    if groups == 1 and _small_map_pointwise(g, lanes):
        return [_row_conv(ctx, x_at, w_at, bias, x, g, acc_t, dtype, lanes, icg=icg)]

    ocb, reg_n = conv_tiles(oc, ocg, groups, ow, lanes)
    ow_p = round_up(ow, reg_n)
    oc_p = round_up(oc, ocb)
    hp = max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (ow_p - 1) * sw + (kw - 1) * dw + 1)
    xin, _ = _pad_input(ctx, x, x_at, n, c, h, wd, (pt, pl), hp, wp, acc_t, force=acc_t != dtype)

    # Weights as [OC/ocb, IC/G, KH, KW, ocb], OC zero-padded to whole blocks.
    def pack_fn(ob, i, a, b, oi):
        o = ob * ocb + oi
        value = cast(w_at(tirx.min(o, oc - 1), i, a, b), acc_t)
        return value if oc_p == oc else tirx.if_then_else(o < oc, value, tirx.const(0, acc_t))

    steps = [["reshape", [oc, icg, kh, kw]], ["pad", [[0, oc_p - oc], [0, 0], [0, 0], [0, 0]]]]
    steps += [["reshape", [oc_p // ocb, ocb, icg, kh, kw]], ["transpose", [0, 2, 3, 4, 1]]]
    wpk = packed_operand(ctx, w, (oc_p // ocb, icg, kh, kw, ocb), acc_t, pack_fn, steps, "conv_pack", "gather")

    ric = te.reduce_axis((0, icg), name="ic")
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")

    def acc_fn(nn, ob, y, xx, oi):
        cin = ric if groups == 1 else tirx.floordiv(ob * ocb, ocg) * icg + ric
        value = xin(nn, cin, y * sh + rkh * dh, xx * sw + rkw * dw) * wpk[ob, ric, rkh, rkw, oi]
        return te.sum(value, axis=[ric, rkh, rkw])

    ann = {
        KERNEL: "conv",
        "einfuse.ocb": ocb,
        "einfuse.reg_n": reg_n,
        "einfuse.nd": nd,
        "einfuse.pack_stage": wpk.op.name if isinstance(wpk.op, te.ComputeOp) else "",
        "einfuse.out_shape": _shape_text((n, oc, ow) if nd == 1 else (n, oc, oh, ow)),
    }
    acc = te.compute((n, oc_p // ocb, oh, ow_p, ocb), acc_fn, name=ctx.name("conv_acc"), attrs=ann)
    record(ctx, acc, "conv")

    def view_fn(nn, o, *sp):
        y, xx = (0, sp[0]) if nd == 1 else sp
        value = acc[nn, tirx.floordiv(o, ocb), y, xx, tirx.floormod(o, ocb)]
        if bias is not None:
            value = value + cast(bias[o], acc_t)
        return cast(value, dtype)

    out_shape = (n, oc, ow) if nd == 1 else (n, oc, oh, ow)
    return [te.compute(out_shape, view_fn, name=ctx.name("conv"))]


def _shape_text(shape) -> str:
    # Block annotations hold ints and strings, not tuples.
    return ",".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class Geometry:
    """A 2-D convolution's sizes (1-D convs have h = kh = sh = dh = 1, no top/bottom pads)."""

    n: int
    c: int
    h: int
    wd: int
    oc: int
    ocg: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    oh: int
    ow: int
    nd: int


def _channel_block(ocg: int, lanes: int) -> int:
    """Output channels per vector of the blocked (NCHWc) kernel for a grouped conv: the
    largest power of two up to 2 vectors that divides the channels per group."""
    return next(b for b in (2 * lanes, lanes, 8, 4, 2, 1) if ocg % b == 0)


def _row_width(ow: int, lanes: int) -> int:
    """Output pixels per vector along a row: the whole row when it fits one vector, else
    the widest divisor of the row that fills at least half a vector (no ragged last
    vector, so no padded copy of the input just for it), else a full vector."""
    if ow <= lanes:
        return ow
    fits = [v for v in range(lanes, lanes // 2 - 1, -1) if ow % v == 0]
    return fits[0] if fits else lanes


def _rows_beat_blocks(ocg: int, ow: int, lanes: int) -> bool:
    """Whether a grouped conv fills more vector lanes with vectors along the output row
    (shufflenet's 1x1 group convs: 34 or 68 channels per group give the blocked kernel
    vectors of 2 or 4 channels) than with vectors of output channels."""
    block_fill = min(_channel_block(ocg, lanes), lanes) / lanes
    vw = _row_width(ow, lanes)
    row_fill = ow / (-(-ow // vw) * lanes)
    return row_fill > block_fill


def _small_map_pointwise(g: Geometry, lanes: int) -> bool:
    """Whether an ungrouped 1x1 conv on a small map (a whole output row fits one vector:
    SqueezeNet's 13x13 fire modules) runs faster as the row-vector kernel: the blocked
    kernel's few pixels per row leave its register tile mostly empty and its epilogue
    transposes every tile, while the row kernel stores whole rows. Measured on Zen 4: faster
    while input x output channels stay small (48->192: 86 -> 70 us, 512->64: 233 -> 166 us);
    wider ones (480->192, 512->1000) and 7x7 maps are faster blocked."""
    pointwise = g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt + g.pl + g.pb + g.pr == 0
    return pointwise and lanes // 2 < g.ow <= lanes and g.c * g.oc <= 32768


def _divisor_or_least_padding(size: int, limit: int) -> int:
    """A tile count in [1, limit] for `size`: the least padding, then the largest."""
    return min(range(1, min(size, limit) + 1), key=lambda r: (round_up(size, r) - size, -r))


def window_input(ctx, x, x_at, g: Geometry, hp: int, wp: int, ow_p: int, acc_t: str, fill, force: bool):
    """(read, pad stage or None, sub): read(n, c, padded row, output column, phase, column
    tap offset) over x padded with `fill` (a stage only when padding or a cast is needed).

    Strided windows (sw > 1) compute every input column, not only every sw-th: the
    accumulator gets a trailing `phase` axis of extent sub = sw (column ox*sw + phase), so
    that a vector over (ox, phase) reads consecutive inputs, and the output keeps phase
    0. That is sw times the arithmetic of the output, but no strided loads (which AVX-512
    does one lane at a time): the window kernels are bound by memory and index work,
    not arithmetic."""
    sw, kw, dw = g.sw, g.kw, g.dw
    wp = max(wp, ow_p * sw + (kw - 1) * dw)
    xin, pad = _pad_input(ctx, x, x_at, g.n, g.c, g.h, g.wd, (g.pt, g.pl), hp, wp, acc_t, force=force, fill=fill)

    def read(nn, cc, yy, xx, ph, off):
        return xin(nn, cc, yy, xx * sw + ph + off)

    return read, pad, sw


def window_annotations(rows: int, vw: int, ocr: int, nd: int, sub: int, pad, out_shape, per_channel: bool) -> dict:
    """The accumulator annotations schedule_depthwise reads. per_channel: each output
    channel reads one input channel (depthwise, pools), so the padded copy can be made
    one channel at a time inside the parallel loop."""
    return {
        KERNEL: "depthwise",
        "einfuse.rows": rows,
        "einfuse.vw": vw,
        "einfuse.ocr": ocr,
        "einfuse.nd": nd,
        "einfuse.sub": sub,
        "einfuse.pad_stage": pad.op.name if pad is not None else "",
        "einfuse.out_shape": _shape_text(out_shape),
        "einfuse.pad_per_channel": int(per_channel),
    }


def row_tiles(oh: int, ow: int, lanes: int) -> tuple[int, int]:
    """(rows, vw) of a one-channel row-vector tile (depthwise convs, pooling windows)."""
    vw = ow if ow < lanes else (2 * lanes if ow >= 2 * lanes and round_up(ow, 2 * lanes) - ow < lanes else lanes)
    # Small maps (7x7) take all their rows in one tile: 8 one-vector accumulators.
    max_rows = 4 if vw > lanes else 8 if oh <= 8 else 6
    return _divisor_or_least_padding(oh, max_rows), vw


def _row_conv(ctx, x_at, w_at, bias, x, g: Geometry, acc_t: str, dtype: str, lanes: int, icg: int):
    """Vectors along the output row: the depthwise kernel (icg = 1: no reduction over
    channels, a tile stacks a few rows of one channel) and grouped convs with few channels
    per group (a tile is `ocr` output channels x `rows` rows, each weight broadcast once
    per reduction step and reused across the rows)."""
    n, c, h, wd, oc, ocg, nd = g.n, g.c, g.h, g.wd, g.oc, g.ocg, g.nd
    kh, kw, sh, sw, dh, dw = g.kh, g.kw, g.sh, g.sw, g.dh, g.dw
    oh, ow, pt, pl, pb, pr = g.oh, g.ow, g.pt, g.pl, g.pb, g.pr
    if icg == 1:
        ocr = 1
        rows, vw = row_tiles(oh, ow, lanes)
    else:
        # At most ~12 accumulators (zmm registers) per tile: ocr channels x rows.
        ocr = max(d for d in range(1, 9) if ocg % d == 0)
        vw = _row_width(ow, lanes)
        rows = _divisor_or_least_padding(oh, max(1, 12 // ocr))
    ow_p, oh_p = round_up(ow, vw), round_up(oh, rows)
    hp = max(h + pt + pb, (oh_p - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + pl + pr, (ow_p - 1) * sw + (kw - 1) * dw + 1)
    ric = te.reduce_axis((0, icg), name="ic")
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")
    read, pad, sub = window_input(ctx, x, x_at, g, hp, wp, ow_p, acc_t, tirx.const(0, acc_t), force=acc_t != dtype)

    def acc_fn(nn, o, y, xx, *phase):
        ph = phase[0] if phase else 0
        if icg == 1:
            cin, ic, axes = tirx.floordiv(o, ocg), 0, [rkh, rkw]
        else:
            cin, ic, axes = tirx.floordiv(o, ocg) * icg + ric, ric, [ric, rkh, rkw]
        value = read(nn, cin, y * sh + rkh * dh, xx, ph, rkw * dw) * cast(w_at(o, ic, rkh, rkw), acc_t)
        return te.sum(value, axis=axes)

    ann = window_annotations(rows, vw, ocr, nd, sub, pad, (n, oc, ow) if nd == 1 else (n, oc, oh, ow), icg == 1)
    acc_shape = (n, oc, oh_p, ow_p) + ((sub,) if sub > 1 else ())
    acc = te.compute(acc_shape, acc_fn, name=ctx.name("conv_acc"), attrs=ann)
    record(ctx, acc, "conv")

    def view_fn(nn, o, *sp):
        y, xx = (0, sp[0]) if nd == 1 else sp
        value = acc[(nn, o, y, xx) + ((0,) if sub > 1 else ())]
        if bias is not None:
            value = value + cast(bias[o], acc_t)
        return cast(value, dtype)

    out_shape = (n, oc, ow) if nd == 1 else (n, oc, oh, ow)
    return te.compute(out_shape, view_fn, name=ctx.name("conv"))


def _naive_conv(ctx, x, w, bias, x_shape, w_shape, kernel, strides, pads, dilations, groups, acc_t, dtype):
    """Direct N-d convolution without tiling (3-D and up)."""
    nd = len(x_shape) - 2
    n, c = x_shape[:2]
    oc, icg = w_shape[:2]
    ocg = oc // groups
    spatial = x_shape[2:]
    out_sp = [conv_out_dim(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]) for i in range(nd)]
    padded = [
        max(spatial[i] + pads[i] + pads[nd + i], (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1)
        for i in range(nd)
    ]

    def pad_fn(nn, cc, *sp):
        inside = tirx.all(*[tirx.all(sp[i] >= pads[i], sp[i] < pads[i] + spatial[i]) for i in range(nd)])
        idx = [tirx.min(tirx.max(sp[i] - pads[i], 0), spatial[i] - 1) for i in range(nd)]
        return tirx.if_then_else(inside, cast(x[(nn, cc, *idx)], acc_t), tirx.const(0, acc_t))

    xp = te.compute((n, c, *padded), pad_fn, name=ctx.name("conv_pad"))
    ric = te.reduce_axis((0, icg), name="ic")
    rk = [te.reduce_axis((0, kernel[i]), name=f"k{i}") for i in range(nd)]

    def acc_fn(nn, o, *sp):
        cin = tirx.floordiv(o, ocg) * icg + ric
        idx = [sp[i] * strides[i] + rk[i] * dilations[i] for i in range(nd)]
        value = xp[(nn, cin, *idx)] * cast(w[(o, ric, *rk)], acc_t)
        return te.sum(value, axis=[ric, *rk])

    acc = te.compute((n, oc, *out_sp), acc_fn, name=ctx.name("conv_acc"), attrs={KERNEL: "naive"})
    record(ctx, acc, "conv")

    def view_fn(nn, o, *sp):
        value = acc[(nn, o, *sp)]
        if bias is not None:
            value = value + cast(bias[o], acc_t)
        return cast(value, dtype)

    return te.compute((n, oc, *out_sp), view_fn, name=ctx.name("conv"))


@emitter("conv_transpose")
def emit_conv_transpose(ctx, node, x, w, bias=None):
    """Transposed convolution as a gather over the kernel taps that land on each output."""
    dtype = dense._check_dtypes("conv_transpose", x, w, bias)
    acc_t = acc_dtype(dtype, "conv_transpose")
    if not acc_t.startswith("float"):
        raise LoweringError(f"conv_transpose: no TVM kernel for dtype {dtype}")
    x_shape, w_shape = static_shape(x, "conv_transpose input"), static_shape(w, "conv_transpose weight")
    nd, kernel, strides, pads, dilations, groups = _conv_params(node, x_shape, w_shape)
    output_padding = tuple(node.attrs.get("output_padding") or (0,) * nd)
    n, c = x_shape[:2]
    cg, ocg = c // groups, w_shape[1]
    oc = ocg * groups
    spatial = x_shape[2:]
    out_sp = [
        strides[i] * (spatial[i] - 1) + output_padding[i] + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[nd + i]
        for i in range(nd)
    ]
    if any(s < 1 for s in out_sp):
        raise LoweringError(f"conv_transpose: empty output {out_sp}")
    ric = te.reduce_axis((0, cg), name="ic")
    rk = [te.reduce_axis((0, kernel[i]), name=f"k{i}") for i in range(nd)]

    def acc_fn(nn, o, *sp):
        g = tirx.floordiv(o, ocg)
        cin = g * cg + ric
        conds, idx = [], []
        for i in range(nd):
            t = sp[i] + pads[i] - rk[i] * dilations[i]
            q = tirx.floordiv(t, strides[i])
            conds += [t >= 0, tirx.floormod(t, strides[i]) == 0, q < spatial[i]]
            idx.append(tirx.min(tirx.max(q, 0), spatial[i] - 1))
        prod = cast(x[(nn, cin, *idx)], acc_t) * cast(w[(cin, tirx.floormod(o, ocg), *rk)], acc_t)
        return te.sum(tirx.if_then_else(tirx.all(*conds), prod, tirx.const(0, acc_t)), axis=[ric, *rk])

    acc = te.compute((n, oc, *out_sp), acc_fn, name=ctx.name("conv_transpose_acc"), attrs={KERNEL: "naive"})
    record(ctx, acc, "conv_transpose")

    def view_fn(nn, o, *sp):
        value = acc[(nn, o, *sp)]
        if bias is not None:
            value = value + cast(bias[o], acc_t)
        return cast(value, dtype)

    return [te.compute((n, oc, *out_sp), view_fn, name=ctx.name("conv_transpose"))]


# --------------------------------------------------------------------------- schedules


def _threads(info) -> int:
    return getattr(info, "num_threads", 2) or 1


def _single_output(sch, acc, keep, dims: tuple[int, ...]):
    """The one output block the epilogue is inlined into, with its loops fused so that
    they run over the conv's output dims `dims` (n, oc, [oh,] ow); None when there are
    several consumers or the output's loops do not line up with those dims. A reshape
    epilogue (shufflenet's channel shuffle splits oc into groups x channels) has loops
    whose consecutive products are those dims: the block is re-indexed with one loop per
    dim, and kept only when it then reads the accumulator at its own pixel."""
    consumers = inline_epilogue(sch, acc, keep)
    if len(consumers) != 1:
        return None
    out = consumers[0]
    if not is_output(sch, out):
        return None
    loops = list(sch.get_loops(out))
    if len(loops) == len(dims):
        return out if [extent(sch, lp) for lp in loops] == list(dims) else None
    extents = [extent(sch, lp) for lp in loops]
    groups = _loop_groups(extents, dims)
    if groups is None:
        return None

    def index_map(*idx):
        return tuple(ravel(idx[lo:hi], extents[lo:hi]) if hi - lo > 1 else idx[lo] for lo, hi in groups)

    # Re-indexed, not fused: compute_at's region analysis cannot see through the div/mod
    # of a fused loop and would compute the whole accumulator for every tile.
    sch.transform_block_layout(out, tirx.IndexMap.from_func(index_map, ndim=len(extents), index_dtype="int32"))
    return out if _reads_own_pixel(sch, out, acc) else None


def _reads_own_pixel(sch, out, acc) -> bool:
    """True when `out` reads the accumulator only at its own (n, oc, oh, ow), provably
    without the loops' bounds (which compute_at's region analysis does not use)."""
    blk = sch.get(out)
    ivs = list(blk.iter_vars)
    analyzer = Analyzer()
    for iv in ivs:
        if analyzer.can_prove_equal(iv.dom.extent, 1):
            analyzer.bind(iv.var, iv.dom.min)
    buf = sch.get(acc).writes[0].source
    for region in blk.reads:
        if not region.source.same_as(buf):
            continue
        if len(region.region) != len(ivs):
            return False
        for rng, iv in zip(region.region, ivs):
            if not analyzer.can_prove_equal(rng.extent, 1) or not analyzer.can_prove_equal(rng.min, iv.var):
                return False
    return True


def _loop_groups(extents: list[int], dims: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """[(start, stop)] runs of consecutive loops (at least one each) whose extents multiply
    to each of dims; trailing unit loops join the last run."""
    groups, k = [], 0
    for d in dims:
        if k == len(extents):
            return None
        start, prod = k, extents[k]
        k += 1
        while k < len(extents) and prod < d:
            prod *= extents[k]
            k += 1
        if prod != d:
            return None
        groups.append((start, k))
    if any(e != 1 for e in extents[k:]):
        return None
    groups[-1] = (groups[-1][0], len(extents))
    return groups


def ann_dims(ann: dict) -> tuple[int, ...]:
    """The conv's output shape, which the emitter leaves on the accumulator block."""
    return tuple(int(d) for d in str(ann["einfuse.out_shape"]).split(","))


def schedule_conv(sch, acc, ann: dict, info) -> set[str]:
    threads = _threads(info)
    ocb, reg_n, nd = ann["einfuse.ocb"], ann["einfuse.reg_n"], ann["einfuse.nd"]
    pack_name = ann.get("einfuse.pack_stage", "")
    keep = [pack_name] if pack_name else []
    done = {dense._name(sch, acc), *keep}
    out = _single_output(sch, acc, keep, ann_dims(ann))
    if out is None:
        _conv_anchor_alone(sch, acc, threads)
    else:
        done.add(dense._name(sch, out))
        loops = sch.get_loops(out)
        if nd == 1:
            n_l, o_l, w_l = loops
            h_l = None
        else:
            n_l, o_l, h_l, w_l = loops
        ob, oi = sch.split(o_l, [None, ocb])
        wo, wi = sch.split(w_l, [None, reg_n])
        rows = [h_l] if h_l is not None else []
        # A ragged last tile (odd output widths: 111, 55, 27) puts a predicate on the
        # store; along the pixels it would make the vectorized store run one lane at a
        # time for every tile. Vectorized over the tile's channels instead, the predicate
        # is uniform per vector (SqueezeNet's conv1: 0.64 -> 0.46 ms).
        ragged = ann_dims(ann)[-1] % reg_n != 0
        if ragged:
            sch.reorder(n_l, ob, *rows, wo, wi, oi)
        else:
            sch.reorder(n_l, ob, *rows, wo, oi, wi)
        # An in-kernel weight pack goes per channel block, inside the parallel loop, when
        # there are enough blocks to share out: each thread then packs only its own panel
        # (a cache-resident copy) instead of the whole weight passing through memory twice.
        blocks = extent(sch, n_l) * extent(sch, ob)
        per_panel = bool(pack_name) and (blocks % threads == 0 or blocks >= 4 * threads)
        if per_panel:
            par = sch.fuse(n_l, ob)
        else:
            par = sch.fuse(n_l, ob, *rows)
        if threads > 1:
            sch.parallel(par)
        if ragged:
            sch.unroll(wi)
            sch.vectorize(oi)
        else:
            sch.vectorize(wi)
        # acc iter vars: (n, ocb, oh, ow, oci | ic, kh, kw).
        micro_kernel(sch, acc, wo, 5, unroll=[3], vector=4)
        red = sch.get_loops(acc)[-8:-5]
        sch.unroll(red[2])
        if per_panel:
            pack = sch.get_sblock(pack_name)
            sch.compute_at(pack, par, preserve_unit_loops=True)
            # Gathers the panel's output channels (16 lanes) per (ic, kh, kw).
            sch.vectorize(sch.get_loops(pack)[-1])
            pack_name = ""
    if pack_name:
        schedule_simple(sch, sch.get_sblock(pack_name), threads)
    schedule_leftovers(sch, done, threads)
    return done


def _conv_anchor_alone(sch, acc, threads: int) -> None:
    """Fallback when the epilogue has several outputs: the blocked accumulator is computed
    on its own loops (parallel over channel blocks and rows, vectorized over channels)."""
    loops = sch.get_loops(acc)
    n_l, ob, h_l, w_l, oi = loops[:5]
    par = sch.fuse(n_l, ob, h_l)
    if threads > 1:
        sch.parallel(par)
    red = loops[5:]
    sch.reorder(*red, w_l, oi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(acc, red[0])
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_depthwise(sch, acc, ann: dict, info) -> set[str]:
    """Row-vector kernels (_row_conv): parallel over (batch, channel tiles), a register
    tile of ocr channels x rows x one vector of the output row."""
    threads = _threads(info)
    rows, vw, nd = ann["einfuse.rows"], ann["einfuse.vw"], ann["einfuse.nd"]
    ocr, sub = ann.get("einfuse.ocr", 1), ann.get("einfuse.sub", 1)
    done = {dense._name(sch, acc)}
    out = _single_output(sch, acc, [], ann_dims(ann))
    if out is None:
        _row_anchor_alone(sch, acc, ocr, rows, vw, sub, threads)
    elif sub > 1:
        done.add(dense._name(sch, out))
        par = _phase_tiles(sch, acc, out, ocr, rows, vw, threads)
        _pad_per_channel(sch, ann, par, done)
    else:
        done.add(dense._name(sch, out))
        loops = sch.get_loops(out)
        if nd == 1:
            n_l, o_l, w_l = loops
            ho = hi = None
        else:
            n_l, o_l, h_l, w_l = loops
            ho, hi = sch.split(h_l, [None, rows])
        ob, oi = sch.split(o_l, [None, ocr])
        wo, wi = sch.split(w_l, [None, vw])
        outer = [ho] if ho is not None else []
        inner = [hi] if hi is not None else []
        sch.reorder(n_l, ob, *outer, wo, oi, *inner, wi)
        par = sch.fuse(n_l, ob)
        if threads > 1:
            sch.parallel(par)
        sch.vectorize(wi)
        # acc iter vars: (n, oc, oh, ow | [ic,] kh, kw): channels and rows unrolled.
        micro_kernel(sch, acc, wo, 4, unroll=[1, 2], vector=3)
        _pad_per_channel(sch, ann, par, done)
    schedule_leftovers(sch, done, threads)
    return done


def _pad_per_channel(sch, ann: dict, par, done: set[str]) -> None:
    """Pads one channel at a time right before it is used: the padded copy stays in cache
    instead of making a round trip through memory (depthwise convs and pools are
    memory-bound). Grouped convs would copy a whole group's channels once per channel
    tile: their copy runs once, at the root."""
    pad_name = ann.get("einfuse.pad_stage")
    if pad_name and ann.get("einfuse.pad_per_channel", 0):
        sch.compute_at(sch.get_sblock(pad_name), par, preserve_unit_loops=True)
        done.add(pad_name)


def _phase_tiles(sch, acc, out, ocr: int, rows: int, vw: int, threads: int):
    """Strided windows (an accumulator with a phase axis, see window_input): the
    accumulator is tiled on its own loops with (ow, phase) as one vector, in registers,
    and the output stage is placed under its tile loop. (compute_at from the output
    would compute only the phase the output reads, with strided loads again.) Returns
    the parallel loop."""
    loops = sch.get_loops(acc)
    n_l, o_l, y_l, x_l, ph = loops[:5]
    red = loops[5:]
    ob, oi = sch.split(o_l, [None, ocr])
    yo, yi = sch.split(y_l, [None, rows])
    xo, xi = sch.split(x_l, [None, vw])
    sch.reorder(n_l, ob, yo, xo, *red, oi, yi, xi, ph)
    par = sch.fuse(n_l, ob)
    if threads > 1:
        sch.parallel(par)
    sch.unroll(oi)
    sch.unroll(yi)
    sch.vectorize(sch.fuse(xi, ph))
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(out)[-1])
    init = sch.decompose_reduction(acc, red[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(sch.fuse(init_loops[-2], init_loops[-1]))
    return par


def _row_anchor_alone(sch, acc, ocr: int, rows: int, vw: int, sub: int, threads: int) -> None:
    """Fallback when the epilogue does not end in one output stage the tile can write (a
    view whose index the schedule cannot line up, several outputs): the accumulator is
    tiled on its own loops, in registers, and written back to its buffer; the epilogue
    then runs as a separate pass."""
    loops = sch.get_loops(acc)
    n_l, o_l, y_l, x_l = loops[:4]
    ph = [loops[4]] if sub > 1 else []
    red = loops[4 + len(ph) :]
    ob, oi = sch.split(o_l, [None, ocr])
    yo, yi = sch.split(y_l, [None, rows])
    xo, xi = sch.split(x_l, [None, vw])
    sch.reorder(n_l, ob, yo, xo, *red, oi, yi, xi, *ph)
    par = sch.fuse(n_l, ob)
    if threads > 1:
        sch.parallel(par)
    local = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(local, xo, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(local)[-1])
    sch.unroll(oi)
    sch.unroll(yi)
    vec = sch.fuse(xi, *ph) if ph else xi
    sch.vectorize(vec)
    init = sch.decompose_reduction(acc, red[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(sch.fuse(*init_loops[-2:]) if ph else init_loops[-1])


def schedule_naive(sch, acc, ann: dict, info) -> set[str]:
    """Plain direct kernels: the epilogue inlined into the output stage, which computes
    the reduction at its innermost spatial loop; parallel over the outer loops."""
    threads = _threads(info)
    done = {dense._name(sch, acc)}
    dims = tuple(int(iv.dom.extent) for iv in sch.get(acc).iter_vars if iv.iter_type == tirx.IterVar.DataPar)
    out = _single_output(sch, acc, [], dims)
    if out is None:
        schedule_simple(sch, acc, threads)
    else:
        done.add(dense._name(sch, out))
        loops = sch.get_loops(out)
        par = sch.fuse(*loops[:2])
        if threads > 1:
            sch.parallel(par)
        sch.compute_at(acc, loops[-1], preserve_unit_loops=True)
    schedule_leftovers(sch, done, threads)
    return done


ANCHOR_SCHEDULES["conv"] = schedule_conv
ANCHOR_SCHEDULES["depthwise"] = schedule_depthwise
ANCHOR_SCHEDULES["naive"] = schedule_naive


# The windowed pools share the depthwise kernel (window_input, row_tiles, its schedule);
# importing them here registers their emitters whenever the conv kernels are loaded.
from einfuse.codegen.tvm import pool as _pool  # noqa: E402, F401
