"""The `fuse` pass: each rule of FUSION_RULES as before/after IR text (epilogues, chains,
reductions, anchors, opaque ops, constants, cycle avoidance), the decision log, and
properties of the partition on random graphs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from einfuse.errors import EinfuseError
from einfuse.ir.ops import OUT_FUSABLE, get_op
from einfuse.ir.parser import parse
from einfuse.ir.verifier import verify
from einfuse.passes import PassManager
from einfuse.passes.fuse import (
    FUSION_RULES,
    Fuse,
    extract_region,
    fused_groups,
    keep_existing_groups,
    opaque_stands_alone,
    otherwise_apart,
    partition,
)
from einfuse.testing.strategies import graphs
from tests.passes.helpers import check_rewrite

W84 = {"w": np.ones((8, 4), np.float32), "w2": np.ones((4, 8), np.float32)}


# -- out-fusable anchors and their epilogues ---------------------------------------------


def test_matmul_takes_bias_activation_and_residual_add():
    check_rewrite(
        """
        graph @main(%x: f32[B,8], %r: f32[B,4]) -> (%y: f32[B,4]) {
          @w = const : f32[8,4]
          @b = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          %m = matmul(%x, @w) : f32[B,4]
          %a = add(%m, @b) : f32[B,4]
          %g = gelu(%a) : f32[B,4]
          %y = add(%g, %r) : f32[B,4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,8], %r: f32[B,4]) -> (%y: f32[B,4]) {
          @w = const : f32[8,4]
          %y = fused(%x, @w, %r) {kind="out_fusable", region=graph @matmul_add_gelu(%x: f32[B,8], %w: f32[8,4], %r: f32[B,4]) -> (%y: f32[B,4]) {
              @b = const [1.0, 2.0, 3.0, 4.0] : f32[4]
              %m = matmul(%x, %w) : f32[B,4]
              %a = add(%m, @b) : f32[B,4]
              %g = gelu(%a) : f32[B,4]
              %y = add(%g, %r) : f32[B,4]
              return %y
            }} : f32[B,4]
          return %y
        }
        """,
        "fuse",
        constants=W84,
        fired={"epilogue": 3},
    )


def test_epilogue_takes_casts_and_reshapes_but_not_a_transpose():
    check_rewrite(
        """
        graph @main(%x: f32[2,8]) -> (%y: f16[4,2,1]) {
          @w = const : f32[8,4]
          %m = matmul(%x, @w) : f32[2,4]
          %c = cast(%m) {to=f16} : f16[2,4]
          %f = reshape(%c) {shape=(1,2,4)} : f16[1,2,4]
          %y = transpose(%f) {perm=(2,1,0)} : f16[4,2,1]
          return %y
        }
        """,
        """
        graph @main(%x: f32[2,8]) -> (%y: f16[4,2,1]) {
          @w = const : f32[8,4]
          %f = fused(%x, @w) {kind="out_fusable", region=graph @matmul_cast_reshape(%x: f32[2,8], %w: f32[8,4]) -> (%f: f16[1,2,4]) {
              %m = matmul(%x, %w) : f32[2,4]
              %c = cast(%m) {to=f16} : f16[2,4]
              %f = reshape(%c) {shape=(1,2,4)} : f16[1,2,4]
              return %f
            }} : f16[1,2,4]
          %y = fused(%f) {kind="injective", region=graph @transpose(%f: f16[1,2,4]) -> (%y: f16[4,2,1]) {
              %y = transpose(%f) {perm=(2,1,0)} : f16[4,2,1]
              return %y
            }} : f16[4,2,1]
          return %y
        }
        """,
        "fuse",
        constants=W84,
        fired={"epilogue": 2, "otherwise_apart": 1},
    )


def test_two_out_fusable_anchors_never_share_a_group():
    check_rewrite(
        """
        graph @main(%x: f32[B,8]) -> (%y: f32[B,8]) {
          @w = const : f32[8,4]
          @w2 = const : f32[4,8]
          %m = matmul(%x, @w) : f32[B,4]
          %r = relu(%m) : f32[B,4]
          %y = matmul(%r, @w2) : f32[B,8]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,8]) -> (%y: f32[B,8]) {
          @w = const : f32[8,4]
          @w2 = const : f32[4,8]
          %r = fused(%x, @w) {kind="out_fusable", region=graph @matmul_relu(%x: f32[B,8], %w: f32[8,4]) -> (%r: f32[B,4]) {
              %m = matmul(%x, %w) : f32[B,4]
              %r = relu(%m) : f32[B,4]
              return %r
            }} : f32[B,4]
          %y = fused(%r, @w2) {kind="out_fusable", region=graph @matmul(%r: f32[B,4], %w2: f32[4,8]) -> (%y: f32[B,8]) {
              %y = matmul(%r, %w2) : f32[B,8]
              return %y
            }} : f32[B,8]
          return %y
        }
        """,
        "fuse",
        constants=W84,
        fired={"epilogue": 1, "one_anchor_per_group": 1},
    )


def test_no_prologue_and_a_value_used_outside_is_a_region_output():
    # exp(x) feeds the matmul (no prologue) and is returned: its group outputs it.
    check_rewrite(
        """
        graph @main(%x: f32[2,8]) -> (%e: f32[2,8], %y: f32[2,4]) {
          @w = const : f32[8,4]
          %e = exp(%x) : f32[2,8]
          %y = matmul(%e, @w) : f32[2,4]
          return %e, %y
        }
        """,
        """
        graph @main(%x: f32[2,8]) -> (%e: f32[2,8], %y: f32[2,4]) {
          @w = const : f32[8,4]
          %e = fused(%x) {kind="elementwise", region=graph @exp(%x: f32[2,8]) -> (%e: f32[2,8]) {
              %e = exp(%x) : f32[2,8]
              return %e
            }} : f32[2,8]
          %y = fused(%e, @w) {kind="out_fusable", region=graph @matmul(%e: f32[2,8], %w: f32[8,4]) -> (%y: f32[2,4]) {
              %y = matmul(%e, %w) : f32[2,4]
              return %y
            }} : f32[2,4]
          return %e, %y
        }
        """,
        "fuse",
        constants=W84,
        fired={"no_prologue": 1},
    )


def test_an_epilogue_may_not_broadcast_the_output_larger():
    # add(m: [1,4], z: [3,4]) would compute each matmul output three times.
    check_rewrite(
        """
        graph @main(%x: f32[1,8], %z: f32[3,4]) -> (%y: f32[3,4]) {
          @w = const : f32[8,4]
          %m = matmul(%x, @w) : f32[1,4]
          %y = add(%m, %z) : f32[3,4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[1,8], %z: f32[3,4]) -> (%y: f32[3,4]) {
          @w = const : f32[8,4]
          %m = fused(%x, @w) {kind="out_fusable", region=graph @matmul(%x: f32[1,8], %w: f32[8,4]) -> (%m: f32[1,4]) {
              %m = matmul(%x, %w) : f32[1,4]
              return %m
            }} : f32[1,4]
          %y = fused(%m, %z) {kind="elementwise", region=graph @add(%m: f32[1,4], %z: f32[3,4]) -> (%y: f32[3,4]) {
              %y = add(%m, %z) : f32[3,4]
              return %y
            }} : f32[3,4]
          return %y
        }
        """,
        "fuse",
        constants=W84,
        fired={"epilogue_keeps_shape": 1},
    )


def test_conv_takes_its_bias_and_relu_but_not_the_pool_after_it():
    check_rewrite(
        """
        graph @main(%x: f32[1,3,8,8]) -> (%y: f32[1,4,4,4]) {
          @w = const : f32[4,3,3,3]
          @b = const [0.1, 0.2, 0.3, 0.4] : f32[4,1,1]
          %c = conv(%x, @w) {kernel_shape=(3,3), pads=(1,1,1,1)} : f32[1,4,8,8]
          %a = add(%c, @b) : f32[1,4,8,8]
          %r = relu(%a) : f32[1,4,8,8]
          %y = max_pool(%r) {kernel_shape=(2,2), strides=(2,2)} : f32[1,4,4,4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[1,3,8,8]) -> (%y: f32[1,4,4,4]) {
          @w = const : f32[4,3,3,3]
          %r = fused(%x, @w) {kind="out_fusable", region=graph @conv_add_relu(%x: f32[1,3,8,8], %w: f32[4,3,3,3]) -> (%r: f32[1,4,8,8]) {
              @b = const [0.1, 0.2, 0.3, 0.4] : f32[4,1,1]
              %c = conv(%x, %w) {kernel_shape=(3,3), pads=(1,1,1,1)} : f32[1,4,8,8]
              %a = add(%c, @b) : f32[1,4,8,8]
              %r = relu(%a) : f32[1,4,8,8]
              return %r
            }} : f32[1,4,8,8]
          %y = fused(%r) {kind="reduce", region=graph @max_pool(%r: f32[1,4,8,8]) -> (%y: f32[1,4,4,4]) {
              %y = max_pool(%r) {kernel_shape=(2,2), strides=(2,2)} : f32[1,4,4,4]
              return %y
            }} : f32[1,4,4,4]
          return %y
        }
        """,
        "fuse",
        constants={"w": np.ones((4, 3, 3, 3), np.float32)},
        fired={"epilogue": 2, "one_anchor_per_group": 1},
    )


# -- chains and reductions ----------------------------------------------------------------


def test_elementwise_and_injective_chains_fuse():
    check_rewrite(
        """
        graph @main(%x: f32[B,4], %z: f32[4,B]) -> (%y: f32[4,B]) {
          %t = transpose(%x) {perm=(1,0)} : f32[4,B]
          %e = exp(%t) : f32[4,B]
          %y = add(%e, %z) : f32[4,B]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,4], %z: f32[4,B]) -> (%y: f32[4,B]) {
          %y = fused(%x, %z) {kind="injective", region=graph @transpose_exp_add(%x: f32[B,4], %z: f32[4,B]) -> (%y: f32[4,B]) {
              %t = transpose(%x) {perm=(1,0)} : f32[4,B]
              %e = exp(%t) : f32[4,B]
              %y = add(%e, %z) : f32[4,B]
              return %y
            }} : f32[4,B]
          return %y
        }
        """,
        "fuse",
        fired={"light_chain": 2},
    )


def test_reduction_takes_elementwise_producers_and_consumers():
    check_rewrite(
        """
        graph @main(%x: f32[B,16]) -> (%y: f32[B,1]) {
          %e = exp(%x) : f32[B,16]
          %s = reduce_sum(%e) {axes=(1,)} : f32[B,1]
          %y = log(%s) : f32[B,1]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,16]) -> (%y: f32[B,1]) {
          %y = fused(%x) {kind="reduce", region=graph @exp_reduce_sum_log(%x: f32[B,16]) -> (%y: f32[B,1]) {
              %e = exp(%x) : f32[B,16]
              %s = reduce_sum(%e) {axes=(1,)} : f32[B,1]
              %y = log(%s) : f32[B,1]
              return %y
            }} : f32[B,1]
          return %y
        }
        """,
        "fuse",
        fired={"reduction_takes_elementwise_producers": 1, "epilogue": 1},
    )


SOFTMAX_WRITTEN_OUT = """
    graph @main(%x: f32[B,16]) -> (%y: f32[B,16]) {
      %m = reduce_max(%x) {axes=(1,)} : f32[B,1]
      %d = sub(%x, %m) : f32[B,16]
      %e = exp(%d) : f32[B,16]
      %s = reduce_sum(%e) {axes=(1,)} : f32[B,1]
      %y = div(%e, %s) : f32[B,16]
      return %y
    }
"""


def test_softmax_written_out_is_one_group():
    check_rewrite(
        SOFTMAX_WRITTEN_OUT,
        """
        graph @main(%x: f32[B,16]) -> (%y: f32[B,16]) {
          %y = fused(%x) {kind="reduce", region=graph @reduce_max_sub_exp_reduce_sum_etc(%x: f32[B,16]) -> (%y: f32[B,16]) {
              %m = reduce_max(%x) {axes=(1,)} : f32[B,1]
              %d = sub(%x, %m) : f32[B,16]
              %e = exp(%d) : f32[B,16]
              %s = reduce_sum(%e) {axes=(1,)} : f32[B,1]
              %y = div(%e, %s) : f32[B,16]
              return %y
            }} : f32[B,16]
          return %y
        }
        """,
        "fuse",
        fired={"epilogue": 3, "same_row_reductions": 1},
    )


def test_layer_norm_written_out_is_one_group_with_its_small_constants_inside():
    check_rewrite(
        """
        graph @main(%x: f32[B,S,8]) -> (%y: f32[B,S,8]) {
          @two = const [2.0] : f32[]
          @eps = const [1e-05] : f32[]
          @g = const : f32[8]
          %mu = reduce_mean(%x) {axes=(2,)} : f32[B,S,1]
          %d = sub(%x, %mu) : f32[B,S,8]
          %p = pow(%d, @two) : f32[B,S,8]
          %v = reduce_mean(%p) {axes=(2,)} : f32[B,S,1]
          %ve = add(%v, @eps) : f32[B,S,1]
          %sd = sqrt(%ve) : f32[B,S,1]
          %n = div(%d, %sd) : f32[B,S,8]
          %y = mul(%n, @g) : f32[B,S,8]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,S,8]) -> (%y: f32[B,S,8]) {
          %y = fused(%x) {kind="reduce", region=graph @reduce_mean_sub_pow_add_etc(%x: f32[B,S,8]) -> (%y: f32[B,S,8]) {
              @two = const [2.0] : f32[]
              @eps = const [1e-05] : f32[]
              @g = const [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5] : f32[8]
              %mu = reduce_mean(%x) {axes=(2,)} : f32[B,S,1]
              %d = sub(%x, %mu) : f32[B,S,8]
              %p = pow(%d, @two) : f32[B,S,8]
              %v = reduce_mean(%p) {axes=(2,)} : f32[B,S,1]
              %ve = add(%v, @eps) : f32[B,S,1]
              %sd = sqrt(%ve) : f32[B,S,1]
              %n = div(%d, %sd) : f32[B,S,8]
              %y = mul(%n, @g) : f32[B,S,8]
              return %y
            }} : f32[B,S,8]
          return %y
        }
        """,
        "fuse",
        constants={"g": np.full(8, 1.5, np.float32)},
        fired={"epilogue": 6, "same_row_reductions": 1},
    )


def test_reductions_over_different_rows_stay_apart():
    check_rewrite(
        """
        graph @main(%x: f32[4,16]) -> (%y: f32[1,1]) {
          %s = reduce_sum(%x) {axes=(1,)} : f32[4,1]
          %y = reduce_max(%s) {axes=(0,)} : f32[1,1]
          return %y
        }
        """,
        """
        graph @main(%x: f32[4,16]) -> (%y: f32[1,1]) {
          %s = fused(%x) {kind="reduce", region=graph @reduce_sum(%x: f32[4,16]) -> (%s: f32[4,1]) {
              %s = reduce_sum(%x) {axes=(1,)} : f32[4,1]
              return %s
            }} : f32[4,1]
          %y = fused(%s) {kind="reduce", region=graph @reduce_max(%s: f32[4,1]) -> (%y: f32[1,1]) {
              %y = reduce_max(%s) {axes=(0,)} : f32[1,1]
              return %y
            }} : f32[1,1]
          return %y
        }
        """,
        "fuse",
        fired={"one_anchor_per_group": 1},
    )


def test_normalize_takes_elementwise_producers_but_not_a_matmul_epilogue():
    # The residual add belongs to the matmul (epilogue); the layer_norm stands alone
    # then takes the reshape after it; the scale before the softmax joins the softmax.
    check_rewrite(
        """
        graph @main(%x: f32[4,8], %r: f32[4,4], %g: f32[4], %b: f32[4]) -> (%y: f32[16], %s: f32[4,4]) {
          @w = const : f32[8,4]
          @half = const [0.5] : f32[]
          %m = matmul(%x, @w) : f32[4,4]
          %a = add(%m, %r) : f32[4,4]
          %n = layer_norm(%a, %g, %b) {axis=1} : f32[4,4]
          %y = reshape(%n) {shape=(16,)} : f32[16]
          %h = mul(%r, @half) : f32[4,4]
          %s = softmax(%h) {axis=1} : f32[4,4]
          return %y, %s
        }
        """,
        """
        graph @main(%x: f32[4,8], %r: f32[4,4], %g: f32[4], %b: f32[4]) -> (%y: f32[16], %s: f32[4,4]) {
          @w = const : f32[8,4]
          %a = fused(%x, @w, %r) {kind="out_fusable", region=graph @matmul_add(%x: f32[4,8], %w: f32[8,4], %r: f32[4,4]) -> (%a: f32[4,4]) {
              %m = matmul(%x, %w) : f32[4,4]
              %a = add(%m, %r) : f32[4,4]
              return %a
            }} : f32[4,4]
          %y = fused(%a, %g, %b) {kind="normalize", region=graph @layer_norm_reshape(%a: f32[4,4], %g: f32[4], %b: f32[4]) -> (%y: f32[16]) {
              %n = layer_norm(%a, %g, %b) {axis=1} : f32[4,4]
              %y = reshape(%n) {shape=(16,)} : f32[16]
              return %y
            }} : f32[16]
          %s = fused(%r) {kind="normalize", region=graph @mul_softmax(%r: f32[4,4]) -> (%s: f32[4,4]) {
              @half = const [0.5] : f32[]
              %h = mul(%r, @half) : f32[4,4]
              %s = softmax(%h) {axis=1} : f32[4,4]
              return %s
            }} : f32[4,4]
          return %y, %s
        }
        """,
        "fuse",
        constants=W84,
        fired={"epilogue": 2, "one_anchor_per_group": 1, "reduction_takes_elementwise_producers": 1},
    )


# -- opaque ops, existing groups, constants -----------------------------------------------


def test_opaque_ops_stand_alone():
    check_rewrite(
        """
        graph @main(%x: f32[B,8]) -> (%y: f32[B,8]) {
          %r = relu(%x) : f32[B,8]
          %c = cumsum(%r) {axis=1} : f32[B,8]
          %y = exp(%c) : f32[B,8]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,8]) -> (%y: f32[B,8]) {
          %r = fused(%x) {kind="elementwise", region=graph @relu(%x: f32[B,8]) -> (%r: f32[B,8]) {
              %r = relu(%x) : f32[B,8]
              return %r
            }} : f32[B,8]
          %c = fused(%r) {kind="opaque", region=graph @cumsum(%r: f32[B,8]) -> (%c: f32[B,8]) {
              %c = cumsum(%r) {axis=1} : f32[B,8]
              return %c
            }} : f32[B,8]
          %y = fused(%c) {kind="elementwise", region=graph @exp(%c: f32[B,8]) -> (%y: f32[B,8]) {
              %y = exp(%c) : f32[B,8]
              return %y
            }} : f32[B,8]
          return %y
        }
        """,
        "fuse",
        fired={"opaque_stands_alone": 2},
    )


def test_a_shape_op_left_on_symbolic_dims_stands_alone():
    check_rewrite(
        """
        graph @main(%x: f32[B,8]) -> (%y: i64[2]) {
          %s = shape(%x) : i64[2]
          %y = neg(%s) : i64[2]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,8]) -> (%y: i64[2]) {
          %s = fused(%x) {kind="shape", region=graph @shape(%x: f32[B,8]) -> (%s: i64[2]) {
              %s = shape(%x) : i64[2]
              return %s
            }} : i64[2]
          %y = fused(%s) {kind="elementwise", region=graph @neg(%s: i64[2]) -> (%y: i64[2]) {
              %y = neg(%s) : i64[2]
              return %y
            }} : i64[2]
          return %y
        }
        """,
        "fuse",
        fired={"opaque_stands_alone": 1},
    )


def test_small_constants_are_copied_into_each_region_weights_stay_operands():
    # @half is read by two groups: each region gets a copy, the outer one goes. @big
    # (17 elements) stays an operand, even though only one group reads it.
    check_rewrite(
        """
        graph @main(%x: f32[17], %z: f32[17]) -> (%y: f32[17], %c: f32[17]) {
          @half = const [0.5] : f32[]
          @big = const : f32[17]
          %a = mul(%x, @half) : f32[17]
          %b = add(%a, @big) : f32[17]
          %y = cumsum(%b) {axis=0} : f32[17]
          %c = mul(%z, @half) : f32[17]
          return %y, %c
        }
        """,
        """
        graph @main(%x: f32[17], %z: f32[17]) -> (%y: f32[17], %c: f32[17]) {
          @big = const : f32[17]
          %b = fused(%x, @big) {kind="elementwise", region=graph @mul_add(%x: f32[17], %big: f32[17]) -> (%b: f32[17]) {
              @half = const [0.5] : f32[]
              %a = mul(%x, @half) : f32[17]
              %b = add(%a, %big) : f32[17]
              return %b
            }} : f32[17]
          %y = fused(%b) {kind="opaque", region=graph @cumsum(%b: f32[17]) -> (%y: f32[17]) {
              %y = cumsum(%b) {axis=0} : f32[17]
              return %y
            }} : f32[17]
          %c = fused(%z) {kind="elementwise", region=graph @mul(%z: f32[17]) -> (%c: f32[17]) {
              @half = const [0.5] : f32[]
              %c = mul(%z, @half) : f32[17]
              return %c
            }} : f32[17]
          return %y, %c
        }
        """,
        "fuse",
        constants={"big": np.arange(17, dtype=np.float32)},
    )


def test_fuse_keeps_existing_fused_groups_and_is_idempotent():
    once = check_rewrite(
        SOFTMAX_WRITTEN_OUT,
        SOFTMAX_WRITTEN_OUT_FUSED,
        "fuse",
    )
    before = str(once)
    again = PassManager(["fuse"], verify=True).run(once)
    assert str(again) == before
    assert partition(again).counts() == {}  # one node: no edge to decide about


SOFTMAX_WRITTEN_OUT_FUSED = """
    graph @main(%x: f32[B,16]) -> (%y: f32[B,16]) {
      %y = fused(%x) {kind="reduce", region=graph @reduce_max_sub_exp_reduce_sum_etc(%x: f32[B,16]) -> (%y: f32[B,16]) {
          %m = reduce_max(%x) {axes=(1,)} : f32[B,1]
          %d = sub(%x, %m) : f32[B,16]
          %e = exp(%d) : f32[B,16]
          %s = reduce_sum(%e) {axes=(1,)} : f32[B,1]
          %y = div(%e, %s) : f32[B,16]
          return %y
        }} : f32[B,16]
      return %y
    }
"""


def test_a_fused_group_made_earlier_does_not_grow():
    check_rewrite(
        """
        graph @main(%x: f32[B,16]) -> (%y: f32[B,16]) {
          %f = fused(%x) {kind="elementwise", region=graph @mine(%x: f32[B,16]) -> (%e: f32[B,16]) {
              %e = exp(%x) : f32[B,16]
              return %e
            }} : f32[B,16]
          %y = relu(%f) : f32[B,16]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,16]) -> (%y: f32[B,16]) {
          %f = fused(%x) {kind="elementwise", region=graph @mine(%x: f32[B,16]) -> (%e: f32[B,16]) {
              %e = exp(%x) : f32[B,16]
              return %e
            }} : f32[B,16]
          %y = fused(%f) {kind="elementwise", region=graph @relu(%f: f32[B,16]) -> (%y: f32[B,16]) {
              %y = relu(%f) : f32[B,16]
              return %y
            }} : f32[B,16]
          return %y
        }
        """,
        "fuse",
        fired={"keep_existing_groups": 1},
    )


# -- cycles -----------------------------------------------------------------------------------

# %e feeds the matmul, whose transpose %t meets %e again in %y. %e and %y may fuse by
# light_chain, but the group {e, y} would both feed the matmul and depend on it.
DIAMOND = """
    graph @main(%x: f32[5,5]) -> (%y: f32[5,5]) {
      @w = const : f32[5,5]
      %e = exp(%x) : f32[5,5]
      %m = matmul(%e, @w) : f32[5,5]
      %t = transpose(%m) {perm=(1,0)} : f32[5,5]
      %y = add(%e, %t) : f32[5,5]
      return %y
    }
"""


def test_a_merge_that_would_close_a_cycle_is_refused():
    result = check_rewrite(
        DIAMOND,
        """
        graph @main(%x: f32[5,5]) -> (%y: f32[5,5]) {
          @w = const : f32[5,5]
          %e = fused(%x) {kind="elementwise", region=graph @exp(%x: f32[5,5]) -> (%e: f32[5,5]) {
              %e = exp(%x) : f32[5,5]
              return %e
            }} : f32[5,5]
          %m = fused(%e, @w) {kind="out_fusable", region=graph @matmul(%e: f32[5,5], %w: f32[5,5]) -> (%m: f32[5,5]) {
              %m = matmul(%e, %w) : f32[5,5]
              return %m
            }} : f32[5,5]
          %y = fused(%m, %e) {kind="injective", region=graph @transpose_add(%m: f32[5,5], %e: f32[5,5]) -> (%y: f32[5,5]) {
              %t = transpose(%m) {perm=(1,0)} : f32[5,5]
              %y = add(%e, %t) : f32[5,5]
              return %y
            }} : f32[5,5]
          return %y
        }
        """,
        "fuse",
        constants={"w": np.eye(5, dtype=np.float32)},
        fired={"no_prologue": 1, "otherwise_apart": 1, "would_create_cycle": 1, "light_chain": 1},
    )
    assert nx.is_directed_acyclic_graph(result.to_networkx())


def test_why_names_the_deciding_rule():
    g = parse(DIAMOND, constants={"w": np.eye(5, dtype=np.float32)})
    p = partition(g)
    d = p.why("e", "y")
    assert (d.rule, d.fused) == ("would_create_cycle", False)
    assert str(d) == "%e -> add %y: kept apart by would_create_cycle"
    assert (p.why("t", "y").rule, p.why("t", "y").fused) == ("light_chain", True)
    assert p.why("e", "m").rule == "no_prologue"
    with pytest.raises(KeyError, match="no fusion decision"):
        p.why("x", "e")  # a graph input: no producer group
    assert [len(g.nodes) for g in p.groups] == [1, 1, 2]


def test_rules_are_data_a_pipeline_can_change():
    # Only the rules that keep things apart: every node gets a group of its own.
    g = parse(SOFTMAX_WRITTEN_OUT)
    out = PassManager([Fuse(rules=(keep_existing_groups, opaque_stands_alone, otherwise_apart))], verify=True).run(g)
    assert [n.op for n in out.nodes] == ["fused"] * 5
    assert fused_groups(out) == {"reduce": 2, "elementwise": 3}
    # Each rule says what it does in one line (explain and the docs show these).
    for r in FUSION_RULES:
        assert r.__doc__ and "\n" not in r.__doc__.strip(), r.__name__


# -- extract_region (for users' fusion rules) ------------------------------------------------


def test_extract_region_copies_the_nodes_between_inputs_and_outputs():
    g = parse(
        """
        graph @main(%x: f32[2,8]) -> (%y: f32[2,4]) {
          @w = const : f32[8,4]
          @b = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          %m = matmul(%x, @w) : f32[2,4]
          %a = add(%m, @b) : f32[2,4]
          %y = gelu(%a) : f32[2,4]
          return %y
        }
        """,
        constants=W84,
    )
    x, w, y = g.inputs[0], g.value("w"), g.value("y")
    region = extract_region(g, [w, x], [y], name="mine")
    verify(region)
    assert [v.name for v in region.inputs] == ["w", "x"]  # the caller's order
    assert [n.op for n in region.nodes] == ["matmul", "add", "gelu"]
    assert list(region.constants) == ["b"]  # not an input: copied in
    with pytest.raises(EinfuseError, match="neither computed nor among the inputs"):
        extract_region(g, [w], [y])


# -- properties on random graphs ---------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(max_nodes=10))
def test_partition_is_a_valid_acyclic_grouping(g):
    p = partition(g)
    seen = [id(n) for group in p.groups for n in group.nodes]
    assert sorted(seen) == sorted(id(n) for n in g.nodes)  # every node in exactly one group
    group_of = {id(n): k for k, group in enumerate(p.groups) for n in group.nodes}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(p.groups)))
    for a, b in g.to_networkx().edges():
        if group_of[id(a)] != group_of[id(b)]:
            dag.add_edge(group_of[id(a)], group_of[id(b)])
    assert nx.is_directed_acyclic_graph(dag)
    # p.groups is in dependency order.
    assert all(u < v for u, v in dag.edges())
    for group in p.groups:
        anchors = [n for n in group.nodes if get_op(n.op).family == OUT_FUSABLE]
        assert len(anchors) <= 1, group
    out = PassManager(["fuse"], verify=True).run(g)
    assert all(n.op == "fused" for n in out.nodes)
    assert len(out.nodes) == len(p.groups)
