"""TE emitters for the elementwise ops (einfuse/ir/ops/elementwise.py), plus the helpers
every emitter module shares: broadcasting loads, the work dtype of low-precision floats,
NaN-propagating min/max, and vectorizable f32 exp/tanh/erf.

Semantics follow the numpy reference exactly where it matters: 16-bit floats compute in
f32 and round once at the end, integer division truncates (and never traps: a zero or
-1 divisor is handled before the machine divide), float -> int casts truncate, min/max
propagate NaN. Transcendentals in f32 use polynomial forms that vectorize (LLVM would
otherwise call scalar libm per lane): exp is within 2 ulp, tanh 4 ulp, erf 4e-7 absolute.
f64 uses libm.
"""

from __future__ import annotations

import math

import tvm
from tvm import te, tirx

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm.emit import emitter
from einfuse.codegen.tvm.lower import tvm_dtype
from einfuse.codegen.tvm.schedule_generic import MATERIALIZE

# -- shared helpers ------------------------------------------------------------------

LOWP = ("float16", "bfloat16")


def dtype_of(x) -> str:
    """The dtype string of a te.Tensor, tensor element or TIR expression."""
    d = getattr(x, "dtype", None)
    if d is not None:
        return str(d)
    if hasattr(x, "asobject"):  # a == b / a != b give lazy comparison objects
        return "bool"
    return str(x.ty)


def is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def is_signed_int(dtype: str) -> bool:
    return dtype.startswith("int")


def bits(dtype: str) -> int:
    return tvm.DataType(dtype).bits


def work_dtype(dtype: str) -> str:
    """The dtype arithmetic on `dtype` runs in (f32 for 16-bit floats, as the reference)."""
    return "float32" if dtype in LOWP else dtype


def const(v, dtype: str):
    if dtype == "bool":
        return tirx.const(bool(v), "bool")
    if is_int(dtype):
        return tirx.const(int(v), dtype)
    return tirx.const(float(v), dtype)


def cast(x, dtype: str):
    return x if dtype_of(x) == dtype else x.astype(dtype)


def up(x):
    """x in its work dtype."""
    return cast(x, work_dtype(dtype_of(x)))


def shape_of(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def load(t, idx):
    """t read at output index `idx` with numpy broadcasting (t's dims align to the right)."""
    shape = shape_of(t)
    off = len(idx) - len(shape)
    args = [0 if d == 1 else idx[off + k] for k, d in enumerate(shape)]
    return t(*args)


def out_dtype(node, k: int = 0) -> str:
    return tvm_dtype(node.outputs[k].dtype)


def elementwise(ctx, node, tensors, body, dtype: str | None = None, op: str | None = None):
    """One compute stage over the node's (broadcast) output shape:
    body(*loaded operand values) -> value of the output dtype.

    When inlining the operands' producers would make the expression larger than
    EXPANDED_LIMIT (a chain of transcendentals: softplus(softplus(x)), elu then softplus),
    the large operands are read from materialized stages instead (materialize_deep)."""
    shape = ctx.shape(node.outputs[0])
    dtype = dtype or out_dtype(node)

    def build(operands):
        def fcompute(*i):
            vals = [None if t is None else load(t, i) for t in operands]
            return cast(body(*vals), dtype)

        return te.compute(shape, fcompute, name=ctx.name(op or node.op))

    out = build(tensors)
    if stage_expanded_size(out, {}) <= EXPANDED_LIMIT:
        return out
    return build([None if t is None else materialize_deep(ctx, t) for t in tensors])


# -- expression size across inlined stages -------------------------------------------------
#
# TVM's LLVM codegen binds every Let in its arithmetic analyzer, which simplifies the
# bound value with all enclosing Let values substituted (a tree walk, with Select
# conditions entered as constraints): its cost follows the size of the expression with
# every Let expanded, which multiplies along a chain of inlined transcendentals (each an
# exp/log polynomial with NaN/inf selects). One softplus expands to ~5e3 nodes, mish to
# ~1e5 (0.6 s to compile); softplus(softplus(x)) to ~1.3e6 (2.5 s); elu -> softplus or
# one_hot -> elu -> softplus, and four transcendentals in a row (~6e9), never finished.
# Past EXPANDED_LIMIT a stage reads its operands from materialized stages instead.
EXPANDED_LIMIT = 1 << 18
_CHILD_FIELDS = ("a", "b", "value", "condition", "true_value", "false_value")


def _expanded_size(e, env: dict, memo: dict) -> int:
    """Nodes in e with every Let variable replaced by its value (what TVM's analyzer walks)."""
    if isinstance(e, te.Tensor):
        return stage_expanded_size(e, memo)
    if isinstance(e, tirx.Var):
        return env.get(hash(e), 1)
    # Shared subexpressions are counted once per Let scope (env), without walking them again.
    key = (hash(e), id(env))
    if key in memo:
        return memo[key]
    if isinstance(e, tirx.Let):
        inner = dict(env)
        inner[hash(e.var)] = _expanded_size(e.value, env, memo)
        memo.setdefault("scopes", []).append(inner)  # keeps id(inner) unique while memo lives
        size = _expanded_size(e.body, inner, memo)
    elif isinstance(e, tvm.ir.expr.Call):  # intrinsics, and te.tensor_load(tensor, *indices)
        size = 1 + sum(_expanded_size(a, env, memo) for a in e.args)
    else:
        size = 1
        for f in _CHILD_FIELDS:
            child = getattr(e, f, None)
            if child is not None and not isinstance(child, (int, float, str)):
                size += _expanded_size(child, env, memo)
    memo[key] = size = min(size, 1 << 40)
    return size


def stage_expanded_size(t, memo: dict) -> int:
    """The expanded size of tensor t's element once the scheduler inlines its producers
    (placeholders, reductions and materialized stages stay buffers: size 1)."""
    op = t.op
    if not isinstance(op, te.ComputeOp) or MATERIALIZE in {str(k) for k in op.attrs}:
        return 1
    if any(isinstance(b, tirx.Reduce) for b in op.body):
        return 1
    key = ("stage", op.name)
    if key not in memo:
        memo[key] = max(_expanded_size(b, {}, memo) for b in op.body)
    return memo[key]


def materialize_deep(ctx, t):
    """t itself when small (a load, a cheap op), else a copy of it marked MATERIALIZE: the
    generic schedule computes it into a buffer of its own instead of inlining the chain
    into its consumers."""
    if stage_expanded_size(t, {}) <= 64:
        return t
    return te.compute(t.shape, _reader(t), name=ctx.name("stage"), attrs={MATERIALIZE: 1})


def _reader(t):
    def read(*i):
        return t(*i)

    return read


def isnan(x):
    return tirx.isnan(x) if is_float(dtype_of(x)) else tirx.const(False, "bool")


def fmax(a, b):
    """maximum with numpy's NaN propagation (either NaN -> NaN)."""
    if not is_float(dtype_of(a)):
        return tirx.max(a, b)
    return let(a, lambda a: let(b, lambda b: tirx.Select(tirx.Or(a > b, tirx.isnan(a)), a, b)))


def fmin(a, b):
    if not is_float(dtype_of(a)):
        return tirx.min(a, b)
    return let(a, lambda a: let(b, lambda b: tirx.Select(tirx.Or(a < b, tirx.isnan(a)), a, b)))


def let(value, body, hint: str = "t"):
    """body(v) with v bound to `value` once (a TIR Let): keeps expressions that use their
    argument several times (select chains, polynomials) from growing exponentially when
    composed (tanh(softplus(x)) would otherwise take LLVM seconds)."""
    if hasattr(value, "asobject"):
        value = value.asobject()
    if isinstance(value, (tirx.Var, tirx.IntImm, tirx.FloatImm)):
        return body(value)
    v = tirx.Var(hint, dtype_of(value))
    return tirx.Let(v, value, body(v))


def clamp_index(i, n: int):
    """An index clamped into [0, n)."""
    return tirx.max(tirx.min(i, n - 1), 0)


def guarded_read(t, index, inside, fill):
    """t[index] where `inside` holds, else `fill`, never reading out of bounds: the load
    uses the clamped index, is bound by a Let outside the select (the simplifier would
    otherwise drop the clamps, using the condition) and the select vectorizes."""
    shape = shape_of(t)
    clamped = [clamp_index(i, n) for i, n in zip(index, shape)]
    v = tirx.Var("v", dtype_of(t))
    return tirx.Let(v, t(*clamped), tirx.Select(inside, v, fill))


def ipow(v, p: int):
    """v ** p for a small positive integer p, by multiplication (v bound once)."""

    def body(t):
        r = t
        for _ in range(p - 1):
            r = r * t
        return r

    return let(v, body)


def clamp(x, lo, hi):
    """min(max(x, lo), hi) for plain (non-NaN) bounds: cheap, used inside approximations."""
    return tirx.max(tirx.min(x, const(hi, dtype_of(x))), const(lo, dtype_of(x)))


# -- vectorizable f32 transcendentals ----------------------------------------------------

_LOG2E = 1.4426950408889634  # 1/ln 2
_LN2_HI = 0.693359375  # ln 2 split in two (Cody-Waite): hi has few mantissa bits
_LN2_LO = -2.12194440e-4
_EXP_HI = 88.72283935546875  # above: exp overflows f32
_EXP_LO = -103.97207708  # ln(2^-150): below, e^x rounds to 0 in f32
# Minimax coefficients of (e^f - 1 - f) / f^2 on [-ln2/2, ln2/2] (Cephes expf).
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _pow2(n):
    """2^n for an int32 expression n in [-126, 127], built in the exponent field."""
    return tirx.reinterpret("float32", (n + tirx.const(127, "int32")) << tirx.const(23, "int32"))


def exp_f32(x):
    """e^x for an f32 expression: range reduction by ln 2, degree-7 polynomial, exponent
    bits built with integer ops (all vectorizable)."""
    return let(x, _exp_f32)


def _exp_f32(x):
    f32 = "float32"
    xc = clamp(x, _EXP_LO, _EXP_HI)
    n = tirx.Var("n", f32)
    f = tirx.Var("f", f32)
    p = const(_EXP_P[0], f32)
    for c in _EXP_P[1:]:
        p = p * f + const(c, f32)
    y = p * f * f + f + const(1.0, f32)
    # n is in [-150, 128]: 2^n as two normal halves, so denormal results and n = 128 work.
    ni = tirx.Var("n", "int32")
    half = ni >> tirx.const(1, "int32")
    r = let(y, lambda y: tirx.Let(ni, n.astype("int32"), y * _pow2(half) * _pow2(ni - half)))
    r = tirx.Let(f, xc - n * const(_LN2_HI, f32) - n * const(_LN2_LO, f32), r)
    r = tirx.Let(n, tirx.floor(xc * const(_LOG2E, f32) + const(0.5, f32)), r)
    r = tirx.Select(x > const(_EXP_HI, f32), const(math.inf, f32), r)
    r = tirx.Select(x < const(_EXP_LO, f32), const(0.0, f32), r)
    return tirx.Select(tirx.isnan(x), x, r)


# Rational minimax approximation of tanh on [-9, 9] (Eigen's ptanh_float).
_TANH_A = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)
_TANH_B = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def tanh_f32(x):
    return let(x, _tanh_f32)


def _tanh_f32(x):
    f32 = "float32"
    xc = tirx.Var("xc", f32)
    x2 = tirx.Var("x2", f32)
    p = const(_TANH_A[0], f32)
    for c in _TANH_A[1:]:
        p = x2 * p + const(c, f32)
    p = xc * p
    q = const(_TANH_B[0], f32)
    for c in _TANH_B[1:]:
        q = x2 * q + const(c, f32)
    ratio = tirx.Let(xc, clamp(x, -9.0, 9.0), tirx.Let(x2, xc * xc, p / q))
    r = tirx.Select(tirx.abs(x) < const(4e-4, f32), x, ratio)
    return tirx.Select(tirx.isnan(x), x, r)


# Rational approximation of erf on [-4, 4] (Eigen's perf_float), 4e-7 absolute.
_ERF_A = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_B = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def erf_f32(x):
    return let(x, _erf_f32)


def _erf_f32(x):
    f32 = "float32"
    xc = tirx.Var("xc", f32)
    x2 = tirx.Var("x2", f32)
    p = const(_ERF_A[0], f32)
    for c in _ERF_A[1:]:
        p = x2 * p + const(c, f32)
    p = xc * p
    q = const(_ERF_B[0], f32)
    for c in _ERF_B[1:]:
        q = x2 * q + const(c, f32)
    ratio = tirx.Let(xc, clamp(x, -4.0, 4.0), tirx.Let(x2, xc * xc, p / q))
    return tirx.Select(tirx.isnan(x), x, ratio)


def exp(x):
    """e^x in x's dtype (f32: the vectorizable form; f64: libm)."""
    return exp_f32(x) if dtype_of(x) == "float32" else tirx.exp(x)


def tanh(x):
    return tanh_f32(x) if dtype_of(x) == "float32" else tirx.tanh(x)


def erf(x):
    return erf_f32(x) if dtype_of(x) == "float32" else tirx.erf(x)


def expm1(x):
    """e^x - 1, accurate near 0 (Kahan: (u - 1) * x / log(u) with u = e^x)."""
    return let(x, lambda x: let(exp(x), lambda u: _expm1(x, u)))


def _expm1(x, u):
    dt = dtype_of(x)
    um1 = u - const(1.0, dt)
    safe_log = tirx.log(tirx.Select(u == const(1.0, dt), const(2.0, dt), u))
    r = tirx.Select(u == const(1.0, dt), x, um1 * x / safe_log)
    # u == inf or u - 1 == -1 (large |x|): u - 1 is exact there.
    return tirx.Select(tirx.Or(um1 == const(-1.0, dt), tirx.isinf(u)), um1, r)


def log1p(x):
    """log(1 + x), accurate near 0 (Goldberg: log(u) * x / (u - 1) with u = 1 + x)."""
    return let(x, lambda x: let(x + const(1.0, dtype_of(x)), lambda u: _log1p(x, u)))


def _log1p(x, u):
    dt = dtype_of(x)
    um1 = u - const(1.0, dt)
    safe = tirx.Select(um1 == const(0.0, dt), const(1.0, dt), um1)
    r = tirx.Select(um1 == const(0.0, dt), x, tirx.log(u) * x / safe)
    return tirx.Select(tirx.isinf(u), u, r)


def sigmoid(x):
    """1 / (1 + e^-x), with e^-|x| only (no overflow), as the reference."""
    dt = dtype_of(x)
    one = const(1.0, dt)
    return let(
        x, lambda x: let(exp(-tirx.abs(x)), lambda e: tirx.Select(x >= const(0.0, dt), one / (one + e), e / (one + e)))
    )


def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|) (numpy's logaddexp(0, x))."""
    dt = dtype_of(x)

    def body(x):
        r = tirx.max(x, const(0.0, dt)) + log1p(exp(-tirx.abs(x)))
        return tirx.Select(tirx.isnan(x), x, r)

    return let(x, body)


def bool_ne(p, q):
    """p xor q for bool expressions (TVM emits a float compare for != on i1)."""
    return tirx.Or(tirx.And(p, tirx.Not(q)), tirx.And(tirx.Not(p), q))


def fmod(x, y):
    """C fmod (libm; TVM has no LLVM lowering for it)."""
    d = dtype_of(x)
    return tirx.call_pure_extern(d, "fmodf" if d == "float32" else "fmod", x, y)


# -- binary arithmetic ------------------------------------------------------------------


def _float_binary(fn):
    def body(a, b):
        return fn(up(a), up(b))

    return body


@emitter("add")
def add(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], _float_binary(lambda x, y: x + y))]


@emitter("sub")
def sub(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], _float_binary(lambda x, y: x - y))]


@emitter("mul")
def mul(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], _float_binary(lambda x, y: x * y))]


def _safe_divisor(b):
    """b with 0 and -1 replaced by 1: x86 integer division traps on / 0 and MIN / -1."""
    dt = dtype_of(b)
    bad = b == const(0, dt)
    if is_signed_int(dt):
        bad = tirx.Or(bad, b == const(-1, dt))
    return tirx.Select(bad, const(1, dt), b)


def int_div(a, b):
    """C division (truncating); matches the reference's results for 0 and -1 divisors."""
    dt = dtype_of(a)
    q = tirx.truncdiv(a, _safe_divisor(b))
    if is_signed_int(dt):
        q = tirx.Select(b == const(-1, dt), const(0, dt) - a, q)
        # The reference (numpy floor division + truncation fix-up) gives 1 for a < 0, else 0.
        zero_q = tirx.Select(a < const(0, dt), const(1, dt), const(0, dt))
    else:
        zero_q = const(0, dt)
    return tirx.Select(b == const(0, dt), zero_q, q)


@emitter("div")
def div(ctx, node, a, b):
    dt = dtype_of(a)
    if is_int(dt):
        return [elementwise(ctx, node, [a, b], int_div)]
    return [elementwise(ctx, node, [a, b], _float_binary(lambda x, y: x / y))]


@emitter("mod")
def mod(ctx, node, a, b):
    dt = dtype_of(a)
    fmod_mode = node.attrs["fmod"]
    if is_int(dt):
        if fmod_mode:
            return [elementwise(ctx, node, [a, b], lambda x, y: tirx.truncmod(x, _safe_divisor(y)))]
        return [elementwise(ctx, node, [a, b], lambda x, y: tirx.floormod(x, _safe_divisor(y)))]

    def body(x, y):
        x, y = up(x), up(y)
        r = fmod(x, y)
        if fmod_mode:
            return r
        zero = const(0.0, dtype_of(r))
        # numpy's mod: the remainder takes the divisor's sign.
        fix = tirx.And(r != zero, bool_ne(r < zero, y < zero))
        return tirx.Select(fix, r + y, r)

    return [elementwise(ctx, node, [a, b], body)]


@emitter("pow")
def pow_(ctx, node, base, exponent):
    bdt, edt = dtype_of(base), dtype_of(exponent)
    narrow = ("float32",) + LOWP
    k = ctx.const_value(exponent)
    e = float(k.reshape(-1)[0]) if k is not None and k.size == 1 else None
    if is_float(bdt) and e in (-1.0, 1.0, 2.0, 3.0, 4.0):
        # Small integer powers by multiplication (LayerNorm's x**2, GELU's x**3): exact for
        # 2 (x*x is correctly rounded, like pow), within 2 ulp for 3 and 4, and vectorized
        # where pow would be a scalar libm call per element.
        if e == -1.0:
            return [elementwise(ctx, node, [base], lambda x: _one(up(x)) / up(x))]
        return [elementwise(ctx, node, [base], lambda x: ipow(up(x), int(e)))]
    wt = "float32" if bdt in narrow and edt in narrow else "float64"

    def body(x, y):
        r = tirx.power(cast(x, wt), cast(y, wt))
        if is_int(bdt):
            r = tirx.trunc(r)
        return r

    return [elementwise(ctx, node, [base, exponent], body)]


# -- unary math -------------------------------------------------------------------------


def _float_unary(fn):
    def body(x):
        return let(up(x), fn)

    return body


def _one(x):
    return const(1.0, dtype_of(x))


_FLOAT_UNARY = {
    "exp": exp,
    "log": tirx.log,
    "sqrt": tirx.sqrt,
    "reciprocal": lambda x: _one(x) / x,
    "floor": tirx.floor,
    "ceil": tirx.ceil,
    "round": tirx.nearbyint,  # half to even, like np.rint
    "sin": tirx.sin,
    "cos": tirx.cos,
    "tan": tirx.tan,
    "asin": tirx.asin,
    "acos": tirx.acos,
    "atan": tirx.atan,
    "sinh": lambda x: (exp(x) - exp(-x)) * const(0.5, dtype_of(x)),
    "cosh": lambda x: (exp(x) + exp(-x)) * const(0.5, dtype_of(x)),
    "asinh": tirx.asinh,
    "acosh": tirx.acosh,
    "atanh": tirx.atanh,
    "erf": erf,
    "tanh": tanh,
    "sigmoid": sigmoid,
}


def _register_float_unary(name, fn):
    @emitter(name)
    def emit(ctx, node, x):
        return [elementwise(ctx, node, [x], _float_unary(fn))]

    return emit


for _name, _fn in _FLOAT_UNARY.items():
    _register_float_unary(_name, _fn)


@emitter("neg")
def neg(ctx, node, x):
    return [elementwise(ctx, node, [x], lambda v: const(0, dtype_of(v)) - v if is_int(dtype_of(v)) else -up(v))]


@emitter("abs")
def abs_(ctx, node, x):
    dt = dtype_of(x)
    if not is_int(dt):
        return [elementwise(ctx, node, [x], _float_unary(tirx.abs))]
    if not is_signed_int(dt):
        return [elementwise(ctx, node, [x], lambda v: v)]
    # Wraps like the reference: abs(MIN) == MIN.
    return [elementwise(ctx, node, [x], lambda v: tirx.Select(v < const(0, dt), const(0, dt) - v, v))]


@emitter("sign")
def sign(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        zero, one = const(0, dt), const(1, dt)
        if is_int(dt) and not is_signed_int(dt):
            return tirx.Select(v > zero, one, zero)
        neg_one = const(-1, dt)
        # NaN compares false both ways and stays NaN (so does 0).
        return tirx.Select(v > zero, one, tirx.Select(v < zero, neg_one, v))

    return [elementwise(ctx, node, [x], body)]


# -- activations ------------------------------------------------------------------------


def _attr_const(node, name: str, dtype: str):
    return const(float(node.attrs[name]), dtype)


@emitter("relu")
def relu(ctx, node, x):
    def body(v):
        zero = const(0, dtype_of(v))
        return tirx.Select(v < zero, zero, v)  # NaN stays NaN, as np.maximum

    return [elementwise(ctx, node, [x], body)]


@emitter("leaky_relu")
def leaky_relu(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        return tirx.Select(v >= const(0, dt), v, v * _attr_const(node, "alpha", dt))

    return [elementwise(ctx, node, [x], body)]


def _elu_core(v, alpha):
    dt = dtype_of(v)
    zero = const(0.0, dt)
    return tirx.Select(v > zero, v, alpha * expm1(tirx.min(v, zero)))


@emitter("elu")
def elu(ctx, node, x):
    return [
        elementwise(ctx, node, [x], lambda v: _elu_core(up(v), _attr_const(node, "alpha", work_dtype(dtype_of(v)))))
    ]


@emitter("selu")
def selu(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        return _attr_const(node, "gamma", dt) * _elu_core(v, _attr_const(node, "alpha", dt))

    return [elementwise(ctx, node, [x], body)]


@emitter("celu")
def celu(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        a = _attr_const(node, "alpha", dt)
        zero = const(0.0, dt)
        return fmax(v, zero) + tirx.min(zero, a * expm1(tirx.min(v, zero) / a))

    return [elementwise(ctx, node, [x], body)]


@emitter("gelu")
def gelu(ctx, node, x):
    approximate = node.attrs["approximate"]

    def body(v):
        v = up(v)
        dt = dtype_of(v)
        half, one = const(0.5, dt), const(1.0, dt)
        if approximate == "tanh":
            inner = const(math.sqrt(2 / math.pi), dt) * (v + const(0.044715, dt) * v * v * v)
            return half * v * (one + tanh(inner))
        return half * v * (one + erf(v * const(1 / math.sqrt(2), dt)))

    if approximate not in ("none", "tanh"):
        raise LoweringError(f"gelu approximate={approximate!r} is not supported")
    return [elementwise(ctx, node, [x], body)]


def _clip01(v):
    dt = dtype_of(v)
    return fmin(fmax(v, const(0.0, dt)), const(1.0, dt))


@emitter("hard_sigmoid")
def hard_sigmoid(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        return _clip01(_attr_const(node, "alpha", dt) * v + _attr_const(node, "beta", dt))

    return [elementwise(ctx, node, [x], body)]


@emitter("hard_swish")
def hard_swish(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        return v * _clip01(v * const(1 / 6, dt) + const(0.5, dt))

    return [elementwise(ctx, node, [x], body)]


@emitter("softplus")
def softplus_(ctx, node, x):
    return [elementwise(ctx, node, [x], _float_unary(softplus))]


@emitter("softsign")
def softsign(ctx, node, x):
    return [elementwise(ctx, node, [x], _float_unary(lambda v: v / (_one(v) + tirx.abs(v))))]


@emitter("mish")
def mish(ctx, node, x):
    return [elementwise(ctx, node, [x], _float_unary(lambda v: v * tanh(softplus(v))))]


@emitter("thresholded_relu")
def thresholded_relu(ctx, node, x):
    def body(v):
        v = up(v)
        dt = dtype_of(v)
        return tirx.Select(v > _attr_const(node, "alpha", dt), v, const(0.0, dt))

    return [elementwise(ctx, node, [x], body)]


@emitter("prelu")
def prelu(ctx, node, x, slope):
    def body(v, s):
        v, s = up(v), up(s)
        return tirx.Select(v >= const(0, dtype_of(v)), v, s * v)

    return [elementwise(ctx, node, [x, slope], body)]


@emitter("shrink")
def shrink(ctx, node, x):
    def body(v):
        # Integers compute in f64 and truncate back, as the reference.
        w = cast(v, "float64") if is_int(dtype_of(v)) else up(v)
        dt = dtype_of(w)
        b, lam = _attr_const(node, "bias", dt), _attr_const(node, "lambd", dt)
        r = tirx.Select(w < -lam, w + b, tirx.Select(w > lam, w - b, const(0.0, dt)))
        return tirx.trunc(r) if is_int(dtype_of(v)) else r

    return [elementwise(ctx, node, [x], body)]


# -- comparisons, logic, bitwise --------------------------------------------------------


def _comparable(v):
    dt = dtype_of(v)
    if dt == "bool":
        return v.astype("int8")
    return up(v)


def _register_compare(name, fn):
    @emitter(name)
    def emit(ctx, node, a, b):
        return [elementwise(ctx, node, [a, b], lambda x, y: fn(_comparable(x), _comparable(y)))]

    return emit


for _name, _fn in {
    "equal": lambda x, y: x == y,
    "less": lambda x, y: x < y,
    "less_or_equal": lambda x, y: x <= y,
    "greater": lambda x, y: x > y,
    "greater_or_equal": lambda x, y: x >= y,
}.items():
    _register_compare(_name, _fn)


@emitter("not")
def logical_not(ctx, node, x):
    return [elementwise(ctx, node, [x], lambda v: tirx.Not(v))]


@emitter("and")
def logical_and(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], lambda x, y: tirx.And(x, y))]


@emitter("or")
def logical_or(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], lambda x, y: tirx.Or(x, y))]


@emitter("xor")
def logical_xor(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], bool_ne)]


@emitter("is_nan")
def is_nan(ctx, node, x):
    return [elementwise(ctx, node, [x], lambda v: tirx.isnan(up(v)))]


@emitter("is_inf")
def is_inf(ctx, node, x):
    pos, negative = node.attrs["detect_positive"], node.attrs["detect_negative"]

    def body(v):
        v = up(v)
        zero = const(0.0, dtype_of(v))
        inf = tirx.isinf(v)
        if pos and negative:
            return inf
        if pos:
            return tirx.And(inf, v > zero)
        if negative:
            return tirx.And(inf, v < zero)
        return tirx.const(False, "bool")

    return [elementwise(ctx, node, [x], body)]


@emitter("bitshift")
def bitshift(ctx, node, x, y):
    direction = node.attrs["direction"]

    def body(a, s):
        dt = dtype_of(a)
        nbits = bits(dt)
        out_of_range = s >= const(nbits, dt)
        if is_signed_int(dt):
            out_of_range = tirx.Or(out_of_range, s < const(0, dt))
        safe = tirx.Select(out_of_range, const(0, dt), s)
        if direction == "RIGHT" and is_signed_int(dt):
            # Arithmetic shift; shifting by bits - 1 is exactly the sign fill.
            return a >> tirx.Select(out_of_range, const(nbits - 1, dt), s)
        r = (a << safe) if direction == "LEFT" else (a >> safe)
        return tirx.Select(out_of_range, const(0, dt), r)

    return [elementwise(ctx, node, [x, y], body)]


@emitter("bitwise_and")
def bitwise_and(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], lambda x, y: x & y)]


@emitter("bitwise_or")
def bitwise_or(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], lambda x, y: x | y)]


@emitter("bitwise_xor")
def bitwise_xor(ctx, node, a, b):
    return [elementwise(ctx, node, [a, b], lambda x, y: x ^ y)]


@emitter("bitwise_not")
def bitwise_not(ctx, node, x):
    return [elementwise(ctx, node, [x], lambda v: ~v)]


# -- select, clip, cast, identity ----------------------------------------------------------


@emitter("where")
def where(ctx, node, cond, x, y):
    return [elementwise(ctx, node, [cond, x, y], lambda c, a, b: tirx.Select(c, a, b))]


@emitter("clip")
def clip(ctx, node, x, lo=None, hi=None):
    def body(v, lo_v, hi_v):
        r = v
        if lo_v is not None:
            r = fmax(r, lo_v)
        if hi_v is not None:
            r = fmin(r, hi_v)
        return r

    return [elementwise(ctx, node, [x, lo, hi], body)]


def convert(v, dst: str):
    """v converted to dtype `dst` with the reference's (numpy's) semantics."""
    src = dtype_of(v)
    if src == dst:
        return v
    if dst == "bool":
        return v != const(0, src)
    if src == "bool":
        return tirx.Select(v, const(1, dst), const(0, dst))
    if src == "bfloat16" or (src == "float16" and dst == "bfloat16"):
        v, src = v.astype("float32"), "float32"
    if is_float(src) and is_int(dst) and bits(dst) < 64:
        # x86 truncates to a 32/64-bit integer and numpy keeps the low bits; LLVM calls a
        # narrow out-of-range conversion poison. Go through i64 and wrap explicitly.
        return v.astype("int64").astype(dst)
    return v.astype(dst)


@emitter("cast")
def cast_(ctx, node, x):
    dst = out_dtype(node)
    return [elementwise(ctx, node, [x], lambda v: convert(v, dst))]


@emitter("identity")
def identity(ctx, node, x):
    return [elementwise(ctx, node, [x], lambda v: v)]


@emitter("bit_cast")
def bit_cast(ctx, node, x):
    src, dst = dtype_of(x), out_dtype(node)
    if src == "bool" and dst in ("int8", "uint8"):
        # numpy stores bools as the bytes 0 and 1.
        return [elementwise(ctx, node, [x], lambda v: convert(v, dst))]
    if "bool" in (src, dst) or bits(src) != bits(dst):
        raise LoweringError(f"bit_cast from {src} to {dst} is not supported")
    return [elementwise(ctx, node, [x], lambda v: tirx.reinterpret(dst, v))]


# -- variadic min / max / sum / mean --------------------------------------------------------


def _fold(fn, finish=None):
    def body(*vals):
        r = up(vals[0])
        for v in vals[1:]:
            r = fn(r, up(v))
        return finish(r, len(vals)) if finish else r

    return body


@emitter("min")
def min_(ctx, node, *xs):
    return [elementwise(ctx, node, list(xs), _fold(fmin))]


@emitter("max")
def max_(ctx, node, *xs):
    return [elementwise(ctx, node, list(xs), _fold(fmax))]


@emitter("sum")
def sum_(ctx, node, *xs):
    return [elementwise(ctx, node, list(xs), _fold(lambda a, b: a + b))]


@emitter("mean")
def mean(ctx, node, *xs):
    return [elementwise(ctx, node, list(xs), _fold(lambda a, b: a + b, lambda r, n: r / const(n, dtype_of(r))))]


# -- linear (de)quantization -----------------------------------------------------------------


def _qparam_loader(p, x_shape: tuple, axis: int, block_size: int):
    """idx -> the scale/zero-point element for x's element idx (per tensor, axis or block)."""
    if p is None:
        return None
    pshape = shape_of(p)
    if len(pshape) == 0 or (len(pshape) == 1 and pshape[0] == 1 and block_size == 0):
        return lambda idx: p(*([0] * len(pshape)))
    if block_size > 0:
        return lambda idx: p(*[tirx.floordiv(i, block_size) if k == axis else i for k, i in enumerate(idx)])
    return lambda idx: p(idx[axis])


@emitter("quantize_linear")
def quantize_linear(ctx, node, x, scale, zero_point):
    dst = out_dtype(node)
    if not is_int(dst):
        raise LoweringError(f"quantize_linear to {dst} is not supported (float8 outputs run on the reference)")
    shape = ctx.shape(node.outputs[0])
    axis, block = node.attrs["axis"], node.attrs["block_size"]
    wt = "float64" if "float64" in (dtype_of(x), dtype_of(scale)) else "float32"
    s_at = _qparam_loader(scale, shape, axis, block)
    z_at = _qparam_loader(zero_point, shape, axis, block)
    info = tvm.DataType(dst)
    lo = -(1 << (info.bits - 1)) if is_signed_int(dst) else 0
    hi = (1 << (info.bits - 1)) - 1 if is_signed_int(dst) else (1 << info.bits) - 1

    def fcompute(*i):
        q = cast(x(*i), wt) / cast(s_at(i), wt)
        r = tirx.nearbyint(q) + cast(z_at(i), wt)
        r = tirx.max(tirx.min(r, const(hi, wt)), const(lo, wt))
        return r.astype(dst)

    return [te.compute(shape, fcompute, name=ctx.name("quantize_linear"))]


@emitter("dequantize_linear")
def dequantize_linear(ctx, node, x, scale, zero_point=None):
    if not is_int(dtype_of(x)):
        raise LoweringError(f"dequantize_linear of {x.dtype} is not supported (float8 inputs run on the reference)")
    dst = out_dtype(node)
    shape = ctx.shape(node.outputs[0])
    axis, block = node.attrs["axis"], node.attrs["block_size"]
    wt = "float64" if dtype_of(scale) == "float64" else "float32"
    s_at = _qparam_loader(scale, shape, axis, block)
    z_at = _qparam_loader(zero_point, shape, axis, block)

    def fcompute(*i):
        centred = x(*i).astype("int64")
        if z_at is not None:
            centred = centred - z_at(i).astype("int64")
        return cast(centred.astype(wt) * cast(s_at(i), wt), dst)

    return [te.compute(shape, fcompute, name=ctx.name("dequantize_linear"))]
