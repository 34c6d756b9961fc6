"""fold-batchnorm: folds inference batch norms and per-channel affines into the weights
of the linear ops next to them.

Four groups of rewrite rules, applied together to a fixpoint:

1. Into the producer. `batch_norm(y)` with constant statistics, where `y` is a conv or
   conv_transpose with a constant weight (and optional constant bias, any group count,
   depthwise included), a matmul with a constant 2-D weight and an optional constant
   bias add (rank-2 output, whose axis 1 is the matmul's N), or a gemm with a constant
   B (and optional constant C), becomes that op with new weights and bias:
   s = scale / sqrt(var + eps), w' = w * s along the output channels, b' = (b - mean) * s
   + shift. A conv's output channels are axis 0 of its weight (M, C/g, k...); a
   conv_transpose's are axis 1 of each group's block of its weight (C, M/g, k...).
   The same fold takes a mul by a per-channel constant after such an op (the scale
   also multiplies the bias) and an add of a per-channel constant after a conv,
   conv_transpose or gemm (it joins the bias).
2. Otherwise a batch_norm with constant statistics becomes `mul(x, s)` then `add(., t)`
   with t = shift - mean * s, both shaped to broadcast over channel axis 1 ((C,1,1) for
   NCHW), so that fusion sees elementwise ops.
3. Into the consumer (the RePaViT / Unified Normalization inference trick). A per-channel
   affine `x * s + t` (either part may be missing) that feeds a linear op with a
   constant weight folds into it: (x*s + t) @ W = x @ (s[:, None] * W) + t @ W for a
   matmul (2-D W) or gemm; into a conv, s scales the input channels of the weight and
   t adds sum(w * t) to the bias. The conv shift is exact only when the conv has no
   padding: padded positions are zeros that never received the shift, so with any
   nonzero pad only a scale alone (0 * s = 0) is folded and an affine with a shift is
   left as it is.
4. Chains of per-channel affines merge, so that 1-3 see one scale and one shift:
   mul(mul(x, a), b) -> mul(x, a*b), add(add(x, a), b) -> add(x, a+b) and
   mul(add(mul(x, a), t), b) -> add(mul(x, a*b), t*b). Only constants that vary along
   at most one axis take part, and a merged constant may not be larger than the
   largest one it replaces.

New weights are computed in float64 and cast back to the weight's dtype (one rounding,
rather than one per folded op). Only float tensors are touched. Every interior node of
a pattern must have a single user (the rewrite driver's rule): a conv whose output is
also read elsewhere keeps its batch norm, which then becomes an affine.

Preconditions: a verified inference graph (batch_norm in its inference form, with
running statistics; a training graph must not be folded). Run after canonicalize, which
turns x - c into x + (-c), exact divisions by constants into muls and gemm into matmul
(its alpha and C then reach these rules as a mul and an add; the gemm rules serve
pipelines without canonicalize), and after fold-constants, so that statistics computed
in the graph (e.g. unsqueezed scales) are constants. Patterns accept either operand
order of add and mul. Ordering: before fusion; follow with
eliminate-common-subexpressions and eliminate-dead-code (a weight a fold replaced is
dropped when nothing else reads it; a weight shared with another op is copied).
"""

from __future__ import annotations

import contextvars
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.ir.graph import Graph, Value
from einfuse.ir.types import dims_equal
from einfuse.passes.manager import Pass, register_pass
from einfuse.passes.pattern import Any, Const, Opt, P, RuleSet, rewrite, rule

__all__ = ["FOLD_BATCHNORM", "FoldBatchnorm"]


# -- helpers --------------------------------------------------------------------------


def _is_float(v: Value) -> bool:
    return v.dtype.is_float


def _same_shape(a: Value, b: Value) -> bool:
    return a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _f64(graph: Graph, v: Value | None) -> np.ndarray | None:
    arr = graph.const_value(v)
    return None if arr is None else arr.astype(np.float64)


def _channel_vector(arr: np.ndarray, rank: int, axis: int, size) -> np.ndarray | None:
    """The float64 vector of length `size` that `arr` is, when `arr` broadcasts against a
    rank-`rank` operand and varies along `axis` only (a scalar counts); else None."""
    if not isinstance(size, int) or arr.ndim > rank:
        return None
    shape = (1,) * (rank - arr.ndim) + arr.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, size):
        return None
    return np.broadcast_to(arr.astype(np.float64).reshape(-1), (size,))


def _batchnorm_affine(graph: Graph, out: Value, scale, shift, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with batch_norm(x) = x * s + t per channel, in float64."""
    eps = graph.producer(out).attrs["epsilon"]
    s = _f64(graph, scale) / np.sqrt(_f64(graph, var) + eps)
    return s, _f64(graph, shift) - _f64(graph, mean) * s


def _affine_operands(graph: Graph, x: Value, last: Value, s: Value | None, t: Value | None, axis: int, size):
    """The per-channel vectors (s, t) of the affine x -> last (either may be None), or
    None when a constant is not per-channel along `axis` or the affine broadcasts x."""
    if (s is None and t is None) or not _same_shape(x, last):
        return None
    vs = vt = None
    if s is not None:
        vs = _channel_vector(graph.const_value(s), x.rank, axis, size)
        if vs is None:
            return None
    if t is not None:
        vt = _channel_vector(graph.const_value(t), x.rank, axis, size)
        if vt is None:
            return None
    return vs, vt


def _new_bias(b: np.ndarray | None, s: np.ndarray | None, t: np.ndarray | None) -> np.ndarray | None:
    """b * s + t, with absent terms left out (None when nothing is left)."""
    if b is not None and s is not None:
        b = b * s
    if t is not None:
        b = t if b is None else b + t
    return b


# Naming: a new weight is named after the one it replaces. While the old one is alive the
# graph hands out w.0, w.1...; hints are taken back to the original name first (so a
# weight folded three times is w.5, not w.0.3.5), and at the end of the pass a new
# constant takes its original name once that is free again.
_FRESH_SUFFIX = re.compile(r"^(.+)\.\d+$")  # graph.fresh_name("w") gives w.0, w.1, ...
# The constant names the running pass started with.
_ORIGINAL_NAMES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "fold_batchnorm_names", default=frozenset()
)


def _hint(name: str) -> str:
    """`name` without the .N suffixes fresh naming added (a suffix of an original name stays)."""
    original = _ORIGINAL_NAMES.get()
    while name not in original and (m := _FRESH_SUFFIX.match(name)) is not None:
        name = m.group(1)
    return name


def _bias_name(b: Value | None, w: Value) -> str:
    return b.name if b is not None else f"{_hint(w.name)}_bias"


def _const_like(builder, like: Value, hint: str, arr: np.ndarray) -> Value:
    return builder.const(_hint(hint), np.asarray(arr).astype(like.dtype.np))


def _restore_names(graph: Graph, before: frozenset[str]) -> None:
    """Renames each value the pass made (w.3, mul.2) to its hint (w, mul) when that name is free."""
    for v in list(graph.values()):
        m = _FRESH_SUFFIX.match(v.name)
        if v.name not in before and m is not None and graph.fresh_name(m.group(1)) == m.group(1):
            graph.rename(v, m.group(1))


# -- folding an affine into the op that produces its input -----------------------------


def _after_conv(graph: Graph, builder, y: Value, x: Value, w: Value, b: Value | None, s, t) -> Value | None:
    """conv/conv_transpose(x, w, b) * s + t (per output channel) as one op."""
    node = graph.producer(y)
    wa = _f64(graph, w)
    group = node.attrs["group"]
    if s is not None:
        if node.op == "conv":
            wa = wa * s.reshape(-1, *[1] * (wa.ndim - 1))
        else:
            # (C, M/g, k...): output channel g*M/g + j is column j of group g's rows.
            c_in, per_group = wa.shape[:2]
            blocks = wa.reshape(group, c_in // group, per_group, *wa.shape[2:])
            wa = (blocks * s.reshape(group, 1, per_group, *[1] * (wa.ndim - 2))).reshape(wa.shape)
    bias = _new_bias(_f64(graph, b), s, t)
    w_new = _const_like(builder, w, w.name, wa) if s is not None else w
    b_new = _const_like(builder, w, _bias_name(b, w), bias) if bias is not None else None
    return builder.op(node.op, [x, w_new, b_new], **node.attrs)


def _after_matmul(graph: Graph, builder, mm: Value, x: Value, w: Value, b: Value | None, s, t) -> Value | None:
    """(matmul(x, w) + b) * s + t (per column) as matmul(x, w') + b'."""
    wa = _f64(graph, w)
    if s is not None:
        wa = wa * s  # along the last axis: w's columns
    bias = _new_bias(_f64(graph, b), s, t)
    w_new = _const_like(builder, w, w.name, wa) if s is not None else w
    y = builder.op("matmul", [x, w_new])
    if bias is not None:
        y = builder.op("add", [y, _const_like(builder, w, _bias_name(b, w), bias)])
    return y


def _after_gemm(graph: Graph, builder, y: Value, a: Value, w: Value, c: Value | None, s, t) -> Value | None:
    """gemm(a, w, c) * s + t (per column) as one gemm."""
    attrs = dict(graph.producer(y).attrs)
    wa = _f64(graph, w)
    if s is not None:
        wa = wa * (s[:, None] if attrs["transB"] else s)  # op(B)'s columns
    cb = _f64(graph, c)
    if cb is not None:
        cb = cb * attrs["beta"]
    bias = _new_bias(cb, s, t)
    w_new = _const_like(builder, w, w.name, wa) if s is not None else w
    c_new = None
    if bias is not None:
        c_new = _const_like(builder, w, _bias_name(c, w), bias)
        attrs["beta"] = 1.0
    return builder.op("gemm", [a, w_new, c_new], **attrs)


# A conv-like op with a constant weight; the affine's channels are its output channels.
CONV_LIKE = P({"conv", "conv_transpose"}, Any("x"), Const("w"), Opt(Const("b")), name="y", where=_is_float)
# A matmul with a constant weight and an optional constant bias add.
MATMUL = Opt(P("add", P("matmul", Any("x"), Const("w"), name="mm", where=_is_float), Const("b"), commutative=True))
GEMM = P("gemm", Any("a"), Const("w"), Opt(Const("c")), name="y", where=_is_float)
STATS = (Const("scale"), Const("shift"), Const("mean"), Const("var"))


def _matmul_ok(mm: Value, w: Value, out: Value) -> bool:
    # w's last axis must be the output's last axis, and a bias add may not broadcast
    # the product to a larger shape than the matmul's own.
    return w.rank >= 2 and _same_shape(mm, out)


def _is_rank_2(v: Value) -> bool:
    return v.rank == 2


@rule(P("batch_norm", CONV_LIKE, *STATS, name="out"))
def fold_batchnorm_into_conv(x, w, b, y, scale, shift, mean, var, out, graph, builder):
    s, t = _batchnorm_affine(graph, out, scale, shift, mean, var)
    return _after_conv(graph, builder, y, x, w, b, s, t)


@rule(P("batch_norm", MATMUL, *STATS, name="out", where=_is_rank_2))
def fold_batchnorm_into_matmul(x, w, mm, b, scale, shift, mean, var, out, graph, builder):
    # Batch norm's channels are axis 1: the matmul's N only for a rank-2 output.
    if not _matmul_ok(mm, w, out):
        return None
    s, t = _batchnorm_affine(graph, out, scale, shift, mean, var)
    return _after_matmul(graph, builder, mm, x, w, b, s, t)


@rule(P("batch_norm", GEMM, *STATS, name="out"))
def fold_batchnorm_into_gemm(a, w, c, y, scale, shift, mean, var, out, graph, builder):
    s, t = _batchnorm_affine(graph, out, scale, shift, mean, var)
    return _after_gemm(graph, builder, y, a, w, c, s, t)


@rule(P("batch_norm", Any("x"), *STATS, name="out"))
def batchnorm_to_affine(x, scale, shift, mean, var, out, graph, builder):
    s, t = _batchnorm_affine(graph, out, scale, shift, mean, var)
    shape = (-1,) + (1,) * (x.rank - 2)  # broadcasts over channel axis 1
    y = builder.op("mul", [x, _const_like(builder, x, scale.name, s.reshape(shape))])
    return builder.op("add", [y, _const_like(builder, x, shift.name, t.reshape(shape))])


@rule(P("mul", CONV_LIKE, Const("s"), commutative=True, name="out"))
def fold_scale_into_conv(x, w, b, y, s, out, graph, builder):
    vs = _affine_operands(graph, y, out, s, None, 1, y.shape[1])
    return None if vs is None else _after_conv(graph, builder, y, x, w, b, vs[0], None)


@rule(P("add", CONV_LIKE, Const("t"), commutative=True, name="out"))
def fold_shift_into_conv_bias(x, w, b, y, t, out, graph, builder):
    vt = _affine_operands(graph, y, out, None, t, 1, y.shape[1])
    return None if vt is None else _after_conv(graph, builder, y, x, w, b, None, vt[1])


@rule(P("mul", MATMUL, Const("s"), commutative=True, name="out", where=_is_float))
def fold_scale_into_matmul(x, w, mm, b, s, out, graph, builder):
    if not _matmul_ok(mm, w, out):
        return None
    vs = _affine_operands(graph, mm, out, s, None, mm.rank - 1, w.shape[-1])
    return None if vs is None else _after_matmul(graph, builder, mm, x, w, b, vs[0], None)


@rule(P("mul", GEMM, Const("s"), commutative=True, name="out"))
def fold_scale_into_gemm(a, w, c, y, s, out, graph, builder):
    vs = _affine_operands(graph, y, out, s, None, 1, y.shape[1])
    return None if vs is None else _after_gemm(graph, builder, y, a, w, c, vs[0], None)


@rule(P("add", GEMM, Const("t"), commutative=True, name="out"))
def fold_shift_into_gemm_bias(a, w, c, y, t, out, graph, builder):
    vt = _affine_operands(graph, y, out, None, t, 1, y.shape[1])
    return None if vt is None else _after_gemm(graph, builder, y, a, w, c, None, vt[1])


# -- folding an affine into the op that consumes it ------------------------------------

# x * s + t, x * s or x + t (the handler refuses the bare x).
AFFINE = Opt(
    P(
        "add",
        Opt(P("mul", Any("x"), Const("s"), commutative=True, name="scaled")),
        Const("t"),
        commutative=True,
        name="shifted",
    )
)


def _affine_end(x: Value, scaled: Value | None, shifted: Value | None) -> Value:
    return shifted if shifted is not None else scaled if scaled is not None else x


@rule(P("conv", AFFINE, Const("w"), Opt(Const("b")), name="out", where=_is_float))
def fold_affine_into_next_conv(x, s, scaled, t, shifted, w, b, out, graph, builder):
    node = graph.producer(out)
    group = node.attrs["group"]
    if t is not None and any(p != 0 for p in node.attrs["pads"]):
        return None  # padded zeros never received the shift: not exact
    m, per_group = w.shape[:2]
    st = _affine_operands(graph, x, _affine_end(x, scaled, shifted), s, t, 1, group * per_group)
    if st is None:
        return None
    vs, vt = st
    wa = _f64(graph, w)
    # (M, C/g, k...) -> (g, M/g, C/g, k...): input channel g*C/g + c feeds group g's rows.
    blocks = wa.reshape(group, m // group, per_group, -1)
    w_new, b_new = w, b
    if vt is not None:
        shift = np.einsum("gmck,gc->gm", blocks, vt.reshape(group, per_group)).reshape(m)
        bias = _f64(graph, b)
        b_new = _const_like(builder, w, _bias_name(b, w), shift if bias is None else bias + shift)
    if vs is not None:
        scaled_w = (blocks * vs.reshape(group, 1, per_group, 1)).reshape(wa.shape)
        w_new = _const_like(builder, w, w.name, scaled_w)
    return builder.op("conv", [x, w_new, b_new], **node.attrs)


@rule(P("matmul", AFFINE, Const("w"), name="out", where=_is_float))
def fold_affine_into_next_matmul(x, s, scaled, t, shifted, w, out, graph, builder):
    if w.rank != 2:
        return None
    st = _affine_operands(graph, x, _affine_end(x, scaled, shifted), s, t, x.rank - 1, w.shape[0])
    if st is None:
        return None
    vs, vt = st
    wa = _f64(graph, w)
    w_new = w if vs is None else _const_like(builder, w, w.name, vs[:, None] * wa)
    y = builder.op("matmul", [x, w_new])
    if vt is not None:
        y = builder.op("add", [y, _const_like(builder, w, _bias_name(None, w), vt @ wa)])
    return y


@rule(P("gemm", AFFINE, Const("w"), Opt(Const("c")), name="out", where=_is_float))
def fold_affine_into_next_gemm(x, s, scaled, t, shifted, w, c, out, graph, builder):
    attrs = dict(graph.producer(out).attrs)
    axis = 0 if attrs["transA"] else 1  # the contracted axis of A
    k = w.shape[1] if attrs["transB"] else w.shape[0]
    st = _affine_operands(graph, x, _affine_end(x, scaled, shifted), s, t, axis, k)
    if st is None:
        return None
    vs, vt = st
    wa = _f64(graph, w)
    op_b = wa.T if attrs["transB"] else wa  # (K, N)
    w_new = w
    if vs is not None:
        w_new = _const_like(builder, w, w.name, (vs[:, None] * op_b).T if attrs["transB"] else vs[:, None] * op_b)
    c_new = c
    if vt is not None:
        bias = attrs["alpha"] * (vt @ op_b)
        if c is not None:
            bias = bias + attrs["beta"] * _f64(graph, c)
        c_new = _const_like(builder, w, _bias_name(c, w), bias)
        attrs["beta"] = 1.0
    return builder.op("gemm", [x, w_new, c_new], **attrs)


# -- merging chains of affines -----------------------------------------------------------


def _is_vector(v: Value) -> bool:
    # Only per-axis constants (at most one dimension above 1) take part: this pass merges
    # the affines batch norms leave behind, not arbitrary constant arithmetic.
    return sum(d != 1 for d in v.shape) <= 1


def _merged(graph: Graph, builder, like: Value, hint: Value, combine, *consts: Value) -> Value | None:
    arrays = [graph.const_value(c) for c in consts]
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    if math.prod(shape) > max(a.size for a in arrays):
        return None  # a column times a row: the merged constant would be larger
    return _const_like(builder, like, hint.name, combine(*(a.astype(np.float64) for a in arrays)))


@rule(
    P(
        "mul",
        P("mul", Any("x"), Const("a", where=_is_vector), commutative=True),
        Const("b", where=_is_vector),
        commutative=True,
        name="out",
        where=_is_float,
    )
)
def merge_scales(x, a, b, out, graph, builder):
    ab = _merged(graph, builder, out, b, np.multiply, a, b)
    return None if ab is None else builder.op("mul", [x, ab])


@rule(
    P(
        "add",
        P("add", Any("x"), Const("a", where=_is_vector), commutative=True),
        Const("b", where=_is_vector),
        commutative=True,
        name="out",
        where=_is_float,
    )
)
def merge_shifts(x, a, b, out, graph, builder):
    ab = _merged(graph, builder, out, b, np.add, a, b)
    return None if ab is None else builder.op("add", [x, ab])


SCALE_SHIFT = P(
    "add",
    P("mul", Any("x"), Const("a", where=_is_vector), commutative=True),
    Const("t", where=_is_vector),
    commutative=True,
)


@rule(P("mul", SCALE_SHIFT, Const("b", where=_is_vector), commutative=True, name="out", where=_is_float))
def merge_scale_into_affine(x, a, t, b, out, graph, builder):
    """(x*a + t) * b = x*(a*b) + t*b: the affine keeps its scale-then-shift form."""
    ab = _merged(graph, builder, out, a, np.multiply, a, b)
    tb = _merged(graph, builder, out, t, np.multiply, t, b)
    if ab is None or tb is None:
        return None
    return builder.op("add", [builder.op("mul", [x, ab]), tb])


# Order matters where rules share a root op: folding into a producer is tried before
# turning a batch norm into an affine, and before the chain rules.
FOLD_BATCHNORM = RuleSet(
    [
        fold_batchnorm_into_conv,
        fold_batchnorm_into_matmul,
        fold_batchnorm_into_gemm,
        batchnorm_to_affine,
        fold_scale_into_conv,
        fold_scale_into_matmul,
        fold_scale_into_gemm,
        fold_shift_into_conv_bias,
        fold_shift_into_gemm_bias,
        fold_affine_into_next_conv,
        fold_affine_into_next_matmul,
        fold_affine_into_next_gemm,
        merge_scales,
        merge_shifts,
        merge_scale_into_affine,
    ]
)


@register_pass
@dataclass(frozen=True)
class FoldBatchnorm(Pass):
    """Folds inference batch norms and per-channel affines into neighbouring conv/matmul/gemm weights."""

    name: ClassVar[str] = "fold-batchnorm"
    max_iterations: int = 100

    def run(self, graph: Graph) -> Graph:
        token = _ORIGINAL_NAMES.set(frozenset(graph.constants))
        before = frozenset(v.name for v in graph.values())
        try:
            rewrite(graph, FOLD_BATCHNORM, self.max_iterations)
        finally:
            _ORIGINAL_NAMES.reset(token)
        _restore_names(graph, before)
        return graph
