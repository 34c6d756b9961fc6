"""canonicalize: before/after IR text for every rule, exactness checks by numbers, and the
BERT-like model's outputs."""

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.ir.parser import parse
from einfuse.passes import PassManager, get_pass
from einfuse.passes.canonicalize import CANONICALIZE, INEXACT, div_by_power_of_two_to_mul, gemm_to_matmul
from tests.passes.helpers import check_rewrite

# -- gemm -----------------------------------------------------------------------------------


def test_gemm_becomes_matmul_plus_bias():
    check_rewrite(
        """
        graph @main(%a: f32[B,2]) -> (%y: f32[B,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
          @c = const [0.5, 0.25, -1.0] : f32[3]
          %y = gemm(%a, @w, @c) : f32[B,3]
          return %y
        }
        """,
        """
        graph @main(%a: f32[B,2]) -> (%y: f32[B,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[2,3]
          @c = const [0.5, 0.25, -1.0] : f32[3]
          %matmul = matmul(%a, @w) : f32[B,3]
          %y = add(%matmul, @c) : f32[B,3]
          return %y
        }
        """,
        "canonicalize",
        fired={"gemm_to_matmul": 1},
    )


def test_gemm_transposes_constants_once_and_other_operands_with_a_node():
    check_rewrite(
        """
        graph @main(%a: f32[2,B]) -> (%y: f32[B,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
          %y = gemm(%a, @w) {transA=true, transB=true} : f32[B,3]
          return %y
        }
        """,
        # The unused original weight goes with the gemm.
        """
        graph @main(%a: f32[2,B]) -> (%y: f32[B,3]) {
          @w.T = const [1.0, 3.0, 5.0, 2.0, 4.0, 6.0] : f32[2,3]
          %transpose = transpose(%a) {perm=(1,0)} : f32[B,2]
          %y = matmul(%transpose, @w.T) : f32[B,3]
          return %y
        }
        """,
        "canonicalize",
        fired={"gemm_to_matmul": 1},
    )


def test_gemm_folds_power_of_two_alpha_and_beta_into_constants():
    check_rewrite(
        """
        graph @main(%a: f32[B,2]) -> (%y: f32[B,3]) {
          @w = const [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] : f32[3,2]
          @c = const [0.5, 0.25, -1.0] : f32[3]
          %y = gemm(%a, @w, @c) {transB=true, alpha=0.5, beta=2.0} : f32[B,3]
          return %y
        }
        """,
        # alpha scales the (transposed) weights, beta the bias: one new constant each.
        """
        graph @main(%a: f32[B,2]) -> (%y: f32[B,3]) {
          @w.scaled = const [0.5, 1.5, 2.5, 1.0, 2.0, 3.0] : f32[2,3]
          @c.scaled = const [1.0, 0.5, -2.0] : f32[3]
          %matmul = matmul(%a, @w.scaled) : f32[B,3]
          %y = add(%matmul, @c.scaled) : f32[B,3]
          return %y
        }
        """,
        "canonicalize",
    )


def test_gemm_other_alpha_and_beta_become_muls_and_zero_beta_drops_c():
    check_rewrite(
        """
        graph @main(%a: f32[B,2], %w: f32[2,3], %c: f32[B,3]) -> (%y: f32[B,3], %z: f32[B,3]) {
          %y = gemm(%a, %w, %c) {alpha=0.3, beta=3.0} : f32[B,3]
          %z = gemm(%a, %w, %c) {beta=0.0} : f32[B,3]
          return %y, %z
        }
        """,
        """
        graph @main(%a: f32[B,2], %w: f32[2,3], %c: f32[B,3]) -> (%y: f32[B,3], %z: f32[B,3]) {
          @alpha = const [0.3] : f32[]
          @beta = const [3.0] : f32[]
          %matmul = matmul(%a, %w) : f32[B,3]
          %mul = mul(%matmul, @alpha) : f32[B,3]
          %mul.0 = mul(%c, @beta) : f32[B,3]
          %y = add(%mul, %mul.0) : f32[B,3]
          %z = matmul(%a, %w) : f32[B,3]
          return %y, %z
        }
        """,
        "canonicalize",
        fired={"gemm_to_matmul": 2},
    )


def test_gemm_f16_and_integer_gemms():
    # f16 converts like f32; an integer gemm with a fractional alpha stays (its reference
    # computes in f64), one with integral scales converts.
    check_rewrite(
        """
        graph @main(%a: f16[4,2], %w: f16[2,3], %i: i32[4,2], %j: i32[2,3]) -> (%y: f16[4,3], %p: i32[4,3], %q: i32[4,3]) {
          %y = gemm(%a, %w) : f16[4,3]
          %p = gemm(%i, %j) {alpha=0.5} : i32[4,3]
          %q = gemm(%i, %j) {alpha=2.0} : i32[4,3]
          return %y, %p, %q
        }
        """,
        """
        graph @main(%a: f16[4,2], %w: f16[2,3], %i: i32[4,2], %j: i32[2,3]) -> (%y: f16[4,3], %p: i32[4,3], %q: i32[4,3]) {
          @alpha = const [2] : i32[]
          %y = matmul(%a, %w) : f16[4,3]
          %p = gemm(%i, %j) {alpha=0.5} : i32[4,3]
          %matmul = matmul(%i, %j) : i32[4,3]
          %q = mul(%matmul, @alpha) : i32[4,3]
          return %y, %p, %q
        }
        """,
        "canonicalize",
        fired={"gemm_to_matmul": 2},
    )


@pytest.mark.parametrize(
    "attrs",
    ["", "{transA=true}", "{transB=true, alpha=0.5, beta=0.25}", "{transA=true, transB=true, alpha=0.7, beta=1.3}"],
)
def test_gemm_rewrite_keeps_f32_results_bit_exact(attrs, rng):
    a_type = "f32[5,4]" if "transA" in attrs else "f32[4,5]"
    graph = parse(
        f"""
        graph @main(%a: {a_type}, %c: f32[1,3]) -> (%y: f32[4,3], %z: f32[4,3]) {{
          @w = const : f32[{"3,5" if "transB" in attrs else "5,3"}]
          @b = const : f32[3]
          %y = gemm(%a, @w, @b) {attrs} : f32[4,3]
          %z = gemm(%a, @w, %c) {attrs} : f32[4,3]
          return %y, %z
        }}
        """,
        constants={
            "w": rng.standard_normal((3, 5) if "transB" in attrs else (5, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
        },
    )
    feeds = {
        "a": rng.standard_normal((5, 4) if "transA" in attrs else (4, 5)).astype(np.float32),
        "c": rng.standard_normal((1, 3)).astype(np.float32),
    }
    before = reference.run(graph, feeds)
    pm = PassManager(["canonicalize"], verify=True)
    after = reference.run(pm.run(graph), feeds)
    # Both gemms were rewritten (else the comparison would prove nothing).
    assert pm.records[0].rules_fired == {"gemm_to_matmul": 2}
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_large_transposed_weights_are_views_or_copied_exactly():
    # transB of a constant: the new constant is a read-only view of the weight (a 400 MB
    # fully-connected weight would take seconds to copy); scaled by alpha = 2 it is a new
    # array, over 4 MiB, copied into C order tile by tile (sides not multiples of the tile).
    w = np.arange(1100 * 1030, dtype=np.float32).reshape(1030, 1100)
    before = """
        graph @main(%a: f32[2,1100]) -> (%y: f32[2,1030], %z: f32[2,1030]) {
          @w = const : f32[1030,1100]
          %y = gemm(%a, @w) {transB=true} : f32[2,1030]
          %z = gemm(%a, @w) {transB=true, alpha=2.0} : f32[2,1030]
          return %y, %z
        }
    """
    result = check_rewrite(
        before,
        """
        graph @main(%a: f32[2,1100]) -> (%y: f32[2,1030], %z: f32[2,1030]) {
          @w.T = const : f32[1100,1030]
          @w.scaled = const : f32[1100,1030]
          %y = matmul(%a, @w.T) : f32[2,1030]
          %z = matmul(%a, @w.scaled) : f32[2,1030]
          return %y, %z
        }
        """,
        "canonicalize",
        constants={"w": w, "w.T": np.ascontiguousarray(w.T), "w.scaled": np.ascontiguousarray(w.T) * 2},
        fired={"gemm_to_matmul": 2},
    )
    view, scaled = result.constants["w.T"][1], result.constants["w.scaled"][1]
    assert not view.flags.c_contiguous and not view.flags.writeable
    assert scaled.flags.c_contiguous and not scaled.flags.writeable
    graph = parse(before, constants={"w": w})
    original = graph.constants["w"][1]
    PassManager(["canonicalize"]).run(graph)
    assert np.shares_memory(graph.constants["w.T"][1], original)


# -- sub / div --------------------------------------------------------------------------------


def test_sub_of_a_constant_becomes_add_of_its_negation():
    check_rewrite(
        """
        graph @main(%x: f32[B,2], %i: u8[3], %z: f32[B,2]) -> (%y: f32[B,2], %j: u8[3], %w: f32[B,2]) {
          @c = const [1.5, -2.0] : f32[2]
          @k = const [3, 0, 255] : u8[3]
          %y = sub(%x, @c) : f32[B,2]
          %j = sub(%i, @k) : u8[3]
          %w = sub(@c, %z) : f32[B,2]
          return %y, %j, %w
        }
        """,
        # Unsigned integers wrap; c - x (constant on the left) is not a normal-form target.
        """
        graph @main(%x: f32[B,2], %i: u8[3], %z: f32[B,2]) -> (%y: f32[B,2], %j: u8[3], %w: f32[B,2]) {
          @c = const [1.5, -2.0] : f32[2]
          @c.neg = const [-1.5, 2.0] : f32[2]
          @k.neg = const [253, 0, 1] : u8[3]
          %y = add(%x, @c.neg) : f32[B,2]
          %j = add(%i, @k.neg) : u8[3]
          %w = sub(@c, %z) : f32[B,2]
          return %y, %j, %w
        }
        """,
        "canonicalize",
        fired={"sub_const_to_add": 2},
    )


def test_div_by_a_power_of_two_becomes_mul_by_its_exact_reciprocal():
    check_rewrite(
        """
        graph @main(%x: f32[B,2], %h: f16[3], %n: i32[2]) -> (%y: f32[B,2], %g: f16[3], %q: f32[B,2], %m: i32[2]) {
          @c = const [0.25, -8.0] : f32[2]
          @s = const [32768.0] : f16[]
          @t = const [3.0] : f32[]
          @k = const [2, 4] : i32[2]
          %y = div(%x, @c) : f32[B,2]
          %g = div(%h, @s) : f16[3]
          %q = div(%x, @t) : f32[B,2]
          %m = div(%n, @k) : i32[2]
          return %y, %g, %q, %m
        }
        """,
        # 1/2^15 is a subnormal f16, still exact. 1/3 is not exact; integer division truncates.
        """
        graph @main(%x: f32[B,2], %h: f16[3], %n: i32[2]) -> (%y: f32[B,2], %g: f16[3], %q: f32[B,2], %m: i32[2]) {
          @t = const [3.0] : f32[]
          @k = const [2, 4] : i32[2]
          @c.recip = const [4.0, -0.125] : f32[2]
          @s.recip = const [3.0517578125e-05] : f16[]
          %y = mul(%x, @c.recip) : f32[B,2]
          %g = mul(%h, @s.recip) : f16[3]
          %q = div(%x, @t) : f32[B,2]
          %m = div(%n, @k) : i32[2]
          return %y, %g, %q, %m
        }
        """,
        "canonicalize",
        fired={"div_by_power_of_two_to_mul": 2},
    )


def test_div_whose_reciprocal_is_not_representable_stays():
    # 1 / 2^-24 (the smallest f16 subnormal) overflows f16; 0 and inf have no reciprocal.
    text = """
        graph @main(%h: f16[3], %x: f32[2]) -> (%g: f16[3], %y: f32[2], %z: f32[2]) {
          @s = const [5.960464477539063e-08] : f16[]
          @zero = const [0.0, 2.0] : f32[2]
          @inf = const [inf] : f32[]
          %g = div(%h, @s) : f16[3]
          %y = div(%x, @zero) : f32[2]
          %z = div(%x, @inf) : f32[2]
          return %g, %y, %z
        }
        """
    check_rewrite(text, text, "canonicalize", fired={})
    check_rewrite(text, text, get_pass("canonicalize", exact=False), fired={})


def test_inexact_division_rewrite_only_with_exact_false():
    check_rewrite(
        """
        graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
          @c = const [3.0, 0.5] : f32[2]
          %y = div(%x, @c) : f32[B,2]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
          @c.recip = const [0.3333333432674408, 2.0] : f32[2]
          %y = mul(%x, @c.recip) : f32[B,2]
          return %y
        }
        """,
        get_pass("canonicalize", exact=False),
        fired={"div_const_to_mul": 1},
    )


def test_div_and_sub_rewrites_are_bit_exact(rng):
    graph = parse(
        """
        graph @main(%x: f32[64], %h: f16[64], %i: i8[64]) -> (%a: f32[64], %b: f16[64], %c: f32[64], %d: i8[64]) {
          @p = const [0.125] : f32[]
          @q = const [0.0009765625] : f16[]
          @r = const [0.7] : f32[]
          @s = const [-128] : i8[]
          %a = div(%x, @p) : f32[64]
          %b = div(%h, @q) : f16[64]
          %c = sub(%x, @r) : f32[64]
          %d = sub(%i, @s) : i8[64]
          return %a, %b, %c, %d
        }
        """
    )
    x = rng.standard_normal(64).astype(np.float32) * np.float32(1e30)
    x[:4] = [np.inf, -np.inf, np.nan, -0.0]
    feeds = {
        "x": x,
        "h": (rng.standard_normal(64) * 60).astype(np.float16),
        "i": rng.integers(-128, 128, 64).astype(np.int8),
    }
    before = reference.run(graph, feeds)
    pm = PassManager(["canonicalize"], verify=True)
    after = reference.run(pm.run(graph), feeds)
    assert pm.records[0].rules_fired == {"div_by_power_of_two_to_mul": 2, "sub_const_to_add": 2}
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


# -- no-ops -------------------------------------------------------------------------------------


def test_no_op_nodes_are_removed():
    check_rewrite(
        """
        graph @main(%x: f32[B,4,1]) -> (%y: f32[B,4,1]) {
          %a = identity(%x) : f32[B,4,1]
          %b = cast(%a) {to=f32} : f32[B,4,1]
          %c = reshape(%b) {shape=(0,4,1)} : f32[B,4,1]
          %d = expand(%c) {shape=(1,4,1)} : f32[B,4,1]
          %e = transpose(%d) {perm=(0,1,2)} : f32[B,4,1]
          %f = slice(%e) {starts=(0,), ends=(9223372036854775807,), axes=(1,), steps=(1,)} : f32[B,4,1]
          %g = pad(%f) {pads=(0,0,0,0,0,0)} : f32[B,4,1]
          %h = concat(%g) {axis=1} : f32[B,4,1]
          %i = squeeze(%h) {axes=()} : f32[B,4,1]
          %y = relu(%i) : f32[B,4,1]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,4,1]) -> (%y: f32[B,4,1]) {
          %y = relu(%x) : f32[B,4,1]
          return %y
        }
        """,
        "canonicalize",
        fired={
            "drop_identity": 1,
            "drop_noop_cast": 1,
            "drop_noop_reshape": 2,
            "drop_noop_expand": 1,
            "drop_identity_transpose": 1,
            "drop_full_slice": 1,
            "drop_zero_pad": 1,
            "drop_single_concat": 1,
        },
    )


def test_look_alike_ops_that_change_data_stay():
    # Same shapes, different data: a reversing slice, a transpose of a square matrix,
    # a crop-then-pad, a cast that changes the dtype, a real broadcast.
    text = """
        graph @main(%x: f32[4,4], %v: f32[1,4]) -> (%a: f32[4,4], %b: f32[4,4], %c: f32[4,4], %d: f16[4,4], %e: f32[4,4]) {
          %a = slice(%x) {starts=(-1,), ends=(-9223372036854775807,), axes=(0,), steps=(-1,)} : f32[4,4]
          %b = transpose(%x) {perm=(1,0)} : f32[4,4]
          %c = pad(%x) {pads=(-1,0,1,0)} : f32[4,4]
          %d = cast(%x) {to=f16} : f16[4,4]
          %e = expand(%v) {shape=(4,4)} : f32[4,4]
          return %a, %b, %c, %d, %e
        }
        """
    check_rewrite(text, text, "canonicalize", fired={})


def test_graph_output_names_survive_no_op_removal():
    # %y = identity(%x) of a graph input, and %z a copy of another output: removing them
    # would rename an output, so they stay. %w forwards a node output, which takes its name.
    check_rewrite(
        """
        graph @main(%x: f32[3]) -> (%y: f32[3], %r: f32[3], %z: f32[3], %w: f32[3]) {
          %y = identity(%x) : f32[3]
          %r = relu(%x) : f32[3]
          %z = reshape(%r) {shape=(3,)} : f32[3]
          %n = neg(%x) : f32[3]
          %w = cast(%n) {to=f32} : f32[3]
          return %y, %r, %z, %w
        }
        """,
        """
        graph @main(%x: f32[3]) -> (%y: f32[3], %r: f32[3], %z: f32[3], %w: f32[3]) {
          %y = identity(%x) : f32[3]
          %r = relu(%x) : f32[3]
          %z = reshape(%r) {shape=(3,)} : f32[3]
          %w = neg(%x) : f32[3]
          return %y, %r, %z, %w
        }
        """,
        "canonicalize",
        fired={"drop_noop_cast": 1},
    )


def test_squeeze_unsqueeze_pairs_cancel():
    check_rewrite(
        """
        graph @main(%x: f32[B,1,4], %u: f32[B,4]) -> (%y: f32[B,1,4], %w: f32[B,4,1]) {
          %s = squeeze(%x) {axes=(1,)} : f32[B,4]
          %a = unsqueeze(%s) {axes=(1,)} : f32[B,1,4]
          %t = unsqueeze(%u) {axes=(0,2)} : f32[1,B,1,4]
          %b = squeeze(%t) {axes=(0,2)} : f32[B,4]
          %c = unsqueeze(%b) {axes=(1,)} : f32[B,1,4]
          %y = add(%a, %c) : f32[B,1,4]
          %w = unsqueeze(%s) {axes=(2,)} : f32[B,4,1]
          return %y, %w
        }
        """,
        # %s stays for %w (squeeze then unsqueeze elsewhere is not a cancelling pair).
        """
        graph @main(%x: f32[B,1,4], %u: f32[B,4]) -> (%y: f32[B,1,4], %w: f32[B,4,1]) {
          %s = squeeze(%x) {axes=(1,)} : f32[B,4]
          %c = unsqueeze(%u) {axes=(1,)} : f32[B,1,4]
          %y = add(%x, %c) : f32[B,1,4]
          %w = unsqueeze(%s) {axes=(2,)} : f32[B,4,1]
          return %y, %w
        }
        """,
        "canonicalize",
        fired={"cancel_squeeze_unsqueeze": 2},
    )


# -- compositions ---------------------------------------------------------------------------------


def test_reshape_of_reshape_collapses():
    check_rewrite(
        """
        graph @main(%x: f32[B,S,768], %z: f32[2,3,4]) -> (%y: f32[B,S,12,64], %w: f32[B,S,768], %v: f32[24]) {
          %a = reshape(%x) {shape=(-1,768)} : f32[B*S,768]
          %y = reshape(%x) {shape=(0,0,12,64)} : f32[B,S,12,64]
          %b = reshape(%y) {shape=(0,0,768)} : f32[B,S,768]
          %w = add(%b, %x) : f32[B,S,768]
          %c = unsqueeze(%z) {axes=(0,)} : f32[1,2,3,4]
          %d = flatten(%c) {axis=2} : f32[2,12]
          %v = reshape(%d) {shape=(24,)} : f32[24]
          return %y, %w, %v
        }
        """,
        # reshape(reshape(x)) back to x's shape is x; a chain of reshape-likes is one reshape
        # (unsqueeze -> flatten -> reshape folds from the end: two firings).
        # The first reshape is dead code, left to eliminate-dead-code.
        """
        graph @main(%x: f32[B,S,768], %z: f32[2,3,4]) -> (%y: f32[B,S,12,64], %w: f32[B,S,768], %v: f32[24]) {
          %a = reshape(%x) {shape=(-1,768)} : f32[B*S,768]
          %y = reshape(%x) {shape=(0,0,12,64)} : f32[B,S,12,64]
          %w = add(%x, %x) : f32[B,S,768]
          %v = reshape(%z) {shape=(24,)} : f32[24]
          return %y, %w, %v
        }
        """,
        "canonicalize",
        fired={"collapse_reshapes": 3},
    )


def test_reshape_chain_the_attributes_cannot_express_stays():
    # [B,S] -> [1,B,S]: B and S both move, which takes two -1s: no single reshape.
    text = """
        graph @main(%x: f32[B,S]) -> (%y: f32[1,B,S]) {
          %a = unsqueeze(%x) {axes=(0,)} : f32[1,B,S]
          %y = reshape(%a) {shape=(1,0,0)} : f32[1,B,S]
          return %y
        }
        """
    check_rewrite(
        text,
        # Only the reshape to the same shape goes.
        """
        graph @main(%x: f32[B,S]) -> (%y: f32[1,B,S]) {
          %y = unsqueeze(%x) {axes=(0,)} : f32[1,B,S]
          return %y
        }
        """,
        "canonicalize",
        fired={"drop_noop_reshape": 1},
    )


def test_transposes_compose_and_cancel():
    check_rewrite(
        """
        graph @main(%x: f32[B,S,H,D]) -> (%y: f32[B,S,H,D], %z: f32[B,S,D,H], %w: f32[B,S,H,D]) {
          %t = transpose(%x) {perm=(0,2,1,3)} : f32[B,H,S,D]
          %u = transpose(%t) {perm=(0,2,1,3)} : f32[B,S,H,D]
          %y = relu(%u) : f32[B,S,H,D]
          %z = transpose(%t) {perm=(0,2,3,1)} : f32[B,S,D,H]
          %w = transpose(%t) {perm=(0,2,1,3)} : f32[B,S,H,D]
          return %y, %z, %w
        }
        """,
        # %w cancels too, but %x is a graph input: the output keeps its name on an identity.
        """
        graph @main(%x: f32[B,S,H,D]) -> (%y: f32[B,S,H,D], %z: f32[B,S,D,H], %w: f32[B,S,H,D]) {
          %y = relu(%x) : f32[B,S,H,D]
          %z = transpose(%x) {perm=(0,1,3,2)} : f32[B,S,D,H]
          %w = identity(%x) : f32[B,S,H,D]
          return %y, %z, %w
        }
        """,
        "canonicalize",
        fired={"compose_transposes": 3},
    )


def test_rule_sets_and_pass_options():
    assert gemm_to_matmul in CANONICALIZE.rules and div_by_power_of_two_to_mul in CANONICALIZE.rules
    assert [r.name for r in INEXACT] == ["div_const_to_mul"]
    assert str(get_pass("canonicalize", exact=False)) == "canonicalize{exact=False, max_iterations=100}"


# -- the BERT-like model ---------------------------------------------------------------------------


def test_bert_like_outputs_are_preserved(bert_like_model):
    from einfuse.frontends.onnx import convert_model
    from einfuse.testing.models import token_inputs

    graph = convert_model(bert_like_model)
    feeds = token_inputs(bert_like_model)
    before = reference.run(graph, feeds)
    pm = PassManager(["canonicalize"], verify=True)
    graph = pm.run(graph)
    # The pooler's gemm (transB=1) is the only gemm; its weight is transposed once.
    assert pm.records[0].rules_fired == {"gemm_to_matmul": 1}
    assert not any(n.op == "gemm" for n in graph.nodes)
    after = reference.run(graph, feeds)
    assert list(after) == list(before)  # same output names, same order
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)
