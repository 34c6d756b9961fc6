"""The rewrite-pattern language: matching (commutative, optional pieces, predicates,
single use), handlers (captures as keyword arguments, builder, None for no change),
the fixpoint driver and its errors, and rule counters."""

import numpy as np
import pytest

from einfuse.ir.ops import ELEMENTWISE, ops_in
from einfuse.ir.parser import parse
from einfuse.ir.printer import print_graph
from einfuse.ir.types import DType
from einfuse.passes.pattern import Any, Const, Opt, P, RewriteError, Rule, RuleSet, match, rewrite, rule
from tests.passes.helpers import check_rewrite

# -- rules used by several tests ---------------------------------------------------------


@rule(P("neg", P("neg", Any("x"))))
def fold_double_neg(x):
    return x


@rule(P("add", Any("x"), Any("x")))
def add_self_to_mul(x, builder):
    two = builder.const("two", np.full((), 2, x.dtype.np))
    return builder.op("mul", [x, two])


@rule(P("leaky_relu", Any("x"), attrs={"alpha": 0.0}))
def leaky_relu_zero_is_relu(x, builder):
    return builder.op("relu", [x])


# abs of an unsigned integer changes nothing.
@rule(P("abs", Any("x", where=lambda v: v.dtype in (DType.u8, DType.u16, DType.u32, DType.u64))))
def drop_unsigned_abs(x):
    return x


# "mul by a scalar after matmul, with or without a bias add" is ONE rule: the scale
# moves into the weights (and the bias); fold-constants then folds those muls.
LINEAR = Opt(P("add", P("matmul", Any("x"), Const("w")), Const("bias"), commutative=True))


@rule(P("mul", LINEAR, Const("scale", where=lambda v: v.rank == 0), commutative=True))
def fold_scale_into_linear(x, w, bias, scale, builder):
    y = builder.op("matmul", [x, builder.op("mul", [w, scale])])
    if bias is not None:
        y = builder.op("add", [y, builder.op("mul", [bias, scale])])
    return y


# -- matching and replacing --------------------------------------------------------------


def test_nested_pattern_fires_until_fixpoint():
    check_rewrite(
        """
        graph @main(%x: f32[B,4]) -> (%y: f32[B,4]) {
          %a = neg(%x) : f32[B,4]
          %b = neg(%a) : f32[B,4]
          %c = neg(%b) : f32[B,4]
          %d = neg(%c) : f32[B,4]
          %y = relu(%d) : f32[B,4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[B,4]) -> (%y: f32[B,4]) {
          %y = relu(%x) : f32[B,4]
          return %y
        }
        """,
        RuleSet([fold_double_neg]),
        fired={"fold_double_neg": 2},
    )


def test_repeated_capture_name_means_same_value_and_builder_keeps_the_name():
    # add(x, x) matches, add(x, z) does not; the mul built in place of %y is named %y.
    check_rewrite(
        """
        graph @main(%x: f32[B,4], %z: f32[B,4]) -> (%y: f32[B,4], %w: f32[B,4]) {
          %y = add(%x, %x) : f32[B,4]
          %w = add(%x, %z) : f32[B,4]
          return %y, %w
        }
        """,
        """
        graph @main(%x: f32[B,4], %z: f32[B,4]) -> (%y: f32[B,4], %w: f32[B,4]) {
          @two = const [2.0] : f32[]
          %y = mul(%x, @two) : f32[B,4]
          %w = add(%x, %z) : f32[B,4]
          return %y, %w
        }
        """,
        add_self_to_mul,
        fired={"add_self_to_mul": 1},
    )


def test_commutative_tries_both_operand_orders():
    before = """
        graph @main(%x: f32[4]) -> (%y: f32[4], %z: f32[4]) {
          @zero = const [0.0] : f32[1]
          %y = add(%x, @zero) : f32[4]
          %z = add(@zero, %x) : f32[4]
          return %y, %z
        }
    """

    def drop_add_zero(x):
        return x

    one_order = Rule(P("add", Any("x"), Const(value=0.0)), drop_add_zero)
    both_orders = Rule(P("add", Any("x"), Const(value=0.0), commutative=True), drop_add_zero)
    assert rewrite(parse(before), one_order).fired == {"drop_add_zero": 1}
    # Both outputs become %x: the graph returns its input twice, under its own name.
    check_rewrite(
        before,
        """
        graph @main(%x: f32[4]) -> (%x: f32[4], %x: f32[4]) {
          return %x, %x
        }
        """,
        both_orders,
        fired={"drop_add_zero": 2},
    )


LINEAR_BEFORE = """
    graph @main(%x: f32[B,4]) -> (%y: f32[B,3]) {{
      @w = const : f32[4,3]
      @b = const [0.1, 0.2, 0.3] : f32[3]
      @s = const [0.5] : f32[]
      %mm = matmul(%x, @w) : f32[B,3]
      {body}
      return %y
    }}
"""


@pytest.mark.parametrize(
    "before, after",
    [
        (
            "%y = mul(%mm, @s) : f32[B,3]",
            """
            %mul = mul(@w, @s) : f32[4,3]
            %y = matmul(%x, %mul) : f32[B,3]
            """,
        ),
        (
            """
            %lin = add(@b, %mm) : f32[B,3]
            %y = mul(@s, %lin) : f32[B,3]
            """,
            """
            %mul = mul(@w, @s) : f32[4,3]
            %matmul = matmul(%x, %mul) : f32[B,3]
            %mul.0 = mul(@b, @s) : f32[3]
            %y = add(%matmul, %mul.0) : f32[B,3]
            """,
        ),
    ],
    ids=["no-bias", "bias"],
)
def test_optional_piece_makes_one_rule_for_with_and_without_bias(before, after):
    check_rewrite(
        LINEAR_BEFORE.format(body=before),
        LINEAR_BEFORE.format(body=after).replace("%mm = matmul(%x, @w) : f32[B,3]", ""),
        fold_scale_into_linear,
        constants={"w": np.arange(12, dtype=np.float32).reshape(4, 3)},
        fired={"fold_scale_into_linear": 1},
    )


def test_optional_operand_is_none_when_absent():
    g = parse("""
        graph @main(%x: f32[4]) -> (%a: f32[4], %b: f32[4], %c: f32[4]) {
          @lo = const [0.0] : f32[1]
          @hi = const [6.0] : f32[1]
          %a = clip(%x) : f32[4]
          %b = clip(%x, @lo) : f32[4]
          %c = clip(%x, none, @hi) : f32[4]
          return %a, %b, %c
        }
    """)
    pattern = P("clip", Any("x"), Opt(Const("lo")), Opt(Const("hi")))
    a, b, c = g.outputs
    x, lo, hi = g.inputs[0], g.value("lo"), g.value("hi")
    assert match(pattern, a, g) == {"x": x, "lo": None, "hi": None}
    assert match(pattern, b, g) == {"x": x, "lo": lo, "hi": None}
    assert match(pattern, c, g) == {"x": x, "lo": None, "hi": hi}
    # `None` as an operand pattern matches only an absent operand; `...` any further ones.
    assert match(P("clip", Any(), None, Any("hi")), c, g) == {"hi": hi}
    assert match(P("clip", Any(), None, Any()), b, g) is None
    assert match(P("clip", Any("x"), ...), c, g) == {"x": x}
    assert match(P("clip", Any("x")), b, g) is None  # too few operand patterns


def test_attribute_and_type_predicates():
    check_rewrite(
        """
        graph @main(%x: f32[4], %u: u8[4], %i: i8[4]) -> (%a: f32[4], %b: f32[4], %c: u8[4], %d: i8[4]) {
          %a = leaky_relu(%x) {alpha=0.0} : f32[4]
          %b = leaky_relu(%x) {alpha=0.2} : f32[4]
          %c = abs(%u) : u8[4]
          %d = abs(%i) : i8[4]
          return %a, %b, %c, %d
        }
        """,
        """
        graph @main(%x: f32[4], %u: u8[4], %i: i8[4]) -> (%a: f32[4], %b: f32[4], %u: u8[4], %d: i8[4]) {
          %a = relu(%x) : f32[4]
          %b = leaky_relu(%x) {alpha=0.2} : f32[4]
          %d = abs(%i) : i8[4]
          return %a, %b, %u, %d
        }
        """,
        RuleSet([leaky_relu_zero_is_relu, drop_unsigned_abs]),
        fired={"leaky_relu_zero_is_relu": 1, "drop_unsigned_abs": 1},
    )


def test_attribute_predicate_functions_and_op_families():
    g = parse("""
        graph @main(%x: f32[2,3]) -> (%t: f32[3,2]) {
          %l = leaky_relu(%x) {alpha=0.3} : f32[2,3]
          %t = transpose(%l) {perm=(1,0)} : f32[3,2]
          return %t
        }
    """)
    t = g.outputs[0]
    l = g.value("l")
    assert match(P("leaky_relu", attrs={"alpha": lambda a: a > 0.25}), l, g) == {}
    assert match(P("leaky_relu", attrs={"alpha": lambda a: a > 0.5}), l, g) is None
    assert match(P("leaky_relu", attrs=lambda attrs: attrs["alpha"] == 0.3), l, g) == {}
    elementwise = P(ops_in(ELEMENTWISE), name="e")
    assert match(elementwise, l, g) == {"e": l}
    assert match(elementwise, t, g) is None
    assert match(P("transpose", elementwise, attrs={"perm": (1, 0)}), t, g) == {"e": l}


def test_rule_side_condition_gets_captures():
    # cast to the operand's own dtype is the identity.
    @rule(P("cast", Any("x"), name="out"), where=lambda x, out: x.dtype == out.dtype)
    def drop_noop_cast(x):
        return x

    check_rewrite(
        """
        graph @main(%x: f32[4]) -> (%y: f16[4]) {
          %a = cast(%x) {to=f32} : f32[4]
          %b = relu(%a) : f32[4]
          %y = cast(%b) {to=f16} : f16[4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[4]) -> (%y: f16[4]) {
          %b = relu(%x) : f32[4]
          %y = cast(%b) {to=f16} : f16[4]
          return %y
        }
        """,
        drop_noop_cast,
        fired={"drop_noop_cast": 1},
    )


def test_multi_output_root_returns_a_tuple():
    def pieces_match(a, b, cat, parts, graph):
        c, s = graph.producer(cat).attrs, graph.producer(parts).attrs
        return c["axis"] == s["axis"] and s["split"] == (a.shape[c["axis"]], b.shape[c["axis"]])

    @rule(P("split", P("concat", Any("a"), Any("b"), name="cat"), name="parts"), where=pieces_match)
    def split_of_concat(a, b):
        return a, b

    check_rewrite(
        """
        graph @main(%a: f32[2,3], %b: f32[2,5]) -> (%y: f32[2,3], %z: f32[2,5]) {
          %cat = concat(%a, %b) {axis=1} : f32[2,8]
          %p, %q = split(%cat) {axis=1, split=(3,5)} : f32[2,3], f32[2,5]
          %y = relu(%p) : f32[2,3]
          %z = relu(%q) : f32[2,5]
          return %y, %z
        }
        """,
        """
        graph @main(%a: f32[2,3], %b: f32[2,5]) -> (%y: f32[2,3], %z: f32[2,5]) {
          %y = relu(%a) : f32[2,3]
          %z = relu(%b) : f32[2,5]
          return %y, %z
        }
        """,
        split_of_concat,
        fired={"split_of_concat": 1},
    )


def test_none_in_a_returned_tuple_keeps_that_output():
    @rule(P("split", P("concat", Any("a"), Any("b"), attrs={"axis": 0}), attrs={"split": (1, 1)}))
    def first_piece_of_concat(a):
        return a, None

    check_rewrite(
        """
        graph @main(%a: f32[1,3], %b: f32[1,3]) -> (%y: f32[1,3], %z: f32[1,3]) {
          %cat = concat(%a, %b) {axis=0} : f32[2,3]
          %p, %q = split(%cat) {split=(1,1)} : f32[1,3], f32[1,3]
          %y = relu(%p) : f32[1,3]
          %z = relu(%q) : f32[1,3]
          return %y, %z
        }
        """,
        """
        graph @main(%a: f32[1,3], %b: f32[1,3]) -> (%y: f32[1,3], %z: f32[1,3]) {
          %cat = concat(%a, %b) {axis=0} : f32[2,3]
          %p, %q = split(%cat) {split=(1,1)} : f32[1,3], f32[1,3]
          %y = relu(%a) : f32[1,3]
          %z = relu(%q) : f32[1,3]
          return %y, %z
        }
        """,
        first_piece_of_concat,
        fired={"first_piece_of_concat": 1},
    )


# -- single use -------------------------------------------------------------------------

SHARED_INNER = """
    graph @main(%x: f32[4]) -> (%y: f32[4]) {
      %a = neg(%x) : f32[4]
      %b = neg(%a) : f32[4]
      %y = add(%a, %b) : f32[4]
      return %y
    }
"""


def test_interior_node_with_other_users_does_not_match():
    check_rewrite(SHARED_INNER, SHARED_INNER, fold_double_neg, fired={})


def test_interior_graph_output_does_not_match():
    text = """
        graph @main(%x: f32[4]) -> (%a: f32[4], %b: f32[4]) {
          %a = neg(%x) : f32[4]
          %b = neg(%a) : f32[4]
          return %a, %b
        }
    """
    check_rewrite(text, text, fold_double_neg, fired={})


def test_single_use_false_allows_a_shared_interior_node():
    @rule(P("neg", P("neg", Any("x"), single_use=False)))
    def fold_double_neg_shared(x):
        return x

    check_rewrite(
        SHARED_INNER,
        """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %a = neg(%x) : f32[4]
          %y = add(%a, %x) : f32[4]
          return %y
        }
        """,
        fold_double_neg_shared,
        fired={"fold_double_neg_shared": 1},
    )


# -- handlers that decline or misbehave ---------------------------------------------------


def test_handler_returning_none_changes_nothing_and_drops_what_it_built():
    calls = []

    @rule(P("relu", Any("x")))
    def change_of_mind(x, builder):
        calls.append(x.name)
        builder.op("neg", [builder.op("exp", [x])])
        builder.const("unused", np.zeros(3, np.float32))
        # ...and returns nothing: no change.

    text = """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %y = relu(%x) : f32[4]
          return %y
        }
    """
    check_rewrite(text, text, change_of_mind, fired={})
    assert calls == ["x"]


def test_replacement_of_another_type_names_the_rule():
    @rule(P("add", Any("x"), Const(value=0.0)))
    def drop_add_zero(x):
        return x  # wrong when the zero broadcasts x to a larger shape

    g = parse("""
        graph @main(%x: f32[4]) -> (%y: f32[3,4]) {
          @zeros = const [0.0, 0.0, 0.0] : f32[3,1]
          %y = add(%x, @zeros) : f32[3,4]
          return %y
        }
    """)
    with pytest.raises(
        RewriteError,
        match=r"rule 'drop_add_zero' at add %y: the replacement %x: f32\[4\] does not have "
        r"the type of %y: f32\[3,4\]",
    ) as e:
        rewrite(g, drop_add_zero)
    assert "> %y = add(%x, @zeros)" in str(e.value)

    @rule(P("equal", Any("x"), Any("y")))
    def equal_to_operand(x):
        return x

    g = parse("""
        graph @main(%a: f32[4], %b: f32[4]) -> (%e: bool[4]) {
          %e = equal(%a, %b) : bool[4]
          return %e
        }
    """)
    with pytest.raises(RewriteError, match=r"%a: f32\[4\] does not have the type of %e: bool\[4\]"):
        rewrite(g, equal_to_operand)


def test_handler_must_return_a_value_defined_before_the_root():
    text = """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %y = relu(%x) : f32[4]
          return %y
        }
    """

    @rule(P("relu", Any("x")))
    def returns_array(x):
        return np.zeros(4, np.float32)

    with pytest.raises(RewriteError, match="returned ndarray; it must return a Value"):
        rewrite(parse(text), returns_array)

    @rule(P("relu", Any("x"), name="out"))
    def reads_itself(out, builder):
        return builder.op("neg", [out])

    with pytest.raises(RewriteError, match="the replacement reads %y, the value it replaces"):
        rewrite(parse(text), reads_itself)


def test_non_convergence_names_the_rules_that_kept_firing():
    @rule(P("add", Any("a"), Any("b")), where=lambda a, b: a is not b)
    def swap_operands(a, b, builder):
        return builder.op("add", [b, a])

    g = parse("""
        graph @main(%x: f32[4], %z: f32[4]) -> (%y: f32[4]) {
          %n = neg(%x) : f32[4]
          %y = add(%n, %z) : f32[4]
          return %y
        }
    """)
    rules = RuleSet([fold_double_neg, swap_operands])
    with pytest.raises(
        RewriteError,
        match=r"did not converge in 5 iterations; rules still firing: "
        r"swap_operands \(1 in the last iteration, 5 in all\)$",
    ):
        rewrite(g, rules, max_iterations=5)


# -- rule sets ------------------------------------------------------------------------------


def test_rule_sets_compose_with_plus_and_count_per_rule():
    both = RuleSet([fold_double_neg]) + drop_unsigned_abs
    assert [r.name for r in both] == ["fold_double_neg", "drop_unsigned_abs"]
    assert [r.name for r in fold_double_neg + add_self_to_mul + both] == [
        "fold_double_neg",
        "add_self_to_mul",
        "drop_unsigned_abs",
    ]
    g = parse("""
        graph @main(%x: f32[4], %u: u8[4]) -> (%y: f32[4], %v: u8[4]) {
          %a = neg(%x) : f32[4]
          %b = neg(%a) : f32[4]
          %y = add(%b, %b) : f32[4]
          %v = abs(%u) : u8[4]
          return %y, %v
        }
    """)
    result = rewrite(g, both + add_self_to_mul)
    assert result.fired == {"fold_double_neg": 1, "drop_unsigned_abs": 1, "add_self_to_mul": 1}
    assert result.iterations == 2
    assert "%y = mul(%x, @two)" in print_graph(result.graph)

    def fold_double_neg_again(x):
        return x

    impostor = Rule(P("neg", Any("x")), fold_double_neg_again, name="fold_double_neg")
    with pytest.raises(ValueError, match="two different rules are named 'fold_double_neg'"):
        RuleSet([fold_double_neg]) + impostor


def test_mistakes_in_rules_are_reported_when_the_rule_is_made():
    with pytest.raises(ValueError, match="unknown op 'relux'"):
        P("relux", Any("x"))
    with pytest.raises(ValueError, match="op 'leaky_relu' has no attribute 'beta'"):
        P("leaky_relu", attrs={"beta": 1.0})
    with pytest.raises(ValueError, match="commutative=True needs exactly two operand patterns"):
        P("relu", Any(), commutative=True)
    with pytest.raises(ValueError, match="'graph' is reserved"):
        Any("graph")
    with pytest.raises(TypeError, match=r"handler fold\(\) takes 'y', which is neither a capture of the pattern \(x\)"):

        @rule(P("neg", Any("x")))
        def fold(y):
            return y

    with pytest.raises(TypeError, match="the pattern's root must be a P"):
        Rule(Any("x"), lambda x: x, name="bare")


def test_patterns_print_readably():
    p = P("add", Any("x"), Const("c", value=0.0), commutative=True)
    assert repr(p) == "P('add', Any('x'), Const('c', value=0.0), commutative=True)"
    assert repr(fold_double_neg) == "Rule('fold_double_neg': P('neg', P('neg', Any('x'))))"


# -- cost ------------------------------------------------------------------------------------


def test_firings_update_the_use_index_instead_of_rebuilding_it(monkeypatch):
    # 1,000 firings, each replacing a node and inserting a new one: the Graph keeps its
    # use-def index up to date, so it is built once, not once per firing (which made a
    # rewrite quadratic in the graph size).
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.types import TensorType

    g = Graph()
    v = g.add_input("x", TensorType((4,), DType.f32))
    b = Builder(g)
    for _ in range(1000):
        v = b.op("add", [v, v])
    g.outputs = [v]
    builds = []
    original = Graph._rebuild_index
    monkeypatch.setattr(Graph, "_rebuild_index", lambda self: builds.append(1) or original(self))
    result = rewrite(g, add_self_to_mul)
    assert result.fired == {"add_self_to_mul": 1000}
    assert [n.op for n in g.nodes] == ["mul"] * 1000 and g.outputs[0].name == v.name
    assert len(builds) <= 1
