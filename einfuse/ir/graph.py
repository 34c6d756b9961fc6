"""Values, nodes and graphs.

A `Value` is a named, typed SSA value. A `Node` is one small immutable record
(op, inputs, outputs, attrs). A `Graph` owns its nodes in topological order, its
named constants (numpy arrays, weights included) and answers use-def queries.

Values are compared by identity; names are for people and the text form, and are
unique inside one graph (the verifier checks it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from einfuse.ir.types import DType, TensorType


class Value:
    """An SSA value: a graph input, a constant (`is_const`) or a node output."""

    __slots__ = ("name", "type", "is_const")

    def __init__(self, name: str, type: TensorType, is_const: bool = False):
        if not isinstance(type, TensorType):
            raise TypeError(f"value {name!r}: type must be a TensorType, not {type!r}")
        self.name = name
        self.type = type
        self.is_const = is_const

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return self.type.rank

    def __repr__(self) -> str:
        sigil = "@" if self.is_const else "%"
        return f"<Value {sigil}{self.name}: {self.type}>"


class Attrs(dict):
    """An immutable, hashable attribute mapping (values: int, float, str, bool,
    tuples of those, DType, or a Graph for region-carrying ops)."""

    def _frozen(self, *a, **k):
        raise TypeError("node attributes are immutable; build a new node")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen  # type: ignore

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, _hashable(v)) for k, v in self.items())))

    def __repr__(self) -> str:
        return f"Attrs({dict.__repr__(self)})"


def _hashable(v):
    if isinstance(v, Graph):
        return id(v)
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


@dataclass(frozen=True, eq=False)
class Node:
    """One operation. `inputs` may hold None for an absent optional operand."""

    op: str
    inputs: tuple
    outputs: tuple
    attrs: Attrs = field(default_factory=Attrs)
    name: str = ""  # the frontend's node name, kept for error messages

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.attrs, Attrs):
            object.__setattr__(self, "attrs", Attrs({k: _freeze(v) for k, v in self.attrs.items()}))

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.label} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def label(self) -> str:
        """How errors name this node: its op, first output, and frontend name."""
        out = f"%{self.outputs[0].name}" if self.outputs else "(no outputs)"
        extra = f" (node {self.name!r})" if self.name else ""
        return f"{self.op} {out}{extra}"

    def with_(self, **changes) -> "Node":
        """A copy with some fields replaced (`attrs` may be a plain dict)."""
        fields = dict(op=self.op, inputs=self.inputs, outputs=self.outputs, attrs=self.attrs, name=self.name)
        fields.update(changes)
        return Node(**fields)

    def __repr__(self) -> str:
        return f"<Node {self.label}>"


class Graph:
    """A function: inputs, outputs, nodes in topological order, named constants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        # name -> (Value, array). Weights live here, referenced as @name in the text form.
        self.constants: dict[str, tuple[Value, np.ndarray]] = {}
        self._names: set[str] = set()
        self._fresh = itertools.count()
        self._producers: dict[int, Node] | None = None
        self._users: dict[int, list[Node]] | None = None

    # -- construction -----------------------------------------------------

    def fresh_name(self, hint: str = "t") -> str:
        """A value name not yet used in this graph, derived from `hint`."""
        if hint not in self._names:
            return hint
        while True:
            name = f"{hint}.{next(self._fresh)}"
            if name not in self._names:
                return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"value name {name!r} is already used in graph @{self.name}")
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, array: np.ndarray, *, fresh: bool = False) -> Value:
        # A private C-ordered copy (0-d stays 0-d), read-only so no kernel can change a weight.
        array = np.array(array, order="C")
        if fresh:
            name = self.fresh_name(name)
        v = Value(self._claim(name), TensorType.of(array), is_const=True)
        array.flags.writeable = False
        self.constants[name] = (v, array)
        return v

    def new_value(self, name: str, type: TensorType) -> Value:
        """A fresh node-output value (name made unique)."""
        return Value(self._claim(self.fresh_name(name)), type)

    def add_node(self, node: Node) -> Node:
        for o in node.outputs:
            if o.name not in self._names:
                self._claim(o.name)
        self.nodes.append(node)
        self._invalidate()
        return node

    def const_value(self, v: Value | None) -> np.ndarray | None:
        """The array behind a constant value, or None."""
        if v is None or not v.is_const:
            return None
        entry = self.constants.get(v.name)
        return entry[1] if entry is not None and entry[0] is v else None

    # -- queries ----------------------------------------------------------

    def _index(self):
        if self._producers is None:
            producers: dict[int, Node] = {}
            users: dict[int, list[Node]] = {}
            for n in self.nodes:
                for v in n.inputs:
                    if v is not None:
                        lst = users.setdefault(id(v), [])
                        if not lst or lst[-1] is not n:
                            lst.append(n)
                for o in n.outputs:
                    producers[id(o)] = n
            self._producers, self._users = producers, users
        return self._producers, self._users

    def _invalidate(self):
        self._producers = self._users = None

    def producer(self, v: Value) -> Node | None:
        return self._index()[0].get(id(v))

    def users(self, v: Value) -> list[Node]:
        return list(self._index()[1].get(id(v), ()))

    def is_output(self, v: Value) -> bool:
        return any(o is v for o in self.outputs)

    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs
        for v, _ in self.constants.values():
            yield v
        for n in self.nodes:
            yield from n.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    # -- mutation ---------------------------------------------------------

    def rename(self, v: Value, name: str) -> None:
        """Gives value `v` the unused name `name`."""
        if name == v.name:
            return
        self._claim(name)
        self._names.discard(v.name)
        if v.is_const:
            self.constants = {(name if k == v.name else k): e for k, e in self.constants.items()}
        v.name = name

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every use of `old` (node operands and graph outputs) now reads `new`."""
        changed = False
        for i, n in enumerate(self.nodes):
            if any(x is old for x in n.inputs):
                self.nodes[i] = n.with_(inputs=tuple(new if x is old else x for x in n.inputs))
                changed = True
        self.outputs = [new if o is old else o for o in self.outputs]
        if changed:
            self._invalidate()

    def replace_node(self, old: Node, new_nodes: Iterable[Node]) -> None:
        """Puts `new_nodes` where `old` stood (no use rewiring)."""
        i = self._position(old)
        new_nodes = list(new_nodes)
        for n in new_nodes:
            for o in n.outputs:
                if o.name not in self._names:
                    self._claim(o.name)
        self.nodes[i : i + 1] = new_nodes
        self._invalidate()

    def insert_before(self, anchor: Node, node: Node) -> Node:
        for o in node.outputs:
            if o.name not in self._names:
                self._claim(o.name)
        self.nodes.insert(self._position(anchor), node)
        self._invalidate()
        return node

    def erase(self, node: Node) -> None:
        i = self._position(node)
        del self.nodes[i]
        for o in node.outputs:
            self._names.discard(o.name)
        self._invalidate()

    def remove_unused_constants(self) -> None:
        used = {id(v) for n in self.nodes for v in n.inputs if v is not None}
        used |= {id(v) for v in self.outputs}
        for name in [k for k, (v, _) in self.constants.items() if id(v) not in used]:
            del self.constants[name]
            self._names.discard(name)

    def _position(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"{node!r} is not in graph @{self.name}")

    # -- analyses ---------------------------------------------------------

    def to_networkx(self):
        """A networkx.DiGraph with one vertex per node (the Node object), edges labelled
        with the Value carried; graph inputs and constants are not vertices."""
        import networkx as nx

        g = nx.MultiDiGraph()
        g.add_nodes_from(self.nodes)
        prods, _ = self._index()
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and id(v) in prods:
                    g.add_edge(prods[id(v)], n, value=v)
        return g

    def copy(self) -> "Graph":
        """A shallow structural copy (new list of the same immutable nodes and values)."""
        g = Graph(self.name)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.nodes = list(self.nodes)
        g.constants = dict(self.constants)
        g._names = set(self._names)
        return g

    def __str__(self) -> str:
        from einfuse.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.constants)} constants>"

    def structurally_equal(self, other: "Graph") -> bool:
        """Same text form and the same constant data."""
        from einfuse.ir.printer import print_graph

        if print_graph(self, elide_constants=True) != print_graph(other, elide_constants=True):
            return False
        for name, (_, arr) in self.constants.items():
            if name not in other.constants:
                return False
            o = other.constants[name][1]
            if o.dtype != arr.dtype or o.shape != arr.shape:
                return False
            if arr.tobytes() != o.tobytes():
                return False
        return len(self.constants) == len(other.constants)
