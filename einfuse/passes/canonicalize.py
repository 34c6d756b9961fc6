"""canonicalize: one spelling per computation, so later rules match fewer forms.

Rules (each counted under its name in the PassRecord):

- `gemm_to_matmul`: gemm(A, B, C) becomes matmul(op(A), op(B)) [* alpha] [+ beta * C].
  transA/transB: a constant operand becomes a new constant viewing it transposed (no
  copy), any other gets a transpose node. alpha folds into a constant B when it is a
  power of two and the scaled weights neither overflow nor underflow (exact: every
  product scales by 2^k); otherwise a mul by the scalar follows the matmul, which rounds
  exactly as gemm's reference does. beta folds into a constant C (the product is
  rounded once, as in the reference), else a mul on C. beta = 0 drops C. Integer gemms
  convert only with integral alpha and beta (the reference computes fractional ones in
  f64). On f16/bf16 the reference gemm rounds once, at the end, while matmul, mul and
  add each round their result: about one unit in the last place apart (an epilogue that
  adds the bias in the accumulator, as a fused kernel does, rounds once again).
- `sub_const_to_add`: x - c becomes x + (-c), exact for every dtype (IEEE subtraction is
  the addition of the negation; integers wrap the same way).
- `div_by_power_of_two_to_mul`: x / c becomes x * (1/c) for float x when every element of
  c is a power of two whose reciprocal the dtype holds exactly: both are then the correctly
  rounded value of the same real number, so the result is bit for bit the same.
  With `exact=False`, `div_const_to_mul` also rewrites any other constant with a finite
  reciprocal (x * (1/c) may then differ from x / c in the last bit).
- Removal of no-ops (the replacement is the operand itself): `drop_identity` (identity,
  which is also what the importer makes of inference-mode dropout), `drop_noop_cast`
  (cast to the operand's dtype), `drop_noop_reshape` (reshape, flatten, squeeze or
  unsqueeze to the same shape), `drop_noop_expand`, `drop_identity_transpose`,
  `drop_full_slice` (positive steps and the same shape: every element, in order),
  `drop_zero_pad`, `drop_single_concat`, `cancel_squeeze_unsqueeze` (a squeeze/unsqueeze
  pair giving back the operand's shape).
- `collapse_reshapes`: reshape of a reshape (or flatten, squeeze, unsqueeze) becomes one
  reshape of the original operand (all of them keep row-major order); the operand itself
  when the shapes agree. `compose_transposes`: transpose of a transpose becomes one
  transpose with the composed perm, or the operand when the perm is the identity.

Graph outputs keep their names: the rewrite driver renames a replacement to the output
it replaces, but not a graph input, and a value that is already another graph output
keeps its own name; in those two cases a no-op is not removed (a pair of transposes or
reshapes that cancels becomes an `identity`).

Folding reshapes or transposes of constants is left to fold-constants.

Preconditions: a verified graph. Ordering: right after import (and fold-constants, which
exposes constant operands to these rules), before any fusion; fuse-sibling-matmuls
expects gemm to be gone. Follow with eliminate-common-subexpressions (transposed and
negated constants made for several users are merged there) and eliminate-dead-code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.ir.graph import Graph, Value
from einfuse.ir.types import TensorType, dims_equal
from einfuse.passes.fold_shape_computations import static_reshape_target
from einfuse.passes.manager import Pass, register_pass
from einfuse.passes.pattern import Any, Const, Opt, P, Rule, RuleSet, rewrite, rule

# Ops that only reinterpret the shape: the elements stay in row-major order.
RESHAPE_LIKE = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})


# -- side conditions ----------------------------------------------------------------


def same_type(a: TensorType, b: TensorType) -> bool:
    """Same dtype and provably the same dims (symbolic ones compared with dims_equal)."""
    return a.dtype == b.dtype and a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def keeps_output_name(x: Value, out: Value, graph: Graph) -> bool:
    """Can the existing value `x` stand in for `out` without a graph output losing its
    name? The driver renames x to out's name when out is a graph output, except when x
    is a graph input or itself a graph output (both keep their own names)."""
    if not graph.is_output(out):
        return True
    return not (graph.is_output(x) or any(x is i for i in graph.inputs))


def forwards(x: Value, out: Value, graph: Graph) -> bool:
    """`out` may be replaced by its operand `x`: same type, and no output name is lost."""
    return same_type(x.type, out.type) and keeps_output_name(x, out, graph)


def is_identity_perm(perm: tuple) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


def all_zero(values: tuple) -> bool:
    return all(v == 0 for v in values)


def all_positive(values: tuple) -> bool:
    return all(v > 0 for v in values)


def _node_attrs(graph: Graph, v: Value):
    """The attributes of the node producing `v` (handlers see values, not nodes)."""
    return graph.producer(v).attrs


def _keep_or_identity(x: Value, out: Value, graph: Graph, builder) -> Value:
    """x itself when it may replace out, else identity(x): the output keeps its name."""
    if keeps_output_name(x, out, graph):
        return x
    return builder.op("identity", [x])


# -- no-ops -----------------------------------------------------------------------------


@rule(P("identity", Any("x"), name="out"), where=forwards)
def drop_identity(x):
    return x


@rule(P("cast", Any("x"), name="out"), where=forwards)
def drop_noop_cast(x):
    return x


@rule(P(RESHAPE_LIKE, Any("x"), name="out"), where=forwards)
def drop_noop_reshape(x):
    return x


@rule(P("expand", Any("x"), name="out"), where=forwards)
def drop_noop_expand(x):
    return x


@rule(P("transpose", Any("x"), name="out", attrs={"perm": is_identity_perm}), where=keeps_output_name)
def drop_identity_transpose(x):
    return x


# With positive steps, a slice keeps n = ceil((end - start) / step) elements with
# 0 <= start <= end <= dim: n == dim (for every value of the symbols) forces start 0 and
# step 1 (or dim <= 1), i.e. every element in order.
@rule(P("slice", Any("x"), name="out", attrs={"steps": all_positive}), where=forwards)
def drop_full_slice(x):
    return x


@rule(P("pad", Any("x"), name="out", attrs={"pads": all_zero}), where=keeps_output_name)
def drop_zero_pad(x):
    return x


@rule(P("concat", Any("x"), name="out"), where=keeps_output_name)
def drop_single_concat(x):
    return x


# Any chain of reshape-like ops that ends in the operand's own shape is the identity.
# The inner node may have other users: the outer one then just reads x instead.
@rule(P({"squeeze", "unsqueeze"}, P({"squeeze", "unsqueeze"}, Any("x"), single_use=False), name="out"), where=forwards)
def cancel_squeeze_unsqueeze(x):
    return x


# -- compositions -------------------------------------------------------------------------


@rule(P("reshape", P(RESHAPE_LIKE, Any("x"), single_use=False), name="out"))
def collapse_reshapes(x, out, graph, builder):
    if same_type(x.type, out.type):
        return _keep_or_identity(x, out, graph, builder)
    target = static_reshape_target(x.shape, out.shape)
    if target is None:
        return None  # the attributes cannot say it (e.g. two unrelated symbolic dims)
    shape, allowzero = target
    return builder.op("reshape", [x], shape=shape, allowzero=allowzero)


@rule(P("transpose", P("transpose", Any("x"), name="inner", single_use=False), name="out"))
def compose_transposes(x, inner, out, graph, builder):
    first = _node_attrs(graph, inner)["perm"]
    second = _node_attrs(graph, out)["perm"]
    # out axis i = inner axis second[i] = x axis first[second[i]].
    perm = tuple(first[j] for j in second)
    if is_identity_perm(perm):
        return _keep_or_identity(x, out, graph, builder)
    return builder.op("transpose", [x], perm=perm)


# -- gemm -----------------------------------------------------------------------------------


def is_power_of_two(values) -> bool:
    """Every element is +-2^k (zero, inf and NaN are not)."""
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mantissa, _ = np.frexp(arr)
    return bool(arr.size) and bool(np.all(np.abs(mantissa) == 0.5))


def _scalar(value: float, dtype) -> np.ndarray:
    return np.asarray(value).astype(dtype.np)


def scaled(arr: np.ndarray, factor: float, dtype) -> np.ndarray:
    """arr * factor computed as gemm's reference does (in its accumulation dtype: f32 for
    16- and 8-bit floats, else the dtype itself), rounded to `dtype`."""
    acc = np.dtype(np.float32) if dtype.is_float and dtype.itemsize < 4 else dtype.np
    factor = int(factor) if dtype.is_int else factor
    return (arr.astype(acc) * np.asarray(factor, acc)).astype(dtype.np)


def scales_exactly(arr: np.ndarray, factor: float, dtype) -> bool:
    """Is arr * factor (a power of two) exact, i.e. neither overflows nor underflows?"""
    if not (dtype.is_float and is_power_of_two(factor)):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        back = scaled(arr, factor, dtype).astype(np.float64) / factor
    return np.array_equal(back, arr.astype(np.float64), equal_nan=True)


def _transposed(v: Value, graph: Graph, builder) -> Value:
    """v^T: a new constant for a constant, else a transpose node."""
    arr = graph.const_value(v)
    if arr is not None:
        # A view of the graph's own read-only weight, which add_constant keeps uncopied:
        # copying a 400 MB fully-connected weight into C order took seconds.
        return builder.const(f"{v.name}.T", arr.T)
    return builder.op("transpose", [v], perm=(1, 0))


@rule(P("gemm", Any("a"), Any("b"), Opt(Any("c")), name="out"))
def gemm_to_matmul(a, b, c, out, graph, builder):
    attrs = _node_attrs(graph, out)
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    dtype = out.dtype
    if not dtype.is_float and not (alpha.is_integer() and beta.is_integer()):
        return None  # the reference computes fractional scales of integers in f64
    name = graph.producer(out).name  # the frontend's node name, for error messages
    if attrs["transA"]:
        a = _transposed(a, graph, builder)
    w = graph.const_value(b)
    if w is not None and attrs["transB"]:
        w = w.T
    if w is not None and alpha != 1.0 and scales_exactly(w, alpha, dtype):
        # Scaling by 2^k commutes exactly with the matmul: it moves into the weights.
        b = builder.const(f"{b.name}.scaled", scaled(w, alpha, dtype))
        alpha = 1.0
    elif attrs["transB"]:
        b = _transposed(b, graph, builder)
    y = builder.op("matmul", [a, b], name=name)
    if alpha != 1.0:
        y = builder.op("mul", [y, builder.const("alpha", _scalar(alpha, dtype))], name=name)
    if c is None or beta == 0.0:
        return y
    if beta != 1.0:
        c_arr = graph.const_value(c)
        if c_arr is not None:
            c = builder.const(f"{c.name}.scaled", scaled(c_arr, beta, dtype))  # rounded once, as gemm does
        else:
            c = builder.op("mul", [c, builder.const("beta", _scalar(beta, dtype))], name=name)
    return builder.op("add", [y, c], name=name)


# -- sub / div normal forms -----------------------------------------------------------------


def _is_number(v: Value) -> bool:
    return v.dtype.is_float or v.dtype.is_int


def _is_float(v: Value) -> bool:
    return v.dtype.is_float


@rule(P("sub", Any("x"), Const("c", where=_is_number)))
def sub_const_to_add(x, c, graph, builder):
    negated = np.negative(graph.const_value(c))  # integers wrap, as the add will
    return builder.op("add", [x, builder.const(f"{c.name}.neg", negated)])


def reciprocal(arr: np.ndarray) -> np.ndarray:
    """1 / arr in arr's dtype (computed in f64, rounded once)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return (1.0 / arr.astype(np.float64)).astype(arr.dtype)


def has_exact_reciprocal(c: Value, graph: Graph) -> bool:
    """Every element is +-2^k and the dtype holds 2^-k exactly (subnormals included)."""
    arr = graph.const_value(c)
    if not is_power_of_two(arr):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(reciprocal(arr).astype(np.float64) * arr.astype(np.float64) == 1.0))


def has_finite_reciprocal(c: Value, graph: Graph) -> bool:
    r = reciprocal(graph.const_value(c)).astype(np.float64)
    return bool(r.size) and bool(np.all(np.isfinite(r) & (r != 0.0)))


def _div_to_mul(x, c, graph, builder):
    return builder.op("mul", [x, builder.const(f"{c.name}.recip", reciprocal(graph.const_value(c)))])


DIV_BY_CONST = P("div", Any("x", where=_is_float), Const("c"))
div_by_power_of_two_to_mul = Rule(
    DIV_BY_CONST, _div_to_mul, name="div_by_power_of_two_to_mul", where=has_exact_reciprocal
)
div_const_to_mul = Rule(DIV_BY_CONST, _div_to_mul, name="div_const_to_mul", where=has_finite_reciprocal)


CANONICALIZE = RuleSet(
    [
        drop_identity,
        drop_noop_cast,
        drop_noop_reshape,
        drop_noop_expand,
        drop_identity_transpose,
        drop_full_slice,
        drop_zero_pad,
        drop_single_concat,
        cancel_squeeze_unsqueeze,
        collapse_reshapes,
        compose_transposes,
        gemm_to_matmul,
        sub_const_to_add,
        div_by_power_of_two_to_mul,
    ]
)
# Only with exact=False: may change the last bit of a quotient.
INEXACT = RuleSet([div_const_to_mul])


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Rewrites gemm to matmul, sub/div by constants to add/mul, and removes no-op ops."""

    name: ClassVar[str] = "canonicalize"
    exact: bool = True  # False: also x / c -> x * (1/c) for any c (not bit-exact)
    max_iterations: int = 100

    def run(self, graph: Graph) -> Graph:
        rules = CANONICALIZE if self.exact else CANONICALIZE + INEXACT
        return rewrite(graph, rules, self.max_iterations).graph
