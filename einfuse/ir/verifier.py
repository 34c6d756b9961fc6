"""The verifier: IR invariants every pass may assume, checked between passes in tests.

Rules (each violation is a VerifyError naming the node, with nearby IR marked):
- every op is registered; operand count, attribute names, kinds and required
  attributes follow the op's schema;
- nodes are in topological order: every operand is a graph input, a constant of this
  graph, or an output of an earlier node; every value is defined once, names unique;
- each node's output types equal what its op's inference gives for its operand types;
- graph outputs are defined; region attributes (fused sub-graphs) verify too.
"""

from __future__ import annotations

from einfuse.errors import EinfuseError, VerifyError
from einfuse.ir.builder import check_node_signature
from einfuse.ir.graph import Graph, Node
from einfuse.ir.ops import get_op, infer_types
from einfuse.ir.printer import context_lines
from einfuse.ir.types import dims_equal


def verify(graph: Graph) -> None:
    """Raises VerifyError on the first broken invariant."""
    defined: dict[int, object] = {}
    names: set[str] = set()

    def fail(node: Node | None, msg: str):
        where = f"{node.label}: " if node is not None else ""
        ctx = context_lines(graph, node) if node is not None else None
        raise VerifyError(f"graph @{graph.name}: {where}{msg}", context=ctx)

    for v in graph.inputs:
        if v.is_const:
            fail(None, f"input %{v.name} is marked constant")
        if v.name in names:
            fail(None, f"value name {v.name!r} is defined twice")
        names.add(v.name)
        defined[id(v)] = v
    for name, (v, arr) in graph.constants.items():
        if name != v.name or not v.is_const:
            fail(None, f"constant table entry {name!r} does not match its value {v!r}")
        if v.name in names:
            fail(None, f"value name {v.name!r} is defined twice")
        if arr.dtype != v.dtype.np or arr.shape != v.type.shape:
            fail(None, f"constant @{name}: array {arr.dtype}{list(arr.shape)} does not match {v.type}")
        names.add(v.name)
        defined[id(v)] = v

    for node in graph.nodes:
        try:
            d = get_op(node.op)
        except KeyError:
            fail(node, f"unknown op {node.op!r}")
        for i, x in enumerate(node.inputs):
            if x is not None and id(x) not in defined:
                fail(node, f"operand {i} (%{x.name}) is not defined before this node")
        try:
            check_node_signature(d, list(node.inputs), dict(node.attrs), node.label)
        except EinfuseError as e:
            fail(node, e.message.split(": ", 1)[-1])
        n_out = d.outputs_for(node.attrs)
        if n_out is not None and n_out != len(node.outputs):
            fail(node, f"has {len(node.outputs)} outputs, op {node.op} gives {n_out}")
        types = [x.type if x is not None else None for x in node.inputs]
        consts = [graph.const_value(x) for x in node.inputs]
        try:
            expect = infer_types(node.op, types, dict(node.attrs), consts, label=node.label)
        except EinfuseError as e:
            fail(node, f"type inference fails: {e.message}")
        for o, t in zip(node.outputs, expect):
            if o.type.dtype != t.dtype or o.type.rank != t.rank or not all(
                dims_equal(a, b) for a, b in zip(o.type.shape, t.shape) if not (_fresh(a) or _fresh(b))
            ):
                fail(node, f"output %{o.name} has type {o.type}, but {node.op} of these operands gives {t}")
        for o in node.outputs:
            if o.is_const:
                fail(node, f"output %{o.name} is marked constant")
            if o.name in names:
                fail(node, f"value name {o.name!r} is defined twice")
            names.add(o.name)
            defined[id(o)] = o
        for k, v in node.attrs.items():
            if isinstance(v, Graph):
                try:
                    verify(v)
                except VerifyError as e:
                    fail(node, f"region {k!r}: {e.message}")
    for i, v in enumerate(graph.outputs):
        if id(v) not in defined:
            fail(None, f"output {i} (%{v.name}) is never defined")


def _fresh(d) -> bool:
    """Data-dependent dims are fresh symbols (named _...): they match anything, since a
    pass that makes the operand constant lets inference find the exact size."""
    return not isinstance(d, int) and any(s.name.startswith("_") for s in d.free_symbols)
