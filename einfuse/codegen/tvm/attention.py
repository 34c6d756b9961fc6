"""TVM kernels for the `einsum_cascade` op: FlashAttention-style 1-pass attention and the
decode split (FlashDecoding / LeanAttention), hand-written in TIR for this CPU.

    spec = AttentionSpec(B=1, Hq=12, Hkv=12, S=512, M=512, D=64, Dv=64, scale=0.125, causal="top_left")
    func = attention_primfunc(spec)           # a tirx PrimFunc: (q, k, v[, bias], out)
    run = compile_attention(spec)             # numpy in/out, for tests and benchmarks
    out = run(q, k, v)

Semantics (the einsum_cascade contract): out[b, h, i] = softmax_j(q[b,h,i] . k[b,kh,j] * scale
+ bias[b,h,i,j], masked) @ v[b,kh], with kh = h // (Hq // Hkv) (GQA/MQA), causal "top_left"
(key j visible to query i iff j <= i) or "bottom_right" (iff j <= i + M - S). A row whose
keys are all masked (causal, or -inf bias everywhere) gives 0, not NaN.

Structure of the kernel (why it looks like this):
- One parallel loop over (batch, head, query tile[, kv split]) units; each unit keeps its
  working set in per-thread buffers of O(tile) size (the query tile transposed, one
  Tk x Tq logits tile, the Tq x Dv numerator, running max/sum): never an S x M buffer.
- Logits are computed transposed, sT[j, i], vectorized over the query rows i: the query
  tile is transposed once per unit and every key element is a scalar broadcast, so K is
  never transposed, and the softmax statistics (max and sum over j) become vertical
  vector operations instead of horizontal reductions.
- Online softmax: running max m, running denominator l, the numerator rescaled by
  exp(m_old - m_new) as it is loaded into registers for the P @ V update.
- exp is a polynomial in TIR (vectorizes; LLVM would otherwise call scalar expf).
- Causal: each query tile stops at the last key tile any of its rows sees; the diagonal
  tile is masked element-wise.
- Decode form (S <= FEW_ROWS query rows): the row-vector form would leave most lanes idle,
  so Q K^T dots each key with each query along d (contiguous loads of k, one lane sum per
  key) and the softmax and P @ V run vectorized over keys / value columns. The query heads
  sharing a kv head (GQA/MQA) are packed into one unit's rows, so each K/V tile is read
  from memory once per group.
- kv_splits > 1: units also split the key range into chunks; each writes its partial
  (max, sum, numerator) to a workspace of B*Hq*splits*S*(Dv+2) floats, then a loop
  merges them with the associative online-softmax reduction (on the calling thread when
  small, as in decode).
- Register blocking relies on LLVM promoting the small accumulator tiles to registers:
  TVM puts buffers under 1 KB on the stack and larger ones on the heap (where LLVM cannot
  rule out aliasing and keeps storing), so those tiles stay under 1 KB.
- f16 inputs are converted to f32 on load; bf16 travels as its uint16 bit pattern (numpy
  cannot hand bfloat16 over DLPack) and is widened by a shift; the output is rounded once
  (bf16: round to nearest even).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from einfuse.codegen.backend import LoweringError

CAUSAL_MODES = ("none", "top_left", "bottom_right")
_DTYPES = ("float32", "float16", "bfloat16")

_LOG2E = 1.4426950408889634  # 1 / ln 2
_LN2_HI = 0.693359375  # ln 2 split in two so n * ln2 stays exact for |n| < 2^8
_LN2_LO = -2.12194440e-4
_EXP_FLOOR = -87.0  # exp(x) below this is (nearly) denormal: flushed to exactly 0
FEW_ROWS = 4  # query lengths up to this take the decode form (see the module docstring)
MERGE_PARALLEL = 1 << 20  # multiply-adds above which the split merge runs in parallel


@dataclass(frozen=True)
class AttentionSpec:
    """Static shapes and attributes of one attention kernel."""

    B: int
    Hq: int
    Hkv: int
    S: int
    M: int
    D: int
    Dv: int
    scale: float
    causal: str = "none"
    dtype: str = "float32"  # of q, k, v and out: float32 | float16 | bfloat16
    bias_shape: tuple | None = None  # rank 4, each dim 1 or [B, Hq, S, M]
    bias_dtype: str | None = None
    kv_tile: int = 0  # 0: the kernel's choice
    kv_splits: int = 1

    def check(self) -> None:
        if self.causal not in CAUSAL_MODES:
            raise LoweringError(f"einsum_cascade: causal must be one of {CAUSAL_MODES}, got {self.causal!r}")
        if self.dtype not in _DTYPES:
            raise LoweringError(f"einsum_cascade: dtype {self.dtype} has no TVM attention kernel")
        if min(self.B, self.Hq, self.Hkv, self.D, self.Dv) < 1 or self.S < 0 or self.M < 0:
            raise LoweringError(f"einsum_cascade: bad shapes {self}")
        if self.Hq % self.Hkv:
            raise LoweringError(f"einsum_cascade: Hq={self.Hq} is not a multiple of Hkv={self.Hkv}")
        if self.kv_splits < 1:
            raise LoweringError(f"einsum_cascade: kv_splits must be >= 1, got {self.kv_splits}")
        if self.bias_shape is not None:
            full = (self.B, self.Hq, self.S, self.M)
            if len(self.bias_shape) != 4 or any(d not in (1, f) for d, f in zip(self.bias_shape, full)):
                raise LoweringError(f"einsum_cascade: bias shape {self.bias_shape} does not broadcast to {full}")
            if self.bias_dtype not in (self.dtype, "float32"):
                raise LoweringError(f"einsum_cascade: bias dtype {self.bias_dtype} must be {self.dtype} or float32")


@dataclass(frozen=True)
class Tiling:
    """Tile sizes: Tq query rows per unit (a multiple of the vector width VI), Tk keys per
    tile (a multiple of RJ, the keys register-blocked in Q K^T), RI query rows and VD value
    columns register-blocked in P @ V, chunk = keys per split (a multiple of Tk)."""

    Tq: int
    Tk: int
    VI: int
    RJ: int
    RI: int
    VD: int
    chunk: int
    splits: int


def choose_tiling(spec: AttentionSpec) -> Tiling:
    """Rule-based tiles: 16-lane f32 vectors (AVX-512) over query rows; a short query
    (decode) gets one 16-row tile. The working set (Tq x (D + Tk + Dv) floats) stays in L2."""
    S, M = max(spec.S, 1), max(spec.M, 1)
    Tq = 16 if S <= 16 else (32 if S <= 96 else 64)
    VI = 32 if Tq % 32 == 0 else 16
    RJ = 4
    Tk = spec.kv_tile if spec.kv_tile > 0 else 64
    Tk = max(RJ, -(-Tk // RJ) * RJ)
    Tk = min(Tk, -(-M // RJ) * RJ)
    RI = 3
    VD = spec.Dv if spec.Dv <= 64 else max(d for d in range(1, 65) if spec.Dv % d == 0)
    splits = max(1, min(spec.kv_splits, -(-M // Tk)))
    chunk = -(-M // splits)
    chunk = -(-chunk // Tk) * Tk
    splits = -(-M // chunk)
    return Tiling(Tq=Tq, Tk=Tk, VI=VI, RJ=RJ, RI=RI, VD=VD, chunk=chunk, splits=splits)


# -- scalar helpers (Python functions producing TIR expressions, inlined by TVMScript) -------


def _storage(dtype: str) -> str:
    """How a dtype travels in buffers (bf16 as itself: its bits are reinterpreted on load
    and store, so the kernel takes the bfloat16 tensors the calling convention passes)."""
    return dtype


def _widen(dtype: str):
    """x (stored as `dtype`) -> f32."""
    from tvm.script import tirx as T

    if dtype == "float32":
        return lambda x: x
    if dtype == "float16":
        return lambda x: T.Cast("float32", x)
    # bf16 is the top half of an f32.
    return lambda x: T.reinterpret(
        "float32", T.shift_left(T.Cast("uint32", T.reinterpret("uint16", x)), T.uint32(16))
    )


def _narrow(dtype: str):
    """f32 -> `dtype` storage, rounded once (bf16: to nearest even)."""
    from tvm.script import tirx as T

    if dtype == "float32":
        return lambda x: x
    if dtype == "float16":
        return lambda x: T.Cast("float16", x)

    def to_bf16(x):
        u = T.reinterpret("uint32", x)
        lsb = T.bitwise_and(T.shift_right(u, T.uint32(16)), T.uint32(1))
        return T.reinterpret("bfloat16", T.Cast("uint16", T.shift_right(u + T.uint32(0x7FFF) + lsb, T.uint32(16))))

    return to_bf16


def _fast_exp(x):
    """exp(x) for x <= 0 as a vectorizable polynomial (rel. error ~2e-7); exactly 0 below
    _EXP_FLOOR and for -inf, so masked logits contribute nothing."""
    from tvm import tirx
    from tvm.script import tirx as T

    # Let-bound so the shared subexpressions are computed once (the tree repeats them).
    xv = tirx.Var("xc", "float32")
    nv = tirx.Var("n", "float32")
    rv = tirx.Var("r", "float32")
    # Taylor series of exp(r) to degree 6, |r| <= ln2/2: truncation error < 1.2e-7.
    p = T.float32(1.0 / 720.0)
    for c in (1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        p = p * rv + T.float32(c)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", nv) + 127, 23))
    body = tirx.Let(rv, xv - nv * T.float32(_LN2_HI) - nv * T.float32(_LN2_LO), p * two_n)
    body = tirx.Let(nv, T.floor(xv * T.float32(_LOG2E) + T.float32(0.5)), body)
    body = tirx.Let(xv, T.max(x, T.float32(_EXP_FLOOR)), body)
    return T.Select(x < T.float32(_EXP_FLOOR), T.float32(0.0), body)


# -- the kernel ---------------------------------------------------------------------------------


def attention_primfunc(spec: AttentionSpec, tiling: Tiling | None = None, shapes: tuple | None = None):
    """The PrimFunc (q, k, v[, bias], out) of `spec` (out written, all others read).
    shapes: the parameters' shape arrays to reuse (TE extern stages need the very same
    shape objects as their input tensors), else built from the spec."""
    from tvm.script import tirx as T

    spec.check()
    t = tiling or choose_tiling(spec)
    B, Hq, Hkv, S, M, D, Dv = spec.B, spec.Hq, spec.Hkv, spec.S, spec.M, spec.D, spec.Dv
    Tq, Tk, VI, RJ, RI, VD = t.Tq, t.Tk, t.VI, t.RJ, t.RI, t.VD
    NS, CH = t.splits, t.chunk
    NQ = max(1, -(-S // Tq))
    G = Hq // Hkv
    NEG_INF = -math.inf
    scale = float(spec.scale)
    # Key j is visible to query i iff j <= i + off (causal); off = M - S for bottom_right.
    causal = spec.causal != "none"
    off = 0 if spec.causal == "top_left" else M - S
    has_bias = spec.bias_shape is not None
    bshape = tuple(spec.bias_shape) if has_bias else (1, 1, 1, 1)
    split = NS > 1
    # Few query rows (decode): the d-dot form of Q K^T (see the kernel body), and the G
    # query heads sharing a kv head packed into one unit's rows (row r: head g = r // S,
    # query r % S), so each K/V tile is read from memory once per group (GQA/MQA).
    few_rows = S <= FEW_ROWS
    HU = Hkv if few_rows else Hq  # head units: kv heads (packed) or query heads
    units = B * HU * NQ * NS
    SR = G * S if few_rows else 1  # rows of a decode-form unit
    DL = min(D, 16)  # lanes of the decode form's dot products
    # The row-vector form's tiles; the decode form needs none of them.
    qT_shape = (1, 1) if few_rows else (D, Tq)
    sT_shape = (1, 1) if few_rows else (Tk, Tq)
    AR = SR if few_rows else Tq  # rows of the numerator
    VR = SR if few_rows else Tq  # rows of the running max / sum
    sd = _storage(spec.dtype)
    bd = _storage(spec.bias_dtype or spec.dtype)
    wide = _widen(spec.dtype)
    bwide = _widen(spec.bias_dtype or spec.dtype)
    narrow = _narrow(spec.dtype)
    fexp = _fast_exp
    MQ = max(M - 1, 0)
    SQ = max(S - 1, 0)

    def bias_at(bias, b, h, i, j):
        # Broadcast dims of 1 read index 0; clamped so padded rows/keys stay in bounds.
        return bwide(
            bias[
                b if bshape[0] > 1 else 0,
                h if bshape[1] > 1 else 0,
                T.min(i, SQ) if bshape[2] > 1 else 0,
                T.min(j, MQ) if bshape[3] > 1 else 0,
            ]
        )

    def lane_sum(t):
        # Halving tree (lane x + lane x + n/2): the shape LLVM turns into vector shuffles.
        vals = [t[x] for x in range(DL)]
        while len(vals) > 1:
            half = (len(vals) + 1) // 2
            vals = [vals[x] + vals[x + half] if x + half < len(vals) else vals[x] for x in range(half)]
        return vals[0]

    def row_head(hu, i):
        # The query head of row i of a unit of head unit hu.
        return hu * G + i // S if few_rows else hu

    def row_pos(q0, i):
        # The query position of row i of a unit starting at q0.
        return i % S if few_rows else q0 + i

    # A small merge (decode) runs on the calling thread: a second parallel launch would cost
    # more than the merge, and more still when a pool worker is descheduled on a busy machine.
    merge_loop = T.parallel if B * Hq * S * NS * Dv > MERGE_PARALLEL else T.serial

    def key_end(q0, sp):
        # One past the last key any row of the tile starting at q0 sees, within split sp.
        hi = T.max(T.min(M, T.min(S, q0 + Tq) + off), 0) if causal else M
        return T.min(hi, (sp + 1) * CH) if split else hi

    def visible(i, j):
        if causal:
            return T.And(j < M, j <= i + off)
        return j < M

    qs, ks, vs, bs, os_ = shapes or ((B, Hq, S, D), (B, Hkv, M, D), (B, Hkv, M, Dv), bshape, (B, Hq, S, Dv))
    bs = bs if has_bias else bshape

    @T.prim_func
    def attention(
        q: T.Buffer(qs, sd),
        k: T.Buffer(ks, sd),
        v: T.Buffer(vs, sd),
        bias: T.Buffer(bs, bd),
        out: T.Buffer(os_, sd),
    ):
        # Partial (max, sum, numerator) of each split, merged below; unused when NS == 1.
        pm = T.alloc_buffer((B * Hq * NS * S,) if split else (1,), "float32")
        pl = T.alloc_buffer((B * Hq * NS * S,) if split else (1,), "float32")
        pacc = T.alloc_buffer((B * Hq * NS * S * Dv,) if split else (1,), "float32")
        for u in T.parallel(units):
            sp = T.Bind(u % NS)
            qt = T.Bind(u // NS % NQ)
            hu = T.Bind(u // (NS * NQ) % HU)
            b = T.Bind(u // (NS * NQ * HU))
            kh = T.Bind(hu if few_rows else hu // G)
            h = T.Bind(hu)  # the query head (row-vector form only)
            q0 = T.Bind(qt * Tq)
            rows = T.Bind(SR if few_rows else T.min(Tq, S - q0))
            qT = T.decl_buffer(qT_shape, "float32")
            sT = T.decl_buffer(sT_shape, "float32")
            acc = T.decl_buffer((AR, Dv), "float32")
            m = T.decl_buffer((VR,), "float32")
            mn = T.decl_buffer((Tq,), "float32")
            ms = T.decl_buffer((Tq,), "float32")
            alpha = T.decl_buffer((Tq,), "float32")
            l = T.decl_buffer((VR,), "float32")
            ls = T.decl_buffer((Tq,), "float32")
            if not few_rows:
                # The query tile, transposed and pre-scaled; rows past S are 0.
                for i in range(Tq):
                    for d in range(D):
                        qT[d, i] = T.if_then_else(
                            i < rows, wide(q[b, h, T.min(q0 + i, SQ), d]) * T.float32(scale), T.float32(0.0)
                        )
            # Decode form: the queries in row layout, scaled, and one row of logits per query.
            qR = T.decl_buffer((SR, D), "float32")
            sR = T.decl_buffer((SR, Tk), "float32")
            if few_rows:
                for i in range(rows):
                    for d in T.vectorized(D):
                        qR[i, d] = wide(q[b, row_head(hu, i), row_pos(q0, i), d]) * T.float32(scale)
            for i in T.vectorized(VR):
                m[i] = T.float32(NEG_INF)
                l[i] = T.float32(0.0)
            for i in range(AR):
                for x in T.vectorized(Dv):
                    acc[i, x] = T.float32(0.0)
            # Key tiles this unit visits: its split's chunk, cut at the last key any row sees.
            hi = T.Bind(key_end(q0, sp))
            kt_lo = T.Bind(sp * (CH // Tk))
            kt_hi = T.Bind(T.max((hi + Tk - 1) // Tk, kt_lo))
            for kt in range(kt_lo, kt_hi):
                k0 = T.Bind(kt * Tk)
                cols = T.Bind(T.min(Tk, M - k0))
                if few_rows:
                    # Decode: with a handful of query rows the row-vector form would leave most
                    # lanes idle. Per row: dot each key along d (contiguous loads of k, one lane
                    # sum per key), then the softmax and P @ V vectorized over keys / columns.
                    for i in range(rows):
                        for j in range(Tk):
                            t = T.decl_buffer((DL,), "float32")
                            for x in T.vectorized(DL):
                                t[x] = T.float32(0.0)
                            for dc in range(D // DL):
                                for x in T.vectorized(DL):
                                    t[x] = t[x] + wide(k[b, kh, T.min(k0 + j, MQ), dc * DL + x]) * qR[i, dc * DL + x]
                            for x in range(D % DL):
                                t[x] = t[x] + wide(k[b, kh, T.min(k0 + j, MQ), D - D % DL + x]) * qR[i, D - D % DL + x]
                            if has_bias:
                                sR[i, j] = T.Select(
                                    visible(row_pos(q0, i), k0 + j),
                                    lane_sum(t) + bias_at(bias, b, row_head(hu, i), row_pos(q0, i), k0 + j),
                                    T.float32(NEG_INF),
                                )
                            else:
                                sR[i, j] = T.Select(visible(row_pos(q0, i), k0 + j), lane_sum(t), T.float32(NEG_INF))
                        run = T.decl_buffer((2,), "float32")  # running max, then the tile's sum
                        run[0] = m[i]
                        for j in range(Tk):
                            run[0] = T.max(run[0], sR[i, j])
                        msafe = T.Bind(T.Select(run[0] == T.float32(NEG_INF), T.float32(0.0), run[0]))
                        rescale = T.Bind(fexp(m[i] - msafe))
                        m[i] = run[0]
                        for j in T.vectorized(Tk):
                            sR[i, j] = fexp(sR[i, j] - msafe)
                        run[1] = T.float32(0.0)
                        for j in range(Tk):
                            run[1] = run[1] + sR[i, j]
                        l[i] = l[i] * rescale + run[1]
                        for xb in range(Dv // VD):
                            c1 = T.decl_buffer((VD,), "float32")
                            for x in T.vectorized(VD):
                                c1[x] = acc[i, xb * VD + x] * rescale
                            for j in range(cols):
                                for x in T.vectorized(VD):
                                    c1[x] = c1[x] + sR[i, j] * wide(v[b, kh, k0 + j, xb * VD + x])
                            for x in T.vectorized(VD):
                                acc[i, xb * VD + x] = c1[x]
                else:
                    # sT[j, i] = q_i . k_j (scaled), register-blocked RJ keys x VI rows; the
                    # tile's row max is taken as the logits are stored.
                    for i in T.vectorized(Tq):
                        mn[i] = m[i]
                    for jb in range(Tk // RJ):
                        for ib in range(Tq // VI):
                            a = T.decl_buffer((RJ, VI), "float32")
                            for r in T.unroll(RJ):
                                for ii in T.vectorized(VI):
                                    a[r, ii] = T.float32(0.0)
                            for d in range(D):
                                for r in T.unroll(RJ):
                                    for ii in T.vectorized(VI):
                                        a[r, ii] = (
                                            a[r, ii]
                                            + wide(k[b, kh, T.min(k0 + jb * RJ + r, MQ), d]) * qT[d, ib * VI + ii]
                                        )
                            for r in T.unroll(RJ):
                                for ii in T.vectorized(VI):
                                    if has_bias:
                                        sT[jb * RJ + r, ib * VI + ii] = T.Select(
                                            visible(q0 + ib * VI + ii, k0 + jb * RJ + r),
                                            a[r, ii] + bias_at(bias, b, h, q0 + ib * VI + ii, k0 + jb * RJ + r),
                                            T.float32(NEG_INF),
                                        )
                                    else:
                                        sT[jb * RJ + r, ib * VI + ii] = T.Select(
                                            visible(q0 + ib * VI + ii, k0 + jb * RJ + r),
                                            a[r, ii],
                                            T.float32(NEG_INF),
                                        )
                                    mn[ib * VI + ii] = T.max(mn[ib * VI + ii], sT[jb * RJ + r, ib * VI + ii])
                    # Online softmax over this tile, vectorized over the query rows.
                    for i in T.vectorized(Tq):
                        ls[i] = T.float32(0.0)
                    for i in T.vectorized(Tq):
                        # Rows with nothing visible yet keep m = -inf; subtract 0 instead so
                        # exp(-inf - (-inf)) never makes a NaN.
                        ms[i] = T.Select(mn[i] == T.float32(NEG_INF), T.float32(0.0), mn[i])
                        alpha[i] = fexp(m[i] - ms[i])
                        m[i] = mn[i]
                    for j in range(Tk):
                        for i in T.vectorized(Tq):
                            sT[j, i] = fexp(sT[j, i] - ms[i])
                            ls[i] = ls[i] + sT[j, i]
                    for i in T.vectorized(Tq):
                        l[i] = l[i] * alpha[i] + ls[i]
                    # acc = acc * alpha + P @ V, register-blocked RI rows x VD columns.
                    for ib in range((rows + RI - 1) // RI):
                        for xb in range(Dv // VD):
                            c = T.decl_buffer((RI, VD), "float32")
                            for r in T.unroll(RI):
                                for x in T.vectorized(VD):
                                    c[r, x] = (
                                        acc[T.min(ib * RI + r, Tq - 1), xb * VD + x] * alpha[T.min(ib * RI + r, Tq - 1)]
                                    )
                            for j in range(cols):
                                for r in T.unroll(RI):
                                    for x in T.vectorized(VD):
                                        c[r, x] = c[r, x] + sT[j, T.min(ib * RI + r, Tq - 1)] * wide(
                                            v[b, kh, k0 + j, xb * VD + x]
                                        )
                            for r in T.unroll(RI):
                                for x in T.vectorized(VD):
                                    acc[T.min(ib * RI + r, Tq - 1), xb * VD + x] = c[r, x]
            if split:
                for i in range(rows):
                    base = T.Bind(((b * Hq + row_head(hu, i)) * NS + sp) * S + row_pos(q0, i))
                    pm[base] = m[i]
                    pl[base] = l[i]
                    for x in T.vectorized(Dv):
                        pacc[base * Dv + x] = acc[i, x]
            else:
                for i in range(rows):
                    for x in T.vectorized(Dv):
                        # l == 0: every key of the row is masked -> 0 by contract.
                        out[b, row_head(hu, i), row_pos(q0, i), x] = narrow(
                            T.Select(l[i] > T.float32(0.0), acc[i, x] / l[i], T.float32(0.0))
                        )
        if split:
            # Associative merge of the splits' (max, sum, numerator) triples.
            for u in merge_loop(B * Hq):
                w = T.decl_buffer((NS,), "float32")
                num = T.decl_buffer((Dv,), "float32")
                for i in range(S):
                    base = T.Bind(u * NS * S + i)
                    mx = T.decl_buffer((1,), "float32")
                    den = T.decl_buffer((1,), "float32")
                    mx[0] = T.float32(NEG_INF)
                    den[0] = T.float32(0.0)
                    for s in range(NS):
                        mx[0] = T.max(mx[0], pm[base + s * S])
                    for s in range(NS):
                        w[s] = fexp(pm[base + s * S] - T.Select(mx[0] == T.float32(NEG_INF), T.float32(0.0), mx[0]))
                        den[0] = den[0] + w[s] * pl[base + s * S]
                    for x in T.vectorized(Dv):
                        num[x] = T.float32(0.0)
                    for s in range(NS):
                        for x in T.vectorized(Dv):
                            num[x] = num[x] + w[s] * pacc[(base + s * S) * Dv + x]
                    for x in T.vectorized(Dv):
                        out[u // Hq, u % Hq, i, x] = narrow(
                            T.Select(den[0] > T.float32(0.0), num[x] / den[0], T.float32(0.0))
                        )

    if not has_bias:
        attention = _drop_param(attention, 3)
    return attention


def _drop_param(func, index: int):
    """func without its (unused) parameter `index`."""
    import tvm

    # tirx PrimFunc parameters are the buffers themselves (no separate buffer map).
    params = [p for i, p in enumerate(func.params) if i != index]
    return tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


# -- analysis --------------------------------------------------------------------------------


def workspace_bytes(func, threads: int = 1) -> int:
    """Peak extra memory of the kernel: the buffers it allocates outside its parallel loop,
    plus those inside it once per thread (each thread holds one unit's tiles at a time)."""
    allocs = allocations(func)
    shared = sum(nbytes for _, nbytes, per_thread in allocs if not per_thread)
    return shared + threads * sum(nbytes for _, nbytes, per_thread in allocs if per_thread)


def allocations(func) -> list[tuple[str, int, bool]]:
    """(buffer name, bytes, inside a parallel loop) of every buffer the PrimFunc allocates."""
    import tvm
    from tvm import tirx

    found: list[tuple[str, int, bool]] = []

    def visit(stmt, in_parallel: bool) -> None:
        if isinstance(stmt, tirx.For):
            visit(stmt.body, in_parallel or stmt.kind == tirx.ForKind.PARALLEL)
            return
        if isinstance(stmt, tirx.AllocBuffer):
            buf = stmt.buffer
            bits = tvm.DataType(str(buf.dtype)).bits * math.prod(int(e) for e in buf.shape)
            found.append((str(buf.name), bits // 8, in_parallel))
        for child in _children(stmt):
            visit(child, in_parallel)

    visit(func.body, False)
    return found


def _children(stmt) -> list:
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    out = []
    for attr in ("body", "then_case", "else_case", "block"):
        child = getattr(stmt, attr, None)
        if isinstance(child, tirx.Stmt):
            out.append(child)
    return out


def attention_flops(spec: AttentionSpec) -> int:
    """4 * B * Hq * S * (visible keys) * D-ish: 2 FLOPs per multiply-add in Q K^T and P V,
    counting only the key tiles a causal kernel visits (about half of them)."""
    pairs = spec.S * spec.M
    if spec.causal != "none":
        off = 0 if spec.causal == "top_left" else spec.M - spec.S
        pairs = sum(max(0, min(spec.M, i + off + 1)) for i in range(spec.S))
    return 2 * spec.B * spec.Hq * pairs * (spec.D + spec.Dv)


def cascade_flops(node, dims: dict) -> int:
    """FLOPs of an einsum_cascade node for the roofline (region_cost): attention_flops of
    its spec (0 when a dim does not bind)."""
    from einfuse.codegen.tvm.lower import static_shape

    try:
        q, k, v = (static_shape(x.type, dims) for x in node.inputs[:3])
    except LoweringError:
        return 0
    spec = AttentionSpec(
        B=q[0], Hq=q[1], Hkv=k[1], S=q[2], M=k[2], D=q[3], Dv=v[3], scale=1.0, causal=str(node.attrs["causal"])
    )
    return attention_flops(spec)


def attention_bytes(spec: AttentionSpec) -> int:
    """Bytes the kernel must move at least once: q, k, v, bias, out."""
    item = 2 if spec.dtype in ("float16", "bfloat16") else 4
    n = spec.B * spec.Hq * spec.S * (spec.D + spec.Dv) + spec.B * spec.Hkv * spec.M * (spec.D + spec.Dv)
    moved = n * item
    if spec.bias_shape is not None:
        bitem = 4 if spec.bias_dtype == "float32" else item
        moved += math.prod(spec.bias_shape) * bitem
    return moved


# -- standalone compilation (tests, benchmarks) ---------------------------------------------------


@functools.lru_cache(maxsize=64)
def _compiled(spec: AttentionSpec, target_key: str | None, tiling: Tiling | None = None):
    import tvm

    from einfuse.codegen.tvm.lower import relax_param_alignment
    from einfuse.codegen.tvm.target import configure_threads, get_target

    configure_threads()
    func = attention_primfunc(spec, tiling)
    func = relax_param_alignment(func).with_attr("global_symbol", "attention")
    lib = tvm.compile(tvm.IRModule({"attention": func}), target=get_target(target_key))
    return lib["attention"], func


def compile_attention(spec: AttentionSpec, target=None, tiling: Tiling | None = None):
    """fn(q, k, v, bias=None, out=None) -> out running the compiled kernel on numpy arrays
    (bf16 as ml_dtypes.bfloat16). fn.func is the PrimFunc (for its allocations)."""

    packed, func = _compiled(spec, target, tiling)
    np_dtype = _numpy_dtype(spec.dtype)

    from einfuse.codegen.tvm import _to_tvm as as_tvm

    def run(q, k, v, bias=None, out=None):
        if out is None:
            out = np.empty((spec.B, spec.Hq, spec.S, spec.Dv), np_dtype)
        args = [as_tvm(q), as_tvm(k), as_tvm(v)]
        if spec.bias_shape is not None:
            args.append(as_tvm(bias))
        packed(*args, as_tvm(out))
        return out

    run.func = func
    return run


def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


# -- the backend hook ---------------------------------------------------------------------------


def spec_for_node(ctx, node) -> AttentionSpec:
    """The AttentionSpec of an einsum_cascade node, its symbolic dims bound by ctx.dims."""
    from einfuse.codegen.tvm.lower import tvm_dtype as table
    from einfuse.ir.types import DType

    def tvm_dtype(dt):  # bf16 too: this kernel widens to f32 itself and rounds once
        return "bfloat16" if dt == DType.bf16 else table(dt)

    q, k, v = (ctx.shape(x) for x in node.inputs[:3])
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    dtype = tvm_dtype(node.inputs[0].dtype)
    if dtype not in _DTYPES:
        raise LoweringError(f"{node.label}: einsum_cascade has a TVM kernel for f32/f16/bf16, not {dtype}")
    spec = AttentionSpec(
        B=q[0],
        Hq=q[1],
        Hkv=k[1],
        S=q[2],
        M=k[2],
        D=q[3],
        Dv=v[3],
        scale=float(node.attrs["scale"]),
        causal=str(node.attrs.get("causal", "none")),
        dtype=dtype,
        bias_shape=ctx.shape(bias) if bias is not None else None,
        bias_dtype=tvm_dtype(bias.dtype) if bias is not None else None,
        kv_tile=int(node.attrs.get("kv_tile", 0)),
        kv_splits=int(node.attrs.get("kv_splits", 1)),
    )
    try:
        spec.check()
    except LoweringError as e:
        raise LoweringError(f"{node.label}: {e.message}") from None
    return spec


def _register() -> None:
    from einfuse.codegen.tvm.emit import EMITTERS, emitter

    if "einsum_cascade" in EMITTERS:
        return

    @emitter("einsum_cascade")
    def emit_einsum_cascade(ctx, node, q, k, v, bias=None):
        """The whole cascade as one hand-written TIR kernel inside a TE extern stage: the
        generic schedulers leave an extern block alone, and the kernel carries its own
        parallel/vectorized loops."""
        from tvm import te

        spec = spec_for_node(ctx, node)
        out_shape = [int(d) for d in ctx.shape(node.outputs[0])]
        shapes = (q.shape, k.shape, v.shape, bias.shape if bias is not None else None, out_shape)
        func = attention_primfunc(spec, shapes=shapes)
        inputs = [q, k, v] + ([bias] if bias is not None else [])
        return [te.extern_primfunc(inputs, func, name=ctx.name("einsum_cascade"))]


_register()
