"""Builds nodes with inferred types, appending them to a graph.

    b = Builder(g)
    y = b.op("relu", [x])
    lo, hi = b.op("split", [x], axis=1, splits=(2, 2))   # multi-output ops return a tuple
"""

from __future__ import annotations

from einfuse.errors import EinfuseError, ShapeError
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops import REQUIRED, check_attr_value, get_op, infer_types


class Builder:
    def __init__(self, graph: Graph, *, before: Node | None = None, name_hint: str = ""):
        self.graph = graph
        self.before = before  # insert before this node instead of appending
        self.name_hint = name_hint

    def op(self, op: str, inputs, *, name: str = "", out_names=None, **attrs):
        """Adds `op` and returns its output Value (or a tuple of them)."""
        node = make_node(self.graph, op, inputs, attrs, name=name or self.name_hint, out_names=out_names)
        if self.before is not None:
            self.graph.insert_before(self.before, node)
        else:
            self.graph.add_node(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def const(self, name: str, array) -> Value:
        return self.graph.add_constant(name, array, fresh=True)


def make_node(graph: Graph, op: str, inputs, attrs: dict, *, name: str = "", out_names=None) -> Node:
    """A node with checked attributes and inferred output types (not yet in the graph)."""
    try:
        d = get_op(op)
    except KeyError:
        raise EinfuseError(f"unknown op {op!r}" + (f" (node {name!r})" if name else "")) from None
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()  # trailing absent optionals are simply not there
    label = f"{op}" + (f" (node {name!r})" if name else "")
    check_node_signature(d, inputs, attrs, label)
    full = d.with_defaults(attrs)
    types = [v.type if v is not None else None for v in inputs]
    consts = [graph.const_value(v) for v in inputs]
    try:
        out_types = infer_types(op, types, full, consts, label=label)
    except EinfuseError:
        raise
    except Exception as e:  # an inference bug must still name the node
        raise ShapeError(f"{label}: shape inference failed: {type(e).__name__}: {e}") from e
    if out_names is None:
        base = _sanitize_hint(name) or op
        out_names = [base] * len(out_types)
    outs = tuple(graph.new_value(n, t) for n, t in zip(out_names, out_types))
    return Node(op=op, inputs=tuple(inputs), outputs=outs, attrs=full, name=name)


def check_node_signature(d, inputs: list, attrs: dict, label: str) -> None:
    n = len(inputs)
    if n < d.min_inputs or (d.max_inputs is not None and n > d.max_inputs):
        want = f"{d.min_inputs}" if d.min_inputs == d.max_inputs else f"{d.min_inputs}..{d.max_inputs or 'n'}"
        raise ShapeError(f"{label}: takes {want} operands, got {n}")
    for i in range(min(n, d.min_inputs)):
        if inputs[i] is None:
            raise ShapeError(f"{label}: operand {i} is required")
    for k, v in attrs.items():
        if k not in d.attrs:
            raise ShapeError(f"{label}: unknown attribute {k!r}")
        if not check_attr_value(d.attrs[k].kind, v):
            raise ShapeError(f"{label}: attribute {k!r} should be {d.attrs[k].kind}, got {v!r}")
    for k, a in d.attrs.items():
        if k not in attrs and a.default is REQUIRED:
            raise ShapeError(f"{label}: attribute {k!r} is required")


def _sanitize_hint(name: str) -> str:
    """Short, printable value-name hint from a frontend node name."""
    keep = "".join(c if (c.isascii() and (c.isalnum() or c in "_.")) else "_" for c in name)
    return keep.strip("._")[:40]
