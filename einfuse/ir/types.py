"""Element types, symbolic dimensions and tensor types.

A dimension is a Python `int` or a sympy expression over named integer symbols
(`B`, `S`). Symbols are always created through `sym()` so that they carry the same
assumptions everywhere (integer, nonnegative) and compare equal across graphs.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Union

import ml_dtypes
import numpy as np
import sympy

Dim = Union[int, sympy.Expr]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DType(enum.Enum):
    """Element types. The value is the short name used in the IR text."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f8e4m3 = "f8e4m3"
    f8e5m2 = "f8e5m2"
    f8e4m3fnuz = "f8e4m3fnuz"
    f8e5m2fnuz = "f8e5m2fnuz"
    f8e8m0 = "f8e8m0"
    i64 = "i64"
    i32 = "i32"
    i16 = "i16"
    i8 = "i8"
    u64 = "u64"
    u32 = "u32"
    u16 = "u16"
    u8 = "u8"
    bool = "bool"

    def __repr__(self) -> str:
        return f"DType.{self.value}"

    def __str__(self) -> str:
        return self.value

    @property
    def np(self) -> np.dtype:
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @property
    def is_float(self) -> bool:
        return self in FLOAT_DTYPES

    @property
    def is_int(self) -> bool:
        return self in INT_DTYPES

    @property
    def is_signed(self) -> bool:
        return self in FLOAT_DTYPES or self in (DType.i64, DType.i32, DType.i16, DType.i8)

    @staticmethod
    def from_numpy(dt) -> "DType":
        dt = np.dtype(dt)
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise TypeError(f"numpy dtype {dt} has no einfuse DType") from None

    @staticmethod
    def parse(name: str) -> "DType":
        try:
            return DType(name)
        except ValueError:
            raise ValueError(f"unknown dtype {name!r}") from None


_TO_NUMPY = {
    DType.f64: np.dtype(np.float64),
    DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16),
    DType.bf16: np.dtype(ml_dtypes.bfloat16),
    DType.f8e4m3: np.dtype(ml_dtypes.float8_e4m3fn),
    DType.f8e5m2: np.dtype(ml_dtypes.float8_e5m2),
    DType.f8e4m3fnuz: np.dtype(ml_dtypes.float8_e4m3fnuz),
    DType.f8e5m2fnuz: np.dtype(ml_dtypes.float8_e5m2fnuz),
    DType.f8e8m0: np.dtype(ml_dtypes.float8_e8m0fnu),
    DType.i64: np.dtype(np.int64),
    DType.i32: np.dtype(np.int32),
    DType.i16: np.dtype(np.int16),
    DType.i8: np.dtype(np.int8),
    DType.u64: np.dtype(np.uint64),
    DType.u32: np.dtype(np.uint32),
    DType.u16: np.dtype(np.uint16),
    DType.u8: np.dtype(np.uint8),
    DType.bool: np.dtype(np.bool_),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}

FLOAT_DTYPES = frozenset(
    {
        DType.f64,
        DType.f32,
        DType.f16,
        DType.bf16,
        DType.f8e4m3,
        DType.f8e5m2,
        DType.f8e4m3fnuz,
        DType.f8e5m2fnuz,
        DType.f8e8m0,
    }
)
INT_DTYPES = frozenset(
    {DType.i64, DType.i32, DType.i16, DType.i8, DType.u64, DType.u32, DType.u16, DType.u8}
)
NUMERIC_DTYPES = FLOAT_DTYPES | INT_DTYPES


# ---------------------------------------------------------------------------
# Symbolic dimensions


def sym(name: str) -> sympy.Symbol:
    """The dimension symbol `name` (an identifier)."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"dimension symbol {name!r} is not an identifier")
    return sympy.Symbol(name, integer=True, nonnegative=True)


def simplify_dim(d) -> Dim:
    """Normalises a dimension: plain ints stay ints, constant expressions become ints."""
    if isinstance(d, (bool, np.bool_)):
        raise TypeError("a dimension cannot be a bool")
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, sympy.Basic):
        d = sympy.sympify(d)
        if d.is_Integer:
            return int(d)
        if d.is_Rational or d.is_Float:
            raise ValueError(f"dimension {d} is not an integer")
        return d
    raise TypeError(f"bad dimension {d!r}")


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def dim_known_ne(a: Dim, b: Dim) -> bool:
    """True when a and b are provably different (both static, or a nonzero constant apart)."""
    diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
    return diff.is_Integer and diff != 0


def format_dim(d: Dim) -> str:
    """IR text of a dimension; parse_dim (in ir/parser.py) reads it back exactly."""
    if isinstance(d, int):
        return str(d)
    return _fmt_expr(d, 0)


# Precedences for the dim printer: sum < product < power < atom.
_P_ADD, _P_MUL, _P_POW, _P_ATOM = 1, 2, 3, 4


def _fmt_expr(e: sympy.Expr, parent: int) -> str:
    if e.is_Integer:
        s = str(int(e))
        return f"({s})" if int(e) < 0 and parent > _P_ADD else s
    if e.is_Rational:
        s = f"{e.p}/{e.q}"
        return f"({s})" if parent >= _P_MUL else s
    if e.is_Symbol:
        return e.name
    if e.is_Add:
        terms = sorted(e.args, key=sympy.default_sort_key)
        # positive terms first, constants last: "S + 1", "5 - H"
        terms.sort(key=lambda t: (bool(t.could_extract_minus_sign()), bool(t.is_number)))
        out = _fmt_expr(terms[0], _P_ADD)
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + _fmt_expr(-t, _P_ADD + 0.5)
            else:
                out += " + " + _fmt_expr(t, _P_ADD + 0.5)
        return f"({out})" if parent > _P_ADD else out
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        factors = sorted(sympy.Mul.make_args(rest), key=sympy.default_sort_key)
        parts = [_fmt_expr(f, _P_MUL + 0.5) for f in factors]
        if coeff == -1:
            out = "-" + "*".join(parts)
            return f"({out})"
        if coeff != 1:
            parts.insert(0, _fmt_expr(coeff, _P_MUL + 0.5))
        out = "*".join(parts)
        return f"({out})" if parent > _P_MUL else out
    if e.is_Pow:
        base, exp = e.args
        out = _fmt_expr(base, _P_POW + 0.5) + "^" + _fmt_expr(exp, _P_POW + 0.5)
        return f"({out})" if parent > _P_POW else out
    if isinstance(e, (sympy.floor, sympy.ceiling, sympy.Max, sympy.Min, sympy.Mod)):
        name = {
            sympy.floor: "floor",
            sympy.ceiling: "ceil",
            sympy.Max: "max",
            sympy.Min: "min",
            sympy.Mod: "mod",
        }[type(e)]
        args = e.args
        if isinstance(e, (sympy.Max, sympy.Min)):
            args = sorted(args, key=sympy.default_sort_key)
        return name + "(" + ", ".join(_fmt_expr(a, 0) for a in args) + ")"
    raise ValueError(f"cannot print dimension expression {e}")


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return simplify_dim(sympy.floor(sympy.sympify(a) / sympy.sympify(b)))


def ceildiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return simplify_dim(sympy.ceiling(sympy.sympify(a) / sympy.sympify(b)))


def dim_max(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return simplify_dim(sympy.Max(a, b))


def dim_min(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return simplify_dim(sympy.Min(a, b))


def prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = simplify_dim(out * d)
    return out


# ---------------------------------------------------------------------------
# Tensor types


@dataclass(frozen=True)
class TensorType:
    """A tensor's shape (tuple of dims) and element type."""

    shape: tuple
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(simplify_dim(d) for d in self.shape))
        if not isinstance(self.dtype, DType):
            raise TypeError(f"dtype must be a DType, not {self.dtype!r}")
        for d in self.shape:
            if isinstance(d, int) and d < 0:
                raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        return prod(self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"shape {self} is symbolic")
        return self.shape  # type: ignore[return-value]

    def nbytes(self) -> Dim:
        return simplify_dim(self.numel * self.dtype.itemsize)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype)

    def symbols(self) -> set[sympy.Symbol]:
        out: set = set()
        for d in self.shape:
            if not isinstance(d, int):
                out |= d.free_symbols
        return out

    def matches(self, arr: np.ndarray, bindings: dict | None = None) -> bool:
        """Does `arr` fit this type? Binds symbols in `bindings` (a dict) when given."""
        if arr.dtype != self.dtype.np or arr.ndim != self.rank:
            return False
        for d, n in zip(self.shape, arr.shape):
            if isinstance(d, int):
                if d != n:
                    return False
            elif bindings is not None:
                if d.is_Symbol:
                    if bindings.setdefault(d, n) != n:
                        return False
                else:
                    v = d.subs(bindings)
                    if v.is_Integer and int(v) != n:
                        return False
        return True

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(format_dim(d) for d in self.shape)}]"

    @staticmethod
    def of(arr: np.ndarray) -> "TensorType":
        return TensorType(tuple(int(s) for s in arr.shape), DType.from_numpy(arr.dtype))


def broadcast_shapes(*shapes: tuple, where: str = "") -> tuple:
    """Numpy-style broadcast of symbolic shapes; raises ValueError when provably incompatible."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        result: Dim = 1
        for d in dims:
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(result, int) and result == 1:
                result = d
            elif dims_equal(result, d):
                continue
            elif isinstance(result, int) and isinstance(d, int):
                raise ValueError(f"cannot broadcast shapes {' and '.join(map(_fmt_shape, shapes))}")
            else:
                # Symbolic and unequal: assume the symbolic one is 1 or equal at run time;
                # the larger static size wins, a symbolic dim wins over another symbol.
                if isinstance(result, int):
                    continue
                result = d if isinstance(d, int) else result
        out.append(result)
    return tuple(out)


def _fmt_shape(s) -> str:
    return "[" + ",".join(format_dim(d) for d in s) + "]"


def is_identifier(name: str) -> bool:
    return bool(_IDENT.fullmatch(name))


def static_numel(shape) -> int:
    return math.prod(int(d) for d in shape)
