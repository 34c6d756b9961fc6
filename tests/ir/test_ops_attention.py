"""The transformer-era op group (einfuse/ir/ops/attention.py + frontends/onnx_ops/attention.py):
the ONNX conformance cases of its ops, onnxruntime on random data, symbolic shape inference,
the text form, and clean errors for bad models."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

from einfuse.codegen import reference
from einfuse.errors import ExecutionError, ShapeError, UnsupportedOpError
from einfuse.frontends.onnx import DynamicOperandError, convert_model
from einfuse.frontends.onnx_ops import CONVERTERS, load_all
from einfuse.ir.types import DType, sym
from einfuse.ir.verifier import verify
from tests.onnx_helpers import (
    OnnxModel,
    all_conformance_cases,
    assert_text_round_trip,
    conformance_cases,
    conformance_failures,
    randn,
    seeded_rng,  # noqa: F401 (the rng fixture)
    tolerances,
)

# The opset that defines each op in onnx 1.23.
OPSET = {
    "Attention": 24,
    "RotaryEmbedding": 23,
    "RMSNormalization": 23,
    "TensorScatter": 24,
    "BitCast": 26,
    "CumProd": 26,
    "LinearAttention": 27,
    "CausalConvWithState": 27,
    "SwiGLU": 28,
}


class Model(OnnxModel):
    """A one-node model at the opset that defines its op, unless told."""

    # f16 results are rounded to 11 bits and onnxruntime accumulates differently.
    tol = tolerances(f16=(1e-2, 1e-2), f32=(1e-4, 1e-5), f64=(1e-10, 1e-12))

    def __init__(self, op_type, operands, *, opset=None, **kw):
        super().__init__(op_type, operands, opset=opset or OPSET[op_type], **kw)


# ---------------------------------------------------------------------------
# ONNX conformance cases

OPS = {
    "Attention", "RotaryEmbedding", "RMSNormalization", "LinearAttention", "CausalConvWithState", "SwiGLU",
    "TensorScatter", "BitCast", "CumProd",
}  # fmt: skip

# FlexAttention cases with modifier subgraphs, which einfuse refuses.
FLEX_SUBGRAPH_CASES = {
    "test_flexattention_score_mod",
    "test_flexattention_prob_mod",
    "test_flexattention_causal_mask",
    "test_flexattention_soft_cap",
    "test_flexattention_relative_positional",
}


def test_onnx_conformance_cases():
    # The single-node cases of the group's ops (the *_expanded ones exercise other groups' ops).
    cases = conformance_cases(OPS)
    counts = Counter(c.model.graph.node[0].op_type for c in cases)
    assert counts["Attention"] >= 93 and set(counts) == OPS, counts
    wrong = conformance_failures(cases)
    assert not wrong, "\n".join(wrong)


def _in_default_domain(case):
    model = copy.deepcopy(case.model)
    for node in model.graph.node:
        node.domain = ""
    return dataclasses.replace(case, model=model)


def test_flex_attention_conformance_cases(monkeypatch):
    # The frontend only dispatches default-domain ops; run the ai.onnx.preview converter on a
    # copy of each case moved to the default domain.
    load_all()
    monkeypatch.setitem(CONVERTERS, "FlexAttention", CONVERTERS["ai.onnx.preview.FlexAttention"])
    flex = [
        _in_default_domain(c)
        for c in all_conformance_cases()
        if c.name.startswith("test_flexattention") and "_expanded" not in c.name
    ]
    assert len(flex) == 11
    wrong = conformance_failures(flex, refused=dict.fromkeys(FLEX_SUBGRAPH_CASES, "modifier subgraph"))
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------
# Attention vs onnxruntime

ATTENTION_CASES = [
    # (id, q, k, v shapes, attrs, extra operands builder, n_outputs)
    ("mha", (2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), {}, None, 1),
    ("gqa_diff_v", (2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6), {}, None, 1),
    ("mqa_causal", (1, 4, 5, 8), (1, 1, 5, 8), (1, 1, 5, 8), {"is_causal": 1}, None, 1),
    ("cross_causal", (2, 2, 3, 8), (2, 2, 7, 8), (2, 2, 7, 8), {"is_causal": 1}, None, 1),
    ("scale_softcap", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"scale": 0.3, "softcap": 2.0}, None, 1),
    ("bool_mask", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {}, "bool_mask", 1),
    ("float_mask_4d", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"is_causal": 1}, "float_mask", 1),
    ("past", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6), {}, "past", 3),
    ("past_causal", (2, 4, 3, 8), (2, 2, 3, 8), (2, 2, 3, 8), {"is_causal": 1}, "past", 3),
    ("nonpad_causal", (2, 2, 3, 8), (2, 2, 6, 8), (2, 2, 6, 8), {"is_causal": 1}, "nonpad", 1),
    ("window", (2, 2, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"left_window_size": 1, "right_window_size": 2}, None, 1),
    ("qk_raw", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"softcap": 2.0}, None, 4),
    ("qk_softcap", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"softcap": 2.0, "qk_matmul_output_mode": 1}, None, 4),
    ("qk_bias", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"qk_matmul_output_mode": 2}, "float_mask", 4),
    ("qk_softmax", (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), {"qk_matmul_output_mode": 3}, "bool_mask", 4),
    ("3d_gqa", (2, 3, 32), (2, 5, 16), (2, 5, 12), {"q_num_heads": 4, "kv_num_heads": 2}, None, 1),
    ("3d_past_causal", (2, 3, 16), (2, 3, 16), (2, 3, 8), {"q_num_heads": 2, "kv_num_heads": 2, "is_causal": 1},
     "past", 3),
]  # fmt: skip


def _attention_operands(rng, qs, ks, vs, extra, dtype):
    ops = [("q", randn(rng, qs, dtype=dtype)), ("k", randn(rng, ks, dtype=dtype)), ("v", randn(rng, vs, dtype=dtype))]
    b, sq = qs[0], qs[-2] if len(qs) == 4 else qs[1]
    skv = ks[-2] if len(ks) == 4 else ks[1]
    hq = qs[1] if len(qs) == 4 else 2
    if extra == "bool_mask":
        ops.append(("mask", rng.random((sq, skv)) > 0.3))
    elif extra == "float_mask":
        ops.append(("mask", randn(rng, (b, hq, sq, skv), dtype=dtype)))
    elif extra == "past":
        hkv, d = (ks[1], ks[3]) if len(ks) == 4 else (2, ks[2] // 2)
        dv = vs[3] if len(vs) == 4 else vs[2] // 2
        ops += [
            None,
            ("past_key", randn(rng, (b, hkv, 4, d), dtype=dtype)),
            ("past_value", randn(rng, (b, hkv, 4, dv), dtype=dtype)),
        ]
    elif extra == "nonpad":
        ops += [None, None, None, ("nonpad", rng.integers(sq, skv + 1, size=b).astype(np.int64))]
    return ops


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_matches_onnxruntime(rng, case, dtype):
    _, qs, ks, vs, attrs, extra, n_out = case
    opset = 25 if "left_window_size" in attrs else 24
    m = Model("Attention", _attention_operands(rng, qs, ks, vs, extra, dtype), outputs=n_out, opset=opset, **attrs)
    m.check()


def test_attention_is_one_core_op(rng):
    # 4-D attention is exactly one core node, with every default filled.
    m = Model("Attention", _attention_operands(rng, (2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8), None, np.float32))
    g = m.graph()
    (node,) = g.nodes
    assert node.op == "attention"
    assert node.attrs["scale"] == pytest.approx(8**-0.5)
    assert node.attrs["softmax_precision"] == DType.f32
    assert node.attrs["qk_output"] == "none"
    verify(g)


def test_attention_fully_masked_rows_are_zero(rng):
    # A query row with no visible key gives zeros, not NaN (also in the softmax output).
    mask = np.array([[True, False, True], [False, False, False]])
    m = Model(
        "Attention",
        [
            ("q", randn(rng, (1, 1, 2, 4))),
            ("k", randn(rng, (1, 1, 3, 4))),
            ("v", randn(rng, (1, 1, 3, 4))),
            ("mask", mask),
        ],
        outputs=4,
        qk_matmul_output_mode=3,
    )
    y, _, _, probs = m.einfuse()
    assert np.all(y[0, 0, 1] == 0) and np.all(probs[0, 0, 1] == 0)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(probs[0, 0, 0].sum(), 1.0, rtol=1e-6)
    assert probs[0, 0, 0, 1] == 0


def test_attention_bf16_runs_in_bf16(rng):
    q, k, v = (randn(rng, (1, 2, 3, 8)).astype(ml_dtypes.bfloat16) for _ in range(3))
    (y,) = Model("Attention", [("q", q), ("k", k), ("v", v)], is_causal=1).einfuse()
    assert y.dtype == ml_dtypes.bfloat16 and y.shape == (1, 2, 3, 8)
    ref = Model("Attention", [("q", q.astype(np.float32)), ("k", k.astype(np.float32)), ("v", v.astype(np.float32))],
                is_causal=1).ort()[0]  # fmt: skip
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------
# the other ops vs onnxruntime


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize(
    "shape,attrs,with_pos",
    [
        ((2, 3, 4, 8), {}, True),
        ((2, 3, 4, 8), {"interleaved": 1}, True),
        ((2, 3, 4, 8), {"rotary_embedding_dim": 4}, False),
        ((2, 4, 24), {"num_heads": 3, "interleaved": 1, "rotary_embedding_dim": 4}, True),
        ((2, 4, 24), {"num_heads": 3}, False),
    ],
)
def test_rotary_embedding_matches_onnxruntime(rng, shape, attrs, with_pos, dtype):
    b, s = shape[0], shape[2] if len(shape) == 4 else shape[1]
    head = shape[3] if len(shape) == 4 else shape[2] // attrs["num_heads"]
    half = attrs.get("rotary_embedding_dim", head) // 2
    x = randn(rng, shape, dtype=dtype)
    if with_pos:
        pos = rng.integers(0, 10, size=(b, s)).astype(np.int64)
        caches = [randn(rng, (10, half), dtype=dtype) for _ in range(2)]
        ops = [("x", x), ("cos", caches[0]), ("sin", caches[1]), ("pos", pos)]
    else:
        ops = [("x", x), ("cos", randn(rng, (b, s, half), dtype=dtype)), ("sin", randn(rng, (b, s, half), dtype=dtype))]
    Model("RotaryEmbedding", ops, **attrs).check()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("shape,axis,scale_shape", [((3, 4), -1, (4,)), ((2, 3, 5), 1, (3, 5)), ((2, 3, 5), 0, (5,))])
def test_rms_normalization_matches_onnxruntime(rng, shape, axis, scale_shape, dtype):
    m = Model("RMSNormalization", [("x", randn(rng, shape, dtype=dtype)), ("@s", randn(rng, scale_shape, dtype=dtype))],
              axis=axis, epsilon=1e-3)  # fmt: skip
    m.check()


@pytest.mark.parametrize(
    "rule,heads,decay_width,beta_width,past",
    [
        ("linear", (2, 2), None, None, False),
        ("gated", (2, 2), "head", None, True),
        ("gated", (4, 2), "key", None, False),
        ("delta", (2, 1), None, "head", True),
        ("gated_delta", (4, 2), "head", 1, True),
    ],
)
def test_linear_attention_matches_onnxruntime(rng, rule, heads, decay_width, beta_width, past):
    b, t, dk, dv = 2, 5, 4, 3
    hq, hkv = heads
    ops = [
        ("q", randn(rng, (b, t, hq * dk))),
        ("k", randn(rng, (b, t, hkv * dk)) / 2),
        ("v", randn(rng, (b, t, hkv * dv))),
    ]
    ops.append(("past", randn(rng, (b, hkv, dk, dv))) if past else None)
    if decay_width:
        width = hkv if decay_width == "head" else hkv * dk
        ops.append(("decay", -rng.random((b, t, width)).astype(np.float32)))
    else:
        ops.append(None)
    if beta_width:
        width = hkv if beta_width == "head" else beta_width
        ops.append(("beta", rng.random((b, t, width)).astype(np.float32)))
    m = Model("LinearAttention", ops, outputs=2, q_num_heads=hq, kv_num_heads=hkv, update_rule=rule)
    m.check()


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("kernel,bias,past,act", [(3, False, False, "none"), (4, True, True, "silu"),
                                                  (1, True, False, "swish"), (3, False, True, "none")])  # fmt: skip
def test_causal_conv_with_state_matches_onnxruntime(rng, kernel, bias, past, act, dtype):
    b, c, length = 2, 3, 5
    ops = [("x", randn(rng, (b, c, length), dtype=dtype)), ("@w", randn(rng, (c, 1, kernel), dtype=dtype))]
    ops.append(("@bias", randn(rng, (c,), dtype=dtype)) if bias else None)
    ops.append(("state", randn(rng, (b, c, kernel - 1), dtype=dtype)) if past else None)
    Model("CausalConvWithState", ops, outputs=2, activation=act).check()


@pytest.mark.parametrize("mode", ["linear", "circular"])
@pytest.mark.parametrize("axis,upd_len", [(-2, 2), (1, 3), (2, 5)])
def test_tensor_scatter_matches_onnxruntime(rng, mode, axis, upd_len):
    cache = randn(rng, (2, 5, 6, 3))
    upd_shape = list(cache.shape)
    upd_shape[axis] = upd_len
    cap = cache.shape[axis]
    # Linear writes must fit; circular ones may wrap.
    hi = cap - upd_len if mode == "linear" else cap
    idx = rng.integers(0, hi + 1, size=2).astype(np.int64)
    m = Model("TensorScatter", [("c", cache), ("u", randn(rng, upd_shape)), ("i", idx)], axis=axis, mode=mode)
    m.check(0, 0)


@pytest.mark.parametrize(
    "src,to",
    [(np.float32, TensorProto.INT32), (np.int64, TensorProto.DOUBLE), (np.float16, TensorProto.INT16),
     (np.int8, TensorProto.UINT8), (np.uint16, TensorProto.FLOAT16)],
)  # fmt: skip
def test_bit_cast_matches_onnxruntime(rng, src, to):
    x = (randn(rng, (3, 4)) * 100).astype(src)
    Model("BitCast", [("x", x)], to=to).check(0, 0)


def test_bit_cast_keeps_0d():
    (y,) = Model("BitCast", [("x", np.float32(1.0))], to=TensorProto.INT32).einfuse()
    assert y.shape == () and int(y) == 0x3F800000


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64, np.float64])
@pytest.mark.parametrize("axis,exclusive,reverse", [(0, 0, 0), (1, 1, 0), (-1, 0, 1), (0, 1, 1)])
def test_cum_prod_matches_onnxruntime(rng, dtype, axis, exclusive, reverse):
    x = rng.integers(-3, 4, size=(3, 4)).astype(dtype)
    m = Model("CumProd", [("x", x), ("@axis", np.int64(axis))], exclusive=exclusive, reverse=reverse)
    m.check(1e-6, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("alpha", [1.0, 1.702])
def test_swiglu_matches_formula(rng, dtype, alpha):
    # onnxruntime cannot run SwiGLU (its function body needs Swish-24).
    a, b = randn(rng, (3, 8), dtype=dtype), randn(rng, (3, 8), dtype=dtype)
    (y,) = Model("SwiGLU", [("a", a), ("b", b)], alpha=alpha).einfuse()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 / (1 + np.exp(-alpha * a64)) * b64
    assert y.dtype == dtype
    np.testing.assert_allclose(
        y.astype(np.float64), want, rtol=Model.tol[np.dtype(dtype)][0] * 10, atol=Model.tol[np.dtype(dtype)][1]
    )


# ---------------------------------------------------------------------------
# symbolic shapes and the text form


def test_attention_3d_symbolic_shapes(rng):
    ops = _attention_operands(rng, (2, 3, 32), (2, 5, 16), (2, 5, 12), "past", np.float32)
    shapes = {"q": ["B", "S", 32], "k": ["B", "T", 16], "v": ["B", "T", 12], "past_key": ["B", 2, "P", 8],
              "past_value": ["B", 2, "P", 6]}  # fmt: skip
    m = Model("Attention", ops, outputs=3, input_shapes=shapes, q_num_heads=4, kv_num_heads=2, is_causal=1)
    g = m.graph()
    b, s, t, p = sym("B"), sym("S"), sym("T"), sym("P")
    y, pk, pv = g.outputs
    assert y.shape == (b, s, 24)
    assert pk.shape == (b, 2, p + t, 8) and pv.shape == (b, 2, p + t, 6)
    out = reference.run(g, m.feeds)
    assert [a.shape for a in out.values()] == [(2, 3, 24), (2, 2, 9, 8), (2, 2, 9, 6)]


def test_symbolic_shapes_of_the_other_ops(rng):
    x = randn(rng, (2, 3, 4, 8))
    m = Model("RotaryEmbedding", [("x", x), ("@c", randn(rng, (9, 4))), ("@s", randn(rng, (9, 4))),
                                  ("p", np.zeros((2, 4), np.int64))],
              input_shapes={"x": ["B", 3, "S", 8], "p": ["B", "S"]})  # fmt: skip
    assert m.graph().outputs[0].shape == (sym("B"), 3, sym("S"), 8)
    m = Model(
        "RMSNormalization",
        [("x", randn(rng, (2, 5, 16))), ("@s", randn(rng, (16,)))],
        input_shapes={"x": ["B", "S", 16]},
    )
    assert m.graph().outputs[0].shape == (sym("B"), sym("S"), 16)
    q = randn(rng, (2, 5, 8))
    shapes = {"q": ["B", "T", 8], "k": ["B", "T", 8], "v": ["B", "T", 6]}
    m = Model("LinearAttention", [("q", q), ("k", q), ("v", randn(rng, (2, 5, 6)))], outputs=2, update_rule="linear",
              q_num_heads=2, kv_num_heads=2, input_shapes=shapes)  # fmt: skip
    y, state = m.graph().outputs
    assert y.shape == (sym("B"), sym("T"), 6) and state.shape == (sym("B"), 2, 4, 3)
    m = Model("CausalConvWithState", [("x", randn(rng, (2, 3, 5))), ("@w", randn(rng, (3, 1, 4)))], outputs=2,
              input_shapes={"x": ["B", 3, "L"]})  # fmt: skip
    y, state = m.graph().outputs
    assert y.shape == (sym("B"), 3, sym("L")) and state.shape == (sym("B"), 3, 3)


def test_attention_text_form_round_trips(rng):
    ops = _attention_operands(rng, (2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6), "bool_mask", np.float16)
    g = Model("Attention", ops, outputs=4, is_causal=1, softcap=1.5, softmax_precision=1,
              qk_matmul_output_mode=3).graph()  # fmt: skip
    text = assert_text_round_trip(g)
    assert 'qk_output="softmax"' in text and "softmax_precision=f32" in text and "is_causal=true" in text


# ---------------------------------------------------------------------------
# errors


def _qkv(rng, qs, ks, vs):
    return [("q", randn(rng, qs)), ("k", randn(rng, ks)), ("v", randn(rng, vs))]


def test_attention_head_size_mismatch_names_the_node(rng):
    with pytest.raises(ShapeError, match=r"node 'n0'.*Q head size 8 and K head size 6 differ"):
        Model("Attention", _qkv(rng, (2, 2, 3, 8), (2, 2, 5, 6), (2, 2, 5, 8))).graph()


@pytest.mark.parametrize(
    "operands,attrs,match",
    [
        (((2, 3, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8)), {}, "3 query heads are not a multiple of 2"),
        (((2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 4, 8)), {}, "sequence length of V"),
        (((2, 3, 16), (2, 5, 16), (2, 5, 16)), {}, "'q_num_heads' must be given"),
        (((2, 3, 16), (2, 5, 16), (2, 5, 16)), {"q_num_heads": 3, "kv_num_heads": 2}, "not a multiple of 3 heads"),
        (((2, 2, 3, 8), (2, 2, 5, 8, 1), (2, 2, 5, 8)), {}, "same rank"),
        (((2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8)), {"q_num_heads": 4}, "contradicts"),
    ],
)
def test_attention_bad_shapes(rng, operands, attrs, match):
    with pytest.raises(ShapeError, match=match):
        Model("Attention", _qkv(rng, *operands), **attrs).graph()


def test_attention_bad_optional_operands(rng):
    qkv = _qkv(rng, (2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8))
    with pytest.raises(ShapeError, match="past_key and past_value must be given together"):
        Model("Attention", qkv + [None, ("pk", randn(rng, (2, 2, 4, 8)))]).graph()
    with pytest.raises(ShapeError, match="attn_mask must be bool or f32"):
        Model("Attention", qkv + [("m", np.zeros((3, 5), np.int32))]).graph()
    with pytest.raises(ShapeError, match="longer than the total sequence length 5"):
        Model("Attention", qkv + [("m", np.zeros((3, 7), np.bool_))]).graph()
    with pytest.raises(ShapeError, match="does not broadcast"):
        Model("Attention", qkv + [("m", np.zeros((4, 3, 5), np.bool_))]).graph()
    with pytest.raises(ShapeError, match="cannot be combined"):
        pk = randn(rng, (2, 2, 4, 8))
        Model("Attention", qkv + [None, ("pk", pk), ("pv", pk), ("n", np.array([3, 4]))]).graph()


def test_flex_attention_subgraph_is_refused_cleanly(monkeypatch):
    load_all()
    monkeypatch.setitem(CONVERTERS, "FlexAttention", CONVERTERS["ai.onnx.preview.FlexAttention"])
    case = next(c for c in all_conformance_cases() if c.name == "test_flexattention_score_mod")
    with pytest.raises(UnsupportedOpError, match="score_mod subgraph is not supported"):
        convert_model(_in_default_domain(case).model)


def test_other_ops_bad_models(rng):
    with pytest.raises(ShapeError, match="cannot reinterpret f32 .32 bits. as i16"):
        Model("BitCast", [("x", randn(rng, (2,)))], to=TensorProto.INT16).graph()
    with pytest.raises(UnsupportedOpError, match="no such element type"):
        Model("BitCast", [("x", randn(rng, (2,)))], to=TensorProto.COMPLEX64).graph()
    with pytest.raises(ShapeError, match="non-batch axis"):
        Model("TensorScatter", [("c", randn(rng, (2, 4))), ("u", randn(rng, (2, 4)))], axis=0).graph()
    with pytest.raises(ShapeError, match="needs the decay operand"):
        q = randn(rng, (1, 2, 4))
        Model("LinearAttention", [("q", q), ("k", q), ("v", q)], outputs=2, q_num_heads=1, kv_num_heads=1,
              update_rule="gated").graph()  # fmt: skip
    with pytest.raises(ShapeError, match="same shape"):
        Model("SwiGLU", [("a", randn(rng, (2, 3))), ("b", randn(rng, (1, 3)))]).graph()
    with pytest.raises(ShapeError, match="does not broadcast to the normalised dims"):
        Model("RMSNormalization", [("x", randn(rng, (2, 3))), ("@s", randn(rng, (2,)))]).graph()
    with pytest.raises(ShapeError, match="last dim of cos_cache"):
        Model(
            "RotaryEmbedding",
            [("x", randn(rng, (1, 2, 3, 8))), ("c", randn(rng, (1, 3, 3))), ("s", randn(rng, (1, 3, 3)))],
        ).graph()
    with pytest.raises(ShapeError, match="length of past_state"):
        Model("CausalConvWithState", [("x", randn(rng, (1, 2, 5))), ("@w", randn(rng, (2, 1, 3))), None,
                                      ("s", randn(rng, (1, 2, 3)))], outputs=2).graph()  # fmt: skip
    with pytest.raises(DynamicOperandError, match="must be a constant"):
        Model("CumProd", [("x", randn(rng, (2, 3))), ("axis", np.int64(0))]).graph()


def test_bad_values_at_run_time(rng):
    # Write indices that overflow a linear cache, and position ids outside the caches.
    m = Model(
        "TensorScatter", [("c", randn(rng, (2, 4, 3))), ("u", randn(rng, (2, 2, 3))), ("i", np.array([0, 3]))], axis=1
    )
    with pytest.raises(ExecutionError, match="overflows the cache of 4"):
        m.einfuse()
    m = Model("RotaryEmbedding", [("x", randn(rng, (1, 2, 3, 8))), ("@c", randn(rng, (4, 4))),
                                  ("@s", randn(rng, (4, 4))), ("p", np.array([[0, 1, 4]]))])  # fmt: skip
    with pytest.raises(ExecutionError, match="position id"):
        m.einfuse()
