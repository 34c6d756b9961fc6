"""fold-constants: before/after IR text."""

import numpy as np
import pytest

from einfuse.ir.parser import parse
from einfuse.passes import get_pass
from einfuse.passes.fold_constants import FoldConstants, evaluate_node
from tests.passes.helpers import check_rewrite


def test_constant_chain_folds_and_consumed_constants_go():
    check_rewrite(
        """
        graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
          @a = const [1.0, -2.0] : f32[2]
          @b = const [3.0, 4.0] : f32[2]
          @keep = const [9.0] : f32[1]
          %s = add(@a, @b) : f32[2]
          %r = relu(@a) : f32[2]
          %t = mul(%s, %r) : f32[2]
          %y = add(%x, %t) : f32[B,2]
          return %y
        }
        """,
        # Constants that only folded nodes read are dropped; @keep was already unused
        # and is left to eliminate-dead-code.
        """
        graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
          @keep = const [9.0] : f32[1]
          @t = const [4.0, 0.0] : f32[2]
          %y = add(%x, @t) : f32[B,2]
          return %y
        }
        """,
        "fold-constants",
    )


def test_folded_graph_output_keeps_its_name_and_multi_output_nodes_fold():
    check_rewrite(
        """
        graph @main(%x: f32[2]) -> (%p: f32[1,2], %y: f32[2]) {
          @m = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
          %p, %q = split(@m) {axis=0, split=(1,2)} : f32[1,2], f32[2,2]
          %e = equal(%q, %q) : bool[2,2]
          %y = relu(%x) : f32[2]
          return %p, %y
        }
        """,
        """
        graph @main(%x: f32[2]) -> (@p: f32[1,2], %y: f32[2]) {
          @p = const [1.0, 2.0] : f32[1,2]
          @e = const [true, true, true, true] : bool[2,2]
          %y = relu(%x) : f32[2]
          return @p, %y
        }
        """,
        "fold-constants",
    )


def test_shape_ops_fold_on_static_shapes_only():
    check_rewrite(
        """
        graph @main(%x: f32[2,3], %z: f32[B,3]) -> (%s: i64[2], %t: i64[2]) {
          %s = shape(%x) : i64[2]
          %t = shape(%z) : i64[2]
          return %s, %t
        }
        """,
        """
        graph @main(%x: f32[2,3], %z: f32[B,3]) -> (@s: i64[2], %t: i64[2]) {
          @s = const [2, 3] : i64[2]
          %t = shape(%z) : i64[2]
          return @s, %t
        }
        """,
        "fold-constants",
    )


def test_size_limit_is_checked_before_evaluating():
    before = """
        graph @main(%x: f32[4,4]) -> (%y: f32[4,4], %z: f32[5,5]) {
          %small = constant_of_shape() {shape=(4,4), value=1.0} : f32[4,4]
          %y = add(%x, %small) : f32[4,4]
          %z = constant_of_shape() {shape=(5,5), value=1.0} : f32[5,5]
          return %y, %z
        }
    """
    # 4x4 f32 is 64 bytes: folded; 5x5 is 100 bytes: left for run time.
    check_rewrite(
        before,
        """
        graph @main(%x: f32[4,4]) -> (%y: f32[4,4], %z: f32[5,5]) {
          @small = const [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] : f32[4,4]
          %y = add(%x, @small) : f32[4,4]
          %z = constant_of_shape() {shape=(5,5), value=1.0} : f32[5,5]
          return %y, %z
        }
        """,
        get_pass("fold-constants", max_bytes=64),
    )
    # Nothing is ever evaluated past the limit, however large.
    g = parse(before.replace("shape=(5,5)", "shape=(100000,100000)").replace("f32[5,5]", "f32[100000,100000]"))
    FoldConstants(max_bytes=64).run(g)
    assert g.nodes[-1].op == "constant_of_shape"


def test_evaluate_node_checks_results_against_the_node_type():
    g = parse("""
        graph @main() -> (%y: i64[3]) {
          @a = const [1, 2, 3] : i64[3]
          %y = add(@a, @a) : i64[3]
          return %y
        }
    """)
    (out,) = evaluate_node(g, g.nodes[0])
    np.testing.assert_array_equal(out, [2, 4, 6])
    assert out.dtype == np.int64


def test_pass_options_are_validated():
    with pytest.raises(Exception, match="pass 'fold-constants' has no option 'max_size'"):
        get_pass("fold-constants", max_size=1)


def test_scalar_results_fold():
    check_rewrite(
        """
        graph @main(%x: f32[2,3]) -> (%n: i64[]) {
          %n = size(%x) : i64[]
          return %n
        }
        """,
        """
        graph @main(%x: f32[2,3]) -> (@n: i64[]) {
          @n = const [6] : i64[]
          return @n
        }
        """,
        "fold-constants",
    )
