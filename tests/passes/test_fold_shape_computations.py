"""fold-shape-computations: before/after IR text for every rule, an exported-style
symbolic shape chain end to end, and the BERT-like model's outputs."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.ir.types import sym
from einfuse.passes import PassManager, get_pass
from einfuse.passes.fold_shape_computations import static_reshape_target
from tests.passes.helpers import check_rewrite


def test_shape_and_size_fold_when_the_dims_they_read_are_static():
    check_rewrite(
        """
        graph @main(%x: f32[2,3], %y: f32[B,768], %z: f32[B,0]) -> (%s: i64[2], %n: i64[], %t: i64[1], %u: i64[2], %m: i64[], %k: i64[]) {
          %s = shape(%x) : i64[2]
          %n = size(%x) : i64[]
          %t = shape(%y) {start=1} : i64[1]
          %u = shape(%y) : i64[2]
          %m = size(%y) : i64[]
          %k = size(%z) : i64[]
          return %s, %n, %t, %u, %m, %k
        }
        """,
        # The last dim of %y is static even though its batch is not; B*0 is 0.
        """
        graph @main(%x: f32[2,3], %y: f32[B,768], %z: f32[B,0]) -> (@s: i64[2], @n: i64[], @t: i64[1], %u: i64[2], %m: i64[], @k: i64[]) {
          @s = const [2, 3] : i64[2]
          @n = const [6] : i64[]
          @t = const [768] : i64[1]
          @k = const [0] : i64[]
          %u = shape(%y) : i64[2]
          %m = size(%y) : i64[]
          return @s, @n, @t, %u, %m, @k
        }
        """,
        "fold-shape-computations",
        fired={"fold_static_shape": 4},
    )


def test_elements_of_shape_chains_fold_once_static():
    check_rewrite(
        """
        graph @main(%x: f32[B,S,768]) -> (%hd: i64[], %tail: i64[2], %zero: i64[1], %t: i64[4], %bs: i32[1]) {
          @i0 = const [0] : i64[]
          @i2 = const [2] : i64[]
          @i01 = const [0, 1] : i64[2]
          @c12 = const [12, 64] : i64[2]
          %s = shape(%x) : i64[3]
          %hd = gather(%s, @i2) : i64[]
          %tail = slice(%s) {starts=(1,), ends=(9223372036854775807,), axes=(0,), steps=(1,)} : i64[2]
          %b = gather(%s, @i0) : i64[]
          %bu = unsqueeze(%b) {axes=(0,)} : i64[1]
          %zero = sub(%bu, %bu) : i64[1]
          %bsv = gather(%s, @i01) : i64[2]
          %t = concat(%bsv, @c12) {axis=0} : i64[4]
          %bs = cast(%bu) {to=i32} : i32[1]
          return %hd, %tail, %zero, %t, %bs
        }
        """,
        # 768 is static, [S, 768] is not, B - B is 0; [B, S, 12, 64] and B stay symbolic.
        """
        graph @main(%x: f32[B,S,768]) -> (@hd: i64[], %tail: i64[2], @zero: i64[1], %t: i64[4], %bs: i32[1]) {
          @i0 = const [0] : i64[]
          @i01 = const [0, 1] : i64[2]
          @c12 = const [12, 64] : i64[2]
          @hd = const [768] : i64[]
          @zero = const [0] : i64[1]
          %s = shape(%x) : i64[3]
          %tail = slice(%s) {starts=(1,), ends=(9223372036854775807,), axes=(0,), steps=(1,)} : i64[2]
          %b = gather(%s, @i0) : i64[]
          %bu = unsqueeze(%b) {axes=(0,)} : i64[1]
          %bsv = gather(%s, @i01) : i64[2]
          %t = concat(%bsv, @c12) {axis=0} : i64[4]
          %bs = cast(%bu) {to=i32} : i32[1]
          return @hd, %tail, @zero, %t, %bs
        }
        """,
        "fold-shape-computations",
        fired={"fold_known_shape_elements": 2},
    )


SLICES = """
    graph @main(%x: f32[B,12,64]) -> (%hw: i64[2], %n: i64[1], %m: i32[1]) {
      %s = shape(%x) : i64[3]
      %hw = slice(%s) {starts=(-2,), ends=(9223372036854775807,), axes=(0,), steps=(1,)} : i64[2]
      %h = slice(%s) {starts=(1,), ends=(2,), axes=(0,), steps=(1,)} : i64[1]
      %d = slice(%s) {starts=(2,), ends=(3,), axes=(0,), steps=(1,)} : i64[1]
      %n = mul(%h, %d) : i64[1]
      %m = cast(%n) {to=i32} : i32[1]
      return %hw, %n, %m
    }
    """


def test_static_slices_of_partially_static_shapes_fold_and_so_do_their_consumers():
    check_rewrite(
        SLICES,
        # The slices fold, and so does %m: the elements of %n (a node, not yet a constant)
        # are known to be 12 * 64. %n reads constants only by then: a consumer, folded after.
        """
        graph @main(%x: f32[B,12,64]) -> (@hw: i64[2], @n: i64[1], @m: i32[1]) {
          @hw = const [12, 64] : i64[2]
          @m = const [768] : i32[1]
          @n = const [768] : i64[1]
          return @hw, @n, @m
        }
        """,
        "fold-shape-computations",
        fired={"fold_known_shape_elements": 4, "fold_consumers": 1},
    )


def test_without_fold_consumers_all_constant_consumers_are_left_to_fold_constants():
    check_rewrite(
        SLICES,
        """
        graph @main(%x: f32[B,12,64]) -> (@hw: i64[2], %n: i64[1], @m: i32[1]) {
          @hw = const [12, 64] : i64[2]
          @h = const [12] : i64[1]
          @d = const [64] : i64[1]
          @m = const [768] : i32[1]
          %n = mul(@h, @d) : i64[1]
          return @hw, %n, @m
        }
        """,
        get_pass("fold-shape-computations", fold_consumers=False),
        fired={"fold_known_shape_elements": 4},
    )


def test_integer_data_is_not_a_shape_and_constant_only_nodes_are_left_to_fold_constants():
    text = """
        graph @main(%i: i64[4], %x: f32[B,3]) -> (%y: i64[4], %z: i64[2], %w: f32[B,3]) {
          @a = const [1, 2] : i64[2]
          @b = const [3, 4] : i64[2]
          %y = add(%i, %i) : i64[4]
          %z = add(@a, @b) : i64[2]
          %w = reshape(%x) {shape=(0,3)} : f32[B,3]
          return %y, %z, %w
        }
        """
    check_rewrite(text, text, "fold-shape-computations", fired={})


def test_reshape_targets_take_their_canonical_form():
    check_rewrite(
        """
        graph @main(%x: f32[4,3,2], %y: f32[B,S,768], %z: f32[2,0], %u: f32[B,S]) -> (%a: f32[4,6], %b: f32[B,S,12,64], %c: f32[0,2], %d: f32[B,S]) {
          %a = reshape(%x) {shape=(0,-1)} : f32[4,6]
          %b = reshape(%y) {shape=(-1,0,12,64)} : f32[B,S,12,64]
          %c = reshape(%z) {shape=(-1,2)} : f32[0,2]
          %d = reshape(%u) {shape=(0,-1)} : f32[B,S]
          return %a, %b, %c, %d
        }
        """,
        # Explicit static dims, 0 for a copied symbolic dim; a static 0 needs allowzero.
        """
        graph @main(%x: f32[4,3,2], %y: f32[B,S,768], %z: f32[2,0], %u: f32[B,S]) -> (%a: f32[4,6], %b: f32[B,S,12,64], %c: f32[0,2], %d: f32[B,S]) {
          %a = reshape(%x) {shape=(4,6)} : f32[4,6]
          %b = reshape(%y) {shape=(0,0,12,64)} : f32[B,S,12,64]
          %c = reshape(%z) {shape=(0,2), allowzero=true} : f32[0,2]
          %d = reshape(%u) {shape=(0,0)} : f32[B,S]
          return %a, %b, %c, %d
        }
        """,
        "fold-shape-computations",
        fired={"canonicalize_reshape_target": 4},
    )


def test_static_reshape_target():
    b, s = sym("B"), sym("S")
    assert static_reshape_target((b, s, 768), (b, s, 12, 64)) == ((0, 0, 12, 64), 0)
    assert static_reshape_target((b, s, 768), (b * s, 768)) == ((-1, 768), 0)
    assert static_reshape_target((b, s, 768), (b, s * 12, 64)) == ((0, -1, 64), 0)
    assert static_reshape_target((2, 3), (3, 2)) == ((3, 2), 0)
    assert static_reshape_target((2, 0), (0, 5)) == ((0, 5), 1)
    # Both symbolic dims move: it would take two -1s.
    assert static_reshape_target((b, s), (s, b)) is None
    assert static_reshape_target((b, s), (1, b, s)) is None
    # A static 0 beside a -1 cannot be said either.
    assert static_reshape_target((b, 0), (0, b)) is None


def _exported_attention_scale() -> onnx.ModelProto:
    """What exporters write for `x.view(B, S, 12, 64) / sqrt(x.size(-1))` on dynamic axes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["sq"], axis=0),
        helper.make_node("Gather", ["s", "i2"], ["hd"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
        helper.make_node("Unsqueeze", ["sq", "ax"], ["su"]),
        helper.make_node("Concat", ["bu", "su", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Cast", ["hd"], ["hdf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["hdf"], ["scale"]),
        helper.make_node("Div", ["r", "scale"], ["y"]),
    ]
    inits = [
        helper.make_tensor("i0", TensorProto.INT64, [], [0]),
        helper.make_tensor("i1", TensorProto.INT64, [], [1]),
        helper.make_tensor("i2", TensorProto.INT64, [], [2]),
        helper.make_tensor("ax", TensorProto.INT64, [1], [0]),
        helper.make_tensor("heads", TensorProto.INT64, [2], [12, 64]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention_scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 768])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 12, 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_exported_symbolic_shape_chain_folds_away(rng):
    graph = convert_model(_exported_attention_scale())
    feeds = {"x": rng.standard_normal((2, 5, 768)).astype(np.float32)}
    before = reference.run(graph, feeds)
    # In the default pipeline's order: fold-constants finds nothing (every shape is symbolic).
    pm = PassManager(["fold-constants", "fold-shape-computations", "eliminate-dead-code"], verify=True)
    graph = pm.run(graph)
    # Shape(x)[2] -> 768, then its cast and sqrt.
    assert pm.records[1].rules_fired == {"fold_known_shape_elements": 1, "fold_consumers": 2}
    # What is left: the reshape (its target an attribute) and a division by a constant.
    assert [n.op for n in graph.nodes] == ["reshape", "div"]
    assert graph.nodes[0].attrs["shape"] == (0, 0, 12, 64)
    scale = graph.const_value(graph.nodes[1].inputs[1])
    np.testing.assert_allclose(scale, np.sqrt(np.float32(768)), rtol=1e-7)
    after = reference.run(graph, feeds)
    np.testing.assert_array_equal(after["y"], before["y"])


def test_bert_like_outputs_are_preserved(bert_like_model):
    from einfuse.testing.models import token_inputs

    graph = convert_model(bert_like_model)
    feeds = token_inputs(bert_like_model)
    before = reference.run(graph, feeds)
    pm = PassManager(["fold-shape-computations"], verify=True)
    graph = pm.run(graph)
    # Exported with static shapes: the importer already folded every shape computation.
    assert pm.records[0].rules_fired == {}
    after = reference.run(graph, feeds)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
