"""recognize-attention: finds scaled dot-product attention in imported graphs and rewrites
each instance into the `attention` core op (ONNX Attention-23 semantics, 4-D heads).

What is matched, walking back from `matmul(P, V)` where P = softmax(X) over the last axis
(also torch's `softmax(x.float()).to(t)`, giving softmax_precision=f32, and its NaN guard
`where(is_nan(P), 0, P)`, which attention's "a fully masked row gives 0" already is):

- X is q @ k^T, optionally scaled and masked:
  - scale: mul/div by a scalar constant on the logits, on q, on k (before or after its
    transpose), or on several of them (torch's sqrt-split `q*s`, `k*s` gives scale s*s);
    no scale gives scale 1.0;
  - additive masks / biases: `add(logits, m)` (one or several; a causal triangle, a BERT
    padding mask `(1 - mask) * -big`, a relative-position bias...), usually added after
    the scale; one added before a scale s is passed as m * s;
  - `where(cond, logits, fill)` (or `where(cond, fill, logits)`) with fill -inf (a boolean
    mask, before or after a positive scale) or a finite value at most half the dtype's
    lowest (an additive 0/fill mask; after the scale only);
- k^T comes through any chain of data-movement ops (reshape, transpose, unsqueeze, expand,
  tile...) from a [B, Hkv, M, D] value (or a [B, Hkv, D, M] one, transposed back); with
  static shapes the chain is *checked* by running it on a probe tensor of element indices:
  it must produce exactly swapaxes(repeat(K, Hq / Hkv, axis=1)). That covers torch's
  reshape/transpose/reshape transposition and the GQA/MQA head repetition
  (unsqueeze+expand+reshape, repeat_interleave, tile of one head), and rejects a `tile`
  of several heads (head h would read kv head h % Hkv, not h // (Hq / Hkv)). Without a
  probe (symbolic shapes, more than PROBE_LIMIT elements) k^T itself is transposed back
  (composed with a transpose that produced it) and a repetition stays in the graph;
- V likewise: a [B, Hkv, M, Dv] source whose repetition matches K's;
- the 3-D batched form [B*H, S, D] runs as 4-D with one head (unsqueeze / squeeze around).

A constant mask (the same for every batch and head; 0 where visible, -inf or <= lowest/2
where not) that is exactly the top-left causal triangle (j <= i) becomes is_causal=True
with no mask. A bottom-right triangle (j <= i + M - S, M > S: the KV-cache alignment)
also becomes is_causal=True: attention aligns its causal mask that way behind a past_key,
so the first M - S keys and values are passed as past_key / past_value (slices of K and
V, which attention concatenates back); `bottom_right=False` keeps it as attn_mask. A
constant mask that hides nothing is dropped.

Only a provably equal computation is rewritten: float dtypes agree, the softmax is over the
last axis, masks broadcast to [B, Hq, S, M] without widening the logits (their last dim is
exactly M: attention pads, not broadcasts, a short mask), scales are scalar constants
with a positive product, the probabilities and intermediate logits have no other users. Anything else stays as it
is and the reason is logged (logger `einfuse.passes.recognize_attention`, INFO) and counted.

Differences that remain: the result is the same real-number computation with different
rounding (attention scales q and k by sqrt(scale); several masks are summed before they
are added to the logits); a query row with every key masked by -inf gives 0 instead of
NaN; a where with a finite fill f (e.g. finfo.min) becomes the additive mask 0 / f, i.e.
L + f instead of f where masked, and a constant 0 / f causal triangle counts as -inf:
both give exactly the same probabilities wherever a row has a visible key (exp underflows
to 0), and may differ only on rows with every key masked.

Counters: `recognize_attention` (instances rewritten), `attention_causal` (of which
is_causal), `attention_gqa` (of which with un-repeated K/V), `attention_skipped` (a
softmax-matmul that was looked at and left, the reason logged).

Preconditions: a verified graph; fold-constants (constant masks are constants) and
canonicalize (gemm is matmul, x - c is x + (-c)) have run. Ordering: right after
canonicalize, before fuse-sibling-matmuls and the clean-ups (CSE, DCE), and before
lower-attention and fuse.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import ml_dtypes
import numpy as np

from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops import get_op
from einfuse.ir.types import DType, dims_equal
from einfuse.passes.eliminate_dead_code import remove_dead
from einfuse.passes.manager import Pass, note_rules_fired, register_pass

log = logging.getLogger(__name__)

# Ops that only move elements (one data operand, everything else in attributes).
MOVEMENT = frozenset({"reshape", "transpose", "unsqueeze", "squeeze", "expand", "tile", "flatten", "identity"})
FLOATS = ("f32", "f16", "bf16", "f64")  # the float dtypes attention takes


class NotAttention(Exception):
    """Why a softmax-matmul is not rewritten (logged, never raised to the user)."""


@dataclass
class Source:
    """Where K or V really comes from: `value` [B, Hkv, M, D(v)] (or k^T to transpose back)."""

    value: Value
    repeat: int  # Hq / Hkv: how often each head was repeated on the way
    scale: float  # scalar factors met on the way
    transpose_back: bool = False  # value is k^T itself: a transpose is inserted


@dataclass
class MaskTerm:
    """One mask: additive float `value`, or boolean `value` keeping where `keep` (with `fill`)."""

    value: Value
    boolean: bool = False
    keep: bool = True  # for a boolean: True keeps where the condition holds
    fill: float = -np.inf
    fill_value: Value | None = None  # the where's constant holding `fill`, reused
    factor: float = 1.0  # scales applied after this mask: it enters attention as value * factor


@dataclass
class Found:
    """One recognized attention: what the `attention` node will read."""

    q: Value
    k: Source
    v: Source
    scale: float
    masks: list[MaskTerm] = field(default_factory=list)
    rank: int = 4
    precision: DType | None = None  # the softmax's dtype when it differs from q's


# -- small helpers --------------------------------------------------------------------------


def _is_float(v: Value) -> bool:
    return str(v.dtype) in FLOATS


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


def _single_use(graph: Graph, v: Value) -> bool:
    return not graph.is_output(v) and len(graph.users(v)) == 1


def _scalar(graph: Graph, v: Value) -> float | None:
    """The value of a one-element float constant, else None."""
    arr = graph.const_value(v)
    if arr is None or arr.size != 1 or not _is_float(v):
        return None
    return float(arr.reshape(()))


def _scale_step(graph: Graph, node: Node) -> tuple[Value, float] | None:
    """(x, factor) when `node` is x * c, c * x or x / c with c a scalar constant that does
    not widen x's shape; None otherwise."""
    if node.op not in ("mul", "div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    out = node.outputs[0]
    sides = [(a, b), (b, a)] if node.op == "mul" else [(a, b)]
    for x, c in sides:
        value = _scalar(graph, c)
        if value is None or x.is_const or not _same_shape(x.shape, out.shape) or x.dtype != out.dtype:
            continue
        if node.op == "div":
            return (x, 1.0 / value) if value != 0.0 else None
        return x, value
    return None


def _as_matmul(node: Node) -> tuple[Value, Value, bool] | None:
    """(a, b, transposed) when `node` computes a @ b (transposed: a @ b^T): a matmul, or a
    two-operand mul/sum einsum with a matmul's indices ("bhsd,bhmd->bhsm" is a @ b^T)."""
    if node.op == "matmul":
        return node.inputs[0], node.inputs[1], False
    if node.op != "einsum" or len(node.inputs) != 2 or "." in node.attrs["equation"]:
        return None
    if node.attrs["combine"] != "mul" or node.attrs["reduce"] != "sum":
        return None
    lhs, out = node.attrs["equation"].split("->")
    x, y = lhs.split(",")
    n = len(out)
    if not (len(x) == len(y) == n == len(set(out)) == len(set(x)) == len(set(y))) or n < 2:
        return None
    batch, i, j, r = out[:-2], out[-2], out[-1], x[-1]
    if x[:-2] != batch or y[:-2] != batch or x[-2] != i or r in out:
        return None
    if y[-2:] in (r + j, j + r):
        return node.inputs[0], node.inputs[1], y[-2:] == j + r
    return None


def _is_nonconst_scale(graph: Graph, node: Node) -> bool:
    """mul/div by a one-element operand that is not a constant (a runtime scale)."""
    if node.op not in ("mul", "div") or len(node.inputs) != 2:
        return False
    return any(x is not None and not x.is_const and all(d == 1 for d in x.shape) for x in node.inputs)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Right-aligned: every dim of `shape` is 1 or the target's, and the last one is exactly
    the target's (attention pads a short key axis with "masked" rather than broadcasting)."""
    if len(shape) > len(target) or not shape:
        return False
    for got, want in zip(shape[::-1], target[::-1]):
        if not (got == 1 or dims_equal(got, want)):
            return False
    return dims_equal(shape[-1], target[-1])


def _lowest(dtype) -> float:
    return float(ml_dtypes.finfo(dtype.np).min)


def _masked_fill(value: float, dtype) -> bool:
    """-inf, or finite but so negative that exp(logit + value - rowmax) underflows to 0."""
    return value == -np.inf or value <= _lowest(dtype) / 2


# -- K and V sources -------------------------------------------------------------------------


def _walk(graph: Graph, v: Value) -> list[tuple[Value, Node | None, float]]:
    """The chain below `v` through movement ops and scalar scales: [(value, node that
    produced the previous entry from it, factor)], starting with (v, None, 1.0)."""
    chain = [(v, None, 1.0)]
    while len(chain) < 32:
        node = graph.producer(chain[-1][0])
        if node is None:
            break
        if node.op in MOVEMENT and len(node.inputs) == 1:
            chain.append((node.inputs[0], node, 1.0))
            continue
        step = _scale_step(graph, node)
        if step is None:
            break
        chain.append((step[0], node, step[1]))
    return chain


PROBE_LIMIT = 1 << 23  # elements of the largest probe array (int32: 32 MiB)


def _probe(nodes: list[Node], shape: tuple) -> np.ndarray | None:
    """Runs the movement `nodes` (first to last) on an array of element indices."""
    size = int(np.prod(shape))
    if size > PROBE_LIMIT or any(int(np.prod(n.outputs[0].shape)) > PROBE_LIMIT for n in nodes):
        return None
    x = np.arange(size, dtype=np.int32).reshape(shape)
    for node in nodes:
        x = np.asarray(get_op(node.op).reference(x, **node.attrs))
    return x


def _repeat_kv(moves: list[Node], val: Value) -> tuple[int, bool] | None:
    """(n, transposed) when `moves` is torch's repeat_kv of a [B, Hkv, X, Y] value
    (unsqueeze at 2, expand to [B, Hkv, n, X, Y], reshape to [B, Hkv * n, X, Y]), then
    possibly a transpose of the last two axes: exact by construction, for any size."""
    if len(moves) not in (3, 4) or val.rank != 4:
        return None
    unsq, expand, reshape = moves[:3]
    b, hkv, x, y = val.shape
    if unsq.op != "unsqueeze" or tuple(unsq.attrs["axes"]) != (2,) or expand.op != "expand" or reshape.op != "reshape":
        return None
    shape5 = expand.outputs[0].shape
    if len(shape5) != 5 or not isinstance(shape5[2], int):
        return None
    n = shape5[2]
    if not _same_shape(shape5, (b, hkv, n, x, y)) or not _same_shape(reshape.outputs[0].shape, (b, hkv * n, x, y)):
        return None
    if len(moves) == 3:
        return n, False
    last = moves[3]
    if last.op == "transpose" and tuple(last.attrs["perm"]) == (0, 1, 3, 2):
        return n, True
    return None


def _sources(graph: Graph, top: Value, heads, tail: tuple, transposed: bool) -> list[Source]:
    """Every checked way `top` (k^T [.., Hq, D, M] when `transposed`, else v [.., Hq, M, Dv])
    comes from a [B, Hkv, M, D(v)] value, deepest first. Always includes `top` itself (k^T
    to transpose back), possibly below scalar scales."""
    chain = _walk(graph, top)
    found = []
    factor = 1.0
    for i, (val, _, f) in enumerate(chain):
        factor *= f
        # The movement ops from val up to top, in the order they run.
        moves = [n for _, n, _ in reversed(chain[1 : i + 1]) if n.op in MOVEMENT]
        if not moves:
            found.append(Source(val, 1, factor, transpose_back=transposed))
            continue
        fast = _repeat_kv(moves, val) if isinstance(heads, int) and val.rank == top.rank == 4 else None
        if fast is not None:
            n, swapped = fast
            # k^T = transpose(repeat(K)); or repeat(k^T-shaped value), transposed back; or v.
            if n * val.shape[1] == heads and (swapped == transposed or transposed):
                found.append(Source(val, n, factor, transpose_back=transposed and not swapped))
            continue
        if not (isinstance(heads, int) and heads and val.rank == top.rank):
            continue
        if not (val.type.is_static and top.type.is_static):
            continue
        hkv = val.shape[1] if top.rank == 4 else 1
        if hkv == 0 or heads % hkv or val.shape[0] != top.shape[0]:
            continue
        # val is K itself [.., M, D], or (for K) still k^T [.., D, M] repeated over heads.
        layouts = [False, True] if transposed else [False]
        for back in layouts:
            if tuple(val.shape[-2:]) != (tuple(tail[::-1]) if back else tuple(tail)):
                continue
            probe = _probe(moves, val.shape)
            if probe is None:
                continue
            want = np.arange(int(np.prod(val.shape))).reshape(val.shape)  # the probe's input
            if top.rank == 4:
                want = np.repeat(want, heads // hkv, axis=1)  # GQA: query head h reads kv head h // n
            if transposed and not back:
                want = np.swapaxes(want, -1, -2)
            if probe.shape == want.shape and np.array_equal(probe, want):
                found.append(Source(val, heads // hkv, factor, transpose_back=back))
                break
    return found[::-1]


def _pick(ks: list[Source], vs: list[Source]) -> tuple[Source, Source]:
    """The deepest K and V sources that agree on the head repetition (largest first)."""
    for n in sorted({s.repeat for s in ks} & {s.repeat for s in vs}, reverse=True):
        k = next(s for s in ks if s.repeat == n)
        v = next(s for s in vs if s.repeat == n)
        return k, v
    raise NotAttention("K and V are repeated differently")


# -- the logits ----------------------------------------------------------------------------


def _reaches_matmul(graph: Graph, v: Value, depth: int = 8) -> bool:
    """Is `v` (through adds, scales and wheres) computed from a matmul? Tells the logits
    operand of an add from the mask operand."""
    node = graph.producer(v)
    if node is None or depth == 0:
        return False
    if _as_matmul(node) is not None:
        return True
    if node.op == "add":
        return any(_reaches_matmul(graph, x, depth - 1) for x in node.inputs)
    if node.op == "where":
        return any(_reaches_matmul(graph, x, depth - 1) for x in node.inputs[1:])
    if node.op in ("mul", "div"):
        return _reaches_matmul(graph, node.inputs[0], depth - 1) or (
            node.op == "mul" and _reaches_matmul(graph, node.inputs[1], depth - 1)
        )
    return False


def _logits(graph: Graph, x: Value) -> tuple[Node, float, list[MaskTerm]]:
    """The q @ k^T matmul under the softmax input `x`, the scale on the logits, the masks."""
    masks: list[MaskTerm] = []
    scale = 1.0  # the product of the scales met so far: applied after what comes below
    v = x
    target = x.shape
    while True:
        node = graph.producer(v)
        if node is None:
            raise NotAttention(f"the softmax input %{v.name} is not computed from q @ k^T")
        if not _single_use(graph, v):
            raise NotAttention(f"the logits %{v.name} have other users")
        if _as_matmul(node) is not None:
            return node, scale, masks
        step = _scale_step(graph, node)
        if step is not None:
            v, scale = step[0], scale * step[1]
            continue
        if node.op == "add":
            a, b = node.inputs
            if _reaches_matmul(graph, a):
                logit, mask = a, b
            elif _reaches_matmul(graph, b):
                logit, mask = b, a
            else:
                raise NotAttention(f"%{node.outputs[0].name}: neither operand of the add comes from q @ k^T")
            if scale <= 0:
                raise NotAttention(f"%{node.outputs[0].name}: a mask under a non-positive scale")
            _check_mask(mask, logit, node, target, boolean=False)
            # (L + m) * s = L * s + m * s: a mask added before a scale is scaled with it.
            masks.append(MaskTerm(mask, factor=scale))
            v = logit
            continue
        if node.op == "where":
            cond, a, b = node.inputs
            fa, fb = _scalar(graph, a), _scalar(graph, b)
            if fb is not None and fa is None:
                logit, fill, keep, fill_value = a, fb, True, b
            elif fa is not None and fb is None:
                logit, fill, keep, fill_value = b, fa, False, a
            else:
                raise NotAttention(f"%{node.outputs[0].name}: a where that does not mask the logits with a constant")
            if not _masked_fill(fill, logit.dtype):
                raise NotAttention(f"%{node.outputs[0].name}: where fills with {fill}, not -inf or a huge negative")
            if scale != 1.0 and (fill != -np.inf or scale <= 0):
                # -inf * s = -inf for s > 0; a finite fill would have to stay "huge" once scaled.
                raise NotAttention(f"%{node.outputs[0].name}: a finite-fill where before a scale")
            _check_mask(cond, logit, node, target, boolean=True)
            masks.append(MaskTerm(cond, boolean=True, keep=keep, fill=fill, fill_value=fill_value))
            v = logit
            continue
        if _is_nonconst_scale(graph, node):
            raise NotAttention(f"%{node.outputs[0].name}: the logits are scaled by a non-constant")
        raise NotAttention(f"the logits come from {node.op} (%{node.outputs[0].name}), not from q @ k^T")


def _check_mask(mask: Value, logit: Value, node: Node, target: tuple, boolean: bool) -> None:
    out = node.outputs[0]
    where = f"%{out.name}"
    if not _same_shape(out.shape, logit.shape) or not _same_shape(out.shape, target):
        raise NotAttention(f"{where}: the mask {mask.type} widens the logits {logit.type}")
    if boolean and str(mask.dtype) != "bool":
        raise NotAttention(f"{where}: the where condition is {mask.type}, not bool")
    if not boolean and mask.dtype != logit.dtype:
        raise NotAttention(f"{where}: the mask {mask.type} has another dtype than the logits")
    if not _broadcasts_to(mask.shape, target):
        raise NotAttention(f"{where}: the mask {mask.type} does not broadcast to the logits {list(target)}")


# -- causal masks ----------------------------------------------------------------------------


def _mask_array(graph: Graph, m: MaskTerm) -> np.ndarray | None:
    """The value of a constant mask as attention will add it (times its factor), else None."""
    arr = graph.const_value(m.value)
    if arr is None or m.factor == 1.0 or m.boolean:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        return (arr.astype(np.float64) * m.factor).astype(arr.dtype)


def _causal_kind(graph: Graph, m: MaskTerm, dtype, s, mm) -> str | None:
    """The causal triangle a constant mask is exactly ("top_left" or "bottom_right"),
    "none" when it masks nothing, else None."""
    arr = _mask_array(graph, m)
    if arr is None or not isinstance(s, int) or not isinstance(mm, int) or arr.ndim < 2:
        return None
    if arr.shape[-1] != mm:
        return None
    flat = arr.reshape((-1,) + arr.shape[-2:])
    if not all(np.array_equal(flat[0], f) for f in flat[1:]):
        return None  # differs across batch or heads
    mat = np.broadcast_to(flat[0], (s, mm))
    if m.boolean:
        visible = mat if m.keep else ~mat
    else:
        visible = mat == 0
        with np.errstate(invalid="ignore"):
            masked = (mat == -np.inf) | (mat <= _lowest(dtype) / 2)
        if not np.all(visible | masked):
            return None
    if np.all(visible):
        return "none"  # masks nothing
    ones = np.ones((s, mm), dtype=bool)
    if np.array_equal(visible, np.tril(ones)):
        return "top_left"
    if mm > s and np.array_equal(visible, np.tril(ones, mm - s)):
        return "bottom_right"
    return None


# -- the analysis and the rewrite ------------------------------------------------------------


def _unguarded(graph: Graph, p: Value) -> Value:
    """The softmax under torch's NaN guard `where(is_nan(sm), 0, sm)` (exported for boolean
    masks), else `p`. attention already gives 0 for a row with every key masked, which is
    when the guard fires for finite logits."""
    node = graph.producer(p)
    if node is None or node.op != "where" or not _single_use(graph, p):
        return p
    cond, zero, sm = node.inputs
    guard = graph.producer(cond)
    if guard is None or guard.op != "is_nan" or guard.inputs[0] is not sm or _scalar(graph, zero) != 0.0:
        return p
    soft = graph.producer(_softmax_in(graph, sm)[0])
    if soft is None or soft.op != "softmax" or graph.is_output(sm) or not _single_use(graph, cond):
        return p
    if {id(u) for u in graph.users(sm)} != {id(node), id(guard)}:
        return p
    return sm


def _softmax_in(graph: Graph, p: Value) -> tuple[Value, Value, DType | None]:
    """(softmax output, its logits, precision): `cast(softmax(cast(x, f32)), t)` for 16-bit x
    (torch's softmax(..., dtype=float32).to(t)) is a softmax at precision f32."""
    node = graph.producer(p)
    if node is not None and node.op == "cast" and str(p.dtype) in ("f16", "bf16"):
        sm = node.inputs[0]
        soft = graph.producer(sm)
        if soft is not None and soft.op == "softmax" and sm.dtype == DType.f32 and _single_use(graph, sm):
            up = graph.producer(soft.inputs[0])
            up_ok = up is not None and up.op == "cast" and up.inputs[0].dtype == p.dtype
            if up_ok and _single_use(graph, soft.inputs[0]):
                return sm, up.inputs[0], DType.f32
    soft = graph.producer(p)
    return p, (soft.inputs[0] if soft is not None and soft.inputs else p), None


def analyse(graph: Graph, node: Node) -> Found:
    """The attention computed by `matmul(softmax(...), v)` at `node`, or NotAttention."""
    p, v_top, v_transposed = _as_matmul(node)
    if v_transposed:
        raise NotAttention("the probabilities multiply v^T (an einsum), not v")
    out = node.outputs[0]
    guarded = p
    p = _unguarded(graph, p)
    p, x, precision = _softmax_in(graph, p)
    soft = graph.producer(p)
    if soft is None or soft.op != "softmax":
        raise NotAttention("the left operand is not a softmax")
    rank = p.rank
    if rank not in (3, 4) or out.rank != rank or v_top.rank != rank:
        raise NotAttention(f"rank {rank} probabilities (3-D or 4-D attention only)")
    if soft.attrs["axis"] != rank - 1:
        raise NotAttention(f"the softmax is over axis {soft.attrs['axis']}, not the last one")
    if not _single_use(graph, guarded):
        raise NotAttention(f"the probabilities %{guarded.name} have other users")
    if not _is_float(x) or x.dtype != v_top.dtype:
        raise NotAttention(f"dtypes {x.dtype} and {v_top.dtype}")
    qk, lscale, masks = _logits(graph, x)
    q_top, kt, k_given = _as_matmul(qk)  # k_given: an einsum reads k itself, not k^T
    logits = qk.outputs[0]
    if logits.dtype != x.dtype or q_top.dtype != x.dtype or kt.dtype != x.dtype:
        raise NotAttention("q, k, v and the probabilities differ in dtype")
    if q_top.rank != rank or kt.rank != rank:
        raise NotAttention("q @ k^T broadcasts (q and k^T must have the rank of the logits)")
    q, qscale = q_top, 1.0
    while (prod := graph.producer(q)) is not None and (step := _scale_step(graph, prod)) is not None:
        q, qscale = step[0], qscale * step[1]
    heads = q.shape[1] if rank == 4 else 1
    d = q.shape[-1]
    m = logits.shape[-1]
    # No broadcasting in either matmul: every operand spells out the batch (and head) dims.
    k_tail = (m, d) if k_given else (d, m)
    if not (_same_shape(kt.shape, (*q.shape[:-2], *k_tail)) and _same_shape(v_top.shape[:-1], (*q.shape[:-2], m))):
        raise NotAttention(f"q {q.type}, k^T {kt.type} and v {v_top.type} are not plain batched attention")
    dv = v_top.shape[-1]
    ks = _sources(graph, kt, heads, (m, d), transposed=not k_given)
    vs = _sources(graph, v_top, heads, (m, dv), transposed=False)
    vs = [src for src in vs if src.scale == 1.0]  # a scale on v stays part of v
    k, v = _pick(ks, vs)
    scale = lscale * qscale * k.scale
    if not (np.isfinite(scale) and scale > 0):
        raise NotAttention(f"the scale {scale} is not positive (attention scales q and k by its square root)")
    return Found(q, k, v, scale, masks, rank, precision)


def _k_value(graph: Graph, src: Source, builder: Builder) -> Value:
    if not src.transpose_back:
        return src.value
    x, rank = src.value, src.value.rank
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    prod = graph.producer(x)
    if prod is not None and prod.op == "transpose":
        # transpose(transpose(y, p), swap) = transpose(y, p o swap): one transpose, or none.
        first = prod.attrs["perm"]
        perm = tuple(first[j] for j in swap)
        if perm == tuple(range(rank)):
            return prod.inputs[0]
        return builder.op("transpose", [prod.inputs[0]], perm=perm, out_names=[f"{x.name}.T"])
    return builder.op("transpose", [x], perm=swap, out_names=[f"{x.name}.T"])


def _mask_value(graph: Graph, masks: list[MaskTerm], dtype, rank: int, builder: Builder) -> Value | None:
    """One attn_mask for the remaining masks: a boolean alone stays boolean, else all are
    turned additive and summed."""
    if not masks:
        return None
    if len(masks) == 1 and masks[0].boolean and masks[0].fill == -np.inf:
        m = masks[0]
        value = m.value if m.keep else builder.op("not", [m.value])
        return _to4(value, rank, builder)
    total = None
    for m in masks:
        term = m.value
        if m.factor != 1.0:
            arr = _mask_array(graph, m)
            if arr is not None:
                term = builder.const(f"{m.value.name}.scaled", arr)
            else:
                term = builder.op("mul", [term, builder.const("mask_scale", np.asarray(m.factor, dtype.np))])
        if m.boolean:
            zero = builder.const("mask_zero", np.zeros((), dtype.np))
            fill = m.fill_value
            if fill.rank:
                fill = builder.const("mask_fill", np.asarray(m.fill, dtype.np))  # a scalar, not [1] etc.
            term = builder.op("where", [term, zero, fill] if m.keep else [term, fill, zero])
        total = term if total is None else builder.op("add", [total, term])
    return _to4(total, rank, builder)


def _to4(v: Value, rank: int, builder: Builder) -> Value:
    """A mask of the 3-D form [B*H, S, M] gets its head axis (rank <= 2 broadcasts as is)."""
    if rank == 3 and v.rank == 3:
        return _with_head_axis(v, builder)
    return v


def _with_head_axis(v: Value, builder: Builder) -> Value:
    return builder.op("unsqueeze", [v], axes=(1,), out_names=[f"{v.name}.4d"])


def rewrite_attention(graph: Graph, node: Node, found: Found, fired: Counter, bottom_right: bool = True) -> None:
    """Replaces `node` (matmul(P, V)) by the attention `found` describes."""
    out = node.outputs[0]
    builder = Builder(graph, before=node, name_hint=node.name)
    dtype = found.q.dtype
    s, m = found.q.shape[-2], node.inputs[0].shape[-1]
    causal = None
    masks = []
    for term in found.masks:
        kind = _causal_kind(graph, term, dtype, s, m)
        if kind == "none":
            continue
        if causal is None and (kind == "top_left" or (kind == "bottom_right" and bottom_right)):
            causal = kind
            continue
        masks.append(term)
    k = _k_value(graph, found.k, builder)
    q, v = found.q, found.v.value
    if found.rank == 3:
        q, k, v = (_with_head_axis(x, builder) for x in (q, k, v))
    mask = _mask_value(graph, masks, dtype, found.rank, builder)
    past = [None, None]
    if causal == "bottom_right":
        # attention aligns its causal mask bottom-right only behind a KV cache: the first
        # M - S keys and values become past_key / past_value (attention concatenates them back).
        past = [_keys(x, 0, m - s, builder, ".past") for x in (k, v)]
        k, v = (_keys(x, m - s, m, builder, ".new") for x in (k, v))
    y = builder.op(
        "attention",
        [q, k, v, mask, *past],
        scale=float(found.scale),
        is_causal=causal is not None,
        softmax_precision=found.precision or dtype,
    )
    if found.rank == 3:
        y = builder.op("squeeze", [y], axes=(1,))
    name = out.name
    graph.replace_all_uses(out, y)
    remove_dead(graph, [out])
    graph.rename(y, name)
    fired["recognize_attention"] += 1
    fired["attention_causal"] += causal is not None
    fired["attention_gqa"] += found.k.repeat > 1


def _keys(x: Value, start: int, end: int, builder: Builder, suffix: str) -> Value:
    """x[:, :, start:end]: a range of keys (or values)."""
    return builder.op(
        "slice", [x], starts=(start,), ends=(end,), axes=(2,), steps=(1,), out_names=[f"{x.name}{suffix}"]
    )


def recognize_attention(graph: Graph, bottom_right: bool = True) -> Counter:
    """Rewrites every recognized attention of `graph` (in place); returns the counters."""
    fired: Counter = Counter()
    for node in list(graph.nodes):
        if graph.producer(node.outputs[0]) is not node or _as_matmul(node) is None:
            continue  # already removed with an earlier instance, or not a matmul
        soft = graph.producer(_softmax_in(graph, _unguarded(graph, node.inputs[0]))[0])
        if soft is None or soft.op != "softmax":
            continue  # not a candidate: nothing to log
        try:
            found = analyse(graph, node)
        except NotAttention as e:
            log.info("recognize-attention: %s not rewritten: %s", node.label, e)
            fired["attention_skipped"] += 1
            continue
        rewrite_attention(graph, node, found, fired, bottom_right)
    return +fired


@register_pass
@dataclass(frozen=True)
class RecognizeAttention(Pass):
    """Rewrites softmax(q k^T * scale + mask) v, however it was exported, into the attention op."""

    name: ClassVar[str] = "recognize-attention"
    # A constant bottom-right causal triangle (M > S) becomes is_causal with the first M - S
    # keys as past_key/past_value; False keeps it as attn_mask.
    bottom_right: bool = True

    def run(self, graph: Graph) -> Graph:
        note_rules_fired(recognize_attention(graph, self.bottom_right))
        return graph
