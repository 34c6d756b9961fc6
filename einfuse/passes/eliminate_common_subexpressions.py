"""eliminate-common-subexpressions: one node per distinct computation, one constant per
distinct array.

Two nodes are the same computation when they have the same op, the same operands
(the same Values, in order; for the commutative binary ops in COMMUTATIVE either
order) and equal attributes (compared with their types, so 1 and 1.0 and True differ).
The later node is removed and its uses read the earlier one. Constants with identical
dtype, shape and bytes are merged the same way; only constants sharing dtype and shape
are looked at (a digest of sampled bytes, then a full comparison), so a weight with no
look-alike is never read.

Preconditions: a verified graph; every op is deterministic (einfuse has no random
ops; one would have to be excluded here). Ordering: after fold-constants, whose
folded results often coincide. Graph outputs keep their names: when a duplicate is a
graph output it is merged only if the value it merges into is not one too, and the
kept value takes the output's name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.ir.graph import Graph, Node, Value
from einfuse.passes.eliminate_dead_code import drop_constant, set_nodes
from einfuse.passes.manager import Pass, register_pass

# Binary ops whose operands may be swapped: IEEE addition and multiplication commute
# exactly (only a NaN's payload may differ). Not max/min: they differ on +0.0 vs -0.0.
COMMUTATIVE = frozenset({"add", "mul", "equal", "and", "or", "xor", "bitwise_and", "bitwise_or", "bitwise_xor"})


@register_pass
@dataclass(frozen=True)
class EliminateCommonSubexpressions(Pass):
    """Merges nodes with the same op, operands and attributes, and identical constants."""

    name: ClassVar[str] = "eliminate-common-subexpressions"
    merge_constants: bool = True

    def run(self, graph: Graph) -> Graph:
        merger = _Merger(graph)
        if self.merge_constants:
            merger.merge_constants()
        merger.merge_nodes()
        return graph


class _Merger:
    """One forward walk: operands are read through `subst` (duplicate -> kept value),
    so a merge costs nothing beyond the walk itself."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.subst: dict[int, Value] = {}
        # Values that are (or, after a merge, stand for) graph outputs.
        self.outputs = {id(v) for v in graph.outputs}
        self.renames: list[tuple[Value, str]] = []

    def can_merge(self, dups: tuple[Value, ...], kept: tuple[Value, ...]) -> bool:
        # Two graph outputs must stay two named results.
        return not any(id(d) in self.outputs and id(k) in self.outputs for d, k in zip(dups, kept))

    def record(self, dups: tuple[Value, ...], kept: tuple[Value, ...]) -> None:
        for dup, keep in zip(dups, kept):
            self.subst[id(dup)] = keep
            if id(dup) in self.outputs:
                self.outputs.add(id(keep))
                self.renames.append((keep, dup.name))  # output names are the model's interface

    def merge_constants(self) -> None:
        graph = self.graph
        # Only constants of the same dtype and shape can be equal, and most weights are
        # alone in their (dtype, shape) group: their data is never read.
        groups: dict[tuple, list[tuple[Value, np.ndarray]]] = {}
        for v, arr in graph.constants.values():
            groups.setdefault((v.dtype, arr.shape), []).append((v, arr))
        for members in groups.values():
            if len(members) < 2:
                continue
            # Then a digest of a sample of the bytes, then full equality on a digest match.
            buckets: dict[bytes, list[tuple[Value, np.ndarray]]] = {}
            for v, arr in members:
                raw = _bytes_of(arr)
                bucket = buckets.setdefault(_sample_digest(raw), [])
                same = next((other for other, other_raw in bucket if _equal_bytes(raw, other_raw)), None)
                if same is None:
                    bucket.append((v, raw))
                elif self.can_merge((v,), (same,)):
                    self.record((v,), (same,))
                    drop_constant(graph, v)

    def merge_nodes(self) -> None:
        graph = self.graph
        seen: dict[tuple, tuple[Value, ...]] = {}
        kept_nodes = []
        for node in graph.nodes:
            if any(x is not None and id(x) in self.subst for x in node.inputs):
                node = node.with_(inputs=tuple(self._read(x) for x in node.inputs))
            key = _node_key(node)
            kept = seen.get(key)
            if kept is not None and node.outputs and self.can_merge(node.outputs, kept):
                self.record(node.outputs, kept)
                continue
            seen.setdefault(key, node.outputs)
            kept_nodes.append(node)
        graph.outputs = [self._read(v) for v in graph.outputs]
        set_nodes(graph, kept_nodes)  # also frees the names of the merged-away values
        for keep, name in self.renames:
            graph.rename(keep, name)

    def _read(self, v: Value | None) -> Value | None:
        return None if v is None else self.subst.get(id(v), v)


def _node_key(node: Node) -> tuple:
    operands = [id(x) if x is not None else None for x in node.inputs]
    if node.op in COMMUTATIVE and len(operands) == 2 and None not in operands:
        operands.sort()
    return (node.op, tuple(operands), len(node.outputs), _attrs_key(node.attrs))


def _attrs_key(attrs) -> tuple:
    return tuple(sorted((k, _typed(v)) for k, v in attrs.items()))


def _typed(v):
    # Python says 1 == 1.0 == True; attributes that differ in type are different.
    if isinstance(v, tuple):
        return ("tuple", tuple(_typed(x) for x in v))
    if isinstance(v, Graph):
        return ("graph", id(v))
    return (type(v).__name__, v)


# Arrays up to this many bytes are digested whole; larger ones through a strided sample
# plus both ends (weights that differ at all differ nearly everywhere; a digest match is
# confirmed byte for byte anyway).
_SAMPLE_BYTES = 1 << 16


def _sample_digest(raw: np.ndarray) -> bytes:
    """A cheap digest of a flat uint8 array: equal arrays get equal digests."""
    h = hashlib.blake2b(digest_size=16)
    if raw.size <= 3 * _SAMPLE_BYTES:
        h.update(raw.data)
    else:
        h.update(raw[:_SAMPLE_BYTES].data)
        h.update(np.ascontiguousarray(raw[:: raw.size // _SAMPLE_BYTES]).data)
        h.update(raw[-_SAMPLE_BYTES:].data)
    return h.digest()


def _equal_bytes(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 24) -> bool:
    """a == b for flat uint8 arrays, in chunks (no array-sized temporary)."""
    if a.size != b.size:
        return False
    return all(np.array_equal(a[i : i + chunk], b[i : i + chunk]) for i in range(0, a.size, chunk))


def _bytes_of(arr: np.ndarray) -> np.ndarray:
    """The array's bytes as a flat uint8 view: bitwise equality (-0.0 != 0.0, NaNs by payload)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
