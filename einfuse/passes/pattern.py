"""Declarative rewrite rules: a pattern over the IR, a handler that builds the
replacement, and one driver that applies a rule set until nothing changes.

    from einfuse.passes.pattern import P, Any, Const, RuleSet, rewrite, rule

    @rule(P("relu", P("relu", Any("x"), name="inner", single_use=False)))
    def fold_double_relu(inner):
        return inner                      # relu(relu(x)) == relu(x)

    @rule(P("add", Any("x"), Const(value=0.0), name="out", commutative=True))
    def fold_add_zero(x, out):
        return x if x.type == out.type else None   # None: no change (a broadcast add stays)

    SIMPLIFY = RuleSet([fold_double_relu, fold_add_zero])
    result = rewrite(graph, SIMPLIFY)
    result.fired["fold_add_zero"]         # how many times that rule fired

Patterns (each matches one Value: an operand of the enclosing pattern):

- `P(op_or_ops, *operands, name=, attrs=, where=, commutative=False, single_use=None)`:
  a value produced by a node whose op is `op_or_ops` (a name, or a set of names such
  as `ops_in(ELEMENTWISE)`). With no operands, any operands match; otherwise each
  operand pattern must match, `None` stands for an absent optional operand and a final
  `...` accepts any further operands. `attrs` is {name: exact value or predicate} or a
  predicate over the attribute mapping (defaults are filled in, so `attrs={"alpha": 0.2}`
  works whether or not the text spelled it). `where` is a predicate over the Value.
  `commutative=True` also tries the two operands swapped.
- `Any(name=, where=)`: any value (not an absent operand).
- `Const(name=, where=, value=)`: a constant of the graph; `value=` is a scalar that
  every element must equal, or a predicate over the numpy array. The capture is the
  Value; its array is `graph.const_value(v)`.
- `Opt(pattern, name=, or_=)`: an optional piece. `Opt(P(op, inner, ...))` matches the op
  node, or else skips it and matches `inner` directly (so "matmul with or without
  bias" is one rule); `Opt(Any(...))` / `Opt(Const(...))` is an optional operand that
  may be absent. `or_=` gives another fallback explicitly. Captures inside the branch
  not taken reach the handler as None.

A name used twice in one pattern must capture the same value both times
(`P("add", Any("x"), Any("x"))` matches x + x).

Single use: an interior node of a multi-node pattern (every P but the root) matches
only when its value is read by nothing but the matched consumer and is not a graph
output; otherwise the replacement would compute it again while the original stays
alive for its other users. Pass `single_use=False` on a piece the replacement reuses
as is, or that is cheap enough to duplicate.

Rules and handlers: `Rule(pattern, handler, name=None, where=None)` or the `@rule(pattern)`
decorator. The pattern's root must be a P. The handler receives the captures as keyword
arguments (all of them that it names; unbound ones as None), plus `graph` and/or
`builder` if it has parameters of those names. `builder` is an einfuse.ir.builder.Builder
that inserts before the matched root, so new nodes keep topological order:
`builder.op("mul", [x, c])`, `builder.const("scale", array)`. The handler returns the
replacement Value (a tuple of them for a multi-output root; None entries keep an
output), or None for "no change" (the nodes it built are then removed). The driver
checks that each replacement has the dtype and shape of the value it replaces and
raises a RewriteError naming the rule otherwise. `where=` on a Rule is a named side
condition with the same calling convention, returning a bool.

Names: a replacement the handler built takes over the replaced value's name, and so
does any value that replaces a graph output (output names are the model's interface),
except graph inputs, which keep theirs.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from einfuse.errors import EinfuseError
from einfuse.ir.builder import Builder, make_node
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops import get_op
from einfuse.ir.printer import context_lines
from einfuse.ir.types import TensorType, dims_equal
from einfuse.passes.eliminate_dead_code import drop_constant
from einfuse.passes.manager import note_rules_fired

__all__ = [
    "Any",
    "Const",
    "Opt",
    "P",
    "Pattern",
    "RewriteError",
    "RewriteResult",
    "Rule",
    "RuleSet",
    "match",
    "rewrite",
    "rule",
]

# Handler parameters that are not captures.
_EXTRAS = ("graph", "builder")


class RewriteError(EinfuseError):
    """A rewrite rule misbehaved (wrong replacement type, no fixpoint, bad return value)."""


# -- patterns -----------------------------------------------------------------------


class Pattern:
    """Base of the pattern pieces: each matches one Value (or an absent operand)."""

    name: str | None = None

    def _match(self, v: Value | None, m: _Matcher, caps: dict) -> Iterator[dict]:
        raise NotImplementedError

    def _names(self) -> Iterator[str]:
        if self.name is not None:
            yield self.name


class _Matcher:
    """What matching needs from the graph being rewritten."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def single_use(self, v: Value) -> bool:
        return not self.graph.is_output(v) and len(self.graph.users(v)) == 1


_UNBOUND = object()


def _bind(caps: dict | None, name: str | None, v: Value | None) -> dict | None:
    """caps plus name -> v; None when `name` already holds another value."""
    if caps is None or name is None or v is None:
        return caps
    old = caps.get(name, _UNBOUND)
    if old is _UNBOUND:
        out = dict(caps)
        out[name] = v
        return out
    return caps if old is v else None


def _check_name(name, where: str) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}: capture name must be an identifier, got {name!r}")
    if name in _EXTRAS:
        raise ValueError(f"{where}: {name!r} is reserved for the handler's {name} argument; pick another capture name")


class Any(Pattern):
    """Any value; `where` is a predicate over it (e.g. `lambda v: v.dtype.is_float`)."""

    def __init__(self, name: str | None = None, *, where: Callable[[Value], bool] | None = None):
        _check_name(name, "Any")
        self.name = name
        self.where = where

    def _match(self, v, m, caps):
        if v is None or (self.where is not None and not self.where(v)):
            return
        caps = _bind(caps, self.name, v)
        if caps is not None:
            yield caps

    def __repr__(self) -> str:
        return _repr("Any", [], name=self.name, where=self.where)


class Const(Pattern):
    """A constant of the graph. `value`: a scalar every element equals, or a predicate
    over the numpy array; `where`: a predicate over the Value."""

    def __init__(self, name: str | None = None, *, where: Callable[[Value], bool] | None = None, value=None):
        _check_name(name, "Const")
        self.name = name
        self.where = where
        self.value = value

    def _match(self, v, m, caps):
        if v is None or not v.is_const:
            return
        arr = m.graph.const_value(v)
        if arr is None:
            return
        if self.where is not None and not self.where(v):
            return
        if self.value is not None:
            if callable(self.value):
                if not self.value(arr):
                    return
            elif arr.size == 0 or not np.all(arr == self.value):
                return
        caps = _bind(caps, self.name, v)
        if caps is not None:
            yield caps

    def __repr__(self) -> str:
        return _repr("Const", [], name=self.name, where=self.where, value=self.value)


class P(Pattern):
    """A value produced by an op in `op_or_ops`, with operand patterns and constraints."""

    def __init__(
        self,
        op_or_ops: str | Iterable[str],
        *operands,
        name: str | None = None,
        attrs: dict | Callable[[dict], bool] | None = None,
        where: Callable[[Value], bool] | None = None,
        commutative: bool = False,
        single_use: bool | None = None,
    ):
        ops = frozenset([op_or_ops]) if isinstance(op_or_ops, str) else frozenset(op_or_ops)
        if not ops:
            raise ValueError("P: empty set of ops (is the op family registered yet?)")
        label = f"P({_ops_text(ops)})"
        for op in ops:
            try:
                get_op(op)
            except KeyError:
                raise ValueError(f"{label}: unknown op {op!r}") from None
        _check_name(name, label)
        self.ops = ops
        self.name = name
        self.rest = bool(operands) and operands[-1] is Ellipsis
        pats = operands[:-1] if self.rest else operands
        for p in pats:
            if p is Ellipsis:
                raise ValueError(f"{label}: `...` may only come last")
            if p is not None and not isinstance(p, Pattern):
                raise TypeError(f"{label}: an operand must be a pattern (P, Any, Const, Opt) or None, not {p!r}")
        self.operands: tuple | None = tuple(pats) if operands else None
        if commutative and (self.rest or self.operands is None or len(self.operands) != 2):
            raise ValueError(f"{label}: commutative=True needs exactly two operand patterns")
        self.commutative = commutative
        if isinstance(attrs, dict):
            for key in attrs:
                for op in ops:
                    if key not in get_op(op).attrs:
                        raise ValueError(f"{label}: op {op!r} has no attribute {key!r}")
        self.attrs = attrs
        self.where = where
        self.single_use = single_use

    def _match(self, v, m, caps, root: Node | None = None):
        if root is not None:
            node = root
        else:
            if v is None:
                return
            node = m.graph.producer(v)
            if node is None or node.op not in self.ops:
                return
            if self.single_use is not False and not m.single_use(v):
                return
        if not self._attrs_ok(node.attrs):
            return
        if self.where is not None and not self.where(v):
            return
        caps = _bind(caps, self.name, v)
        if caps is None:
            return
        if self.operands is None:
            yield caps
            return
        inputs = list(node.inputs)
        yield from _match_operands(self.operands, self.rest, inputs, m, caps)
        if self.commutative and len(inputs) == 2 and inputs[0] is not inputs[1]:
            yield from _match_operands(self.operands, self.rest, inputs[::-1], m, caps)

    def _attrs_ok(self, attrs) -> bool:
        if self.attrs is None:
            return True
        if callable(self.attrs):
            return bool(self.attrs(attrs))
        for key, want in self.attrs.items():
            if key not in attrs:
                return False
            if callable(want):
                if not want(attrs[key]):
                    return False
            elif attrs[key] != want:
                return False
        return True

    def _names(self):
        yield from super()._names()
        for p in self.operands or ():
            if p is not None:
                yield from p._names()

    def __repr__(self) -> str:
        args = [repr(p) for p in self.operands or ()]
        if self.rest:
            args.append("...")
        return _repr(
            "P",
            [_ops_text(self.ops), *args],
            name=self.name,
            attrs=self.attrs,
            where=self.where,
            commutative=self.commutative or None,
            single_use=self.single_use,
        )


class Opt(Pattern):
    """An optional piece: `pattern`, or else the fallback (see the module docstring)."""

    def __init__(self, pattern: Pattern, *, name: str | None = None, or_: Pattern | None = None):
        if not isinstance(pattern, Pattern):
            raise TypeError(f"Opt: expected a pattern, not {pattern!r}")
        if or_ is not None and not isinstance(or_, Pattern):
            raise TypeError(f"Opt: or_ must be a pattern, not {or_!r}")
        _check_name(name, "Opt")
        self.pattern = pattern
        self.name = name
        self.or_ = or_
        if or_ is None and isinstance(pattern, P) and pattern.operands and pattern.operands[0] is not None:
            # Skipping the optional node: its first operand stands in its place.
            self.fallback: Pattern | None = pattern.operands[0]
        else:
            self.fallback = or_

    def _match(self, v, m, caps):
        for c in self.pattern._match(v, m, caps):
            c = _bind(c, self.name, v)
            if c is not None:
                yield c
        if self.fallback is not None:
            for c in self.fallback._match(v, m, caps):
                c = _bind(c, self.name, v)
                if c is not None:
                    yield c
        elif v is None:
            yield caps  # an absent optional operand

    def _names(self):
        yield from super()._names()
        yield from self.pattern._names()
        if self.or_ is not None:
            yield from self.or_._names()

    def __repr__(self) -> str:
        return _repr("Opt", [repr(self.pattern)], name=self.name, or_=self.or_)


def _match_operands(pats: tuple, rest: bool, inputs: list, m: _Matcher, caps: dict) -> Iterator[dict]:
    # Trailing absent optionals are simply not stored on a node: pad with None.
    if len(inputs) < len(pats):
        inputs = inputs + [None] * (len(pats) - len(inputs))
    elif len(inputs) > len(pats) and not rest:
        return

    def go(i: int, caps: dict) -> Iterator[dict]:
        if i == len(pats):
            yield caps
            return
        p = pats[i]
        if p is None:
            if inputs[i] is None:
                yield from go(i + 1, caps)
            return
        for c in p._match(inputs[i], m, caps):
            yield from go(i + 1, c)

    yield from go(0, caps)


def _ops_text(ops: frozenset) -> str:
    return repr(next(iter(ops))) if len(ops) == 1 else "{" + ", ".join(repr(o) for o in sorted(ops)) + "}"


def _repr(kind: str, args: list, **kw) -> str:
    parts = list(args)
    for k, v in kw.items():
        if v is None:
            continue
        if k == "name" and kind in ("Any", "Const"):
            parts.insert(0, repr(v))  # Any("x") reads better than Any(name='x')
        elif callable(v) and not isinstance(v, Pattern):
            parts.append(f"{k}={getattr(v, '__name__', '<fn>')}")
        else:
            parts.append(f"{k}={v!r}")
    return f"{kind}({', '.join(parts)})"


def match(pattern: Pattern, value: Value, graph: Graph) -> dict | None:
    """The captures of the first way `pattern` matches `value` (every capture name
    present, None when unbound), or None. The value is matched as an interior piece
    (single-use applies) unless the pattern is a P matching at `value`'s producer."""
    m = _Matcher(graph)
    if isinstance(pattern, P):
        node = graph.producer(value)
        if node is None or node.op not in pattern.ops:
            return None
        found = pattern._match(value, m, {}, root=node)
    else:
        found = pattern._match(value, m, {})
    for caps in found:
        return {n: caps.get(n) for n in dict.fromkeys(pattern._names())}
    return None


# -- rules ----------------------------------------------------------------------------


class Rule:
    """A pattern (rooted at a P) and the handler that builds its replacement."""

    def __init__(
        self,
        pattern: P,
        handler: Callable[..., Value | tuple | None],
        name: str | None = None,
        where: Callable[..., bool] | None = None,
    ):
        self.name = name or getattr(handler, "__name__", None) or "rule"
        if not isinstance(pattern, P):
            raise TypeError(f"rule {self.name!r}: the pattern's root must be a P(op, ...), not {pattern!r}")
        self.pattern = pattern
        self.handler = handler
        self.where = where
        # Capture names in order of first appearance.
        self.captures: tuple[str, ...] = tuple(dict.fromkeys(pattern._names()))
        self._handler_args = _wanted_args(handler, self.captures, _EXTRAS, f"rule {self.name!r}: handler")
        self._where_args = _wanted_args(where, self.captures, ("graph",), f"rule {self.name!r}: where") if where else ()

    def __call__(self, *args, **kwargs):
        """Calls the handler directly (handy in unit tests of one rule)."""
        return self.handler(*args, **kwargs)

    def __add__(self, other) -> RuleSet:
        return RuleSet([self]) + other

    def __repr__(self) -> str:
        return f"Rule({self.name!r}: {self.pattern!r})"


def rule(pattern: P, *, name: str | None = None, where: Callable[..., bool] | None = None):
    """Decorator form of Rule: `@rule(P(...))` over the handler makes it a Rule."""

    def deco(handler):
        return Rule(pattern, handler, name=name or handler.__name__, where=where)

    return deco


def _wanted_args(fn: Callable, captures: tuple, extras: tuple, where: str) -> tuple[str, ...]:
    """Which keyword arguments `fn` takes, checked against the captures (a parameter
    that can never be given is a bug in the rule, reported when the rule is made)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return captures + extras  # a builtin or C callable: hand it everything
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return captures + extras
    wanted = []
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.name in captures or p.name in extras:
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{where} {fn.__name__}(): parameter {p.name!r} must accept a keyword argument")
            wanted.append(p.name)
        elif p.default is inspect.Parameter.empty:
            known = ", ".join(captures) or "none"
            raise TypeError(
                f"{where} {fn.__name__}() takes {p.name!r}, which is neither a capture of the pattern "
                f"({known}) nor one of {', '.join(extras)}"
            )
    return tuple(wanted)


class RuleSet:
    """An ordered list of rules; compose with `+`. At a node, rules are tried in order
    and the first that returns a replacement wins."""

    def __init__(self, rules: Iterable[Rule | RuleSet] = ()):
        flat: list[Rule] = []
        for r in rules:
            if isinstance(r, RuleSet):
                flat.extend(r.rules)
            elif isinstance(r, Rule):
                flat.append(r)
            else:
                raise TypeError(f"RuleSet takes rules, not {r!r} (did you forget @rule?)")
        self.rules: list[Rule] = []
        by_name: dict[str, Rule] = {}
        for r in flat:
            if r.name in by_name:
                if by_name[r.name] is r:
                    continue  # the same rule reached through two composed sets
                raise ValueError(f"two different rules are named {r.name!r}; rule counters need unique names")
            by_name[r.name] = r
            self.rules.append(r)
        self._by_op: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in r.pattern.ops:
                self._by_op.setdefault(op, []).append(r)

    def __add__(self, other: RuleSet | Rule) -> RuleSet:
        if isinstance(other, Rule):
            other = RuleSet([other])
        if not isinstance(other, RuleSet):
            return NotImplemented
        return RuleSet([*self.rules, *other.rules])

    def for_op(self, op: str) -> list[Rule]:
        return self._by_op.get(op, [])

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"RuleSet([{', '.join(r.name for r in self.rules)}])"


# -- the driver ------------------------------------------------------------------------


@dataclass
class RewriteResult:
    graph: Graph
    fired: Counter  # rule name -> how many times it replaced something
    iterations: int  # sweeps over the graph, the last one changing nothing

    @property
    def changed(self) -> bool:
        return bool(self.fired)


def rewrite(graph: Graph, rules: RuleSet | Rule, max_iterations: int = 100) -> RewriteResult:
    """Applies `rules` to `graph` (in place) until no rule fires.

    Each iteration sweeps the nodes in order and tries the rules whose root op matches;
    a firing replaces every use of the root's outputs and removes what became dead (only
    that: pre-existing dead code is left to eliminate-dead-code). Raises RewriteError
    when rules still fire after `max_iterations` sweeps. A firing costs time in the
    nodes it touches, not in the graph's size: the Graph updates its use-def index in
    place (see einfuse.ir.graph)."""
    if isinstance(rules, Rule):
        rules = RuleSet([rules])
    total: Counter = Counter()
    last: Counter = Counter()
    for iteration in range(1, max_iterations + 1):
        last = _sweep(graph, rules)
        total.update(last)
        if not last:
            note_rules_fired(total)
            return RewriteResult(graph, total, iteration)
    note_rules_fired(total)
    firing = ", ".join(f"{name} ({n} in the last iteration, {total[name]} in all)" for name, n in last.most_common())
    raise RewriteError(
        f"rewrite of graph @{graph.name} did not converge in {max_iterations} iterations; rules still firing: {firing}",
        hint="a rule probably undoes another one or rebuilds the pattern it matched; make its pattern or its "
        "where= condition exclude its own output",
    )


def _sweep(graph: Graph, rules: RuleSet) -> Counter:
    fired: Counter = Counter()
    # Values are stable identities; nodes are not (replace_all_uses rebuilds the users).
    anchors = [n.outputs[0] for n in graph.nodes if n.outputs]
    for anchor in anchors:
        node = graph.producer(anchor)
        if node is None:
            continue  # erased by an earlier rewrite in this sweep
        for r in rules.for_op(node.op):
            if _apply(graph, r, node):
                fired[r.name] += 1
                break
    return fired


class _TrackingBuilder(Builder):
    """The handler's builder: inserts before the root and remembers what it made."""

    def __init__(self, graph: Graph, before: Node):
        super().__init__(graph, before=before)
        self.nodes: list[Node] = []
        self.consts: list[Value] = []

    def op(self, op: str, inputs, *, name: str = "", out_names=None, **attrs):
        node = make_node(self.graph, op, inputs, attrs, name=name, out_names=out_names)
        self.graph.insert_before(self.before, node)
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def const(self, name: str, array) -> Value:
        v = super().const(name, array)
        self.consts.append(v)
        return v

    def made_values(self) -> set[int]:
        return {id(o) for n in self.nodes for o in n.outputs} | {id(c) for c in self.consts}

    def undo(self) -> None:
        for node in reversed(self.nodes):
            self.graph.erase(node)
        # Only the nodes just erased could read these constants.
        for c in self.consts:
            if self.graph.const_value(c) is not None:
                drop_constant(self.graph, c)


def _apply(graph: Graph, r: Rule, node: Node) -> bool:
    """Tries rule `r` at `node`; True when it replaced the node's outputs."""
    m = _Matcher(graph)
    for caps in r.pattern._match(node.outputs[0], m, {}, root=node):
        args = {n: caps.get(n) for n in r.captures}
        if r.where is not None and not r.where(**_select(r._where_args, args, graph, None)):
            continue
        builder = _TrackingBuilder(graph, node)
        try:
            out = r.handler(**_select(r._handler_args, args, graph, builder))
        except Exception as e:
            builder.undo()
            e.add_note(f"in rewrite rule {r.name!r} at {node.label}")
            raise
        if out is None:
            builder.undo()
            continue
        try:
            news = _check_replacement(graph, r, node, out, builder)
        except RewriteError:
            builder.undo()
            raise
        if not any(_changes(graph, old, new) for old, new in zip(node.outputs, news)):
            builder.undo()  # e.g. the root handed back, or only unread outputs replaced
            continue
        _replace(graph, node, news, builder)
        return True
    return False


def _changes(graph: Graph, old: Value, new: Value | None) -> bool:
    """Would replacing `old` by `new` change the graph?"""
    return new is not None and new is not old and (graph.is_output(old) or bool(graph.users(old)))


def _select(wanted: tuple, args: dict, graph: Graph, builder) -> dict:
    out = {}
    for k in wanted:
        if k == "graph":
            out[k] = graph
        elif k == "builder":
            out[k] = builder
        else:
            out[k] = args.get(k)
    return out


def _check_replacement(graph: Graph, r: Rule, node: Node, out, builder: _TrackingBuilder) -> tuple:
    def fail(msg: str) -> RewriteError:
        return RewriteError(f"rule {r.name!r} at {node.label}: {msg}", context=context_lines(graph, node))

    if isinstance(out, Value):
        news = (out,)
    elif isinstance(out, (tuple, list)) and all(x is None or isinstance(x, Value) for x in out):
        news = tuple(out)
    else:
        raise fail(
            f"the handler returned {type(out).__name__}; it must return a Value (or None for no change); "
            "make constants with builder.const(name, array)"
        )
    if len(news) != len(node.outputs):
        raise fail(f"the handler returned {len(news)} values for a node with {len(node.outputs)} outputs")
    made = builder.made_values()
    for old, new in zip(node.outputs, news):
        if new is None or new is old:
            continue
        if id(new) not in made and not _defined_before(graph, new, node):
            raise fail(f"the replacement %{new.name} is not a value defined before the matched node")
        if not _same_type(old.type, new.type):
            raise fail(
                f"the replacement %{new.name}: {new.type} does not have the type of %{old.name}: {old.type} "
                "(a replacement must keep the dtype and shape)"
            )
    for n in builder.nodes:
        for x in n.inputs:
            if any(x is o for o in node.outputs):
                raise fail(f"the replacement reads %{x.name}, the value it replaces")
    return news


def _same_type(a: TensorType, b: TensorType) -> bool:
    return a.dtype == b.dtype and a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _defined_before(graph: Graph, v: Value, node: Node) -> bool:
    if any(v is i for i in graph.inputs) or graph.const_value(v) is not None:
        return True
    producer = graph.producer(v)
    return producer is not None and graph.precedes(producer, node)


def _replace(graph: Graph, node: Node, news: tuple, builder: _TrackingBuilder) -> None:
    made = builder.made_values()
    was_output = {id(o) for o in node.outputs if graph.is_output(o)}
    renames = []
    for old, new in zip(node.outputs, news):
        if new is None or new is old:
            continue
        is_input = any(new is i for i in graph.inputs)
        if not is_input and (id(new) in made or (id(old) in was_output and not graph.is_output(new))):
            renames.append((new, old.name))
        graph.replace_all_uses(old, new)
    leftovers = [x for x in node.inputs if x is not None]
    replaced_all = all(new is not None and new is not old for old, new in zip(node.outputs, news))
    if replaced_all or not any(graph.users(o) or graph.is_output(o) for o in node.outputs):
        graph.erase(node)  # frees the old names for the renames below
        for new, name in renames:
            if new.name != name and graph.fresh_name(name) == name:
                graph.rename(new, name)
    graph.remove_dead([*leftovers, *(o for n in builder.nodes for o in n.outputs), *builder.consts])
