"""fold-shape-computations: shape arithmetic whose result the types already determine
becomes constants; reshape targets take their canonical attribute form.

Exporters compute shapes at run time: `shape(x)` -> gather/slice -> unsqueeze -> concat
-> reshape, or `shape(x)[-1]` -> cast -> sqrt for an attention scale. Rules:

- `fold_static_shape`: shape(x) (its start:end window) and size(x) fold to constants
  when the dims they read are static, even when other dims of x are symbolic.
- `fold_known_shape_elements`: a small integer tensor computed from shapes (through
  gather, slice, concat, squeeze, unsqueeze, reshape, flatten, identity, integer casts,
  add, sub, mul) whose every element is known statically folds to a constant, e.g.
  gather(shape(x: f32[B,S,768]), 2) -> 768. Elements are tracked symbolically (B, S,
  B*S...) along the chain, so a value is folded as soon as the dims it picks are static.
  Nodes whose operands are all constants are fold-constants' job and are left to it.
- `canonicalize_reshape_target`: the core reshape takes its target as an attribute (0
  copies the input's dim, -1 infers one). Its canonical form: explicit sizes for static
  output dims, 0 for a symbolic dim copied from the same position, one -1 for the rest.
  A reshape whose target is not in that form (e.g. written by a pass, or with a -1 or 0
  whose dim is static) is rewritten to it. The ONNX importer already resolves a target
  computed from Shape(x) into this attribute form (reshape of f32[B,S,768] to the
  computed (B,S,12,64) imports as {shape=(0,0,12,64)}) and leaves the chain that computed
  it dead: there is no run-time-target reshape left to rewrite in the IR.

Then, with `fold_consumers=True` (the default), the nodes that the new constants make
all-constant are evaluated too, as fold-constants would (same `evaluate_node`, same
`max_bytes` limit), and so on downstream: the cast and sqrt of a folded head dim become
the attention scale, whether fold-constants runs before this pass or not. Counted as
`fold_consumers`. Dead shape nodes are left to eliminate-dead-code.

Preconditions: a verified graph. Ordering: after import, anywhere before fusion (the
default pipeline runs it right after fold-constants); follow with eliminate-dead-code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import sympy

from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops.shape import resolve_reshape, slice_bounds
from einfuse.ir.types import Dim, DType, dims_equal, prod, simplify_dim
from einfuse.passes.eliminate_dead_code import remove_dead
from einfuse.passes.fold_constants import FoldConstants, evaluate_node
from einfuse.passes.manager import Pass, note_rules_fired, register_pass
from einfuse.passes.pattern import Any, P, RuleSet, rewrite, rule

# Shape vectors are short; longer integer tensors are data, not shapes.
MAX_ELEMENTS = 64

# Integer dtypes a symbolic dim may be cast to (dims are assumed to fit, as everywhere).
_DIM_DTYPES = (DType.i64, DType.i32)


# -- reshape targets ----------------------------------------------------------------------


def static_reshape_target(in_shape: tuple, out_shape: tuple) -> tuple[tuple[int, ...], bool] | None:
    """The canonical reshape attributes (shape, allowzero) taking `in_shape` to `out_shape`,
    or None when the attributes cannot express it: static dims explicit, a symbolic dim
    equal to the input's at the same position 0 (copy), at most one other dim -1."""
    if all(isinstance(d, int) for d in out_shape):
        # Explicit everywhere; a literal 0 needs allowzero (0 would otherwise copy).
        return tuple(out_shape), 0 in out_shape
    if 0 in out_shape:
        return None  # a literal 0 (allowzero) cannot sit beside a -1
    target = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            target.append(d)
        elif i < len(in_shape) and dims_equal(in_shape[i], d):
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1:
        return None

    def fail(msg: str) -> ValueError:
        return ValueError(msg)

    try:
        dims = resolve_reshape(tuple(in_shape), tuple(target), False, fail)
    except ValueError:
        return None
    if not all(dims_equal(a, b) for a, b in zip(dims, out_shape)):
        return None  # e.g. the -1 resolves to floor(...) of something else
    return tuple(target), False


# -- symbolic elements of shape computations ------------------------------------------------

Elements = tuple  # of Dim, row-major


def is_small_int(v: Value) -> bool:
    """An integer tensor small enough to be a shape vector (static element count)."""
    return v.dtype.is_int and v.type.is_static and v.type.numel <= MAX_ELEMENTS


class ShapeElements:
    """Known elements (ints or symbolic dims) of small integer values, computed on
    demand by walking producers (shape chains are short) and memoised."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict[int, Elements | None] = {}

    def of(self, v: Value | None) -> Elements | None:
        if v is None or not is_small_int(v):
            return None
        key = id(v)
        if key not in self.memo:
            self.memo[key] = None  # a cycle is impossible, but never recurse twice
            self.memo[key] = self._compute(v)
        return self.memo[key]

    def _compute(self, v: Value) -> Elements | None:
        arr = self.graph.const_value(v)
        if arr is not None:
            return tuple(int(e) for e in arr.reshape(-1))
        node = self.graph.producer(v)
        if node is None or len(node.outputs) != 1:
            return None
        fn = ELEMENT_RULES.get(node.op)
        return fn(self, node) if fn is not None else None


def _shape_elements(se: ShapeElements, node: Node) -> Elements | None:
    x = node.inputs[0]
    return tuple(x.shape[node.attrs["start"] : node.attrs["end"]])


def _size_elements(se: ShapeElements, node: Node) -> Elements | None:
    return (prod(node.inputs[0].shape),)


def _same_elements(se: ShapeElements, node: Node) -> Elements | None:
    """Reshape-like ops keep the elements in order."""
    return se.of(node.inputs[0])


def _gather_elements(se: ShapeElements, node: Node) -> Elements | None:
    data, idx = node.inputs
    elems = se.of(data)
    picks = se.graph.const_value(idx)
    if elems is None or picks is None or data.rank > 1 or node.attrs["axis"] != 0:
        return None
    n = len(elems)
    out = []
    for i in picks.reshape(-1):
        i = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= i < n:
            return None  # out of range: the evaluator reports it at run time
        out.append(elems[i])
    return tuple(out)


def _slice_elements(se: ShapeElements, node: Node) -> Elements | None:
    data = node.inputs[0]
    elems = se.of(data)
    if elems is None or data.rank != 1:
        return None
    a = node.attrs
    out = list(elems)
    for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
        if axis != 0:
            return None
        lo, hi = slice_bounds(len(elems), start, end, step)
        out = elems[lo : hi if hi >= 0 else None : step]
    return tuple(out)


def _concat_elements(se: ShapeElements, node: Node) -> Elements | None:
    if node.outputs[0].rank != 1:
        return None
    out: list = []
    for x in node.inputs:
        elems = se.of(x)
        if elems is None:
            return None
        out.extend(elems)
    return tuple(out)


def _cast_elements(se: ShapeElements, node: Node) -> Elements | None:
    x = node.inputs[0]
    elems = se.of(x)
    to = node.attrs["to"]
    if elems is None or not to.is_int:
        return None
    if all(isinstance(e, int) for e in elems):
        # Static values convert exactly as the reference would (integers wrap).
        return tuple(int(e) for e in np.asarray(elems, dtype=x.dtype.np).astype(to.np))
    return elems if to in _DIM_DTYPES else None


def _arith(op: Callable[[Dim, Dim], Dim], numpy_op) -> Callable[[ShapeElements, Node], Elements | None]:
    def elements(se: ShapeElements, node: Node) -> Elements | None:
        a, b = (se.of(x) for x in node.inputs)
        out = node.outputs[0]
        if a is None or b is None:
            return None
        # Same length, or one side a single element: then the broadcast is a plain zip
        # (anything else, e.g. [2,1] + [3], is not a shape computation).
        n = max(len(a), len(b))
        if n != out.type.numel or len(a) not in (1, n) or len(b) not in (1, n):
            return None
        a = a * n if len(a) == 1 else a
        b = b * n if len(b) == 1 else b
        if all(isinstance(e, int) for e in a + b):
            dt = out.dtype.np
            res = numpy_op(np.asarray(a, dtype=dt), np.asarray(b, dtype=dt))
            return tuple(int(e) for e in np.asarray(res, dtype=dt))
        return tuple(simplify_dim(op(sympy.sympify(x), sympy.sympify(y))) for x, y in zip(a, b))

    return elements


def _add(a, b):
    return a + b


def _sub(a, b):
    return a - b


def _mul(a, b):
    return a * b


# op -> how its output's elements follow from its operands'.
ELEMENT_RULES: dict[str, Callable[[ShapeElements, Node], Elements | None]] = {
    "shape": _shape_elements,
    "size": _size_elements,
    "gather": _gather_elements,
    "slice": _slice_elements,
    "concat": _concat_elements,
    "squeeze": _same_elements,
    "unsqueeze": _same_elements,
    "reshape": _same_elements,
    "flatten": _same_elements,
    "identity": _same_elements,
    "cast": _cast_elements,
    "add": _arith(_add, np.add),
    "sub": _arith(_sub, np.subtract),
    "mul": _arith(_mul, np.multiply),
}

CHAIN_OPS = frozenset(ELEMENT_RULES) - {"shape", "size"}


def _as_constant(v: Value, elems: Elements, builder) -> Value | None:
    if not all(isinstance(e, int) for e in elems):
        return None
    arr = np.asarray(elems, dtype=np.int64).astype(v.dtype.np).reshape(v.type.static_shape)
    return builder.const(v.name, arr)


# -- rules ------------------------------------------------------------------------------------


@rule(P({"shape", "size"}, Any("x"), name="out"))
def fold_static_shape(x, out, graph, builder):
    return _as_constant(out, ShapeElements(graph).of(out), builder)


@rule(P(CHAIN_OPS, name="out", where=is_small_int))
def fold_known_shape_elements(out, graph, builder):
    if all(x is None or x.is_const for x in graph.producer(out).inputs):
        return None  # fold-constants' job
    elems = ShapeElements(graph).of(out)
    return None if elems is None else _as_constant(out, elems, builder)


@rule(P("reshape", Any("x"), name="out"))
def canonicalize_reshape_target(x, out, graph, builder):
    attrs = graph.producer(out).attrs
    target = static_reshape_target(x.shape, out.shape)
    if target is None or target == (tuple(attrs["shape"]), attrs["allowzero"]):
        return None
    shape, allowzero = target
    return builder.op("reshape", [x], shape=shape, allowzero=allowzero, name=graph.producer(out).name)


FOLD_SHAPE_COMPUTATIONS = RuleSet([fold_static_shape, fold_known_shape_elements, canonicalize_reshape_target])


def fold_consumers(graph: Graph, new: set[int], max_bytes: int) -> int:
    """Evaluates, in order, the nodes that read a constant in `new` (ids of Values) and
    only constants; their results join `new`. Returns how many nodes were folded."""
    folder = FoldConstants(max_bytes=max_bytes)
    count = 0
    i = 0
    # Index walk: folding erases node i and rebuilds its users in place.
    while i < len(graph.nodes):
        node = graph.nodes[i]
        if not any(x is not None and id(x) in new for x in node.inputs) or not folder.foldable(graph, node):
            i += 1
            continue
        arrays = evaluate_node(graph, node)
        graph.erase(node)  # frees the output names for the constants
        for o, arr in zip(node.outputs, arrays):
            c = graph.add_constant(o.name, arr)
            graph.replace_all_uses(o, c)
            new.add(id(c))
        remove_dead(graph, node.inputs)
        count += 1
    return count


@register_pass
@dataclass(frozen=True)
class FoldShapeComputations(Pass):
    """Folds shape arithmetic that static dims determine and canonicalizes reshape targets."""

    name: ClassVar[str] = "fold-shape-computations"
    fold_consumers: bool = True  # also evaluate what the folded values make all-constant
    max_bytes: int = 16 << 20  # as fold-constants: largest output of one folded consumer
    max_iterations: int = 100

    def run(self, graph: Graph) -> Graph:
        before = {id(v) for v, _ in graph.constants.values()}
        rewrite(graph, FOLD_SHAPE_COMPUTATIONS, self.max_iterations)
        if self.fold_consumers:
            new = {id(v) for v, _ in graph.constants.values()} - before
            count = fold_consumers(graph, new, self.max_bytes) if new else 0
            if count:
                note_rules_fired(Counter({"fold_consumers": count}))
        return graph
