"""fold-constants: evaluates nodes whose operands are all constants, at compile time.

A node folds when every operand is a constant (a node with no operands, such as
constant_of_shape, counts), or when its op is in the SHAPE family and every operand
has a static shape (shape/size need no data). The node is evaluated by
`evaluate_node`, the one place a pass calls the reference evaluator, and its outputs
become constants with the same names.

Limits: a node is folded only when its output types are static and their total size
is at most `max_bytes`, checked before anything is evaluated, so folding never
materialises a huge tensor (e.g. constant_of_shape of a big shape, an expand of a
scalar). Data-dependent output shapes (fresh symbols) are left for run time: their
users' types were inferred from the symbols. A reference that fails on constant
operands raises, naming the node: it would fail at run time too.

Preconditions: a verified graph. Ordering: early, after import and before
simplification rules that look for constants; follow with
eliminate-common-subexpressions and eliminate-dead-code. Constants only the folded
nodes read are dropped; other unused constants are left to eliminate-dead-code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.codegen import reference
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops import SHAPE, get_op
from einfuse.ir.types import static_numel
from einfuse.passes.manager import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replaces nodes computed from constants only by the constants they compute."""

    name: ClassVar[str] = "fold-constants"
    max_bytes: int = 16 << 20  # largest total output size of one folded node (16 MiB)

    def run(self, graph: Graph) -> Graph:
        i = 0
        # Index walk: folding erases node i and rebuilds its users in place.
        while i < len(graph.nodes):
            node = graph.nodes[i]
            if self.foldable(graph, node):
                _fold(graph, node)
            else:
                i += 1
        return graph

    def foldable(self, graph: Graph, node: Node) -> bool:
        operands = [x for x in node.inputs if x is not None]
        from_constants = all(x.is_const for x in operands)
        # Shape ops read only the (static) shapes of their operands, not their data.
        from_shapes = get_op(node.op).family == SHAPE and all(x.type.is_static for x in operands)
        if not (from_constants or from_shapes):
            return False
        if not node.outputs or not all(o.type.is_static for o in node.outputs):
            return False
        size = sum(static_numel(o.type.shape) * o.dtype.itemsize for o in node.outputs)
        return size <= self.max_bytes


def evaluate_node(graph: Graph, node: Node) -> tuple[np.ndarray, ...]:
    """Evaluates one node of `graph` with the reference evaluator. Operands must be
    constants of `graph`, or, for a SHAPE-family op, have static shapes (they are then
    fed zeros: shape ops read no data). Results are checked against the node's types."""
    # A one-node graph whose operands are its inputs, fed the constants' arrays.
    sub = Graph(graph.name)
    feeds: dict[str, np.ndarray] = {}
    mapped: dict[int, Value] = {}
    inputs = []
    for x in node.inputs:
        if x is None:
            inputs.append(None)
            continue
        if id(x) not in mapped:
            name = sub.fresh_name(x.name)
            mapped[id(x)] = sub.add_input(name, x.type)
            arr = graph.const_value(x)
            if arr is None:
                # Zeros, as a zero-copy broadcast of one element.
                arr = np.broadcast_to(np.zeros((), x.dtype.np), x.type.static_shape)
            feeds[name] = arr
        inputs.append(mapped[id(x)])
    sub.add_node(node.with_(inputs=tuple(inputs)))
    sub.outputs = list(node.outputs)
    results = reference.run(sub, feeds)
    return tuple(results[o.name] for o in node.outputs)


def _fold(graph: Graph, node: Node) -> None:
    arrays = evaluate_node(graph, node)
    graph.erase(node)  # frees the output names for the constants
    for o, arr in zip(node.outputs, arrays):
        c = graph.add_constant(o.name, arr)
        graph.replace_all_uses(o, c)
    graph.remove_dead(node.inputs)
