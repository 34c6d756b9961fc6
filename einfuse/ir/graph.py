"""Values, nodes and graphs.

A `Value` is a named, typed SSA value. A `Node` is one small immutable record
(op, inputs, outputs, attrs). A `Graph` owns its nodes in topological order, its
named constants (numpy arrays, weights included) and answers use-def queries.

Values are compared by identity; names are for people and the text form, and are
unique inside one graph (the verifier checks it).

Use-def index: `producer(v)` and `users(v)` are answered from an index that the
mutation methods (add_node, insert_before, erase, replace_node, replace_all_uses,
set_inputs, remove_dead) update in place, each touching only the nodes involved, so
a rewrite that fires thousands of times stays linear. Editing `graph.nodes` directly
(assigning a new list, or list methods on it) is allowed and simply drops the index,
which the next query rebuilds from scratch.
"""

from __future__ import annotations

import bisect
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


def _root_of(array: np.ndarray) -> np.ndarray:
    """The array owning the memory `array` views (itself when it owns its data)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _c_ordered_copy(array: np.ndarray) -> np.ndarray:
    """A C-ordered copy of `array`. A large transposed matrix (a weight W.T) is copied in
    square tiles: numpy's plain strided copy reads it one element per cache line and is
    several times slower (seconds for a 400 MB fully-connected weight)."""
    if array.ndim != 2 or array.flags.c_contiguous or array.nbytes < (1 << 22):
        return np.array(array, order="C")
    out = np.empty(array.shape, array.dtype)
    rows, cols = array.shape
    tile = 256
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[i : i + tile, j : j + tile] = array[i : i + tile, j : j + tile]
    return out


def c_contiguous(array: np.ndarray) -> np.ndarray:
    """`array` itself when C-contiguous, else a C-ordered copy (tile by tile for a large
    transposed matrix): for consumers of constants, which may be transposed views."""
    return array if array.flags.c_contiguous else _c_ordered_copy(array)


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


# Order labels of nodes are spaced this far apart, so an insertion nearly always finds
# a free label between its neighbours (else every label is renumbered, O(N), rarely).
_GAP = 1 << 20

# list methods that edit a list in place.
_LIST_EDITS = (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "extend",
    "insert",
    "pop",
    "remove",
    "clear",
    "sort",
    "reverse",
)


class _NodeList(list):
    """`graph.nodes`: an ordinary list to read. Editing it directly drops the graph's
    use-def index (rebuilt on the next query); the Graph's own methods edit it through
    `list` and update the index themselves."""

    __slots__ = ("_graph",)

    def __init__(self, graph: Graph, items: Iterable[Node] = ()):
        super().__init__(items)
        self._graph = graph


def _dropping_index(name: str):
    edit = getattr(list, name)

    def method(self, *args, **kwargs):
        graph = getattr(self, "_graph", None)
        if graph is not None:
            graph._invalidate()
        return edit(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in _LIST_EDITS:
    setattr(_NodeList, _name, _dropping_index(_name))


class Graph:
    """A function: inputs, outputs, nodes in topological order, named constants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self._nodes = _NodeList(self)
        # name -> (Value, array). Weights live here, referenced as @name in the text form.
        self.constants: dict[str, tuple[Value, np.ndarray]] = {}
        self._names: set[str] = set()
        self._fresh = itertools.count()
        # The use-def index (see the module docstring), keyed by id() of values and
        # nodes. It holds only values read or produced by nodes in the graph, so every id
        # in it belongs to a live object. `_order` labels increase along self.nodes.
        self._indexed = False
        self._producers: dict[int, Node] = {}
        self._users: dict[int, dict[int, Node]] = {}
        self._order: dict[int, int] = {}

    @property
    def nodes(self) -> list[Node]:
        """The nodes in topological order (edit it freely: see the module docstring)."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Iterable[Node]) -> None:
        self._nodes = _NodeList(self, nodes)
        self._invalidate()

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

    def _claim_outputs(self, node: Node) -> None:
        for o in node.outputs:
            if o.name not in self._names:
                self._claim(o.name)

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, array: np.ndarray, *, fresh: bool = False) -> Value:
        """A new constant holding a private, read-only copy of `array` in C order (0-d stays
        0-d), so no kernel can change a weight. A read-only view of another constant of this
        graph (a transposed weight) is kept as it is, uncopied: its data is already private
        and immutable, and copying a large transposed matrix costs seconds, which a consumer
        needing C order (np.ascontiguousarray) pays only if it needs it."""
        array = np.asarray(array)
        if not self._views_own_constant(array):
            array = _c_ordered_copy(array)
            array.flags.writeable = False
        if fresh:
            name = self.fresh_name(name)
        v = Value(self._claim(name), TensorType.of(array), is_const=True)
        self.constants[name] = (v, array)
        return v

    def _views_own_constant(self, array: np.ndarray) -> bool:
        if array.base is None or array.flags.writeable:
            return False
        root = _root_of(array)
        return any(_root_of(arr) is root for _, arr in self.constants.values())

    def new_value(self, name: str, type: TensorType) -> Value:
        """A fresh node-output value (name made unique)."""
        return Value(self._claim(self.fresh_name(name)), type)

    def add_node(self, node: Node) -> Node:
        self._claim_outputs(node)
        if self._indexed:
            last = self._order[id(self._nodes[-1])] if self._nodes else 0
            self._index_node(node, last + _GAP)
        list.append(self._nodes, node)
        return node

    def const_value(self, v: Value | None) -> np.ndarray | None:
        """The array behind a constant value, or None."""
        if v is None or not v.is_const:
            return None
        entry = self.constants.get(v.name)
        return entry[1] if entry is not None and entry[0] is v else None

    # -- queries ----------------------------------------------------------

    def producer(self, v: Value) -> Node | None:
        self._ensure_index()
        return self._producers.get(id(v))

    def users(self, v: Value) -> list[Node]:
        """The nodes reading `v`, each once, in graph order."""
        self._ensure_index()
        found = self._users.get(id(v))
        if not found:
            return []
        if len(found) == 1:
            return list(found.values())
        order = self._order
        return sorted(found.values(), key=lambda n: order[id(n)])

    def precedes(self, a: Node, b: Node) -> bool:
        """Does node `a` stand before node `b` in graph.nodes? (Both must be in the graph.)"""
        self._ensure_index()
        return self._order[id(a)] < self._order[id(b)]

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

    # -- the use-def index --------------------------------------------------

    def _ensure_index(self) -> None:
        if not self._indexed:
            self._rebuild_index()

    def _rebuild_index(self) -> None:
        self._producers, self._users, self._order = {}, {}, {}
        for i, n in enumerate(self._nodes):
            self._index_node(n, (i + 1) * _GAP)
        self._indexed = True

    def _invalidate(self) -> None:
        """Drops the use-def index (after a direct edit of graph.nodes); the next query rebuilds it."""
        self._indexed = False
        self._producers, self._users, self._order = {}, {}, {}

    def _index_node(self, node: Node, label: int) -> None:
        self._order[id(node)] = label
        for o in node.outputs:
            self._producers[id(o)] = node
        for v in node.inputs:
            if v is not None:
                self._users.setdefault(id(v), {})[id(node)] = node

    def _unindex_node(self, node: Node) -> None:
        del self._order[id(node)]
        for o in node.outputs:
            if self._producers.get(id(o)) is node:
                del self._producers[id(o)]
        for v in node.inputs:
            if v is None:
                continue
            found = self._users.get(id(v))
            if found is not None and found.pop(id(node), None) is not None and not found:
                del self._users[id(v)]  # no entry for an unread value: its id may be reused

    def _labels_between(self, i: int, j: int, count: int) -> list[int] | None:
        """`count` increasing labels strictly between those of nodes[i] and nodes[j]
        (i = -1 and j = len(nodes) stand for the open ends), or None when there is no room."""
        nodes, order = self._nodes, self._order
        lo = order[id(nodes[i])] if i >= 0 else 0
        hi = order[id(nodes[j])] if j < len(nodes) else lo + (count + 1) * _GAP
        step = (hi - lo) // (count + 1)
        if step == 0:
            return None
        return [lo + step * (k + 1) for k in range(count)]

    def _splice(self, i: int, j: int, new_nodes: list[Node]) -> None:
        """nodes[i:j] = new_nodes, keeping the index up to date."""
        labels = None
        if self._indexed:
            for n in self._nodes[i:j]:
                self._unindex_node(n)
            if new_nodes:
                labels = self._labels_between(i - 1, j, len(new_nodes))
        list.__setitem__(self._nodes, slice(i, j), new_nodes)
        if not self._indexed or not new_nodes:
            return
        if labels is None:
            self._rebuild_index()  # no free labels here: renumber everything (rare)
            return
        for n, label in zip(new_nodes, labels):
            self._index_node(n, label)

    def _position(self, node: Node) -> int:
        if self._indexed:
            label = self._order.get(id(node))
            if label is not None:
                order = self._order
                i = bisect.bisect_left(self._nodes, label, key=lambda n: order[id(n)])
                if i < len(self._nodes) and self._nodes[i] is node:
                    return i
        for i, n in enumerate(self._nodes):
            if n is node:
                return i
        raise ValueError(f"{node!r} is not in graph @{self.name}")

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

    def set_inputs(self, node: Node, inputs: Iterable[Value | None]) -> Node:
        """Replaces `node` by a copy reading `inputs` (same place, outputs, attrs); returns the copy."""
        new = node.with_(inputs=tuple(inputs))
        i = self._position(node)
        if self._indexed:
            label = self._order[id(node)]
            self._unindex_node(node)
            self._index_node(new, label)
        list.__setitem__(self._nodes, i, new)
        return new

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every use of `old` (node operands and graph outputs) now reads `new`."""
        if old is not new:
            for n in self.users(old):
                self.set_inputs(n, (new if x is old else x for x in n.inputs))
        self.outputs = [new if o is old else o for o in self.outputs]

    def replace_node(self, old: Node, new_nodes: Iterable[Node]) -> None:
        """Puts `new_nodes` where `old` stood (no use rewiring)."""
        i = self._position(old)
        new_nodes = list(new_nodes)
        for n in new_nodes:
            self._claim_outputs(n)
        self._splice(i, i + 1, new_nodes)

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._claim_outputs(node)
        i = self._position(anchor)
        self._splice(i, i, [node])
        return node

    def erase(self, node: Node) -> None:
        i = self._position(node)
        self._splice(i, i + 1, [])
        for o in node.outputs:
            self._names.discard(o.name)

    def remove_dead(self, values: Iterable[Value | None]) -> None:
        """Removes what became dead, starting from `values`: a producer none of whose
        outputs is read or returned is erased, then its operands are looked at in turn;
        an unused constant among them is dropped. Nothing else is touched."""
        work = [v for v in values if v is not None]
        returned = {id(o) for o in self.outputs}
        self._ensure_index()
        while work:
            v = work.pop()
            if id(v) in self._users or id(v) in returned:
                continue
            if v.is_const:
                if self.const_value(v) is not None:
                    del self.constants[v.name]
                    self._names.discard(v.name)
                continue
            node = self._producers.get(id(v))
            if node is None or any(id(o) in self._users or id(o) in returned for o in node.outputs):
                continue  # a graph input, already gone, or another output is still read
            self.erase(node)
            work.extend(x for x in node.inputs if x is not None)

    def remove_unused_constants(self) -> None:
        used = {id(v) for n in self.nodes for v in n.inputs if v is not None}
        used |= {id(v) for v in self.outputs}
        for name in [k for k, (v, _) in self.constants.items() if id(v) not in used]:
            del self.constants[name]
            self._names.discard(name)

    # -- analyses ---------------------------------------------------------

    def to_networkx(self):
        """A networkx.DiGraph with one vertex per node (the Node object), edges labelled
        with the Value carried; graph inputs and constants are not vertices."""
        import networkx as nx

        g = nx.MultiDiGraph()
        g.add_nodes_from(self.nodes)
        self._ensure_index()
        prods = self._producers
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
