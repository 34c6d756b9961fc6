"""TE emitters for reductions (reduce_*, argmax/argmin), normalisations (softmax,
log_softmax, hardmax, layer_norm, rms_norm, batch_norm, instance_norm, group_norm, lrn,
lp_normalization, mean_variance_normalization) and global pooling (the windowed pools
are in pool.py).

Conventions that let the generic schedule turn them into row reductions: statistics
are computed with "keepdims" shapes (the data's rank, reduced dims of size 1), so an
output reading them can be tiled by rows with the statistics computed per row. As in
the reference, 16-bit floats accumulate in f32, integers in their own dtype (wrapping).

Known difference: reduce_max/min and the softmax maximum use the machine max (a NaN
element need not propagate), where the reference returns NaN.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from einfuse.codegen.tvm.emit import emitter
from einfuse.codegen.tvm.ops_elementwise import (
    cast,
    const,
    convert,
    dtype_of,
    exp,
    guarded_read,
    ipow,
    is_float,
    is_int,
    is_signed_int,
    let,
    load,
    out_dtype,
    shape_of,
    up,
    work_dtype,
)
from einfuse.codegen.tvm.schedule_generic import MATERIALIZE
from einfuse.ir.ops.reduce import AXIS_REDUCTIONS, reduced_axes

# -- helpers -----------------------------------------------------------------------------------


def reduce_stage(ctx, op: str, in_shape: tuple, axes, keepdims: bool, elem, reducer, empty=None):
    """A reduction of elem(index list) over `axes` of in_shape. The output keeps the
    reduced dims as 1 (keepdims) or drops them. `empty(dtype)`: the value of a reduction
    over no element (default 0); TIR would run the init inside the (empty) loop, never."""
    axes = sorted(axes)
    if keepdims:
        out_shape = tuple(1 if k in axes else d for k, d in enumerate(in_shape))
    else:
        out_shape = tuple(d for k, d in enumerate(in_shape) if k not in axes)
    if math.prod(in_shape[a] for a in axes) == 0:
        value = (empty or (lambda d: const(0, d)))(dtype_of(elem([0] * len(in_shape))))
        return te.compute(out_shape, lambda *i: value, name=ctx.name(op))
    raxes = {a: te.reduce_axis((0, in_shape[a]), name=f"k{a}") for a in axes}

    def f(*i):
        src = []
        it = iter(i)
        for k in range(len(in_shape)):
            if k in raxes:
                src.append(raxes[k].var)
                if keepdims:
                    next(it)
            else:
                src.append(next(it))
        return reducer(elem(src), axis=list(raxes.values()))

    return te.compute(out_shape, f, name=ctx.name(op))


def stat_index(i, axes) -> list:
    """Index into a keepdims statistic for data index i."""
    return [0 if k in axes else v for k, v in enumerate(i)]


def _prod_reducer():
    return te.comm_reducer(lambda a, b: a * b, lambda t: const(1, str(t)), name="prod")


def _lowest(dtype: str):
    if is_float(dtype):
        return const(-math.inf, dtype)
    return tirx.min_value(dtype)


def _highest(dtype: str):
    if is_float(dtype):
        return const(math.inf, dtype)
    return tirx.max_value(dtype)


def _max_reducer(dtype: str):
    return te.comm_reducer(lambda a, b: tirx.max(a, b), lambda t: _lowest(str(t)), name="maxr")


def _min_reducer(dtype: str):
    return te.comm_reducer(lambda a, b: tirx.min(a, b), lambda t: _highest(str(t)), name="minr")


def _compute(ctx, op, shape, f):
    return te.compute(tuple(shape), f, name=ctx.name(op))


# -- reduce_* ----------------------------------------------------------------------------------


def _wide(dtype: str) -> str:
    """The dtype of reductions with float results: f64 for integers, else the work dtype."""
    return "float64" if is_int(dtype) or dtype == "bool" else work_dtype(dtype)


def _reduce_op(ctx, node, x):
    op = node.op
    in_shape = shape_of(x)
    axes = reduced_axes(node.attrs["axes"], node.attrs["noop_with_empty_axes"], len(in_shape))
    keepdims = node.attrs["keepdims"]
    xdt = dtype_of(x)
    odt = out_dtype(node)
    out_shape = ctx.shape(node.outputs[0])
    count = math.prod(in_shape[a] for a in axes)

    if op in ("reduce_max", "reduce_min"):
        wt = "int8" if xdt == "bool" else work_dtype(xdt)
        reducer = _max_reducer(wt) if op == "reduce_max" else _min_reducer(wt)
        empty = _lowest if op == "reduce_max" else _highest
        if xdt == "bool":  # False is the lowest bool, True the highest
            empty = (lambda d: const(0, d)) if op == "reduce_max" else (lambda d: const(1, d))
        if not axes:
            return [_compute(ctx, op, out_shape, lambda *i: x(*i))]
        r = reduce_stage(ctx, op, in_shape, axes, keepdims, lambda s: cast(x(*s), wt), reducer, empty)
        if wt == xdt:
            return [r]
        return [_compute(ctx, "cast", out_shape, lambda *i: convert(r(*i), odt))]

    if op == "reduce_log_sum_exp":
        wt = _wide(xdt)
        if not axes:

            def single(*i):
                v = cast(x(*i), wt)
                m = tirx.Select(tirx.isfinite(v), v, const(0.0, wt))
                return convert(tirx.log(exp(v - m)) + m, odt)

            return [_compute(ctx, op, out_shape, single)]
        m = reduce_stage(ctx, "reduce_max", in_shape, axes, True, lambda s: cast(x(*s), wt), _max_reducer(wt), _lowest)

        def shift(i):
            v = m(*stat_index(i, axes))
            return tirx.Select(tirx.isfinite(v), v, const(0.0, wt))

        s = reduce_stage(ctx, "reduce_sum", in_shape, axes, True, lambda i: exp(cast(x(*i), wt) - shift(i)), te.sum)

        def finish(*i):
            full = _expand_index(i, axes, keepdims, len(in_shape))
            return convert(tirx.log(s(*full)) + shift(full), odt)

        return [_compute(ctx, op, out_shape, finish)]

    # Sum-like reductions: (element map, accumulation dtype, finish).
    if op in ("reduce_l2", "reduce_log_sum"):
        acc = _wide(xdt)
    elif op == "reduce_mean" and is_int(xdt):
        acc = "int64" if is_signed_int(xdt) else "uint64"
    else:
        acc = work_dtype(xdt)
    if op in ("reduce_sum_square", "reduce_l2"):
        elem = lambda v: v * v
    elif op == "reduce_l1":
        elem = lambda v: tirx.abs(v) if is_signed_int(dtype_of(v)) or is_float(dtype_of(v)) else v
    else:
        elem = lambda v: v

    if op == "reduce_mean" and is_int(xdt):

        def finish_v(v):
            return tirx.truncdiv(v, const(max(count, 1), acc))
    elif op == "reduce_mean":

        def finish_v(v):
            # The mean of nothing is 0/0 (NaN), as in the reference.
            return v / const(count, acc) if count else const(math.nan, acc)
    elif op == "reduce_l2":
        finish_v = tirx.sqrt
    elif op == "reduce_log_sum":
        finish_v = tirx.log
    else:

        def finish_v(v):
            return v

    reducer = _prod_reducer() if op == "reduce_prod" else te.sum
    if not axes:
        return [_compute(ctx, op, out_shape, lambda *i: convert(finish_v(elem(cast(x(*i), acc))), odt))]
    empty = (lambda d: const(1, d)) if op == "reduce_prod" else None
    r = reduce_stage(ctx, op, in_shape, axes, keepdims, lambda s: elem(cast(x(*s), acc)), reducer, empty)
    if acc == odt and op in ("reduce_sum", "reduce_prod", "reduce_l1", "reduce_sum_square"):
        return [r]
    return [_compute(ctx, "finish", out_shape, lambda *i: convert(finish_v(r(*i)), odt))]


def _expand_index(i, axes, keepdims: bool, rank: int) -> list:
    """A keepdims index (reduced dims 0) from an output index of a reduction."""
    if keepdims:
        return stat_index(i, axes)
    it = iter(i)
    return [0 if k in axes else next(it) for k in range(rank)]


for _op in AXIS_REDUCTIONS:
    emitter(_op)(_reduce_op)


# -- argmax / argmin ---------------------------------------------------------------------------


def _arg_reducer(is_max: bool, last: bool, val_dtype: str):
    floating = is_float(val_dtype)

    def fcombine(x, y):
        xi, xv = x
        yi, yv = y
        better = yv > xv if is_max else yv < xv
        tie = yv == xv
        later = yi > xi if last else yi < xi
        if floating:
            # A NaN counts as the extremum (numpy); among NaNs the index rule decides.
            xn, yn = tirx.isnan(xv), tirx.isnan(yv)
            tie = tirx.Or(tie, tirx.And(xn, yn))
            better = tirx.Or(tirx.And(yn, tirx.Not(xn)), tirx.And(better, tirx.Not(xn)))
        take = tirx.Or(better, tirx.And(tie, later))
        return tirx.Select(take, yi, xi), tirx.Select(take, yv, xv)

    def fidentity(ti, tv):
        idx = const(-1 if last else (1 << 62), str(ti))
        return idx, (_lowest(str(tv)) if is_max else _highest(str(tv)))

    return te.comm_reducer(fcombine, fidentity, name="argmax" if is_max else "argmin")


def arg_stage(ctx, op, x, axis: int, keepdims: bool, is_max: bool, last: bool):
    in_shape = shape_of(x)
    wt = work_dtype(dtype_of(x))
    reducer = _arg_reducer(is_max, last, wt)
    k = te.reduce_axis((0, in_shape[axis]), name="k")
    out_shape = (
        tuple(1 if d == axis else n for d, n in enumerate(in_shape))
        if keepdims
        else tuple(n for d, n in enumerate(in_shape) if d != axis)
    )

    def f(*i):
        src = list(i)
        if keepdims:
            src[axis] = k.var
        else:
            src.insert(axis, k.var)
        return reducer((k.var.astype("int64"), cast(x(*src), wt)), axis=[k])

    idx, _ = te.compute(out_shape, f, name=ctx.name(op))
    return idx


@emitter("argmax", "argmin")
def argmax(ctx, node, x):
    a = node.attrs
    return [arg_stage(ctx, node.op, x, a["axis"], a["keepdims"], node.op == "argmax", a["select_last_index"])]


# -- softmax family ------------------------------------------------------------------------------


def _axis(node, rank: int) -> int:
    a = node.attrs["axis"]
    return a + rank if a < 0 else a


@emitter("softmax", "log_softmax")
def softmax(ctx, node, x):
    shape = shape_of(x)
    axis = _axis(node, len(shape))
    wt = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    axes = (axis,)
    # te.max (identity: the lowest finite value) rather than the -inf reducer: TVM can
    # rfactor it, and rows of -inf give NaN either way.
    m = reduce_stage(ctx, "row_max", shape, axes, True, lambda s: cast(x(*s), wt), te.max)

    def shifted(i):
        return cast(x(*i), wt) - m(*stat_index(i, axes))

    if node.op == "log_softmax":
        s = reduce_stage(ctx, "row_sum", shape, axes, True, lambda i: exp(shifted(i)), te.sum)
        body = lambda *i: cast(shifted(i) - tirx.log(s(*stat_index(i, axes))), odt)
        return [_compute(ctx, node.op, shape, body)]
    # The exponentials stay a buffer (one row at a time once scheduled): computed once,
    # read by the sum and by the output.
    e = te.compute(shape, lambda *i: exp(shifted(i)), name=ctx.name("row_exp"), attrs={MATERIALIZE: 1})
    s = reduce_stage(ctx, "row_sum", shape, axes, True, lambda i: e(*i), te.sum)
    return [_compute(ctx, node.op, shape, lambda *i: cast(e(*i) / s(*stat_index(i, axes)), odt))]


@emitter("hardmax")
def hardmax(ctx, node, x):
    shape = shape_of(x)
    axis = _axis(node, len(shape))
    idx = arg_stage(ctx, "argmax", x, axis, True, True, False)
    odt = out_dtype(node)

    def f(*i):
        hot = idx(*stat_index(i, (axis,))) == i[axis].astype("int64")
        return tirx.Select(hot, convert(const(1, "int32"), odt), convert(const(0, "int32"), odt))

    return [_compute(ctx, "hardmax", shape, f)]


@emitter("lp_normalization")
def lp_normalization(ctx, node, x):
    shape = shape_of(x)
    axis = _axis(node, len(shape))
    p = node.attrs["p"]
    wt = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    axes = (axis,)

    def elem(s):
        v = cast(x(*s), wt)
        return tirx.abs(v) if p == 1 else v * v if p == 2 else ipow(tirx.abs(v), p)

    acc = reduce_stage(ctx, "row_norm", shape, axes, True, elem, te.sum)

    def f(*i):
        a = acc(*stat_index(i, axes))
        norm = a if p == 1 else tirx.sqrt(a) if p == 2 else tirx.power(a, const(1.0 / p, wt))
        zero = const(0.0, wt)
        safe = tirx.Select(norm == zero, const(1.0, wt), norm)
        return cast(tirx.Select(norm == zero, zero, cast(x(*i), wt) / safe), odt)

    return [_compute(ctx, node.op, shape, f)]


# -- normalisations ---------------------------------------------------------------------------


def _moments(ctx, x, axes, acc: str):
    """(mean, var) keepdims stages over `axes`, in dtype acc (two passes, as the reference)."""
    shape = shape_of(x)
    count = math.prod(shape[a] for a in axes)
    total = reduce_stage(ctx, "mean_sum", shape, axes, True, lambda s: cast(x(*s), acc), te.sum)

    def mean_at(i):
        return total(*stat_index(i, axes)) / const(count, acc)

    def centered(i):
        return cast(x(*i), acc) - mean_at(i)

    sq = reduce_stage(ctx, "var_sum", shape, axes, True, lambda i: centered(i) * centered(i), te.sum)

    def var_at(i):
        return sq(*stat_index(i, axes)) / const(count, acc)

    return mean_at, var_at, centered


def _promote(a: str, b: str) -> str:
    return "float64" if "float64" in (a, b) else "float32"


def _stash(node) -> str:
    from einfuse.codegen.tvm.lower import tvm_dtype

    return tvm_dtype(node.attrs["stash_type"])


@emitter("layer_norm")
def layer_norm(ctx, node, x, scale, bias=None):
    shape = shape_of(x)
    axis = _axis(node, len(shape))
    axes = tuple(range(axis, len(shape)))
    stash = _stash(node)
    acc = _promote(stash, work_dtype(dtype_of(x)))
    odt = out_dtype(node)
    eps = float(node.attrs["epsilon"])
    mean_at, var_at, centered = _moments(ctx, x, axes, acc)

    def inv_std(i):
        return const(1.0, acc) / tirx.sqrt(var_at(i) + const(eps, acc))

    def f(*i):
        y = centered(i) * inv_std(i) * cast(load(scale, i), acc)
        if bias is not None:
            y = y + cast(load(bias, i), acc)
        return cast(y, odt)

    outs = [_compute(ctx, "layer_norm", shape, f)]
    if node.attrs["with_stats"]:
        stat_shape = ctx.shape(node.outputs[1])
        outs.append(_compute(ctx, "ln_mean", stat_shape, lambda *i: cast(mean_at(list(i)), stash)))
        outs.append(_compute(ctx, "ln_inv_std", stat_shape, lambda *i: cast(inv_std(list(i)), stash)))
    return outs


@emitter("rms_norm")
def rms_norm(ctx, node, x, scale):
    shape = shape_of(x)
    axis = _axis(node, len(shape))
    axes = tuple(range(axis, len(shape)))
    xdt = dtype_of(x)
    st = _promote(_stash(node), xdt)
    count = math.prod(shape[a] for a in axes)
    # epsilon is an f32 constant cast to the stash type (as in the ONNX function body).
    eps = const(float(np.float32(node.attrs["epsilon"])), st)
    sq = reduce_stage(ctx, "rms_sum", shape, axes, True, lambda s: cast(x(*s), st) * cast(x(*s), st), te.sum)

    def f(*i):
        rms = tirx.sqrt(sq(*stat_index(i, axes)) / const(count, st) + eps)
        normalized = cast(cast(cast(x(*i), st) / rms, xdt), work_dtype(xdt))
        return cast(normalized * up(load(scale, i)), xdt)

    return [_compute(ctx, "rms_norm", shape, f)]


@emitter("batch_norm")
def batch_norm(ctx, node, x, scale, bias, mean, var):
    shape = shape_of(x)
    acc = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    eps = const(float(node.attrs["epsilon"]), acc)

    def f(*i):
        c = i[1]
        mult = cast(scale(c), acc) / tirx.sqrt(cast(var(c), acc) + eps)
        return cast((cast(x(*i), acc) - cast(mean(c), acc)) * mult + cast(bias(c), acc), odt)

    return [_compute(ctx, "batch_norm", shape, f)]


@emitter("instance_norm")
def instance_norm(ctx, node, x, scale, bias):
    shape = shape_of(x)
    axes = tuple(range(2, len(shape)))
    acc = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    eps = const(float(node.attrs["epsilon"]), acc)
    _, var_at, centered = _moments(ctx, x, axes, acc)

    def f(*i):
        c = i[1]
        y = centered(i) * (const(1.0, acc) / tirx.sqrt(var_at(i) + eps))
        return cast(y * cast(scale(c), acc) + cast(bias(c), acc), odt)

    return [_compute(ctx, "instance_norm", shape, f)]


@emitter("group_norm")
def group_norm(ctx, node, x, scale, bias):
    shape = shape_of(x)
    n, c = shape[0], shape[1]
    spatial = shape[2:]
    groups = node.attrs["num_groups"]
    cpg = c // groups
    acc = _promote(_stash(node), work_dtype(dtype_of(x)))
    odt = out_dtype(node)
    eps = const(float(node.attrs["epsilon"]), acc)
    count = cpg * math.prod(spatial)
    # Statistics per (n, group): reduce over the group's channels and every spatial dim.
    stat_shape = (n, groups) + (1,) * len(spatial)

    def reduce_group(op, elem):
        rc = te.reduce_axis((0, cpg), name="kc")
        rs = [te.reduce_axis((0, d), name=f"ks{k}") for k, d in enumerate(spatial)]

        def f(b, g, *_):
            return te.sum(elem(b, g * cpg + rc.var, [r.var for r in rs]), axis=[rc, *rs])

        return te.compute(stat_shape, f, name=ctx.name(op))

    total = reduce_group("gn_sum", lambda b, ch, sp: cast(x(b, ch, *sp), acc))

    def mean_at(b, ch):
        return total(b, tirx.floordiv(ch, cpg), *([0] * len(spatial))) / const(count, acc)

    def centered(b, ch, sp):
        return cast(x(b, ch, *sp), acc) - mean_at(b, ch)

    sq = reduce_group("gn_var", lambda b, ch, sp: centered(b, ch, sp) * centered(b, ch, sp))

    def f(b, ch, *sp):
        var = sq(b, tirx.floordiv(ch, cpg), *([0] * len(spatial))) / const(count, acc)
        y = centered(b, ch, list(sp)) * (const(1.0, acc) / tirx.sqrt(var + eps))
        return cast(y * cast(scale(ch), acc) + cast(bias(ch), acc), odt)

    return [_compute(ctx, "group_norm", shape, f)]


@emitter("mean_variance_normalization")
def mean_variance_normalization(ctx, node, x):
    shape = shape_of(x)
    axes = tuple(sorted(a + len(shape) if a < 0 else a for a in node.attrs["axes"]))
    acc = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    _, var_at, centered = _moments(ctx, x, axes, acc)

    def f(*i):
        return cast(centered(i) / (tirx.sqrt(var_at(i)) + const(1e-9, acc)), odt)

    return [_compute(ctx, node.op, shape, f)]


@emitter("lrn")
def lrn(ctx, node, x):
    shape = shape_of(x)
    size = node.attrs["size"]
    acc = work_dtype(dtype_of(x))
    odt = out_dtype(node)
    before = (size - 1) // 2
    channels = shape[1]
    k = te.reduce_axis((0, size), name="kc")

    def sq(*i):
        ch = i[1] - before + k.var
        src = list(i)
        src[1] = ch
        v = cast(guarded_read(x, src, tirx.And(ch >= 0, ch < channels), const(0, dtype_of(x))), acc)
        return te.sum(let(v, lambda t: t * t), axis=[k])

    square_sum = te.compute(shape, sq, name=ctx.name("lrn_sum"))
    # alpha / size is a Python float meeting an array of dtype acc: numpy rounds it to acc.
    alpha = const(float(np.asarray(node.attrs["alpha"] / size, dtype=acc)), acc)
    bias = const(node.attrs["bias"], acc)
    beta = const(node.attrs["beta"], acc)

    def f(*i):
        return cast(cast(x(*i), acc) / tirx.power(bias + alpha * square_sum(*i), beta), odt)

    return [_compute(ctx, "lrn", shape, f)]


# -- global pooling (windowed pools: pool.py) ----------------------------------------------


@emitter("global_average_pool", "global_max_pool", "global_lp_pool")
def global_pool(ctx, node, x):
    shape = shape_of(x)
    axes = tuple(range(2, len(shape)))
    xdt = dtype_of(x)
    odt = out_dtype(node)
    if node.op == "global_max_pool":
        return [reduce_stage(ctx, "global_max_pool", shape, axes, True, lambda s: x(*s), _max_reducer(xdt))]
    acc = work_dtype(xdt)
    p = node.attrs.get("p", 1)
    lp = node.op == "global_lp_pool"

    def elem(s):
        v = cast(x(*s), acc)
        if not lp:
            return v
        return tirx.abs(v) if p == 1 else v * v if p == 2 else ipow(tirx.abs(v), p)

    total = reduce_stage(ctx, "pool_sum", shape, axes, True, elem, te.sum)
    count = math.prod(shape[a] for a in axes)

    def finish(*i):
        s = total(*i)
        if lp:
            r = s if p == 1 else tirx.sqrt(s) if p == 2 else tirx.power(s, const(1.0 / p, acc))
        else:
            r = s / const(count, acc)
        return cast(r, odt)

    return [_compute(ctx, node.op, ctx.shape(node.outputs[0]), finish)]
