"""`einsum_cascade`: attention as a cascade of extended Einsums (FuseMax).

    %o = einsum_cascade(%q, %k, %v[, %bias]) {cascade=("...", ...), scale=0.125, causal="none",
                                              kv_tile=0, kv_splits=1} : f32[B,Hq,S,Dv]

- q [B, Hq, S, D], k [B, Hkv, M, D], v [B, Hkv, M, Dv], one float dtype (f32, f16, bf16 or
  f64); Hq % Hkv == 0 (query head h reads kv head h // (Hq // Hkv)). Dims may be symbolic.
- bias (optional): additive, q's dtype or f32, rank 4, each dim 1 or equal to [B, Hq, S, M].
- cascade: one statement per string in the notation of einfuse.ir.einsum; its inputs are
  Q, K, V and (with a bias operand) BIAS, its parameters `scale` and the sizes G (= Hq //
  Hkv), M and P (key and query lengths). The reference EVALUATES THE CASCADE, so every
  rewrite of it is checked against the `attention` reference in the tests.
- causal ("none" | "top_left" | "bottom_right"), kv_tile (0 = untiled) and kv_splits (1 = no
  decode split) describe the cascade for kernels; the cascade text is the semantics, and
  inference checks that they agree with it (its causal map, its sizes M0 and C). einfuse.ir.einsum.attention_cascade
  builds the text from the same parameters.
- A query row whose keys are all masked gives 0 (the cascades guard their max and
  denominator). 16-bit floats compute in f32 and round the output once.
"""

from __future__ import annotations

import numpy as np

from einfuse.errors import ExecutionError
from einfuse.ir.einsum import CAUSAL, CascadeError, Name, Num, accesses, causal_of, evaluate, parse_cascade
from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.ops.attention import _check_dim, _check_rank
from einfuse.ir.types import DType, TensorType, dim_known_ne

FLOAT_TYPES = (DType.f32, DType.f16, DType.bf16, DType.f64)


def _rank4(ctx, i: int, what: str) -> TensorType:
    return _check_rank(ctx, i, 4, what)


def _cascade_sizes(c) -> dict:
    return {name: e.value for name, e in c.sizes.items() if isinstance(e, Num)}


def _infer(ctx):
    q = _rank4(ctx, 0, "q (batch, q_heads, q_len, head_dim)")
    k = _rank4(ctx, 1, "k (batch, kv_heads, kv_len, head_dim)")
    v = _rank4(ctx, 2, "v (batch, kv_heads, kv_len, v_head_dim)")
    dt = q.dtype
    if dt not in FLOAT_TYPES:
        raise ctx.error(f"q must be f32, f16, bf16 or f64, got {q}")
    for t, what in ((k, "k"), (v, "v")):
        if t.dtype != dt:
            raise ctx.error(f"{what} has dtype {t.dtype}, but q is {dt}")
    b, hq, s, d = q.shape
    _, hkv, m, _ = k.shape
    _check_dim(ctx, k.shape[0], b, "the batch size of k")
    _check_dim(ctx, v.shape[0], b, "the batch size of v")
    _check_dim(ctx, k.shape[3], d, "the head dim of k")
    _check_dim(ctx, v.shape[1], hkv, "the number of v heads")
    _check_dim(ctx, v.shape[2], m, "the length of v")
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv == 0 or hq % hkv):
        raise ctx.error(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    has_bias = ctx.has(3)
    if has_bias:
        bias = _rank4(ctx, 3, "bias (batch, q_heads, q_len, kv_len)")
        if bias.dtype not in (dt, DType.f32):
            allowed = " or ".join(dict.fromkeys((str(dt), "f32")))
            raise ctx.error(f"bias must be {allowed}, got {bias}")
        for got, want, what in zip(bias.shape, (b, hq, s, m), ("batch", "heads", "query", "key")):
            if not (isinstance(got, int) and got == 1) and dim_known_ne(got, want):
                raise ctx.error(f"bias {bias} must have 1 or {want} in its {what} dim")

    a = ctx.attrs
    if a["causal"] not in CAUSAL:
        raise ctx.error(f"causal={a['causal']!r} should be one of {', '.join(CAUSAL)}")
    if a["kv_tile"] < 0:
        raise ctx.error(f"kv_tile={a['kv_tile']} must be >= 0 (0: untiled)")
    if a["kv_splits"] < 1:
        raise ctx.error(f"kv_splits={a['kv_splits']} must be >= 1 (1: no split)")
    try:
        c = parse_cascade(a["cascade"])
    except CascadeError as e:
        raise ctx.error(f"bad cascade: {e}") from None
    want = ["Q", "K", "V"] + (["BIAS"] if has_bias else [])
    if sorted(c.inputs) != sorted(want):
        raise ctx.error(f"the cascade reads {', '.join(c.inputs)}, but the operands are {', '.join(want)}")
    sizes = _cascade_sizes(c)
    if sizes.get("M0", 0) != a["kv_tile"]:
        raise ctx.error(f"kv_tile={a['kv_tile']} but the cascade's key tile M0 is {sizes.get('M0', 'absent')}")
    if sizes.get("C", 1) != a["kv_splits"]:
        raise ctx.error(f"kv_splits={a['kv_splits']} but the cascade's chunk count C is {sizes.get('C', 'absent')}")
    if causal_of(c) != a["causal"]:
        raise ctx.error(f"causal={a['causal']!r} but the cascade masks as {causal_of(c)!r}")
    if isinstance(hq, int) and isinstance(hkv, int) and hq != hkv:
        for st in c.tensor_statements:
            for acc in _reads(st.expr, ("K", "V")):
                if acc.indices[1] == Name("h"):
                    raise ctx.error(
                        f"{hq} query heads share {hkv} kv heads, but the cascade reads {acc.tensor} at head h "
                        "(grouped attention reads head h//G)"
                    )
    return [TensorType((b, hq, s, v.shape[3]), dt)]


def _reads(e, tensors):
    return [x for x in accesses(e) if x.tensor in tensors]


@register(
    "einsum_cascade",
    family=OPAQUE,
    inputs=(3, 4),
    attrs={
        "cascade": Attr("strs"),
        "scale": Attr("float"),
        "causal": Attr("str", "none"),
        "kv_tile": Attr("int", 0),
        "kv_splits": Attr("int", 1),
    },
    infer=_infer,
)
def einsum_cascade(q, k, v, bias=None, *, cascade, scale, causal, kv_tile, kv_splits):
    """Attention computed by evaluating its extended-Einsum cascade (einfuse.ir.einsum.evaluate)."""
    hq, hkv = q.shape[1], k.shape[1]
    if hkv == 0 or hq % hkv:  # symbolic head counts are only checked here
        raise ExecutionError(f"einsum_cascade: {hq} query heads are not a multiple of {hkv} key/value heads")
    out = evaluate(
        parse_cascade(cascade),
        Q=q,
        K=k,
        V=v,
        BIAS=bias,
        scale=float(scale),
        G=hq // hkv,
        M=k.shape[2],
        P=q.shape[2],
    )
    return np.asarray(out).astype(q.dtype, copy=False)
