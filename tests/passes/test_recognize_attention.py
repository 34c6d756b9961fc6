"""recognize-attention: before/after IR for each exported form of attention, the cases it
must leave alone (with the logged reason), end-to-end ONNX graphs (hand-built, torch SDPA
exports, the BERT-like and GPT-2-like models) against onnxruntime, and a property test that
the rewritten graph computes what the original did."""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType
from einfuse.passes import PassManager
from einfuse.passes.pipeline import default_pipeline, pipeline_passes
from einfuse.passes.recognize_attention import RecognizeAttention
from einfuse.testing.models import ort_run, token_inputs
from tests.passes.helpers import check_rewrite

PASS = "recognize-attention"
F32_MIN = float(np.finfo(np.float32).min)


def _causal(s: int, m: int, k: int = 0, fill: float = -np.inf) -> np.ndarray:
    """0 where key j is visible to query i (j <= i + k), `fill` elsewhere."""
    return np.where(np.tril(np.ones((s, m), bool), k), np.float32(0), np.float32(fill)).astype(np.float32)


# -- before/after IR ------------------------------------------------------------------------


def test_bert_layout_mul_scale_additive_mask():
    # BERT as exported: K^T is transpose(view, (0,2,3,1)); the inserted transpose back composes with it.
    check_rewrite(
        """
        graph @main(%xq: f32[1,5,2,4], %xk: f32[1,5,2,4], %xv: f32[1,5,2,4], %mask: f32[1,1,1,5]) -> (%y: f32[1,2,5,4]) {
          @s = const [0.5] : f32[]
          %q = transpose(%xq) {perm=(0,2,1,3)} : f32[1,2,5,4]
          %kt = transpose(%xk) {perm=(0,2,3,1)} : f32[1,2,4,5]
          %v = transpose(%xv) {perm=(0,2,1,3)} : f32[1,2,5,4]
          %l = matmul(%q, %kt) : f32[1,2,5,5]
          %ls = mul(%l, @s) : f32[1,2,5,5]
          %lm = add(%ls, %mask) : f32[1,2,5,5]
          %p = softmax(%lm) {axis=3} : f32[1,2,5,5]
          %y = matmul(%p, %v) : f32[1,2,5,4]
          return %y
        }
        """,
        """
        graph @main(%xq: f32[1,5,2,4], %xk: f32[1,5,2,4], %xv: f32[1,5,2,4], %mask: f32[1,1,1,5]) -> (%y: f32[1,2,5,4]) {
          %q = transpose(%xq) {perm=(0,2,1,3)} : f32[1,2,5,4]
          %v = transpose(%xv) {perm=(0,2,1,3)} : f32[1,2,5,4]
          %kt.T = transpose(%xk) {perm=(0,2,1,3)} : f32[1,2,5,4]
          %y = attention(%q, %kt.T, %v, %mask) {scale=0.5, softmax_precision=f32} : f32[1,2,5,4]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1},
    )


def test_div_scale_where_bool_mask_and_kt_input():
    # K^T arrives already laid out [B, H, D, M]: a transpose back is inserted.
    check_rewrite(
        """
        graph @main(%q: f32[2,4,5,8], %kt: f32[2,4,8,7], %v: f32[2,4,7,6], %c: bool[2,1,5,7]) -> (%y: f32[2,4,5,6]) {
          @s = const [3.0] : f32[]
          @ninf = const [-inf] : f32[]
          %l = matmul(%q, %kt) : f32[2,4,5,7]
          %d = div(%l, @s) : f32[2,4,5,7]
          %w = where(%c, %d, @ninf) : f32[2,4,5,7]
          %p = softmax(%w) {axis=3} : f32[2,4,5,7]
          %y = matmul(%p, %v) : f32[2,4,5,6]
          return %y
        }
        """,
        """
        graph @main(%q: f32[2,4,5,8], %kt: f32[2,4,8,7], %v: f32[2,4,7,6], %c: bool[2,1,5,7]) -> (%y: f32[2,4,5,6]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[2,4,7,8]
          %y = attention(%q, %kt.T, %v, %c) {scale=0.3333333333333333, softmax_precision=f32} : f32[2,4,5,6]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1},
    )


def test_where_fill_first_inverts_the_condition():
    check_rewrite(
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %pad: bool[1,1,1,3]) -> (%y: f32[1,2,3,4]) {
          @ninf = const [-inf] : f32[]
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %w = where(%pad, @ninf, %l) : f32[1,2,3,3]
          %p = softmax(%w) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %pad: bool[1,1,1,3]) -> (%y: f32[1,2,3,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,2,3,4]
          %not = not(%pad) : bool[1,1,1,3]
          %y = attention(%q, %kt.T, %v, %not) {scale=1.0, softmax_precision=f32} : f32[1,2,3,4]
          return %y
        }
        """,
        PASS,
    )


def test_finite_fill_where_becomes_an_additive_mask():
    check_rewrite(
        f"""
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %c: bool[1,1,3,3]) -> (%y: f32[1,2,3,4]) {{
          @lowest = const [{F32_MIN!r}] : f32[]
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %w = where(%c, %l, @lowest) : f32[1,2,3,3]
          %p = softmax(%w) {{axis=3}} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }}
        """,
        f"""
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %c: bool[1,1,3,3]) -> (%y: f32[1,2,3,4]) {{
          @lowest = const [{F32_MIN!r}] : f32[]
          @mask_zero = const [0.0] : f32[]
          %kt.T = transpose(%kt) {{perm=(0,1,3,2)}} : f32[1,2,3,4]
          %where = where(%c, @mask_zero, @lowest) : f32[1,1,3,3]
          %y = attention(%q, %kt.T, %v, %where) {{scale=1.0, softmax_precision=f32}} : f32[1,2,3,4]
          return %y
        }}
        """,
        PASS,
    )


def test_mask_added_before_the_scale_is_scaled_too():
    # softmax((L + m) * s) = softmax(L * s + m * s).
    check_rewrite(
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %m: f32[1,1,1,3]) -> (%y: f32[1,2,3,4]) {
          @s = const [0.5] : f32[]
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %a = add(%l, %m) : f32[1,2,3,3]
          %ls = mul(%a, @s) : f32[1,2,3,3]
          %p = softmax(%ls) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %m: f32[1,1,1,3]) -> (%y: f32[1,2,3,4]) {
          @mask_scale = const [0.5] : f32[]
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,2,3,4]
          %mul = mul(%m, @mask_scale) : f32[1,1,1,3]
          %y = attention(%q, %kt.T, %v, %mul) {scale=0.5, softmax_precision=f32} : f32[1,2,3,4]
          return %y
        }
        """,
        PASS,
    )


def test_torch_sqrt_split_scale_and_reshaped_transpose():
    # torch's SDPA decomposition: k^T by reshape/transpose/reshape, q and k^T each times sqrt(scale).
    s = np.float32(0.59460354)
    check_rewrite(
        f"""
        graph @main(%q: f32[2,4,5,8], %k: f32[2,4,7,8], %v: f32[2,4,7,6]) -> (%y: f32[2,4,5,6]) {{
          @s = const [{float(s)!r}] : f32[1]
          %k3 = reshape(%k) {{shape=(8,7,8)}} : f32[8,7,8]
          %kt3 = transpose(%k3) {{perm=(0,2,1)}} : f32[8,8,7]
          %kt = reshape(%kt3) {{shape=(2,4,8,7)}} : f32[2,4,8,7]
          %qs = mul(%q, @s) : f32[2,4,5,8]
          %kts = mul(%kt, @s) : f32[2,4,8,7]
          %l = matmul(%qs, %kts) : f32[2,4,5,7]
          %p = softmax(%l) {{axis=3}} : f32[2,4,5,7]
          %y = matmul(%p, %v) : f32[2,4,5,6]
          return %y
        }}
        """,
        f"""
        graph @main(%q: f32[2,4,5,8], %k: f32[2,4,7,8], %v: f32[2,4,7,6]) -> (%y: f32[2,4,5,6]) {{
          %y = attention(%q, %k, %v) {{scale={float(s) * float(s)!r}, softmax_precision=f32}} : f32[2,4,5,6]
          return %y
        }}
        """,
        PASS,
    )


def test_constant_causal_triangle_becomes_is_causal():
    # GPT-2 as exported: a constant 0 / finfo.min triangle added after the scale.
    check_rewrite(
        """
        graph @main(%q: f32[1,2,5,4], %kt: f32[1,2,4,5], %v: f32[1,2,5,4]) -> (%y: f32[1,2,5,4]) {
          @s = const [0.5] : f32[]
          @causal = const : f32[1,1,5,5]
          %l = matmul(%q, %kt) : f32[1,2,5,5]
          %ls = mul(%l, @s) : f32[1,2,5,5]
          %lm = add(%ls, @causal) : f32[1,2,5,5]
          %p = softmax(%lm) {axis=3} : f32[1,2,5,5]
          %y = matmul(%p, %v) : f32[1,2,5,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,2,5,4], %kt: f32[1,2,4,5], %v: f32[1,2,5,4]) -> (%y: f32[1,2,5,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,2,5,4]
          %y = attention(%q, %kt.T, %v) {scale=0.5, is_causal=true, softmax_precision=f32} : f32[1,2,5,4]
          return %y
        }
        """,
        PASS,
        constants={"causal": _causal(5, 5, fill=F32_MIN).reshape(1, 1, 5, 5)},
        fired={"recognize_attention": 1, "attention_causal": 1},
    )


def test_causal_plus_padding_masks():
    # Two masks: the causal one becomes is_causal, the padding one stays.
    check_rewrite(
        """
        graph @main(%q: f32[2,2,3,4], %kt: f32[2,2,4,3], %v: f32[2,2,3,4], %pad: f32[2,1,1,3]) -> (%y: f32[2,2,3,4]) {
          @causal = const : f32[3,3]
          %l = matmul(%q, %kt) : f32[2,2,3,3]
          %a = add(@causal, %l) : f32[2,2,3,3]
          %b = add(%a, %pad) : f32[2,2,3,3]
          %p = softmax(%b) {axis=3} : f32[2,2,3,3]
          %y = matmul(%p, %v) : f32[2,2,3,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[2,2,3,4], %kt: f32[2,2,4,3], %v: f32[2,2,3,4], %pad: f32[2,1,1,3]) -> (%y: f32[2,2,3,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[2,2,3,4]
          %y = attention(%q, %kt.T, %v, %pad) {scale=1.0, is_causal=true, softmax_precision=f32} : f32[2,2,3,4]
          return %y
        }
        """,
        PASS,
        constants={"causal": _causal(3, 3)},
    )


def test_bottom_right_causal_stays_a_mask_on_request():
    # RecognizeAttention(bottom_right=False): no past_key split, the triangle stays attn_mask.
    check_rewrite(
        """
        graph @main(%q: f32[1,1,2,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,2,4]) {
          @causal = const : f32[2,5]
          %l = matmul(%q, %kt) : f32[1,1,2,5]
          %a = add(%l, @causal) : f32[1,1,2,5]
          %p = softmax(%a) {axis=3} : f32[1,1,2,5]
          %y = matmul(%p, %v) : f32[1,1,2,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,1,2,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,2,4]) {
          @causal = const : f32[2,5]
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,1,5,4]
          %y = attention(%q, %kt.T, %v, @causal) {scale=1.0, softmax_precision=f32} : f32[1,1,2,4]
          return %y
        }
        """,
        RecognizeAttention(bottom_right=False),
        constants={"causal": _causal(2, 5, k=3)},
        fired={"recognize_attention": 1},
    )


def test_bottom_right_causal_becomes_is_causal_behind_a_past():
    # j <= i + (M - S), the KV-cache alignment: attention aligns is_causal that way only behind
    # a past_key, so the first M - S keys and values become the past.
    check_rewrite(
        """
        graph @main(%q: f32[1,1,2,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,2,4]) {
          @causal = const : f32[2,5]
          %l = matmul(%q, %kt) : f32[1,1,2,5]
          %a = add(%l, @causal) : f32[1,1,2,5]
          %p = softmax(%a) {axis=3} : f32[1,1,2,5]
          %y = matmul(%p, %v) : f32[1,1,2,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,1,2,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,2,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,1,5,4]
          %kt.T.past = slice(%kt.T) {starts=(0,), ends=(3,), axes=(2,), steps=(1,)} : f32[1,1,3,4]
          %v.past = slice(%v) {starts=(0,), ends=(3,), axes=(2,), steps=(1,)} : f32[1,1,3,4]
          %kt.T.new = slice(%kt.T) {starts=(3,), ends=(5,), axes=(2,), steps=(1,)} : f32[1,1,2,4]
          %v.new = slice(%v) {starts=(3,), ends=(5,), axes=(2,), steps=(1,)} : f32[1,1,2,4]
          %y = attention(%q, %kt.T.new, %v.new, none, %kt.T.past, %v.past) {scale=1.0, is_causal=true, softmax_precision=f32} : f32[1,1,2,4]
          return %y
        }
        """,
        PASS,
        constants={"causal": _causal(2, 5, k=3)},
        fired={"recognize_attention": 1, "attention_causal": 1},
    )


def test_all_visible_constant_mask_is_dropped():
    # Decode (one query): the bottom-right triangle hides nothing.
    check_rewrite(
        """
        graph @main(%q: f32[1,1,1,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,1,4]) {
          @causal = const : f32[1,1,1,5]
          %l = matmul(%q, %kt) : f32[1,1,1,5]
          %a = add(%l, @causal) : f32[1,1,1,5]
          %p = softmax(%a) {axis=3} : f32[1,1,1,5]
          %y = matmul(%p, %v) : f32[1,1,1,4]
          return %y
        }
        """,
        """
        graph @main(%q: f32[1,1,1,4], %kt: f32[1,1,4,5], %v: f32[1,1,5,4]) -> (%y: f32[1,1,1,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f32[1,1,5,4]
          %y = attention(%q, %kt.T, %v) {scale=1.0, softmax_precision=f32} : f32[1,1,1,4]
          return %y
        }
        """,
        PASS,
        constants={"causal": np.zeros((1, 1, 1, 5), np.float32)},
    )


def test_torch_nan_guard_and_f32_softmax_of_f16():
    # torch's softmax(x, dtype=float32).to(f16) and its isnan guard (boolean masks).
    check_rewrite(
        """
        graph @main(%q: f16[1,2,3,4], %kt: f16[1,2,4,3], %v: f16[1,2,3,4], %c: bool[1,1,3,3]) -> (%y: f16[1,2,3,4]) {
          @ninf = const [-inf] : f16[]
          @zero = const [0.0] : f16[]
          %l = matmul(%q, %kt) : f16[1,2,3,3]
          %w = where(%c, %l, @ninf) : f16[1,2,3,3]
          %up = cast(%w) {to=f32} : f32[1,2,3,3]
          %sm = softmax(%up) {axis=3} : f32[1,2,3,3]
          %p = cast(%sm) {to=f16} : f16[1,2,3,3]
          %nan = is_nan(%p) : bool[1,2,3,3]
          %pg = where(%nan, @zero, %p) : f16[1,2,3,3]
          %y = matmul(%pg, %v) : f16[1,2,3,4]
          return %y
        }
        """,
        """
        graph @main(%q: f16[1,2,3,4], %kt: f16[1,2,4,3], %v: f16[1,2,3,4], %c: bool[1,1,3,3]) -> (%y: f16[1,2,3,4]) {
          %kt.T = transpose(%kt) {perm=(0,1,3,2)} : f16[1,2,3,4]
          %y = attention(%q, %kt.T, %v, %c) {scale=1.0, softmax_precision=f32} : f16[1,2,3,4]
          return %y
        }
        """,
        PASS,
    )


def test_gqa_unsqueeze_expand_reshape_passes_unrepeated_kv():
    check_rewrite(
        """
        graph @main(%q: f32[2,4,5,8], %k: f32[2,2,7,8], %v: f32[2,2,7,6]) -> (%y: f32[2,4,5,6]) {
          @s = const [0.25] : f32[]
          %k5 = unsqueeze(%k) {axes=(2,)} : f32[2,2,1,7,8]
          %v5 = unsqueeze(%v) {axes=(2,)} : f32[2,2,1,7,6]
          %ke = expand(%k5) {shape=(2,2,2,7,8)} : f32[2,2,2,7,8]
          %ve = expand(%v5) {shape=(2,2,2,7,6)} : f32[2,2,2,7,6]
          %kr = reshape(%ke) {shape=(2,4,7,8)} : f32[2,4,7,8]
          %vr = reshape(%ve) {shape=(2,4,7,6)} : f32[2,4,7,6]
          %kt = transpose(%kr) {perm=(0,1,3,2)} : f32[2,4,8,7]
          %l = matmul(%q, %kt) : f32[2,4,5,7]
          %ls = mul(@s, %l) : f32[2,4,5,7]
          %p = softmax(%ls) {axis=3} : f32[2,4,5,7]
          %y = matmul(%p, %vr) : f32[2,4,5,6]
          return %y
        }
        """,
        """
        graph @main(%q: f32[2,4,5,8], %k: f32[2,2,7,8], %v: f32[2,2,7,6]) -> (%y: f32[2,4,5,6]) {
          %y = attention(%q, %k, %v) {scale=0.25, softmax_precision=f32} : f32[2,4,5,6]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1, "attention_gqa": 1},
    )


def test_gqa_repeat_kv_beyond_the_probe_limit():
    # Llama-sized K/V (32 query heads, 8 kv heads, 4096 keys): too big to probe, torch's
    # repeat_kv is recognized by its structure; K^T is the transpose of the repeated K.
    check_rewrite(
        """
        graph @main(%q: f16[1,32,1,128], %k: f16[1,8,4096,128], %v: f16[1,8,4096,128]) -> (%y: f16[1,32,1,128]) {
          @s = const [0.08838834764831845] : f16[]
          %k5 = unsqueeze(%k) {axes=(2,)} : f16[1,8,1,4096,128]
          %v5 = unsqueeze(%v) {axes=(2,)} : f16[1,8,1,4096,128]
          %ke = expand(%k5) {shape=(1,8,4,4096,128)} : f16[1,8,4,4096,128]
          %ve = expand(%v5) {shape=(1,8,4,4096,128)} : f16[1,8,4,4096,128]
          %kr = reshape(%ke) {shape=(1,32,4096,128)} : f16[1,32,4096,128]
          %vr = reshape(%ve) {shape=(1,32,4096,128)} : f16[1,32,4096,128]
          %kt = transpose(%kr) {perm=(0,1,3,2)} : f16[1,32,128,4096]
          %l = matmul(%q, %kt) : f16[1,32,1,4096]
          %ls = mul(%l, @s) : f16[1,32,1,4096]
          %p = softmax(%ls) {axis=3} : f16[1,32,1,4096]
          %y = matmul(%p, %vr) : f16[1,32,1,128]
          return %y
        }
        """,
        """
        graph @main(%q: f16[1,32,1,128], %k: f16[1,8,4096,128], %v: f16[1,8,4096,128]) -> (%y: f16[1,32,1,128]) {
          %y = attention(%q, %k, %v) {scale=0.08837890625, softmax_precision=f16} : f16[1,32,1,128]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1, "attention_gqa": 1},
    )


def test_mqa_tile_is_gqa_but_grouped_tile_is_not():
    # tile repeats the head list (head h reads kv head h % Hkv): GQA only when Hkv = 1.
    before = """
        graph @main(%q: f32[1,4,3,2], %k: f32[1,{h},3,2], %v: f32[1,{h},3,2]) -> (%y: f32[1,4,3,2]) {{
          %kr = tile(%k) {{repeats=(1,{n},1,1)}} : f32[1,4,3,2]
          %vr = tile(%v) {{repeats=(1,{n},1,1)}} : f32[1,4,3,2]
          %kt = transpose(%kr) {{perm=(0,1,3,2)}} : f32[1,4,2,3]
          %l = matmul(%q, %kt) : f32[1,4,3,3]
          %p = softmax(%l) {{axis=3}} : f32[1,4,3,3]
          %y = matmul(%p, %vr) : f32[1,4,3,2]
          return %y
        }}
    """
    check_rewrite(
        before.format(h=1, n=4),
        """
        graph @main(%q: f32[1,4,3,2], %k: f32[1,1,3,2], %v: f32[1,1,3,2]) -> (%y: f32[1,4,3,2]) {
          %y = attention(%q, %k, %v) {scale=1.0, softmax_precision=f32} : f32[1,4,3,2]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1, "attention_gqa": 1},
    )
    check_rewrite(
        before.format(h=2, n=2),
        """
        graph @main(%q: f32[1,4,3,2], %k: f32[1,2,3,2], %v: f32[1,2,3,2]) -> (%y: f32[1,4,3,2]) {
          %kr = tile(%k) {repeats=(1,2,1,1)} : f32[1,4,3,2]
          %vr = tile(%v) {repeats=(1,2,1,1)} : f32[1,4,3,2]
          %y = attention(%q, %kr, %vr) {scale=1.0, softmax_precision=f32} : f32[1,4,3,2]
          return %y
        }
        """,
        PASS,
        fired={"recognize_attention": 1},
    )


def test_batched_3d_form_runs_with_one_head():
    check_rewrite(
        """
        graph @main(%q: f32[6,5,4], %k: f32[6,7,4], %v: f32[6,7,3], %bias: f32[6,5,7]) -> (%y: f32[6,5,3]) {
          @s = const [0.5] : f32[]
          %kt = transpose(%k) {perm=(0,2,1)} : f32[6,4,7]
          %qs = mul(%q, @s) : f32[6,5,4]
          %l = matmul(%qs, %kt) : f32[6,5,7]
          %a = add(%l, %bias) : f32[6,5,7]
          %p = softmax(%a) {axis=2} : f32[6,5,7]
          %y = matmul(%p, %v) : f32[6,5,3]
          return %y
        }
        """,
        """
        graph @main(%q: f32[6,5,4], %k: f32[6,7,4], %v: f32[6,7,3], %bias: f32[6,5,7]) -> (%y: f32[6,5,3]) {
          %q.4d = unsqueeze(%q) {axes=(1,)} : f32[6,1,5,4]
          %k.4d = unsqueeze(%k) {axes=(1,)} : f32[6,1,7,4]
          %v.4d = unsqueeze(%v) {axes=(1,)} : f32[6,1,7,3]
          %bias.4d = unsqueeze(%bias) {axes=(1,)} : f32[6,1,5,7]
          %attention = attention(%q.4d, %k.4d, %v.4d, %bias.4d) {scale=0.5, softmax_precision=f32} : f32[6,1,5,3]
          %y = squeeze(%attention) {axes=(1,)} : f32[6,5,3]
          return %y
        }
        """,
        PASS,
    )


def test_einsum_form():
    # torch.einsum("bhsd,bhmd->bhsm", q, k) reads k itself; "bhsm,bhmd->bhsd" is the matmul with v.
    check_rewrite(
        """
        graph @main(%q: f32[2,3,5,4], %k: f32[2,3,6,4], %v: f32[2,3,6,7]) -> (%y: f32[2,3,5,7]) {
          @s = const [0.5] : f32[]
          %l = einsum(%q, %k) {equation="bhsd,bhmd->bhsm"} : f32[2,3,5,6]
          %ls = mul(%l, @s) : f32[2,3,5,6]
          %p = softmax(%ls) {axis=3} : f32[2,3,5,6]
          %y = einsum(%p, %v) {equation="bhsm,bhmd->bhsd"} : f32[2,3,5,7]
          return %y
        }
        """,
        """
        graph @main(%q: f32[2,3,5,4], %k: f32[2,3,6,4], %v: f32[2,3,6,7]) -> (%y: f32[2,3,5,7]) {
          %y = attention(%q, %k, %v) {scale=0.5, softmax_precision=f32} : f32[2,3,5,7]
          return %y
        }
        """,
        PASS,
    )


def test_symbolic_dims():
    check_rewrite(
        """
        graph @main(%q: f32[B,H,S,8], %k: f32[B,H,M,8], %v: f32[B,H,M,8], %mask: f32[B,1,1,M]) -> (%y: f32[B,H,S,8]) {
          @s = const [0.25] : f32[]
          %kt = transpose(%k) {perm=(0,1,3,2)} : f32[B,H,8,M]
          %kts = mul(%kt, @s) : f32[B,H,8,M]
          %l = matmul(%q, %kts) : f32[B,H,S,M]
          %a = add(%l, %mask) : f32[B,H,S,M]
          %p = softmax(%a) {axis=3} : f32[B,H,S,M]
          %y = matmul(%p, %v) : f32[B,H,S,8]
          return %y
        }
        """,
        """
        graph @main(%q: f32[B,H,S,8], %k: f32[B,H,M,8], %v: f32[B,H,M,8], %mask: f32[B,1,1,M]) -> (%y: f32[B,H,S,8]) {
          %y = attention(%q, %k, %v, %mask) {scale=0.25, softmax_precision=f32} : f32[B,H,S,8]
          return %y
        }
        """,
        PASS,
    )


# -- left alone, with the reason logged -------------------------------------------------------

NEGATIVE = {
    "softmax over the wrong axis": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4]) -> (%y: f32[1,2,3,4]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %p = softmax(%l) {axis=2} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "is over axis 2, not the last one",
    ),
    "mask whose key axis broadcasts": (
        # numpy broadcasts the last dim 1; attention would pad it with "masked" instead.
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %m: f32[1,1,3,1]) -> (%y: f32[1,2,3,4]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %a = add(%l, %m) : f32[1,2,3,3]
          %p = softmax(%a) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "does not broadcast",
    ),
    "mask that widens the logits": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[2,2,3,4], %m: f32[2,1,3,3]) -> (%y: f32[2,2,3,4]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %a = add(%l, %m) : f32[2,2,3,3]
          %p = softmax(%a) {axis=3} : f32[2,2,3,3]
          %y = matmul(%p, %v) : f32[2,2,3,4]
          return %y
        }
        """,
        "widens the logits",
    ),
    "non-constant scale": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %s: f32[]) -> (%y: f32[1,2,3,4]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %ls = mul(%l, %s) : f32[1,2,3,3]
          %p = softmax(%ls) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "scaled by a non-constant",
    ),
    "finite fill before the scale": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4], %c: bool[1,1,1,3]) -> (%y: f32[1,2,3,4]) {
          @s = const [0.5] : f32[]
          @lowest = const [-3.4028234663852886e+38] : f32[]
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %w = where(%c, %l, @lowest) : f32[1,2,3,3]
          %ls = mul(%w, @s) : f32[1,2,3,3]
          %p = softmax(%ls) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "a finite-fill where before a scale",
    ),
    "probabilities used elsewhere": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4]) -> (%y: f32[1,2,3,4], %p: f32[1,2,3,3]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %p = softmax(%l) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y, %p
        }
        """,
        "the probabilities %p have other users",
    ),
    "negative scale": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4]) -> (%y: f32[1,2,3,4]) {
          @s = const [-0.5] : f32[]
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %ls = mul(%l, @s) : f32[1,2,3,3]
          %p = softmax(%ls) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "is not positive",
    ),
    "logits used elsewhere": (
        """
        graph @main(%q: f32[1,2,3,4], %kt: f32[1,2,4,3], %v: f32[1,2,3,4]) -> (%y: f32[1,2,3,4], %l: f32[1,2,3,3]) {
          %l = matmul(%q, %kt) : f32[1,2,3,3]
          %p = softmax(%l) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y, %l
        }
        """,
        "the logits %l have other users",
    ),
    "einsum with v transposed": (
        """
        graph @main(%q: f32[1,2,3,4], %k: f32[1,2,3,4], %vt: f32[1,2,4,3]) -> (%y: f32[1,2,3,4]) {
          %l = einsum(%q, %k) {equation="bhsd,bhmd->bhsm"} : f32[1,2,3,3]
          %p = softmax(%l) {axis=3} : f32[1,2,3,3]
          %y = einsum(%p, %vt) {equation="bhsm,bhdm->bhsd"} : f32[1,2,3,4]
          return %y
        }
        """,
        "multiply v^T",
    ),
    "softmax of something else": (
        """
        graph @main(%x: f32[1,2,3,3], %v: f32[1,2,3,4]) -> (%y: f32[1,2,3,4]) {
          %e = exp(%x) : f32[1,2,3,3]
          %p = softmax(%e) {axis=3} : f32[1,2,3,3]
          %y = matmul(%p, %v) : f32[1,2,3,4]
          return %y
        }
        """,
        "the logits come from exp",
    ),
    "broadcasting q @ k^T": (
        """
        graph @main(%q: f32[2,2,3,4], %kt: f32[1,2,4,3], %v: f32[2,2,3,4]) -> (%y: f32[2,2,3,4]) {
          %l = matmul(%q, %kt) : f32[2,2,3,3]
          %p = softmax(%l) {axis=3} : f32[2,2,3,3]
          %y = matmul(%p, %v) : f32[2,2,3,4]
          return %y
        }
        """,
        "not plain batched attention",
    ),
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_left_alone(case, caplog):
    text, reason = NEGATIVE[case]
    with caplog.at_level(logging.INFO, logger="einfuse.passes.recognize_attention"):
        check_rewrite(text, text, PASS, fired={"attention_skipped": 1})
    assert reason in caplog.text


# -- hand-built ONNX graphs against onnxruntime ---------------------------------------------

B, H, S, D, E = 2, 4, 6, 8, 32


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inputs, inits, opset: int = 18) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "attn", inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _heads(x: str, out: str, nodes: list, heads: int = H, perm=(0, 2, 1, 3)) -> None:
    """x [B, S, heads*D] -> out, split into heads and transposed by `perm`."""
    nodes.append(helper.make_node("Reshape", [x, "shape_bshd_" + str(heads)], [out + "_4d"]))
    nodes.append(helper.make_node("Transpose", [out + "_4d"], [out], perm=list(perm)))


def _projected(mask_kind: str, kv_heads: int = H, scale: str = "div", repeat: str = "expand"):
    """A transformer attention layer on x [B, S, E] as exporters write it."""
    rng = np.random.default_rng(1)
    f = np.float32
    inits = [
        _init("wq", (rng.standard_normal((E, H * D)) / np.sqrt(E)).astype(f)),
        _init("wk", (rng.standard_normal((E, kv_heads * D)) / np.sqrt(E)).astype(f)),
        _init("wv", (rng.standard_normal((E, kv_heads * D)) / np.sqrt(E)).astype(f)),
        *(_init(f"shape_bshd_{h}", np.array([B, S, h, D], np.int64)) for h in sorted({H, kv_heads})),
        _init("shape_out", np.array([B, S, H * D], np.int64)),
        _init("sqrt_d", np.array(np.sqrt(D), f)),
        _init("sqrt_s", np.array(D**-0.25, f)),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, E])]
    nodes = [helper.make_node("MatMul", ["x", w], [n]) for w, n in (("wq", "q2"), ("wk", "k2"), ("wv", "v2"))]
    _heads("q2", "q", nodes)
    _heads("k2", "kt", nodes, kv_heads, perm=(0, 2, 3, 1))  # BERT: k^T straight from [B, S, H, D]
    _heads("v2", "v", nodes, kv_heads)
    if kv_heads != H:
        n = H // kv_heads
        if repeat == "expand":  # torch repeat_kv / repeat_interleave: unsqueeze, expand, reshape
            inits += [
                _init("ax2", np.array([2], np.int64)),
                _init("kexp", np.array([B, kv_heads, n, D, S], np.int64)),
                _init("vexp", np.array([B, kv_heads, n, S, D], np.int64)),
                _init("kr", np.array([B, H, D, S], np.int64)),
                _init("vr", np.array([B, H, S, D], np.int64)),
            ]
            for x, e, r in (("kt", "kexp", "kr"), ("v", "vexp", "vr")):
                nodes += [
                    helper.make_node("Unsqueeze", [x, "ax2"], [x + "_5"]),
                    helper.make_node("Expand", [x + "_5", e], [x + "_e"]),
                    helper.make_node("Reshape", [x + "_e", r], [x + "_rep"]),
                ]
        else:  # MQA by Tile
            inits.append(_init("reps", np.array([1, n, 1, 1], np.int64)))
            nodes += [helper.make_node("Tile", [x, "reps"], [x + "_rep"]) for x in ("kt", "v")]
        kt, v = "kt_rep", "v_rep"
    else:
        kt, v = "kt", "v"
    q = "q"
    if scale == "split":  # torch: q * d^-1/4 and k^T * d^-1/4
        nodes += [helper.make_node("Mul", ["q", "sqrt_s"], ["qs"]), helper.make_node("Mul", [kt, "sqrt_s"], ["kts"])]
        q, kt = "qs", "kts"
    nodes.append(helper.make_node("MatMul", [q, kt], ["logits"]))
    logits = "logits"
    if scale == "div":
        nodes.append(helper.make_node("Div", ["logits", "sqrt_d"], ["scaled"]))
        logits = "scaled"
    if mask_kind == "padding":  # BERT: (1 - mask) * -10000 from an int attention_mask [B, S]
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [B, S]))
        inits += [_init("ax12", np.array([1, 2], np.int64)), _init("one", np.array(1, f))]
        inits.append(_init("big", np.array(-10000.0, f)))
        nodes += [
            helper.make_node("Unsqueeze", ["attention_mask", "ax12"], ["m4"]),
            helper.make_node("Cast", ["m4"], ["mf"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["one", "mf"], ["inv"]),
            helper.make_node("Mul", ["inv", "big"], ["mask"]),
            helper.make_node("Add", [logits, "mask"], ["masked"]),
        ]
        logits = "masked"
    elif mask_kind in ("causal_add", "causal_where"):  # GPT-2: a triangle from Trilu on ones
        inits += [_init("ones", np.ones((S, S), f)), _init("zero", np.array(0, f))]
        inits.append(_init("ninf", np.array(-np.inf, f)))
        nodes += [
            helper.make_node("Trilu", ["ones"], ["tri"], upper=0),
            helper.make_node("Cast", ["tri"], ["keep"], to=TensorProto.BOOL),
        ]
        if mask_kind == "causal_add":
            nodes += [
                helper.make_node("Where", ["keep", "zero", "ninf"], ["cmask"]),
                helper.make_node("Add", [logits, "cmask"], ["masked"]),
            ]
        else:
            nodes.append(helper.make_node("Where", ["keep", logits, "ninf"], ["masked"]))
        logits = "masked"
    elif mask_kind == "rel_bias":  # a relative-position bias per head
        inits.append(_init("bias", rng.standard_normal((1, H, S, S)).astype(f)))
        nodes.append(helper.make_node("Add", ["bias", logits], ["masked"]))
        logits = "masked"
    nodes += [
        helper.make_node("Softmax", [logits], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", v], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "shape_out"], ["y"]),
    ]
    return _model(nodes, inputs, inits)


def _batched_3d() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B * H, S if n == "q" else S + 1, D]) for n in "qkv"]
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["l"]),
        helper.make_node("Mul", ["l", "s"], ["ls"]),
        helper.make_node("Softmax", ["ls"], ["p"], axis=2),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    return _model(nodes, inputs, [_init("s", np.array(0.3, np.float32))])


def _einsum(opset: int = 18) -> onnx.ModelProto:
    """torch.einsum attention (opset 11's Softmax on the last axis is the same op)."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, S if n == "q" else S + 2, D]) for n in "qkv"]
    nodes = [
        helper.make_node("Einsum", ["q", "k"], ["l"], equation="bhsd,bhmd->bhsm"),
        helper.make_node("Mul", ["l", "s"], ["ls"]),
        helper.make_node("Softmax", ["ls"], ["p"], axis=3),
        helper.make_node("Einsum", ["p", "v"], ["y"], equation="bhsm,bhmd->bhsd"),
    ]
    return _model(nodes, inputs, [_init("s", np.array(0.3, np.float32))], opset)


ONNX_CASES = {
    "bert padding mask, div scale": lambda: _projected("padding"),
    "causal add of a trilu triangle": lambda: _projected("causal_add"),
    "causal where on a trilu triangle": lambda: _projected("causal_where", scale="none"),
    "relative-position bias, split scale": lambda: _projected("rel_bias", scale="split"),
    "gqa by unsqueeze/expand/reshape": lambda: _projected("causal_add", kv_heads=2),
    "mqa by tile": lambda: _projected("padding", kv_heads=1, repeat="tile"),
    "batched 3-D": _batched_3d,
    "einsum": _einsum,
    "einsum, opset 12 softmax": lambda: _einsum(12),
}
EXPECT = {"causal add of a trilu triangle": "attention_causal", "causal where on a trilu triangle": "attention_causal"}
EXPECT |= {"gqa by unsqueeze/expand/reshape": "attention_gqa", "mqa by tile": "attention_gqa"}


def _feeds(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            mask = np.ones(shape, np.int64)
            mask[:, -2:] = 0
            mask[0, :] = 1
            feeds[vi.name] = mask
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _recognized(graph: Graph) -> tuple[Graph, dict]:
    pm = PassManager(["fold-constants", "fold-shape-computations", "canonicalize", PASS], verify=True)
    out = pm.run(graph)
    return out, dict(pm.records[-1].rules_fired)


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_onnx_graph_matches_onnxruntime(case, rng):
    model = ONNX_CASES[case]()
    graph, fired = _recognized(convert_model(model))
    assert fired.get("recognize_attention") == 1, fired
    if case in EXPECT:
        assert fired.get(EXPECT[case]) == 1, fired
    assert not any(n.op == "softmax" for n in graph.nodes)
    feeds = _feeds(model, rng)
    want = ort_run(model, feeds, threads=1)["y"]
    got = reference.run(graph, feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- torch scaled_dot_product_attention, exported by torch.onnx (dynamo) -----------------------

SDPA_CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "attn_mask": {"mask": True},
    "bool attn_mask": {"mask": "bool"},
    "gqa": {"enable_gqa": True},
}


def _sdpa_model(opset: int, is_causal=False, mask=False, enable_gqa=False) -> onnx.ModelProto:
    from einfuse.testing.models import _cached

    params = {"opset": opset, "is_causal": is_causal, "mask": mask, "enable_gqa": enable_gqa}

    def build() -> onnx.ModelProto:
        import contextlib
        import io
        import warnings

        import torch
        import torch.nn.functional as F

        class Sdpa(torch.nn.Module):
            def forward(self, q, k, v, m=None):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, enable_gqa=enable_gqa)

        g = torch.Generator().manual_seed(0)
        kv_heads = 2 if enable_gqa else 4
        args = [torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, kv_heads, 7, 8, generator=g)]
        args.append(torch.randn(2, kv_heads, 7, 6, generator=g))
        if mask == "bool":
            args.append(torch.rand(2, 1, 5, 7, generator=g) > 0.3)
        elif mask:
            args.append(torch.randn(2, 1, 5, 7, generator=g))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(Sdpa(), tuple(args), opset_version=opset, dynamo=True, optimize=True)
        return program.model_proto

    return _cached("sdpa", params, build)


def _sdpa_feeds(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[vi.name] = rng.random(shape) > 0.3
            feeds[vi.name][..., 0] = True  # every query sees a key (else torch gives NaN, attention 0)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("opset", [18, 23])
@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_torch_sdpa_export(case, opset, rng):
    model = _sdpa_model(opset, **SDPA_CASES[case])
    graph, fired = _recognized(convert_model(model))
    attention = [n for n in graph.nodes if n.op == "attention"]
    assert len(attention) == 1
    # Left: only the mask's own computation (torch turns a boolean mask into 0 / lowest).
    assert {n.op for n in graph.nodes} <= {"attention", "where"}, graph
    # Opset 23 exports the Attention op itself: the importer makes `attention`, nothing to recognize.
    assert fired.get("recognize_attention", 0) == (1 if opset == 18 else 0), fired
    assert attention[0].attrs["is_causal"] == (case == "causal")
    assert (attention[0].inputs[1].shape[1] == 2) == (case == "gqa")
    feeds = _sdpa_feeds(model, rng)
    want = ort_run(model, feeds, threads=1)
    got = reference.run(graph, feeds)
    for name, arr in want.items():
        np.testing.assert_allclose(got[name], arr, rtol=1e-5, atol=1e-5)


# -- the test models ------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["bert_like_model", "gpt2_like_model"])
def test_every_layer_of_the_test_models(fixture, request):
    model = request.getfixturevalue(fixture)
    # The default pipeline (which runs the pass; else it is added as an extra), without
    # lower-attention: this checks the recognized `attention` ops (lowering has its own tests).
    passes = [p for p in pipeline_passes([] if PASS in default_pipeline() else [PASS]) if p != "lower-attention"]
    pm = PassManager(passes, verify=True)
    graph = pm.run(convert_model(model))
    (fired,) = [r.rules_fired for r in pm.records if r.name == PASS]
    # 6 layers each; GPT-2's constant causal triangle becomes is_causal, BERT's padding mask stays.
    expected = {"recognize_attention": 6}
    if fixture == "gpt2_like_model":
        expected["attention_causal"] = 6
    assert dict(fired) == expected
    feeds = token_inputs(model)
    want = ort_run(model, feeds, threads=1)
    got = reference.run(graph, feeds)
    for name, arr in want.items():
        np.testing.assert_allclose(got[name], arr, rtol=1e-4, atol=1e-4)


def _tiny_llama(attn_implementation: str) -> onnx.ModelProto:
    """A 2-layer Llama (4 query heads, 2 kv heads, rotary embeddings), random weights."""
    from einfuse.testing.models import _cached, _export

    params = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "seq": 16, "attn": attn_implementation}

    def build() -> onnx.ModelProto:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=100,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=16,
            use_cache=False,
            attn_implementation=attn_implementation,
        )
        model = LlamaForCausalLM(config).eval()
        return _export(model, (torch.zeros(1, 16, dtype=torch.int64),), ["input_ids"], ["logits"])

    return _cached("llama-tiny", params, build)


@pytest.mark.slow  # a cold export (torch dynamo + transformers) takes ~30 s
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_llama_gqa(attn_implementation, rng):
    model = _tiny_llama(attn_implementation)
    graph, fired = _recognized(convert_model(model))
    assert fired == {"recognize_attention": 2, "attention_causal": 2, "attention_gqa": 2}
    feeds = {"input_ids": rng.integers(0, 100, (1, 16))}
    want = ort_run(model, feeds, threads=1)["logits"]
    np.testing.assert_allclose(reference.run(graph, feeds)["logits"], want, rtol=1e-4, atol=1e-4)


# -- property: the rewrite keeps the reference output ---------------------------------------


TOLERANCE = {DType.f32: 1e-5, DType.f16: 2e-2, DType.bf16: 6e-2}


@st.composite
def attention_graphs(draw):
    b, hkv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3]))
    hq = hkv * group
    s, m, d = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 8))
    scale_form = draw(st.sampled_from(["none", "mul", "div", "q", "k", "split"]))
    masks = ["none", "additive", "bool", "causal", "bottom_right", "bias", "padding+causal"]
    mask_kind = draw(st.sampled_from(masks))
    c = draw(st.sampled_from([0.125, 0.3, 1.7]))
    dtype = draw(st.sampled_from([DType.f32, DType.f32, DType.f16, DType.bf16]))
    upcast = dtype != DType.f32 and draw(st.booleans())  # softmax(x.float()).to(dtype)
    # The mask added before a scale of the logits (then scaled with them).
    mask_first = scale_form in ("mul", "div") and mask_kind in ("additive", "bool", "bias") and draw(st.booleans())
    if mask_kind in ("causal", "padding+causal") and m < s:
        m = s  # a top-left triangle needs every query to see a key
    if mask_kind == "bottom_right" and m <= s:
        m = s + 1
    return b, hq, hkv, s, m, d, scale_form, mask_kind, c, dtype, upcast, mask_first


def _build(b, hq, hkv, s, m, d, scale_form, mask_kind, c, dtype, upcast, mask_first, rng) -> tuple[Graph, dict]:
    g = Graph()
    t = dtype.np
    q = g.add_input("q", TensorType((b, hq, s, d), dtype))
    k = g.add_input("k", TensorType((b, hkv, m, d), dtype))
    v = g.add_input("v", TensorType((b, hkv, m, d), dtype))
    feeds = {"q": rng.standard_normal((b, hq, s, d)), "k": rng.standard_normal((b, hkv, m, d))}
    feeds["v"] = rng.standard_normal((b, hkv, m, d))
    bld = Builder(g)
    cst = bld.const("c", np.array(c, t))
    if hq != hkv:  # torch's repeat_kv
        k, v = (
            bld.op(
                "reshape",
                [bld.op("expand", [bld.op("unsqueeze", [x], axes=(2,))], shape=(b, hkv, hq // hkv, m, d))],
                shape=(b, hq, m, d),
            )
            for x in (k, v)
        )
    kt = bld.op("transpose", [k], perm=(0, 1, 3, 2))
    if scale_form in ("q", "split"):
        q = bld.op("mul", [q, cst])
    if scale_form in ("k", "split"):
        kt = bld.op("mul", [kt, cst])
    logits = bld.op("matmul", [q, kt])

    def scaled(logits):
        if scale_form == "mul":
            return bld.op("mul", [cst, logits])
        if scale_form == "div":
            return bld.op("div", [logits, cst])
        return logits

    if not mask_first:
        logits = scaled(logits)
    if mask_kind in ("additive", "padding+causal"):
        g_mask = g.add_input("mask", TensorType((b, 1, 1, m), dtype))
        feeds["mask"] = np.where(rng.random((b, 1, 1, m)) < 0.3, -1e4, 0.0)
        logits = bld.op("add", [logits, g_mask])
    if mask_kind == "bool":
        cond = g.add_input("cond", TensorType((b, 1, s, m), DType.bool))
        feeds["cond"] = rng.random((b, 1, s, m)) < 0.7
        feeds["cond"][..., 0] = True
        logits = bld.op("where", [cond, logits, bld.const("ninf", np.array(-np.inf, t))])
    if mask_kind in ("causal", "padding+causal", "bottom_right"):
        tri = _causal(s, m, k=m - s if mask_kind == "bottom_right" else 0, fill=float(ml_dtypes.finfo(t).min))
        logits = bld.op("add", [bld.const("tri", tri.astype(t)), logits])
    if mask_kind == "bias":
        logits = bld.op("add", [logits, bld.const("bias", rng.standard_normal((1, hq, s, m)).astype(t))])
    if mask_first:
        logits = scaled(logits)
    if upcast:
        probs = bld.op("cast", [bld.op("softmax", [bld.op("cast", [logits], to=DType.f32)], axis=3)], to=dtype)
    else:
        probs = bld.op("softmax", [logits], axis=3)
    g.outputs.append(bld.op("matmul", [probs, v]))
    return g, {name: a.astype(t) if a.dtype != bool else a for name, a in feeds.items()}


@given(attention_graphs())
def test_rewrite_keeps_the_reference_output(params):
    rng = np.random.default_rng(0)
    graph, feeds = _build(*params, rng=rng)
    (want,) = reference.run(graph, feeds).values()
    pm = PassManager([PASS], verify=True)
    out = pm.run(graph)
    fired = pm.records[0].rules_fired
    assert fired.get("recognize_attention") == 1, fired
    assert not any(n.op in ("softmax", "matmul") for n in out.nodes)
    _, hq, hkv, s, m, _, _, mask_kind, _, dtype, upcast, _ = params
    assert fired.get("attention_gqa", 0) == (hq != hkv)
    # A triangle that hides nothing (one key; one query bottom-right) is dropped instead.
    hides = (mask_kind in ("causal", "padding+causal") and m > 1) or (mask_kind == "bottom_right" and s > 1)
    assert fired.get("attention_causal", 0) == hides
    (node,) = [n for n in out.nodes if n.op == "attention"]
    assert node.attrs["softmax_precision"] == (DType.f32 if upcast else dtype)
    (got,) = reference.run(out, feeds).values()
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)
