"""fuse-sibling-matmuls: before/after IR text, numbers, and the BERT-like model's Q/K/V groups."""

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.errors import EinfuseError
from einfuse.ir.parser import parse
from einfuse.passes import PassManager, get_pass
from tests.passes.helpers import check_rewrite

QKV = """
graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,4], %r: f32[B,S,2]) {
  @wq = const [1.0, 2.0] : f32[2,1]
  @bq = const [0.5] : f32[1]
  @wk = const [3.0, 4.0] : f32[2,1]
  @bk = const [0.25] : f32[1,1,1]
  @wv = const [5.0, 6.0, 7.0, 8.0] : f32[2,2]
  @bv = const [-1.0, 1.0] : f32[2]
  %q = matmul(%x, @wq) : f32[B,S,1]
  %qb = add(%q, @bq) : f32[B,S,1]
  %k = matmul(%x, @wk) : f32[B,S,1]
  %kb = add(@bk, %k) : f32[B,S,1]
  %v = matmul(%x, @wv) : f32[B,S,2]
  %vb = add(%v, @bv) : f32[B,S,2]
  %y = concat(%qb, %kb, %vb) {axis=2} : f32[B,S,4]
  %r = add(%x, %x) : f32[B,S,2]
  return %y, %r
}
"""


def test_qkv_projections_with_biases_become_one_matmul_add_and_split():
    check_rewrite(
        QKV,
        # Weights concatenated along N ([2,1] [2,1] [2,2] -> [2,4]); biases of any shape that
        # broadcasts along N only ([1], [1,1,1], [2]) become one [4] vector. The split's
        # outputs take the names of the adds they replace.
        """
        graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,4], %r: f32[B,S,2]) {
          @wq.siblings = const [1.0, 3.0, 5.0, 6.0, 2.0, 4.0, 7.0, 8.0] : f32[2,4]
          @bq.siblings = const [0.5, 0.25, -1.0, 1.0] : f32[4]
          %q.wide = matmul(%x, @wq.siblings) : f32[B,S,4]
          %qb.wide = add(%q.wide, @bq.siblings) : f32[B,S,4]
          %qb, %kb, %vb = split(%qb.wide) {axis=2, split=(1,1,2)} : f32[B,S,1], f32[B,S,1], f32[B,S,2]
          %y = concat(%qb, %kb, %vb) {axis=2} : f32[B,S,4]
          %r = add(%x, %x) : f32[B,S,2]
          return %y, %r
        }
        """,
        "fuse-sibling-matmuls",
        fired={"fuse_sibling_matmuls": 1, "fuse_sibling_biases": 1},
    )


def test_fusion_keeps_the_numbers(rng):
    graph = parse(QKV)
    feeds = {"x": rng.standard_normal((2, 5, 2)).astype(np.float32)}
    before = reference.run(graph, feeds)
    after = reference.run(PassManager(["fuse-sibling-matmuls"], verify=True).run(graph), feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6, atol=1e-6)


def test_without_a_fusable_bias_on_every_member_only_the_matmuls_fuse():
    # %k is also a graph output, so its add cannot absorb it; %v's bias varies along rows.
    check_rewrite(
        """
        graph @main(%x: f16[3,2]) -> (%qb: f16[3,1], %k: f16[3,1], %kb: f16[3,1], %vb: f16[3,2]) {
          @wq = const [1.0, 2.0] : f16[2,1]
          @bq = const [0.5] : f16[1]
          @wk = const [3.0, 4.0] : f16[2,1]
          @bk = const [0.25] : f16[1]
          @wv = const [5.0, 6.0, 7.0, 8.0] : f16[2,2]
          @bv = const [1.0, 2.0, 3.0] : f16[3,1]
          %q = matmul(%x, @wq) : f16[3,1]
          %qb = add(%q, @bq) : f16[3,1]
          %k = matmul(%x, @wk) : f16[3,1]
          %kb = add(%k, @bk) : f16[3,1]
          %v = matmul(%x, @wv) : f16[3,2]
          %vb = add(%v, @bv) : f16[3,2]
          return %qb, %k, %kb, %vb
        }
        """,
        """
        graph @main(%x: f16[3,2]) -> (%qb: f16[3,1], %k: f16[3,1], %kb: f16[3,1], %vb: f16[3,2]) {
          @bq = const [0.5] : f16[1]
          @bk = const [0.25] : f16[1]
          @bv = const [1.0, 2.0, 3.0] : f16[3,1]
          @wq.siblings = const [1.0, 3.0, 5.0, 6.0, 2.0, 4.0, 7.0, 8.0] : f16[2,4]
          %q.wide = matmul(%x, @wq.siblings) : f16[3,4]
          %q, %k, %v = split(%q.wide) {axis=1, split=(1,1,2)} : f16[3,1], f16[3,1], f16[3,2]
          %qb = add(%q, @bq) : f16[3,1]
          %kb = add(%k, @bk) : f16[3,1]
          %vb = add(%v, @bv) : f16[3,2]
          return %qb, %k, %kb, %vb
        }
        """,
        "fuse-sibling-matmuls",
        fired={"fuse_sibling_matmuls": 1},
    )


def test_groups_need_constant_2d_weights_and_min_group_members():
    # x's siblings: one constant 2-D weight (%a), a graph input weight (%b), a batched
    # constant weight (%c), and x as the right operand (%d): no group of two.
    text = """
        graph @main(%x: f32[4,4], %w: f32[4,4]) -> (%a: f32[4,4], %b: f32[4,4], %c: f32[2,4,4], %d: f32[4,4]) {
          @w2 = const : f32[4,4]
          @w3 = const : f32[2,4,4]
          %a = matmul(%x, @w2) : f32[4,4]
          %b = matmul(%x, %w) : f32[4,4]
          %c = matmul(%x, @w3) : f32[2,4,4]
          %d = matmul(@w2, %x) : f32[4,4]
          return %a, %b, %c, %d
        }
        """
    weights = {"w2": np.eye(4, dtype=np.float32), "w3": np.ones((2, 4, 4), np.float32)}
    check_rewrite(text, text, "fuse-sibling-matmuls", constants=weights, fired={})


def test_min_group_option():
    text = """
        graph @main(%x: f32[B,2]) -> (%p: f32[B,1], %q: f32[B,1]) {
          @u = const [1.0, 2.0] : f32[2,1]
          @v = const [3.0, 4.0] : f32[2,1]
          %p = matmul(%x, @u) : f32[B,1]
          %q = matmul(%x, @v) : f32[B,1]
          return %p, %q
        }
        """
    check_rewrite(text, text, get_pass("fuse-sibling-matmuls", min_group=3), fired={})
    check_rewrite(
        text,
        # Graph outputs keep their names.
        """
        graph @main(%x: f32[B,2]) -> (%p: f32[B,1], %q: f32[B,1]) {
          @u.siblings = const [1.0, 3.0, 2.0, 4.0] : f32[2,2]
          %p.wide = matmul(%x, @u.siblings) : f32[B,2]
          %p, %q = split(%p.wide) {axis=1, split=(1,1)} : f32[B,1], f32[B,1]
          return %p, %q
        }
        """,
        "fuse-sibling-matmuls",
        fired={"fuse_sibling_matmuls": 1},
    )
    with pytest.raises(EinfuseError, match="min_group must be at least 2"):
        get_pass("fuse-sibling-matmuls", min_group=1)


def test_vector_operand_and_chained_groups():
    # The second group reads an output of the first: groups are fused one at a time.
    check_rewrite(
        """
        graph @main(%x: f32[2]) -> (%e: f32[1], %d: f32[1]) {
          @wa = const [1.0, 2.0, 3.0, 4.0] : f32[2,2]
          @wb = const [5.0, 6.0] : f32[2,1]
          @wc = const [1.0, 1.0] : f32[2,1]
          @wd = const [2.0, 2.0] : f32[2,1]
          %a = matmul(%x, @wa) : f32[2]
          %b = matmul(%x, @wb) : f32[1]
          %c = matmul(%a, @wc) : f32[1]
          %d = matmul(%a, @wd) : f32[1]
          %e = add(%c, %b) : f32[1]
          return %e, %d
        }
        """,
        """
        graph @main(%x: f32[2]) -> (%e: f32[1], %d: f32[1]) {
          @wa.siblings = const [1.0, 2.0, 5.0, 3.0, 4.0, 6.0] : f32[2,3]
          @wc.siblings = const [1.0, 2.0, 1.0, 2.0] : f32[2,2]
          %a.wide = matmul(%x, @wa.siblings) : f32[3]
          %a, %b = split(%a.wide) {axis=0, split=(2,1)} : f32[2], f32[1]
          %c.wide = matmul(%a, @wc.siblings) : f32[2]
          %c, %d = split(%c.wide) {axis=0, split=(1,1)} : f32[1], f32[1]
          %e = add(%c, %b) : f32[1]
          return %e, %d
        }
        """,
        "fuse-sibling-matmuls",
        fired={"fuse_sibling_matmuls": 2},
    )


def test_bert_like_qkv_groups_after_canonicalize(bert_like_model):
    from einfuse.frontends.onnx import convert_model
    from einfuse.testing.models import token_inputs

    graph = convert_model(bert_like_model)
    feeds = token_inputs(bert_like_model)
    before = reference.run(graph, feeds)
    matmuls_before = sum(n.op == "matmul" for n in graph.nodes)
    pm = PassManager(["canonicalize", "fuse-sibling-matmuls"], verify=True)
    graph = pm.run(graph)
    # One Q/K/V group per layer, each with its three biases.
    assert pm.records[1].rules_fired == {"fuse_sibling_matmuls": 6, "fuse_sibling_biases": 6}
    splits = [n for n in graph.nodes if n.op == "split"]
    assert [n.attrs["split"] for n in splits] == [(384, 384, 384)] * 6
    # +1 from the pooler's gemm, -2 per layer.
    assert sum(n.op == "matmul" for n in graph.nodes) == matmuls_before + 1 - 12
    assert pm.records[1].nodes_before - pm.records[1].nodes_after == 6 * 3
    after = reference.run(graph, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)
