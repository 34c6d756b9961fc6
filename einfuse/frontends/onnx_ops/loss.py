"""Converters for the ONNX loss ops (see einfuse/ir/ops/loss.py).

NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss read the same at every opset
(opsets 12, 13 and 22 only widen the types). The optional `ignore_index` becomes a tuple
attribute: () when absent, (index,) when set.
"""

from __future__ import annotations

from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.loss import REDUCTIONS


def _loss_attrs(ctx, node) -> dict:
    reduction = ctx.attr(node, "reduction", "mean")
    if reduction not in REDUCTIONS:
        raise ctx.unsupported(node, f"reduction {reduction!r} (expected one of {', '.join(REDUCTIONS)})")
    ignore_index = ctx.attr(node, "ignore_index")
    return {"reduction": reduction, "ignore_index": () if ignore_index is None else (int(ignore_index),)}


def _operands(ctx, node) -> list:
    return [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)]


@converter("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(ctx, node):
    return [ctx.op("negative_log_likelihood_loss", _operands(ctx, node), **_loss_attrs(ctx, node))]


@converter("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(ctx, node):
    loss, log_prob = ctx.op("softmax_cross_entropy_loss", _operands(ctx, node), **_loss_attrs(ctx, node))
    return [loss, log_prob]
