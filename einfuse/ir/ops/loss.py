"""Loss ops: negative log-likelihood and softmax cross-entropy (ONNX NegativeLogLikelihoodLoss
and SoftmaxCrossEntropyLoss, newest opset semantics).

Shapes: scores/log-probabilities are (N, C, d1..dk), k >= 0; labels are (N, d1..dk) with
values in [0, C) or equal to `ignore_index`; the optional class weights are (C,). The
per-element loss is -input[n, label, d...] * weight[label] (0 where the label is ignored);
`reduction` "none" keeps it, "sum" adds it up, "mean" divides the sum by the total weight of
the elements that are not ignored (their count when there are no weights).

`ignore_index` is a tuple: () when the model sets none, (index,) otherwise; no int can
stand for "none", since any int may be a label.

Arithmetic on 16-bit floats runs in f32 and is rounded back, as onnxruntime does. A label
out of range (and not ignored) is a run-time error, as in onnxruntime.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from einfuse.errors import ExecutionError
from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.types import DType, TensorType, dim_known_ne

REDUCTIONS = ("none", "sum", "mean")
LOSS_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})
LABEL_DTYPES = frozenset({DType.i64, DType.i32})

_LOW_PRECISION = frozenset(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16))

_LOSS_ATTRS = {"reduction": Attr("str", "mean"), "ignore_index": Attr("ints", ())}


def _work_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dt) in _LOW_PRECISION else np.dtype(dt)


# ---------------------------------------------------------------------------
# inference


def _loss_infer(ctx, what: str) -> TensorType:
    """Checks operands and attributes shared by both losses; returns the loss type."""
    x, labels = ctx.type(0), ctx.type(1)
    if x.dtype not in LOSS_DTYPES:
        raise ctx.error(f"{what} must be a float tensor (f64, f32, f16, bf16), got {x}")
    if labels.dtype not in LABEL_DTYPES:
        raise ctx.error(f"labels must be i64 or i32, got {labels}")
    if x.rank < 2:
        raise ctx.error(f"{what} must have shape (N, C, d1..dk), got rank {x.rank} ({x})")
    want = (x.shape[0],) + x.shape[2:]
    if labels.rank != len(want) or any(dim_known_ne(a, b) for a, b in zip(labels.shape, want)):
        dims = ",".join(str(d) for d in want)
        raise ctx.error(f"labels {labels} do not fit {what} {x}: labels must have shape [{dims}]")
    if ctx.has(2):
        w = ctx.type(2)
        if w.dtype != x.dtype:
            raise ctx.error(f"weights {w} must have the dtype of {what} {x}")
        if w.rank != 1 or dim_known_ne(w.shape[0], x.shape[1]):
            raise ctx.error(f"weights {w} must be a vector of C = {x.shape[1]} class weights")
    reduction = ctx.attrs["reduction"]
    if reduction not in REDUCTIONS:
        raise ctx.error(f"unknown reduction {reduction!r} (expected one of {', '.join(REDUCTIONS)})")
    if len(ctx.attrs["ignore_index"]) > 1:
        raise ctx.error(f"ignore_index {ctx.attrs['ignore_index']} must be () or one index")
    shape = labels.shape if reduction == "none" else ()
    return TensorType(shape, x.dtype)


def _nll_infer(ctx):
    return [_loss_infer(ctx, "input")]


def _sce_infer(ctx):
    return [_loss_infer(ctx, "scores"), ctx.type(0)]


# ---------------------------------------------------------------------------
# reference


def _nll(logp: np.ndarray, labels: np.ndarray, weights, reduction: str, ignore_index: tuple, out_dtype):
    """The loss from log-probabilities `logp` (already in the working dtype)."""
    n_classes = logp.shape[1]
    labels = labels.astype(np.int64, copy=False)
    ignored = labels == ignore_index[0] if ignore_index else np.zeros(labels.shape, dtype=bool)
    bad = ~ignored & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        raise ExecutionError(
            f"label {int(labels[bad][0])} is out of range for {n_classes} classes "
            f"(and is not the ignore_index {ignore_index[0] if ignore_index else '(none)'})"
        )
    safe = np.where(ignored, 0, labels)
    picked = np.take_along_axis(logp, np.expand_dims(safe, 1), axis=1).squeeze(1)
    if weights is not None:
        w = weights.astype(logp.dtype, copy=False)[safe]
    else:
        w = np.ones(labels.shape, dtype=logp.dtype)
    zero = np.zeros((), logp.dtype)
    w = np.where(ignored, zero, w)
    # Ignored elements read class 0 only as a placeholder: a -inf there must not become NaN.
    loss = np.where(ignored, zero, -picked * w)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        # Weighted mean: sum(loss) / sum(weights of the elements kept); 0/0 gives NaN, as in
        # onnxruntime and PyTorch, when every element is ignored.
        loss = loss.sum() / w.sum()
    return np.asarray(loss).astype(out_dtype, copy=False)


@register("negative_log_likelihood_loss", family=OPAQUE, inputs=(2, 3), attrs=_LOSS_ATTRS, infer=_nll_infer)
def negative_log_likelihood_loss(x, labels, weights=None, *, reduction, ignore_index):
    """-x[n, labels[n, d..], d..] * weights[label], reduced by `reduction` (none, sum, weighted mean)"""
    logp = x.astype(_work_dtype(x.dtype), copy=False)
    return _nll(logp, labels, weights, reduction, ignore_index, x.dtype)


@register("softmax_cross_entropy_loss", family=OPAQUE, inputs=(2, 3), attrs=_LOSS_ATTRS, outputs=2, infer=_sce_infer)
def softmax_cross_entropy_loss(scores, labels, weights=None, *, reduction, ignore_index):
    """negative_log_likelihood_loss of log_softmax(scores) over axis 1; also returns that log_softmax"""
    s = scores.astype(_work_dtype(scores.dtype), copy=False)
    if s.size:
        shifted = s - s.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        logp = s.copy()
    loss = _nll(logp, labels, weights, reduction, ignore_index, scores.dtype)
    return loss, logp.astype(scores.dtype, copy=False)
