"""The pass registry, the PassManager (records, verification, dumps, observer), the
before/after helper itself, and a property test: the passes keep reference outputs."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.errors import EinfuseError, ExecutionError, VerifyError
from einfuse.ir.graph import Graph
from einfuse.ir.ops import REGISTRY, get_op
from einfuse.ir.parser import parse
from einfuse.passes import PASSES, Pass, PassManager, get_pass, register_pass, registered_passes
from einfuse.passes.pattern import Any, P, RuleSet, rewrite, rule
from einfuse.testing.strategies import graphs
from tests.passes.helpers import check_rewrite

THREE = ["fold-constants", "eliminate-common-subexpressions", "eliminate-dead-code"]

SAMPLE = """
    graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
      @a = const [1.0, 2.0] : f32[2]
      %c = relu(@a) : f32[2]
      %d1 = add(%x, %c) : f32[B,2]
      %d2 = add(%x, %c) : f32[B,2]
      %y = mul(%d1, %d2) : f32[B,2]
      return %y
    }
"""


# -- registry ---------------------------------------------------------------------------


def test_registry_names_and_docstrings():
    passes = registered_passes()
    assert set(THREE) <= set(passes)
    for name, cls in passes.items():
        assert cls.name == name
        assert cls.__doc__.strip() and "\n" not in cls.__doc__.strip()
    assert get_pass("fold-constants", max_bytes=10).max_bytes == 10
    with pytest.raises(EinfuseError, match="unknown pass 'fold-constant'") as e:
        get_pass("fold-constant")
    assert e.value.hint == "did you mean 'fold-constants'?"


def _pass_class(name: str, doc: str | None = "Does nothing.", frozen: bool = True):
    def run(self, graph):
        return graph

    cls = type("Made", (Pass,), {"name": name, "run": run, "__doc__": doc, "__annotations__": {"name": ClassVar[str]}})
    return dataclass(frozen=frozen)(cls)


def test_register_pass_checks_the_shape_of_a_pass():
    with pytest.raises(ValueError, match="must be kebab-case like 'fold-constants', got 'FoldThings'"):
        register_pass(_pass_class("FoldThings"))
    with pytest.raises(ValueError, match="needs a one-line docstring"):
        register_pass(_pass_class("no-doc", doc=None))
    with pytest.raises(TypeError, match=r"must be a @dataclass\(frozen=True\)"):
        register_pass(_pass_class("not-frozen", frozen=False))
    with pytest.raises(ValueError, match="'fold-constants' is already taken"):
        register_pass(_pass_class("fold-constants"))
    assert "no-doc" not in PASSES and "not-frozen" not in PASSES


# -- the PassManager ----------------------------------------------------------------------


def test_records_count_nodes_and_changes():
    pm = PassManager(THREE + ["eliminate-dead-code"], verify=True)
    pm.run(parse(SAMPLE))
    rows = [(r.index, r.name, r.nodes_before, r.nodes_after, r.changed) for r in pm.records]
    assert rows == [
        (1, "fold-constants", 4, 3, True),
        (2, "eliminate-common-subexpressions", 3, 2, True),
        (3, "eliminate-dead-code", 2, 2, False),
        (4, "eliminate-dead-code", 2, 2, False),
    ]
    assert all(r.seconds >= 0 for r in pm.records)
    assert "2. eliminate-common-subexpressions:" in pm.summary()


@dataclass(frozen=True)
class _FoldDoubleNeg(Pass):
    """Folds neg(neg(x)) to x (a test pass built on rewrite rules)."""

    name: ClassVar[str] = "test-fold-double-neg"

    def run(self, graph: Graph) -> Graph:
        return rewrite(graph, _DOUBLE_NEG).graph


@rule(P("neg", P("neg", Any("x"))))
def fold_double_neg(x):
    return x


_DOUBLE_NEG = RuleSet([fold_double_neg])


@pytest.fixture
def double_neg_pass():
    """Registers the test pass for one test only (the registry is process-wide)."""
    register_pass(_FoldDoubleNeg)
    yield _FoldDoubleNeg.name
    del PASSES[_FoldDoubleNeg.name]


def test_rule_counts_are_recorded_per_pass(double_neg_pass):
    check_rewrite(
        """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %a = neg(%x) : f32[4]
          %b = neg(%a) : f32[4]
          %y = relu(%b) : f32[4]
          return %y
        }
        """,
        """
        graph @main(%x: f32[4]) -> (%y: f32[4]) {
          %y = relu(%x) : f32[4]
          return %y
        }
        """,
        ["eliminate-dead-code", double_neg_pass],
        fired={"fold_double_neg": 1},
    )


@dataclass(frozen=True)
class _Scramble(Pass):
    """Reverses the node order (a broken pass)."""

    name: ClassVar[str] = "scramble"

    def run(self, graph: Graph) -> Graph:
        graph.nodes.reverse()
        graph._invalidate()
        return graph


def test_verify_names_the_pass_that_broke_an_invariant():
    pm = PassManager(["fold-constants", _Scramble()], verify=True)
    with pytest.raises(
        VerifyError,
        match=r"pass 'scramble' \(#2 of the pipeline\) broke an IR invariant: .*"
        r"operand 0 \(%d1\) is not defined before this node",
    ) as e:
        pm.run(parse(SAMPLE))
    assert "> %y = mul(%d1, %d2)" in str(e.value)
    # Without verification the broken graph goes through.
    PassManager([_Scramble()]).run(parse(SAMPLE))


def test_an_invalid_input_graph_is_blamed_on_the_input():
    g = parse(SAMPLE)
    g.nodes.reverse()
    g._invalidate()
    with pytest.raises(VerifyError, match="the graph given to the pipeline is invalid"):
        PassManager(["eliminate-dead-code"], verify=True).run(g)


def test_a_pass_must_return_a_graph():
    @dataclass(frozen=True)
    class Forgetful(Pass):
        """Forgets to return the graph."""

        name: ClassVar[str] = "forgetful"

        def run(self, graph):
            graph.nodes.clear()

    with pytest.raises(TypeError, match="pass 'forgetful' returned NoneType, not a Graph"):
        PassManager([Forgetful()]).run(parse(SAMPLE))


def test_dump_writes_one_file_per_pass_named_by_index_and_pass(tmp_path):
    big = np.arange(40, dtype=np.float32).reshape(20, 2)
    # A hostile graph name must not reach the file system.
    g = parse(
        """
        graph @"../../evil name"(%x: f32[20,2]) -> (%y: f32[20,2]) {
          @w = const : f32[20,2]
          @a = const [1.0, 2.0] : f32[2]
          %c = relu(@a) : f32[2]
          %d = add(%x, %c) : f32[20,2]
          %y = add(%d, @w) : f32[20,2]
          return %y
        }
        """,
        constants={"w": big},
    )
    out = tmp_path / "ir"
    PassManager(["fold-constants", "eliminate-dead-code"], dump=out).run(g)
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "00-input.ir",
        "01-fold-constants.ir",
        "02-eliminate-dead-code.ir",
        "ir",
    ]
    text = (out / "01-fold-constants.ir").read_text()
    # Constants are elided (types only), so the dump reads back given the values.
    assert "@c = const : f32[2]" in text and "@w = const : f32[20,2]" in text
    back = parse(text, constants={"w": big, "c": np.array([1.0, 2.0], np.float32)})
    assert [n.op for n in back.nodes] == ["add", "add"]


def test_observer_sees_each_record_and_graph():
    seen = []

    def observe(record, graph):
        seen.append((record.name, len(graph.nodes)))

    PassManager(THREE, instrument=observe).run(parse(SAMPLE))
    assert seen == [("fold-constants", 3), ("eliminate-common-subexpressions", 2), ("eliminate-dead-code", 2)]


# -- the before/after helper ----------------------------------------------------------------


def test_helper_shows_both_sides_and_marks_the_first_difference():
    with pytest.raises(pytest.fail.Exception) as e:
        check_rewrite(
            SAMPLE,
            """
            graph @main(%x: f32[B,2]) -> (%y: f32[B,2]) {
              @c = const [1.0, 3.0] : f32[2]
              %d1 = add(%x, @c) : f32[B,2]
              %y = mul(%d1, %d1) : f32[B,2]
              return %y
            }
            """,
            THREE,
        )
    message = str(e.value)
    assert "differs from the expected IR at line 2" in message
    got, expected = message.split("--- expected ---")
    assert ">>   2 |   @c = const [1.0, 2.0] : f32[2]" in got  # relu([1, 2])
    assert ">>   2 |   @c = const [1.0, 3.0] : f32[2]" in expected
    assert "     3 |   %d1 = add(%x, @c) : f32[B,2]" in expected


def test_helper_checks_expected_rule_counts():
    with pytest.raises(pytest.fail.Exception, match=r"rules fired \{\}, expected \{'fold_double_neg': 1\}"):
        check_rewrite(SAMPLE, SAMPLE, _DOUBLE_NEG, fired={"fold_double_neg": 1})


# -- property: passes keep the reference outputs of random graphs ------------------------------


def _random_inputs(g: Graph, seed: int) -> tuple[dict, dict] | None:
    """Inputs and reference outputs of `g`, with every symbolic dim bound to one small
    size; None when no size suits the graph (graphs() makes graphs whose broadcasts
    hold only for some sizes: a constant sized 2 where the input has B, say)."""
    rng = np.random.default_rng(seed)
    for size in (2, 1):
        bindings = {s: size for v in g.inputs for s in v.type.symbols()}
        inputs = {}
        for v in g.inputs:
            shape = tuple(int(sympy.sympify(d).subs(bindings)) for d in v.shape)
            inputs[v.name] = rng.standard_normal(shape).astype(v.dtype.np)
        try:
            return inputs, reference.run(g, inputs)
        except ExecutionError:
            continue
    return None


get_op("add")  # loads every op module
# Every op (matmul too: graphs() no longer names a weight like an existing value, 869e015).
RANDOM_GRAPH_OPS = sorted(REGISTRY)


@pytest.mark.parametrize("passes", [[p] for p in THREE] + [THREE], ids=THREE + ["all"])
@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: the hypothesis profile (tests/conftest.py)
@given(g=graphs(max_nodes=8, ops=RANDOM_GRAPH_OPS), seed=st.integers(0, 2**16))
def test_passes_preserve_reference_outputs(passes, g, seed):
    run = _random_inputs(g, seed)
    assume(run is not None)
    inputs, want = run
    out = PassManager(passes, verify=True).run(g)
    got = reference.run(out, inputs)
    assert list(got) == list(want)  # same output names, same order
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"output {name!r}")
