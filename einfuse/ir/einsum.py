"""Extended Einsums and cascades of them, after FuseMax (Nayak et al., 2024).

A *cascade* is a list of statements, evaluated in order. Attention as the textbook
(3-pass) cascade reads:

    QK[b,h,p,m] = sum(e) Q[b,h,p,e] * K[b,h,m,e]
    S[b,h,p,m] = where(m <= p + M - P, QK[b,h,p,m] * scale + BIAS[b,h,p,m], -inf)
    GM[b,h,p] = max(m) S[b,h,p,m]
    SN[b,h,p,m] = exp(S[b,h,p,m] - where(GM[b,h,p] == -inf, 0, GM[b,h,p]))
    SD[b,h,p] = sum(m) SN[b,h,p,m]
    A[b,h,p,f] = sum(m) SN[b,h,p,m] * V[b,h,m,f] / where(SD[b,h,p] == 0, 1, SD[b,h,p])

The notation
------------
- Names. Lowercase identifiers inside brackets (and in a reduction list) are *ranks*
  (index variables). Rank `x` has the extent named `X` (its uppercase): `m` runs over
  `0..M-1`, `m1` over `0..M1-1`. Other lowercase identifiers are scalar parameters
  (`scale`), bound when evaluating. Uppercase identifiers followed by `[` are tensors,
  otherwise sizes (ints: `M`, `M0`, `G`). A tensor may not share its name with a size.
- A tensor statement `T[i,...] = [reduce(r,...)] expr`. `expr` is built from tensor
  accesses, numbers (`inf` included), ranks, sizes, parameters, `+ - * / // %`,
  comparisons `< <= > >= == !=`, `and`, `or` (lowest precedence, below comparisons) and
  the functions exp, log, sqrt, abs, ceil, floor, max(a, b), min(a, b), where(c, a, b).
  The optional prefix `sum(m)`, `max(m)` or `min(m)` (several ranks: `sum(m,e)`) is the
  reduction over ranks that appear on the right and not on the left: the expression is
  evaluated over all ranks of the statement (the extended Einsum's "combine", e.g. `*`
  or `+`, is just its top operator) and reduced with that operator. Without a prefix,
  ranks on the right that are not on the left are summed (classic Einsum); the printer
  always writes the prefix. An operand starting with a minus needs parentheses after a
  prefix (`max(m) (-X[m])`: `max(m) -X[m]` reads as a call of max minus X, an error).
- A size statement `NAME = expr` (e.g. `M0 = 64`, `M1 = ceil(M / M0)`) defines a size.
- Index expressions may be any integer expression of ranks and sizes:
  `K[b,h//G,m1*M0+m0,e]` reads the key of head group `h // G` at position
  `m1*M0 + m0`. Reads outside a tensor's shape give 0 (the zero-fill of partitioned
  ranks); a dimension of size 1 broadcasts (every index reads its one element).
- Output indices are ranks, constants/sizes (`RM[b,h,p,0]`) or `r+1` for an
  *iterative* rank `r` (FuseMax's `RM[m1+1] = max(RM[m1], LM[m1])`). A rank written as
  `r+1` in some output is iterative: the evaluator runs the contiguous block of
  statements that have `r` among their output ranks once per value of `r`, in order.
  The extent of a tensor along a dimension is the largest index any statement writes
  there, plus one (`RM` above has `M1 + 1` entries along `m1`).
- The cascade's inputs are the tensors read and never written; its output is the
  tensor written by the last statement.
- Rank families: ranks `m0`, `m1`, `m2`... (the rank name followed by digits) are
  pieces of the partitioned rank `m` (FuseMax's `m = m1*M0 + m0`); `count_passes(c, "m")`
  counts passes over the whole family.

Evaluation (`evaluate(cascade, **bindings)`): bindings named like an input tensor are
its array; every other binding is a scalar parameter (`scale=0.125`) or a size
(`G=2`). A rank's extent comes from an input dimension indexed by that plain rank
(`Q[b,h,p,e]` binds B, H, P, E), from a size statement or from a binding; an input
dimension indexed by an expression binds nothing (the tiled forms below need `M=`).
The numpy evaluator computes each statement's expression over all its ranks (products
under a sum go through np.einsum) in f32 (f64 for f64 inputs), and loops over an
iterative rank.

Pass counting (`count_passes(c, rank)`, FuseMax's lower bound): a pass is one traversal
of the rank. A statement that iterates over the rank (has it, or a piece of it, among
its ranks) and reads a value that needs a finished traversal -- a full reduction over
the rank, or the end of a recurrence over it (`RNV[b,h,p,M1,f]`) -- starts one more
pass than that value's.

Attention conventions used by the builders here (and by the `einsum_cascade` op):
inputs Q[b,h,p,e], K[b,kh,m,e], V[b,kh,m,f] and the optional additive BIAS[b,h,p,m]
(any dim may be 1); parameters `scale` and, for grouped-query attention, the size `G`
(= query heads / kv heads: query head `h` reads kv head `h // G`, written as an index
map in the cascade: `K[b,h//G,m,e]`); causal masks are maps on the logits: `m <= p`
(top-left aligned) or `m <= p + M - P` (bottom-right aligned, the KV-cache alignment).
A row whose keys are all masked gives 0: the max is replaced by 0 where it is -inf
before it is subtracted, and a zero denominator by 1.

The forms (see `attention_cascade`): "3-pass" above; "2-pass" (`to_two_pass`: the
division by the denominator hoisted out of the reduction over m:
`AN[b,h,p,f] = sum(m) SN[b,h,p,m] * V[b,h,m,f]`, then `A = AN / SD`); "1-pass"
(`to_one_pass`: FlashAttention's online softmax, FuseMax's cascade with m split into
tiles m = m1*M0 + m0 and m1 iterative):

    M0 = 64
    M1 = ceil(M / M0)
    RM[b,h,p,0] = -inf
    RD[b,h,p,0] = 0
    RNV[b,h,p,0,f] = 0
    QK[b,h,p,m1,m0] = sum(e) Q[b,h,p,e] * K[b,h,m1*M0+m0,e]
    S[b,h,p,m1,m0] = where(m1 * M0 + m0 < M, QK[b,h,p,m1,m0] * scale, -inf)
    LM[b,h,p,m1] = max(m0) S[b,h,p,m1,m0]                        # tile max
    RM[b,h,p,m1+1] = max(RM[b,h,p,m1], LM[b,h,p,m1])             # running max
    SM[b,h,p,m1] = where(RM[b,h,p,m1+1] == -inf, 0, RM[b,h,p,m1+1])
    SLN[b,h,p,m1,m0] = exp(S[b,h,p,m1,m0] - SM[b,h,p,m1])
    SLD[b,h,p,m1] = sum(m0) SLN[b,h,p,m1,m0]
    SLNV[b,h,p,m1,f] = sum(m0) SLN[b,h,p,m1,m0] * V[b,h,m1*M0+m0,f]
    PRM[b,h,p,m1] = exp(RM[b,h,p,m1] - SM[b,h,p,m1])              # rescale exp(RM[m1] - RM[m1+1])
    RD[b,h,p,m1+1] = RD[b,h,p,m1] * PRM[b,h,p,m1] + SLD[b,h,p,m1]          # running denominator
    RNV[b,h,p,m1+1,f] = RNV[b,h,p,m1,f] * PRM[b,h,p,m1] + SLNV[b,h,p,m1,f]  # running numerator
    A[b,h,p,f] = RNV[b,h,p,M1,f] / where(RD[b,h,p,M1] == 0, 1, RD[b,h,p,M1])

(the `#` notes are not part of the notation); "split" (`split_kv`: the key tiles
further split into C chunks, m1 -> c*M1 + m1, each chunk with its own running triple
(RM, RD, RNV) along the parallel rank c, merged at the end by the associative rescaled
sum: LeanAttention / FlashDecoding). The extended `einsum` core op (combine mul/add/sub/
max/min, reduce sum/max/min) is the one-statement case: `equation="ij,jk->ik",
combine="add", reduce="max"` is `Z[i,k] = max(j) X[i,j] + Y[j,k]`.

No `eval` anywhere: statements are tokenized and parsed here; errors are `CascadeError`
(an EinfuseError and a ValueError) quoting the statement.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from einfuse.errors import EinfuseError

__all__ = [
    "Access",
    "Binary",
    "Call",
    "Cascade",
    "CascadeError",
    "Name",
    "Num",
    "SizeDef",
    "Statement",
    "Unary",
    "accesses",
    "attention_cascade",
    "causal_of",
    "count_passes",
    "describe",
    "evaluate",
    "parse_cascade",
    "parse_statement",
    "split_kv",
    "to_one_pass",
    "to_two_pass",
]


class CascadeError(EinfuseError, ValueError):
    """A cascade statement is malformed, or a cascade cannot be evaluated/rewritten."""


# -- the expression tree ------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int | float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Access:
    tensor: str
    indices: tuple


@dataclass(frozen=True)
class Unary:
    op: str  # "-"
    arg: object


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple


Expr = Num | Name | Access | Unary | Binary | Call

# fn -> number of arguments
FUNCTIONS = {"exp": 1, "log": 1, "sqrt": 1, "abs": 1, "ceil": 1, "floor": 1, "max": 2, "min": 2, "where": 3}
REDUCTIONS = ("sum", "max", "min")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")

# Binding strength, loosest first; `and`/`or` sit below comparisons (unlike Python's &/|).
_PREC = {"or": 1, "and": 2, **{c: 3 for c in COMPARISONS}, "+": 4, "-": 4, "*": 5, "/": 5, "//": 5, "%": 5}
_UNARY_PREC = 6


@dataclass(frozen=True)
class Statement:
    """`tensor[indices] = reduce(ranks) expr` (reduce None: an elementwise map)."""

    tensor: str
    indices: tuple
    expr: object
    reduce: str | None = None
    ranks: tuple = ()  # the reduced ranks

    def __str__(self) -> str:
        lhs = f"{self.tensor}[{','.join(format_expr(i, 0, True) for i in self.indices)}]"
        rhs = format_expr(self.expr)
        if not self.reduce:
            return f"{lhs} = {rhs}"
        if rhs.startswith("-"):  # `max(m) -X` would read as max(m) minus X
            rhs = f"({rhs})"
        return f"{lhs} = {self.reduce}({','.join(self.ranks)}) {rhs}"

    @property
    def out_ranks(self) -> tuple[str, ...]:
        """The free ranks of the output, in order (`m1` for an index `m1+1`)."""
        out = []
        for i in self.indices:
            for r in _index_ranks(i):
                if r not in out:
                    out.append(r)
        return tuple(out)


@dataclass(frozen=True)
class SizeDef:
    """`NAME = expr`: a size (an int) defined from other sizes."""

    name: str
    expr: object

    def __str__(self) -> str:
        return f"{self.name} = {format_expr(self.expr)}"


@dataclass(frozen=True)
class Cascade:
    statements: tuple

    def lines(self) -> tuple[str, ...]:
        """One string per statement (the form the `einsum_cascade` op stores)."""
        return tuple(str(s) for s in self.statements)

    def __str__(self) -> str:
        return "\n".join(self.lines())

    @property
    def tensor_statements(self) -> list[Statement]:
        return [s for s in self.statements if isinstance(s, Statement)]

    @property
    def output(self) -> str:
        stmts = self.tensor_statements
        if not stmts:
            raise CascadeError("the cascade has no tensor statement")
        return stmts[-1].tensor

    @property
    def written(self) -> set[str]:
        return {s.tensor for s in self.tensor_statements}

    @property
    def inputs(self) -> list[str]:
        """Tensors read and never written, in order of first use."""
        written = self.written
        out: list[str] = []
        for s in self.tensor_statements:
            for a in _accesses(s.expr):
                if a.tensor not in written and a.tensor not in out:
                    out.append(a.tensor)
        return out

    @property
    def sizes(self) -> dict[str, object]:
        return {s.name: s.expr for s in self.statements if isinstance(s, SizeDef)}

    @property
    def iterative_ranks(self) -> set[str]:
        """Ranks written as `r+k` in some output (FuseMax's iterative ranks)."""
        out = set()
        for s in self.tensor_statements:
            for i in s.indices:
                if isinstance(i, Binary) and i.op == "+" and isinstance(i.left, Name) and _is_rank_name(i.left.name):
                    out.add(i.left.name)
        return out


# -- tokenizer and parser -------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>//|<=|>=|==|!=|[-+*/%<>()\[\],=]))"
)


def _is_rank_name(name: str) -> bool:
    return name[:1].islower() and name not in ("inf", "and", "or")


def _is_size_name(name: str) -> bool:
    return name[:1].isupper()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.lastgroup is None:
                bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
                self.fail(f"unexpected character {text[bad]!r}", bad)
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str, pos: int | None = None):
        if pos is None:
            pos = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        raise CascadeError(f"{msg} at column {pos + 1} of {self.text!r}")

    def peek(self, k: int = 0) -> tuple[str, str, int] | None:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, value: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t is not None and t[1] == value and t[0] != "num"

    def next(self) -> tuple[str, str, int]:
        t = self.peek()
        if t is None:
            self.fail("unexpected end")
        self.i += 1
        return t

    def expect(self, value: str) -> None:
        t = self.peek()
        if t is None or t[1] != value:
            self.fail(f"expected {value!r}" + (f", got {t[1]!r}" if t else ""))
        self.i += 1

    # expr := binary expression with precedence climbing
    def expr(self, min_prec: int = 1):
        left = self.unary()
        while True:
            t = self.peek()
            if t is None or t[0] == "num" or t[1] not in _PREC or _PREC[t[1]] < min_prec:
                return left
            op = t[1]
            prec = _PREC[op]
            self.i += 1
            right = self.expr(prec + 1)
            if op in COMPARISONS and self.peek() is not None and self.peek()[1] in COMPARISONS:
                self.fail("comparisons do not chain; use `and`")
            left = Binary(op, left, right)

    def unary(self):
        if self.at("-"):
            self.i += 1
            arg = self.expr(_UNARY_PREC)
            if isinstance(arg, Num):
                return Num(-arg.value)
            return Unary("-", arg)
        return self.primary()

    def primary(self):
        t = self.next()
        kind, value, pos = t
        if kind == "num":
            return Num(int(value) if value.isdigit() else float(value))
        if kind == "ident":
            if value == "inf":
                return Num(math.inf)
            if value in ("and", "or"):
                self.fail(f"{value!r} needs an operand before it", pos)
            if self.at("["):
                if not _is_size_name(value):
                    self.fail(f"tensor names start with an uppercase letter, got {value!r}", pos)
                self.i += 1
                idx = self.expr_list("]")
                return Access(value, tuple(idx))
            if self.at("("):
                if value not in FUNCTIONS:
                    self.fail(f"unknown function {value!r} (known: {', '.join(FUNCTIONS)})", pos)
                self.i += 1
                args = self.expr_list(")")
                if len(args) != FUNCTIONS[value]:
                    self.fail(f"{value}() takes {FUNCTIONS[value]} arguments, got {len(args)}", pos)
                return Call(value, tuple(args))
            return Name(value)
        if value == "(":
            e = self.expr()
            self.expect(")")
            return e
        self.fail(f"unexpected {value!r}", pos)

    def expr_list(self, close: str) -> list:
        items = []
        if self.at(close):
            self.fail(f"empty {'index list' if close == ']' else 'argument list'}")
        while True:
            items.append(self.expr())
            if self.at(close):
                self.i += 1
                return items
            t = self.peek()
            if t is None:
                self.fail(f"missing {close!r}")
            if t[1] != ",":
                self.fail(f"expected ',' or {close!r}, got {t[1]!r}")
            self.i += 1

    def reduction_prefix(self):
        """`sum(m, e)` at the start of a right-hand side, followed by an operand."""
        t = self.peek()
        if t is None or t[0] != "ident" or t[1] not in REDUCTIONS or not self.at("(", 1):
            return None, ()
        j = 2
        ranks = []
        while True:
            r = self.peek(j)
            if r is None or r[0] != "ident" or not _is_rank_name(r[1]):
                return None, ()
            ranks.append(r[1])
            sep = self.peek(j + 1)
            if sep is None:
                return None, ()
            if sep[1] == ")":
                break
            if sep[1] != ",":
                return None, ()
            j += 2
        after = self.peek(j + 2)
        # `max(a, b) + 1` is a call; `max(m) S[...]` is a reduction: an operand follows.
        if after is None or not (after[0] in ("num", "ident") or after[1] == "("):
            return None, ()
        if after[0] == "ident" and after[1] in ("and", "or"):
            return None, ()
        self.i += j + 2
        return t[1], tuple(ranks)


def parse_statement(text: str) -> Statement | SizeDef:
    """One statement (tensor or size definition); raises CascadeError quoting the text."""
    p = _Parser(text)
    if not p.tokens:
        raise CascadeError("empty statement")
    kind, name, pos = p.next()
    if kind != "ident" or not _is_size_name(name):
        p.fail("a statement starts with a tensor or size name (uppercase)", pos)
    if p.at("="):
        p.i += 1
        expr = p.expr()
        if p.peek() is not None:
            p.fail(f"unexpected {p.peek()[1]!r}")
        for n in _names(expr):
            if not _is_size_name(n):
                p.fail(f"size {name} may only use sizes and numbers, not {n!r}")
        if _accesses(expr):
            p.fail(f"size {name} cannot read a tensor")
        return SizeDef(name, expr)
    p.expect("[")
    indices = tuple(p.expr_list("]"))
    p.expect("=")
    reduce, ranks = p.reduction_prefix()
    expr = p.expr()
    if p.peek() is not None:
        p.fail(f"unexpected {p.peek()[1]!r}")
    return _check_statement(Statement(name, indices, expr, reduce, ranks), text)


def _check_statement(s: Statement, text: str) -> Statement:
    """Checks a parsed statement; returns it with the implicit sum made explicit."""
    for i in s.indices:
        if not _valid_out_index(i):
            raise CascadeError(
                f"output index {format_expr(i, 0, True)!r} must be a rank, a rank + constant, or a size expression in {text!r}"
            )
    out = s.out_ranks
    if len([i for i in s.indices if _index_ranks(i)]) != len(out):
        raise CascadeError(f"an output rank is repeated in {text!r}")
    rhs = _expr_ranks(s.expr)
    if s.reduce is None:
        extra = tuple(r for r in rhs if r not in out)
        return replace(s, reduce="sum", ranks=extra) if extra else s  # classic Einsum: implicit sum
    if len(set(s.ranks)) != len(s.ranks):
        raise CascadeError(f"a reduced rank is repeated in {text!r}")
    for r in s.ranks:
        if r in out:
            raise CascadeError(f"rank {r!r} is reduced but also on the left of {text!r}")
        if r not in rhs:
            raise CascadeError(f"rank {r!r} is reduced but does not appear on the right of {text!r}")
    missing = [r for r in rhs if r not in out and r not in s.ranks]
    if missing:
        raise CascadeError(
            f"rank(s) {', '.join(missing)} appear on the right but are neither on the left nor reduced in {text!r}"
        )
    return s


def _valid_out_index(i) -> bool:
    if isinstance(i, Name) and _is_rank_name(i.name):
        return True
    if isinstance(i, Binary) and i.op == "+" and isinstance(i.left, Name) and _is_rank_name(i.left.name):
        return isinstance(i.right, Num) and isinstance(i.right.value, int) and i.right.value > 0
    return not _index_ranks(i) and not _accesses(i)


def parse_cascade(statements) -> Cascade:
    """A cascade from a sequence of statement strings (or one string, a statement per line).
    Checks that no tensor shares a name with a size and that tensors are written before
    they are read (except the inputs)."""
    if isinstance(statements, str):
        statements = [line for line in statements.splitlines() if line.strip()]
    parsed = tuple(_parse_cached(s) for s in statements)
    c = Cascade(parsed)
    _check_cascade(c)
    return c


@lru_cache(maxsize=4096)
def _parse_cached(text: str):
    return parse_statement(text)


def _check_cascade(c: Cascade) -> None:
    tensors = {s.tensor for s in c.tensor_statements} | {
        a.tensor for s in c.tensor_statements for a in _accesses(s.expr)
    }
    sizes = set(c.sizes)
    for s in c.statements:
        exprs = [s.expr] + (list(s.indices) if isinstance(s, Statement) else [])
        for e in exprs:
            sizes |= {n for n in _names(e) if _is_size_name(n)}
            for a in _accesses(e):
                for i in a.indices:
                    sizes |= {n for n in _names(i) if _is_size_name(n)}
    clash = tensors & sizes
    if clash:
        raise CascadeError(f"name(s) {', '.join(sorted(clash))} are used both as a tensor and as a size")
    written: set[str] = set()
    inputs = set(c.inputs)
    for s in c.tensor_statements:
        for a in _accesses(s.expr):
            if a.tensor not in written and a.tensor not in inputs:
                raise CascadeError(f"{a.tensor} is read before it is written in {str(s)!r}")
        written.add(s.tensor)
    if not c.tensor_statements:
        raise CascadeError("the cascade has no tensor statement")


# -- printer ---------------------------------------------------------------------------


def format_expr(e, parent: int = 0, compact: bool = False) -> str:
    """Expression text with the fewest parentheses that parse back to the same tree
    (`compact`: no spaces around operators, as inside tensor indices)."""
    if isinstance(e, Num):
        v = e.value
        if isinstance(v, float) and math.isinf(v):
            text = "inf" if v > 0 else "-inf"
        else:
            text = repr(v)
        return f"({text})" if text.startswith("-") and parent >= _UNARY_PREC else text
    if isinstance(e, Name):
        return e.name
    if isinstance(e, Access):
        return f"{e.tensor}[{','.join(format_expr(i, 0, True) for i in e.indices)}]"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(format_expr(a, 0, compact) for a in e.args)})"
    if isinstance(e, Unary):
        text = "-" + format_expr(e.arg, _UNARY_PREC, compact)
        return f"({text})" if parent > _UNARY_PREC else text
    if isinstance(e, Binary):
        prec = _PREC[e.op]
        # Left-associative (comparisons do not chain): a right operand of the same
        # precedence needs parentheses.
        lhs = format_expr(e.left, prec + (1 if e.op in COMPARISONS else 0), compact)
        rhs = format_expr(e.right, prec + 1, compact)
        sep = e.op if compact and e.op not in ("and", "or") else f" {e.op} "
        text = f"{lhs}{sep}{rhs}"
        return f"({text})" if prec < parent else text
    raise TypeError(f"not an expression: {e!r}")


# -- tree helpers --------------------------------------------------------------------


def _children(e) -> tuple:
    if isinstance(e, Access):
        return e.indices
    if isinstance(e, Unary):
        return (e.arg,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Call):
        return e.args
    return ()


def _walk(e):
    yield e
    for c in _children(e):
        yield from _walk(c)


def _names(e) -> set[str]:
    return {x.name for x in _walk(e) if isinstance(x, Name)}


def accesses(e) -> list[Access]:
    """The tensor accesses in an expression, outermost first."""
    return [x for x in _walk(e) if isinstance(x, Access)]


_accesses = accesses


def _index_ranks(i) -> list[str]:
    return [n for n in sorted(_names(i)) if _is_rank_name(n)]


def _expr_ranks(e) -> list[str]:
    """Ranks an expression depends on: ranks in access indices and rank names used as values.
    (A lowercase name outside an index that is not a rank of the statement is a parameter:
    the caller decides; here every lowercase name inside an index is a rank.)"""
    out: list[str] = []

    def visit(x, in_index: bool):
        if isinstance(x, Name) and _is_rank_name(x.name) and in_index and x.name not in out:
            out.append(x.name)
        if isinstance(x, Access):
            for i in x.indices:
                visit(i, True)
            return
        for c in _children(x):
            visit(c, in_index)

    visit(e, False)
    return out


def statement_ranks(s: Statement) -> set[str]:
    """All ranks of a statement: output ranks, ranks in accesses and reduced ranks."""
    return set(s.out_ranks) | set(_expr_ranks(s.expr)) | set(s.ranks)


def _map(e, fn):
    """Rebuilds expression `e` bottom-up, calling fn on every node (fn returns a node)."""
    if isinstance(e, Access):
        e = Access(e.tensor, tuple(_map(i, fn) for i in e.indices))
    elif isinstance(e, Unary):
        e = Unary(e.op, _map(e.arg, fn))
    elif isinstance(e, Binary):
        e = Binary(e.op, _map(e.left, fn), _map(e.right, fn))
    elif isinstance(e, Call):
        e = Call(e.fn, tuple(_map(a, fn) for a in e.args))
    return fn(e)


# -- evaluation ------------------------------------------------------------------------


@dataclass
class _L:
    """A labelled array: axis k of `a` runs over rank `ranks[k]` (size 1 = broadcast)."""

    a: np.ndarray
    ranks: tuple


def _align(x: _L, ranks: tuple) -> np.ndarray:
    perm = [x.ranks.index(r) for r in ranks if r in x.ranks]
    a = np.transpose(x.a, perm) if perm != list(range(len(perm))) else x.a
    shape = []
    k = 0
    for r in ranks:
        if r in x.ranks:
            shape.append(a.shape[k])
            k += 1
        else:
            shape.append(1)
    return a.reshape(shape)


def _union(*xs: _L) -> tuple:
    out: list[str] = []
    for x in xs:
        out += [r for r in x.ranks if r not in out]
    return tuple(out)


_BINOPS = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
    "//": np.floor_divide,
    "%": np.mod,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
    "and": np.logical_and,
    "or": np.logical_or,
}
_UNARY_FNS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "ceil": np.ceil, "floor": np.floor}


class _Env:
    def __init__(self, cascade: Cascade, arrays: dict, params: dict, work: np.dtype):
        self.c = cascade
        self.tensors: dict[str, np.ndarray] = dict(arrays)
        self.params = params
        self.work = work
        self.sizes: dict[str, int] = {k: int(v) for k, v in params.items() if _is_size_name(k)}
        self.fixed: dict[str, int] = {}
        self.ranks: set[str] = set()
        self.stmt: Statement | None = None

    def fail(self, msg: str):
        where = f" in {str(self.stmt)!r}" if self.stmt is not None else ""
        raise CascadeError(msg + where)

    def extent(self, rank: str) -> int:
        size = rank.upper()
        if size not in self.sizes:
            self.fail(f"the extent {size} of rank {rank!r} is unknown (no input dimension binds it: pass {size}=...)")
        return self.sizes[size]

    def bind_size(self, name: str, value: int, what: str) -> None:
        old = self.sizes.get(name)
        if old is None or old == 1:
            self.sizes[name] = value
        elif value != 1 and old != value:
            self.fail(f"size {name} is {old} but {what} has {value}")

    # expressions -> labelled arrays
    def ev(self, e) -> _L:
        if isinstance(e, Num):
            return _L(np.asarray(e.value), ())
        if isinstance(e, Name):
            n = e.name
            if n in self.fixed:
                return _L(np.asarray(self.fixed[n]), ())
            if n in self.ranks:
                return _L(np.arange(self.extent(n)), (n,))
            if _is_size_name(n):
                if n not in self.sizes:
                    self.fail(f"size {n} is not bound (no input dimension binds it: pass {n}=... to evaluate)")
                return _L(np.asarray(self.sizes[n]), ())
            if n not in self.params:
                self.fail(f"parameter {n!r} is not bound (pass {n}=... to evaluate)")
            return _L(np.asarray(self.params[n], self.work), ())
        if isinstance(e, Access):
            return self.access(e)
        if isinstance(e, Unary):
            x = self.ev(e.arg)
            return _L(np.negative(x.a), x.ranks)
        if isinstance(e, Binary):
            x, y = self.ev(e.left), self.ev(e.right)
            ranks = _union(x, y)
            return _L(_BINOPS[e.op](_align(x, ranks), _align(y, ranks)), ranks)
        if isinstance(e, Call):
            args = [self.ev(a) for a in e.args]
            ranks = _union(*args)
            al = [_align(a, ranks) for a in args]
            if e.fn in _UNARY_FNS:
                out = _UNARY_FNS[e.fn](al[0])
            elif e.fn == "max":
                out = np.maximum(al[0], al[1])
            elif e.fn == "min":
                out = np.minimum(al[0], al[1])
            else:  # where
                out = np.where(al[0], al[1], al[2])
            return _L(out, ranks)
        raise TypeError(e)

    def access(self, e: Access) -> _L:
        if e.tensor not in self.tensors:
            self.fail(f"tensor {e.tensor} is not bound")
        t = self.tensors[e.tensor]
        if t.ndim != len(e.indices):
            self.fail(f"{e.tensor} has {t.ndim} dims, but is indexed with {len(e.indices)}")
        plain = [isinstance(i, Name) and i.name in self.ranks and i.name not in self.fixed for i in e.indices]
        names = [i.name for i, p in zip(e.indices, plain) if p]
        if all(plain) and len(set(names)) == len(names):
            for i, d in zip(e.indices, t.shape):
                if d != 1 and d != self.extent(i.name):
                    self.fail(f"{e.tensor} has {d} entries along {i.name}, expected {self.extent(i.name)}")
            return _L(t, tuple(names))
        idx = [self.ev(i) for i in e.indices]
        for i, x in zip(e.indices, idx):
            if x.a.dtype.kind not in "iub":
                self.fail(f"index {format_expr(i, 0, True)!r} of {e.tensor} is not an integer")
        used = [r for x in idx for r in x.ranks]
        if all(len(x.ranks) <= 1 for x in idx) and len(set(used)) == len(used):
            return self._take(t, idx)
        # General access: gather with an integer index array per dimension.
        ranks = _union(*idx)
        full = [_align(x, ranks).astype(np.int64) for x in idx]
        valid = np.ones((), bool)
        gather = []
        for k, (ix, d) in enumerate(zip(full, t.shape)):
            if d == 1:  # a size-1 dimension broadcasts
                gather.append(np.zeros_like(ix))
                continue
            ok = (ix >= 0) & (ix < d)
            valid = valid & ok
            gather.append(np.where(ok, ix, 0))
        shape = np.broadcast_shapes(*(g.shape for g in gather), valid.shape)
        vals = t[tuple(np.broadcast_to(g, shape) for g in gather)]
        if not np.all(valid):
            vals = np.where(np.broadcast_to(valid, shape), vals, np.zeros((), vals.dtype))
        return _L(vals, ranks)

    def _take(self, t: np.ndarray, idx: list) -> _L:
        """A gather whose indices each depend on one rank (or none), all different: one
        np.take per dimension, which never builds the full index grid."""
        a = t
        axis = 0
        labels = []
        for x, d in zip(idx, t.shape):
            ix = x.a.astype(np.int64, copy=False)
            if d == 1:  # a size-1 dimension broadcasts
                ix = np.zeros_like(ix)
            plain = ix.ndim == 1 and ix.size == d and d > 0 and ix[0] == 0 and np.all(np.diff(ix) == 1)
            if not plain:
                ok = (ix >= 0) & (ix < d)
                a = np.take(a, np.where(ok, ix, 0), axis=axis)
                if not np.all(ok):  # reads outside the tensor are 0
                    shape = [1] * a.ndim
                    if ix.ndim:
                        shape[axis] = ix.size
                        a = np.where(ok.reshape(shape), a, np.zeros((), a.dtype))
                    else:
                        a = np.zeros_like(a)
            if x.ranks:
                labels.append(x.ranks[0])
                axis += 1
        return _L(a, tuple(labels))

    def reduce(self, s: Statement) -> _L:
        red = list(s.ranks)
        factors = _product_factors(s.expr) if s.reduce == "sum" else None
        if factors is not None and len(factors) >= 2:
            xs = []
            for f, inverse in factors:
                x = self.ev(f)
                a = 1.0 / x.a if inverse else x.a
                # einsum does not broadcast size-1 axes: drop them (they are added back below).
                keep = [k for k, r in enumerate(x.ranks) if a.shape[k] != 1 or self.extent(r) == 1]
                a = a.reshape([a.shape[k] for k in keep])
                xs.append(_L(a.astype(self.work, copy=False), tuple(x.ranks[k] for k in keep)))
            letters = {r: chr(ord("a") + k) for k, r in enumerate(_union(*xs))}
            out_ranks = tuple(r for r in _union(*xs) if r not in red)
            spec = ",".join("".join(letters[r] for r in x.ranks) for x in xs)
            spec += "->" + "".join(letters[r] for r in out_ranks)
            out = _L(np.einsum(spec, *(x.a for x in xs), optimize=True), out_ranks)  # BLAS where it can
            present = set(_union(*xs))
        else:
            x = self.ev(s.expr)
            axes = tuple(k for k, r in enumerate(x.ranks) if r in red)
            fn = {"sum": np.sum, "max": np.max, "min": np.min}[s.reduce]
            a = np.broadcast_to(x.a, tuple(self.extent(r) if r in red else d for r, d in zip(x.ranks, x.a.shape)))
            if a.size == 0 and s.reduce != "sum":
                ident = -np.inf if s.reduce == "max" else np.inf
                shape = tuple(d for k, d in enumerate(a.shape) if k not in axes)
                out = _L(np.full(shape, ident, self.work), tuple(r for r in x.ranks if r not in red))
            else:
                out = _L(fn(a, axis=axes), tuple(r for r in x.ranks if r not in red))
            present = set(x.ranks)
        if s.reduce == "sum":
            for r in red:
                if r not in present:  # a sum of a value constant along r
                    out = _L(out.a * self.extent(r), out.ranks)
        return out

    # statements
    def run_statement(self, s: Statement) -> None:
        self.stmt = s
        self.ranks = statement_ranks(s)
        val = self.reduce(s) if s.reduce else self.ev(s.expr)
        target = self.tensors.get(s.tensor)
        if target is None:
            target = np.zeros(self.tensor_shape(s.tensor), self.work)
            self.tensors[s.tensor] = target
        where: list = []
        out_free: list[str] = []
        for i in s.indices:
            if isinstance(i, Name) and _is_rank_name(i.name) and i.name not in self.fixed:
                where.append(slice(0, self.extent(i.name)))
                out_free.append(i.name)
            else:
                v = self.ev(i)
                if v.ranks:
                    self.fail(f"output index {format_expr(i)!r} is not a single position")
                where.append(int(v.a))
        extra = [r for r in val.ranks if r not in out_free]
        if extra:
            self.fail(f"the value depends on rank(s) {extra} that are not on the left")
        target[tuple(where)] = _align(val, tuple(out_free))

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        shape: list[int] | None = None
        saved = self.fixed
        self.fixed = {}
        try:
            for s in self.c.tensor_statements:
                if s.tensor != name:
                    continue
                dims = []
                for i in s.indices:
                    if isinstance(i, Name) and _is_rank_name(i.name):
                        dims.append(self.extent(i.name))
                    elif isinstance(i, Binary) and isinstance(i.left, Name) and _is_rank_name(i.left.name):
                        dims.append(self.extent(i.left.name) + i.right.value)
                    else:
                        dims.append(int(self.ev(i).a) + 1)
                if shape is not None and len(shape) != len(dims):
                    self.fail(f"{name} is written with {len(shape)} and {len(dims)} indices")
                shape = dims if shape is None else [max(a, b) for a, b in zip(shape, dims)]
        finally:
            self.fixed = saved
        return tuple(shape or ())


def _product_factors(e) -> list[tuple[object, bool]] | None:
    """The factors of a top-level product/quotient chain: [(expr, is_divisor)]."""
    if isinstance(e, Binary) and e.op in ("*", "/"):
        left = _product_factors(e.left) or [(e.left, False)]
        right = _product_factors(e.right) or [(e.right, False)]
        if e.op == "/":
            right = [(f, not inv) for f, inv in right]
        return left + right
    return None


def evaluate(cascade: Cascade | str | tuple | list, **bindings) -> np.ndarray:
    """Evaluates a cascade with numpy; returns its output tensor (in the work dtype: f64 if
    an input is f64, else f32). `bindings` are the input arrays by tensor name, scalar
    parameters (`scale=0.125`) and sizes (`G=2`); extra bindings are ignored. Extents of
    ranks come from the inputs' dimensions (rank x binds size X), size statements and
    bindings. Iterative ranks are run one position at a time (see the module docstring)."""
    c = cascade if isinstance(cascade, Cascade) else parse_cascade(cascade)
    inputs = set(c.inputs)
    arrays = {k: np.asarray(v) for k, v in bindings.items() if k in inputs and v is not None}
    params = {k: v for k, v in bindings.items() if k not in inputs and v is not None}
    missing = [t for t in c.inputs if t not in arrays]
    if missing:
        raise CascadeError(f"input tensor(s) {', '.join(missing)} are not bound")
    work = np.dtype(np.float64) if any(arrays[t].dtype == np.float64 for t in c.inputs) else np.dtype(np.float32)
    arrays = {t: arrays[t].astype(work, copy=False) for t in c.inputs}
    env = _Env(c, arrays, params, work)
    # Bind extents from the inputs' plain-rank dimensions.
    for s in c.tensor_statements:
        for a in _accesses(s.expr):
            if a.tensor in arrays:
                t = arrays[a.tensor]
                if t.ndim != len(a.indices):
                    raise CascadeError(
                        f"{a.tensor} has {t.ndim} dims, but is indexed with {len(a.indices)} in {str(s)!r}"
                    )
                for i, d in zip(a.indices, t.shape):
                    if isinstance(i, Name) and _is_rank_name(i.name):
                        env.stmt = s
                        env.bind_size(i.name.upper(), d, f"{a.tensor}")
    env.stmt = None
    iterative = c.iterative_ranks
    stmts = list(c.statements)
    k = 0
    with np.errstate(all="ignore"):
        while k < len(stmts):
            s = stmts[k]
            if isinstance(s, SizeDef):
                env.stmt = s
                v = env.ev(s.expr).a
                if float(v) != int(v):
                    raise CascadeError(f"size {s.name} = {float(v)} is not an integer in {str(s)!r}")
                env.sizes[s.name] = int(v)
                k += 1
                continue
            loop = [r for r in s.out_ranks if r in iterative]
            if not loop:
                env.run_statement(s)
                k += 1
                continue
            r = loop[0]
            end = k
            while end < len(stmts) and isinstance(stmts[end], Statement) and r in stmts[end].out_ranks:
                end += 1
            env.ranks = {r}
            extent = env.extent(r)
            for s2 in stmts[k:end]:  # allocate before the loop (shapes do not depend on position)
                if s2.tensor not in env.tensors:
                    env.tensors[s2.tensor] = np.zeros(env.tensor_shape(s2.tensor), work)
            for pos in range(extent):
                env.fixed = {r: pos}
                for s2 in stmts[k:end]:
                    env.run_statement(s2)
            env.fixed = {}
            k = end
    return env.tensors[c.output]


# -- pass counting -------------------------------------------------------------------


def _in_family(rank: str, family: str) -> bool:
    return rank == family or (rank.startswith(family) and rank[len(family) :].isdigit())


def count_passes(cascade: Cascade | str | tuple | list, rank: str = "m") -> int:
    """FuseMax's pass count over `rank` (and its pieces rank0, rank1...): a pass is one
    traversal of the rank. A statement that iterates over the rank and reads a value that
    needs a finished traversal (a full reduction over the rank, or the last element of an
    iterative recurrence) starts a new pass. 0 when no statement iterates over the rank."""
    c = cascade if isinstance(cascade, Cascade) else parse_cascade(cascade)
    stmts = c.tensor_statements
    # Dimensions of each intermediate tensor that belong to the rank family.
    fam_dims: dict[str, set[int]] = {}
    for s in stmts:
        dims = fam_dims.setdefault(s.tensor, set())
        for k, i in enumerate(s.indices):
            if any(_in_family(r, rank) for r in _index_ranks(i)):
                dims.add(k)
    passes: dict[str, int] = {}
    complete: dict[str, bool] = {}
    best = 0
    for s in stmts:
        iterates = any(_in_family(r, rank) for r in statement_ranks(s))
        p = 1
        done_input = False
        for a in _accesses(s.expr):
            if a.tensor not in fam_dims:  # a cascade input: there from the start
                continue
            needs_done = complete.get(a.tensor, False)
            for k in fam_dims[a.tensor]:
                i = a.indices[k]
                if not any(_in_family(r, rank) for r in _index_ranks(i)) and i != Num(0):
                    needs_done = True  # reads the end of a traversal (e.g. RM[..., M1])
            done_input |= needs_done
            src = passes.get(a.tensor, 1)
            p = max(p, src + 1 if (needs_done and iterates) else src)
        passes[s.tensor] = max(passes.get(s.tensor, 0), p)
        has_rank = bool(fam_dims[s.tensor])
        complete[s.tensor] = not has_rank and (iterates or done_input)
        if iterates:
            best = max(best, passes[s.tensor])
    return best


# -- rewrites -------------------------------------------------------------------------


def _cascade(c) -> Cascade:
    return c if isinstance(c, Cascade) else parse_cascade(c)


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    k = 2
    while name in taken:
        name = f"{base}{k}"
        k += 1
    taken.add(name)
    return name


def _rebuild(e, num, den):
    for f in num:
        e = f if e is None else Binary("*", e, f)
    if e is None:
        e = Num(1)
    for f in den:
        e = Binary("/", e, f)
    return e


def to_two_pass(cascade) -> Cascade:
    """Hoists factors that do not depend on the reduced ranks out of every sum-reduction
    (sum_m X*Y/Z = (sum_m X*Y) / Z when Z does not vary along m): the "divide at the end"
    form. The new partial sum takes the name of the output plus "N"."""
    c = _cascade(cascade)
    taken = c.written | set(c.inputs) | set(c.sizes)
    out: list = []
    for s in c.statements:
        if not isinstance(s, Statement) or s.reduce != "sum":
            out.append(s)
            continue
        factors = _product_factors(s.expr)
        if not factors:
            out.append(s)
            continue
        red = set(s.ranks)
        ranks = statement_ranks(s)  # a rank used as a value (where(m <= p, ...)) counts too
        hoist = [(f, inv) for f, inv in factors if not (_names(f) & ranks & red)]
        keep = [(f, inv) for f, inv in factors if _names(f) & ranks & red]
        if not hoist or not keep:
            out.append(s)
            continue
        inner = _rebuild(None, [f for f, inv in keep if not inv], [f for f, inv in keep if inv])
        inner_ranks = _names(inner) & ranks
        idx = tuple(i for i in s.indices if set(_index_ranks(i)) & inner_ranks or not _index_ranks(i))
        name = _fresh(s.tensor + "N", taken)
        partial = Statement(name, idx, inner, "sum", s.ranks)
        rest = _rebuild(Access(name, idx), [f for f, inv in hoist if not inv], [f for f, inv in hoist if inv])
        out += [partial, Statement(s.tensor, s.indices, rest)]
    return Cascade(tuple(out))


def _sub_rank(e, rank: str, repl):
    """Replaces rank name `rank` by expression `repl` everywhere in `e`."""
    return _map(e, lambda x: repl if isinstance(x, Name) and x.name == rank else x)


def _retile_access(e, intermediates: set[str], rank: str, new: tuple, repl):
    """In `e`: an index that is exactly `rank` in an access of an intermediate tensor
    becomes the indices `new` (the tensor gains dimensions); every other occurrence of
    the rank (input indices, values) becomes the expression `repl`."""
    if isinstance(e, Access) and e.tensor in intermediates:
        idx: list = []
        for i in e.indices:
            idx += [Name(n) for n in new] if i == Name(rank) else [_retile_access(i, intermediates, rank, new, repl)]
        return Access(e.tensor, tuple(idx))
    if isinstance(e, Name):
        return repl if e.name == rank else e
    if isinstance(e, Access):
        return Access(e.tensor, tuple(_retile_access(i, intermediates, rank, new, repl) for i in e.indices))
    if isinstance(e, Unary):
        return Unary(e.op, _retile_access(e.arg, intermediates, rank, new, repl))
    if isinstance(e, Binary):
        return Binary(e.op, *(_retile_access(x, intermediates, rank, new, repl) for x in (e.left, e.right)))
    if isinstance(e, Call):
        return Call(e.fn, tuple(_retile_access(a, intermediates, rank, new, repl) for a in e.args))
    return e


def _idx(ranks) -> str:
    return ",".join(ranks)


def _two_pass_epilogue(rows, f, logits, value_access, out) -> list[str]:
    r = _idx(rows)
    safe_gm = f"where(GM[{r}] == -inf, 0, GM[{r}])"
    return [
        f"GM[{r}] = max(m) {logits}[{r},m]",
        f"SN[{r},m] = exp({logits}[{r},m] - {safe_gm})",
        f"SD[{r}] = sum(m) SN[{r},m]",
        f"{out}N[{r},{f}] = sum(m) SN[{r},m] * {value_access}",
        f"{out}[{r},{f}] = {out}N[{r},{f}] / where(SD[{r}] == 0, 1, SD[{r}])",
    ]


def _one_pass_epilogue(rows, f, logits, value_access, out, final=True) -> list[str]:
    """The online softmax over tiles m1 of M0 keys (rows may include the chunk rank c)."""
    r = _idx(rows)
    lines = [
        f"LM[{r},m1] = max(m0) {logits}[{r},m1,m0]",
        f"RM[{r},m1+1] = max(RM[{r},m1], LM[{r},m1])",
        f"SM[{r},m1] = where(RM[{r},m1+1] == -inf, 0, RM[{r},m1+1])",
        f"SLN[{r},m1,m0] = exp({logits}[{r},m1,m0] - SM[{r},m1])",
        f"SLD[{r},m1] = sum(m0) SLN[{r},m1,m0]",
        f"SLNV[{r},m1,{f}] = sum(m0) SLN[{r},m1,m0] * {value_access}",
        f"PRM[{r},m1] = exp(RM[{r},m1] - SM[{r},m1])",
        f"RD[{r},m1+1] = RD[{r},m1] * PRM[{r},m1] + SLD[{r},m1]",
        f"RNV[{r},m1+1,{f}] = RNV[{r},m1,{f}] * PRM[{r},m1] + SLNV[{r},m1,{f}]",
    ]
    if final:
        lines.append(f"{out}[{r},{f}] = RNV[{r},M1,{f}] / where(RD[{r},M1] == 0, 1, RD[{r},M1])")
    return lines


def _one_pass_inits(rows, f) -> list[str]:
    r = _idx(rows)
    return [f"RM[{r},0] = -inf", f"RD[{r},0] = 0", f"RNV[{r},0,{f}] = 0"]


def _split_merge(rows, f, out) -> list[str]:
    r = _idx(rows)
    rc = _idx(list(rows) + ["c"])
    return [
        f"GX[{r}] = max(c) RM[{rc},M1]",
        f"W[{rc}] = exp(RM[{rc},M1] - where(GX[{r}] == -inf, 0, GX[{r}]))",
        f"DX[{r}] = sum(c) RD[{rc},M1] * W[{rc}]",
        f"NX[{r},{f}] = sum(c) RNV[{rc},M1,{f}] * W[{rc}]",
        f"{out}[{r},{f}] = NX[{r},{f}] / where(DX[{r}] == 0, 1, DX[{r}])",
    ]


_EPILOGUE_NAMES = ("GM", "SN", "SD", "LM", "RM", "SM", "SLN", "SLD", "SLNV", "PRM", "RD", "RNV", "GX", "W", "DX", "NX")


def _split_prologue(c: Cascade, reduce_name: str, what: str):
    """(size defs, prologue statements, the statement reducing the logits with max)."""
    stmts = list(c.statements)
    for k, s in enumerate(stmts):
        if isinstance(s, Statement) and s.tensor == reduce_name:
            head = stmts[:k]
            return [x for x in head if isinstance(x, SizeDef)], [x for x in head if isinstance(x, Statement)], k
    raise CascadeError(f"{what}: no {reduce_name} statement (the softmax max) in the cascade")


def _check_epilogue(actual: list, expected: list[str], what: str) -> None:
    exp = [parse_statement(x) for x in expected]
    if [str(x) for x in actual] != [str(x) for x in exp]:
        got = "\n  ".join(str(x) for x in actual)
        want = "\n  ".join(str(x) for x in exp)
        raise CascadeError(
            f"{what}: the softmax part is not the form this rewrite knows:\n  {got}\nexpected:\n  {want}"
        )


def _parts_after_max(c: Cascade, max_stmt: Statement):
    """rows, logits name, f rank, value access, output name from a softmax epilogue."""
    if not (isinstance(max_stmt.expr, Access)):
        raise CascadeError(f"the max statement {str(max_stmt)!r} should read the logits tensor directly")
    out_stmt = c.tensor_statements[-1]
    f = out_stmt.out_ranks[-1]
    value = None
    for s in c.tensor_statements:
        if s.tensor in ("SLNV",) or (s.tensor == out_stmt.tensor + "N"):
            for fac, _ in _product_factors(s.expr) or []:
                if isinstance(fac, Access) and fac.tensor in c.inputs:
                    value = fac
    if value is None:
        raise CascadeError("no value access (a factor of an input tensor in the numerator) found")
    return list(max_stmt.out_ranks), max_stmt.expr.tensor, f, value, out_stmt.tensor


def to_one_pass(cascade, tile: int) -> Cascade:
    """The 2-pass attention cascade -> the 1-pass (online softmax) cascade with key tiles of
    `tile` (m = m1*M0 + m0, M0 = tile, M1 = ceil(M / M0)). The statements computing the
    logits (anything before the max over m) are re-indexed over (m1, m0), keys past M are
    masked with -inf; the softmax part must be the 2-pass form `attention_cascade` builds."""
    if not isinstance(tile, int) or tile < 1:
        raise CascadeError(f"to_one_pass: tile must be a positive int, got {tile!r}")
    c = _cascade(cascade)
    sizes, prologue, k = _split_prologue(c, "GM", "to_one_pass")
    gm = c.statements[k]
    rows, logits, f, value, out = _parts_after_max(c, gm)
    _check_epilogue(list(c.statements[k:]), _two_pass_epilogue(rows, f, logits, format_expr(value), out), "to_one_pass")
    if any(s.tensor in _EPILOGUE_NAMES for s in prologue):
        raise CascadeError("to_one_pass: a logits statement uses a name the online softmax needs")
    inter = {s.tensor for s in prologue}
    key = parse_statement("X[0] = m1*M0+m0").expr
    new_prologue = []
    for s in prologue:
        if "m" in s.ranks:
            raise CascadeError(f"to_one_pass: the logits statement {str(s)!r} reduces over the key rank")
        idx = []
        for i in s.indices:
            idx += [Name("m1"), Name("m0")] if i == Name("m") else [_sub_rank(i, "m", key)]
        expr = _retile_access(s.expr, inter, "m", ("m1", "m0"), key)
        new_prologue.append(Statement(s.tensor, tuple(idx), expr, s.reduce, s.ranks))
    last = new_prologue[-1]
    if last.tensor != logits:
        raise CascadeError(f"to_one_pass: the logits {logits} should be the last statement before the max")
    guard = parse_statement("X[0] = m1*M0+m0 < M").expr
    if last.reduce is None:
        e = last.expr
        if isinstance(e, Call) and e.fn == "where" and e.args[2] == Num(-math.inf):
            # Already a masked map (causal): one condition for both masks.
            new_prologue[-1] = replace(last, expr=Call("where", (Binary("and", guard, e.args[0]), *e.args[1:])))
        else:
            new_prologue[-1] = replace(last, expr=Call("where", (guard, e, Num(-math.inf))))
    else:
        taken = c.written | set(c.inputs)
        raw = _fresh(logits + "R", taken)
        new_prologue[-1] = replace(last, tensor=raw)
        new_prologue.append(
            Statement(logits, last.indices, Call("where", (guard, Access(raw, last.indices), Num(-math.inf))))
        )
    value1 = _sub_rank(value, "m", key)
    head = [SizeDef("M0", Num(tile)), parse_statement("M1 = ceil(M / M0)")]
    lines = [str(x) for x in sizes + head] + _one_pass_inits(rows, f)
    lines += [str(x) for x in new_prologue] + _one_pass_epilogue(rows, f, logits, format_expr(value1), out)
    return parse_cascade(lines)


def split_kv(cascade, splits: int) -> Cascade:
    """The 1-pass cascade -> C = `splits` chunks of the key tiles (m1 -> c*M1 + m1, with
    M1 = ceil(ceil(M / M0) / C) tiles per chunk), each with its own running (max,
    denominator, numerator), merged at the end by the associative rescaled sum
    (LeanAttention / FlashDecoding). The chunk rank `c` is not part of the key rank family:
    the merge reads the per-chunk results, not the keys."""
    if not isinstance(splits, int) or splits < 1:
        raise CascadeError(f"split_kv: splits must be a positive int, got {splits!r}")
    c = _cascade(cascade)
    sizes, prologue, k = _split_prologue(c, "LM", "split_kv")
    inits = [s for s in prologue if s.tensor in ("RM", "RD", "RNV")]
    prologue = [s for s in prologue if s.tensor not in ("RM", "RD", "RNV")]
    lm = c.statements[k]
    rows, logits, f, value, out = _parts_after_max(c, lm)
    rows = [r for r in rows if r != "m1"]
    _check_epilogue(list(c.statements[k:]), _one_pass_epilogue(rows, f, logits, format_expr(value), out), "split_kv")
    _check_epilogue(inits, _one_pass_inits(rows, f), "split_kv")
    tile = c.sizes.get("M0")
    if not isinstance(tile, Num):
        raise CascadeError("split_kv: the cascade has no tile size M0")
    inter = {s.tensor for s in prologue}
    chunked = parse_statement("X[0] = c*M1+m1").expr
    new_prologue = []
    for s in prologue:
        idx = []
        for i in s.indices:
            idx += [Name("c"), Name("m1")] if i == Name("m1") else [_sub_rank(i, "m1", chunked)]
        expr = _retile_access(s.expr, inter, "m1", ("c", "m1"), chunked)
        new_prologue.append(Statement(s.tensor, tuple(idx), expr, s.reduce, s.ranks))
    value1 = _sub_rank(value, "m1", chunked)
    rows_c = rows + ["c"]
    keep_sizes = [s for s in sizes if s.name not in ("M0", "M1", "C")]
    head = [f"C = {splits}", f"M0 = {tile.value}", "M1 = ceil(ceil(M / M0) / C)"]
    lines = [str(x) for x in keep_sizes] + head + _one_pass_inits(rows_c, f) + [str(x) for x in new_prologue]
    lines += _one_pass_epilogue(rows_c, f, logits, format_expr(value1), out, final=False)
    lines += _split_merge(rows, f, out)
    return parse_cascade(lines)


# -- builders --------------------------------------------------------------------------

CAUSAL = ("none", "top_left", "bottom_right")
FORMS = ("3-pass", "2-pass", "1-pass", "split")


def attention_cascade(
    form: str = "3-pass",
    *,
    causal: str = "none",
    has_bias: bool = False,
    grouped: bool = False,
    kv_tile: int = 64,
    kv_splits: int = 2,
) -> Cascade:
    """Softmax attention A[b,h,p,f] = softmax_m(scale * Q.K + BIAS, causal) . V as a cascade.

    form: "3-pass" (textbook), "2-pass" (`to_two_pass` of it), "1-pass" (`to_one_pass`
    with `kv_tile`), "split" (`split_kv` of the 1-pass form into `kv_splits` chunks).
    grouped: K and V have fewer heads (GQA/MQA), read at head h // G (bind G)."""
    if form not in FORMS:
        raise CascadeError(f"form {form!r} should be one of {', '.join(FORMS)}")
    if causal not in CAUSAL:
        raise CascadeError(f"causal={causal!r} should be one of {', '.join(CAUSAL)}")
    kh = "h//G" if grouped else "h"
    logits = "QK[b,h,p,m] * scale"
    if has_bias:
        logits += " + BIAS[b,h,p,m]"
    if causal == "top_left":
        logits = f"where(m <= p, {logits}, -inf)"
    elif causal == "bottom_right":
        logits = f"where(m <= p + M - P, {logits}, -inf)"
    lines = [
        f"QK[b,h,p,m] = sum(e) Q[b,h,p,e] * K[b,{kh},m,e]",
        f"S[b,h,p,m] = {logits}",
        "GM[b,h,p] = max(m) S[b,h,p,m]",
        "SN[b,h,p,m] = exp(S[b,h,p,m] - where(GM[b,h,p] == -inf, 0, GM[b,h,p]))",
        "SD[b,h,p] = sum(m) SN[b,h,p,m]",
        f"A[b,h,p,f] = sum(m) SN[b,h,p,m] * V[b,{kh},m,f] / where(SD[b,h,p] == 0, 1, SD[b,h,p])",
    ]
    c = parse_cascade(lines)
    if form == "3-pass":
        return c
    c = to_two_pass(c)
    if form == "2-pass":
        return c
    c = to_one_pass(c, kv_tile)
    if form == "1-pass":
        return c
    return split_kv(c, kv_splits)


def causal_of(cascade) -> str:
    """The causal alignment an attention cascade masks with: "top_left" when a logits map
    compares a key position `<= p`, "bottom_right" for `<= p + M - P`, else "none"."""
    c = _cascade(cascade)
    top_left, bottom_right = Name("p"), parse_statement("X[0] = p + M - P").expr
    found = "none"
    for s in c.tensor_statements:
        for x in _walk(s.expr):
            if isinstance(x, Binary) and x.op == "<=":
                if x.right == top_left:
                    found = "top_left"
                elif x.right == bottom_right:
                    found = "bottom_right"
    return found


# -- explain ----------------------------------------------------------------------------


def describe(node) -> str:
    """One line for `einfuse explain` about an `einsum_cascade` node: the pass count of the
    textbook cascade for the same attention (before lowering) and of the node's cascade."""
    a = node.attrs
    c = parse_cascade(a["cascade"])
    grouped = any(isinstance(i, Binary) for x in _accesses_of(c, "K") for i in x.indices[1:2])
    before = attention_cascade("3-pass", causal=a["causal"], has_bias=len(node.inputs) > 3, grouped=grouped)
    name = node.outputs[0].name
    return (
        f"attention cascade %{name}: {count_passes(before)}-pass -> {count_passes(c)}-pass "
        f"(kv_tile={a['kv_tile']}, kv_splits={a['kv_splits']})"
    )


def _accesses_of(c: Cascade, tensor: str) -> list[Access]:
    return [x for s in c.tensor_statements for x in _accesses(s.expr) if x.tensor == tensor]
