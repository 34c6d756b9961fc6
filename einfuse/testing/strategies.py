"""Hypothesis strategies for einfuse: dtypes, shapes, tensors and random typed graphs.

    from hypothesis import given
    from einfuse.testing.strategies import graphs

    @given(graphs(max_nodes=8))
    def test_round_trip(g): ...

`graphs()` builds valid graphs by construction: it keeps a pool of typed values and
repeatedly picks an op recipe whose operand constraints some values in the pool can
meet, draws its attributes, and lets the op's own inference give the output type.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from einfuse.errors import EinfuseError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType, sym

FLOAT_DTYPES = (DType.f32, DType.f16, DType.f64, DType.bf16)
ALL_DTYPES = tuple(DType)

# Names that must survive printing and parsing as data.
HOSTILE_NAMES = ('a"b', "line\nbreak", "x; import os", "__import__('os')", "sp ace", "ünï", "{}", "%q", "@w", "")


def dtypes(kinds=ALL_DTYPES):
    return st.sampled_from(tuple(kinds))


def names(hostile: bool = True):
    plain = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True)
    if not hostile:
        return plain
    return st.one_of(plain, st.sampled_from(HOSTILE_NAMES[:-1]), st.text(min_size=1, max_size=6))


def shapes(min_rank=0, max_rank=4, min_side=0, max_side=5, symbolic=False):
    """Shapes as tuples of ints (sizes include 0 and 1) and, when symbolic, symbols."""
    side = st.integers(min_side, max_side)
    if symbolic:
        side = st.one_of(side, st.sampled_from([sym("B"), sym("S"), sym("N")]))
    return st.lists(side, min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def tensors(draw, shape, dtype: DType, special: bool = False):
    """A numpy array of `shape` and `dtype`; special=True mixes in inf, nan, -0.0,
    subnormals and large magnitudes for float types."""
    n = int(np.prod(shape, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == DType.bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.is_int:
        info = np.iinfo(dtype.np)
        lo, hi = max(info.min, -100), min(info.max, 100)
        return rng.integers(lo, hi + 1, size=shape).astype(dtype.np)
    x = rng.standard_normal(n)
    if special and n:
        picks = draw(st.lists(st.sampled_from([np.inf, -np.inf, np.nan, -0.0, 1e-40, 6e4, -6e4]), max_size=n))
        x[: len(picks)] = picks
        rng.shuffle(x)
    with np.errstate(over="ignore"):
        return x.reshape(shape).astype(dtype.np)


# -- graphs -------------------------------------------------------------------
# A recipe: (op, how many operands, predicate on operand types, attribute strategy).

_UNARY = ("relu", "neg", "abs", "exp", "tanh", "sigmoid", "sqrt", "identity")
_BINARY = ("add", "sub", "mul", "div", "max", "min")


@st.composite
def graphs(draw, max_nodes: int = 6, ops=None, hostile_names: bool = True, symbolic: bool = True,
           dtypes_=(DType.f32,)):
    """A valid random graph over elementwise, transpose, reduce, concat and matmul ops."""
    from einfuse.ir.ops import REGISTRY, get_op

    get_op("add")  # loads the registry
    allowed = set(ops) if ops is not None else set(REGISTRY)
    g = Graph(draw(names(hostile_names)) or "main")
    dtype = draw(st.sampled_from(tuple(dtypes_)))
    used: set[str] = set()

    def fresh(hint_strategy):
        n = draw(hint_strategy)
        while not n or n in used or n in g._names:
            n = (n or "v") + "_"
        used.add(n)
        return n

    pool = []
    for _ in range(draw(st.integers(1, 3))):
        shape = draw(shapes(1, 3, 1, 4, symbolic=symbolic))
        pool.append(g.add_input(fresh(names(hostile_names)), TensorType(shape, dtype)))
    if draw(st.booleans()):
        shape = tuple(d if isinstance(d, int) else 2 for d in pool[0].shape)
        arr = draw(tensors(shape, dtype))
        pool.append(g.add_constant(fresh(names(hostile_names)), arr))

    b = Builder(g)
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "transpose", "reduce", "concat", "matmul"]))
        x = draw(st.sampled_from(pool))
        node_name = draw(st.one_of(st.just(""), names(hostile_names)))
        try:
            if kind == "unary":
                op = draw(st.sampled_from([o for o in _UNARY if o in allowed]))
                y = b.op(op, [x], name=node_name)
            elif kind == "binary":
                op = draw(st.sampled_from([o for o in _BINARY if o in allowed]))
                partners = [v for v in pool if v.shape == x.shape or v.rank <= 1]
                y = b.op(op, [x, draw(st.sampled_from(partners))], name=node_name)
            elif kind == "transpose" and "transpose" in allowed:
                perm = tuple(draw(st.permutations(range(x.rank))))
                y = b.op("transpose", [x], perm=perm, name=node_name)
            elif kind == "reduce" and "reduce_sum" in allowed and x.rank:
                axes = tuple(sorted(draw(st.sets(st.integers(0, x.rank - 1), min_size=1))))
                op = draw(st.sampled_from(["reduce_sum", "reduce_max", "reduce_mean"]))
                y = b.op(op, [x], axes=axes, keepdims=draw(st.booleans()), name=node_name)
            elif kind == "concat" and "concat" in allowed and x.rank:
                axis = draw(st.integers(0, x.rank - 1))
                y = b.op("concat", [x, x], axis=axis, name=node_name)
            elif kind == "matmul" and "matmul" in allowed and x.rank >= 2:
                w = g.add_constant(fresh(names(hostile_names)), draw(tensors((_static(x.shape[-1]), 3), dtype)))
                y = b.op("matmul", [x, w], name=node_name)
            else:
                continue
        except EinfuseError:  # a recipe whose constraints these operands miss: try another
            continue
        pool.extend(y if isinstance(y, tuple) else [y])
    produced = [v for v in pool if g.producer(v) is not None]
    g.outputs = produced[-draw(st.integers(1, min(2, len(produced)))):] if produced else [pool[0]]
    return g


def _static(d) -> int:
    return d if isinstance(d, int) else 2
