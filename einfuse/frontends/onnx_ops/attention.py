"""Converters for the transformer-era ONNX ops (see einfuse/ir/ops/attention.py).

- Attention (opsets 23-25) becomes the 4-D core `attention`: 3-D packed Q/K/V are split into
  heads with reshape + transpose (and Y merged back), present_key/present_value are a concat
  of the past and the new keys/values, and every default is filled (scale, softmax precision).
- FlexAttention (domain ai.onnx.preview) without modifier subgraphs is the same core op; its
  score_mod/prob_mod subgraphs are refused.
- SwiGLU is written with the elementwise ops (like Swish, which the elementwise group converts).
- RotaryEmbedding, RMSNormalization, LinearAttention, CausalConvWithState, TensorScatter,
  BitCast and CumProd map onto one core op each with normalised attributes.
"""

from __future__ import annotations

import math

import numpy as np

from einfuse.frontends.onnx import ONNX_TO_DTYPE
from einfuse.frontends.onnx_ops import converter
from einfuse.ir.types import DType, dim_known_ne

# qk_matmul_output_mode -> the core op's qk_output stage.
_QK_MODES = {0: "raw", 1: "softcap", 2: "bias", 3: "softmax"}


def _requested(node, i: int) -> bool:
    """Does the model use ONNX output i of `node`?"""
    return i < len(node.output) and node.output[i] != ""


def _float_dtype(ctx, node, name: str, code: int) -> DType:
    dt = ONNX_TO_DTYPE.get(code)
    if dt is None or not dt.is_float:
        raise ctx.unsupported(node, f"{name}={code} (only float types)")
    return dt


def _split_heads(ctx, node, x, heads: int, what: str):
    """(B, S, H*D) -> (B, H, S, D)."""
    hidden = x.shape[2]
    if isinstance(hidden, int):
        if hidden % heads:
            raise ctx.error(node, f"{what} hidden size {hidden} is not a multiple of {heads} heads")
        head = hidden // heads
    else:
        head = -1
    x4 = ctx.op("reshape", [x], shape=(0, 0, heads, head))
    return ctx.op("transpose", [x4], perm=(0, 2, 1, 3))


def _merge_heads(ctx, y):
    """(B, H, S, D) -> (B, S, H*D)."""
    h, d = y.shape[1], y.shape[3]
    width = h * d if isinstance(h, int) and isinstance(d, int) else -1
    yt = ctx.op("transpose", [y], perm=(0, 2, 1, 3))
    return ctx.op("reshape", [yt], shape=(0, 0, width))


def _default_scale(ctx, node, head_size) -> float:
    if not isinstance(head_size, int) or head_size <= 0:
        raise ctx.unsupported(node, f"the default scale 1/sqrt(head_size) needs a static head size, got {head_size}")
    return 1.0 / math.sqrt(head_size)


def _positive_attr(ctx, node, name: str) -> int:
    n = ctx.attr(node, name)
    if n is None or n <= 0:
        raise ctx.error(node, f"attribute {name!r} must be given and positive, got {n}")
    return int(n)


@converter("Attention")
def attention(ctx, node):
    q, k, v = (ctx.input(node, i) for i in range(3))
    mask, past_key, past_value, nonpad = (ctx.input(node, i) for i in range(3, 7))
    if not q.rank == k.rank == v.rank:
        raise ctx.error(node, f"Q, K and V must have the same rank, got {q.type}, {k.type}, {v.type}")
    if q.rank == 3:
        hq = _positive_attr(ctx, node, "q_num_heads")
        hkv = _positive_attr(ctx, node, "kv_num_heads")
        q4 = _split_heads(ctx, node, q, hq, "Q")
        k4 = _split_heads(ctx, node, k, hkv, "K")
        v4 = _split_heads(ctx, node, v, hkv, "V")
    elif q.rank == 4:
        # The head-count attributes belong to the 3-D form; a contradiction is an error.
        for name, dim in (("q_num_heads", q.shape[1]), ("kv_num_heads", k.shape[1])):
            n = ctx.attr(node, name)
            if n is not None and dim_known_ne(dim, n):
                raise ctx.error(node, f"{name}={n} contradicts the 4-D input with {dim} heads")
        q4, k4, v4 = q, k, v
    else:
        raise ctx.error(
            node, f"Q, K and V must be 3-D (batch, seq, hidden) or 4-D (batch, heads, seq, head), got {q.type}"
        )

    scale = ctx.attr(node, "scale")
    scale = _default_scale(ctx, node, q4.shape[3]) if scale is None else float(scale)
    precision = ctx.attr(node, "softmax_precision")
    precision = q.dtype if precision is None else _float_dtype(ctx, node, "softmax_precision", precision)
    mode = int(ctx.attr(node, "qk_matmul_output_mode", 0))
    if mode not in _QK_MODES:
        raise ctx.error(node, f"qk_matmul_output_mode={mode} should be 0, 1, 2 or 3")
    want_qk = _requested(node, 3)
    res = ctx.op(
        "attention",
        [q4, k4, v4, mask, past_key, past_value, nonpad],
        scale=scale,
        is_causal=bool(ctx.attr(node, "is_causal", 0)),
        softcap=max(float(ctx.attr(node, "softcap", 0.0)), 0.0),  # <= 0 disables the cap
        softmax_precision=precision,
        left_window_size=int(ctx.attr(node, "left_window_size", -1)),
        right_window_size=int(ctx.attr(node, "right_window_size", -1)),
        qk_output=_QK_MODES[mode] if want_qk else "none",
    )
    y, qk = res if want_qk else (res, None)
    if q.rank == 3:
        y = _merge_heads(ctx, y)
    present_key = present_value = None
    if _requested(node, 1) or _requested(node, 2):
        if past_key is not None:
            present_key = ctx.op("concat", [past_key, k4], axis=2)
            present_value = ctx.op("concat", [past_value, v4], axis=2)
        else:
            present_key, present_value = k4, v4
    return [y, present_key, present_value, qk]


# The conformance runner and the error messages name non-default-domain ops "domain.OpType".
@converter("ai.onnx.preview.FlexAttention")
def flex_attention(ctx, node):
    for name in ("score_mod", "prob_mod"):
        if ctx.has_attr(node, name):
            raise ctx.unsupported(node, f"the {name} subgraph is not supported")
    q, k, v = (ctx.input(node, i) for i in range(3))
    if not q.rank == k.rank == v.rank == 4:
        raise ctx.error(node, f"Q, K and V must be 4-D, got {q.type}, {k.type}, {v.type}")
    scale = ctx.attr(node, "scale")
    scale = _default_scale(ctx, node, q.shape[3]) if scale is None else float(scale)
    precision = ctx.attr(node, "softmax_precision")
    if precision is None:
        # FlexAttention's default: f32 for 16-bit inputs, else the input type.
        precision = DType.f32 if q.dtype.itemsize < 4 else q.dtype
    else:
        precision = _float_dtype(ctx, node, "softmax_precision", precision)
    return [ctx.op("attention", [q, k, v], scale=scale, softmax_precision=precision)]


@converter("RotaryEmbedding")
def rotary_embedding(ctx, node):
    x = ctx.input(node, 0)
    num_heads = int(ctx.attr(node, "num_heads", 0))
    if x.rank == 4:
        head = x.shape[3]
        num_heads = 0  # only the 3-D layout uses it
    elif x.rank == 3:
        if num_heads <= 0:
            raise ctx.error(node, "a 3-D input needs the num_heads attribute")
        hidden = x.shape[2]
        head = hidden // num_heads if isinstance(hidden, int) else None
    else:
        raise ctx.error(node, f"input must be 3-D or 4-D, got {x.type}")
    dim = int(ctx.attr(node, "rotary_embedding_dim", 0))
    if dim == 0:
        if not isinstance(head, int):
            raise ctx.unsupported(node, "rotary_embedding_dim=0 (the whole head) needs a static head size")
        dim = head
    inputs = [ctx.input(node, i) for i in range(4)]
    return [
        ctx.op(
            "rotary_embedding",
            inputs,
            interleaved=bool(ctx.attr(node, "interleaved", 0)),
            rotary_embedding_dim=dim,
            num_heads=num_heads,
        )
    ]


@converter("RMSNormalization")
def rms_normalization(ctx, node):
    x = ctx.input(node, 0)
    axis = int(ctx.attr(node, "axis", -1))
    if not -x.rank <= axis < x.rank:
        raise ctx.error(node, f"axis={axis} is out of range for rank {x.rank}")
    return [
        ctx.op(
            "rms_norm",
            [x, ctx.input(node, 1)],
            axis=axis + x.rank if axis < 0 else axis,
            epsilon=float(ctx.attr(node, "epsilon", 1e-5)),
            stash_type=_float_dtype(ctx, node, "stash_type", ctx.attr(node, "stash_type", 1)),
        )
    ]


@converter("LinearAttention")
def linear_attention(ctx, node):
    q = ctx.input(node, 0)
    hq = _positive_attr(ctx, node, "q_num_heads")
    hkv = _positive_attr(ctx, node, "kv_num_heads")
    scale = float(ctx.attr(node, "scale", 0.0))
    if scale == 0.0:  # ONNX's "derive it": 1/sqrt(d_k)
        if q.rank != 3:
            raise ctx.error(node, f"query must be (batch, seq, q_heads * d_k), got {q.type}")
        width = q.shape[2]
        scale = _default_scale(ctx, node, width // hq if isinstance(width, int) else width)
    # chunk_size is a tuning hint with no effect on the result: not kept.
    outs = ctx.op(
        "linear_attention",
        [ctx.input(node, i) for i in range(6)],
        q_num_heads=hq,
        kv_num_heads=hkv,
        scale=scale,
        update_rule=ctx.attr(node, "update_rule", "gated_delta"),
    )
    return list(outs)


@converter("CausalConvWithState")
def causal_conv_with_state(ctx, node):
    activation = ctx.attr(node, "activation", "none")
    if activation == "swish":  # an alias
        activation = "silu"
    outs = ctx.op("causal_conv_with_state", [ctx.input(node, i) for i in range(4)], activation=activation)
    return list(outs)


@converter("SwiGLU")
def swiglu(ctx, node):
    # Swish_alpha(A) * B = A * sigmoid(alpha * A) * B, with no broadcasting.
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    if a.dtype != b.dtype:
        raise ctx.error(node, f"A {a.type} and B {b.type} must have the same dtype")
    if a.rank != b.rank or any(dim_known_ne(x, y) for x, y in zip(a.shape, b.shape)):
        raise ctx.error(node, f"A {a.type} and B {b.type} must have the same shape (SwiGLU does not broadcast)")
    if not a.dtype.is_float:
        raise ctx.error(node, f"A must be a float tensor, got {a.type}")
    alpha = float(ctx.attr(node, "alpha", 1.0))
    z = a if alpha == 1.0 else ctx.op("mul", [a, ctx.const(np.asarray(alpha, a.dtype.np), "alpha")])
    return [ctx.op("mul", [ctx.op("mul", [a, ctx.op("sigmoid", [z])]), b])]


@converter("TensorScatter")
def tensor_scatter(ctx, node):
    cache = ctx.input(node, 0)
    axis = int(ctx.attr(node, "axis", -2))
    if not -cache.rank <= axis < cache.rank:
        raise ctx.error(node, f"axis={axis} is out of range for rank {cache.rank}")
    axis = axis + cache.rank if axis < 0 else axis
    return [
        ctx.op(
            "tensor_scatter",
            [cache, ctx.input(node, 1), ctx.input(node, 2)],
            axis=axis,
            mode=ctx.attr(node, "mode", "linear"),
        )
    ]


@converter("BitCast")
def bit_cast(ctx, node):
    code = ctx.attr(node, "to")
    if code is None:
        raise ctx.error(node, "attribute 'to' is required")
    to = ONNX_TO_DTYPE.get(code)
    if to is None:
        raise ctx.unsupported(node, f"to={code}: einfuse has no such element type")
    return [ctx.op("bit_cast", [ctx.input(node, 0)], to=to)]


@converter("CumProd")
def cum_prod(ctx, node):
    x = ctx.input(node, 0)
    axis = np.asarray(ctx.const_input(node, 1))
    if axis.size != 1:
        raise ctx.error(node, f"the axis operand must hold one integer, got shape {list(axis.shape)}")
    a = int(axis.reshape(-1)[0])
    if not -x.rank <= a < x.rank:
        raise ctx.error(node, f"axis={a} is out of range for rank {x.rank}")
    return [
        ctx.op(
            "cum_prod",
            [x],
            axis=a + x.rank if a < 0 else a,
            exclusive=bool(ctx.attr(node, "exclusive", 0)),
            reverse=bool(ctx.attr(node, "reverse", 0)),
        )
    ]
