"""fuse-sibling-matmuls: matmuls that read the same activation with different constant
weights become one wider matmul and a split (horizontal fusion).

The Q, K and V projections of a transformer layer are the typical group:

    %q = matmul(%x, @wq) ; %qb = add(%q, @bq)        %qkv = matmul(%x, @wqkv)
    %k = matmul(%x, @wk) ; %kb = add(%k, @bk)   ->   %qkvb = add(%qkv, @bqkv)
    %v = matmul(%x, @wv) ; %vb = add(%v, @bv)        %qb, %kb, %vb = split(%qkvb) {axis=-1}

A member is `matmul(x, w)` with x its left operand and w a 2-D constant [K, N_i] of x's
dtype (all members then share K). The weights are concatenated along N into one new
constant. When every member's only use is `add(matmul, b)` with a constant bias b that
broadcasts along N alone ([N_i], [1,...,N_i] or one element) and the add keeps the
matmul's type, the biases are concatenated as well and the add is fused; otherwise
(some member without such a bias) only the matmuls are fused and the adds stay on the
split's outputs (a zero bias would turn -0.0 into +0.0). The split's outputs take the
names of the values they replace, graph outputs included. Members are fused in groups
of at least `min_group`.

Counters: `fuse_sibling_matmuls` (groups fused) and `fuse_sibling_biases` (groups whose
biases were fused too).

Why not rewrite rules: a rule rewrites the value at one root; a sibling group has one
root per member and no single value that dominates them. Each member's shape is still
matched with a pattern (`MEMBER`, `BIASED`), and the group is rebuilt in one step.

Results: each column block of x @ [W_1 ... W_n] is the same dot products as x @ W_i,
though a BLAS may order their sums differently (differences of rounding only). A weight
shared with other users stays alive beside its copy in the concatenation.

Preconditions: a verified graph; canonicalize has run (gemm is gone), and fold-constants
(weights are constants, not transposes of constants). Ordering: before fusion into
kernels; eliminate-common-subexpressions first merges duplicate weights and nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.errors import EinfuseError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph, Node, Value
from einfuse.passes.canonicalize import same_type
from einfuse.passes.eliminate_dead_code import remove_dead
from einfuse.passes.manager import Pass, note_rules_fired, register_pass
from einfuse.passes.pattern import Any, Const, P, match


def _is_matrix(v: Value) -> bool:
    return v.rank == 2


# matmul(x, w) with a 2-D constant w, matched at the matmul's output.
MEMBER = P("matmul", Any("x"), Const("w", where=_is_matrix), name="mm")
# add(matmul, b) with a constant bias (the matmul only read here: single use).
BIASED = P("add", P("matmul", Any("x"), Const("w", where=_is_matrix), name="mm"), Const("b"), commutative=True)


@dataclass
class Member:
    node: Node  # the matmul
    weight: np.ndarray  # [K, N]
    bias_node: Node | None = None  # its add, when the bias can be fused
    bias: np.ndarray | None = None  # [N]

    @property
    def n(self) -> int:
        return self.weight.shape[1]


def _bias_vector(b: Value, arr: np.ndarray, mm: Value) -> np.ndarray | None:
    """b as an [N] vector when it broadcasts along the matmul's last axis only."""
    n = mm.shape[-1]
    if b.rank > mm.rank or any(d != 1 for d in b.shape[:-1]):
        return None
    if b.rank and b.shape[-1] not in (n, 1):
        return None
    return np.broadcast_to(arr.reshape(-1), (n,))


def _member(graph: Graph, node: Node, x: Value) -> Member | None:
    mm = node.outputs[0]
    caps = match(MEMBER, mm, graph)
    if caps is None or caps["x"] is not x or caps["w"].dtype != x.dtype:
        return None
    member = Member(node, graph.const_value(caps["w"]))
    users = graph.users(mm)
    if len(users) == 1 and users[0].op == "add":
        add = users[0].outputs[0]
        caps = match(BIASED, add, graph)
        if caps is not None and caps["mm"] is mm and same_type(add.type, mm.type):
            bias = _bias_vector(caps["b"], graph.const_value(caps["b"]), mm)
            if bias is not None:
                member.bias_node, member.bias = users[0], bias
    return member


def sibling_groups(graph: Graph, min_group: int = 2) -> Iterator[tuple[Value, list[Member]]]:
    """(x, members) for each value x read as the left operand of at least `min_group`
    matmuls with constant 2-D weights, members in graph order (lazily: stop iterating
    before changing the graph)."""
    for x in [*graph.inputs, *(o for n in graph.nodes for o in n.outputs)]:
        members = []
        for node in graph.users(x):
            if node.op == "matmul" and node.inputs[0] is x:
                m = _member(graph, node, x)
                if m is not None:
                    members.append(m)
        if len(members) >= min_group:
            yield x, members


def fuse_group(graph: Graph, x: Value, members: list[Member]) -> bool:
    """Replaces the members by one matmul (and add) and a split; True when the biases
    were fused too."""
    with_bias = all(m.bias is not None for m in members)
    first = members[0]
    builder = Builder(graph, before=first.node, name_hint=first.node.name)
    weight = np.concatenate([m.weight for m in members], axis=1)
    w = builder.const(f"{first.node.inputs[1].name}.siblings", weight)
    y = builder.op("matmul", [x, w], out_names=[f"{first.node.outputs[0].name}.wide"])
    olds = [m.node.outputs[0] for m in members]
    if with_bias:
        bias = np.concatenate([m.bias for m in members])
        b = builder.const(f"{first.bias_node.inputs[1].name}.siblings", bias)
        y = builder.op("add", [y, b], out_names=[f"{first.bias_node.outputs[0].name}.wide"])
        olds = [m.bias_node.outputs[0] for m in members]
    parts = builder.op(
        "split", [y], axis=y.rank - 1, split=tuple(m.n for m in members), out_names=[o.name for o in olds]
    )
    names = [old.name for old in olds]
    for old, new in zip(olds, parts):
        graph.replace_all_uses(old, new)
    remove_dead(graph, olds)  # the old matmuls, adds, weights and biases
    for new, name in zip(parts, names):
        graph.rename(new, name)  # the names the old values just freed
    return with_bias


def fuse_sibling_matmuls(graph: Graph, min_group: int = 2) -> Counter:
    """Fuses every sibling group of `graph` (in place); returns the counters."""
    fired: Counter = Counter()
    # One group at a time: a fusion replaces values that another group may read as x.
    # Each fusion leaves its x with a single constant-weight matmul, so this ends.
    while True:
        group = next(sibling_groups(graph, min_group), None)
        if group is None:
            return fired
        x, members = group
        fired["fuse_sibling_matmuls"] += 1
        if fuse_group(graph, x, members):
            fired["fuse_sibling_biases"] += 1


@register_pass
@dataclass(frozen=True)
class FuseSiblingMatmuls(Pass):
    """Concatenates the constant weights of matmuls sharing their left operand into one matmul and a split."""

    name: ClassVar[str] = "fuse-sibling-matmuls"
    min_group: int = 2  # fewest matmuls worth fusing

    def __post_init__(self):
        if self.min_group < 2:
            raise EinfuseError(f"fuse-sibling-matmuls: min_group must be at least 2, got {self.min_group}")

    def run(self, graph: Graph) -> Graph:
        note_rules_fired(fuse_sibling_matmuls(graph, self.min_group))
        return graph
