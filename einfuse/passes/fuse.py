"""fuse: partitions the graph into fused groups, one kernel each (in the manner of TVM's FuseOps).

Every node of the result is a `fused` node (einfuse/ir/ops/fused.py) whose region holds
the group's ops: operands bind the region's inputs, the region's outputs are the group's
values read outside it (or returned by the graph), and `kind` is the group's anchor
family. Names are kept: a region's values carry the names they had in the graph, and
the fused node's outputs are the original values, so users and graph outputs read them
unchanged.

How groups form. The nodes are visited in order; each edge from a producer's group into
the node being visited is put to FUSION_RULES, an ordered tuple of small named rule
functions: the first that has an opinion (True: fuse, False: keep apart) decides.
Producer groups anchored by a heavy op are asked first, so an elementwise op becomes
the epilogue of the matmul before it rather than the prologue of a neighbour. Summary:

- elementwise and injective chains fuse together (`light_chain`);
- a reduction or normalisation takes the purely elementwise groups computing its input
  (`reduction_takes_elementwise_producers`) and its elementwise/reshape consumers
  (`epilogue`); reductions over the same rows share a group (`same_row_reductions`:
  softmax and layer_norm written out as reduce_max/exp/reduce_sum/div);
- an out-fusable op (matmul, gemm, conv, conv_transpose, matmul_integer, ...) takes an
  epilogue of elementwise ops and reshapes (bias add, activation, residual add, scale,
  cast) that does not broadcast its output to a larger shape (`epilogue_keeps_shape`),
  never a prologue (`no_prologue`), and never a second anchor (`one_anchor_per_group`);
- opaque ops and shape ops stand alone (`opaque_stands_alone`); an existing `fused` node
  (made by a user's pass or an earlier `fuse`) is a finished group (`keep_existing_groups`);
- a merge that would close a cycle through another group is refused: a group may not
  both feed and depend on another group (`would_create_cycle`).

`partition(graph)` returns the groups and every decision taken (`Partition.decisions`,
`Partition.why(a, b)`), so "why did these fuse" has an answer; the pass credits each
decision to its rule in the PassManager's `rules_fired` (einfuse explain prints them).

Constants: a constant of at most `inline_max_elements` elements (scalars, epsilons,
small shifts) is copied into every region that reads it, so that codegen can fold it
into the kernel; the outer copy goes when no node reads it any more. Larger constants
(weights) stay operands: the runtime owns them, and a region prints its constants in
full, so a region holding weights would print megabytes.

Preconditions: a verified graph; run last, after simplification and
eliminate-dead-code (shape-only ops on static shapes are folded first by fold-constants
and fold-shape-computations; any left stand alone). Idempotent: existing fused nodes are
kept as they are. A user's fusion pass that builds `fused` nodes runs before this one.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from einfuse.errors import EinfuseError
from einfuse.ir.graph import Attrs, Graph, Node, Value
from einfuse.ir.ops import ELEMENTWISE, INJECTIVE, NORMALIZE, OPAQUE, OUT_FUSABLE, REDUCE, SHAPE, get_op
from einfuse.ir.ops.reduce import AXIS_REDUCTIONS
from einfuse.ir.types import dims_equal, prod
from einfuse.passes.eliminate_dead_code import drop_constant, set_nodes
from einfuse.passes.manager import Pass, note_rules_fired, register_pass

__all__ = [
    "ANCHORS",
    "EPILOGUE_VIEWS",
    "FUSION_RULES",
    "Decision",
    "Edge",
    "Fuse",
    "Group",
    "Partition",
    "extract_region",
    "fused_groups",
    "partition",
]

# Families that anchor a group: the op the kernel is scheduled around.
ANCHORS = frozenset({OUT_FUSABLE, NORMALIZE, REDUCE})
# Families of cheap ops that fuse into anything that accepts them.
LIGHT = frozenset({ELEMENTWISE, INJECTIVE})
# Injective ops that only relabel a contiguous buffer: as an epilogue they cost nothing.
EPILOGUE_VIEWS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})
# Reductions over `axes` whose rows can be shared by several reductions in one kernel.
ROW_REDUCTIONS = frozenset(AXIS_REDUCTIONS)
# Why a rule-approved merge was refused (not a rule: the check that always applies).
CYCLE = "would_create_cycle"


# -- groups and the rules over them ---------------------------------------------------


@dataclass(eq=False)
class Group:
    """A set of nodes that will become one fused node; `kind` is its anchor family."""

    nodes: list[Node]  # in graph order
    positions: list[int]  # their indices in graph.nodes, same order
    # Kept up to date by merges, so that rules ask about a group in constant time.
    op_counts: Counter = field(default_factory=Counter)
    family_counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        if not self.op_counts:
            self.op_counts.update(n.op for n in self.nodes)
            self.family_counts.update(get_op(n.op).family for n in self.nodes)

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self.op_counts)

    @property
    def families(self) -> frozenset[str]:
        return frozenset(self.family_counts)

    @property
    def kind(self) -> str:
        """out_fusable, normalize or reduce when such an op anchors the group; opaque or
        shape for those ops alone; else injective if any op is, else elementwise. A
        fused node keeps the kind it has."""
        if len(self.nodes) == 1 and self.nodes[0].op == "fused":
            return self.nodes[0].attrs["kind"]
        for family in (OUT_FUSABLE, NORMALIZE, REDUCE, OPAQUE, SHAPE, INJECTIVE):
            if family in self.family_counts:
                return family
        return ELEMENTWISE

    def __repr__(self) -> str:
        return f"<Group {self.kind}: {', '.join(n.label for n in self.nodes)}>"


@dataclass(frozen=True)
class Edge:
    """The operands of `user` that the producer group computes."""

    values: tuple[Value, ...]
    user: Node


# A fusion rule: (producer group, consumer group, edge) -> True (fuse), False (keep
# apart) or None (no opinion: ask the next rule). Its name and one-line docstring are
# what `einfuse explain` and Partition.decisions show.
FusionRule = Callable[[Group, Group, Edge], "bool | None"]


def keep_existing_groups(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """A fused node is a finished group (from a user's pass or an earlier fuse): it never grows."""
    if "fused" in producer.ops or "fused" in consumer.ops:
        return False
    return None


def opaque_stands_alone(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """Opaque ops (data-dependent shapes, scatters, recurrences) and shape ops get a group of their own."""
    if {producer.kind, consumer.kind} & {OPAQUE, SHAPE}:
        return False
    return None


def same_row_reductions(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """Reductions over the same axes of same-shaped inputs share a kernel (softmax, layer_norm written out)."""
    if producer.kind == REDUCE and consumer.kind == REDUCE:
        rows = [_row(n) for g in (producer, consumer) for n in g.nodes if get_op(n.op).family == REDUCE]
        if all(r is not None for r in rows) and all(_same_row(rows[0], r) for r in rows[1:]):
            return True
    return None


def one_anchor_per_group(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """One heavy op per group: never two out-fusable anchors, no conv + pool, no matmul + softmax."""
    if producer.kind in ANCHORS and consumer.kind in ANCHORS:
        return False
    return None


def light_chain(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """Chains of elementwise and injective ops fuse into one loop nest."""
    if producer.kind in LIGHT and consumer.kind in LIGHT:
        return True
    return None


def epilogue_keeps_shape(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """An out-fusable op's epilogue computes one value per output element: it may not broadcast it larger."""
    if producer.kind != OUT_FUSABLE or not _is_epilogue(consumer):
        return None
    for v in edge.values:
        for out in edge.user.outputs:
            if not dims_equal(prod(v.shape), prod(out.shape)):
                return False
    return None


def epilogue(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """A matmul, conv, reduction or normalisation takes the elementwise ops and reshapes after it."""
    if producer.kind in ANCHORS and _is_epilogue(consumer):
        return True
    return None


def reduction_takes_elementwise_producers(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """A reduction or normalisation takes the purely elementwise group computing its input (exp before a sum)."""
    if consumer.kind in (REDUCE, NORMALIZE) and producer.families == {ELEMENTWISE}:
        return True
    return None


def no_prologue(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """Matmul and conv read their operands from memory: the ops computing them stay in other groups."""
    if consumer.kind == OUT_FUSABLE:
        return False
    return None


def otherwise_apart(producer: Group, consumer: Group, edge: Edge) -> bool | None:
    """Anything no rule above allows stays apart (e.g. a transpose after a matmul)."""
    return False


FUSION_RULES: tuple[FusionRule, ...] = (
    keep_existing_groups,
    opaque_stands_alone,
    same_row_reductions,
    one_anchor_per_group,
    light_chain,
    epilogue_keeps_shape,
    epilogue,
    reduction_takes_elementwise_producers,
    no_prologue,
    otherwise_apart,
)


def _is_epilogue(group: Group) -> bool:
    """Only elementwise ops and views (what a kernel can apply to its output on the way out)."""
    return all(get_op(n.op).family == ELEMENTWISE or n.op in EPILOGUE_VIEWS for n in group.nodes)


def _row(node: Node):
    """(input shape, reduced axes, keepdims) of an axis reduction; None for others (pools, argmax)."""
    if node.op not in ROW_REDUCTIONS:
        return None
    x = node.inputs[0]
    axes = node.attrs["axes"] or (() if node.attrs["noop_with_empty_axes"] else tuple(range(x.rank)))
    return x.shape, tuple(sorted(axes)), node.attrs["keepdims"]


def _same_row(a, b) -> bool:
    (shape_a, axes_a, keep_a), (shape_b, axes_b, keep_b) = a, b
    if axes_a != axes_b or keep_a != keep_b or len(shape_a) != len(shape_b):
        return False
    return all(dims_equal(x, y) for x, y in zip(shape_a, shape_b))


# -- partitioning -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One question put to the rules: may the group computing `value` fuse with `user`'s group?"""

    value: Value
    user: Node
    rule: str  # the rule that decided, or "would_create_cycle"
    fused: bool

    def __str__(self) -> str:
        verdict = "fused" if self.fused else "kept apart"
        return f"%{self.value.name} -> {self.user.label}: {verdict} by {self.rule}"


@dataclass
class Partition:
    """The groups, in an order that is topological for the fused graph, and every decision."""

    groups: list[Group]
    decisions: list[Decision] = field(default_factory=list)

    def counts(self) -> Counter:
        """How many decisions each rule took (what the pass reports as rules fired)."""
        return Counter(d.rule for d in self.decisions)

    def why(self, value: str, user: str) -> Decision:
        """The decision on the edge from value `value` into the node that defines `user`
        (both value names, e.g. why("conv1", "relu1"))."""
        for d in self.decisions:
            if d.value.name == value and any(o.name == user for o in d.user.outputs):
                return d
        raise KeyError(f"no fusion decision about %{value} -> %{user} (same group from the start, or no such edge)")


def partition(graph: Graph, rules: Sequence[FusionRule] = FUSION_RULES) -> Partition:
    """Groups the nodes of `graph` by `rules` (see the module docstring); changes nothing."""
    nodes = graph.nodes
    producer_at: dict[int, int] = {}  # value id -> index of its producer
    for i, n in enumerate(nodes):
        for o in n.outputs:
            producer_at[id(o)] = i
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for j in dict.fromkeys(producer_at[id(x)] for x in n.inputs if x is not None and id(x) in producer_at):
            users[j].append(i)

    group_of: list[Group] = [Group([n], [i]) for i, n in enumerate(nodes)]
    decisions: list[Decision] = []

    for i, node in enumerate(nodes):
        # The producer groups of this node's operands, with the values each computes.
        edges: dict[int, list[Value]] = {}
        for x in node.inputs:
            if x is not None and id(x) in producer_at:
                g = group_of[producer_at[id(x)]]
                edges.setdefault(id(g), [g])
                if not any(v is x for v in edges[id(g)][1:]):
                    edges[id(g)].append(x)
        # Anchored producers first: an elementwise op becomes the epilogue of the matmul
        # before it rather than joining a neighbouring chain.
        ordered = sorted(edges.values(), key=lambda e: e[0].kind not in ANCHORS)
        for producer, *values in ordered:
            consumer = group_of[i]
            if producer is consumer:
                continue  # merged on the way through an earlier operand
            edge = Edge(tuple(values), node)
            rule, fuse = _decide(rules, producer, consumer, edge)
            if fuse and _creates_cycle(producer, consumer, group_of, users, limit=i):
                rule, fuse = CYCLE, False
            decisions.append(Decision(values[0], node, rule, fuse))
            if fuse:
                _merge(producer, consumer, group_of)

    groups = list({id(g): g for g in group_of}.values())
    return Partition(_topological(groups, group_of, users), decisions)


def _decide(rules: Sequence[FusionRule], producer: Group, consumer: Group, edge: Edge) -> tuple[str, bool]:
    for rule in rules:
        verdict = rule(producer, consumer, edge)
        if verdict is not None:
            return rule.__name__, bool(verdict)
    return "no_rule", False


def _creates_cycle(producer: Group, consumer: Group, group_of: list[Group], users: list[list[int]], limit: int) -> bool:
    """Would merging close a cycle? Only through a path producer -> other group -> ... ->
    consumer (the producer feeds the consumer, so no path runs the other way in an
    acyclic grouping). Groups hold only nodes visited so far (index <= limit), and an
    unvisited node's users come later still, so the search stays below `limit`."""
    seen = {id(producer)}
    stack = [producer]
    while stack:
        group = stack.pop()
        for i in group.positions:
            for j in users[i]:
                if j > limit:
                    continue
                nxt = group_of[j]
                if nxt is consumer:
                    if group is not producer:
                        return True
                    continue  # the direct edge being merged
                if id(nxt) not in seen:
                    seen.add(id(nxt))
                    stack.append(nxt)
    return False


def _merge(a: Group, b: Group, group_of: list[Group]) -> Group:
    # Fold the smaller into the larger; members stay in graph order.
    big, small = (a, b) if len(a.nodes) >= len(b.nodes) else (b, a)
    pairs = sorted(zip(big.positions + small.positions, big.nodes + small.nodes), key=lambda p: p[0])
    big.positions = [p for p, _ in pairs]
    big.nodes = [n for _, n in pairs]
    big.op_counts.update(small.op_counts)
    big.family_counts.update(small.family_counts)
    for p in small.positions:
        group_of[p] = big
    return big


def _topological(groups: list[Group], group_of: list[Group], users: list[list[int]]) -> list[Group]:
    """Groups in dependency order; among ready groups, the one with the earliest node first
    (so the fused graph reads in the order of the original)."""
    succ: dict[int, set[int]] = {id(g): set() for g in groups}
    indegree: Counter = Counter()
    for g in groups:
        for i in g.positions:
            for j in users[i]:
                h = group_of[j]
                if h is not g and id(h) not in succ[id(g)]:
                    succ[id(g)].add(id(h))
                    indegree[id(h)] += 1
    by_id = {id(g): g for g in groups}
    ready = [(g.positions[0], id(g)) for g in groups if indegree[id(g)] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, gid = heapq.heappop(ready)
        out.append(by_id[gid])
        for h in succ[gid]:
            indegree[h] -= 1
            if indegree[h] == 0:
                heapq.heappush(ready, (by_id[h].positions[0], h))
    if len(out) != len(groups):  # the cycle check makes this unreachable
        raise EinfuseError("fuse: the groups form a cycle (a bug in the partitioner)")
    return out


# -- building fused nodes ---------------------------------------------------------------


def _region_name(nodes: Sequence[Node]) -> str:
    """conv_add_relu: the group's first few distinct ops, for people reading the IR."""
    ops = list(dict.fromkeys(n.op for n in nodes))
    name = "_".join(ops[:4])
    return name + "_etc" if len(ops) > 4 else name


def build_region(
    graph: Graph,
    nodes: Sequence[Node],
    outputs: Sequence[Value],
    *,
    inline: Iterable[Value] = (),
    name: str | None = None,
) -> tuple[Graph, list[Value]]:
    """A region holding copies of `nodes` (in graph order) and returning `outputs`; the
    constants in `inline` are copied in; every other value the nodes read becomes a
    region input. Returns the region and the operands to bind to its inputs, in order.
    Region values keep the names of the values they copy."""
    region = Graph(name or _region_name(nodes))
    inline_ids = {id(v) for v in inline}
    inside: dict[int, Value] = {}
    operands: list[Value] = []
    for node in nodes:
        for x in node.inputs:
            if x is None or id(x) in inside:
                continue
            if id(x) in inline_ids:
                inside[id(x)] = region.add_constant(x.name, graph.const_value(x))
            else:
                inside[id(x)] = region.add_input(x.name, x.type)
                operands.append(x)
        outs = tuple(Value(o.name, o.type) for o in node.outputs)
        ins = tuple(None if x is None else inside[id(x)] for x in node.inputs)
        region.add_node(node.with_(inputs=ins, outputs=outs))
        for o, copy in zip(node.outputs, outs):
            inside[id(o)] = copy
    region.outputs = [inside[id(v)] for v in outputs]
    return region, operands


def extract_region(graph: Graph, inputs: Sequence[Value], outputs: Sequence[Value], name: str | None = None) -> Graph:
    """The region computing `outputs` from `inputs`: a copy of every node between them.

    For fusion rules written by users: in a handler,
        region = extract_region(graph, [x, w, b], [y])
        return builder.op("fused", [x, w, b], region=region, kind="out_fusable")
    Constants the nodes read that are not among `inputs` are copied into the region
    (pass weights as inputs). A graph input reached but not listed is an error."""
    stop = {id(v) for v in inputs}
    wanted: set[int] = set()
    stack = [v for v in outputs if id(v) not in stop]
    while stack:
        v = stack.pop()
        node = graph.producer(v)
        if node is None:
            if v.is_const:
                continue
            raise EinfuseError(f"extract_region: %{v.name} is needed but is neither computed nor among the inputs")
        if id(node) in wanted:
            continue
        wanted.add(id(node))
        stack.extend(x for x in node.inputs if x is not None and id(x) not in stop)
    nodes = [n for n in graph.nodes if id(n) in wanted]
    inline = [x for n in nodes for x in n.inputs if x is not None and x.is_const and id(x) not in stop]
    region, operands = build_region(graph, nodes, outputs, inline=inline, name=name)
    # Region inputs in the order the caller gave (the fused node binds them that way).
    order = {id(v): k for k, v in enumerate(inputs)}
    if {id(v) for v in operands} != set(order):
        unused = [f"%{v.name}" for v in inputs if id(v) not in {id(o) for o in operands}]
        raise EinfuseError(f"extract_region: input(s) {', '.join(unused)} are not read by the extracted nodes")
    by_operand = dict(zip((id(v) for v in operands), region.inputs))
    region.inputs = [by_operand[id(v)] for v in inputs]
    return region


def _fuse_group(graph: Graph, group: Group, inline_max_elements: int, used_outside) -> Node:
    """The fused node for `group`; small constants are copied into its region."""
    member_ids = {id(n) for n in group.nodes}
    inline: list[Value] = []
    for n in group.nodes:
        for x in n.inputs:
            arr = graph.const_value(x)
            if arr is not None and arr.size <= inline_max_elements and not any(v is x for v in inline):
                inline.append(x)
    outputs = [o for n in group.nodes for o in n.outputs if used_outside(o, member_ids)]
    if not outputs:  # dead code (eliminate-dead-code removes it): still a node with outputs
        outputs = list(group.nodes[-1].outputs)
    region, operands = build_region(graph, group.nodes, outputs, inline=inline)
    anchor = next((n for n in group.nodes if get_op(n.op).family == group.kind), group.nodes[0])
    node = Node(
        op="fused",
        inputs=tuple(operands),
        outputs=tuple(outputs),
        attrs=Attrs({"region": region, "kind": group.kind}),
        name=anchor.name,
    )
    return node


def fused_groups(graph: Graph) -> Counter:
    """{kind: how many fused nodes} in `graph`."""
    return Counter(n.attrs["kind"] for n in graph.nodes if n.op == "fused")


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Partitions the graph into fused groups (one kernel each) by the rules in FUSION_RULES."""

    name: ClassVar[str] = "fuse"
    rules: tuple = FUSION_RULES  # ordered fusion rules; the first with an opinion decides
    inline_max_elements: int = 16  # constants up to this many elements are copied into the regions reading them

    def run(self, graph: Graph) -> Graph:
        result = partition(graph, self.rules)
        note_rules_fired(result.counts())
        users: dict[int, list[Node]] = {}
        for n in graph.nodes:
            for x in n.inputs:
                if x is not None:
                    users.setdefault(id(x), []).append(n)
        returned = {id(v) for v in graph.outputs}

        def used_outside(v: Value, members: set[int]) -> bool:
            return id(v) in returned or any(id(u) not in members for u in users.get(id(v), ()))

        new_nodes: list[Node] = []
        for group in result.groups:
            if len(group.nodes) == 1 and group.nodes[0].op == "fused":
                new_nodes.append(group.nodes[0])  # a finished group stays as it is
            else:
                new_nodes.append(_fuse_group(graph, group, self.inline_max_elements, used_outside))
        set_nodes(graph, new_nodes)
        # Small constants now live in the regions that read them: drop the outer copies
        # nothing reads any more (other unused constants are eliminate-dead-code's).
        read = {id(x) for n in new_nodes for x in n.inputs if x is not None} | returned
        for v, arr in list(graph.constants.values()):
            if arr.size <= self.inline_max_elements and id(v) not in read and id(v) in users:
                drop_constant(graph, v)
        return graph
