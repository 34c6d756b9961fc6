"""Converters for ONNX reductions, ArgMax/ArgMin and CumSum (see einfuse/ir/ops/reduce.py).

Axes become a sorted tuple of non-negative ints. ReduceSum takes them as an operand
from opset 13 and the other reductions from opset 18 (an attribute before); either
way they must be constant. Absent or empty axes mean "every axis", made explicit,
unless noop_with_empty_axes is set: then the core op gets axes=() with the flag.
"""

from __future__ import annotations

import numpy as np

from einfuse.frontends.onnx_ops import converter

_REDUCE = {
    "ReduceSum": "reduce_sum",
    "ReduceMean": "reduce_mean",
    "ReduceMax": "reduce_max",
    "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod",
    "ReduceL1": "reduce_l1",
    "ReduceL2": "reduce_l2",
    "ReduceLogSum": "reduce_log_sum",
    "ReduceLogSumExp": "reduce_log_sum_exp",
    "ReduceSumSquare": "reduce_sum_square",
}

# The opset from which `axes` is an operand instead of an attribute.
_AXES_OPERAND_SINCE = {"ReduceSum": 13}
_AXES_OPERAND_DEFAULT = 18


def _normalize_axis(ctx, node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.error(node, f"axis {axis} is out of range for an input of rank {rank}")
    return axis % rank


@converter(*_REDUCE)
def reduce(ctx, node):
    x = ctx.input(node, 0)
    if ctx.opset >= _AXES_OPERAND_SINCE.get(node.op_type, _AXES_OPERAND_DEFAULT):
        arr = ctx.const_input(node, 1)
        axes = None if arr is None else tuple(int(a) for a in np.asarray(arr).reshape(-1))
    else:
        axes = ctx.attr(node, "axes")
    keepdims = bool(ctx.attr(node, "keepdims", 1))
    noop = bool(ctx.attr(node, "noop_with_empty_axes", 0))
    if axes:
        normalized = [_normalize_axis(ctx, node, a, x.rank) for a in axes]
        if len(set(normalized)) != len(normalized):
            raise ctx.error(node, f"axes {tuple(axes)} repeat an axis")
        axes = tuple(sorted(normalized))
        noop = False
    elif not noop:
        axes = tuple(range(x.rank))
    else:
        axes = ()
    return [ctx.op(_REDUCE[node.op_type], [x], axes=axes, keepdims=keepdims, noop_with_empty_axes=noop)]


@converter("ArgMax", "ArgMin")
def arg_extremum(ctx, node):
    x = ctx.input(node, 0)
    axis = _normalize_axis(ctx, node, int(ctx.attr(node, "axis", 0)), x.rank)
    return [
        ctx.op(
            "argmax" if node.op_type == "ArgMax" else "argmin",
            [x],
            axis=axis,
            keepdims=bool(ctx.attr(node, "keepdims", 1)),
            select_last_index=bool(ctx.attr(node, "select_last_index", 0)),
        )
    ]


@converter("CumSum")
def cumsum(ctx, node):
    x = ctx.input(node, 0)
    axis = np.asarray(ctx.const_input(node, 1))
    if axis.size != 1:
        raise ctx.error(node, f"the axis operand must hold one integer, got shape {list(axis.shape)}")
    return [
        ctx.op(
            "cumsum",
            [x],
            axis=_normalize_axis(ctx, node, int(axis.reshape(-1)[0]), x.rank),
            exclusive=bool(ctx.attr(node, "exclusive", 0)),
            reverse=bool(ctx.attr(node, "reverse", 0)),
        )
    ]
