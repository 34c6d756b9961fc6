"""fold-batchnorm: before/after IR text for each rule and refusal, numerical equality
with the unfolded graph (f32 and f16), and the light ResNet-50, DenseNet-121 and
Inception-v2 graphs with random weights.

Batch-norm statistics used in the IR texts (epsilon=1): scale [2, 6], shift [0.5, -1],
mean [1, 2], var [3, 8], so s = scale / sqrt(var + 1) = [1, 2] and
t = shift - mean * s = [-0.5, -5]: every folded value below is exact."""

import re
from collections import Counter

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.ir.parser import parse, parse_type
from einfuse.passes import PassManager
from einfuse.passes.fold_batchnorm import FOLD_BATCHNORM
from einfuse.testing.models import expose_outputs, light_random_input, load_light, logits_names, randomize_weights
from tests.passes.helpers import apply, check_rewrite

BN_STATS = """
  @scale = const [2.0, 6.0] : f32[2]
  @shift = const [0.5, -1.0] : f32[2]
  @mean = const [1.0, 2.0] : f32[2]
  @var = const [3.0, 8.0] : f32[2]
"""
BN = "@scale, @shift, @mean, @var) {epsilon=1.0}"


def graph_text(signature: str, body: str) -> str:
    return f"graph @main{signature} {{\n{BN_STATS}{body}\n}}"


# -- 1. a batch norm folds into the linear op that produces its input ---------------------


def test_batchnorm_folds_into_depthwise_conv():
    check_rewrite(
        graph_text(
            "(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,3])",
            f"""
              @w = const [1.0, 2.0, 3.0, 4.0] : f32[2,1,1,2]
              %c = conv(%x, @w) {{group=2, kernel_shape=(1,2), pads=(0,0,0,0)}} : f32[1,2,4,3]
              %y = batch_norm(%c, {BN} : f32[1,2,4,3]
              return %y
            """,
        ),
        # w' = w * s per output channel; the conv had no bias: b' = t.
        """
        graph @main(%x: f32[1,2,4,4]) -> (%y: f32[1,2,4,3]) {
          @w = const [1.0, 2.0, 6.0, 8.0] : f32[2,1,1,2]
          @w_bias = const [-0.5, -5.0] : f32[2]
          %y = conv(%x, @w, @w_bias) {group=2, kernel_shape=(1,2), pads=(0,0,0,0)} : f32[1,2,4,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_batchnorm_into_conv": 1},
    )


def test_batchnorm_folds_into_conv_with_bias():
    check_rewrite(
        graph_text(
            "(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3])",
            f"""
              @w = const [1.0, 3.0] : f32[2,1,1,1]
              @b = const [3.0, 1.0] : f32[2]
              %c = conv(%x, @w, @b) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
              %y = batch_norm(%c, {BN} : f32[N,2,3,3]
              return %y
            """,
        ),
        # b' = (b - mean) * s + shift = [(3-1)*1 + 0.5, (1-2)*2 - 1]
        """
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3]) {
          @w = const [1.0, 6.0] : f32[2,1,1,1]
          @b = const [2.5, -3.0] : f32[2]
          %y = conv(%x, @w, @b) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_batchnorm_into_conv": 1},
    )


def test_batchnorm_folds_into_grouped_conv_transpose():
    # conv_transpose weight (C=2, M/g=2, 1, 1) with group=2: row c of group g feeds the
    # output channels 2g and 2g+1, so the scale runs along axis 1 within each group.
    check_rewrite(
        """
        graph @main(%x: f32[1,2,3,3]) -> (%y: f32[1,4,3,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0] : f32[2,2,1,1]
          @scale = const [1.0, 2.0, 3.0, 4.0] : f32[4]
          @shift = const [0.0, 0.0, 0.0, 1.0] : f32[4]
          @mean = const [0.0, 0.0, 0.0, 0.0] : f32[4]
          @var = const [0.0, 0.0, 0.0, 0.0] : f32[4]
          %c = conv_transpose(%x, @w) {group=2, kernel_shape=(1,1)} : f32[1,4,3,3]
          %y = batch_norm(%c, @scale, @shift, @mean, @var) {epsilon=1.0} : f32[1,4,3,3]
          return %y
        }
        """,
        """
        graph @main(%x: f32[1,2,3,3]) -> (%y: f32[1,4,3,3]) {
          @w = const [1.0, 4.0, 9.0, 16.0] : f32[2,2,1,1]
          @w_bias = const [0.0, 0.0, 0.0, 1.0] : f32[4]
          %y = conv_transpose(%x, @w, @w_bias) {group=2, kernel_shape=(1,1)} : f32[1,4,3,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_batchnorm_into_conv": 1},
    )


def test_batchnorm_folds_into_matmul_and_its_bias():
    check_rewrite(
        graph_text(
            "(%x: f32[N,3]) -> (%y: f32[N,2])",
            f"""
              @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
              @b = const [1.0, 1.0] : f32[2]
              %m = matmul(%x, @w) : f32[N,2]
              %a = add(%m, @b) : f32[N,2]
              %y = batch_norm(%a, {BN} : f32[N,2]
              return %y
            """,
        ),
        """
        graph @main(%x: f32[N,3]) -> (%y: f32[N,2]) {
          @w = const [1.0, 4.0, 3.0, 8.0, 5.0, 12.0] : f32[3,2]
          @b = const [0.5, -3.0] : f32[2]
          %matmul = matmul(%x, @w) : f32[N,2]
          %y = add(%matmul, @b) : f32[N,2]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_batchnorm_into_matmul": 1},
    )


def test_batchnorm_folds_into_gemm_with_transposed_weight():
    check_rewrite(
        graph_text(
            "(%x: f32[N,3]) -> (%y: f32[N,2])",
            f"""
              @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
              @c = const [1.0, 2.0] : f32[2]
              %g = gemm(%x, @w, @c) {{beta=2.0, transB=true}} : f32[N,2]
              %y = batch_norm(%g, {BN} : f32[N,2]
              return %y
            """,
        ),
        # transB: the output channels are w's rows. c' = (beta * c - mean) * s + shift.
        """
        graph @main(%x: f32[N,3]) -> (%y: f32[N,2]) {
          @w = const [1.0, 2.0, 3.0, 8.0, 10.0, 12.0] : f32[2,3]
          @c = const [1.5, 3.0] : f32[2]
          %y = gemm(%x, @w, @c) {transB=true} : f32[N,2]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_batchnorm_into_gemm": 1},
    )


# -- 2. a batch norm that cannot fold becomes a per-channel affine --------------------------

AFFINE_AFTER = """
          @scale = const [1.0, 2.0] : f32[2,1,1]
          @shift = const [-0.5, -5.0] : f32[2,1,1]
"""


def test_batchnorm_after_a_nonlinear_op_becomes_mul_add():
    check_rewrite(
        graph_text(
            "(%x: f32[N,2,4,4]) -> (%y: f32[N,2,4,4])",
            f"""
              %r = relu(%x) : f32[N,2,4,4]
              %y = batch_norm(%r, {BN} : f32[N,2,4,4]
              return %y
            """,
        ),
        f"""
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,2,4,4]) {{
          {AFFINE_AFTER}
          %r = relu(%x) : f32[N,2,4,4]
          %mul = mul(%r, @scale) : f32[N,2,4,4]
          %y = add(%mul, @shift) : f32[N,2,4,4]
          return %y
        }}
        """,
        "fold-batchnorm",
        fired={"batchnorm_to_affine": 1},
    )


def test_batchnorm_on_rank_2_becomes_affine_over_axis_1():
    check_rewrite(
        graph_text(
            "(%x: f32[N,2]) -> (%y: f32[N,2])",
            f"""
              %y = batch_norm(%x, {BN} : f32[N,2]
              return %y
            """,
        ),
        """
        graph @main(%x: f32[N,2]) -> (%y: f32[N,2]) {
          @scale = const [1.0, 2.0] : f32[2]
          @shift = const [-0.5, -5.0] : f32[2]
          %mul = mul(%x, @scale) : f32[N,2]
          %y = add(%mul, @shift) : f32[N,2]
          return %y
        }
        """,
        "fold-batchnorm",
    )


def test_batchnorm_over_the_rows_of_a_matmul_becomes_affine():
    # On a rank-3 product (B, 2, 3), channel axis 1 is not the weight's column axis.
    check_rewrite(
        graph_text(
            "(%x: f32[B,2,3]) -> (%y: f32[B,2,3])",
            f"""
              @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] : f32[3,3]
              %m = matmul(%x, @w) : f32[B,2,3]
              %y = batch_norm(%m, {BN} : f32[B,2,3]
              return %y
            """,
        ),
        """
        graph @main(%x: f32[B,2,3]) -> (%y: f32[B,2,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] : f32[3,3]
          @scale = const [1.0, 2.0] : f32[2,1]
          @shift = const [-0.5, -5.0] : f32[2,1]
          %m = matmul(%x, @w) : f32[B,2,3]
          %mul = mul(%m, @scale) : f32[B,2,3]
          %y = add(%mul, @shift) : f32[B,2,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"batchnorm_to_affine": 1},
    )


def test_batchnorm_after_a_conv_with_two_users_does_not_fold():
    # Folding would need the conv twice (once for %z): it becomes an affine instead,
    # and the affine's mul does not fold into the shared conv either.
    check_rewrite(
        graph_text(
            "(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3], %z: f32[N,2,3,3])",
            f"""
              @w = const [1.0, 3.0] : f32[2,1,1,1]
              %c = conv(%x, @w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
              %y = batch_norm(%c, {BN} : f32[N,2,3,3]
              %z = relu(%c) : f32[N,2,3,3]
              return %y, %z
            """,
        ),
        f"""
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3], %z: f32[N,2,3,3]) {{
          @w = const [1.0, 3.0] : f32[2,1,1,1]
          {AFFINE_AFTER}
          %c = conv(%x, @w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
          %mul = mul(%c, @scale) : f32[N,2,3,3]
          %y = add(%mul, @shift) : f32[N,2,3,3]
          %z = relu(%c) : f32[N,2,3,3]
          return %y, %z
        }}
        """,
        "fold-batchnorm",
        fired={"batchnorm_to_affine": 1},
    )


def test_batchnorm_after_a_conv_with_a_weight_input_does_not_fold():
    check_rewrite(
        graph_text(
            "(%x: f32[N,1,3,3], %w: f32[2,1,1,1]) -> (%y: f32[N,2,3,3])",
            f"""
              %c = conv(%x, %w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
              %y = batch_norm(%c, {BN} : f32[N,2,3,3]
              return %y
            """,
        ),
        f"""
        graph @main(%x: f32[N,1,3,3], %w: f32[2,1,1,1]) -> (%y: f32[N,2,3,3]) {{
          {AFFINE_AFTER}
          %c = conv(%x, %w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
          %mul = mul(%c, @scale) : f32[N,2,3,3]
          %y = add(%mul, @shift) : f32[N,2,3,3]
          return %y
        }}
        """,
        "fold-batchnorm",
        fired={"batchnorm_to_affine": 1},
    )


def test_batchnorm_with_computed_statistics_stays():
    # Statistics that are not constants (a training graph, or a graph not yet through
    # fold-constants) leave the batch norm alone.
    text = """
        graph @main(%x: f32[N,2], %var: f32[2]) -> (%y: f32[N,2]) {
          @scale = const [2.0, 6.0] : f32[2]
          @shift = const [0.5, -1.0] : f32[2]
          @mean = const [1.0, 2.0] : f32[2]
          %y = batch_norm(%x, @scale, @shift, @mean, %var) {epsilon=1.0} : f32[N,2]
          return %y
        }
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


def test_shared_weight_is_copied_not_changed():
    # The other conv still reads @w, so the folded weight is a new constant.
    check_rewrite(
        graph_text(
            "(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3], %z: f32[N,2,3,3])",
            f"""
              @w = const [1.0, 3.0] : f32[2,1,1,1]
              %c = conv(%x, @w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
              %y = batch_norm(%c, {BN} : f32[N,2,3,3]
              %z = conv(%x, @w) {{kernel_shape=(1,1), pads=(0,0,0,0)}} : f32[N,2,3,3]
              return %y, %z
            """,
        ),
        """
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3], %z: f32[N,2,3,3]) {
          @w = const [1.0, 3.0] : f32[2,1,1,1]
          @w.0 = const [1.0, 6.0] : f32[2,1,1,1]
          @w_bias = const [-0.5, -5.0] : f32[2]
          %y = conv(%x, @w.0, @w_bias) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          %z = conv(%x, @w) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          return %y, %z
        }
        """,
        "fold-batchnorm",
    )


# -- a scale or shift after a linear op joins its weights and bias -------------------------


def test_scale_and_shift_after_conv_fold_into_it():
    # DenseNet's pattern: conv, then a per-channel mul and add (channel vectors (C,1,1)).
    check_rewrite(
        """
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3]) {
          @w = const [1.0, 3.0] : f32[2,1,1,1]
          @b = const [1.0, -1.0] : f32[2]
          @s = const [2.0, 0.5] : f32[2,1,1]
          @t = const [0.25, 4.0] : f32[1,2,1,1]
          %c = conv(%x, @w, @b) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          %m = mul(@s, %c) : f32[N,2,3,3]
          %y = add(%m, @t) : f32[N,2,3,3]
          return %y
        }
        """,
        """
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3]) {
          @w = const [2.0, 1.5] : f32[2,1,1,1]
          @b = const [2.25, 3.5] : f32[2]
          %y = conv(%x, @w, @b) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_scale_into_conv": 1, "fold_shift_into_conv_bias": 1},
    )


def test_scale_after_matmul_folds_into_weight_and_bias():
    check_rewrite(
        """
        graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
          @b = const [1.0, 1.0, 1.0] : f32[3]
          @s = const [2.0, 0.5, -1.0] : f32[3]
          %m = matmul(%x, @w) : f32[B,S,3]
          %a = add(@b, %m) : f32[B,S,3]
          %y = mul(%a, @s) : f32[B,S,3]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,3]) {
          @w = const [2.0, 1.0, -3.0, 8.0, 2.5, -6.0] : f32[2,3]
          @b = const [2.0, 0.5, -1.0] : f32[3]
          %matmul = matmul(%x, @w) : f32[B,S,3]
          %y = add(%matmul, @b) : f32[B,S,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_scale_into_matmul": 1},
    )


def test_scale_and_shift_after_gemm_fold_into_it():
    check_rewrite(
        """
        graph @main(%x: f32[N,3]) -> (%y: f32[N,2]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
          @s = const [2.0, -1.0] : f32[1,2]
          @t = const [0.5, 0.25] : f32[2]
          %g = gemm(%x, @w) {alpha=0.5} : f32[N,2]
          %m = mul(%g, @s) : f32[N,2]
          %y = add(%m, @t) : f32[N,2]
          return %y
        }
        """,
        """
        graph @main(%x: f32[N,3]) -> (%y: f32[N,2]) {
          @w = const [2.0, -2.0, 6.0, -4.0, 10.0, -6.0] : f32[3,2]
          @w_bias = const [0.5, 0.25] : f32[2]
          %y = gemm(%x, @w, @w_bias) {alpha=0.5} : f32[N,2]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_scale_into_gemm": 1, "fold_shift_into_gemm_bias": 1},
    )


def test_constants_that_are_not_per_channel_stay():
    # The mul varies along the width, the add along the batch-broadcast height: neither
    # is a per-output-channel affine of the conv.
    text = """
        graph @main(%x: f32[N,1,3,3]) -> (%y: f32[N,2,3,3]) {
          @w = const [1.0, 3.0] : f32[2,1,1,1]
          @s = const [1.0, 2.0, 3.0] : f32[3]
          @t = const [1.0, 2.0, 3.0] : f32[3,1]
          %c = conv(%x, @w) {kernel_shape=(1,1), pads=(0,0,0,0)} : f32[N,2,3,3]
          %m = mul(%c, @s) : f32[N,2,3,3]
          %y = add(%m, @t) : f32[N,2,3,3]
          return %y
        }
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


# -- 3. an affine that feeds a linear op folds into it --------------------------------------

# The conv reads (x * s + t) with s = [2, 3], t = [1, -1] per input channel; its weight
# is (M=1, C=2, 1, 2): w[0, 0] = [1, 2], w[0, 1] = [3, 4].
AFFINE_CONSTANTS = """
          @s = const [2.0, 3.0] : f32[2,1,1]
          @t = const [1.0, -1.0] : f32[2,1,1]
          @w = const [1.0, 2.0, 3.0, 4.0] : f32[1,2,1,2]
          @b = const [0.5] : f32[1]
"""


def test_affine_folds_into_following_conv_without_padding():
    # w' = w * s per input channel; b' = b + sum(w * t) = 0.5 + (1+2)*1 + (3+4)*(-1).
    check_rewrite(
        f"""
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,1,4,3]) {{
          {AFFINE_CONSTANTS}
          %m = mul(%x, @s) : f32[N,2,4,4]
          %a = add(%m, @t) : f32[N,2,4,4]
          %y = conv(%a, @w, @b) {{kernel_shape=(1,2), pads=(0,0,0,0)}} : f32[N,1,4,3]
          return %y
        }}
        """,
        """
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,1,4,3]) {
          @b = const [-3.5] : f32[1]
          @w = const [2.0, 4.0, 9.0, 12.0] : f32[1,2,1,2]
          %y = conv(%x, @w, @b) {kernel_shape=(1,2), pads=(0,0,0,0)} : f32[N,1,4,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_affine_into_next_conv": 1},
    )


def test_affine_with_shift_does_not_fold_into_padded_conv():
    # The padded border would see 0 where the original saw the shift t.
    text = f"""
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,1,4,5]) {{
          {AFFINE_CONSTANTS}
          %m = mul(%x, @s) : f32[N,2,4,4]
          %a = add(%m, @t) : f32[N,2,4,4]
          %y = conv(%a, @w, @b) {{kernel_shape=(1,2), pads=(0,1,0,1)}} : f32[N,1,4,5]
          return %y
        }}
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


def test_scale_alone_folds_into_padded_conv():
    # 0 * s = 0: a scale is exact whatever the padding.
    check_rewrite(
        """
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,1,4,5]) {
          @s = const [2.0, 3.0] : f32[2,1,1]
          @w = const [1.0, 2.0, 3.0, 4.0] : f32[1,2,1,2]
          @b = const [0.5] : f32[1]
          %m = mul(%x, @s) : f32[N,2,4,4]
          %y = conv(%m, @w, @b) {kernel_shape=(1,2), pads=(0,1,0,1)} : f32[N,1,4,5]
          return %y
        }
        """,
        """
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,1,4,5]) {
          @b = const [0.5] : f32[1]
          @w = const [2.0, 4.0, 9.0, 12.0] : f32[1,2,1,2]
          %y = conv(%x, @w, @b) {kernel_shape=(1,2), pads=(0,1,0,1)} : f32[N,1,4,5]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_affine_into_next_conv": 1},
    )


def test_affine_folds_into_following_matmul():
    # (x*s + t) @ W = x @ (s[:, None] * W) + t @ W
    check_rewrite(
        """
        graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,3]) {
          @s = const [2.0, 3.0] : f32[2]
          @t = const [1.0, -1.0] : f32[2]
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
          %m = mul(%x, @s) : f32[B,S,2]
          %a = add(@t, %m) : f32[B,S,2]
          %y = matmul(%a, @w) : f32[B,S,3]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,S,2]) -> (%y: f32[B,S,3]) {
          @w = const [2.0, 4.0, 6.0, 12.0, 15.0, 18.0] : f32[2,3]
          @w_bias = const [-3.0, -3.0, -3.0] : f32[3]
          %matmul = matmul(%x, @w) : f32[B,S,3]
          %y = add(%matmul, @w_bias) : f32[B,S,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_affine_into_next_matmul": 1},
    )


def test_affine_folds_into_following_gemm():
    # transB: op(B) = w.T, whose rows (w's columns) the scale multiplies;
    # c' = alpha * t @ op(B) + beta * c = 0.5 * [-1, -1, -1] + [1, 1, 1].
    check_rewrite(
        """
        graph @main(%x: f32[N,2]) -> (%y: f32[N,3]) {
          @s = const [2.0, 3.0] : f32[1,2]
          @t = const [1.0, -1.0] : f32[2]
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
          @c = const [1.0, 1.0, 1.0] : f32[3]
          %m = mul(%x, @s) : f32[N,2]
          %a = add(%m, @t) : f32[N,2]
          %y = gemm(%a, @w, @c) {alpha=0.5, transB=true} : f32[N,3]
          return %y
        }
        """,
        """
        graph @main(%x: f32[N,2]) -> (%y: f32[N,3]) {
          @w = const [2.0, 6.0, 6.0, 12.0, 10.0, 18.0] : f32[3,2]
          @c = const [0.5, 0.5, 0.5] : f32[3]
          %y = gemm(%x, @w, @c) {alpha=0.5, transB=true} : f32[N,3]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"fold_affine_into_next_gemm": 1},
    )


def test_affine_read_twice_does_not_fold():
    text = """
        graph @main(%x: f32[N,2]) -> (%y: f32[N,3], %a: f32[N,2]) {
          @s = const [2.0, 3.0] : f32[2]
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
          %a = mul(%x, @s) : f32[N,2]
          %y = matmul(%a, @w) : f32[N,3]
          return %y, %a
        }
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


# -- 4. affine chains merge (DenseNet: batch norm after concat, then its own mul and add) -----


def test_batchnorm_affine_merges_with_the_affine_after_it():
    check_rewrite(
        graph_text(
            "(%x: f32[N,2,4,4]) -> (%y: f32[N,2,4,4])",
            f"""
              @c = const [2.0, 2.0] : f32[2,1,1]
              @d = const [1.0, 1.0] : f32[2,1,1]
              %r = relu(%x) : f32[N,2,4,4]
              %bn = batch_norm(%r, {BN} : f32[N,2,4,4]
              %m = mul(%bn, @c) : f32[N,2,4,4]
              %y = add(%m, @d) : f32[N,2,4,4]
              return %y
            """,
        ),
        # x * (s*c) + (t*c + d) = x * [2, 4] + [0, -9]
        """
        graph @main(%x: f32[N,2,4,4]) -> (%y: f32[N,2,4,4]) {
          @scale = const [2.0, 4.0] : f32[2,1,1]
          @d = const [0.0, -9.0] : f32[2,1,1]
          %r = relu(%x) : f32[N,2,4,4]
          %mul = mul(%r, @scale) : f32[N,2,4,4]
          %y = add(%mul, @d) : f32[N,2,4,4]
          return %y
        }
        """,
        "fold-batchnorm",
        fired={"batchnorm_to_affine": 1, "merge_scale_into_affine": 1, "merge_shifts": 1},
    )


def test_shift_then_scale_alone_stays():
    # GELU's 0.5 * (erf(..) + 1): no affine to merge with, so its form is kept for the
    # passes that recognise it.
    text = """
        graph @main(%x: f32[N,8]) -> (%y: f32[N,8]) {
          @one = const [1.0] : f32[]
          @half = const [0.5] : f32[]
          %e = erf(%x) : f32[N,8]
          %a = add(%e, @one) : f32[N,8]
          %y = mul(@half, %a) : f32[N,8]
          return %y
        }
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


def test_constants_that_would_grow_do_not_merge():
    # A column times a row would make a (3, 3) constant out of two of 3 elements.
    text = """
        graph @main(%x: f32[N,3,3]) -> (%y: f32[N,3,3]) {
          @a = const [1.0, 2.0, 3.0] : f32[3,1]
          @b = const [1.0, 2.0, 3.0] : f32[3]
          %m = mul(%x, @a) : f32[N,3,3]
          %y = mul(%m, @b) : f32[N,3,3]
          return %y
        }
    """
    check_rewrite(text, text, "fold-batchnorm", fired={})


# -- numbers: the folded graph computes what the original did -----------------------------

# Each case: IR text with DT for the dtype (constants elided, drawn at random), and the
# rules that must fire.
NUMERIC_CASES = {
    "grouped_conv_bn": (
        """
        graph @main(%x: DT[2,4,6,6]) -> (%y: DT[2,6,3,3]) {
          @w = const : DT[6,2,3,3]
          @b = const : DT[6]
          @scale = const : DT[6]
          @shift = const : DT[6]
          @mean = const : DT[6]
          @var = const : DT[6]
          %c = conv(%x, @w, @b) {group=2, kernel_shape=(3,3), pads=(1,1,1,1), strides=(2,2)} : DT[2,6,3,3]
          %y = batch_norm(%c, @scale, @shift, @mean, @var) {epsilon=0.001} : DT[2,6,3,3]
          return %y
        }
        """,
        {"fold_batchnorm_into_conv": 1},
    ),
    "depthwise_conv_bn": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,4,5,5]) {
          @w = const : DT[4,1,3,3]
          @scale = const : DT[4]
          @shift = const : DT[4]
          @mean = const : DT[4]
          @var = const : DT[4]
          %c = conv(%x, @w) {group=4, kernel_shape=(3,3), pads=(1,1,1,1)} : DT[2,4,5,5]
          %y = batch_norm(%c, @scale, @shift, @mean, @var) : DT[2,4,5,5]
          return %y
        }
        """,
        {"fold_batchnorm_into_conv": 1},
    ),
    "grouped_conv_transpose_bn": (
        """
        graph @main(%x: DT[2,4,3,3]) -> (%y: DT[2,6,7,7]) {
          @w = const : DT[4,3,3,3]
          @b = const : DT[6]
          @scale = const : DT[6]
          @shift = const : DT[6]
          @mean = const : DT[6]
          @var = const : DT[6]
          %c = conv_transpose(%x, @w, @b) {group=2, kernel_shape=(3,3), strides=(2,2)} : DT[2,6,7,7]
          %y = batch_norm(%c, @scale, @shift, @mean, @var) : DT[2,6,7,7]
          return %y
        }
        """,
        {"fold_batchnorm_into_conv": 1},
    ),
    "matmul_bias_bn": (
        """
        graph @main(%x: DT[5,8]) -> (%y: DT[5,6]) {
          @w = const : DT[8,6]
          @b = const : DT[6]
          @scale = const : DT[6]
          @shift = const : DT[6]
          @mean = const : DT[6]
          @var = const : DT[6]
          %m = matmul(%x, @w) : DT[5,6]
          %a = add(%m, @b) : DT[5,6]
          %y = batch_norm(%a, @scale, @shift, @mean, @var) : DT[5,6]
          return %y
        }
        """,
        {"fold_batchnorm_into_matmul": 1},
    ),
    "gemm_bn": (
        """
        graph @main(%x: DT[8,5]) -> (%y: DT[5,6]) {
          @w = const : DT[6,8]
          @c = const : DT[5,6]
          @scale = const : DT[6]
          @shift = const : DT[6]
          @mean = const : DT[6]
          @var = const : DT[6]
          %g = gemm(%x, @w, @c) {alpha=0.75, beta=0.5, transA=true, transB=true} : DT[5,6]
          %y = batch_norm(%g, @scale, @shift, @mean, @var) : DT[5,6]
          return %y
        }
        """,
        {"fold_batchnorm_into_gemm": 1},
    ),
    "bn_to_affine": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,4,5,5]) {
          @scale = const : DT[4]
          @shift = const : DT[4]
          @mean = const : DT[4]
          @var = const : DT[4]
          %r = relu(%x) : DT[2,4,5,5]
          %y = batch_norm(%r, @scale, @shift, @mean, @var) : DT[2,4,5,5]
          return %y
        }
        """,
        {"batchnorm_to_affine": 1},
    ),
    "bn_affine_chain": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,4,5,5]) {
          @scale = const : DT[4]
          @shift = const : DT[4]
          @mean = const : DT[4]
          @var = const : DT[4]
          @c = const : DT[4,1,1]
          @d = const : DT[4,1,1]
          %r = relu(%x) : DT[2,4,5,5]
          %bn = batch_norm(%r, @scale, @shift, @mean, @var) : DT[2,4,5,5]
          %m = mul(%bn, @c) : DT[2,4,5,5]
          %y = add(%m, @d) : DT[2,4,5,5]
          return %y
        }
        """,
        {"batchnorm_to_affine": 1, "merge_scale_into_affine": 1, "merge_shifts": 1},
    ),
    "conv_scale_shift": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,6,5,5]) {
          @w = const : DT[6,4,3,3]
          @b = const : DT[6]
          @s = const : DT[6,1,1]
          @t = const : DT[6,1,1]
          %c = conv(%x, @w, @b) {kernel_shape=(3,3), pads=(1,1,1,1)} : DT[2,6,5,5]
          %m = mul(%c, @s) : DT[2,6,5,5]
          %y = add(%m, @t) : DT[2,6,5,5]
          return %y
        }
        """,
        {"fold_scale_into_conv": 1, "fold_shift_into_conv_bias": 1},
    ),
    "matmul_bias_scale": (
        """
        graph @main(%x: DT[2,5,8]) -> (%y: DT[2,5,6]) {
          @w = const : DT[8,6]
          @b = const : DT[6]
          @s = const : DT[6]
          %m = matmul(%x, @w) : DT[2,5,6]
          %a = add(%m, @b) : DT[2,5,6]
          %y = mul(%a, @s) : DT[2,5,6]
          return %y
        }
        """,
        {"fold_scale_into_matmul": 1},
    ),
    "gemm_scale_shift": (
        """
        graph @main(%x: DT[5,8]) -> (%y: DT[5,6]) {
          @w = const : DT[6,8]
          @c = const : DT[5,1]
          @s = const : DT[6]
          @t = const : DT[1,6]
          %g = gemm(%x, @w, @c) {alpha=0.5, beta=2.0, transB=true} : DT[5,6]
          %m = mul(%g, @s) : DT[5,6]
          %y = add(%m, @t) : DT[5,6]
          return %y
        }
        """,
        {"fold_scale_into_gemm": 1, "fold_shift_into_gemm_bias": 1},
    ),
    "scale_chain": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,4,5,5]) {
          @s = const : DT[4,1,1]
          @c = const : DT[1,4,1,1]
          %r = relu(%x) : DT[2,4,5,5]
          %m = mul(%r, @s) : DT[2,4,5,5]
          %y = mul(@c, %m) : DT[2,4,5,5]
          return %y
        }
        """,
        {"merge_scales": 1},
    ),
    "affine_into_grouped_conv": (
        """
        graph @main(%x: DT[2,4,7,7]) -> (%y: DT[2,6,2,2]) {
          @s = const : DT[4,1,1]
          @t = const : DT[4,1,1]
          @w = const : DT[6,2,3,3]
          @b = const : DT[6]
          %m = mul(%x, @s) : DT[2,4,7,7]
          %a = add(%m, @t) : DT[2,4,7,7]
          %y = conv(%a, @w, @b) {group=2, kernel_shape=(3,3), strides=(2,2), dilations=(2,2)} : DT[2,6,2,2]
          return %y
        }
        """,
        {"fold_affine_into_next_conv": 1},
    ),
    "scale_into_padded_conv": (
        """
        graph @main(%x: DT[2,4,5,5]) -> (%y: DT[2,6,5,5]) {
          @s = const : DT[4,1,1]
          @w = const : DT[6,4,3,3]
          %m = mul(%x, @s) : DT[2,4,5,5]
          %y = conv(%m, @w) {kernel_shape=(3,3), pads=(1,1,1,1)} : DT[2,6,5,5]
          return %y
        }
        """,
        {"fold_affine_into_next_conv": 1},
    ),
    "affine_into_matmul": (
        """
        graph @main(%x: DT[2,5,8]) -> (%y: DT[2,5,6]) {
          @s = const : DT[8]
          @t = const : DT[8]
          @w = const : DT[8,6]
          %m = mul(%x, @s) : DT[2,5,8]
          %a = add(%m, @t) : DT[2,5,8]
          %y = matmul(%a, @w) : DT[2,5,6]
          return %y
        }
        """,
        {"fold_affine_into_next_matmul": 1},
    ),
    "affine_into_gemm_transposed_a": (
        """
        graph @main(%x: DT[8,5]) -> (%y: DT[5,6]) {
          @s = const : DT[8,1]
          @t = const : DT[8,1]
          @w = const : DT[8,6]
          @c = const : DT[6]
          %m = mul(%x, @s) : DT[8,5]
          %a = add(%m, @t) : DT[8,5]
          %y = gemm(%a, @w, @c) {alpha=1.5, beta=0.5, transA=true} : DT[5,6]
          return %y
        }
        """,
        {"fold_affine_into_next_gemm": 1},
    ),
}

# f16: the folded weights are rounded once to f16 where the original rounded the
# activations after each op; the reference accumulates in f32 either way.
TOLERANCE = {"f32": (1e-5, 1e-5), "f16": (5e-3, 5e-3)}


ELIDED = re.compile(r"@(\w+) = const : (\w+\[[\d,]+\])")


def random_constants(text: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Values for the elided constants of `text`, of a scale that keeps outputs O(1)."""
    out = {}
    for name, type_text in ELIDED.findall(text):
        t = parse_type(type_text)
        shape = t.static_shape
        if name == "var":
            arr = rng.uniform(0.5, 2.0, shape)  # a variance is positive
        elif name in ("scale", "s"):
            arr = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            arr = rng.standard_normal(shape) * (0.3 if name == "w" else 1.0)
        out[name] = arr.astype(t.dtype.np)
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("case", sorted(NUMERIC_CASES))
def test_folded_graph_matches_the_original(case, dtype, rng):
    template, fired = NUMERIC_CASES[case]
    text = template.replace("DT", dtype)
    constants = random_constants(text, rng)
    original = parse(text, constants=constants)
    inputs = {v.name: rng.standard_normal(v.type.static_shape).astype(v.dtype.np) for v in original.inputs}
    want = reference.run(original, inputs)

    folded, counts = apply(parse(text, constants=constants), "fold-batchnorm")
    assert counts == fired
    assert "batch_norm" not in {n.op for n in folded.nodes}
    got = reference.run(folded, inputs)
    rtol, atol = TOLERANCE[dtype]
    for name, expected in want.items():
        scale = float(np.abs(expected.astype(np.float32)).max())
        np.testing.assert_allclose(
            got[name].astype(np.float32), expected.astype(np.float32), rtol=rtol, atol=atol * scale, err_msg=case
        )


def test_every_rule_is_checked_by_numbers():
    checked = set().union(*(fired for _, fired in NUMERIC_CASES.values()))
    assert checked == {r.name for r in FOLD_BATCHNORM}


# -- light model-zoo graphs with random weights -------------------------------------------

# model -> (batch norms folded into convs, batch norms turned into affines). DenseNet's
# pre-activation blocks normalise a concat (or a max pool): those cannot fold into a
# producer, and a ReLU stands between them and the next conv.
LIGHT_BATCHNORMS = {
    "light_resnet50": (53, 0),
    "light_densenet121": (59, 62),
    "light_inception_v2": (69, 0),
}


@pytest.mark.parametrize("name", sorted(LIGHT_BATCHNORMS))
def test_light_model_folds_every_batchnorm(name):
    into_conv, to_affine = LIGHT_BATCHNORMS[name]
    model = randomize_weights(load_light(name), seed=0)
    model = expose_outputs(model, logits_names(model))
    graph = convert_model(model)
    inputs = light_random_input(model, seed=0)
    want = reference.run(graph, inputs)
    nodes_before = len(graph.nodes)
    ops_before = Counter(n.op for n in graph.nodes)
    assert ops_before["batch_norm"] == into_conv + to_affine

    pm = PassManager(["fold-constants", "fold-batchnorm", "eliminate-dead-code"], verify=True)
    graph = pm.run(graph)
    fired = pm.records[1].rules_fired
    ops = Counter(n.op for n in graph.nodes)
    assert ops["batch_norm"] == 0
    assert fired.get("fold_batchnorm_into_conv", 0) == into_conv
    assert fired.get("batchnorm_to_affine", 0) == to_affine
    # Nothing else changed: the batch norms are gone, and so are the muls and adds of
    # DenseNet/Inception (their per-channel affines after each batch norm), except one
    # mul and one add per batch norm that became an affine (merged with the ones after it).
    assert ops["mul"] == ops["add"] == to_affine
    assert {op: n for op, n in ops.items() if op not in ("mul", "add")} == {
        op: n for op, n in ops_before.items() if op not in ("batch_norm", "mul", "add")
    }
    if name == "light_resnet50":
        assert nodes_before - len(graph.nodes) == 53

    got = reference.run(graph, inputs)
    assert list(got) == list(want)
    for out in logits_names(model) or list(want):
        scale = float(np.abs(want[out]).max())
        np.testing.assert_allclose(got[out], want[out], rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} {out}")
