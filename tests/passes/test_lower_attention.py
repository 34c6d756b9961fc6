"""lower-attention: before/after IR text (prefill, symbolic shapes, decode split, masks, KV
cache, GQA, the cases that stay `attention`), the tile and split choices, and a hypothesis
property: every lowered form (3-pass, 2-pass, 1-pass, split) matches the `attention`
reference over batch, heads (GQA/MQA), query and key lengths (1, odd, not multiples of
the tile), head dims, causal alignments, additive/boolean masks and f32/f16/bf16; and the
exported BERT-like and GPT-2-like models (after recognize-attention) lower every layer to
a 1-pass cascade with unchanged outputs."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.ir.einsum import attention_cascade, describe
from einfuse.ir.parser import parse
from einfuse.passes import PassManager
from einfuse.passes.lower_attention import LowerAttention, choose_kv_splits, choose_kv_tile
from tests.passes.helpers import check_rewrite


def casc(form: str, **kw) -> str:
    """The cascade attribute as the printer writes it."""
    lines = attention_cascade(form, **kw).lines()
    return "(" + ",".join(f'"{line}"' for line in lines) + ")"


def test_prefill_lowers_to_one_pass_with_a_tile_from_the_cache():
    # K and V tiles of 128 f32 rows of 64 fit in L2/2 up to 1024 rows: capped at 512, then at M = 128.
    check_rewrite(
        """
        graph @main(%q: f32[1,12,128,64], %k: f32[1,12,128,64], %v: f32[1,12,128,64]) -> (%o: f32[1,12,128,64]) {
          %o = attention(%q, %k, %v) {scale=0.125, softmax_precision=f32} : f32[1,12,128,64]
          return %o
        }
        """,
        f"""
        graph @main(%q: f32[1,12,128,64], %k: f32[1,12,128,64], %v: f32[1,12,128,64]) -> (%o: f32[1,12,128,64]) {{
          %o = einsum_cascade(%q, %k, %v) {{cascade={casc("1-pass", kv_tile=128)}, scale=0.125, kv_tile=128}} : f32[1,12,128,64]
          return %o
        }}
        """,
        "lower-attention",
        fired={"lower_attention": 1, "attention 3-pass -> 1-pass": 1},
    )


def test_symbolic_lengths_causal_top_left():
    result = check_rewrite(
        """
        graph @main(%q: f32[B,8,S,64], %k: f32[B,8,S,64], %v: f32[B,8,S,32]) -> (%o: f32[B,8,S,32]) {
          %o = attention(%q, %k, %v) {scale=0.125, is_causal=true, softmax_precision=f32} : f32[B,8,S,32]
          return %o
        }
        """,
        f"""
        graph @main(%q: f32[B,8,S,64], %k: f32[B,8,S,64], %v: f32[B,8,S,32]) -> (%o: f32[B,8,S,32]) {{
          %o = einsum_cascade(%q, %k, %v) {{cascade={casc("1-pass", causal="top_left", kv_tile=512)}, scale=0.125,
                                            causal="top_left", kv_tile=512}} : f32[B,8,S,32]
          return %o
        }}
        """,
        "lower-attention",
    )
    (node,) = result.nodes
    assert describe(node) == "attention cascade %o: 3-pass -> 1-pass (kv_tile=512, kv_splits=1)"


def test_decode_over_a_long_cache_is_split():
    # one query, 32k keys, one kv head shared by 12 query heads (multi-query): the decode
    # kernel has one unit for two threads, and 64 tiles of 512 -> 4 chunks, merged at the end
    check_rewrite(
        """
        graph @main(%q: f32[1,12,1,64], %k: f32[1,1,32768,64], %v: f32[1,1,32768,64]) -> (%o: f32[1,12,1,64]) {
          %o = attention(%q, %k, %v) {scale=0.125, softmax_precision=f32} : f32[1,12,1,64]
          return %o
        }
        """,
        f"""
        graph @main(%q: f32[1,12,1,64], %k: f32[1,1,32768,64], %v: f32[1,1,32768,64]) -> (%o: f32[1,12,1,64]) {{
          %o = einsum_cascade(%q, %k, %v) {{cascade={casc("split", grouped=True, kv_tile=512, kv_splits=4)},
                                            scale=0.125, kv_tile=512, kv_splits=4}} : f32[1,12,1,64]
          return %o
        }}
        """,
        "lower-attention",
        fired={"lower_attention": 1, "attention 3-pass -> 1-pass": 1, "attention_split": 1},
    )


def test_decode_with_as_many_kv_heads_as_threads_is_not_split():
    # 12 kv heads keep both threads busy: a split only adds the merge (measured: a tie at 32k)
    check_rewrite(
        """
        graph @main(%q: f32[1,12,1,64], %k: f32[1,12,32768,64], %v: f32[1,12,32768,64]) -> (%o: f32[1,12,1,64]) {
          %o = attention(%q, %k, %v) {scale=0.125, softmax_precision=f32} : f32[1,12,1,64]
          return %o
        }
        """,
        f"""
        graph @main(%q: f32[1,12,1,64], %k: f32[1,12,32768,64], %v: f32[1,12,32768,64]) -> (%o: f32[1,12,1,64]) {{
          %o = einsum_cascade(%q, %k, %v) {{cascade={casc("1-pass", kv_tile=512)}, scale=0.125,
                                            kv_tile=512}} : f32[1,12,1,64]
          return %o
        }}
        """,
        "lower-attention",
        fired={"lower_attention": 1, "attention 3-pass -> 1-pass": 1},
    )


def test_kv_cache_bool_mask_and_gqa():
    # past_key/past_value become a concat, the boolean mask an additive 0/-inf bias (unsqueezed
    # to rank 4), is_causal with a past the bottom-right alignment, 8 query heads read 2 kv heads.
    check_rewrite(
        """
        graph @main(%q: f16[2,8,4,16], %k: f16[2,2,4,16], %v: f16[2,2,4,16], %pk: f16[2,2,60,16],
                    %pv: f16[2,2,60,16], %mask: bool[4,64]) -> (%o: f16[2,8,4,16]) {
          %o = attention(%q, %k, %v, %mask, %pk, %pv) {scale=0.25, is_causal=true, softmax_precision=f32} : f16[2,8,4,16]
          return %o
        }
        """,
        f"""
        graph @main(%q: f16[2,8,4,16], %k: f16[2,2,4,16], %v: f16[2,2,4,16], %pk: f16[2,2,60,16],
                    %pv: f16[2,2,60,16], %mask: bool[4,64]) -> (%o: f16[2,8,4,16]) {{
          @zero = const [0.0] : f16[]
          @neg_inf = const [-inf] : f16[]
          %concat = concat(%pk, %k) {{axis=2}} : f16[2,2,64,16]
          %concat.0 = concat(%pv, %v) {{axis=2}} : f16[2,2,64,16]
          %where = where(%mask, @zero, @neg_inf) : f16[4,64]
          %unsqueeze = unsqueeze(%where) {{axes=(0,1)}} : f16[1,1,4,64]
          %o = einsum_cascade(%q, %concat, %concat.0, %unsqueeze) {{cascade={
            casc("1-pass", causal="bottom_right", has_bias=True, grouped=True, kv_tile=64)
        },
            scale=0.25, causal="bottom_right", kv_tile=64}} : f16[2,8,4,16]
          return %o
        }}
        """,
        "lower-attention",
    )


def test_forced_forms_keep_their_pass_counts():
    before = """
        graph @main(%q: f32[1,2,3,8], %k: f32[1,2,5,8], %v: f32[1,2,5,8], %m: f32[1,2,3,5]) -> (%o: f32[1,2,3,8]) {
          %o = attention(%q, %k, %v, %m) {scale=0.5, softmax_precision=f32} : f32[1,2,3,8]
          return %o
        }
        """
    for form, steps in (("3-pass", "3-pass -> 3-pass"), ("2-pass", "3-pass -> 2-pass")):
        check_rewrite(
            before,
            f"""
            graph @main(%q: f32[1,2,3,8], %k: f32[1,2,5,8], %v: f32[1,2,5,8], %m: f32[1,2,3,5]) -> (%o: f32[1,2,3,8]) {{
              %o = einsum_cascade(%q, %k, %v, %m) {{cascade={casc(form, has_bias=True)}, scale=0.5}} : f32[1,2,3,8]
              return %o
            }}
            """,
            LowerAttention(form=form),
            fired={"lower_attention": 1, f"attention {steps}": 1},
        )


@pytest.mark.parametrize(
    "attrs, operands, why",
    [
        ("softcap=30.0", "", "softcap=30.0"),
        ("left_window_size=4", "", "sliding-window masks"),
        # is_causal with a past aligns to the past length, not M - S, when the new keys are not S
        ("is_causal=true", ", none, %pk, %pv", "is_causal with a past and 5 new keys for 3 queries"),
        # a mask shorter than the keys is padded with "masked" by attention, broadcast by the cascade
        ("", ", %short", "attn_mask f32\\[1,1,3,1\\] is shorter than the 5 keys"),
    ],
)
def test_cases_the_cascade_does_not_express_stay_attention(caplog, attrs, operands, why):
    sep = ", " if attrs else ""
    text = f"""
        graph @main(%q: f32[1,2,3,8], %k: f32[1,2,5,8], %v: f32[1,2,5,8], %pk: f32[1,2,4,8], %pv: f32[1,2,4,8],
                    %short: f32[1,1,3,1]) -> (%o: f32[1,2,3,8]) {{
          %o = attention(%q, %k, %v{operands}) {{scale=0.5{sep}{attrs}, softmax_precision=f32}} : f32[1,2,3,8]
          return %o
        }}
        """
    with caplog.at_level("INFO", logger="einfuse.passes.lower_attention"):
        check_rewrite(text, text, "lower-attention", fired={"attention_not_lowered": 1})
    assert any("attention %o not lowered: " in r.getMessage() for r in caplog.records)
    assert re.search(why, caplog.text)


def test_tile_and_split_choices():
    assert choose_kv_tile(64, 64, None) == 512  # 1024 rows fit in L2/2: capped at 512
    assert choose_kv_tile(256, 256, None) == 256
    assert choose_kv_tile(1024, 1024, None) == 64
    assert choose_kv_tile(4096, 4096, None) == 32  # 16 rows would fit: the floor is 32
    assert choose_kv_tile(64, 64, 100) == 64  # not above a static M
    assert choose_kv_tile(64, 64, 1) == 1
    assert choose_kv_tile(64, 64, 300, l2_bytes=1 << 16) == 64
    assert choose_kv_splits(1, 32768, 512) == 4
    assert choose_kv_splits(1, 32768, 512, threads=8) == 16
    assert choose_kv_splits(4, 2048, 512) == 4  # 4 tiles = 2 * threads
    assert choose_kv_splits(1, 1536, 512) == 1  # 3 tiles: not worth it
    assert choose_kv_splits(5, 32768, 512) == 1  # prefill-like: no split
    assert choose_kv_splits(1, None, 512) == 1  # symbolic context length
    # Units (batch x kv heads) that already keep the threads busy: no split.
    assert choose_kv_splits(1, 32768, 512, units=12) == 1
    assert choose_kv_splits(1, 32768, 512, threads=2, units=2) == 1
    assert choose_kv_splits(1, 32768, 512, threads=8, units=2) == 8


# -- property: every lowered form matches the attention reference ---------------------------

NP = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
TOL = {"f32": 2e-5, "f16": 1e-2, "bf16": 6e-2}


@st.composite
def attention_cases(draw):
    dtype = draw(st.sampled_from(["f32", "f16", "bf16"]))
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.sampled_from([1, 2, 3]))  # MHA, GQA, and MQA when hkv == 1
    s = draw(st.sampled_from([1, 2, 3, 5, 7]))
    causal = draw(st.sampled_from(["none", "top_left", "bottom_right"]))
    if causal == "bottom_right":  # a KV cache: S new keys after `past` cached ones
        past, new = draw(st.integers(0, 21)), s
    else:
        past, new = 0, draw(st.sampled_from([1, 2, 5, 8, 13, 17]))
    d = draw(st.sampled_from([1, 3, 8]))
    dv = draw(st.sampled_from([2, 5]))
    mask = draw(st.sampled_from(["none", "float", "bool"]))
    mask_shape = draw(st.sampled_from([(s, past + new), (b, 1, s, past + new), (1, hq, s, past + new)]))
    return {
        "dtype": dtype,
        "b": b,
        "hq": hq,
        "hkv": hkv,
        "s": s,
        "past": past,
        "new": new,
        "d": d,
        "dv": dv,
        "causal": causal,
        "mask": mask,
        "mask_shape": mask_shape,
        "seed": draw(st.integers(0, 2**16)),
        "tile": draw(st.sampled_from([1, 2, 3, 4, 8])),
        "splits": draw(st.integers(2, 4)),
    }


def _graph_and_inputs(c: dict):
    t, rng = c["dtype"], np.random.default_rng(c["seed"])
    m = c["past"] + c["new"]
    shapes = {
        "q": (c["b"], c["hq"], c["s"], c["d"]),
        "k": (c["b"], c["hkv"], c["new"], c["d"]),
        "v": (c["b"], c["hkv"], c["new"], c["dv"]),
    }
    operands = ["%q", "%k", "%v"]
    if c["mask"] != "none":
        shapes["mask"] = c["mask_shape"]
        operands.append("%mask")
    if c["past"]:
        shapes["pk"] = (c["b"], c["hkv"], c["past"], c["d"])
        shapes["pv"] = (c["b"], c["hkv"], c["past"], c["dv"])
        operands += ["none"] * (4 - len(operands)) + ["%pk", "%pv"]
    inputs = {name: rng.standard_normal(shape).astype(NP[t]) for name, shape in shapes.items()}
    types = {name: f"{t}[{','.join(map(str, shape))}]" for name, shape in shapes.items()}
    if c["mask"] == "bool":
        keep = rng.random(c["mask_shape"]) < 0.7
        keep[..., 0, :] = False  # a query row with no visible key gives 0
        inputs["mask"] = keep
        types["mask"] = f"bool[{','.join(map(str, c['mask_shape']))}]"
    elif c["mask"] == "float":
        inputs["mask"][rng.random(c["mask_shape"]) < 0.2] = -np.inf
    out = f"{t}[{c['b']},{c['hq']},{c['s']},{c['dv']}]"
    scale = float(np.float32(0.9 / np.sqrt(c["d"])))
    causal = "true" if c["causal"] != "none" else "false"
    args = ", ".join(f"%{n}: {ty}" for n, ty in types.items())
    text = f"""graph @main({args}) -> (%o: {out}) {{
  %o = attention({", ".join(operands)}) {{scale={scale!r}, is_causal={causal}, softmax_precision=f32}} : {out}
  return %o
}}"""
    assert m >= 1
    return text, inputs


@settings(max_examples=20)  # ~3 s; each example lowers and evaluates four forms
@given(attention_cases())
def test_every_lowered_form_matches_the_attention_reference(case):
    text, inputs = _graph_and_inputs(case)
    want = reference.run(parse(text), inputs)["o"].astype(np.float32)
    for form in ("3-pass", "2-pass", "1-pass", "split"):
        p = LowerAttention(form=form, kv_tile=case["tile"], kv_splits=case["splits"])
        g = PassManager([p], verify=True).run(parse(text))
        assert [n.op for n in g.nodes][-1] == "einsum_cascade", form
        got = reference.run(g, inputs)["o"]
        assert got.dtype == NP[case["dtype"]]
        tol = TOL[case["dtype"]]
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=tol, atol=tol, err_msg=form)


def test_a_constant_boolean_mask_becomes_a_constant_bias():
    result = check_rewrite(
        """
        graph @main(%q: f32[1,1,2,4], %k: f32[1,1,3,4], %v: f32[1,1,3,4]) -> (%o: f32[1,1,2,4]) {
          @mask = const [true, false, true, true, true, false] : bool[2,3]
          %o = attention(%q, %k, %v, @mask) {scale=0.5, softmax_precision=f32} : f32[1,1,2,4]
          return %o
        }
        """,
        f"""
        graph @main(%q: f32[1,1,2,4], %k: f32[1,1,3,4], %v: f32[1,1,3,4]) -> (%o: f32[1,1,2,4]) {{
          @attn_bias = const [0.0, -inf, 0.0, 0.0, 0.0, -inf] : f32[1,1,2,3]
          %o = einsum_cascade(%q, %k, %v, @attn_bias) {{cascade={casc("1-pass", has_bias=True, kv_tile=2)}, scale=0.5,
                                                        kv_tile=2}} : f32[1,1,2,4]
          return %o
        }}
        """,
        ["lower-attention", "eliminate-dead-code"],
    )
    inputs = {n: np.random.default_rng(0).standard_normal((1, 1, 2 if n == "q" else 3, 4), np.float32) for n in "qkv"}
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    logits = q[0, 0] @ k[0, 0].T * 0.5 + np.array([[0, -np.inf, 0], [0, 0, -np.inf]])
    p = np.exp(logits - logits.max(1, keepdims=True))
    want = (p / p.sum(1, keepdims=True)) @ v[0, 0]
    np.testing.assert_allclose(reference.run(result, inputs)["o"][0, 0], want, rtol=1e-5, atol=1e-6)


# -- the exported transformers: every attention layer lowers to a 1-pass cascade ---------------


@pytest.mark.parametrize(
    "fixture",
    [pytest.param("bert_like_model", marks=pytest.mark.slow), "gpt2_like_model"],  # BERT: ~20 s on a loaded box
)
def test_transformers_lower_every_attention_layer_to_one_pass(request, fixture):
    from einfuse.frontends.onnx import convert_model
    from einfuse.testing.models import token_inputs

    model = request.getfixturevalue(fixture)
    inputs = token_inputs(model)
    graph = convert_model(model)
    passes = ["fold-constants", "fold-shape-computations", "canonicalize", "recognize-attention"]
    graph = PassManager(passes, verify=True).run(graph)
    want = reference.run(graph, inputs)
    pm = PassManager(["lower-attention"], verify=True)
    graph = pm.run(graph)
    assert pm.records[0].rules_fired == {"lower_attention": 6, "attention 3-pass -> 1-pass": 6}
    cascades = [n for n in graph.nodes if n.op == "einsum_cascade"]
    assert not [n for n in graph.nodes if n.op == "attention"]
    assert {describe(n).split(": ")[1] for n in cascades} == {"3-pass -> 1-pass (kv_tile=128, kv_splits=1)"}
    got = reference.run(graph, inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)
