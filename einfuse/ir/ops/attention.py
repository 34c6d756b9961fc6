"""Transformer-era ops (ONNX opsets 23-28): scaled dot-product attention, rotary position
embeddings, RMS normalisation, linear (recurrent) attention, the stateful causal depthwise
convolution, KV-cache scatter, bit reinterpretation and the cumulative product.

Conventions shared by the ops here:
- `attention` is the canonical 4-D form of ONNX Attention (and of FlexAttention without
  modifier subgraphs): q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv). The ONNX
  3-D packed layout and the present_key/present_value outputs are handled by the converter
  with reshape/transpose/concat. A later pass lowers it to an Einsum cascade.
- 16-bit floats compute in f32 and are rounded back to their own type at every point where
  the ONNX reference holds an intermediate of that type (after scaling, after each matmul,
  after each softmax step...). This matches numpy's own f16 arithmetic, which the ONNX
  expected outputs come from, so the conformance tolerances hold.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from einfuse.errors import ExecutionError
from einfuse.ir.ops import ELEMENTWISE, NORMALIZE, OPAQUE, Attr, register
from einfuse.ir.ops.elementwise import FLOAT, NUMERIC, check_dtype
from einfuse.ir.types import (
    DType,
    TensorType,
    broadcast_shapes,
    dim_known_ne,
    floordiv,
    simplify_dim,
)

_LOW_PRECISION = frozenset(
    np.dtype(d) for d in (np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
)


def _work(dt) -> np.dtype:
    """The dtype arithmetic on `dt` values runs in: f32 for 16- and 8-bit floats, else `dt`."""
    dt = np.dtype(dt)
    return np.dtype(np.float32) if dt in _LOW_PRECISION else dt


def _rnd(x, dt) -> np.ndarray:
    """x rounded to dtype `dt`, held in dt's work dtype (a no-op for f32/f64)."""
    dt = np.dtype(dt)
    x = np.asarray(x)
    if dt in _LOW_PRECISION:
        return x.astype(dt).astype(np.float32)
    return x.astype(dt, copy=False)


def _out(x, dt) -> np.ndarray:
    return np.asarray(x).astype(dt, copy=False)


def _check_same_dtype(ctx, i: int, dtype: DType, what: str) -> None:
    t = ctx.type(i)
    if t.dtype != dtype:
        raise ctx.error(f"{what} has dtype {t.dtype}, but {dtype} is needed (the dtype of the first operand)")


def _check_dim(ctx, got, want, what: str) -> None:
    if dim_known_ne(got, want):
        raise ctx.error(f"{what} is {got}, expected {want}")


def _check_rank(ctx, i: int, rank: int, what: str) -> TensorType:
    t = ctx.type(i)
    if t.rank != rank:
        raise ctx.error(f"{what} must have rank {rank}, got {t}")
    return t


# ---------------------------------------------------------------------------
# attention

QK_OUTPUTS = ("none", "raw", "softcap", "bias", "softmax")


def _attention_infer(ctx):
    q = _check_rank(ctx, 0, 4, "Q (batch, q_heads, q_seq, head_size)")
    k = _check_rank(ctx, 1, 4, "K (batch, kv_heads, kv_seq, head_size)")
    v = _check_rank(ctx, 2, 4, "V (batch, kv_heads, kv_seq, v_head_size)")
    dt = check_dtype(ctx, 0, FLOAT)
    _check_same_dtype(ctx, 1, dt, "K")
    _check_same_dtype(ctx, 2, dt, "V")
    b, hq, sq, d = q.shape
    _, hkv, skv, dk = k.shape
    dv = v.shape[3]
    _check_dim(ctx, k.shape[0], b, "the batch size of K")
    _check_dim(ctx, v.shape[0], b, "the batch size of V")
    if dim_known_ne(dk, d):
        raise ctx.error(f"Q head size {d} and K head size {dk} differ")
    _check_dim(ctx, v.shape[1], hkv, "the number of V heads (must equal K's)")
    _check_dim(ctx, v.shape[2], skv, "the sequence length of V (must equal K's)")
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv == 0 or hq % hkv):
        raise ctx.error(f"{hq} query heads are not a multiple of {hkv} key/value heads")

    total = skv
    if ctx.has(4) != ctx.has(5):
        raise ctx.error("past_key and past_value must be given together")
    if ctx.has(4):
        pk = _check_rank(ctx, 4, 4, "past_key (batch, kv_heads, past_seq, head_size)")
        pv = _check_rank(ctx, 5, 4, "past_value (batch, kv_heads, past_seq, v_head_size)")
        _check_same_dtype(ctx, 4, dt, "past_key")
        _check_same_dtype(ctx, 5, dt, "past_value")
        for t, what, last in ((pk, "past_key", d), (pv, "past_value", dv)):
            _check_dim(ctx, t.shape[0], b, f"the batch size of {what}")
            _check_dim(ctx, t.shape[1], hkv, f"the number of {what} heads")
            _check_dim(ctx, t.shape[3], last, f"the head size of {what}")
        _check_dim(ctx, pv.shape[2], pk.shape[2], "the sequence length of past_value (must equal past_key's)")
        total = simplify_dim(pk.shape[2] + skv)
    if ctx.has(6):
        if ctx.has(4):
            raise ctx.error("nonpad_kv_seqlen cannot be combined with past_key/past_value")
        n = _check_rank(ctx, 6, 1, "nonpad_kv_seqlen (batch,)")
        if n.dtype != DType.i64:
            raise ctx.error(f"nonpad_kv_seqlen must be i64, got {n}")
        _check_dim(ctx, n.shape[0], b, "the length of nonpad_kv_seqlen")
    if ctx.has(3):
        m = ctx.type(3)
        if m.dtype != DType.bool and m.dtype != dt:
            raise ctx.error(f"attn_mask must be bool or {dt} (the dtype of Q), got {m}")
        if not 1 <= m.rank <= 4:
            raise ctx.error(f"attn_mask must have rank 1 to 4, got {m}")
        target = (b, hq, sq, total)
        for got, want in zip(m.shape[:-1][::-1], target[:-1][::-1]):
            if not (isinstance(got, int) and got == 1) and dim_known_ne(got, want):
                raise ctx.error(f"attn_mask {m} does not broadcast to {list(target)}")
        last = m.shape[-1]
        # A shorter mask is padded with "masked" up to the total sequence length.
        if isinstance(last, int) and isinstance(total, int) and last > total:
            raise ctx.error(f"attn_mask {m} is longer than the total sequence length {total}")

    a = ctx.attrs
    if a["qk_output"] not in QK_OUTPUTS:
        raise ctx.error(f"qk_output={a['qk_output']!r} should be one of {', '.join(QK_OUTPUTS)}")
    if a["softcap"] < 0:
        raise ctx.error(f"softcap={a['softcap']} must be >= 0 (0 disables it)")
    if a["left_window_size"] < -1 or a["right_window_size"] < -1:
        raise ctx.error("left_window_size and right_window_size must be -1 (unbounded) or >= 0")
    if not a["softmax_precision"].is_float:
        raise ctx.error(f"softmax_precision={a['softmax_precision']} must be a float type")
    out = [TensorType((b, hq, sq, dv), dt)]
    if a["qk_output"] != "none":
        out.append(TensorType((b, hq, sq, total), dt))
    return out


def _allowed_offsets(sq: int, skv: int, offset) -> np.ndarray:
    """(i + offset) - j for query i and key j: (sq, skv) for a scalar offset, (B, 1, sq, skv)
    for per-batch offsets. Key j is causal-visible to query i iff this is >= 0."""
    i = np.arange(sq).reshape(sq, 1)
    j = np.arange(skv).reshape(1, skv)
    if np.ndim(offset) == 0:
        return (i + int(offset)) - j
    diff = (i + np.asarray(offset, np.int64).reshape(-1, 1, 1)) - j
    return diff.reshape(diff.shape[0], 1, sq, skv)


def _attention_bias(mask, nonpad, w, sq, skv, past, is_causal, left, right) -> np.ndarray:
    """The additive bias (0 or -inf, plus a float mask) in work dtype `w`, broadcastable to the
    logits; composed in the order of the ONNX reference so that NaN/inf propagate alike."""
    neg_inf = np.asarray(-np.inf, w)
    zero = np.asarray(0, w)
    bias = np.zeros((sq, skv), w)
    if mask is not None:
        short = skv - mask.shape[-1]
        if short < 0:
            raise ExecutionError(f"attention: attn_mask {list(mask.shape)} is longer than the {skv} keys")
        if short > 0:
            fill = False if mask.dtype == np.bool_ else -np.inf
            mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, short)], constant_values=fill)
        if mask.dtype == np.bool_:
            bias = bias + np.where(mask, zero, neg_inf)
        else:
            bias = bias + mask.astype(w)
    # Offset: keys valid before this query block (bottom-right alignment of the causal mask).
    if nonpad is not None:
        offset = nonpad.astype(np.int64) - sq
    else:
        offset = past
    if is_causal or left >= 0 or right >= 0:
        diff = _allowed_offsets(sq, skv, offset)
        if is_causal:
            bias = bias + np.where(diff >= 0, zero, neg_inf)
        if left >= 0 or right >= 0:
            ok = np.ones(diff.shape, np.bool_)
            if left >= 0:
                ok &= diff <= left
            if right >= 0:
                ok &= -diff <= right
            bias = bias + np.where(ok, zero, neg_inf)
    if nonpad is not None:
        valid = np.arange(skv) < nonpad.astype(np.int64).reshape(-1, 1)
        bias = bias + np.where(valid, zero, neg_inf).reshape(-1, 1, 1, skv)
    return bias


def _sum_last(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Sum over the last axis (keepdims) of values of dtype `dt`, held in its work dtype.

    numpy sums f16 in f32 and rounds once, but sums bfloat16 (an ml_dtypes type) one element
    at a time, rounding every partial sum; the ONNX expected outputs for bf16 attention come
    from the latter, and a bf16 ulp is wider than their tolerance, so both are mirrored."""
    if np.dtype(dt) != np.dtype(ml_dtypes.bfloat16):
        return _rnd(np.sum(x, axis=-1, keepdims=True), dt)
    acc = np.zeros(x.shape[:-1] + (1,), np.float32)
    for i in range(x.shape[-1]):
        acc = _rnd(acc + x[..., i : i + 1], dt)
    return acc


def _softmax(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Softmax over the last axis at precision `dt`; a row of only -inf gives zeros, not NaN."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), np.zeros((), x.dtype), m)
    e = _rnd(np.exp(_rnd(x - m, dt)), dt)
    s = _sum_last(e, dt)
    s = np.where(s == 0, np.ones((), s.dtype), s)
    return _rnd(e / s, dt)


@register(
    "attention",
    family=OPAQUE,
    inputs=(3, 7),
    attrs={
        "scale": Attr("float"),
        "is_causal": Attr("bool", False),
        "softcap": Attr("float", 0.0),
        "softmax_precision": Attr("dtype"),
        "left_window_size": Attr("int", -1),
        "right_window_size": Attr("int", -1),
        "qk_output": Attr("str", "none"),
    },
    outputs=lambda attrs: 1 if attrs.get("qk_output", "none") == "none" else 2,
    infer=_attention_infer,
)
def attention(
    q,
    k,
    v,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    scale,
    is_causal,
    softcap,
    softmax_precision,
    left_window_size,
    right_window_size,
    qk_output,
):
    """softmax(softcap(q k^T * scale) + mask) v over 4-D heads, with GQA, a KV cache, causal and
    sliding-window masks; optionally also returns the QK logits at stage `qk_output`."""
    t = q.dtype
    w = _work(t)
    past = 0
    if past_key is not None:
        past = past_key.shape[2]
        k = np.concatenate([past_key, k], axis=2)
        v = np.concatenate([past_value, v], axis=2)
    hq, sq = q.shape[1], q.shape[2]
    hkv, skv = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise ExecutionError(f"attention: {hq} query heads are not a multiple of {hkv} key/value heads")
    bias = _attention_bias(
        attn_mask, nonpad_kv_seqlen, w, sq, skv, past, is_causal, left_window_size, right_window_size
    )
    if hq != hkv:
        # GQA: query head h reads key/value head h // (hq / hkv).
        k = np.repeat(k, hq // hkv, axis=1)
        v = np.repeat(v, hq // hkv, axis=1)

    # Q and K are each scaled by sqrt(scale) (rounded to T), which keeps q k^T in range.
    s = _rnd(np.sqrt(scale), t)
    qs = _rnd(q.astype(w) * s, t)
    ks = _rnd(k.astype(w) * s, t)
    logits = _rnd(np.matmul(qs, np.swapaxes(ks, -1, -2)), t)
    # "raw" is the uncapped q k^T, as the ONNX spec and onnxruntime say (the ONNX reference
    # implementation returns the capped logits there; no conformance case tells them apart).
    qk = logits
    if softcap > 0:
        c = _rnd(softcap, t)
        logits = _rnd(_rnd(np.tanh(_rnd(logits / c, t)), t) * c, t)
    if qk_output == "softcap":
        qk = logits
    logits = _rnd(logits + bias, t)
    if qk_output == "bias":
        qk = logits

    p = softmax_precision.np
    if skv == 0:
        probs = np.zeros(logits.shape, _work(p))
    else:
        probs = _softmax(_rnd(logits, p), p)
        # A query row with no attendable key (decided on the bias, not on possibly NaN logits)
        # gives zeros, in Y and in the softmax output alike.
        no_key = np.isneginf(np.max(bias, axis=-1, keepdims=True))
        probs = np.where(no_key, np.zeros((), probs.dtype), probs)
    if qk_output == "softmax":
        qk = probs
    y = _out(np.matmul(_rnd(probs, t), v.astype(w)), t)
    if qk_output == "none":
        return y
    return y, _out(qk, t)


# ---------------------------------------------------------------------------
# rotary_embedding


def _rotary_infer(ctx):
    x = ctx.type(0)
    dt = check_dtype(ctx, 0, FLOAT)
    a = ctx.attrs
    if x.rank == 4:
        b, _, s, head = x.shape
    elif x.rank == 3:
        b, s, hidden = x.shape
        if a["num_heads"] <= 0:
            raise ctx.error("a 3-D input (batch, seq, hidden) needs num_heads > 0")
        if isinstance(hidden, int) and hidden % a["num_heads"]:
            raise ctx.error(f"hidden size {hidden} is not a multiple of num_heads={a['num_heads']}")
        head = floordiv(hidden, a["num_heads"])
    else:
        raise ctx.error(f"input must be (batch, heads, seq, head_size) or (batch, seq, hidden), got {x}")
    rd = a["rotary_embedding_dim"]
    if rd <= 0 or rd % 2:
        raise ctx.error(f"rotary_embedding_dim={rd} must be a positive even number")
    if isinstance(head, int) and rd > head:
        raise ctx.error(f"rotary_embedding_dim={rd} is larger than the head size {head}")
    for i, what in ((1, "cos_cache"), (2, "sin_cache")):
        _check_same_dtype(ctx, i, dt, what)
        c = ctx.type(i)
        if ctx.has(3):
            if c.rank != 2:
                raise ctx.error(f"with position_ids, {what} must be (max_position, {rd // 2}), got {c}")
        elif c.rank != 3:
            raise ctx.error(f"without position_ids, {what} must be (batch, seq, {rd // 2}), got {c}")
        else:
            _check_dim(ctx, c.shape[0], b, f"the batch size of {what}")
            _check_dim(ctx, c.shape[1], s, f"the sequence length of {what}")
        _check_dim(ctx, c.shape[-1], rd // 2, f"the last dim of {what} (rotary_embedding_dim / 2)")
    if ctx.has(3):
        p = _check_rank(ctx, 3, 2, "position_ids (batch, seq)")
        if p.dtype != DType.i64:
            raise ctx.error(f"position_ids must be i64, got {p}")
        _check_dim(ctx, p.shape[0], b, "the batch size of position_ids")
        _check_dim(ctx, p.shape[1], s, "the sequence length of position_ids")
    return [x]


@register(
    "rotary_embedding",
    family=OPAQUE,
    inputs=(3, 4),
    attrs={"interleaved": Attr("bool", False), "rotary_embedding_dim": Attr("int"), "num_heads": Attr("int", 0)},
    infer=_rotary_infer,
)
def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, *, interleaved, rotary_embedding_dim, num_heads):
    """RoPE: rotates the first rotary_embedding_dim features of each head (halves, or even/odd
    pairs when interleaved) by the angles in the caches, looked up by position_ids."""
    t = x.dtype
    w = _work(t)
    if x.ndim == 4:
        xb = np.swapaxes(x, 1, 2)  # (B, S, H, D)
    else:
        b, s, hidden = x.shape
        xb = x.reshape(b, s, num_heads, hidden // num_heads)
    rd, half = rotary_embedding_dim, rotary_embedding_dim // 2
    if position_ids is not None:
        n = cos_cache.shape[0]
        if position_ids.size and (position_ids.min() < 0 or position_ids.max() >= min(n, sin_cache.shape[0])):
            raise ExecutionError(f"rotary_embedding: a position id is outside the caches' {n} positions")
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    cos = cos_cache.astype(w)[:, :, None, :]
    sin = sin_cache.astype(w)[:, :, None, :]
    xr = xb[..., :rd].astype(w)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    real = _rnd(_rnd(cos * x1, t) - _rnd(sin * x2, t), t)
    imag = _rnd(_rnd(sin * x1, t) + _rnd(cos * x2, t), t)
    if interleaved:
        rot = np.stack([real, imag], axis=-1).reshape(xr.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    yb = np.concatenate([rot.astype(t), xb[..., rd:]], axis=-1)
    if x.ndim == 4:
        return np.ascontiguousarray(np.swapaxes(yb, 1, 2))
    return yb.reshape(x.shape)


# ---------------------------------------------------------------------------
# rms_norm


def _rms_norm_infer(ctx):
    x = ctx.type(0)
    dt = check_dtype(ctx, 0, FLOAT)
    _check_same_dtype(ctx, 1, dt, "scale")
    axis = ctx.attrs["axis"]
    if not 0 <= axis < x.rank:
        raise ctx.error(f"axis={axis} is out of range for rank {x.rank}")
    if not ctx.attrs["stash_type"].is_float:
        raise ctx.error(f"stash_type={ctx.attrs['stash_type']} must be a float type")
    s = ctx.type(1)
    try:
        ok = s.rank <= x.rank - axis and broadcast_shapes(x.shape, s.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ctx.error(f"scale {s} does not broadcast to the normalised dims {list(x.shape[axis:])}")
    return [x]


@register(
    "rms_norm",
    family=NORMALIZE,
    inputs=2,
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("dtype", DType.f32)},
    infer=_rms_norm_infer,
)
def rms_norm(x, scale, *, axis, epsilon, stash_type):
    """x / sqrt(mean(x^2 over dims axis..) + epsilon), then * scale. The statistics use at least
    stash_type's precision (f64 inputs stay f64, like layer_norm and onnxruntime)."""
    st = np.promote_types(stash_type.np, x.dtype)
    axes = tuple(range(axis, x.ndim))
    xs = _rnd(x, st)
    mean = _rnd(np.mean(_rnd(xs * xs, st), axis=axes, keepdims=True), st)
    eps = _rnd(np.float32(epsilon), st)  # an f32 constant cast to the stash type, as in the function body
    rms = _rnd(np.sqrt(_rnd(mean + eps, st)), st)
    normalized = _rnd(_rnd(xs / rms, st), x.dtype)
    return _out(_rnd(normalized * scale.astype(_work(x.dtype)), x.dtype), x.dtype)


# ---------------------------------------------------------------------------
# linear_attention

UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


def _linear_attention_infer(ctx):
    a = ctx.attrs
    hq, hkv, rule = a["q_num_heads"], a["kv_num_heads"], a["update_rule"]
    if rule not in UPDATE_RULES:
        raise ctx.error(f"update_rule={rule!r} should be one of {', '.join(UPDATE_RULES)}")
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ctx.error(f"q_num_heads={hq} must be a positive multiple of kv_num_heads={hkv}")
    q = _check_rank(ctx, 0, 3, "query (batch, seq, q_heads * d_k)")
    k = _check_rank(ctx, 1, 3, "key (batch, seq, kv_heads * d_k)")
    v = _check_rank(ctx, 2, 3, "value (batch, seq, kv_heads * d_v)")
    dt = check_dtype(ctx, 0, FLOAT)
    _check_same_dtype(ctx, 1, dt, "key")
    _check_same_dtype(ctx, 2, dt, "value")
    b, s, qh = q.shape
    for t, what in ((k, "key"), (v, "value")):
        _check_dim(ctx, t.shape[0], b, f"the batch size of {what}")
        _check_dim(ctx, t.shape[1], s, f"the sequence length of {what}")
    for dim, heads, what in ((qh, hq, "query"), (v.shape[2], hkv, "value")):
        if isinstance(dim, int) and dim % heads:
            raise ctx.error(f"the {what} width {dim} is not a multiple of its {heads} heads")
    dk, dv = floordiv(qh, hq), floordiv(v.shape[2], hkv)
    if dim_known_ne(k.shape[2], hkv * dk):
        raise ctx.error(f"key width {k.shape[2]} should be kv_num_heads * d_k = {hkv} * {dk}")
    state = (b, hkv, dk, dv)
    state_dtype = dt
    if ctx.has(3):
        p = _check_rank(ctx, 3, 4, "past_state (batch, kv_heads, d_k, d_v)")
        check_dtype(ctx, 3, FLOAT)
        for got, want in zip(p.shape, state):
            if dim_known_ne(got, want):
                raise ctx.error(f"past_state {p} should have shape {list(state)}")
        state_dtype = p.dtype
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    for i, what, needed, widths in ((4, "decay", gated, (hkv, hkv * dk)), (5, "beta", delta, (hkv, 1))):
        if needed != ctx.has(i):
            raise ctx.error(f"update_rule={rule!r} {'needs' if needed else 'forbids'} the {what} operand")
        if not needed:
            continue
        t = _check_rank(ctx, i, 3, f"{what} (batch, seq, width)")
        _check_same_dtype(ctx, i, dt, what)
        _check_dim(ctx, t.shape[0], b, f"the batch size of {what}")
        _check_dim(ctx, t.shape[1], s, f"the sequence length of {what}")
        if all(dim_known_ne(t.shape[2], wd) for wd in widths):
            raise ctx.error(f"the {what} width {t.shape[2]} should be {' or '.join(str(wd) for wd in widths)}")
    return [TensorType((b, s, simplify_dim(hq * dv)), dt), TensorType(state, state_dtype)]


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, H*D) -> (B, H, T, D) in f32."""
    b, t, hd = x.shape
    return x.reshape(b, t, heads, hd // heads).transpose(0, 2, 1, 3).astype(np.float32)


@register(
    "linear_attention",
    family=OPAQUE,
    inputs=(3, 6),
    attrs={
        "q_num_heads": Attr("int"),
        "kv_num_heads": Attr("int"),
        "scale": Attr("float"),
        "update_rule": Attr("str", "gated_delta"),
    },
    outputs=2,
    infer=_linear_attention_infer,
)
def linear_attention(
    query, key, value, past_state=None, decay=None, beta=None, *, q_num_heads, kv_num_heads, scale, update_rule
):
    """Recurrent linear attention over packed heads: S_t = exp(g_t) S_{t-1} + k_t (x) v_t' (gating and
    delta rule per update_rule), o_t = scale * q_t S_t; returns the outputs and the final state.
    Runs in f32 whatever the input types."""
    b, steps, _ = query.shape
    q4, k4, v4 = _heads(query, q_num_heads), _heads(key, kv_num_heads), _heads(value, kv_num_heads)
    dk, dv = k4.shape[3], v4.shape[3]
    group = q_num_heads // kv_num_heads
    if decay is not None:
        if decay.shape[2] == kv_num_heads:  # one decay per head
            g4 = decay.reshape(b, steps, kv_num_heads, 1).transpose(0, 2, 1, 3).astype(np.float32)
        else:  # one decay per key dim
            g4 = _heads(decay, kv_num_heads)
    if beta is not None:
        beta4 = beta.reshape(b, steps, beta.shape[2], 1).transpose(0, 2, 1, 3).astype(np.float32)
    if past_state is not None:
        state = past_state.astype(np.float32)
        state_dtype = past_state.dtype
    else:
        state = np.zeros((b, kv_num_heads, dk, dv), np.float32)
        state_dtype = query.dtype
    out = np.zeros((b, q_num_heads, steps, dv), np.float32)
    for i in range(steps):
        kt, vt = k4[:, :, i, :], v4[:, :, i, :]
        if decay is not None:
            state = state * np.exp(g4[:, :, i, :])[..., None]
        if beta is not None:
            retrieved = np.einsum("bhdm,bhd->bhm", state, kt)
            vt = beta4[:, :, i, :] * (vt - retrieved)
        state = state + kt[..., :, None] * vt[..., None, :]
        read = state if group == 1 else np.repeat(state, group, axis=1)
        out[:, :, i, :] = np.float32(scale) * np.einsum("bhd,bhdm->bhm", q4[:, :, i, :], read)
    y = out.transpose(0, 2, 1, 3).reshape(b, steps, q_num_heads * dv)
    return _out(y, query.dtype), _out(state, state_dtype)


# ---------------------------------------------------------------------------
# causal_conv_with_state

ACTIVATIONS = ("none", "silu")


def _causal_conv_infer(ctx):
    x = _check_rank(ctx, 0, 3, "input (batch, channels, length)")
    dt = check_dtype(ctx, 0, FLOAT)
    wt = _check_rank(ctx, 1, 3, "weight (channels, 1, kernel)")
    _check_same_dtype(ctx, 1, dt, "weight")
    b, c, _ = x.shape
    _check_dim(ctx, wt.shape[0], c, "the number of weight channels")
    _check_dim(ctx, wt.shape[1], 1, "the second weight dim (depthwise)")
    kernel = wt.shape[2]
    if isinstance(kernel, int) and kernel < 1:
        raise ctx.error("the kernel size must be at least 1")
    carry = simplify_dim(kernel - 1)
    if ctx.has(2):
        bias = _check_rank(ctx, 2, 1, "bias (channels,)")
        _check_same_dtype(ctx, 2, dt, "bias")
        _check_dim(ctx, bias.shape[0], c, "the bias length")
    if ctx.has(3):
        p = _check_rank(ctx, 3, 3, "past_state (batch, channels, kernel - 1)")
        _check_same_dtype(ctx, 3, dt, "past_state")
        _check_dim(ctx, p.shape[0], b, "the batch size of past_state")
        _check_dim(ctx, p.shape[1], c, "the channels of past_state")
        _check_dim(ctx, p.shape[2], carry, "the length of past_state (kernel - 1)")
    if ctx.attrs["activation"] not in ACTIVATIONS:
        raise ctx.error(f"activation={ctx.attrs['activation']!r} should be one of {', '.join(ACTIVATIONS)}")
    return [x, TensorType((b, c, carry), dt)]


@register(
    "causal_conv_with_state",
    family=OPAQUE,
    inputs=(2, 4),
    attrs={"activation": Attr("str", "none")},
    outputs=2,
    infer=_causal_conv_infer,
)
def causal_conv_with_state(x, weight, bias=None, past_state=None, *, activation):
    """Causal depthwise conv1d over [past_state | x] (zeros without a state), optional fused SiLU;
    also returns the last kernel-1 positions as the next state."""
    t = x.dtype
    b, c, length = x.shape
    kernel = weight.shape[2]
    pad = np.zeros((b, c, kernel - 1), t) if past_state is None else past_state
    padded = np.concatenate([pad, x], axis=2)
    pw = padded.astype(_work(t))
    ww = weight.astype(_work(t))[:, 0, :]  # (C, K)
    acc = np.zeros((b, c, length), _work(t))
    for j in range(kernel):
        acc += pw[:, :, j : j + length] * ww[None, :, j : j + 1]
    if bias is not None:
        acc += bias.astype(_work(t))[None, :, None]
    y = _rnd(acc, t)
    if activation == "silu":
        y32 = y.astype(np.float32)
        y = y32 * (1.0 / (1.0 + np.exp(-y32)))
    state = padded[:, :, padded.shape[2] - (kernel - 1) :]
    return _out(y, t), np.ascontiguousarray(state)


# ---------------------------------------------------------------------------
# tensor_scatter

SCATTER_MODES = ("linear", "circular")


def _tensor_scatter_infer(ctx):
    cache, upd = ctx.type(0), ctx.type(1)
    axis = ctx.attrs["axis"]
    if cache.rank < 2:
        raise ctx.error(f"past_cache must have rank >= 2 (batch, ..., seq, ...), got {cache}")
    if not 1 <= axis < cache.rank:
        raise ctx.error(f"axis={axis} must name a non-batch axis of rank {cache.rank}")
    if ctx.attrs["mode"] not in SCATTER_MODES:
        raise ctx.error(f"mode={ctx.attrs['mode']!r} should be one of {', '.join(SCATTER_MODES)}")
    _check_same_dtype(ctx, 1, cache.dtype, "update")
    if upd.rank != cache.rank:
        raise ctx.error(f"update {upd} must have the rank of past_cache {cache}")
    for i, (u, c) in enumerate(zip(upd.shape, cache.shape)):
        if i == axis:
            if isinstance(u, int) and isinstance(c, int) and u > c:
                raise ctx.error(f"update {upd} is longer than past_cache {cache} along axis {axis}")
        elif dim_known_ne(u, c):
            raise ctx.error(f"update {upd} and past_cache {cache} differ in dim {i}")
    if ctx.has(2):
        wi = _check_rank(ctx, 2, 1, "write_indices (batch,)")
        if wi.dtype != DType.i64:
            raise ctx.error(f"write_indices must be i64, got {wi}")
        _check_dim(ctx, wi.shape[0], cache.shape[0], "the length of write_indices")
    return [cache]


@register(
    "tensor_scatter",
    family=OPAQUE,
    inputs=(2, 3),
    attrs={"axis": Attr("int"), "mode": Attr("str", "linear")},
    infer=_tensor_scatter_infer,
)
def tensor_scatter(past_cache, update, write_indices=None, *, axis, mode):
    """KV-cache write: past_cache with update written along `axis` from write_indices[b] on
    (wrapping around the cache in circular mode)."""
    out = np.array(past_cache, copy=True)
    cap, n = past_cache.shape[axis], update.shape[axis]
    view = np.moveaxis(out, axis, 1)  # (B, cap, ...), writes go through to `out`
    src = np.moveaxis(update, axis, 1)
    for b in range(past_cache.shape[0]):
        start = 0 if write_indices is None else int(write_indices[b])
        idx = start + np.arange(n)
        rows = src[b]
        if mode == "circular" and n:
            if cap == 0:
                raise ExecutionError("tensor_scatter: cannot write into an empty circular cache")
            # Only the last `cap` rows survive a wrap-around; keep the indices distinct.
            idx, rows = idx[-cap:] % cap, rows[-cap:]
        elif n and (start < 0 or start + n > cap):
            raise ExecutionError(
                f"tensor_scatter: writing {n} rows at index {start} overflows the cache of {cap} (batch {b})"
            )
        view[b, idx] = rows
    return out


# ---------------------------------------------------------------------------
# bit_cast


def _bit_cast_infer(ctx):
    x = ctx.type(0)
    to = ctx.attrs["to"]
    if x.dtype.itemsize != to.itemsize:
        raise ctx.error(f"cannot reinterpret {x.dtype} ({8 * x.dtype.itemsize} bits) as {to} ({8 * to.itemsize} bits)")
    return [x.with_dtype(to)]


@register("bit_cast", family=ELEMENTWISE, inputs=1, attrs={"to": Attr("dtype")}, infer=_bit_cast_infer)
def bit_cast(x, *, to):
    """x's bits reinterpreted as dtype `to` (same width, little endian)."""
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one.)
    x = x if x.flags.c_contiguous else x.copy(order="C")
    return x.view(to.np)


# ---------------------------------------------------------------------------
# cum_prod


def _cum_prod_infer(ctx):
    check_dtype(ctx, 0, NUMERIC)
    t = ctx.type(0)
    if not 0 <= ctx.attrs["axis"] < t.rank:
        raise ctx.error(f"axis {ctx.attrs['axis']} is out of range for rank {t.rank}")
    return [t]


# A scan, like cumsum.
@register(
    "cum_prod",
    family=OPAQUE,
    inputs=1,
    attrs={"axis": Attr("int"), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)},
    infer=_cum_prod_infer,
)
def cum_prod(x, *, axis, exclusive, reverse):
    """running product along axis; exclusive leaves out the element itself; reverse runs from the end"""
    a = np.moveaxis(x.astype(_work(x.dtype), copy=False), axis, 0)
    if reverse:
        a = a[::-1]
    c = np.cumprod(a, axis=0, dtype=a.dtype)
    if exclusive:
        shifted = np.ones_like(c)
        shifted[1:] = c[:-1]
        c = shifted
    if reverse:
        c = c[::-1]
    return _out(np.moveaxis(c, 0, axis), x.dtype)
