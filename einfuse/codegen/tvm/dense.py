"""Dense kernels for the TVM backend: matmul and gemm emitters (this file), conv and
conv_transpose emitters (conv.py), and the "out_fusable" scheduler that tiles the anchor and
fuses its elementwise epilogue into the anchor's output write.

An anchor is emitted as three kinds of TE stage:

    pack  operand B in panels [batch, N/nr, K, nr] (zero-padded to whole panels), so that
          the micro-kernel reads one contiguous panel (see "Weights" below).
    acc   the accumulation over a PADDED iteration space [batch, ceil(M/mr)*mr, ceil(N/nr)*nr]:
          A rows are clamped (min(i, M-1)) and B is zero-padded, so the micro-kernel never
          tests bounds. The block carries its tile sizes as annotations ("einfuse.*"), which
          is how the scheduler finds it and knows how to tile it.
    view  the unpadded result in the op's own shape (plus gemm's alpha, beta*C); the epilogue
          stages other emitters add on top (bias, relu/gelu/tanh, residual add, scale) read it.

The scheduler inlines view and epilogue into the group's output stage, tiles that stage
(mr x nr), and computes the accumulator tile at the tile loop in "local" scope: the
accumulators live in registers and the epilogue runs on them before the only store.
The output stage may also be a view of the op's result (a reshape/flatten/squeeze in the
epilogue, e.g. GPT-2's addmm -> view [1, S, H]): its loops are regrouped onto the anchor's
(batch, row, column) axes, see `match_output`. (When the anchor's result leaves the region
twice, or the output does not map onto its tiles (a transpose), the anchor is tiled on its
own with a register cache written back to its buffer, and the rest gets the plain schedule.)
The path taken is left on the tiled block as the annotation DENSE_PATH.

Micro-kernel (fp32, AVX-512): mr rows x nr columns of accumulators, nr a power-of-two
multiple of the 16 lanes; the k loop outside, rows unrolled, columns vectorized: mr*nr/16
independent zmm FMA chains fed by one broadcast of A per row and nr/16 vector loads of B per
k. 4 x 64 and 6 x 32 measure alike, about 100 GFLOP/s per Zen 4 core (close to its one
512-bit FMA per cycle), as fast as OpenBLAS single-threaded.

Weights. B is packed, in order of preference: (1) a region constant is packed ONCE at
compile time, in numpy, into a new kernel parameter (`ctx.add_const_param`); (2) an operand
the runtime holds as a weight is handed to the runtime to store packed, if the lowering
offers `ctx.prepack_operand` (see `prepacked_operand`); (3) otherwise the kernel packs it
itself: per panel inside the parallel loop (a cache-resident copy, ~5-10% of a 128-row
GEMM), inlined away when the layout is already right and there are few rows, or, for a
transposed B with at most DOT_MAX_ROWS rows (a classifier head), not at all: dot products
along B's contiguous K instead ("gemv").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx
from tvm.sym import Analyzer

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm.emit import emitter, scheduler
from einfuse.errors import EinfuseError

# Block annotations the emitters leave for the scheduler.
KERNEL = "einfuse.kernel"  # "gemm", "gemv", "conv", "depthwise", "naive": keys of ANCHOR_SCHEDULES
PACK_KIND = "einfuse.pack"  # on an in-kernel pack stage: "plain" (a reshape), "pad", "gather"
# Which path the schedule took, left on the block it tiles (visible in Kernel.meta["source"]):
# "gemm_fused"/"gemv_fused" (epilogue in the register tile's write), "gemm_alone".
DENSE_PATH = "einfuse.dense_path"

# Anchor kind -> fn(sch, acc_block, annotations, info): schedules a kernel around its anchor.
ANCHOR_SCHEDULES: dict[str, Callable] = {}

_FLOAT_ACC = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}
_INT_ACC = {"int32": "int32", "int64": "int64", "uint32": "uint32", "uint64": "uint64"}


# --------------------------------------------------------------------------- shared helpers


def static_shape(t: te.Tensor, what: str = "operand") -> tuple[int, ...]:
    """The tensor's shape as ints; dense kernels are tiled for static shapes only."""
    dims = []
    for d in t.shape:
        if not isinstance(d, tirx.IntImm):
            raise LoweringError(f"{what} has a dynamic shape {list(t.shape)}: dense kernels need static shapes")
        dims.append(int(d))
    return tuple(dims)


def acc_dtype(dtype: str, op: str) -> str:
    """The dtype an anchor accumulates in (f32 for f16/bf16, as the reference does)."""
    acc = _FLOAT_ACC.get(dtype) or _INT_ACC.get(dtype)
    if acc is None:
        raise LoweringError(f"{op}: no TVM dense kernel for dtype {dtype}")
    return acc


def vector_lanes(ctx, dtype: str) -> int:
    """SIMD lanes of `dtype` on the target (16 f32 lanes with AVX-512)."""
    bits = tvm.DataType(dtype).bits
    try:
        from einfuse.codegen.tvm.target import vector_lanes as target_lanes

        return target_lanes(ctx.target, bits) if ctx.target is not None else max(1, 512 // bits)
    except (ImportError, EinfuseError, TypeError, AttributeError):
        return max(1, 512 // bits)  # an unusual target object: assume AVX-512, kernels stay correct


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def unravel(flat, shape: Sequence[int]) -> list:
    """Coordinates of a flat row-major index over `shape` (as TIR expressions)."""
    coords = []
    for i, extent in enumerate(shape):
        stride = math.prod(shape[i + 1 :])
        c = flat if i == 0 else tirx.floormod(flat, extent * stride)
        coords.append(tirx.floordiv(c, stride) if stride != 1 else c)
    return coords


def ravel(coords: Sequence, shape: Sequence[int]):
    """The flat row-major index of `coords` over `shape`."""
    if not coords:
        return tirx.const(0, "int32")
    flat = coords[0]
    for c, extent in zip(coords[1:], shape[1:]):
        flat = flat * extent + c
    return flat


def broadcast_coords(coords: Sequence, own: Sequence[int]) -> list:
    """Index into an operand's (right-aligned) broadcast dims from the result's coords."""
    coords = list(coords)[len(coords) - len(own) :] if own else []
    return [tirx.const(0, "int32") if d == 1 else c for c, d in zip(coords, own)]


def dtype_of(x) -> str:
    """The element type of a TIR expression (or of a te tensor element)."""
    ty = getattr(x, "ty", None)
    return str(ty if ty is not None else x.dtype)


def cast(x, dtype: str):
    return x if dtype_of(x) == dtype else x.astype(dtype)


def const_array(ctx, t: te.Tensor | None) -> np.ndarray | None:
    """The numpy value behind an operand when it is a region constant (the lowering then
    takes a compile-time packed copy as a new kernel parameter); else None."""
    if t is None or not hasattr(ctx, "const_value") or not hasattr(ctx, "add_const_param"):
        return None
    return ctx.const_value(t)


_STEP_DTYPES = {
    "float32": "f32",
    "float64": "f64",
    "float16": "f16",
    "bfloat16": "bf16",
    "int32": "i32",
    "int64": "i64",
}


def apply_steps(arr: np.ndarray, steps: Sequence) -> np.ndarray:
    """Applies a packing given as JSON-able steps: ["pad", [[before, after], ...]] (zeros),
    ["reshape", dims], ["transpose", perm], ["astype", einfuse dtype name]. The runtime's
    `apply_prepack` reads the same steps, so a packing can run at compile time here or be
    handed to the runtime for a weight operand (Kernel.meta["prepack"])."""
    from einfuse.ir.types import DType

    out = np.asarray(arr)
    for name, arg in steps:
        if name == "pad":
            out = np.pad(out, [tuple(p) for p in arg])
        elif name == "reshape":
            out = out.reshape(arg)
        elif name == "transpose":
            out = out.transpose(arg)
        elif name == "astype":
            out = out.astype(DType.parse(arg).np)
        else:
            raise ValueError(f"unknown packing step {name!r}")
    return np.ascontiguousarray(out)


def prepacked_operand(ctx, t: te.Tensor, shape: tuple, dtype: str, steps: Sequence, hint: str):
    """Operand `t` packed ahead of time into layout `shape` (element type `dtype`) by the
    JSON-able `steps` (see apply_steps), or None when the lowering cannot do that:

    1. `t` is a region constant: packed now, in numpy, into a new kernel parameter
       (`ctx.add_const_param`);
    2. `t` is an operand the runtime holds as a weight and the lowering offers
       `ctx.prepack_operand(t, steps, shape, dtype) -> placeholder | None`: the runtime
       stores the weight packed (Kernel.meta["prepack"] = {operand index: steps}) and the
       kernel takes the packed array in that operand's place.
    """
    steps = [*steps, ["astype", _STEP_DTYPES.get(dtype, dtype)]]
    arr = const_array(ctx, t)
    if arr is not None:
        packed = apply_steps(arr, steps)
        if packed.shape != tuple(shape):
            raise LoweringError(f"{hint}: packed weight has shape {packed.shape}, expected {tuple(shape)}")
        return ctx.add_const_param(packed, hint=hint)
    hook = getattr(ctx, "prepack_operand", None)
    if hook is not None:
        return hook(t, steps, tuple(shape), dtype)
    return None


def packed_operand(ctx, t: te.Tensor, shape: tuple, dtype: str, fn, steps: Sequence, hint: str, kind: str):
    """`t` packed ahead of time (prepacked_operand) or else by an in-kernel TE stage
    `fn(*index)`, tagged with its pack kind so that the scheduler can inline it, place it
    per panel, or run it once at the root."""
    packed = prepacked_operand(ctx, t, shape, dtype, steps, hint)
    if packed is not None:
        return packed
    return te.compute(shape, fn, name=ctx.name(hint), attrs={PACK_KIND: kind})


def record(ctx, stage: te.Tensor, op: str) -> None:
    """Notes a stage for schedulers that look anchors up by name."""
    stages = getattr(ctx, "stages", None)
    if isinstance(stages, dict):
        stages[stage.op.name] = op


# --------------------------------------------------------------------------- gemm core


@dataclass(frozen=True)
class GemmTiles:
    mr: int  # rows per micro-tile (unrolled)
    nr: int  # columns per micro-tile (vectorized)


def gemm_tiles(rows: int, n: int, lanes: int) -> GemmTiles:
    """Register tile for `rows` x `n` results. Columns come in power-of-two multiples of
    the vector (LLVM splits a 48-lane vector badly); 4 x 64 or 6 x 32 both keep 16-24 FMA
    chains in flight with 4 (resp. 2) vector loads and 4 (6) broadcasts per 16 (12) FMAs
    and measure alike (about 100 GFLOP/s per Zen 4 core); 4 x 64 when N fills 64-wide
    panels without much padding. One row (decode, matrix-vector) takes 4 vectors."""
    if n < lanes:
        return GemmTiles(min(rows, 6), n)
    if rows == 1:
        return GemmTiles(1, min(4 * lanes, _pow2_floor(round_up(n, lanes) // lanes) * lanes))
    if n % (4 * lanes) == 0 or n >= 32 * lanes:
        return GemmTiles(min(rows, 4), 4 * lanes)
    return GemmTiles(min(rows, 6), 2 * lanes)


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def emit_gemm(
    ctx,
    op: str,
    a_at: Callable,
    b_at: Callable,
    *,
    out_batch: tuple[int, ...],
    a_batch: tuple[int, ...],
    b_batch: tuple[int, ...],
    m: int,
    n: int,
    k: int,
    has_m: bool,
    has_n: bool,
    dtype: str,
    b_tensor: te.Tensor,
    b_const_steps: Callable[[], list],
    b_layout: str,
    epilogue: Callable | None = None,
) -> te.Tensor:
    """The stages of out[b..., m, n] = sum_k A(b, m, k) * B(b, k, n) (see the module doc).

    a_at(a_coords, m, k) / b_at(b_coords, k, n) read one element of A / B given the
    operand's own batch coordinates (already broadcast). `b_const_steps()` gives the numpy
    steps that bring a constant B to [prod(b_batch), K, N]; `b_layout` is "plain" when
    B(k, n) is contiguous in n, "gather" when it is not (a transposed B).
    epilogue(value, out_batch_coords, m, n) adjusts the view (gemm's alpha and beta*C).
    """
    acc_t = acc_dtype(dtype, op)
    lanes = vector_lanes(ctx, acc_t)
    # Rows are flattened over A's batch when B has no batch of its own: one big GEMM
    # against a weight (the transformer case); otherwise one GEMM per batch entry.
    flatten = math.prod(b_batch) == 1
    bt, rows = (1, math.prod(a_batch) * m) if flatten else (math.prod(out_batch), m)
    nb = math.prod(b_batch)

    def operands_at(b, i):
        """(A's batch coords, A's row, B's batch coords, B's flat batch) of acc row (b, i)."""
        if flatten:
            coords_rows = unravel(tirx.min(i, rows - 1), (*a_batch, m))
            zero = tirx.const(0, "int32")
            return coords_rows[:-1], coords_rows[-1], [zero] * len(b_batch), zero
        oc = unravel(b, out_batch)
        b_coords = broadcast_coords(oc, b_batch)
        b_flat = ravel(b_coords, b_batch) if nb > 1 else tirx.const(0, "int32")
        return broadcast_coords(oc, a_batch), tirx.min(i, m - 1), b_coords, b_flat

    tiles = gemm_tiles(rows, n, lanes)
    mr, nr = tiles.mr, tiles.nr
    rows_p, n_p = round_up(rows, mr), round_up(n, nr)
    pack_shape = (nb, n_p // nr, k, nr)
    pack_steps = list(b_const_steps()) + [
        ["pad", [[0, 0], [0, 0], [0, n_p - n]]],
        ["reshape", [nb, k, n_p // nr, nr]],
        ["transpose", [0, 2, 1, 3]],
    ]
    bp = prepacked_operand(ctx, b_tensor, pack_shape, acc_t, pack_steps, f"{op}_pack")
    if bp is None and b_layout == "gather" and rows <= DOT_MAX_ROWS and k >= lanes:
        # A transposed B that nobody packed ahead: for a few rows, dot products along
        # B's contiguous K beat repacking B on every call.
        out_ann = _out_ann(flatten, out_batch, has_m, has_n)
        result = _dot_stages(ctx, op, a_at, b_at, operands_at, bt, rows, n, k, acc_t, lanes, out_ann)
    else:
        if bp is None:

            def pack_fn(bb, jo, kk, ji):
                j = jo * nr + ji
                coords = unravel(bb, b_batch) if b_batch else []
                value = cast(b_at(coords, kk, tirx.min(j, n - 1)), acc_t)
                if n_p == n:
                    return value
                return tirx.if_then_else(j < n, value, tirx.const(0, acc_t))

            kind = "gather" if b_layout == "gather" else ("plain" if n_p == n else "pad")
            bp = te.compute(pack_shape, pack_fn, name=ctx.name(f"{op}_pack"), attrs={PACK_KIND: kind})
        kk = te.reduce_axis((0, k), name="k")

        def acc_fn(b, i, j):
            a_coords, mi, _, b_flat = operands_at(b, i)
            a_val = cast(a_at(a_coords, mi, kk), acc_t)
            return te.sum(a_val * bp[b_flat, tirx.floordiv(j, nr), kk, tirx.floormod(j, nr)], axis=kk)

        ann = {
            KERNEL: "gemm",
            "einfuse.mr": mr,
            "einfuse.nr": nr,
            "einfuse.rows": rows,
            "einfuse.n": n,
            "einfuse.pack_stage": bp.op.name if isinstance(bp.op, te.ComputeOp) else "",
            **_out_ann(flatten, out_batch, has_m, has_n),
        }
        result = te.compute((bt, rows_p, n_p), acc_fn, name=ctx.name(f"{op}_acc"), attrs=ann)
        record(ctx, result, op)

    # ---- the unpadded view in the op's shape
    out_shape = (*out_batch, *((m,) if has_m else ()), *((n,) if has_n else ()))

    def view_fn(*idx):
        oc = list(idx[: len(out_batch)])
        mi = idx[len(out_batch)] if has_m else tirx.const(0, "int32")
        nj = idx[-1] if has_n else tirx.const(0, "int32")
        if flatten:
            b = tirx.const(0, "int32")
            i = ravel([*broadcast_coords(oc, a_batch), mi], (*a_batch, m)) if a_batch else mi
        else:
            b, i = ravel(oc, out_batch), mi
        value = result[b, i, nj]
        if epilogue is not None:
            value = epilogue(value, oc, mi, nj)
        return cast(value, dtype)

    return te.compute(out_shape, view_fn, name=ctx.name(op))


def _out_ann(flatten: bool, out_batch: tuple, has_m: bool, has_n: bool) -> dict:
    """How the output stage's loops map onto the anchor's (batch, row, column) axes:
    leading loops over the batch, then the loops that flatten into rows, then columns."""
    return {
        "einfuse.out_b": 0 if flatten else len(out_batch),
        "einfuse.out_m": (len(out_batch) if flatten else 0) + int(has_m),
        "einfuse.out_n": int(has_n),
    }


# Rows up to which a transposed, unpacked B is multiplied by dot products (gemv-like).
DOT_MAX_ROWS = 4
# Dot products in flight per row: independent vector FMA chains along K.
DOT_COLS = 8


def _dot_stages(ctx, op, a_at, b_at, operands_at, bt, rows, n, k, acc_t, lanes, out_ann: dict):
    """out[b, i, j] = sum_k A[i, k] * B^T[j, k] as vector partial sums along K (both
    operands contiguous there), reduced across lanes at the end; a scalar tail covers
    K % lanes. Returns the result stage ([batch, rows, columns padded to `cols`]); the
    partial-sum stage carries the annotations the "gemv" schedule reads."""
    k_vec = k // lanes * lanes
    ko = te.reduce_axis((0, k // lanes), name="ko")

    def part_fn(b, i, j, lane):
        a_coords, mi, b_coords, _ = operands_at(b, i)
        kk = ko * lanes + lane
        nj = tirx.min(j, n - 1)
        return te.sum(cast(a_at(a_coords, mi, kk), acc_t) * cast(b_at(b_coords, kk, nj), acc_t), axis=ko)

    cols = min(DOT_COLS, n)
    n_p = round_up(n, cols)
    names = {"part": ctx.name(f"{op}_dot_part"), "dot": ctx.name(f"{op}_dot")}
    tail = k - k_vec
    if tail:
        names.update(tail=ctx.name(f"{op}_dot_tail"), sum=ctx.name(f"{op}_dot_sum"))
    ann = {
        KERNEL: "gemv",
        "einfuse.cols": cols,
        "einfuse.rows": rows,
        "einfuse.n": n,
        **{f"einfuse.{key}_stage": names.get(key, "") for key in ("part", "dot", "tail", "sum")},
        **out_ann,
    }
    part = te.compute((bt, rows, n_p, lanes), part_fn, name=names["part"], attrs=ann)
    record(ctx, part, op)
    lane = te.reduce_axis((0, lanes), name="lane")
    dot = te.compute((bt, rows, n_p), lambda b, i, j: te.sum(part[b, i, j, lane], axis=lane), name=names["dot"])
    if tail:
        kt = te.reduce_axis((0, tail), name="kt")

        def tail_fn(b, i, j):
            a_coords, mi, b_coords, _ = operands_at(b, i)
            kk = k_vec + kt
            nj = tirx.min(j, n - 1)
            return te.sum(cast(a_at(a_coords, mi, kk), acc_t) * cast(b_at(b_coords, kk, nj), acc_t), axis=kt)

        rest = te.compute((bt, rows, n_p), tail_fn, name=names["tail"])
        return te.compute((bt, rows, n_p), lambda b, i, j: dot[b, i, j] + rest[b, i, j], name=names["sum"])
    return dot


# --------------------------------------------------------------------------- emitters


def _check_dtypes(op: str, *tensors) -> str:
    dtypes = {str(t.dtype) for t in tensors if t is not None}
    if len(dtypes) != 1:
        raise LoweringError(f"{op}: operands have different dtypes {sorted(dtypes)}")
    return dtypes.pop()


@emitter("matmul")
def emit_matmul(ctx, node, a, b):
    """numpy matmul: batch dims broadcast; a 1-D A is a row, a 1-D B a column."""
    dtype = _check_dtypes("matmul", a, b)
    a_shape, b_shape = static_shape(a, "matmul A"), static_shape(b, "matmul B")
    a_batch = a_shape[:-2]
    b_batch = b_shape[:-2]
    m = a_shape[-2] if len(a_shape) > 1 else 1
    k = a_shape[-1]
    n = b_shape[-1] if len(b_shape) > 1 else 1
    kb = b_shape[-2] if len(b_shape) > 1 else b_shape[0]
    if k != kb:
        raise LoweringError(f"matmul: contracted dims differ: {a_shape} @ {b_shape}")
    out_batch = tuple(np.broadcast_shapes(a_batch, b_batch))

    def a_at(coords, mi, kk):
        return a[(*coords, mi, kk)] if len(a_shape) > 1 else a[kk]

    def b_at(coords, kk, nj):
        return b[(*coords, kk, nj)] if len(b_shape) > 1 else b[kk]

    def b_steps():
        nb = math.prod(b_batch)
        return [["reshape", [nb, k, n]]]

    out = emit_gemm(
        ctx,
        "matmul",
        a_at,
        b_at,
        out_batch=out_batch,
        a_batch=a_batch,
        b_batch=b_batch,
        m=m,
        n=n,
        k=k,
        has_m=len(a_shape) > 1,
        has_n=len(b_shape) > 1,
        dtype=dtype,
        b_tensor=b,
        b_const_steps=b_steps,
        b_layout="plain" if len(b_shape) > 1 and n > 1 else "gather",
    )
    return [out]


@emitter("gemm")
def emit_gemm_op(ctx, node, a, b, c=None):
    """alpha * op(A) @ op(B) + beta * C (C broadcasts to [M, N])."""
    dtype = _check_dtypes("gemm", a, b, c)
    attrs = node.attrs
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    a_shape, b_shape = static_shape(a, "gemm A"), static_shape(b, "gemm B")
    m, k = (a_shape[1], a_shape[0]) if trans_a else a_shape
    kb, n = (b_shape[1], b_shape[0]) if trans_b else b_shape
    if k != kb:
        raise LoweringError(f"gemm: contracted dims differ: A {a_shape} (transA={trans_a}), B {b_shape}")
    c_shape = static_shape(c, "gemm C") if c is not None else None
    acc_t = acc_dtype(dtype, "gemm")

    def a_at(coords, mi, kk):
        return a[kk, mi] if trans_a else a[mi, kk]

    def b_at(coords, kk, nj):
        return b[nj, kk] if trans_b else b[kk, nj]

    def b_steps():
        steps = [["transpose", [1, 0]]] if trans_b else []
        return steps + [["reshape", [1, k, n]]]

    def epilogue(value, oc, mi, nj):
        if alpha != 1.0:
            value = value * tirx.const(alpha, acc_t)
        if c is not None and beta != 0.0:
            idx = broadcast_coords([mi, nj], c_shape)
            cv = cast(c[tuple(idx)], acc_t)
            value = value + (cv if beta == 1.0 else cv * tirx.const(beta, acc_t))
        return value

    out = emit_gemm(
        ctx,
        "gemm",
        a_at,
        b_at,
        out_batch=(),
        a_batch=(),
        b_batch=(),
        m=m,
        n=n,
        k=k,
        has_m=True,
        has_n=True,
        dtype=dtype,
        b_tensor=b,
        b_const_steps=b_steps,
        b_layout="gather" if trans_b else "plain",
        epilogue=epilogue,
    )
    return [out]


# --------------------------------------------------------------------------- scheduling helpers


def _annotations(sch, block) -> dict:
    ann = sch.get(block).annotations
    out = {}
    for key, val in ann.items():
        if isinstance(val, (int, str)):
            out[str(key)] = val
        elif isinstance(val, tirx.IntImm):
            out[str(key)] = int(val.value)
        else:
            out[str(key)] = str(val)
    return out


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def all_blocks(sch) -> list:
    """Every block under the function's root block, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_output(sch, block) -> bool:
    names = {_name(sch, b) for b in sch.get_output_blocks(sch.get_sblock("root"))}
    return _name(sch, block) in names


def is_spatial(sch, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def try_inline(sch, block) -> bool:
    try:
        sch.compute_inline(block)
        return True
    except tvm.error.TVMError:  # not inlinable (e.g. read by a block it cannot reach): keep it
        return False


def inline_epilogue(sch, anchor, keep: Sequence[str] = ()) -> list:
    """Inlines the non-output elementwise stages downstream of `anchor` (and the injective
    producers they read, e.g. a broadcast bias) into their consumers; returns the anchor's
    consumers afterwards (ideally one output block)."""
    keep = set(keep) | {_name(sch, anchor)}
    changed = True
    while changed:
        changed = False
        frontier = list(sch.get_consumers(anchor))
        seen: set[str] = set()
        while frontier:
            blk = frontier.pop()
            name = _name(sch, blk)
            if name in seen or name in keep:
                continue
            seen.add(name)
            if not is_output(sch, blk) and is_spatial(sch, blk) and try_inline(sch, blk):
                changed = True
                break
            frontier.extend(sch.get_consumers(blk))
            # Side inputs of the epilogue (bias reshapes, broadcasts).
            for p in sch.get_producers(blk):
                side = _name(sch, p) not in keep and not _reads_anchor(sch, p, anchor) and _is_cheap_side(sch, p)
                if side and try_inline(sch, p):
                    changed = True
    return list(sch.get_consumers(anchor))


def _reads_anchor(sch, block, anchor) -> bool:
    anchor_name = _name(sch, anchor)
    stack, seen = [block], set()
    while stack:
        blk = stack.pop()
        name = _name(sch, blk)
        if name == anchor_name:
            return True
        if name in seen:
            continue
        seen.add(name)
        stack.extend(sch.get_producers(blk))
    return False


def _is_cheap_side(sch, block) -> bool:
    """A spatial non-output stage with no anchor annotation: safe to recompute per use."""
    return is_spatial(sch, block) and not is_output(sch, block) and KERNEL not in _annotations(sch, block)


def schedule_simple(sch, block, threads: int, lanes: int = 16) -> None:
    """A plain root-level schedule for stages outside a micro-kernel (padded copies, packs):
    parallel over the fused outer spatial loops, the innermost loop left whole (vectorized
    when it splits evenly into lanes) so that index arithmetic stays out of it."""
    loops = sch.get_loops(block)
    ivs = sch.get(block).iter_vars
    if not loops or len(loops) != len(ivs):
        return  # already placed or transformed
    n_spatial = 0
    for iv in ivs:
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        n_spatial += 1
    if n_spatial == 0:
        return
    spatial = list(loops[:n_spatial])
    vec = None
    if n_spatial == len(loops):
        inner = spatial[-1]
        size = extent(sch, inner)
        if size % lanes == 0:
            if size > lanes:
                rest, vec = sch.split(inner, [None, lanes])
                spatial[-1] = rest
            else:
                vec = spatial.pop()
        elif len(spatial) > 1:
            spatial.pop()  # a ragged row: serial, LLVM vectorizes what it can
    if spatial:
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        if extent(sch, fused) > 1 and threads > 1:
            sch.parallel(fused)
    if vec is not None:
        sch.vectorize(vec)


def schedule_leftovers(sch, done: set[str], threads: int) -> None:
    """schedule_simple for every root-level block no anchor schedule placed."""
    for blk in all_blocks(sch):
        if _name(sch, blk) in done or not _at_root(sch, blk):
            continue
        if len(sch.get_loops(blk)) == len(sch.get(blk).iter_vars):
            schedule_simple(sch, blk, threads)


def _at_root(sch, block) -> bool:
    """True when the block has a root-level loop nest of its own: not a block an anchor
    schedule placed inside its tile loops (a reduction's init block can have as many
    loops as iter vars there, and fusing the tile loop with its own would fail)."""
    loops = sch.get_loops(block)
    if not loops:
        return True
    return len(sch.get_child_blocks(loops[0])) == 1


def _loop_index(sch, loops, loop) -> int:
    target = sch.get(loop)
    for i, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return i
    raise ValueError("loop not found")


def micro_kernel(sch, acc, at_loop, n_spatial: int, unroll: Sequence[int], vector: int, local: bool = True):
    """Computes the accumulator `acc` at `at_loop` (one register tile) and orders its loops
    as [reduction loops..., spatial loops...]: `unroll` lists spatial positions to unroll,
    `vector` the one to vectorize. Returns the init block."""
    sch.compute_at(acc, at_loop, preserve_unit_loops=True)
    loops = sch.get_loops(acc)
    inner = loops[_loop_index(sch, loops, at_loop) + 1 :]
    spatial, reduce = inner[:n_spatial], inner[n_spatial:]
    sch.reorder(*reduce, *spatial)
    for i in unroll:
        sch.unroll(spatial[i])
    sch.vectorize(spatial[vector])
    if local:
        sch.set_scope(acc, 0, "local")
    init = sch.decompose_reduction(acc, reduce[0]) if reduce else None
    if init is not None:
        init_loops = sch.get_loops(init)[-n_spatial:]
        sch.vectorize(init_loops[vector])
    return init


# --------------------------------------------------------------------------- gemm schedule


def schedule_gemm(sch, acc, ann: dict, info) -> set[str]:
    """Tiles the output stage mr x nr around the register tile of `acc` (see module doc)."""
    threads = getattr(info, "num_threads", 2) or 1
    mr, nr = ann["einfuse.mr"], ann["einfuse.nr"]
    rows = ann["einfuse.rows"]
    pack_name = ann.get("einfuse.pack_stage", "")
    pack = sch.get_sblock(pack_name) if pack_name else None
    keep = [pack_name] if pack_name else []
    consumers = inline_epilogue(sch, acc, keep)
    done = {_name(sch, acc)} | set(keep)
    if ann["einfuse.out_b"] + ann["einfuse.out_m"] + ann["einfuse.out_n"] == 0:
        return done  # a dot product of two vectors: nothing to tile
    out = consumers[0] if len(consumers) == 1 and is_output(sch, consumers[0]) else None
    groups = match_output(sch, out, [acc], ann) if out is not None else None
    if groups is None:
        _schedule_anchor_alone(sch, acc, mr, nr, threads)
        sch.annotate(acc, DENSE_PATH, "gemm_alone")
        if pack is not None:
            schedule_simple(sch, pack, threads)
        schedule_leftovers(sch, done, threads)
        return done
    done.add(_name(sch, out))
    sch.annotate(out, DENSE_PATH, "gemm_fused")
    nb, nm, nn = groups
    loops = sch.get_loops(out)
    b_loops, m_loops, n_loops = loops[:nb], loops[nb : nb + nm], loops[nb + nm :]
    b = b_loops[0] if b_loops else None
    m = m_loops[0] if m_loops else None
    n = n_loops[0] if n_loops else None
    mo = mi = no = ni = None
    if m is not None:
        mo, mi = sch.split(m, [None, mr])
    if n is not None:
        no, ni = sch.split(n, [None, nr])
    outer_panel = [x for x in (b, no) if x is not None]
    order = [*outer_panel, *[x for x in (mo, mi, ni) if x is not None]]
    sch.reorder(*order)
    n_panels = math.prod(extent(sch, x) for x in outer_panel) if outer_panel else 1

    # Where B's panels are packed: inline (few rows, plain layout), per panel (enough
    # panels to share out), or once at the root.
    pack_at = None
    if pack is not None:
        kind = _annotations(sch, pack).get(PACK_KIND)
        if kind != "gather" and rows <= 2 * mr:
            sch.compute_inline(pack)
            pack = None
            done.discard(pack_name)
        elif outer_panel and n_panels >= 2 * threads:
            pack_at = outer_panel[-1]
    # Parallel over whole panels when each thread then packs its own, else over tiles.
    if pack_at is not None:
        par = sch.fuse(*outer_panel) if len(outer_panel) > 1 else outer_panel[0]
        pack_at = par
        tile_loop = mo if mo is not None else par
    else:
        outer = [*outer_panel, *([mo] if mo is not None else [])]
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        tile_loop = par
    if threads > 1 and extent(sch, par) > 1:
        sch.parallel(par)
    if ni is not None:
        sch.vectorize(ni)

    # The register tile: acc's iter vars are (batch, row, col | k).
    micro_kernel(sch, acc, tile_loop, 3, unroll=[1], vector=2)
    if pack is not None:
        if pack_at is not None:
            sch.compute_at(pack, pack_at, preserve_unit_loops=True)
            _schedule_pack_panel(sch, pack)
        elif _annotations(sch, pack).get(PACK_KIND) == "gather":
            bb, jo, kk, ji = sch.get_loops(pack)
            sch.reorder(bb, jo, ji, kk)  # read the transposed source along its rows
            outer = sch.fuse(bb, jo)
            if threads > 1:
                sch.parallel(outer)
        else:
            schedule_simple(sch, pack, threads)
    schedule_leftovers(sch, done, threads)
    return done


def _schedule_pack_panel(sch, pack) -> None:
    """One B panel [K, nr] packed inside the panel loop. A plain source row is contiguous:
    vectorize along it. A padded last panel has a per-lane bound: left to LLVM (masked
    loads). A transposed source (B[n, k]) is read along k, its contiguous axis."""
    kind = _annotations(sch, pack).get(PACK_KIND)
    loops = sch.get_loops(pack)
    kk, ji = loops[-2], loops[-1]
    if kind == "plain":
        sch.vectorize(ji)
    elif kind == "gather":
        sch.reorder(ji, kk)


def match_output(sch, out, anchors: Sequence, ann: dict) -> tuple[int, int, int] | None:
    """Lays the output stage's loops out as the anchor's (batch, row, column) axes, at most
    one loop each; returns how many of each it has, or None when the output does not map
    onto the anchor's tiles (then the anchor is scheduled on its own).

    The output is the op's view, or a view of it (reshape, flatten, squeeze, unsqueeze in
    the epilogue, inlined into the output write): its loops are grouped by extent into
    batch, rows and columns, each group re-indexed as one loop (row-major, as a reshape
    keeps the element order), and then every read of an anchor's result (`anchors`,
    [batch, rows, columns] stages) must be exactly at the output's own (batch, row,
    column), which rejects views that move elements across groups (a transpose)."""
    nb, nm, nn = ann["einfuse.out_b"], ann["einfuse.out_m"], ann["einfuse.out_n"]
    extents = [extent(sch, lp) for lp in sch.get_loops(out)]
    if len(extents) != nb + nm + nn:
        groups = _view_groups(extents, ann, int(sch.get(anchors[0]).iter_vars[0].dom.extent))
        if groups is None:
            return None
        nb, nm, nn = groups
    if nb > 1 or nm > 1 or nn > 1:
        # One loop per acc axis. Fusing loops instead would leave the acc's row index as
        # div/mod of the fused loop, which compute_at's region analysis cannot see through.
        _canonical_layout(sch, out, nb, nm, nn)
        nb, nm, nn = min(nb, 1), min(nm, 1), min(nn, 1)
    # Checked even for an output of the op's rank: a reshape may keep the rank ([26, 70]
    # -> [70, 26]) and still not map.
    if not _reads_own_tile(sch, out, anchors, nb, nm, nn):
        return None
    return nb, nm, nn


def _view_groups(extents: list[int], ann: dict, batch: int) -> tuple[int, int, int] | None:
    """(batch, row, column) loop counts that split `extents` into groups whose sizes are
    the anchor's: the shortest prefix of `batch` elements (none when rows are flattened
    over the batch), the shortest suffix of N columns, and the rest rows; None if none."""
    if any(e <= 0 for e in extents):
        return None
    nb = _shortest_prefix(extents, batch if ann["einfuse.out_b"] else 1)
    nn = _shortest_prefix(extents[::-1], ann.get("einfuse.n", -1))
    if nb is None or nn is None or nb + nn > len(extents):
        return None
    if math.prod(extents[nb : len(extents) - nn]) != ann["einfuse.rows"]:
        return None
    return nb, len(extents) - nb - nn, nn


def _shortest_prefix(xs: Sequence[int], size: int) -> int | None:
    """The length of the shortest prefix of `xs` whose product is `size`, or None."""
    p = 1
    for i, x in enumerate(xs):
        if p == size:
            return i
        p *= x
    return len(xs) if p == size else None


def _reads_own_tile(sch, out, anchors: Sequence, nb: int, nm: int, nn: int) -> bool:
    """True when `out` (one loop per group) reads the anchor stages only at its own
    (batch or 0, row or 0, column or 0): compute_at then needs one register tile per tile.
    Proved WITHOUT the loops' bounds: compute_at's region analysis does not see through
    an index that is only equal within them (a reshape's div/mod over regrouped rows),
    and would compute a bigger region than the tile."""
    blk = sch.get(out)
    ivs = list(blk.iter_vars)
    zero = tirx.const(0, "int32")
    want = [ivs[0].var if nb else zero, ivs[nb].var if nm else zero, ivs[-1].var if nn else zero]
    analyzer = Analyzer()
    for iv in ivs:
        if analyzer.can_prove_equal(iv.dom.extent, 1):
            analyzer.bind(iv.var, iv.dom.min)  # a unit loop: TIR may read it as its constant
    buffers = [sch.get(a).writes[0].source for a in anchors]
    for region in blk.reads:
        if not any(region.source.same_as(b) for b in buffers):
            continue
        if len(region.region) != 3:
            return False
        for rng, w in zip(region.region, want):
            if not analyzer.can_prove_equal(rng.extent, 1) or not analyzer.can_prove_equal(rng.min, w):
                return False
    return True


def _canonical_layout(sch, block, nb: int, nm: int, nn: int) -> None:
    """Re-indexes `block` as (flat batch, flat rows, flat columns) over its loop groups."""
    extents = [extent(sch, lp) for lp in sch.get_loops(block)]
    groups = [(0, nb), (nb, nb + nm), (nb + nm, nb + nm + nn)]

    def index_map(*idx):
        out = []
        for lo, hi in groups:
            if hi > lo:
                out.append(ravel(idx[lo:hi], extents[lo:hi]) if hi - lo > 1 else idx[lo])
        return tuple(out)

    sch.transform_block_layout(block, tirx.IndexMap.from_func(index_map, ndim=len(extents), index_dtype="int32"))


def _schedule_anchor_alone(sch, acc, mr: int, nr: int, threads: int) -> None:
    """Fallback when the epilogue does not end in one output stage: the anchor is tiled on
    its own loops with a register-resident cache of each tile, written back to its buffer."""
    b, i, j, k = sch.get_loops(acc)
    io, ii = sch.split(i, [None, mr])
    jo, ji = sch.split(j, [None, nr])
    sch.reorder(b, jo, io, ii, ji, k)
    par = sch.fuse(b, jo, io)
    if threads > 1:
        sch.parallel(par)
    local = sch.cache_write(acc, 0, "local")
    # `acc` now computes into the cache; `local` names the write-back block.
    sch.reverse_compute_at(local, par, preserve_unit_loops=True)
    wb = sch.get_loops(local)
    sch.vectorize(wb[-1])
    loops = sch.get_loops(acc)
    sch.reorder(loops[-1], loops[-3], loops[-2])
    sch.unroll(loops[-3])
    sch.vectorize(loops[-2])
    init = sch.decompose_reduction(acc, loops[-1])
    sch.vectorize(sch.get_loops(init)[-1])


ANCHOR_SCHEDULES["gemm"] = schedule_gemm


def schedule_gemv(sch, part, ann: dict, info) -> set[str]:
    """Dot-product kernel: per (batch, block of `cols` columns) the vector partial sums of
    rows x cols dot products stay in registers along K, then are reduced across lanes."""
    threads = getattr(info, "num_threads", 2) or 1
    cols = ann["einfuse.cols"]
    names = {key: ann[f"einfuse.{key}_stage"] for key in ("part", "dot", "tail", "sum")}
    dot = sch.get_sblock(names["dot"])
    keep = [names["part"], names["tail"]] if names["tail"] else [names["part"]]
    done = {names["part"], names["dot"], names["tail"], names["sum"]} - {""}
    consumers = inline_epilogue(sch, dot, keep)
    out = consumers[0] if len(consumers) == 1 and is_output(sch, consumers[0]) else None
    anchors = [dot, *([sch.get_sblock(names["tail"])] if names["tail"] else [])]
    groups = match_output(sch, out, anchors, ann) if out is not None else None
    if groups is None or groups[2] == 0:
        schedule_leftovers(sch, set(), threads)
        return done
    done.add(_name(sch, out))
    sch.annotate(out, DENSE_PATH, "gemv_fused")
    nb, nm, nn = groups
    loops = sch.get_loops(out)
    b = loops[0] if nb else None
    m = loops[nb] if nm else None
    no, ni = sch.split(loops[-1], [None, cols])
    outer = [x for x in (b, no) if x is not None]
    sch.reorder(*outer, *([m] if m is not None else []), ni)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if threads > 1 and extent(sch, par) > 1:
        sch.parallel(par)
    sch.compute_at(dot, par, preserve_unit_loops=True)
    sch.set_scope(dot, 0, "local")
    if names["tail"]:
        tail = sch.get_sblock(names["tail"])
        sch.compute_at(tail, par, preserve_unit_loops=True)
    # part iter vars: (batch, row, column, lane | ko): ko outside, lanes vectorized.
    micro_kernel(sch, part, par, 4, unroll=[1, 2], vector=3)
    schedule_leftovers(sch, done, threads)
    return done


ANCHOR_SCHEDULES["gemv"] = schedule_gemv


@scheduler("out_fusable")
def schedule_out_fusable(sch, info) -> None:
    """Finds the anchor by its annotation and applies its kind's schedule; stages of groups
    without a known anchor get the plain parallel schedule."""
    threads = getattr(info, "num_threads", 2) or 1
    for blk in all_blocks(sch):
        ann = _annotations(sch, blk)
        kind = ann.get(KERNEL)
        if kind in ANCHOR_SCHEDULES:
            ANCHOR_SCHEDULES[kind](sch, blk, ann, info)
            return
    schedule_leftovers(sch, set(), threads)


# conv.py uses the helpers above; importing it here registers its emitters with this module.
from einfuse.codegen.tvm import conv as _conv  # noqa: F401
