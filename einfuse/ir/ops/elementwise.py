"""Elementwise ops: unary math, binary arithmetic with numpy broadcasting, comparisons,
logic and bitwise ops, select, clip, cast, variadic min/max/sum/mean, activations,
identity and linear (de)quantization.

Conventions shared by every op here:
- Binary and variadic operands broadcast numpy-style and must share one dtype (pow is
  the exception: its exponent may have any numeric dtype; the result has the base's).
- Arithmetic on 16- and 8-bit floats is done in f32 and rounded back, as onnxruntime
  does; for the basic operations this gives the correctly rounded low-precision result.
- Integer semantics follow C (and onnxruntime): div truncates toward zero, overflow
  wraps, float -> int conversions truncate.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from einfuse.ir.ops import ELEMENTWISE, Attr, register
from einfuse.ir.types import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMERIC_DTYPES,
    DType,
    TensorType,
    broadcast_shapes,
    ceildiv,
    dim_known_ne,
    dims_equal,
)

# -- dtype classes used by the inference checks ---------------------------------

FLOAT = FLOAT_DTYPES
INT = INT_DTYPES
NUMERIC = NUMERIC_DTYPES
SIGNED = frozenset(d for d in NUMERIC_DTYPES if d.is_signed)
BOOL = frozenset({DType.bool})
ANY = frozenset(DType)
# The float8 types with a sign and a mantissa (e8m0, an exponent alone, is apart).
FLOAT8 = frozenset({DType.f8e4m3, DType.f8e5m2, DType.f8e4m3fnuz, DType.f8e5m2fnuz})
# Element types of quantized tensors (what quantize_linear produces, dequantize_linear reads).
QUANT = frozenset({DType.i8, DType.u8, DType.i16, DType.u16}) | FLOAT8
# Scales of (de)quantization; quantize_linear also takes e8m0 (microscaling) scales.
SCALE = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})

_KIND_NAMES = {
    FLOAT: "float",
    INT: "integer",
    NUMERIC: "numeric",
    NUMERIC | BOOL: "numeric or bool",
    SIGNED: "signed numeric",
    BOOL: "bool",
    ANY: "any",
}

# numpy dtypes whose arithmetic runs in f32 (see the module docstring).
_LOWP = frozenset({np.dtype(np.float16)} | {d.np for d in FLOAT_DTYPES if d.np.kind == "V"})


# -- inference helpers ----------------------------------------------------------


def check_dtype(ctx, i: int, allowed: frozenset, what: str | None = None) -> DType:
    """Operand i's dtype, which must be in `allowed` (else a ShapeError naming the node)."""
    dt = ctx.type(i).dtype
    if dt not in allowed:
        kind = what or _KIND_NAMES.get(allowed, "/".join(sorted(str(d) for d in allowed)))
        raise ctx.error(f"operand {i} has dtype {dt}, but {kind} operands are needed")
    return dt


def same_as_input(ctx):
    return [ctx.type(0)]


def broadcast_infer(ctx, out_dtype: DType | None = None):
    """Output of a broadcasting op: operands must share a dtype."""
    types = [t for t in ctx.types if t is not None]
    dt = types[0].dtype
    for t in types[1:]:
        if t.dtype != dt:
            raise ctx.error(f"operand dtypes differ: {types[0]} and {t}")
    try:
        shape = broadcast_shapes(*(t.shape for t in types))
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return [TensorType(shape, out_dtype or dt)]


def check_unidirectional(ctx, i: int, target: tuple) -> None:
    """Operand i must broadcast to `target` without changing it (prelu slope, clip bounds)."""
    shape = ctx.type(i).shape
    if len(shape) > len(target):
        raise ctx.error(f"operand {i} of shape {list(shape)} has a higher rank than {list(target)}")
    for d, t in zip(shape[::-1], target[::-1]):
        if isinstance(d, int) and d == 1:
            continue
        # A symbolic mismatch that is not provable is assumed to hold at run time.
        if dim_known_ne(d, t):
            raise ctx.error(f"operand {i} of shape {list(shape)} does not broadcast to {list(target)}")


def unary_infer(allowed: frozenset, out_dtype: DType | None = None):
    """Inference for a one-operand map over `allowed` dtypes."""

    def infer(ctx):
        check_dtype(ctx, 0, allowed)
        t = ctx.type(0)
        return [t.with_dtype(out_dtype) if out_dtype else t]

    return infer


def nary_infer(allowed: frozenset, out_dtype: DType | None = None):
    """Inference for a broadcasting map over `allowed` dtypes (all operands share one)."""

    def infer(ctx):
        for i in range(len(ctx.types)):
            if ctx.has(i):
                check_dtype(ctx, i, allowed)
        return broadcast_infer(ctx, out_dtype)

    return infer


# -- reference helpers ----------------------------------------------------------


def _as(x, like):
    """numpy may promote (e.g. f16 ops on python scalars); keep the operand dtype."""
    return np.asarray(x).astype(like.dtype, copy=False)


def upcast(x: np.ndarray) -> np.ndarray:
    """x in the dtype its arithmetic runs in (f32 for 16- and 8-bit floats)."""
    return x.astype(np.float32) if x.dtype in _LOWP else x


def recast(r, dtype) -> np.ndarray:
    """A result as an array of `dtype` (back from upcast's dtype; numpy scalars become 0-d)."""
    return np.asarray(r).astype(dtype, copy=False)


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (C, onnxruntime); numpy's // floors."""
    q = np.floor_divide(a, b)
    if a.dtype.kind == "i":
        inexact = (a - q * b) != 0
        q = q + (inexact & ((a < 0) != (b < 0))).astype(q.dtype)
    return q


def _erf(x: np.ndarray) -> np.ndarray:
    """erf (numpy has none), computed in f64 to within a few ulps and rounded to x's dtype.

    |x| <= 2.5: erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n x (2x^2)^n / (2n+1)!!, whose terms
    are all positive (no cancellation); 36 terms reach f64 precision. |x| > 2.5: the
    continued fraction erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / ...))),
    22 levels deep. Several times faster than math.erf element by element."""
    w = np.asarray(x, np.float64)
    a = np.abs(w)
    out = np.empty_like(a)
    near = a <= 2.5
    s = a[near]
    term = s.copy()
    total = s.copy()
    for k in range(1, 36):
        term = term * (2 * s * s) / (2 * k + 1)
        total += term
    out[near] = (2 / math.sqrt(math.pi)) * np.exp(-s * s) * total
    far = a[~near]
    frac = far.copy()
    for k in range(22, 0, -1):
        frac = far + (k / 2) / frac
    out[~near] = 1 - np.exp(-far * far) / (math.sqrt(math.pi) * frac)
    return np.copysign(out, w).astype(x.dtype)


# -- binary arithmetic ----------------------------------------------------------


@register("add", family=ELEMENTWISE, inputs=2, infer=nary_infer(NUMERIC))
def add(a, b, **_):
    """a + b"""
    return recast(upcast(a) + upcast(b), a.dtype)


@register("sub", family=ELEMENTWISE, inputs=2, infer=nary_infer(NUMERIC))
def sub(a, b, **_):
    """a - b"""
    return recast(upcast(a) - upcast(b), a.dtype)


@register("mul", family=ELEMENTWISE, inputs=2, infer=nary_infer(NUMERIC))
def mul(a, b, **_):
    """a * b"""
    return recast(upcast(a) * upcast(b), a.dtype)


@register("div", family=ELEMENTWISE, inputs=2, infer=nary_infer(NUMERIC))
def div(a, b, **_):
    """a / b; integers truncate toward zero."""
    if a.dtype.kind in "iu":
        return recast(_trunc_div(a, b), a.dtype)
    return recast(upcast(a) / upcast(b), a.dtype)


@register("mod", family=ELEMENTWISE, inputs=2, attrs={"fmod": Attr("bool", False)}, infer=nary_infer(NUMERIC))
def mod(a, b, *, fmod):
    """Remainder: with the divisor's sign (a - floor(a/b)*b), or with fmod the dividend's (a - trunc(a/b)*b)."""
    fn = np.fmod if fmod else np.mod
    return recast(fn(upcast(a), upcast(b)), a.dtype)


def _pow_infer(ctx):
    base = check_dtype(ctx, 0, NUMERIC)
    check_dtype(ctx, 1, NUMERIC)
    try:
        shape = broadcast_shapes(ctx.type(0).shape, ctx.type(1).shape)
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return [TensorType(shape, base)]


@register("pow", family=ELEMENTWISE, inputs=2, infer=_pow_infer)
def pow_(base, exponent, **_):
    """base ** exponent, in the base's dtype (the exponent may have another numeric dtype)."""
    # Like onnxruntime (std::pow): floats of at most 32 bits with a float exponent work in
    # f32; an integer operand or an f64 one means double arithmetic, then conversion
    # (truncation for integer bases, so 2 ** -1 == 0).
    narrow = {np.dtype(np.float32)} | _LOWP
    wt = np.float32 if base.dtype in narrow and exponent.dtype in narrow else np.float64
    r = np.power(base.astype(wt), exponent.astype(wt))
    if base.dtype.kind in "iu":
        r = np.trunc(r)
    return recast(r, base.dtype)


# -- unary math -----------------------------------------------------------------


def _float_map(name: str, fn, doc: str):
    """Registers a unary float op computed by numpy function `fn` (in f32 for 16/8-bit floats)."""

    def ref(x, **_):
        return recast(fn(upcast(x)), x.dtype)

    ref.__name__ = name
    ref.__doc__ = doc
    register(name, family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT))(ref)


def _sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# One table: op name -> (numpy function, what it computes).
_FLOAT_UNARY = {
    "exp": (np.exp, "e ** x"),
    "log": (np.log, "natural logarithm"),
    "sqrt": (np.sqrt, "square root"),
    "reciprocal": (np.reciprocal, "1 / x"),
    "floor": (np.floor, "round down"),
    "ceil": (np.ceil, "round up"),
    "round": (np.rint, "round half to even"),
    "sin": (np.sin, "sine"),
    "cos": (np.cos, "cosine"),
    "tan": (np.tan, "tangent"),
    "asin": (np.arcsin, "arc sine"),
    "acos": (np.arccos, "arc cosine"),
    "atan": (np.arctan, "arc tangent"),
    "sinh": (np.sinh, "hyperbolic sine"),
    "cosh": (np.cosh, "hyperbolic cosine"),
    "asinh": (np.arcsinh, "inverse hyperbolic sine"),
    "acosh": (np.arccosh, "inverse hyperbolic cosine"),
    "atanh": (np.arctanh, "inverse hyperbolic tangent"),
    "erf": (_erf, "error function"),
    "tanh": (np.tanh, "hyperbolic tangent"),
    "sigmoid": (_sigmoid, "1 / (1 + e ** -x)"),
}
for _name, (_fn, _doc) in _FLOAT_UNARY.items():
    _float_map(_name, _fn, _doc)


@register("neg", family=ELEMENTWISE, inputs=1, infer=unary_infer(SIGNED))
def neg(x, **_):
    """-x (integers wrap)"""
    return recast(np.negative(upcast(x)), x.dtype)


@register("abs", family=ELEMENTWISE, inputs=1, infer=unary_infer(NUMERIC))
def abs_(x, **_):
    """|x| (integers wrap: abs(-128 as i8) == -128)"""
    return recast(np.abs(upcast(x)), x.dtype)


@register("sign", family=ELEMENTWISE, inputs=1, infer=unary_infer(NUMERIC))
def sign(x, **_):
    """-1, 0 or 1 (NaN stays NaN)"""
    return recast(np.sign(upcast(x)), x.dtype)


# -- activations ----------------------------------------------------------------


@register("relu", family=ELEMENTWISE, inputs=1, infer=unary_infer(SIGNED))
def relu(x, **_):
    """max(x, 0)"""
    return np.maximum(x, np.zeros((), x.dtype))


@register("leaky_relu", family=ELEMENTWISE, inputs=1, attrs={"alpha": Attr("float", 0.01)}, infer=unary_infer(FLOAT))
def leaky_relu(x, *, alpha):
    """x if x >= 0 else alpha * x"""
    w = upcast(x)
    return recast(np.where(w >= 0, w, w * np.asarray(alpha, w.dtype)), x.dtype)


@register("elu", family=ELEMENTWISE, inputs=1, attrs={"alpha": Attr("float", 1.0)}, infer=unary_infer(FLOAT))
def elu(x, *, alpha):
    """x if x > 0 else alpha * (e ** x - 1)"""
    w = upcast(x)
    return recast(np.where(w > 0, w, np.asarray(alpha, w.dtype) * np.expm1(np.minimum(w, 0))), x.dtype)


# The SELU constants from Klambauer et al. (2017), as ONNX spells them.
SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


@register(
    "selu",
    family=ELEMENTWISE,
    inputs=1,
    attrs={"alpha": Attr("float", SELU_ALPHA), "gamma": Attr("float", SELU_GAMMA)},
    infer=unary_infer(FLOAT),
)
def selu(x, *, alpha, gamma):
    """gamma * (x if x > 0 else alpha * (e ** x - 1))"""
    w = upcast(x)
    a, g = np.asarray(alpha, w.dtype), np.asarray(gamma, w.dtype)
    return recast(g * np.where(w > 0, w, a * np.expm1(np.minimum(w, 0))), x.dtype)


@register("celu", family=ELEMENTWISE, inputs=1, attrs={"alpha": Attr("float", 1.0)}, infer=unary_infer(FLOAT))
def celu(x, *, alpha):
    """max(0, x) + min(0, alpha * (e ** (x / alpha) - 1))"""
    w = upcast(x)
    a = np.asarray(alpha, w.dtype)
    return recast(np.maximum(w, 0) + np.minimum(0, a * np.expm1(np.minimum(w, 0) / a)), x.dtype)


def _gelu_infer(ctx):
    if ctx.attrs["approximate"] not in ("none", "tanh"):
        raise ctx.error(f"approximate must be 'none' or 'tanh', not {ctx.attrs['approximate']!r}")
    return unary_infer(FLOAT)(ctx)


@register("gelu", family=ELEMENTWISE, inputs=1, attrs={"approximate": Attr("str", "none")}, infer=_gelu_infer)
def gelu(x, *, approximate):
    """x * Phi(x), exactly (approximate="none") or with the tanh formula (approximate="tanh")"""
    w = upcast(x)
    dt = w.dtype.type
    if approximate == "tanh":
        c = dt(math.sqrt(2 / math.pi))
        inner = c * (w + dt(0.044715) * w * w * w)
        r = dt(0.5) * w * (dt(1) + np.tanh(inner))
    elif approximate == "none":
        r = dt(0.5) * w * (dt(1) + _erf(w * dt(1 / math.sqrt(2))))
    else:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    return recast(r, x.dtype)


@register(
    "hard_sigmoid",
    family=ELEMENTWISE,
    inputs=1,
    attrs={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
    infer=unary_infer(FLOAT),
)
def hard_sigmoid(x, *, alpha, beta):
    """max(0, min(1, alpha * x + beta))"""
    w = upcast(x)
    return recast(np.clip(np.asarray(alpha, w.dtype) * w + np.asarray(beta, w.dtype), 0, 1), x.dtype)


@register("hard_swish", family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT))
def hard_swish(x, **_):
    """x * max(0, min(1, x / 6 + 1 / 2))"""
    w = upcast(x)
    return recast(w * np.clip(w * np.asarray(1 / 6, w.dtype) + np.asarray(0.5, w.dtype), 0, 1), x.dtype)


@register("softplus", family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT))
def softplus(x, **_):
    """log(1 + e ** x)"""
    w = upcast(x)
    return recast(np.logaddexp(np.zeros((), w.dtype), w), x.dtype)


@register("softsign", family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT))
def softsign(x, **_):
    """x / (1 + |x|)"""
    w = upcast(x)
    return recast(w / (1 + np.abs(w)), x.dtype)


@register("mish", family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT))
def mish(x, **_):
    """x * tanh(softplus(x))"""
    w = upcast(x)
    return recast(w * np.tanh(np.logaddexp(np.zeros((), w.dtype), w)), x.dtype)


@register(
    "thresholded_relu", family=ELEMENTWISE, inputs=1, attrs={"alpha": Attr("float", 1.0)}, infer=unary_infer(FLOAT)
)
def thresholded_relu(x, *, alpha):
    """x if x > alpha else 0"""
    w = upcast(x)
    return recast(np.where(w > np.asarray(alpha, w.dtype), w, 0), x.dtype)


def _prelu_infer(ctx):
    check_dtype(ctx, 0, NUMERIC)
    check_dtype(ctx, 1, frozenset({ctx.type(0).dtype}), f"{ctx.type(0).dtype} (the input's dtype)")
    check_unidirectional(ctx, 1, ctx.type(0).shape)
    return [ctx.type(0)]


@register("prelu", family=ELEMENTWISE, inputs=2, infer=_prelu_infer)
def prelu(x, slope, **_):
    """x if x >= 0 else slope * x (slope broadcasts to x's shape)"""
    w, s = upcast(x), upcast(slope)
    return recast(np.where(w >= 0, w, s * w), x.dtype)


@register(
    "shrink",
    family=ELEMENTWISE,
    inputs=1,
    attrs={"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)},
    infer=unary_infer(NUMERIC),
)
def shrink(x, *, bias, lambd):
    """x + bias if x < -lambd, x - bias if x > lambd, else 0"""
    # Integer inputs compute in f64 and truncate back, like onnxruntime's float bias.
    w = x.astype(np.float64) if x.dtype.kind in "iu" else upcast(x)
    b, lam = np.asarray(bias, w.dtype), np.asarray(lambd, w.dtype)
    r = np.where(w < -lam, w + b, np.where(w > lam, w - b, 0))
    return recast(r, x.dtype)


# -- comparisons, logic, bitwise --------------------------------------------------


@register("equal", family=ELEMENTWISE, inputs=2, infer=nary_infer(ANY, DType.bool))
def equal(a, b, **_):
    """a == b"""
    return np.equal(a, b)


@register("less", family=ELEMENTWISE, inputs=2, infer=nary_infer(ANY, DType.bool))
def less(a, b, **_):
    """a < b"""
    return np.less(upcast(a), upcast(b))


@register("less_or_equal", family=ELEMENTWISE, inputs=2, infer=nary_infer(ANY, DType.bool))
def less_or_equal(a, b, **_):
    """a <= b"""
    return np.less_equal(upcast(a), upcast(b))


@register("greater", family=ELEMENTWISE, inputs=2, infer=nary_infer(ANY, DType.bool))
def greater(a, b, **_):
    """a > b"""
    return np.greater(upcast(a), upcast(b))


@register("greater_or_equal", family=ELEMENTWISE, inputs=2, infer=nary_infer(ANY, DType.bool))
def greater_or_equal(a, b, **_):
    """a >= b"""
    return np.greater_equal(upcast(a), upcast(b))


@register("not", family=ELEMENTWISE, inputs=1, infer=unary_infer(BOOL))
def logical_not(x, **_):
    """logical not"""
    return np.logical_not(x)


@register("and", family=ELEMENTWISE, inputs=2, infer=nary_infer(BOOL))
def logical_and(a, b, **_):
    """logical and"""
    return np.logical_and(a, b)


@register("or", family=ELEMENTWISE, inputs=2, infer=nary_infer(BOOL))
def logical_or(a, b, **_):
    """logical or"""
    return np.logical_or(a, b)


@register("xor", family=ELEMENTWISE, inputs=2, infer=nary_infer(BOOL))
def logical_xor(a, b, **_):
    """logical exclusive or"""
    return np.logical_xor(a, b)


@register("is_nan", family=ELEMENTWISE, inputs=1, infer=unary_infer(FLOAT, DType.bool))
def is_nan(x, **_):
    """x is NaN"""
    return np.asarray(np.isnan(upcast(x)))


@register(
    "is_inf",
    family=ELEMENTWISE,
    inputs=1,
    attrs={"detect_positive": Attr("bool", True), "detect_negative": Attr("bool", True)},
    infer=unary_infer(FLOAT, DType.bool),
)
def is_inf(x, *, detect_positive, detect_negative):
    """x is +inf (when detect_positive) or -inf (when detect_negative)"""
    w = upcast(x)
    out = np.zeros(w.shape, np.bool_)
    if detect_positive:
        out |= np.isposinf(w)
    if detect_negative:
        out |= np.isneginf(w)
    return out


def _bitshift_infer(ctx):
    if ctx.attrs["direction"] not in ("LEFT", "RIGHT"):
        raise ctx.error(f"direction must be 'LEFT' or 'RIGHT', not {ctx.attrs['direction']!r}")
    return nary_infer(INT)(ctx)


@register("bitshift", family=ELEMENTWISE, inputs=2, attrs={"direction": Attr("str")}, infer=_bitshift_infer)
def bitshift(x, y, *, direction):
    """x << y or x >> y (arithmetic for signed x); shifts by < 0 or >= the bit width leave only the sign fill"""
    bits = x.dtype.itemsize * 8
    out_of_range = (y < 0) | (y >= bits)
    if direction == "RIGHT" and x.dtype.kind == "i":
        # Shifting right by bits - 1 is exactly the sign fill (0 or -1).
        return recast(np.right_shift(x, np.where(out_of_range, bits - 1, y).astype(y.dtype)), x.dtype)
    fn = np.left_shift if direction == "LEFT" else np.right_shift
    r = fn(x, np.where(out_of_range, 0, y).astype(y.dtype))
    return recast(np.where(out_of_range, np.zeros((), x.dtype), r), x.dtype)


@register("bitwise_and", family=ELEMENTWISE, inputs=2, infer=nary_infer(INT))
def bitwise_and(a, b, **_):
    """a & b"""
    return recast(np.bitwise_and(a, b), a.dtype)


@register("bitwise_or", family=ELEMENTWISE, inputs=2, infer=nary_infer(INT))
def bitwise_or(a, b, **_):
    """a | b"""
    return recast(np.bitwise_or(a, b), a.dtype)


@register("bitwise_xor", family=ELEMENTWISE, inputs=2, infer=nary_infer(INT))
def bitwise_xor(a, b, **_):
    """a ^ b"""
    return recast(np.bitwise_xor(a, b), a.dtype)


@register("bitwise_not", family=ELEMENTWISE, inputs=1, infer=unary_infer(INT))
def bitwise_not(x, **_):
    """~x"""
    return recast(np.invert(x), x.dtype)


# -- select, clip, cast -------------------------------------------------------------


def _where_infer(ctx):
    check_dtype(ctx, 0, BOOL, "a bool condition")
    if ctx.type(1).dtype != ctx.type(2).dtype:
        raise ctx.error(f"operand dtypes differ: {ctx.type(1)} and {ctx.type(2)}")
    try:
        shape = broadcast_shapes(ctx.type(0).shape, ctx.type(1).shape, ctx.type(2).shape)
    except ValueError as e:
        raise ctx.error(str(e)) from None
    return [TensorType(shape, ctx.type(1).dtype)]


@register("where", family=ELEMENTWISE, inputs=3, infer=_where_infer)
def where(cond, x, y, **_):
    """x where cond else y"""
    return _as(np.where(cond, x, y), x)


def _clip_infer(ctx):
    dt = check_dtype(ctx, 0, NUMERIC)
    for i in (1, 2):
        if ctx.has(i):
            check_dtype(ctx, i, frozenset({dt}), f"{dt} (the input's dtype)")
            check_unidirectional(ctx, i, ctx.type(0).shape)
    return [ctx.type(0)]


@register("clip", family=ELEMENTWISE, inputs=(1, 3), infer=_clip_infer)
def clip(x, lo=None, hi=None, **_):
    """min(max(x, lo), hi); an absent bound does not clip; lo > hi gives hi"""
    r = x
    if lo is not None:
        r = np.maximum(r, lo)
    if hi is not None:
        r = np.minimum(r, hi)
    return _as(r, x)


def _cast_infer(ctx):
    if ctx.attrs["round_mode"] not in ("up", "down", "nearest"):
        raise ctx.error(f"round_mode must be 'up', 'down' or 'nearest', not {ctx.attrs['round_mode']!r}")
    return [ctx.type(0).with_dtype(ctx.attrs["to"])]


@register(
    "cast",
    family=ELEMENTWISE,
    inputs=1,
    attrs={"to": Attr("dtype"), "saturate": Attr("bool", True), "round_mode": Attr("str", "up")},
    infer=_cast_infer,
)
def cast(x, *, to, saturate, round_mode):
    """x converted to dtype `to` (float -> int truncates; int -> int wraps; -> bool is x != 0).
    saturate: out-of-range values (and infinities) cast to a float8 become its largest finite
    value. round_mode: how casts to f8e8m0 round (up, down, nearest)."""
    dt = to.np
    if x.dtype == dt:
        return x
    src = x
    # ml_dtypes types (bf16, f8) convert reliably only to and from numpy's floats: go through f32.
    if (x.dtype in _LOWP and x.dtype != np.float16) or (dt in _LOWP and x.dtype.kind != "f"):
        src = x.astype(np.float32)
    if to == DType.f8e8m0:
        return _to_e8m0(src.astype(np.float32), saturate, round_mode)
    if to in FLOAT8 and saturate:
        big = float(ml_dtypes.finfo(dt).max)
        wide = src.astype(np.float64 if src.dtype == np.float64 else np.float32)
        return np.asarray(np.clip(wide, -big, big)).astype(dt)
    return np.asarray(src).astype(dt)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """f32 -> f8e8m0 (a power of two: the f32 exponent, rounded), as the ONNX reference does it.
    The sign is ignored (negative inputs are undefined in ONNX); inf and NaN become NaN."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exponent == 0xFF
    if round_mode == "up":
        step = (bits & 0x7FFFFF) > 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) > 0
        rest = (bits & 0x3FFFFF) > 0
        step = guard & (rest | (exponent > 0))
    else:  # down: truncate the mantissa
        step = np.zeros(bits.shape, bool)
    step &= ~special
    if saturate:
        step &= exponent != 0xFE  # do not round up past the largest exponent
    out = np.where(special, 0xFF, exponent + step).astype(np.uint8)
    return out.view(ml_dtypes.float8_e8m0fnu)


@register("identity", family=ELEMENTWISE, inputs=1, infer=same_as_input)
def identity(x, **_):
    """x"""
    return x


# -- variadic min / max / sum / mean --------------------------------------------------


@register("min", family=ELEMENTWISE, inputs=(1, None), infer=nary_infer(NUMERIC))
def min_(*xs, **_):
    """elementwise minimum of the operands (NaN propagates)"""
    r = upcast(xs[0])
    for x in xs[1:]:
        r = np.minimum(r, upcast(x))
    return recast(r, xs[0].dtype)


@register("max", family=ELEMENTWISE, inputs=(1, None), infer=nary_infer(NUMERIC))
def max_(*xs, **_):
    """elementwise maximum of the operands (NaN propagates)"""
    r = upcast(xs[0])
    for x in xs[1:]:
        r = np.maximum(r, upcast(x))
    return recast(r, xs[0].dtype)


@register("sum", family=ELEMENTWISE, inputs=(1, None), infer=nary_infer(NUMERIC))
def sum_(*xs, **_):
    """elementwise sum of the operands, left to right"""
    r = upcast(xs[0])
    for x in xs[1:]:
        r = r + upcast(x)
    return recast(r, xs[0].dtype)


@register("mean", family=ELEMENTWISE, inputs=(1, None), infer=nary_infer(FLOAT))
def mean(*xs, **_):
    """elementwise mean of the operands"""
    r = upcast(xs[0])
    for x in xs[1:]:
        r = r + upcast(x)
    r = r / np.asarray(len(xs), r.dtype)
    return recast(r, xs[0].dtype)


# -- linear quantization ---------------------------------------------------------------
# Granularity follows the scale's shape: a scalar (or one-element vector) is per-tensor,
# a vector of length x.shape[axis] is per-axis, and (block_size > 0) a tensor of x's rank
# with ceil(x.shape[axis] / block_size) at `axis` is blocked. The zero point has the
# scale's shape. `axis` is non-negative; it is ignored for per-tensor scales.

_QUANT_ATTRS = {"axis": Attr("int", 1), "block_size": Attr("int", 0)}


def _is_per_tensor(t: TensorType) -> bool:
    return t.rank == 0 or (t.rank == 1 and isinstance(t.shape[0], int) and t.shape[0] == 1)


def _check_qparams(ctx, x: TensorType, scale: TensorType, zp: TensorType | None) -> None:
    same_shape = zp is not None and zp.rank == scale.rank and all(map(dims_equal, zp.shape, scale.shape))
    if zp is not None and not same_shape and not (_is_per_tensor(zp) and _is_per_tensor(scale)):
        raise ctx.error(f"the zero point {zp} must have the scale's shape {list(scale.shape)}")
    block = ctx.attrs["block_size"]
    if block < 0:
        raise ctx.error(f"block_size must be >= 0, got {block}")
    if _is_per_tensor(scale) and block == 0:
        return
    axis = ctx.attrs["axis"]
    if not 0 <= axis < x.rank:
        raise ctx.error(f"axis {axis} is out of range for rank {x.rank}")
    if block == 0:
        if scale.rank != 1:
            raise ctx.error(f"a per-axis scale must be 1-D, got {scale}")
        if dim_known_ne(scale.shape[0], x.shape[axis]):
            raise ctx.error(f"the scale has {scale.shape[0]} entries but axis {axis} of the input has {x.shape[axis]}")
        return
    want = tuple(ceildiv(d, block) if k == axis else d for k, d in enumerate(x.shape))
    if scale.rank != x.rank or any(dim_known_ne(a, b) for a, b in zip(scale.shape, want)):
        raise ctx.error(
            f"a blocked scale for input {x} with block_size {block} must have shape {list(want)}, got {scale}"
        )


def _qparam(p: np.ndarray, x_shape: tuple, axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point reshaped/repeated to broadcast against x."""
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1 and block_size == 0):
        return p.reshape(())
    if block_size > 0:
        p = np.repeat(p, block_size, axis=axis)
        return np.take(p, np.arange(x_shape[axis]), axis=axis)
    shape = [1] * len(x_shape)
    shape[axis] = p.shape[0]
    return p.reshape(shape)


def _quantize_infer(ctx):
    x = ctx.type(0)
    check_dtype(ctx, 0, FLOAT | frozenset({DType.i32}), "float or i32")
    check_dtype(ctx, 1, SCALE | {DType.f8e8m0}, "f64/f32/f16/bf16/f8e8m0 scale")
    out = check_dtype(ctx, 2, QUANT, "quantized (i8/u8/i16/u16/f8) zero-point")
    _check_qparams(ctx, x, ctx.type(1), ctx.type(2))
    return [x.with_dtype(out)]


@register(
    "quantize_linear",
    family=ELEMENTWISE,
    inputs=3,
    attrs={**_QUANT_ATTRS, "saturate": Attr("bool", True)},
    infer=_quantize_infer,
)
def quantize_linear(x, scale, zero_point, *, axis, block_size, saturate):
    """saturate(round_half_even(x / scale) + zero_point) in the zero point's dtype (float8: no rounding to integers)"""
    out = zero_point.dtype
    # The division runs in f32 (f64 if an operand is f64), as onnxruntime does.
    wt = np.float64 if np.float64 in (x.dtype, scale.dtype) else np.float32
    s = _qparam(scale.astype(wt), x.shape, axis, block_size)
    zp = _qparam(zero_point.astype(wt), x.shape, axis, block_size)
    q = x.astype(wt) / s
    if out.kind in "iu":
        info = np.iinfo(out)
        return np.asarray(np.clip(np.rint(q) + zp, info.min, info.max)).astype(out)
    return cast(np.asarray(q + zp), to=DType.from_numpy(out), saturate=saturate, round_mode="up")


def _dequantize_infer(ctx):
    x = ctx.type(0)
    check_dtype(ctx, 0, QUANT | frozenset({DType.i32}), "quantized (i8/u8/i16/u16/i32/f8)")
    out = check_dtype(ctx, 1, SCALE, "f64/f32/f16/bf16 scale")
    zp = None
    if ctx.has(2):
        check_dtype(ctx, 2, frozenset({x.dtype}), f"{x.dtype} (the input's dtype)")
        zp = ctx.type(2)
    _check_qparams(ctx, x, ctx.type(1), zp)
    return [x.with_dtype(out)]


@register("dequantize_linear", family=ELEMENTWISE, inputs=(2, 3), attrs=_QUANT_ATTRS, infer=_dequantize_infer)
def dequantize_linear(x, scale, zero_point=None, *, axis, block_size):
    """(x - zero_point) * scale in the scale's dtype (an absent zero point is 0)"""
    wt = np.float64 if scale.dtype == np.float64 else np.float32
    if x.dtype.kind in "iu":
        centred = x.astype(np.int64)
        if zero_point is not None:
            centred = centred - _qparam(zero_point.astype(np.int64), x.shape, axis, block_size)
        centred = centred.astype(wt)
    else:
        centred = x.astype(wt)
        if zero_point is not None:
            centred = centred - _qparam(zero_point.astype(wt), x.shape, axis, block_size)
    r = centred * _qparam(scale.astype(wt), x.shape, axis, block_size)
    return recast(r, scale.dtype)
