"""The IR text form round-trips: parse(print(g)) is structurally equal to g."""

import numpy as np
import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

from einfuse.errors import ParseError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.parser import parse, parse_dim, parse_type
from einfuse.ir.printer import print_graph
from einfuse.ir.types import DType, TensorType, ceildiv, dim_max, floordiv, format_dim, sym
from einfuse.ir.verifier import verify
from einfuse.testing.strategies import graphs

B, S, H = sym("B"), sym("S"), sym("H")


def round_trip(g: Graph, constants: str = "full") -> Graph:
    text = print_graph(g, constants=constants)
    back = parse(text, constants=g if constants != "full" else None)
    assert print_graph(back, constants=constants) == text
    assert back.structurally_equal(g), f"round trip changed the graph:\n{text}"
    return back


def small_graph() -> Graph:
    g = Graph("main")
    x = g.add_input("x", TensorType((B, 4), DType.f32))
    w = g.add_constant("w", np.arange(4, dtype=np.float32))
    b = Builder(g)
    y = b.op("leaky_relu", [b.op("add", [x, w], name="add0")], alpha=0.2)
    g.outputs = [y]
    return g


def test_print_small_graph_text():
    text = print_graph(small_graph())
    assert text == (
        "graph @main(%x: f32[B,4]) -> (%leaky_relu: f32[B,4]) {\n"
        "  @w = const [0.0, 1.0, 2.0, 3.0] : f32[4]\n"
        '  %add0 = add(%x, @w) #"add0" : f32[B,4]\n'
        "  %leaky_relu = leaky_relu(%add0) {alpha=0.2} : f32[B,4]\n"
        "  return %leaky_relu\n"
        "}"
    )


@pytest.mark.parametrize("mode", ["full", "auto", "elide"])
def test_round_trip_constant_modes(mode):
    g = small_graph()
    g.add_constant("big", np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32))
    round_trip(g, mode)


@pytest.mark.parametrize("dtype", list(DType))
def test_constants_of_every_dtype_round_trip(dtype):
    g = Graph("c")
    rng = np.random.default_rng(1)
    for n in (3, 40):  # literal and hex forms
        if dtype == DType.bool:
            arr = rng.integers(0, 2, n).astype(bool)
        elif dtype.is_int:
            arr = rng.integers(0, 100, n).astype(dtype.np)
        else:
            arr = (rng.standard_normal(n) * 3).astype(dtype.np)
        v = g.add_constant(f"c{n}", arr)
        g.outputs.append(v)
    round_trip(g, "full")
    round_trip(g, "auto")


def test_special_float_values_round_trip():
    g = Graph("s")
    v = g.add_constant("c", np.array([np.inf, -np.inf, np.nan, -0.0, 1e-45, 3.4e38], np.float32))
    g.outputs = [v]
    back = round_trip(g)
    got = back.constants["c"][1]
    assert np.signbit(got[3]) and np.isnan(got[2])


@pytest.mark.parametrize("name", ["0\n", "a\n(%x: f32[1])", "x\r"])
def test_trailing_newline_in_names_is_quoted(name):
    # `$` in a regex matches before a final newline: names must be matched in full
    g = Graph(name)
    x = g.add_input(name, TensorType((1,), DType.f32))
    g.outputs = [Builder(g).op("relu", [x])]
    assert len(print_graph(g).splitlines()) == 4
    round_trip(g)


def test_hostile_names_stay_data():
    g = Graph('evil"graph')
    x = g.add_input('x"); import os; ("', TensorType((2,), DType.f32))
    y = Builder(g).op("relu", [x], name="line\nbreak}")
    g.outputs = [y]
    text = print_graph(g)
    # a newline in a name must not start a new line of IR
    assert len(text.splitlines()) == 4
    round_trip(g)


@pytest.mark.parametrize(
    "d",
    [B, B * S, B + 1, 2 * H + 1, floordiv(H - 1, 2) + 1, ceildiv(S, 64), dim_max(S, 3) * B, 5 - H, H**2, floordiv(H, 3) - H],
)
def test_dim_expressions_round_trip(d):
    assert parse_dim(format_dim(d)) == d


def test_parse_type():
    assert parse_type("bf16[B,floor((1/2)*H),3]") == TensorType((B, floordiv(H, 2), 3), DType.bf16)
    assert parse_type("i64[]") == TensorType((), DType.i64)


@pytest.mark.parametrize(
    "text, match",
    [
        ("graph @g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = nosuch(%x) : f32[2]\n  return %y\n}", "unknown op 'nosuch'"),
        ("graph @g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = relu(%z) : f32[2]\n  return %y\n}", r"%z is used before"),
        ("graph @g(%x: q7[2]) -> () {\n  return\n}", "unknown dtype 'q7'"),
        ("graph @g(%x: f32[2]) -> (%x: f32[2]) {\n  %x = relu(%x) : f32[2]\n  return %x\n}", "defined twice"),
        ("graph @g() -> (@w: f32[2]) {\n  @w = const [1.0] : f32[2]\n  return @w\n}", "1 values do not fill"),
        ("graph @g() -> (@w: f32[9]) {\n  @w = const : f32[9]\n  return @w\n}", "elided"),
        ("graph @g(%x: f32[__import__('os')]) -> () {}", "unexpected character"),
        ("graph @g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = leaky_relu(%x) {beta=1.0} : f32[2]\n  return %y\n}", "no attribute 'beta'"),
    ],
)
def test_parse_errors_are_clear(text, match):
    with pytest.raises(ParseError, match=match):
        parse(text)


def test_parse_error_shows_line_and_marker():
    with pytest.raises(ParseError) as e:
        parse("graph @g(%x: f32[2]) -> (%y: f32[2]) {\n  %y = relu(%x) : f32[2\n  return %y\n}")
    assert "line 3" in str(e.value) and "^" in str(e.value)


@given(graphs(max_nodes=8))
def test_random_graphs_round_trip(g):
    verify(g)
    round_trip(g, "full")
    round_trip(g, "auto")


@given(st.integers(1, 4), st.integers(0, 3))
def test_symbolic_shapes_infer_through_builder(a, b):
    g = Graph()
    x = g.add_input("x", TensorType((B, a), DType.f32))
    y = Builder(g).op("add", [x, g.add_constant("c", np.ones((a,), np.float32))])
    assert y.type == TensorType((B, a), DType.f32)
    assert sympy.sympify(y.shape[0]) == B
