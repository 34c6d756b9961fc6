"""Hypothesis strategies for einfuse: dtypes, shapes, tensors, attributes and random typed graphs.

    from hypothesis import given
    from einfuse.testing.strategies import graphs

    @given(graphs(max_nodes=8))
    def test_round_trip(g): ...

`graphs()` builds valid graphs BY CONSTRUCTION (the NNSmith approach): it keeps a
pool of typed values, each with a few facts (a bound on its values, whether it is
bit-exact across correct backends), and repeatedly picks an op from the registry
whose input constraints some values in the pool can meet (or that new inputs and
constants can meet), solves the op's attributes for those operands, and lets the
op's own inference give the output type. So every generated graph:

- verifies, and runs for EVERY binding of its symbolic dims to sizes 1..SYM_MAX
  (broadcasts are by equal dims or static 1, gathers index in range, pools fit);
- stays in each op's domain (no log of a negative number, no division by a value
  near 0, no exp that overflows the dtype) when its inputs are drawn with
  `random_inputs(graph)` (each input has a value range, see `input_ranges`);
- applies discontinuous ops (floor, round, sign, comparisons, argmax, float->int
  casts...) only to bit-exact values (inputs, constants, and what exact ops such as
  relu, max, transpose or slice compute from them), so that two correct backends
  whose float arithmetic rounds differently cannot disagree by a whole step.

Ops with a recipe below are generated with solved attributes (`covered_ops()` lists
them); with generic=True any other registered op is tried too (pool operands, schema
attributes, kept when its inference accepts them), which finds inference functions
that accept invalid operands.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy
from hypothesis import strategies as st

from einfuse.errors import EinfuseError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph, Value
from einfuse.ir.ops.reduce import AXIS_REDUCTIONS
from einfuse.ir.types import DType, TensorType, dims_equal, sym

FLOAT_DTYPES = (DType.f32, DType.f16, DType.f64, DType.bf16)
ALL_DTYPES = tuple(DType)
FP8_DTYPES = (DType.f8e4m3, DType.f8e5m2, DType.f8e4m3fnuz, DType.f8e5m2fnuz, DType.f8e8m0)

# Symbolic dims of generated graphs take sizes 1..SYM_MAX when run (random_inputs);
# value bounds of reductions over symbolic dims assume this.
SYM_MAX = 4
SYMBOLS = ("B", "S", "N")

# Names that must survive printing and parsing as data.
HOSTILE_NAMES = ('a"b', "line\nbreak", "x; import os", "__import__('os')", "sp ace", "ünï", "{}", "%q", "@w", "")


def dtypes(kinds=ALL_DTYPES):
    """One of `kinds` (default: every einfuse DType)."""
    return st.sampled_from(tuple(kinds))


def names(hostile: bool = True):
    """Value / node / graph names; hostile=True mixes in quotes, newlines, code and unicode."""
    plain = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True)
    if not hostile:
        return plain
    return st.one_of(plain, st.sampled_from(HOSTILE_NAMES[:-1]), st.text(min_size=1, max_size=6))


def shapes(min_rank=0, max_rank=4, min_side=0, max_side=5, symbolic=False):
    """Shapes as tuples of ints (sizes include 0 and 1 by default) and, when
    symbolic=True, the symbols B, S, N."""
    side = st.integers(min_side, max_side)
    if symbolic:
        side = st.one_of(side, st.sampled_from([sym(s) for s in SYMBOLS]))
    return st.lists(side, min_size=min_rank, max_size=max_rank).map(tuple)


SPECIAL_VALUES = ("inf", "nan", "-0", "subnormal", "large")


def _special_pool(dtype: DType, kinds) -> list[float]:
    info = _finfo(dtype)
    pool: list[float] = []
    if "inf" in kinds and _has_inf(dtype):
        pool += [math.inf, -math.inf]
    if "nan" in kinds and dtype != DType.f8e8m0:
        pool += [math.nan]
    if "-0" in kinds and dtype not in (DType.f8e4m3fnuz, DType.f8e5m2fnuz, DType.f8e8m0):
        pool += [-0.0]
    if "subnormal" in kinds and dtype != DType.f8e8m0:
        tiny = float(info.smallest_subnormal)
        pool += [tiny, -tiny, tiny * 3]
    if "large" in kinds:
        big = float(info.max)
        pool += [big, -big, big / 2] if dtype != DType.f8e8m0 else [big]
    return pool


def _has_inf(dtype: DType) -> bool:
    return dtype in (DType.f64, DType.f32, DType.f16, DType.bf16, DType.f8e5m2)


def _finfo(dtype: DType):
    import ml_dtypes

    if dtype in (DType.f64, DType.f32, DType.f16):
        return np.finfo(dtype.np)
    return ml_dtypes.finfo(dtype.np)


@st.composite
def tensors(draw, shape, dtype: DType, special=False, lo: float | None = None, hi: float | None = None):
    """A numpy array of static `shape` and `dtype`.

    Floats are standard normal, or uniform in [lo, hi] when given; integers uniform in
    [-100, 100] (clipped to the type) or [lo, hi]. special=True (or a subset of
    SPECIAL_VALUES: "inf", "nan", "-0", "subnormal", "large") mixes those values in
    for float types (only those the dtype can hold)."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == DType.bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.is_int:
        info = np.iinfo(dtype.np)
        a = int(lo) if lo is not None else -100
        b = int(hi) if hi is not None else 100
        a, b = max(info.min, a), min(info.max, b)
        return rng.integers(a, b + 1, size=shape, dtype=np.int64 if dtype != DType.u64 else np.uint64).astype(dtype.np)
    if lo is not None and hi is not None:
        x = rng.uniform(lo, hi, n)
    else:
        x = rng.standard_normal(n)
    if dtype == DType.f8e8m0:
        x = np.abs(x) + 2.0**-8  # e8m0 holds powers of two only: no sign, no zero
    if special and n:
        kinds = SPECIAL_VALUES if special is True else tuple(special)
        pool = _special_pool(dtype, kinds)
        if pool:
            picks = draw(st.lists(st.sampled_from(pool), max_size=n))
            x[: len(picks)] = picks
            rng.shuffle(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.reshape(shape).astype(dtype.np)


# -- value facts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the generator knows about a value: all its elements lie in [lo, hi], and
    `exact`: every correct backend computes it bit for bit (so discontinuous ops may
    read it)."""

    lo: float = -math.inf
    hi: float = math.inf
    exact: bool = False

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def within(self, lo: float, hi: float) -> bool:
        return self.lo >= lo and self.hi <= hi


UNKNOWN = Facts()

# Input ranges the generator gives graph inputs of a float type: each is recorded per
# graph (input_ranges) and honoured by random_inputs.
_FLOAT_RANGES = ((-3.0, 3.0), (-3.0, 3.0), (0.25, 3.0), (-0.9, 0.9), (1.0, 4.0))
_INT_RANGES = ((-8, 8), (0, 8))
_INPUT_RANGES: weakref.WeakKeyDictionary[Graph, dict[str, tuple[float, float]]] = weakref.WeakKeyDictionary()


def input_ranges(graph: Graph) -> dict[str, tuple[float, float]]:
    """{input name: (lo, hi)} the generator promised for `graph`'s inputs (empty for a
    graph it did not make: random_inputs then uses (-3, 3) for floats)."""
    return dict(_INPUT_RANGES.get(graph, {}))


def set_input_ranges(graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
    """Records input value ranges for `graph` (the shrinker keeps them across rewrites)."""
    _INPUT_RANGES[graph] = dict(ranges)


def concrete_shape(shape, dims: dict) -> tuple[int, ...]:
    """`shape` with its symbols replaced by `dims` ({name or Symbol: size})."""
    subs = {(sym(k) if isinstance(k, str) else k): v for k, v in dims.items()}
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            v = sympy.sympify(d).subs(subs)
            if not v.is_Integer:
                raise ValueError(f"dimension {d} is not fixed by {dims}")
            out.append(int(v))
    return tuple(out)


def symbols_of(graph: Graph) -> list[str]:
    names_ = set()
    for v in graph.inputs:
        names_ |= {s.name for s in v.type.symbols()}
    return sorted(names_)


def random_inputs(graph: Graph, seed: int = 0, dims: dict | None = None, special=False) -> dict[str, np.ndarray]:
    """Seeded inputs for `graph`: symbolic dims from `dims` (default: each a size
    in 1..SYM_MAX drawn from the seed), values in each input's recorded range."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    for s in symbols_of(graph):
        dims.setdefault(s, int(rng.integers(1, SYM_MAX + 1)))
    ranges = input_ranges(graph)
    out = {}
    for v in graph.inputs:
        shape = concrete_shape(v.shape, dims)
        lo, hi = ranges.get(v.name, (-3.0, 3.0) if v.dtype.is_float else (-8, 8))
        out[v.name] = _array(rng, shape, v.dtype, lo, hi, special)
    return out


def _array(rng, shape, dtype: DType, lo, hi, special=False) -> np.ndarray:
    if dtype == DType.bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.is_int:
        info = np.iinfo(dtype.np)
        a, b = max(int(lo), int(info.min)), min(int(hi), int(info.max))
        return rng.integers(a, b + 1, size=shape).astype(dtype.np)
    x = rng.uniform(lo, hi, size=shape)
    if special and x.size:
        pool = _special_pool(dtype, SPECIAL_VALUES if special is True else tuple(special))
        if pool:
            flat = x.reshape(-1)
            k = int(rng.integers(1, flat.size + 1))
            flat[rng.choice(flat.size, k, replace=False)] = rng.choice(pool, k)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(dtype.np)


# -- the generator ----------------------------------------------------------------


class Reject(Exception):
    """A recipe cannot place its op on this pool: the generator tries another op."""


class GraphGen:
    """The state while one graph is built: the graph, its value pool with facts, and
    helpers recipes use to pick operands or make new inputs and constants."""

    def __init__(
        self, draw, graph: Graph, *, dtype: DType, symbolic: bool, hostile: bool, max_inputs: int, zero_sizes: bool
    ):
        self.draw = draw
        self.graph = graph
        self.dtype = dtype  # the graph's main element type (its inputs have it)
        self.symbolic = symbolic
        self.hostile = hostile
        self.max_inputs = max_inputs
        self.zero_sizes = zero_sizes
        self.pool: list[Value] = []
        self.facts: dict[int, Facts] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self._pending: list[Value] = []  # leaves made by the recipe being tried

    # -- names ---------------------------------------------------------------

    def fresh_name(self) -> str:
        n = self.draw(names(self.hostile))
        while not n or n in self.graph._names:
            n = (n or "v") + "_"
        return n

    # -- pool ----------------------------------------------------------------

    def fact(self, v: Value) -> Facts:
        return self.facts.get(id(v), UNKNOWN)

    def candidates(self, pred: Callable[[Value, Facts], bool] | None = None, *, dtype=None, float_only=False):
        out = []
        for v in self.pool:
            if dtype is not None and v.dtype != dtype:
                continue
            if float_only and not v.dtype.is_float:
                continue
            if pred is None or pred(v, self.fact(v)):
                out.append(v)
        return out

    def pick(self, pred=None, *, dtype=None, float_only=False) -> Value | None:
        cands = self.candidates(pred, dtype=dtype, float_only=float_only)
        if not cands:
            return None
        if len(cands) > 2 and self.draw(st.booleans()):
            cands = cands[-2:]  # favour recent values: deeper chains, like real models
        return self.draw(st.sampled_from(cands))

    def operand(self, pred=None, *, dtype=None, float_only=True, shape=None, lo=None, hi=None) -> Value:
        """A pool value meeting `pred` (a new leaf in [lo, hi] of `shape` when none does,
        or now and then anyway)."""
        want = dtype if dtype is not None else (self.dtype if float_only else None)
        v = self.pick(pred, dtype=want, float_only=float_only)
        if v is None or self.draw(st.integers(0, 9)) == 0:
            leaf_dtype = want or self.dtype
            if float_only and not leaf_dtype.is_float:
                raise Reject("no float values")
            leaf = self.leaf(shape if shape is not None else self.new_shape(), leaf_dtype, lo, hi)
            if pred is not None and not pred(leaf, self.fact(leaf)):
                raise Reject("a new leaf does not meet the constraint either")
            return leaf
        return v

    # -- leaves ----------------------------------------------------------------

    def new_shape(self, min_rank=1, max_rank=3, min_side=1, max_side=4) -> tuple:
        side = st.integers(min_side, max_side)
        if self.zero_sizes and min_side <= 1:
            side = st.one_of(side, st.just(0)) if self.draw(st.integers(0, 15)) == 0 else side
        if self.symbolic:
            side = st.one_of(side, st.sampled_from([sym(s) for s in SYMBOLS]))
        return tuple(self.draw(st.lists(side, min_size=min_rank, max_size=max_rank)))

    def leaf(self, shape, dtype: DType, lo=None, hi=None, *, const: bool | None = None) -> Value:
        """A new graph input (values in a drawn or given range) or, for a static shape,
        maybe a constant."""
        static = all(isinstance(d, int) for d in shape)
        n_inputs = len(self.graph.inputs)
        if const is None:
            const = static and (n_inputs >= self.max_inputs or self.draw(st.booleans()))
        if const and not static:
            raise Reject("a constant needs a static shape")
        if not const and n_inputs >= self.max_inputs:
            raise Reject("no more graph inputs")
        if lo is None or hi is None:
            if dtype.is_float:
                lo, hi = self.draw(st.sampled_from(_FLOAT_RANGES))
            elif dtype == DType.bool:
                lo, hi = 0, 1
            else:
                lo, hi = self.draw(st.sampled_from(_INT_RANGES))
                if not dtype.is_signed:
                    lo = max(lo, 0)
        if const:
            seed = self.draw(st.integers(0, 2**32 - 1))
            arr = _array(np.random.default_rng(seed), tuple(shape), dtype, lo, hi)
            v = self.graph.add_constant(self.fresh_name(), arr)
            if dtype.is_float and arr.size:
                f = arr.astype(np.float64)
                lo, hi = float(f.min()), float(f.max())
        else:
            v = self.graph.add_input(self.fresh_name(), TensorType(tuple(shape), dtype))
            self.ranges[v.name] = (lo, hi)
        self.facts[id(v)] = Facts(float(lo), float(hi), True)
        self._pending.append(v)
        return v

    def const(self, array: np.ndarray, exact: bool = True) -> Value:
        v = self.graph.add_constant(self.fresh_name(), np.asarray(array))
        f = np.asarray(array).astype(np.float64) if np.asarray(array).size else np.zeros(1)
        self.facts[id(v)] = Facts(float(f.min()), float(f.max()), exact)
        self._pending.append(v)
        return v

    def rollback(self) -> None:
        """Removes the leaves a failed recipe made."""
        g = self.graph
        for v in self._pending:
            if v.is_const:
                g.constants.pop(v.name, None)
            else:
                g.inputs = [x for x in g.inputs if x is not v]
                self.ranges.pop(v.name, None)
            g._names.discard(v.name)
            self.facts.pop(id(v), None)
        self._pending = []

    def commit(self) -> None:
        for v in self._pending:
            if not v.is_const:
                self.pool.append(v)
            elif self.draw(st.integers(0, 3)) == 0:
                self.pool.append(v)  # constants join the pool now and then
        self._pending = []

    # -- draws ---------------------------------------------------------------------

    def integers(self, lo, hi) -> int:
        return self.draw(st.integers(lo, hi))

    def boolean(self) -> bool:
        return self.draw(st.booleans())

    def choice(self, items):
        return self.draw(st.sampled_from(tuple(items)))

    def sym_max(self, d) -> int:
        """Largest size `d` takes when run (symbols are at most SYM_MAX)."""
        if isinstance(d, int):
            return d
        return int(sympy.sympify(d).subs({s: SYM_MAX for s in sympy.sympify(d).free_symbols}))

    def numel_max(self, shape) -> int:
        return math.prod(max(self.sym_max(d), 1) for d in shape)


# A recipe places one op: it returns (operands, attrs, output facts or None) or raises Reject.
Recipe = Callable[[GraphGen, str], tuple]
RECIPES: dict[str, Recipe] = {}


def recipe(*ops: str):
    def deco(fn):
        for op in ops:
            RECIPES[op] = fn
        return fn

    return deco


def covered_ops() -> frozenset[str]:
    """Ops the generator places with solved attributes (others are tried generically)."""
    return frozenset(RECIPES)


# -- helpers for recipes ---------------------------------------------------------------


def _static(d) -> bool:
    return isinstance(d, int)


def _bcast_ok(a: tuple, b: tuple) -> bool:
    """a and b broadcast for every binding of their symbols."""
    for x, y in zip(reversed(a), reversed(b)):
        if (_static(x) and x == 1) or (_static(y) and y == 1):
            continue
        if not dims_equal(x, y):
            return False
    return True


def _partner_shape(gen: GraphGen, shape: tuple) -> tuple:
    """A shape that broadcasts with `shape` for every binding: a suffix of it with some
    dims set to 1, sometimes with a leading 1 or a dim widening one of its 1s."""
    k = gen.integers(0, len(shape))
    out = []
    for d in shape[len(shape) - k :]:
        if _static(d) and d == 1 and gen.integers(0, 3) == 0:
            out.append(gen.integers(2, 3))
        elif gen.integers(0, 3) == 0:
            out.append(1)
        else:
            out.append(d)
    if gen.integers(0, 5) == 0:
        out.insert(0, 1)
    return tuple(out)


def _out_float_ok(gen: GraphGen, facts: Facts, dtype: DType) -> None:
    """Rejects an op whose result could overflow (or come near) the dtype's range."""
    if not dtype.is_float:
        return
    if facts.bounded and facts.mag > float(_finfo(dtype).max) / 64:
        raise Reject("result may overflow")


def _sample_range(op: str, attrs: dict, ranges: list[tuple[float, float]], dtype: DType) -> tuple[float, float]:
    """Bounds of an elementwise op over input boxes, by evaluating its reference on a
    grid (plus a margin): a heuristic that is exact for monotone functions."""
    from einfuse.ir.ops import get_op

    d = get_op(op)
    n = {1: 257, 2: 33, 3: 9}.get(len(ranges), 5)
    grids = [np.linspace(lo, hi, n) for lo, hi in ranges]
    mesh = np.meshgrid(*grids, indexing="ij")
    np_dtype = dtype.np if dtype in (DType.f32, DType.f64, DType.f16) else np.float32
    args = [m.reshape(-1).astype(np_dtype) for m in mesh]
    with np.errstate(all="ignore"):
        y = np.asarray(d.reference(*args, **d.with_defaults(attrs))).astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise Reject(f"{op} leaves its domain on these inputs")
    lo, hi = float(y.min()), float(y.max())
    margin = 0.02 * (hi - lo) + 1e-3
    return lo - margin, hi + margin


# -- elementwise recipes ------------------------------------------------------------

# Unary float ops: their domain (on the input) and attribute draws. Discontinuous ops
# need an exact input; bounded-output ops accept unbounded inputs.
_INF = math.inf
_UNARY_DOMAIN = {
    "abs": (-_INF, _INF),
    "neg": (-_INF, _INF),
    "relu": (-_INF, _INF),
    "identity": (-_INF, _INF),
    "sigmoid": (-_INF, _INF),
    "tanh": (-_INF, _INF),
    "atan": (-_INF, _INF),
    "erf": (-_INF, _INF),
    "softsign": (-_INF, _INF),
    "hard_sigmoid": (-_INF, _INF),
    "sin": (-50, 50),
    "cos": (-50, 50),
    "asinh": (-1e6, 1e6),
    "elu": (-80, 1e30),
    "selu": (-80, 1e30),
    "celu": (-80, 1e30),
    "leaky_relu": (-1e30, 1e30),
    "softplus": (-80, 60),
    "mish": (-80, 60),
    "gelu": (-1e4, 1e4),
    "hard_swish": (-1e15, 1e15),
    "thresholded_relu": (-_INF, _INF),
    "shrink": (-1e30, 1e30),
    "exp": (-80, 10),
    "sinh": (-10, 10),
    "cosh": (-10, 10),
    "tan": (-1.2, 1.2),
    "log": (1e-3, 1e30),
    "sqrt": (0.0, 1e30),
    "reciprocal": (0.1, 1e30),
    "asin": (-1.0, 1.0),
    "acos": (-1.0, 1.0),
    "atanh": (-0.9, 0.9),
    "acosh": (1.0, 1e6),
    "floor": (-1e6, 1e6),
    "ceil": (-1e6, 1e6),
    "round": (-1e6, 1e6),
    "sign": (-_INF, _INF),
}
_BOUNDED_OUT = {"sigmoid", "tanh", "atan", "erf", "softsign", "hard_sigmoid", "sin", "cos"}
_DISCONTINUOUS = {"floor", "ceil", "round", "sign", "thresholded_relu", "shrink"}
_EXACT_UNARY = {"abs", "neg", "relu", "identity", "floor", "ceil", "round", "sign"}


def _unary_attrs(gen: GraphGen, op: str) -> dict:
    if op in ("elu", "celu"):
        return {"alpha": gen.choice([1.0, 0.5, 2.0])}
    if op == "leaky_relu":
        return {"alpha": gen.choice([0.01, 0.1, 0.5])}
    if op == "hard_sigmoid":
        return {"alpha": gen.choice([0.2, 0.5]), "beta": gen.choice([0.5, 0.25])}
    if op == "thresholded_relu":
        return {"alpha": gen.choice([1.0, 0.5])}
    if op == "shrink":
        return {"bias": gen.choice([0.0, 0.5]), "lambd": gen.choice([0.5, 1.0])}
    if op == "gelu":
        return {"approximate": gen.choice(["none", "tanh"])}
    return {}


def _in_domain(op: str, f: Facts) -> bool:
    lo, hi = _UNARY_DOMAIN[op]
    if op == "reciprocal":  # away from zero on either side
        return f.lo >= 0.1 or f.hi <= -0.1
    if op in _DISCONTINUOUS and not f.exact:
        return False
    if lo == -_INF and hi == _INF:
        return True
    return f.within(lo, hi)


@recipe(*_UNARY_DOMAIN)
def _unary(gen: GraphGen, op: str):
    signed_int = op in ("abs", "neg", "relu", "sign", "identity")
    if signed_int and gen.integers(0, 3) == 3:
        # also on signed integer values (draws of 0 take the float path)
        x = gen.pick(lambda v, f: v.dtype.is_int and v.dtype.is_signed or v.dtype.is_float and _in_domain(op, f))
        if x is None:
            raise Reject("no operand")
    else:
        leaf_lo, leaf_hi = (0.25, 3.0) if op in ("log", "sqrt", "reciprocal") else (None, None)
        if op == "acosh":
            leaf_lo, leaf_hi = 1.0, 4.0
        elif op in ("asin", "acos", "atanh", "tan"):
            leaf_lo, leaf_hi = -0.9, 0.9
        x = gen.operand(lambda v, f: _in_domain(op, f), lo=leaf_lo, hi=leaf_hi)
    attrs = _unary_attrs(gen, op)
    f = gen.fact(x)
    exact = f.exact and (op in _EXACT_UNARY or not x.dtype.is_float)
    if not x.dtype.is_float:
        return [x], attrs, Facts(-_INF, _INF, exact)
    if f.bounded:
        lo, hi = _sample_range(op, attrs, [(f.lo, f.hi)], x.dtype)
    elif op in _BOUNDED_OUT:
        lo, hi = _sample_range(op, attrs, [(-30.0, 30.0)], x.dtype)
    else:
        lo, hi = -_INF, _INF
    return [x], attrs, Facts(lo, hi, exact)


@recipe("is_nan", "is_inf")
def _is_special(gen: GraphGen, op: str):
    x = gen.operand()
    attrs = {}
    if op == "is_inf":
        attrs = {"detect_positive": gen.boolean(), "detect_negative": gen.boolean()}
    return [x], attrs, Facts(0, 1, True)


_BINARY = ("add", "sub", "mul", "div", "pow", "max", "min", "prelu")
_LINEAR = ("matmul", "gemm", "conv", "conv_transpose", "einsum")
_COMPARE = ("equal", "less", "less_or_equal", "greater", "greater_or_equal")


def _bin_partner(gen: GraphGen, x: Value, pred, lo=None, hi=None) -> Value:
    """A second operand broadcasting with x for every binding (pool or new leaf)."""

    def ok(v, f):
        return v is not x and v.dtype == x.dtype and _bcast_ok(x.shape, v.shape) and pred(v, f)

    cands = gen.candidates(ok)
    if cands and gen.integers(0, 3) > 0:
        return gen.choice(cands)
    if pred(x, gen.fact(x)) and gen.integers(0, 5) == 0:
        return x  # x op x
    leaf = gen.leaf(_partner_shape(gen, x.shape), x.dtype, lo, hi)
    if not pred(leaf, gen.fact(leaf)):
        raise Reject("partner constraint")
    return leaf


@recipe(*_BINARY)
def _binary(gen: GraphGen, op: str):
    int_ok = op in ("add", "sub", "mul", "max", "min")
    if int_ok and gen.integers(0, 3) == 3:  # (draws of 0 take the common path: hypothesis' minimal data)
        x = gen.pick(lambda v, f: v.dtype.is_int and f.bounded and f.mag <= 1000)
        if x is None:
            raise Reject("no int operand")
    elif op == "pow":
        x = gen.operand(lambda v, f: f.lo >= 0.25 and f.hi <= 8, lo=0.25, hi=3.0)
    else:
        x = gen.operand(lambda v, f: f.bounded)
    producer = gen.graph.producer(x)
    if (
        op in ("add", "mul")
        and producer is not None
        and producer.op in _LINEAR
        and x.dtype.is_float
        and x.rank >= 1
        and gen.boolean()
    ):
        # a bias or scale after a linear op, as models have (what epilogue fusions match)
        n = x.shape[-1] if _static(x.shape[-1]) else 1
        y = gen.leaf((n,), x.dtype, -1.0, 1.0, const=True)
    elif op == "div":
        y = _bin_partner(gen, x, lambda v, f: f.lo >= 0.25 or f.hi <= -0.25, lo=0.25, hi=3.0)
    elif op == "pow":
        y = _bin_partner(gen, x, lambda v, f: f.within(-3, 3), lo=-2.0, hi=2.0)
    elif op == "prelu":
        # The slope broadcasts to x (one direction only): a suffix of x's shape with 1s.
        shape = tuple(1 if gen.boolean() else d for d in x.shape[len(x.shape) - gen.integers(0, len(x.shape)) :])
        y = gen.leaf(shape, x.dtype, -0.5, 0.5)
    else:
        y = _bin_partner(gen, x, lambda v, f: f.bounded)
    fx, fy = gen.fact(x), gen.fact(y)
    exact = fx.exact and fy.exact and (op in ("max", "min") or x.dtype.is_int)
    if not (fx.bounded and fy.bounded):
        return [x, y], {}, Facts(-_INF, _INF, exact)
    lo, hi = _sample_range(op, {}, [(fx.lo, fx.hi), (fy.lo, fy.hi)], x.dtype if x.dtype.is_float else DType.f64)
    if x.dtype.is_int:
        lo, hi = math.floor(lo), math.ceil(hi)
        info = np.iinfo(x.dtype.np)
        if lo < info.min or hi > info.max:
            raise Reject("integer overflow")
    return [x, y], {}, Facts(lo, hi, exact)


@recipe(*_COMPARE)
def _compare(gen: GraphGen, op: str):
    x = gen.pick(lambda v, f: f.exact and v.dtype != DType.bool)
    if x is None:
        x = gen.leaf(gen.new_shape(), gen.dtype)
    y = _bin_partner(gen, x, lambda v, f: f.exact)
    return [x, y], {}, Facts(0, 1, True)


@recipe("and", "or", "xor")
def _logic(gen: GraphGen, op: str):
    x = gen.pick(dtype=DType.bool)
    if x is None:
        raise Reject("no bool operand")
    y = _bin_partner(gen, x, lambda v, f: True)
    return [x, y], {}, Facts(0, 1, True)


@recipe("not")
def _not(gen: GraphGen, op: str):
    x = gen.pick(dtype=DType.bool)
    if x is None:
        raise Reject("no bool operand")
    return [x], {}, Facts(0, 1, True)


@recipe("bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitshift", "mod")
def _int_binary(gen: GraphGen, op: str):
    x = gen.pick(lambda v, f: v.dtype.is_int and f.bounded)
    if x is None:
        raise Reject("no int operand")
    if op == "bitwise_not":
        return [x], {}, Facts(-_INF, _INF, True)
    if op == "bitshift":
        if x.dtype.is_signed:
            raise Reject("bitshift takes unsigned ints")
        y = gen.leaf(_partner_shape(gen, x.shape), x.dtype, 0, 3)
        return [x, y], {"direction": gen.choice(["LEFT", "RIGHT"])}, Facts(0, gen.fact(x).hi * 8, True)
    if op == "mod":
        y = gen.leaf(_partner_shape(gen, x.shape), x.dtype, 1, 5)
        return [x, y], {"fmod": False}, Facts(-5, 5, True)
    y = _bin_partner(gen, x, lambda v, f: f.bounded)
    return [x, y], {}, Facts(-_INF, _INF, True)


@recipe("sum", "mean")
def _variadic(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.bounded)
    ys = [_bin_partner(gen, x, lambda v, f: f.bounded) for _ in range(gen.integers(0, 2))]
    fs = [gen.fact(v) for v in [x, *ys]]
    if op == "sum":
        lo, hi = sum(f.lo for f in fs), sum(f.hi for f in fs)
    else:
        lo, hi = min(f.lo for f in fs), max(f.hi for f in fs)
    return [x, *ys], {}, Facts(lo, hi, False)


@recipe("where")
def _where(gen: GraphGen, op: str):
    c = gen.pick(dtype=DType.bool)
    if c is None:
        raise Reject("no condition")
    x = gen.pick(lambda v, f: v.dtype != DType.bool and _bcast_ok(c.shape, v.shape))
    if x is None:
        x = gen.leaf(_partner_shape(gen, c.shape), gen.dtype)
    y = _bin_partner(gen, x, lambda v, f: _bcast_ok(c.shape, v.shape))
    fx, fy = gen.fact(x), gen.fact(y)
    return [c, x, y], {}, Facts(min(fx.lo, fy.lo), max(fx.hi, fy.hi), fx.exact and fy.exact)


@recipe("clip")
def _clip(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: True)
    a = float(gen.choice([-1.0, -0.5, 0.0]))
    b = float(gen.choice([0.5, 1.0, 2.0]))
    lo_v = gen.const(np.asarray(a, x.dtype.np))
    hi_v = gen.const(np.asarray(b, x.dtype.np))
    mode = gen.integers(0, 2)
    ops = [x, lo_v, hi_v] if mode == 0 else ([x, lo_v] if mode == 1 else [x, None, hi_v])
    f = gen.fact(x)
    lo = max(f.lo, a) if mode in (0, 1) else f.lo
    hi = min(f.hi, b) if mode in (0, 2) else f.hi
    return ops, {}, Facts(min(lo, hi), max(lo, hi), f.exact)


@recipe("cast")
def _cast(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: True, float_only=False)
    f = gen.fact(x)
    targets = [DType.f32, DType.f16, DType.f64, DType.bf16, DType.i32, DType.i64, DType.i8, DType.bool]
    to = gen.choice(targets)
    if x.dtype.is_float and (to.is_int or to == DType.bool):
        # float -> int truncates: only exact values, and only in the target's range.
        info = np.iinfo(to.np) if to.is_int else None
        if not f.exact or not f.bounded or (info is not None and f.mag > min(info.max, 1e6)):
            raise Reject("unsafe float -> int cast")
    if to.is_float and f.bounded and f.mag > float(_finfo(to).max) / 64:
        raise Reject("cast would overflow")
    # A cast rounds deterministically (to nearest even), so it keeps exactness.
    exact = f.exact
    lo, hi = (f.lo, f.hi) if f.bounded else (-_INF, _INF)
    if to == DType.bool:
        lo, hi = 0, 1
    elif to.is_int:
        lo, hi = (math.floor(lo), math.ceil(hi)) if f.bounded else (-_INF, _INF)
    return [x], {"to": to}, Facts(lo, hi, exact)


@recipe("bit_cast")
def _bit_cast(gen: GraphGen, op: str):
    # float -> same-width int only: the other way could make NaN payloads, which backends
    # need not preserve bit for bit.
    x = gen.pick(lambda v, f: f.exact and v.dtype.is_float and v.dtype.itemsize in (2, 4, 8))
    if x is None:
        raise Reject("no exact float operand")
    to = {2: DType.i16, 4: DType.i32, 8: DType.i64}[x.dtype.itemsize]
    return [x], {"to": to}, Facts(-_INF, _INF, True)


# -- reductions --------------------------------------------------------------------

_REDUCE = AXIS_REDUCTIONS
# Ops undefined (or erroring) on an empty reduction: keep them off possibly-empty axes.
_NEEDS_NONEMPTY = {
    "reduce_mean",
    "reduce_max",
    "reduce_min",
    "reduce_log_sum",
    "reduce_log_sum_exp",
    "argmax",
    "argmin",
}


def _axes_subset(gen: GraphGen, rank: int, min_size=1) -> tuple:
    return tuple(sorted(gen.draw(st.sets(st.integers(0, rank - 1), min_size=min_size, max_size=rank))))


@recipe(*_REDUCE)
def _reduce(gen: GraphGen, op: str):
    def ok(v, f):
        if not f.bounded or v.rank == 0:
            return False
        if op == "reduce_log_sum":
            return f.lo > 0
        if op == "reduce_log_sum_exp":
            return f.hi <= 10
        if op == "reduce_prod":
            return f.mag <= 2
        return True

    positive = op == "reduce_log_sum"
    x = gen.operand(ok, lo=0.25 if positive else None, hi=3.0 if positive else None)
    rank = x.rank
    empty = gen.integers(0, 5) == 0
    axes = () if empty else _axes_subset(gen, rank)
    noop = empty and gen.integers(0, 3) == 0
    reduced = () if noop else (axes or tuple(range(rank)))
    if op in _NEEDS_NONEMPTY and any(_static(x.shape[a]) and x.shape[a] == 0 for a in reduced):
        raise Reject("empty reduction")
    n = math.prod(max(gen.sym_max(x.shape[a]), 1) for a in reduced)
    f = gen.fact(x)
    m = f.mag
    if op == "reduce_sum":
        lo, hi = min(f.lo * n, f.lo, 0), max(f.hi * n, f.hi, 0)
    elif op in ("reduce_mean", "reduce_max", "reduce_min"):
        lo, hi = f.lo, f.hi
    elif op == "reduce_prod":
        lo, hi = -(m**n) - 1, m**n + 1
    elif op == "reduce_l1":
        lo, hi = 0.0, n * m
    elif op == "reduce_l2":
        lo, hi = 0.0, math.sqrt(n) * m
    elif op == "reduce_sum_square":
        lo, hi = 0.0, n * m * m
    elif op == "reduce_log_sum":
        lo, hi = math.log(f.lo), math.log(n * f.hi) if not noop else math.log(f.hi)
    else:
        lo, hi = f.lo, f.hi + math.log(n)
    if noop:
        lo, hi = {"reduce_l1": (0, m), "reduce_l2": (0, m), "reduce_sum_square": (0, m * m)}.get(op, (lo, hi))
    exact = f.exact and op in ("reduce_max", "reduce_min")
    return [x], {"axes": axes, "keepdims": gen.boolean(), "noop_with_empty_axes": noop}, Facts(lo, hi, exact)


@recipe("argmax", "argmin")
def _argmax(gen: GraphGen, op: str):
    x = gen.pick(lambda v, f: f.exact and v.rank >= 1 and v.dtype != DType.bool)
    if x is None:
        raise Reject("no exact operand")
    axis = gen.integers(0, x.rank - 1)
    if _static(x.shape[axis]) and x.shape[axis] == 0:
        raise Reject("empty axis")
    attrs = {"axis": axis, "keepdims": gen.boolean(), "select_last_index": gen.boolean()}
    return [x], attrs, Facts(0, gen.sym_max(x.shape[axis]), True)


@recipe("cumsum")
def _cumsum(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.bounded and v.rank >= 1)
    axis = gen.integers(0, x.rank - 1)
    n = max(gen.sym_max(x.shape[axis]), 1)
    f = gen.fact(x)
    return (
        [x],
        {"axis": axis, "exclusive": gen.boolean(), "reverse": gen.boolean()},
        Facts(min(f.lo * n, 0), max(f.hi * n, 0), False),
    )


# -- out-fusable ops ------------------------------------------------------------------


def _weight_range(gen: GraphGen, k: int) -> tuple[float, float]:
    # Weights scaled by 1/sqrt(fan-in) keep activations O(1) through chains.
    s = 1.0 / math.sqrt(max(k, 1))
    return -s, s


@recipe("matmul")
def _matmul(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.bounded and v.rank >= 1)
    k = x.shape[-1]
    if x.rank == 1 or gen.integers(0, 3) > 0:
        n = gen.integers(1, 4)
        shape = (k, n) if gen.integers(0, 4) > 0 else (k,)
        if x.rank >= 3 and gen.integers(0, 2) == 0:
            shape = (*x.shape[-3:-2], k, n)
    else:
        shape = (k, gen.integers(1, 4))
    kmax = max(gen.sym_max(k), 1)
    y = None
    cands = gen.candidates(lambda v, f: v.dtype == x.dtype and f.bounded and v.rank == 2 and dims_equal(v.shape[0], k))
    if cands and gen.boolean():
        y = gen.choice(cands)
    if y is None:
        lo, hi = _weight_range(gen, kmax)
        y = gen.leaf(shape, x.dtype, lo, hi)
    m = kmax * gen.fact(x).mag * gen.fact(y).mag
    return [x, y], {}, Facts(-m, m, False)


@recipe("gemm")
def _gemm(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.bounded and v.rank == 2, shape=(gen.integers(1, 4), gen.integers(1, 4)))
    trans_a = bool(gen.integers(0, 1))
    m_, k = (x.shape[1], x.shape[0]) if trans_a else x.shape
    n = gen.integers(1, 4)
    trans_b = bool(gen.integers(0, 1))
    kmax = max(gen.sym_max(k), 1)
    lo, hi = _weight_range(gen, kmax)
    w = gen.leaf((n, k) if trans_b else (k, n), x.dtype, lo, hi)
    ops = [x, w]
    alpha = gen.choice([1.0, 0.5])
    beta = gen.choice([1.0, 2.0])
    bias_mag = 0.0
    if gen.boolean():
        c = gen.leaf(gen.choice([(n,), (1, n), (m_, n), (m_, 1)]), x.dtype, -1.0, 1.0)
        ops.append(c)
        bias_mag = gen.fact(c).mag * beta
    m = alpha * kmax * gen.fact(x).mag * gen.fact(w).mag + bias_mag
    return ops, {"alpha": alpha, "beta": beta, "transA": trans_a, "transB": trans_b}, Facts(-m, m, False)


_LETTERS = "abcdefgh"


@recipe("einsum")
def _einsum(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.bounded and 1 <= v.rank <= 4)
    xl = _LETTERS[: x.rank]
    if gen.boolean():
        # Contract with a new operand over some of x's labels.
        shared = [c for c in xl if gen.boolean()] or [xl[-1]]
        extra = "xy"[: gen.integers(0, 2)]
        yl = "".join(shared) + extra
        dim = {c: x.shape[i] for i, c in enumerate(xl)}
        yshape = tuple(dim[c] for c in shared) + tuple(gen.integers(1, 3) for _ in extra)
        k = math.prod(max(gen.sym_max(dim[c]), 1) for c in shared)
        lo, hi = _weight_range(gen, k)
        y = gen.leaf(yshape, x.dtype, lo, hi)
        keep = [c for c in xl + extra if gen.integers(0, 3) > 0]
        out = "".join(gen.draw(st.permutations(keep))) if keep else ""
        eq = f"{xl},{yl}->{out}"
        summed = [c for c in dim if c not in out]
        n = math.prod(max(gen.sym_max(dim[c]), 1) for c in summed)
        m = n * gen.fact(x).mag * gen.fact(y).mag
        return [x, y], {"equation": eq}, Facts(-m, m, False)
    keep = [c for c in xl if gen.integers(0, 3) > 0]
    out = "".join(gen.draw(st.permutations(keep))) if keep else ""
    n = math.prod(max(gen.sym_max(x.shape[i]), 1) for i, c in enumerate(xl) if c not in out)
    f = gen.fact(x)
    return [x], {"equation": f"{xl}->{out}"}, Facts(min(f.lo * n, f.lo), max(f.hi * n, f.hi), False)


def _attention_operands(gen: GraphGen, dtypes: tuple) -> list[Value]:
    """q [B,Hq,S,D] drawn from the graph, new leaves k and v whose heads divide q's (GQA half
    the time when Hq is even), and an optional additive bias [1,1,S,M] or [B,Hq,S,M]."""
    shape = (gen.integers(1, 2), gen.choice([1, 2, 4]), gen.integers(1, 5), gen.integers(1, 4))
    q = gen.operand(
        lambda v, f: f.bounded and v.rank == 4 and v.dtype in dtypes,
        shape=shape,
        lo=-1.0,
        hi=1.0,
    )
    b, hq, s, d = q.shape
    hkv = hq // 2 if _static(hq) and hq % 2 == 0 and gen.boolean() else hq
    m, dv = gen.integers(1, 6), gen.integers(1, 4)
    k = gen.leaf((b, hkv, m, d), q.dtype, -1.0, 1.0)
    v = gen.leaf((b, hkv, m, dv), q.dtype, -1.0, 1.0)
    ops = [q, k, v]
    if gen.boolean():
        ops.append(gen.leaf(gen.choice([(1, 1, s, m), (b, hq, s, m)]), q.dtype, -1.0, 1.0))
    return ops


@recipe("einsum_cascade")
def _einsum_cascade(gen: GraphGen, op: str):
    # Attention written as its extended-Einsum cascade, in one of its forms; K and V are
    # new leaves (their heads divide q's), the output is a convex combination of V's rows
    # (or 0 for a query that sees no key).
    from einfuse.ir.einsum import attention_cascade

    ops = _attention_operands(gen, (DType.f32, DType.f16, DType.bf16))
    q, k = ops[0], ops[1]
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[3]
    has_bias = len(ops) == 4
    form = gen.choice(["3-pass", "2-pass", "1-pass", "split"])
    causal = gen.choice(["none", "top_left", "bottom_right"])
    tile = gen.integers(1, 4) if form in ("1-pass", "split") else 0
    splits = gen.integers(2, 3) if form == "split" else 1
    c = attention_cascade(
        form, causal=causal, has_bias=has_bias, grouped=hkv != hq, kv_tile=tile or 1, kv_splits=splits
    )
    scale = 1.0 / math.sqrt(max(gen.sym_max(d), 1))
    attrs = {"cascade": c.lines(), "scale": scale, "causal": causal, "kv_tile": tile, "kv_splits": splits}
    return ops, attrs, Facts(-1.0, 1.0, False)


@recipe("attention")
def _attention(gen: GraphGen, op: str):
    # Scaled dot-product attention (ONNX Attention-23), the form recognize-attention
    # produces and lower-attention rewrites: K and V are new leaves (their heads divide
    # q's), optionally causal and with an additive float mask; the output is a convex
    # combination of V's rows.
    ops = _attention_operands(gen, (DType.f32, DType.f16))
    attrs = {
        "scale": 1.0 / math.sqrt(max(gen.sym_max(ops[0].shape[3]), 1)),
        "is_causal": gen.boolean(),
        "softmax_precision": DType.f32,
    }
    return ops, attrs, Facts(-1.0, 1.0, False)


def _spatial_input(gen: GraphGen, nsp: int) -> Value:
    """An (N, C, spatial...) operand with static C and static spatial dims >= 1."""

    def ok(v, f):
        return f.bounded and v.rank == 2 + nsp and all(_static(d) and d >= 1 for d in v.shape[1:])

    shape = (
        gen.choice([1, 2, sym("B")] if gen.symbolic else [1, 2]),
        gen.integers(1, 4),
        *(gen.integers(1, 6) for _ in range(nsp)),
    )
    return gen.operand(ok, shape=shape)


def _window(gen: GraphGen, spatial: tuple, allow_dilation=True):
    """kernel_shape, strides, pads, dilations that fit the static spatial dims."""
    ks, ss, ds, pb, pe = [], [], [], [], []
    for size in spatial:
        d = gen.integers(1, 2) if allow_dilation else 1
        k = gen.integers(1, 3)
        p0, p1 = gen.integers(0, k - 1), gen.integers(0, k - 1)
        if (k - 1) * d + 1 > size + p0 + p1:
            k, d = 1, 1
        ks.append(k)
        ds.append(d)
        ss.append(gen.integers(1, 2))
        pb.append(p0)
        pe.append(p1)
    return tuple(ks), tuple(ss), tuple(pb + pe), tuple(ds)


@recipe("conv")
def _conv(gen: GraphGen, op: str):
    nsp = gen.integers(1, 2)
    x = _spatial_input(gen, nsp)
    c = x.shape[1]
    group = gen.choice([g for g in (1, 2, 3) if c % g == 0])
    m = group * gen.integers(1, 2)
    ks, ss, pads, ds = _window(gen, x.shape[2:])
    fan_in = (c // group) * math.prod(ks)
    lo, hi = _weight_range(gen, fan_in)
    w = gen.leaf((m, c // group, *ks), x.dtype, lo, hi, const=gen.integers(0, 3) > 0)
    ops = [x, w]
    bias = 0.0
    if gen.boolean():
        b = gen.leaf((m,), x.dtype, -1.0, 1.0)
        ops.append(b)
        bias = gen.fact(b).mag
    mag = fan_in * gen.fact(x).mag * gen.fact(w).mag + bias
    attrs = {"kernel_shape": ks, "strides": ss, "pads": pads, "dilations": ds, "group": group}
    return ops, attrs, Facts(-mag, mag, False)


@recipe("conv_transpose")
def _conv_transpose(gen: GraphGen, op: str):
    nsp = gen.integers(1, 2)
    x = _spatial_input(gen, nsp)
    c = x.shape[1]
    group = gen.choice([g for g in (1, 2) if c % g == 0])
    m_per = gen.integers(1, 2)
    ks = tuple(gen.integers(1, 3) for _ in range(nsp))
    ss = tuple(gen.integers(1, 2) for _ in range(nsp))
    pads = tuple(gen.integers(0, k - 1) for k in ks) * 2
    fan = c * math.prod(ks)
    lo, hi = _weight_range(gen, fan)
    w = gen.leaf((c, m_per, *ks), x.dtype, lo, hi, const=True)
    mag = fan * gen.fact(x).mag * gen.fact(w).mag
    attrs = {
        "kernel_shape": ks,
        "strides": ss,
        "pads": pads,
        "dilations": (1,) * nsp,
        "group": group,
        "output_padding": (),
    }
    return [x, w], attrs, Facts(-mag, mag, False)


def _windows_see_data(sizes, ks, ss, pads, ds) -> bool:
    nsp = len(sizes)
    for i, (n, k, s, d) in enumerate(zip(sizes, ks, ss, ds)):
        begin, end = pads[i], pads[i + nsp]
        length = (n + begin + end - ((k - 1) * d + 1)) // s + 1
        for o in range(max(length, 0)):
            taps = (o * s + j * d - begin for j in range(k))
            if not any(0 <= t < n for t in taps):
                return False
    return True


@recipe("max_pool", "average_pool", "lp_pool")
def _pool(gen: GraphGen, op: str):
    nsp = gen.integers(1, 2)
    x = _spatial_input(gen, nsp)
    ks, ss, pads, ds = _window(gen, x.shape[2:], allow_dilation=op == "max_pool")
    # Padding stays smaller than the kernel (ONNX), and every window sees at least one
    # real element: ONNX leaves a window of padding only undefined (the reference gives
    # -inf for max_pool, onnxruntime the lowest float; average_pool would divide by 0).
    pads = tuple(min(p, k - 1) for p, k in zip(pads, ks + ks))
    if not _windows_see_data(x.shape[2:], ks, ss, pads, ds):
        raise Reject("a window of padding only")
    attrs = {"kernel_shape": ks, "strides": ss, "pads": pads}
    f = gen.fact(x)
    if op == "max_pool":
        attrs.update(dilations=ds, ceil_mode=False, storage_order=0, with_indices=False)
        return [x], attrs, Facts(min(f.lo, 0) if any(pads) else f.lo, max(f.hi, 0) if any(pads) else f.hi, f.exact)
    if op == "average_pool":
        attrs.update(dilations=(1,) * nsp, ceil_mode=False, count_include_pad=bool(gen.integers(0, 1)))
        return [x], attrs, Facts(min(f.lo, 0), max(f.hi, 0), False)
    attrs.update(dilations=(1,) * nsp, ceil_mode=False, p=gen.choice([1, 2]))
    return [x], attrs, Facts(0.0, math.prod(ks) * f.mag, False)


@recipe("global_average_pool", "global_max_pool", "global_lp_pool")
def _global_pool(gen: GraphGen, op: str):
    x = _spatial_input(gen, gen.integers(1, 2))
    f = gen.fact(x)
    attrs = {"p": gen.choice([1, 2])} if op == "global_lp_pool" else {}
    if op == "global_lp_pool":
        return [x], attrs, Facts(0.0, gen.numel_max(x.shape[2:]) * f.mag, False)
    return [x], attrs, Facts(f.lo, f.hi, f.exact and op == "global_max_pool")


# -- normalisations -----------------------------------------------------------------


@recipe("softmax", "log_softmax", "hardmax")
def _softmax(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: v.rank >= 1 and f.bounded and (op != "hardmax" or f.exact))
    axis = gen.integers(0, x.rank - 1)
    f = gen.fact(x)
    if op == "softmax":
        facts = Facts(0.0, 1.0, False)
    elif op == "log_softmax":
        facts = Facts(-(f.hi - f.lo) - math.log(max(gen.sym_max(x.shape[axis]), 1)) - 1, 0.0, False)
    else:
        facts = Facts(0.0, 1.0, True)
    return [x], {"axis": axis}, facts


# (x - mean) / sqrt(var + eps) is ill-conditioned when a group's values nearly agree,
# which two random values do now and then (onnxruntime's E[x^2] - E[x]^2 then differs
# from the reference by far more than rounding): normalised groups have at least this
# many elements.
_MIN_GROUP = 4


@recipe("layer_norm", "rms_norm")
def _layer_norm(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: v.rank >= 1 and f.bounded and _static(v.shape[-1]) and v.shape[-1] >= 1)
    # Normalised axes: a static suffix.
    start = x.rank - 1
    while start > 0 and _static(x.shape[start - 1]) and x.shape[start - 1] >= 1 and gen.boolean():
        start -= 1
    axis = start if gen.boolean() else start - x.rank
    inner = x.shape[start:]
    n = math.prod(inner)
    if op == "layer_norm" and n < _MIN_GROUP:
        raise Reject("too few elements to normalise")
    scale = gen.leaf(inner, x.dtype, 0.5, 1.5, const=True)
    ops = [x, scale]
    mag = math.sqrt(n) * 1.5
    attrs = {"axis": axis, "epsilon": gen.choice([1e-5, 1e-3])}
    if op == "layer_norm":
        if gen.boolean():
            ops.append(gen.leaf(inner, x.dtype, -1.0, 1.0, const=True))
            mag += 1.0
    else:
        mag = gen.fact(x).mag / math.sqrt(attrs["epsilon"]) * 1.5
    return ops, attrs, Facts(-mag, mag, False)


@recipe("batch_norm", "instance_norm")
def _batch_norm(gen: GraphGen, op: str):
    x = gen.operand(
        lambda v, f: v.rank >= 2 and f.bounded and _static(v.shape[1]) and v.shape[1] >= 1,
        shape=(gen.choice([1, 2]), gen.integers(1, 4), gen.integers(1, 4)),
    )
    c = x.shape[1]
    scale = gen.leaf((c,), x.dtype, 0.5, 1.5, const=True)
    bias = gen.leaf((c,), x.dtype, -1.0, 1.0, const=True)
    if op == "batch_norm":
        mean = gen.leaf((c,), x.dtype, -1.0, 1.0, const=True)
        var = gen.leaf((c,), x.dtype, 0.5, 2.0, const=True)
        mag = (gen.fact(x).mag + 1.0) / math.sqrt(0.5) * 1.5 + 1.0
        return [x, scale, bias, mean, var], {"epsilon": 1e-5}, Facts(-mag, mag, False)
    if any(not _static(d) or d == 0 for d in x.shape[2:]):
        raise Reject("instance_norm over symbolic or empty spatial dims")
    n = math.prod(x.shape[2:])
    if n < _MIN_GROUP:
        raise Reject("too few elements to normalise")
    mag = math.sqrt(n) * 1.5 + 1.0
    return [x, scale, bias], {"epsilon": gen.choice([1e-5, 1e-3])}, Facts(-mag, mag, False)


@recipe("group_norm")
def _group_norm(gen: GraphGen, op: str):
    x = gen.operand(
        lambda v, f: v.rank >= 3 and f.bounded and all(_static(d) and d >= 1 for d in v.shape[1:]),
        shape=(1, gen.choice([2, 4]), gen.integers(1, 4)),
    )
    c = x.shape[1]
    groups = gen.choice([g for g in (1, 2, 4) if c % g == 0])
    scale = gen.leaf((c,), x.dtype, 0.5, 1.5, const=True)
    bias = gen.leaf((c,), x.dtype, -1.0, 1.0, const=True)
    n = (c // groups) * math.prod(x.shape[2:])
    if n < _MIN_GROUP:
        raise Reject("too few elements to normalise")
    mag = math.sqrt(n) * 1.5 + 1.0
    return [x, scale, bias], {"num_groups": groups, "epsilon": 1e-5}, Facts(-mag, mag, False)


@recipe("lp_normalization")
def _lp_norm(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: v.rank >= 1 and f.bounded and (f.lo >= 0.25 or f.hi <= -0.25), lo=0.25, hi=3.0)
    return [x], {"axis": gen.integers(0, x.rank - 1), "p": gen.choice([1, 2])}, Facts(-1.0, 1.0, False)


# -- injective ops -------------------------------------------------------------------


def _any_operand(gen: GraphGen, pred=None) -> Value:
    v = gen.pick(pred, float_only=False)
    if v is None or gen.integers(0, 9) == 0:
        leaf = gen.leaf(gen.new_shape(), gen.dtype)
        if pred is not None and not pred(leaf, gen.fact(leaf)):
            raise Reject("no operand")
        return leaf
    return v


def _same(gen: GraphGen, x: Value) -> Facts:
    return gen.fact(x)


@recipe("transpose")
def _transpose(gen: GraphGen, op: str):
    x = _any_operand(gen)
    return [x], {"perm": tuple(gen.draw(st.permutations(range(x.rank))))}, _same(gen, x)


@recipe("reshape")
def _reshape(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1)
    # Keep symbolic dims where they are (0 = copy); regroup the static ones.
    static = [i for i, d in enumerate(x.shape) if _static(d)]
    if len(static) == x.rank:
        n = math.prod(x.shape)
        if n == 0:
            shape = tuple(x.shape[::-1])
        else:
            shape = _factor(gen, n)
            if gen.integers(0, 3) == 0:
                i = gen.integers(0, len(shape) - 1)
                shape = shape[:i] + (-1,) + shape[i + 1 :]
        return [x], {"shape": shape, "allowzero": False}, _same(gen, x)
    first_sym = next(i for i, d in enumerate(x.shape) if not _static(d))
    head = tuple(0 for _ in range(first_sym + 1))
    tail = x.shape[first_sym + 1 :]
    if all(_static(d) for d in tail) and math.prod(tail) > 0:
        shape = head + _factor(gen, math.prod(tail), max_rank=2) if gen.boolean() else head + (-1,)
    else:
        shape = head + (-1,)
    return [x], {"shape": shape, "allowzero": False}, _same(gen, x)


def _factor(gen: GraphGen, n: int, max_rank=3) -> tuple:
    out = []
    while n > 1 and len(out) < max_rank - 1:
        divs = [d for d in range(2, n + 1) if n % d == 0]
        d = gen.choice(divs)
        out.append(d)
        n //= d
    out.append(n)
    if gen.integers(0, 3) == 0:
        out.insert(gen.integers(0, len(out)), 1)
    return tuple(out)


@recipe("flatten")
def _flatten(gen: GraphGen, op: str):
    x = _any_operand(gen)
    return [x], {"axis": gen.integers(0, x.rank)}, _same(gen, x)


@recipe("squeeze")
def _squeeze(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: any(_static(d) and d == 1 for d in v.shape))
    ones = [i for i, d in enumerate(x.shape) if _static(d) and d == 1]
    axes = tuple(sorted(gen.draw(st.sets(st.sampled_from(ones), min_size=1))))
    return [x], {"axes": axes}, _same(gen, x)


@recipe("unsqueeze")
def _unsqueeze(gen: GraphGen, op: str):
    x = _any_operand(gen)
    k = gen.integers(1, 2)
    axes = tuple(sorted(gen.draw(st.sets(st.integers(0, x.rank + k - 1), min_size=k, max_size=k))))
    return [x], {"axes": axes}, _same(gen, x)


@recipe("concat")
def _concat(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1)
    axis = gen.integers(0, x.rank - 1)

    def fits(v, f):
        return (
            v.dtype == x.dtype
            and v.rank == x.rank
            and all(i == axis or dims_equal(a, b) for i, (a, b) in enumerate(zip(v.shape, x.shape)))
        )

    others = []
    for _ in range(gen.integers(1, 2)):
        cands = gen.candidates(fits)
        if cands and gen.boolean():
            others.append(gen.choice(cands))
        else:
            shape = list(x.shape)
            shape[axis] = gen.integers(0 if gen.zero_sizes else 1, 3)
            others.append(gen.leaf(tuple(shape), x.dtype))
    fs = [gen.fact(v) for v in [x, *others]]
    return [x, *others], {"axis": axis}, Facts(min(f.lo for f in fs), max(f.hi for f in fs), all(f.exact for f in fs))


@recipe("split")
def _split(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: any(_static(d) and d >= 1 for d in v.shape))
    axis = gen.choice([i for i, d in enumerate(x.shape) if _static(d) and d >= 1])
    n = x.shape[axis]
    k = gen.integers(1, min(n, 3))
    cuts = sorted(gen.draw(st.sets(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1))) if n > 1 else []
    sizes = tuple(b - a for a, b in zip([0, *cuts], [*cuts, n]))
    return [x], {"axis": axis, "split": sizes}, _same(gen, x)


@recipe("slice")
def _slice(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1)
    axes = _axes_subset(gen, x.rank)
    starts, ends, steps = [], [], []
    for a in axes:
        d = x.shape[a]
        step = gen.choice([1, 1, 2, -1])
        if _static(d):
            s = gen.integers(-d - 1, d + 1)
            e = gen.integers(-d - 1, d + 1)
        else:  # any size >= 1: starts/ends relative to the ends, clamped by slice
            s = gen.choice([0, 1, -1, 2**62 if step < 0 else 0])
            e = gen.choice([2**62, -1, 1, -(2**62)] if step > 0 else [-(2**62), 0, -2])
        starts.append(s)
        ends.append(e)
        steps.append(step)
    attrs = {"starts": tuple(starts), "ends": tuple(ends), "axes": axes, "steps": tuple(steps)}
    return [x], attrs, _same(gen, x)


@recipe("pad")
def _pad(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1 and v.dtype != DType.bool)
    mode = gen.choice(["constant", "constant", "edge", "reflect"])
    pads = []
    for d in x.shape:
        smallest = {"edge": 1, "reflect": 2}.get(mode, 0)  # sizes these modes need to copy from
        if smallest and not (_static(d) and d >= smallest):
            pads.append((0, 0))
        else:
            limit = 2 if mode != "reflect" else min(2, d - 1)
            pads.append((gen.integers(0, limit), gen.integers(0, limit)))
    pads_attr = tuple(p[0] for p in pads) + tuple(p[1] for p in pads)
    value = float(gen.choice([0.0, 1.0, -2.0])) if mode == "constant" else 0.0
    f = gen.fact(x)
    if mode == "constant":
        f = Facts(min(f.lo, value), max(f.hi, value), f.exact)
    return [x], {"pads": pads_attr, "mode": mode, "value": value}, f


@recipe("tile")
def _tile(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1)
    return [x], {"repeats": tuple(gen.integers(1, 2) for _ in x.shape)}, _same(gen, x)


@recipe("expand")
def _expand(gen: GraphGen, op: str):
    x = _any_operand(gen)
    shape = [
        gen.integers(2, 3) if _static(d) and d == 1 and gen.boolean() else (1 if gen.boolean() else -1) for d in x.shape
    ]
    # Static target dims: a 1 keeps x's dim; symbolic dims of x must be kept with 1.
    shape = [s if s != -1 else 1 for s in shape]
    lead = tuple(gen.integers(1, 3) for _ in range(gen.integers(0, 1)))
    return [x], {"shape": lead + tuple(shape)}, _same(gen, x)


@recipe("gather", "gather_elements")
def _gather(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1 and any(_static(d) and d >= 1 or not _static(d) for d in v.shape))
    axes = [i for i, d in enumerate(x.shape) if not _static(d) or d >= 1]
    axis = gen.choice(axes)
    d = x.shape[axis]
    hi = d - 1 if _static(d) else 0  # a symbolic dim may be 1: only index 0 is safe
    if op == "gather":
        ishape = tuple(gen.integers(0, 3) for _ in range(gen.integers(0, 2)))
    else:
        if not all(_static(s) for i, s in enumerate(x.shape) if i != axis):
            raise Reject("gather_elements needs static other dims")
        ishape = tuple(
            gen.integers(1, 3) if i == axis else gen.integers(1, max(s, 1)) if _static(s) and s >= 1 else 1
            for i, s in enumerate(x.shape)
        )
        if any(_static(s) and s == 0 for s in x.shape):
            raise Reject("empty")
    lo = -(d if _static(d) else 1)
    idx = gen.const(
        np.random.default_rng(gen.integers(0, 2**31))
        .integers(lo, hi + 1, size=ishape)
        .astype(gen.choice([np.int64, np.int32]))
    )
    return [x, idx], {"axis": axis}, _same(gen, x)


@recipe("depth_to_space", "space_to_depth")
def _depth_space(gen: GraphGen, op: str):
    b = gen.choice([2])
    if op == "depth_to_space":
        x = gen.operand(
            lambda v, f: v.rank == 4 and _static(v.shape[1]) and v.shape[1] % 4 == 0 and v.shape[1] > 0,
            float_only=False,
            shape=(1, 4 * gen.integers(1, 2), gen.integers(1, 3), gen.integers(1, 3)),
        )
    else:
        x = gen.operand(
            lambda v, f: v.rank == 4 and all(_static(d) and d % 2 == 0 and d > 0 for d in v.shape[2:]),
            float_only=False,
            shape=(1, gen.integers(1, 3), 2 * gen.integers(1, 2), 2),
        )
    attrs = {"blocksize": b, "mode": gen.choice(["DCR", "CRD"]) if op == "depth_to_space" else "DCR"}
    return [x], attrs, _same(gen, x)


@recipe("trilu")
def _trilu(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 2)
    f = gen.fact(x)
    return [x], {"upper": bool(gen.integers(0, 1)), "k": gen.integers(-2, 2)}, Facts(min(f.lo, 0), max(f.hi, 0), f.exact)


@recipe("shape", "size")
def _shape(gen: GraphGen, op: str):
    x = _any_operand(gen)
    attrs = {}
    if op == "shape" and x.rank:
        start = gen.integers(0, x.rank)
        attrs = {"start": start, "end": gen.integers(start, x.rank)}
    return [x], attrs, Facts(0, SYM_MAX**4 * 8, True)


@recipe("topk")
def _topk(gen: GraphGen, op: str):
    x = gen.pick(lambda v, f: f.exact and v.dtype.is_float and any(_static(d) and d >= 1 for d in v.shape))
    if x is None:
        raise Reject("no exact operand with a static axis")
    axis = gen.choice([i for i, d in enumerate(x.shape) if _static(d) and d >= 1])
    k = gen.integers(1, x.shape[axis])
    return [x], {"k": k, "axis": axis, "largest": bool(gen.integers(0, 1)), "sorted": True}, gen.fact(x)


@recipe("gather_nd")
def _gather_nd(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 1 and all(not _static(d) or d >= 1 for d in v.shape))
    k = gen.integers(1, x.rank)
    rows = gen.integers(1, 3)
    rng = np.random.default_rng(gen.integers(0, 2**31))
    cols = [rng.integers(0, (d if _static(d) else 1), size=rows) for d in x.shape[:k]]
    idx = np.stack(cols, axis=-1).astype(np.int64)
    return [x, gen.const(idx)], {"batch_dims": 0}, _same(gen, x)


@recipe("reverse_sequence")
def _reverse_sequence(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank >= 2 and all(_static(d) and d >= 1 for d in v.shape[:2]))
    time_axis = gen.integers(0, 1)
    batch_axis = 1 - time_axis
    steps, batch = x.shape[time_axis], x.shape[batch_axis]
    lens = np.random.default_rng(gen.integers(0, 2**31)).integers(1, steps + 1, size=batch).astype(np.int64)
    return [x, gen.const(lens)], {"batch_axis": batch_axis, "time_axis": time_axis}, _same(gen, x)


@recipe("one_hot")
def _one_hot(gen: GraphGen, op: str):
    depth = gen.integers(2, 5)
    idx = gen.pick(lambda v, f: v.dtype in (DType.i64, DType.i32) and f.bounded and f.within(-depth, depth - 1))
    if idx is None:
        shape = tuple(gen.integers(1, 3) for _ in range(gen.integers(1, 2)))
        idx = gen.const(np.random.default_rng(gen.integers(0, 2**31)).integers(-depth, depth, size=shape))
    values = gen.const(np.asarray([gen.choice([0.0, -1.0]), gen.choice([1.0, 2.0])], gen.dtype.np))
    f = gen.fact(values)
    return [idx, values], {"depth": depth, "axis": gen.integers(-1, idx.rank)}, f


@recipe("eye_like")
def _eye_like(gen: GraphGen, op: str):
    x = _any_operand(gen, lambda v, f: v.rank == 2)
    return [x], {"k": gen.integers(-1, 1), "dtype": gen.choice([gen.dtype, DType.i64])}, Facts(0, 1, True)


@recipe("constant_of_shape")
def _constant_of_shape(gen: GraphGen, op: str):
    value = float(gen.choice([0.0, 1.0, -2.5]))
    shape = tuple(gen.integers(1, 3) for _ in range(gen.integers(0, 2)))
    return [], {"shape": shape, "value": value, "dtype": gen.dtype}, Facts(value, value, True)


@recipe("range")
def _range(gen: GraphGen, op: str):
    start = gen.integers(-3, 3)
    delta = gen.choice([1, 2, -1])
    limit = start + delta * gen.integers(1, 5)
    dtype = gen.choice([gen.dtype, DType.i64])
    lo, hi = min(start, limit), max(start, limit)
    return (
        [],
        {"start": float(start), "limit": float(limit), "delta": float(delta), "dtype": dtype},
        Facts(lo, hi, True),
    )


@recipe("lrn")
def _lrn(gen: GraphGen, op: str):
    # rank 4: onnxruntime's LRN takes nothing else
    x = gen.operand(
        lambda v, f: v.rank == 4 and f.bounded and _static(v.shape[1]) and v.shape[1] >= 1,
        shape=(1, gen.integers(1, 4), gen.integers(1, 3), gen.integers(1, 3)),
    )
    attrs = {"size": gen.choice([1, 3, 5]), "alpha": 1e-4, "beta": 0.75, "bias": gen.choice([1.0, 2.0])}
    m = gen.fact(x).mag / attrs["bias"] ** 0.75
    return [x], attrs, Facts(-m, m, False)


@recipe("mean_variance_normalization")
def _mvn(gen: GraphGen, op: str):
    # (x - mean) / (std + 1e-9) is ill-conditioned when the values along the axes are
    # (nearly) equal: only exact operands (typically graph inputs), which are not.
    # Reduced axes of static size >= 2: over one element the variance is 0, where
    # onnxruntime gives NaN and the ONNX function 0.
    x = gen.pick(
        lambda v, f: (
            f.exact
            and v.dtype.is_float
            and not v.is_const
            and gen.graph.producer(v) is None
            and any(_static(d) and d >= 2 for d in v.shape)
        )
    )
    if x is None:
        raise Reject("no graph input")
    wide = [i for i, d in enumerate(x.shape) if _static(d) and d >= 2]
    axes = tuple(sorted(gen.draw(st.sets(st.sampled_from(wide), min_size=1))))
    if math.prod(x.shape[a] for a in axes) < _MIN_GROUP:
        raise Reject("too few elements to normalise")
    n = math.prod(max(gen.sym_max(x.shape[a]), 1) for a in axes)
    return [x], {"axes": axes}, Facts(-math.sqrt(n) - 1, math.sqrt(n) + 1, False)


# -- quantization -------------------------------------------------------------------


@recipe("quantize_linear")
def _quantize(gen: GraphGen, op: str):
    x = gen.operand(lambda v, f: f.exact and f.bounded and v.dtype in (DType.f32, DType.f16) and f.mag <= 100)
    to = gen.choice([DType.u8, DType.i8])
    scale = gen.const(np.asarray(gen.choice([0.02, 0.05, 0.1]), x.dtype.np))
    zp = gen.const(np.asarray(gen.integers(0, 20) if to == DType.u8 else gen.integers(-10, 10), to.np))
    info = np.iinfo(to.np)
    return [x, scale, zp], {"axis": 1, "block_size": 0, "saturate": True}, Facts(info.min, info.max, True)


@recipe("dequantize_linear")
def _dequantize(gen: GraphGen, op: str):
    x = gen.pick(lambda v, f: v.dtype in (DType.u8, DType.i8))
    if x is None:
        x = gen.leaf(gen.new_shape(), gen.choice([DType.u8, DType.i8]), 0, 50)
    scale = gen.const(np.asarray(gen.choice([0.02, 0.05, 0.1]), np.float32))
    zp = gen.const(np.asarray(gen.integers(0, 10), x.dtype.np))
    return [x, scale, zp], {"axis": 1, "block_size": 0}, Facts(-30.0, 30.0, False)


# -- the generic fallback -------------------------------------------------------------------


def _generic(gen: GraphGen, op: str):
    """Any op: operands from the pool, attributes from attrs_for's schema draws; kept
    when inference accepts them (its output facts are unknown, never exact)."""
    from einfuse.ir.ops import get_op

    d = get_op(op)
    hi = d.max_inputs if d.max_inputs is not None else d.min_inputs + 2
    n = gen.integers(d.min_inputs, max(d.min_inputs, min(hi, d.min_inputs + 1)))
    if n and not gen.pool:
        raise Reject("empty pool")
    ops = [gen.choice(gen.pool) for _ in range(n)]
    attrs = gen.draw(attrs_for(op))
    return ops, attrs, UNKNOWN


# -- attrs_for ------------------------------------------------------------------------


def attrs_for(op: str, *types: TensorType):
    """A strategy of attribute dicts for `op`.

    With operand types, the op's recipe solves the attributes for them (e.g. axes in
    range, a perm of the right length, kernel windows that fit); without, attributes
    are drawn from the op's schema (defaults often, small values otherwise), which is
    enough for ops with no shape-dependent attributes."""
    from einfuse.ir.ops import REQUIRED, get_op

    d = get_op(op)
    if types:
        return _solved_attrs(op, types)

    def one(name, a):
        kind = a.kind
        base = {
            "int": st.integers(-1, 3),
            "float": st.sampled_from([0.0, 0.5, 1.0, 2.0]),
            "bool": st.booleans(),
            "str": st.just(a.default) if isinstance(a.default, str) else st.sampled_from(["none"]),
            "ints": st.lists(st.integers(0, 3), max_size=3).map(tuple),
            "floats": st.lists(st.sampled_from([0.5, 1.0]), max_size=3).map(tuple),
            "strs": st.just(()),
            "dtype": st.sampled_from([DType.f32, DType.i64]),
        }.get(kind)
        if base is None:
            return None
        if a.default is REQUIRED:
            return base
        return st.one_of(st.just(a.default), base)

    fields = {}
    for name, a in d.attrs.items():
        s = one(name, a)
        if s is not None:
            fields[name] = s
    return st.fixed_dictionaries(fields)


@st.composite
def _solved_attrs(draw, op: str, types: tuple):
    g = Graph("attrs")
    gen = GraphGen(draw, g, dtype=types[0].dtype, symbolic=False, hostile=False, max_inputs=0, zero_sizes=False)
    for i, t in enumerate(types):
        v = g.add_input(f"x{i}", t)
        gen.pool.append(v)
        gen.facts[id(v)] = Facts(-3.0, 3.0, True)
    fn = RECIPES.get(op, _generic)
    for _ in range(50):
        try:
            ops, attrs, _ = fn(gen, op)
        except Reject:
            gen.rollback()
            continue
        if ops and ops[0] is gen.pool[0]:
            return attrs
        gen.rollback()
    from hypothesis import reject

    reject()


# -- graphs ----------------------------------------------------------------------------

# Ops graphs() never places by default: data-dependent output shapes, or no meaning on
# random operands without a recipe.
_DEFAULT_EXCLUDED = frozenset({"fused"})


@st.composite
def graphs(
    draw,
    max_nodes: int = 6,
    ops=None,
    hostile_names: bool = True,
    symbolic: bool = True,
    dtypes_=(DType.f32,),
    *,
    min_nodes: int = 1,
    max_inputs: int = 3,
    zero_sizes: bool = False,
    generic: bool = False,
):
    """A valid random graph built from the op registry by construction (see the module
    docstring).

    max_nodes / min_nodes: node count bounds; ops: the op names to draw from (default:
    every registered op); hostile_names: names with quotes, newlines, unicode;
    symbolic: input shapes may have the dims B, S, N; dtypes_: the graph's input
    element types (one is drawn per graph); max_inputs: at most this many graph inputs;
    zero_sizes: static dims of size 0 now and then (inputs, and results such as empty
    slices; with False no value is empty); generic: also try ops without a
    recipe generically (pool operands, schema attributes, kept when inference accepts
    them): this finds inference that accepts invalid operands, but such graphs are no
    longer valid by construction. Every value the graph computes and nothing reads is an output."""
    from einfuse.ir.ops import REGISTRY, get_op

    get_op("add")  # loads the registry
    allowed = sorted((set(ops) if ops is not None else set(REGISTRY)) - _DEFAULT_EXCLUDED)
    if not generic:
        allowed = [o for o in allowed if o in RECIPES]
    allowed = [o for o in allowed if o in REGISTRY]
    g = Graph(draw(names(hostile_names)) or "main")
    dtype = draw(st.sampled_from(tuple(dtypes_)))
    gen = GraphGen(
        draw, g, dtype=dtype, symbolic=symbolic, hostile=hostile_names, max_inputs=max_inputs, zero_sizes=zero_sizes
    )
    first = gen.leaf(gen.new_shape(), dtype, const=False)
    gen.commit()
    b = Builder(g)
    target = draw(st.integers(min_nodes, max_nodes))
    # Hypothesis favours the first choices of a list; a per-graph rotation spreads that
    # bias over every op instead of the alphabetically first ones.
    offset = draw(st.integers(0, max(len(allowed) - 1, 0)))
    made = 0
    attempts = 0
    while made < target and attempts < target * 25 and allowed:
        attempts += 1
        op = allowed[(offset + draw(st.integers(0, len(allowed) - 1))) % len(allowed)]
        fn = RECIPES.get(op, _generic)
        try:
            operands, attrs, facts = fn(gen, op)
            node_name = draw(st.one_of(st.just(""), names(hostile_names)))
            out = b.op(op, operands, name=node_name, **attrs)
        except (Reject, EinfuseError):
            gen.rollback()
            continue
        outs = out if isinstance(out, tuple) else (out,)
        try:
            for o in outs:
                _out_float_ok(gen, facts if o is outs[0] else UNKNOWN, o.dtype)
                if not zero_sizes and any(_static(d) and d == 0 for d in o.shape):
                    raise Reject("an empty result (zero_sizes=False)")
        except Reject:
            g.erase(g.nodes[-1])
            gen.rollback()
            continue
        gen.commit()
        for i, o in enumerate(outs):
            f = facts if i == 0 or op in ("split",) else UNKNOWN
            if op == "topk" and i == 1:
                f = Facts(0, SYM_MAX * 8, True)
            if not o.dtype.is_float and o.dtype != DType.bool and f is UNKNOWN:
                f = Facts(-_INF, _INF, False)
            gen.facts[id(o)] = f
            gen.pool.append(o)
        made += 1
    if made < min_nodes:
        from hypothesis import reject

        reject()  # this draw could not place enough nodes
    produced = [v for v in gen.pool if g.producer(v) is not None]
    sinks = [v for v in produced if not g.users(v)]
    g.outputs = sinks or [first]
    # Inputs no node reads (the first one, when the ops went elsewhere) are dropped.
    read = {id(x) for n in g.nodes for x in n.inputs if x is not None} | {id(v) for v in g.outputs}
    for v in [v for v in g.inputs if id(v) not in read]:
        g.inputs.remove(v)
        g._names.discard(v.name)
        gen.ranges.pop(v.name, None)
    _INPUT_RANGES[g] = dict(gen.ranges)
    return g
