"""eliminate-common-subexpressions: before/after IR text."""

import numpy as np

from einfuse.passes import get_pass
from tests.passes.helpers import check_rewrite


def test_duplicates_merge_and_the_merge_cascades():
    check_rewrite(
        """
        graph @main(%x: f32[B,4], %z: f32[B,4]) -> (%y: f32[B,4]) {
          %a1 = add(%x, %z) : f32[B,4]
          %a2 = add(%x, %z) : f32[B,4]
          %r1 = relu(%a1) : f32[B,4]
          %r2 = relu(%a2) : f32[B,4]
          %y = mul(%r1, %r2) : f32[B,4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,4], %z: f32[B,4]) -> (%y: f32[B,4]) {
          %a1 = add(%x, %z) : f32[B,4]
          %r1 = relu(%a1) : f32[B,4]
          %y = mul(%r1, %r1) : f32[B,4]
          return %y
        }
        """,
        "eliminate-common-subexpressions",
    )


def test_commutative_ops_match_either_order_others_do_not():
    check_rewrite(
        """
        graph @main(%x: f32[4], %z: f32[4]) -> (%y: f32[4], %w: f32[4]) {
          %a1 = add(%x, %z) : f32[4]
          %a2 = add(%z, %x) : f32[4]
          %s1 = sub(%x, %z) : f32[4]
          %s2 = sub(%z, %x) : f32[4]
          %y = mul(%a1, %a2) : f32[4]
          %w = mul(%s1, %s2) : f32[4]
          return %y, %w
        }
        """,
        """
        graph @main(%x: f32[4], %z: f32[4]) -> (%y: f32[4], %w: f32[4]) {
          %a1 = add(%x, %z) : f32[4]
          %s1 = sub(%x, %z) : f32[4]
          %s2 = sub(%z, %x) : f32[4]
          %y = mul(%a1, %a1) : f32[4]
          %w = mul(%s1, %s2) : f32[4]
          return %y, %w
        }
        """,
        "eliminate-common-subexpressions",
    )


def test_different_attributes_are_different_computations():
    text = """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %a = leaky_relu(%x) {alpha=0.1} : f32[4]
          %b = leaky_relu(%x) {alpha=0.2} : f32[4]
          %y = add(%a, %b) : f32[4]
          return %y
        }
    """
    check_rewrite(text, text, "eliminate-common-subexpressions")


def test_identical_constants_merge_by_bytes_dtype_and_shape():
    big = np.random.default_rng(0).standard_normal((5, 2, 2)).astype(np.float32)
    check_rewrite(
        """
        graph @main(%x: f32[2,2]) -> (%y: f32[5,2,2]) {
          @c1 = const [1.0, 2.0] : f32[2,1]
          @c2 = const [1.0, 2.0] : f32[2,1]
          @c3 = const [1.0, 2.0] : f32[1,2]
          @c4 = const [0, 0] : i32[2,1]
          @z1 = const [0.0, 0.0] : f32[2,1]
          @z2 = const [-0.0, 0.0] : f32[2,1]
          @w1 = const : f32[5,2,2]
          @w2 = const : f32[5,2,2]
          %a = add(%x, @c1) : f32[2,2]
          %b = add(%a, @c2) : f32[2,2]
          %c = add(%b, @c3) : f32[2,2]
          %d = cast(@c4) {to=f32} : f32[2,1]
          %e = add(%c, %d) : f32[2,2]
          %f = add(%e, @z1) : f32[2,2]
          %g = add(%f, @z2) : f32[2,2]
          %h = add(%g, @w1) : f32[5,2,2]
          %y = add(%h, @w2) : f32[5,2,2]
          return %y
        }
        """,
        # Same bytes in another shape (@c3) or dtype (@c4 and @z1 are all zero bytes): kept.
        # -0.0 and 0.0 differ in bytes (and x + -0.0 is not x + 0.0 at x = -0.0): kept.
        """
        graph @main(%x: f32[2,2]) -> (%y: f32[5,2,2]) {
          @c1 = const [1.0, 2.0] : f32[2,1]
          @c3 = const [1.0, 2.0] : f32[1,2]
          @c4 = const [0, 0] : i32[2,1]
          @z1 = const [0.0, 0.0] : f32[2,1]
          @z2 = const [-0.0, 0.0] : f32[2,1]
          @w1 = const : f32[5,2,2]
          %a = add(%x, @c1) : f32[2,2]
          %b = add(%a, @c1) : f32[2,2]
          %c = add(%b, @c3) : f32[2,2]
          %d = cast(@c4) {to=f32} : f32[2,1]
          %e = add(%c, %d) : f32[2,2]
          %f = add(%e, @z1) : f32[2,2]
          %g = add(%f, @z2) : f32[2,2]
          %h = add(%g, @w1) : f32[5,2,2]
          %y = add(%h, @w1) : f32[5,2,2]
          return %y
        }
        """,
        "eliminate-common-subexpressions",
        constants={"w1": big, "w2": big.copy()},
    )


def test_graph_outputs_keep_their_names():
    # Two duplicate outputs stay two named results; a duplicate output merges into an
    # interior twin, which takes the output's name.
    check_rewrite(
        """
        graph @main(%x: f32[4]) -> (%y1: f32[4], %y2: f32[4], %z: f32[4]) {
          %y1 = relu(%x) : f32[4]
          %y2 = relu(%x) : f32[4]
          %t = exp(%x) : f32[4]
          %u = neg(%t) : f32[4]
          %z = exp(%x) : f32[4]
          return %y1, %y2, %z
        }
        """,
        """
        graph @main(%x: f32[4]) -> (%y1: f32[4], %y2: f32[4], %z: f32[4]) {
          %y1 = relu(%x) : f32[4]
          %y2 = relu(%x) : f32[4]
          %z = exp(%x) : f32[4]
          return %y1, %y2, %z
        }
        """,
        ["eliminate-common-subexpressions", "eliminate-dead-code"],
    )


def test_constants_can_be_left_alone():
    text = """
        graph @main(%x: f32[2]) -> (%y: f32[2]) {
          @c1 = const [1.0, 2.0] : f32[2]
          @c2 = const [1.0, 2.0] : f32[2]
          %a = add(%x, @c1) : f32[2]
          %y = add(%a, @c2) : f32[2]
          return %y
        }
    """
    check_rewrite(text, text, get_pass("eliminate-common-subexpressions", merge_constants=False))


def test_large_constants_differing_in_one_byte_stay_apart():
    # Large constants are bucketed by a digest of sampled bytes: w2 differs from w1 in
    # one element between the samples, w3 equals w1, so only w3 merges.
    w1 = np.random.default_rng(1).standard_normal((300, 1000)).astype(np.float32)
    w2 = w1.copy()
    w2[150, 501] += 1.0
    check_rewrite(
        """
        graph @main(%x: f32[300,1000]) -> (%y: f32[300,1000]) {
          @w1 = const : f32[300,1000]
          @w2 = const : f32[300,1000]
          @w3 = const : f32[300,1000]
          %a = add(%x, @w1) : f32[300,1000]
          %b = add(%a, @w2) : f32[300,1000]
          %y = add(%b, @w3) : f32[300,1000]
          return %y
        }
        """,
        """
        graph @main(%x: f32[300,1000]) -> (%y: f32[300,1000]) {
          @w1 = const : f32[300,1000]
          @w2 = const : f32[300,1000]
          %a = add(%x, @w1) : f32[300,1000]
          %b = add(%a, @w2) : f32[300,1000]
          %y = add(%b, @w1) : f32[300,1000]
          return %y
        }
        """,
        "eliminate-common-subexpressions",
        constants={"w1": w1, "w2": w2, "w3": w1.copy()},
    )
