"""The Graph's use-def index (producer, users, node order) is kept up to date by each
mutation; after any sequence of mutations it must equal a rebuild from scratch."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from einfuse.ir.graph import Graph, Node, Value, c_contiguous
from einfuse.ir.types import DType, TensorType

T = TensorType((2, 3), DType.f32)


def scratch_index(graph: Graph) -> tuple[dict[int, Node], dict[int, list[Node]]]:
    """producer and users computed from graph.nodes alone (no Graph internals)."""
    producers: dict[int, Node] = {}
    users: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for o in n.outputs:
            producers[id(o)] = n
        for v in n.inputs:
            if v is not None and not any(u is n for u in users.get(id(v), [])):
                users.setdefault(id(v), []).append(n)
    return producers, users


def assert_index_matches(graph: Graph, universe: list[Value]) -> None:
    producers, users = scratch_index(graph)
    for v in universe:
        assert graph.producer(v) is producers.get(id(v)), f"producer of %{v.name}"
        got, want = graph.users(v), users.get(id(v), [])
        assert len(got) == len(want) and all(a is b for a, b in zip(got, want)), f"users of %{v.name}"
    for a, b in zip(graph.nodes, graph.nodes[1:]):
        assert graph.precedes(a, b) and not graph.precedes(b, a)


class World:
    """A graph plus every value ever made, and helpers to make nodes."""

    def __init__(self):
        self.g = Graph()
        self.universe: list[Value] = [self.g.add_input("x", T), self.g.add_input("y", T)]
        self.universe.append(self.g.add_constant("c", np.ones((2, 3), np.float32)))

    def node(self, data, n_outputs: int = 1) -> Node:
        # The index does not care whether the graph is valid: operands are any values,
        # sometimes repeated, sometimes absent.
        operands = data.draw(st.lists(st.sampled_from(self.universe + [None]), min_size=1, max_size=3))
        outs = tuple(self.g.new_value("t", T) for _ in range(n_outputs))
        self.universe.extend(outs)
        return Node("add", tuple(operands), outs)


MUTATIONS = (
    "add_node",
    "insert_before",
    "erase",
    "replace_node",
    "replace_all_uses",
    "set_inputs",
    "remove_dead",
    "query",
    "direct_edit",
)


@given(data=st.data(), steps=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=40))
def test_incremental_index_equals_rebuild(data, steps):
    w = World()
    g = w.g
    for _ in range(3):
        g.add_node(w.node(data))
    for step in steps:
        if step == "add_node":
            g.add_node(w.node(data, data.draw(st.integers(1, 2))))
        elif step == "query":
            g.users(data.draw(st.sampled_from(w.universe)))  # builds the index if it was dropped
        elif not g.nodes:
            continue
        elif step == "insert_before":
            g.insert_before(data.draw(st.sampled_from(g.nodes)), w.node(data))
        elif step == "erase":
            g.erase(data.draw(st.sampled_from(g.nodes)))
        elif step == "replace_node":
            k = data.draw(st.integers(0, 3))
            g.replace_node(data.draw(st.sampled_from(g.nodes)), [w.node(data) for _ in range(k)])
        elif step == "replace_all_uses":
            old, new = data.draw(st.sampled_from(w.universe)), data.draw(st.sampled_from(w.universe))
            g.replace_all_uses(old, new)
        elif step == "set_inputs":
            node = data.draw(st.sampled_from(g.nodes))
            g.set_inputs(node, w.node(data).inputs)
        elif step == "remove_dead":
            g.remove_dead(data.draw(st.lists(st.sampled_from(w.universe), max_size=3)))
        elif step == "direct_edit":
            edit = data.draw(st.sampled_from(["setitem", "delitem", "append", "assign", "reverse"]))
            i = data.draw(st.integers(0, len(g.nodes) - 1))
            if edit == "setitem":
                g.nodes[i] = w.node(data)
            elif edit == "delitem":
                del g.nodes[i]
            elif edit == "append":
                g.nodes.append(w.node(data))
            elif edit == "assign":
                g.nodes = g.nodes[::-1]
            else:
                g.nodes.reverse()
        if data.draw(st.booleans()):
            assert_index_matches(g, w.universe)
    assert_index_matches(g, w.universe)


def test_many_insertions_at_one_place_renumber_the_order():
    # Each insertion before the same anchor halves the free gap: after ~20 the labels
    # run out and the order is renumbered.
    g = Graph()
    x = g.add_input("x", T)
    last = g.add_node(Node("relu", (x,), (g.new_value("r", T),)))
    made = []
    for _ in range(100):
        n = Node("neg", (x,), (g.new_value("n", T),))
        made.append(g.insert_before(last, n))
    assert g.nodes[-1] is last and g.nodes[:-1] == made
    assert_index_matches(g, [x, *(o for n in g.nodes for o in n.outputs)])


def test_replace_all_uses_rewires_only_the_users():
    g = Graph()
    x, y = g.add_input("x", T), g.add_input("y", T)
    a = g.add_node(Node("relu", (x,), (g.new_value("a", T),)))
    b = g.add_node(Node("add", (a.output, a.output), (g.new_value("b", T),)))
    untouched = g.add_node(Node("neg", (y,), (g.new_value("c", T),)))
    g.outputs = [b.output, a.output]
    g.replace_all_uses(a.output, y)
    assert g.nodes[0] is a and g.nodes[2] is untouched  # nodes not reading a stay the same objects
    assert g.nodes[1].inputs == (y, y) and g.nodes[1].outputs == b.outputs
    assert g.users(a.output) == [] and g.users(y) == [g.nodes[1], untouched]
    assert g.outputs == [b.output, y]


def test_remove_dead_stops_at_live_values():
    g = Graph()
    x = g.add_input("x", T)
    c = g.add_constant("c", np.ones((2, 3), np.float32))
    a = g.add_node(Node("add", (x, c), (g.new_value("a", T),)))
    b = g.add_node(Node("relu", (a.output,), (g.new_value("b", T),)))
    d = g.add_node(Node("neg", (b.output,), (g.new_value("d", T),)))
    keep = g.add_node(Node("neg", (a.output,), (g.new_value("k", T),)))
    g.outputs = [keep.output]
    g.remove_dead([d.output])
    # d and b went; a is still read by the output's producer, so it and c stay.
    assert g.nodes == [a, keep] and "c" in g.constants
    assert g.fresh_name("b") == "b" and g.fresh_name("d") == "d"  # names released
    g.outputs = []
    g.remove_dead([keep.output])
    assert g.nodes == [] and g.constants == {}


def test_add_constant_copies_except_views_of_its_own_constants():
    g = Graph()
    mine = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = g.add_constant("w", mine)
    mine[0, 0] = 42.0  # the graph holds its own copy
    arr = g.const_value(w)
    assert arr[0, 0] == 0.0 and not arr.flags.writeable and arr.flags.c_contiguous
    # A view of this graph's constant is immutable already: kept without a copy.
    t = g.add_constant("w.T", arr.T)
    assert np.shares_memory(g.const_value(t), arr) and g.const_value(t).shape == (3, 2)
    # A view of anything else, even another graph's constant, is copied into C order.
    other = Graph()
    theirs = other.const_value(other.add_constant("o", mine))
    for source in (mine.T, theirs.T):
        f = g.const_value(g.add_constant(g.fresh_name("f"), source))
        assert not np.shares_memory(f, source) and f.flags.c_contiguous and not f.flags.writeable
        np.testing.assert_array_equal(f, source)


def test_c_contiguous_copies_only_when_needed():
    a = np.arange(1100 * 1030, dtype=np.float32).reshape(1030, 1100)  # over 4 MiB: tiled
    assert c_contiguous(a) is a
    for view in (a.T, a[::2, ::3], a[:5].T):
        out = c_contiguous(view)
        assert out.flags.c_contiguous and not np.shares_memory(out, a)
        np.testing.assert_array_equal(out, view)
