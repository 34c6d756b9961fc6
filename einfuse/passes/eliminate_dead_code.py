"""eliminate-dead-code: drop nodes whose results nobody reads, and unused constants.

Preconditions: a verified graph. Graph inputs are never removed (they are the
signature), and neither is anything a graph output depends on. Ordering: run it last
in a simplification pipeline and after any pass that leaves dead work behind
(fold-constants, eliminate-common-subexpressions and the rewrite driver only clean up
what they themselves made dead).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from einfuse.ir.graph import Graph, Node, Value
from einfuse.passes.manager import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Removes nodes whose outputs are unused and not graph outputs, and unused constants."""

    name: ClassVar[str] = "eliminate-dead-code"

    def run(self, graph: Graph) -> Graph:
        # One backward sweep: a node is live when one of its outputs is read by a live
        # node or is a graph output (a multi-output node stays whole).
        live = {id(v) for v in graph.outputs}
        kept = []
        for node in reversed(graph.nodes):
            if any(id(o) in live for o in node.outputs):
                live.update(id(x) for x in node.inputs if x is not None)
                kept.append(node)
        if len(kept) != len(graph.nodes):
            set_nodes(graph, kept[::-1])
        for v, _ in list(graph.constants.values()):
            if id(v) not in live:
                drop_constant(graph, v)
        return graph


def remove_dead(graph: Graph, values: Iterable[Value | None]) -> None:
    """Removes what became dead, starting from `values`: a producer whose outputs are
    all unused (and not graph outputs) is erased, then its operands are looked at in
    turn; an unused constant among them is dropped. Nothing else is touched, so passes
    that call this leave pre-existing dead code to eliminate-dead-code."""
    graph.remove_dead(values)  # the Graph's use-def index: no scan of the node list


# Passes that remove or rebuild many nodes at once use these two (one pass over the list).


def set_nodes(graph: Graph, nodes: list[Node]) -> None:
    """Makes `nodes` (a subsequence of graph.nodes, possibly with rebuilt nodes) the
    graph's node list, releasing the names of the outputs that are gone."""
    kept = {id(o) for n in nodes for o in n.outputs}
    for n in graph.nodes:
        for o in n.outputs:
            if id(o) not in kept:
                graph._names.discard(o.name)
    graph.nodes = list(nodes)
    graph._invalidate()


def drop_constant(graph: Graph, v: Value) -> None:
    """Removes constant `v` (which must be unused) from the graph's table."""
    del graph.constants[v.name]
    graph._names.discard(v.name)
