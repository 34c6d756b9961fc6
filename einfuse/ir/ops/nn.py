"""Neural-network ops: matmul, gemm, convolutions, pooling, normalisations, softmax and einsum.

Semantics are those of the newest ONNX opset (the ONNX converter maps older opsets onto
them). Conventions shared by the windowed ops (conv, conv_transpose, *_pool):

- layout is NCHW-like: (N, C, D1, ..., Dn) with n = rank - 2 spatial dims (1 to 3 in
  practice, any n works);
- `pads` is (begin_1, ..., begin_n, end_1, ..., end_n) as in ONNX;
- `strides`, `dilations` (and `pads`, `kernel_shape`, `output_padding`) may be the empty
  tuple, meaning "all ones" / "all zeros" / "from the weight". The ONNX converter always
  writes them out; passes should read them through `window_params`.

Reference implementations never loop over output pixels: they build strided window views
(`sliding_window_view`) and reduce them, or contract them with BLAS matmuls. Low-precision
floats (f16, bf16, f8) accumulate in f32 and are cast back, as onnxruntime does.
"""

from __future__ import annotations

import re
from collections import Counter

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from einfuse.ir.ops import NORMALIZE, OUT_FUSABLE, REDUCE, Attr, register
from einfuse.ir.types import (
    DType,
    TensorType,
    broadcast_shapes,
    ceildiv,
    dim_known_ne,
    dim_min,
    floordiv,
    simplify_dim,
)

# Element types the arithmetic ops accept besides floats (as ONNX MatMul/Gemm and Einsum do).
_MATMUL_INT_DTYPES = frozenset({DType.i32, DType.i64, DType.u32, DType.u64})
_EINSUM_INT_DTYPES = frozenset({DType.i8, DType.i16, DType.i32, DType.i64, DType.u8, DType.u16, DType.u32, DType.u64})
_POOL_INT_DTYPES = frozenset({DType.i8, DType.u8})  # MaxPool only

_LOW_PRECISION = frozenset(
    np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
)


def _acc_dtype(dt: np.dtype) -> np.dtype:
    """The dtype a reference computes in: f32 for low-precision floats, else the input's own."""
    return np.dtype(np.float32) if np.dtype(dt) in _LOW_PRECISION else np.dtype(dt)


def _acc(x: np.ndarray) -> np.ndarray:
    return x.astype(_acc_dtype(x.dtype), copy=False)


def _out(x, like: np.dtype) -> np.ndarray:
    """Casts a result back to the op's output dtype (never a 0-d numpy scalar)."""
    return np.asarray(x).astype(like, copy=False)


# ---------------------------------------------------------------------------
# Shared inference helpers


def _check_float(ctx, t: TensorType, what: str) -> None:
    if not t.dtype.is_float:
        raise ctx.error(f"{what} must be a float tensor, got {t}")


def _check_same_dtype(ctx, a: TensorType, b: TensorType, what_a: str, what_b: str) -> None:
    if a.dtype != b.dtype:
        raise ctx.error(f"{what_a} {a} and {what_b} {b} have different dtypes")


def _norm_axis(ctx, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.error(f"{what}={axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _check_vector(ctx, i: int, length, what: str, *, float_only: bool = True) -> None:
    """Operand i (if present) must be 1-D of `length` elements."""
    if not ctx.has(i):
        return
    t = ctx.type(i)
    if float_only:
        _check_float(ctx, t, what)
    if t.rank != 1 or dim_known_ne(t.shape[0], length):
        raise ctx.error(f"{what} should have shape [{length}], got {t}")


def window_params(attrs: dict, nd: int, kernel=None) -> tuple[tuple, tuple, tuple, tuple]:
    """Explicit (kernel_shape, strides, pads, dilations) of a conv/pool node with `nd` spatial
    dims; empty attribute tuples stand for their defaults (kernel from `kernel` if given)."""
    kernel_shape = tuple(attrs.get("kernel_shape") or (kernel if kernel is not None else ()))
    strides = tuple(attrs.get("strides") or (1,) * nd)
    pads = tuple(attrs.get("pads") or (0,) * (2 * nd))
    dilations = tuple(attrs.get("dilations") or (1,) * nd)
    return kernel_shape, strides, pads, dilations


def _checked_window_params(ctx, nd: int, kernel=None):
    kernel_shape, strides, pads, dilations = window_params(ctx.attrs, nd, kernel)
    for name, vals, n, lo in (
        ("kernel_shape", kernel_shape, nd, 1),
        ("strides", strides, nd, 1),
        ("pads", pads, 2 * nd, 0),
        ("dilations", dilations, nd, 1),
    ):
        if len(vals) != n:
            raise ctx.error(f"{name}={vals} should have {n} entries for {nd} spatial dims")
        if any(isinstance(v, int) and v < lo for v in vals):
            raise ctx.error(f"{name}={vals} has entries below {lo}")
    return kernel_shape, strides, pads, dilations


def conv_out_dim(size, kernel, stride: int, dilation: int, pad_begin: int, pad_end: int):
    """floor((size + pads - dilated kernel) / stride) + 1, symbolic when `size` is."""
    effective = dilation * (kernel - 1) + 1
    return simplify_dim(floordiv(simplify_dim(size + pad_begin + pad_end - effective), stride) + 1)


def pool_out_dim(size, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, ceil_mode: bool):
    """Pool output size; in ceil mode a last window that would start in the end padding is
    dropped (ONNX and onnxruntime agree on this, following PyTorch)."""
    if not ceil_mode:
        return conv_out_dim(size, kernel, stride, dilation, pad_begin, pad_end)
    effective = dilation * (kernel - 1) + 1
    out = simplify_dim(ceildiv(simplify_dim(size + pad_begin + pad_end - effective), stride) + 1)
    if isinstance(out, int) and isinstance(size, int):
        return out - 1 if (out - 1) * stride >= size + pad_begin else out
    # Symbolic: windows must start before size + pad_begin, i.e. at most ceil((size + pad_begin) / stride).
    return dim_min(out, ceildiv(simplify_dim(size + pad_begin), stride))


def _check_out_dims(ctx, dims) -> None:
    for d in dims:
        if isinstance(d, int) and d < 1:
            raise ctx.error(f"the output would have spatial size {d} (input too small for kernel/pads/strides)")


# ---------------------------------------------------------------------------
# Shared reference helpers


def _windows(x: np.ndarray, kernel, strides, dilations, pads, out_sizes, pad_value) -> np.ndarray:
    """A read-only view (N, C, O1..On, K1..Kn) of every pooling/conv window of x.

    x is padded with `pad_value` by the begin pads and by whatever the last window needs at
    the end (fewer than the end pads when the tail is unused, more in ceil mode)."""
    nd = len(kernel)
    widths = [(0, 0)] * (x.ndim - nd)
    for i in range(nd):
        extent = (out_sizes[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        widths.append((pads[i], max(extent - x.shape[x.ndim - nd + i] - pads[i], 0)))
    if any(w != (0, 0) for w in widths):
        x = np.pad(x, widths, mode="constant", constant_values=pad_value)
    axes = tuple(range(x.ndim - nd, x.ndim))
    window = tuple(dilations[i] * (kernel[i] - 1) + 1 for i in range(nd))
    view = sliding_window_view(x, window, axis=axes)
    index = (slice(None),) * (x.ndim - nd)
    index += tuple(slice(0, (out_sizes[i] - 1) * strides[i] + 1, strides[i]) for i in range(nd))
    index += tuple(slice(None, None, dilations[i]) for i in range(nd))
    return view[index]


# ---------------------------------------------------------------------------
# matmul, gemm, einsum


def _infer_matmul(ctx):
    a, b = ctx.type(0), ctx.type(1)
    _check_same_dtype(ctx, a, b, "A", "B")
    if not (a.dtype.is_float or a.dtype in _MATMUL_INT_DTYPES):
        raise ctx.error(f"unsupported dtype {a.dtype}")
    if a.rank == 0 or b.rank == 0:
        raise ctx.error(f"operands must have rank >= 1, got {a} and {b}")
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    if dim_known_ne(a_shape[-1], b_shape[-2]):
        raise ctx.error(f"contracted dims differ: {a} @ {b}")
    try:
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise ctx.error(f"batch dims of {a} and {b} do not broadcast") from None
    shape = batch + ((a_shape[-2],) if a.rank > 1 else ()) + ((b_shape[-1],) if b.rank > 1 else ())
    return [TensorType(shape, a.dtype)]


@register("matmul", family=OUT_FUSABLE, inputs=2, infer=_infer_matmul)
def matmul(a, b):
    """numpy matmul: batch dims broadcast; a 1-D operand is a row (A) or column (B) vector."""
    return _out(np.matmul(_acc(a), _acc(b)), a.dtype)


def _infer_gemm(ctx):
    a, b = ctx.type(0), ctx.type(1)
    _check_same_dtype(ctx, a, b, "A", "B")
    if not (a.dtype.is_float or a.dtype in _MATMUL_INT_DTYPES):
        raise ctx.error(f"unsupported dtype {a.dtype}")
    if a.rank != 2 or b.rank != 2:
        raise ctx.error(f"A and B must be 2-D, got {a} and {b}")
    m, ka = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if dim_known_ne(ka, kb):
        raise ctx.error(
            f"contracted dims differ: A {a} (transA={ctx.attrs['transA']}), B {b} (transB={ctx.attrs['transB']})"
        )
    if ctx.has(2):
        c = ctx.type(2)
        _check_same_dtype(ctx, a, c, "A", "C")
        ok = c.rank <= 2
        if ok:
            try:
                ok = broadcast_shapes(c.shape, (m, n)) == (m, n)
            except ValueError:
                ok = False
        if not ok:
            raise ctx.error(f"C {c} does not broadcast to the output shape [{m},{n}]")
    return [TensorType((m, n), a.dtype)]


@register(
    "gemm",
    family=OUT_FUSABLE,
    inputs=(2, 3),
    attrs={
        "alpha": Attr("float", 1.0),
        "beta": Attr("float", 1.0),
        "transA": Attr("bool", False),
        "transB": Attr("bool", False),
    },
    infer=_infer_gemm,
)
def gemm(a, b, c=None, *, alpha, beta, transA, transB):
    """alpha * op(A) @ op(B) + beta * C, op = transpose when transA/transB; C broadcasts."""
    acc = _acc_dtype(a.dtype)
    a2 = _acc(a).T if transA else _acc(a)
    b2 = _acc(b).T if transB else _acc(b)
    if acc.kind in "iu" and not (float(alpha).is_integer() and float(beta).is_integer()):
        acc = np.dtype(np.float64)  # fractional scales on integers: compute in f64, cast back
        a2, b2 = a2.astype(acc), b2.astype(acc)
    y = np.matmul(a2, b2)
    scalar = int if acc.kind in "iu" else float
    if alpha != 1:
        y = y * np.asarray(scalar(alpha), acc)
    if c is not None and beta != 0:
        cb = c.astype(acc, copy=False)
        y = y + (cb if beta == 1 else cb * np.asarray(scalar(beta), acc))
    return _out(y, a.dtype)


_EINSUM_TERM = re.compile(r"^[A-Za-z]*(\.\.\.)?[A-Za-z]*$")


def parse_einsum(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Splits an einsum equation into input terms and the output term (made explicit as numpy
    does: ellipsis first, then the letters used once, in ASCII order). Raises ValueError."""
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise ValueError(f"equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ValueError(f"equation {equation!r} has {len(terms)} input terms for {n_inputs} operands")
    for t in terms + ([rhs] if arrow else []):
        if not _EINSUM_TERM.match(t):
            raise ValueError(f"bad term {t!r} in equation {equation!r} (letters and at most one '...')")
    counts = Counter(c for t in terms for c in t if c != ".")
    if not arrow:
        ellipsis = "..." if any("..." in t for t in terms) else ""
        rhs = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))
    letters = rhs.replace("...", "")
    if len(set(letters)) != len(letters):
        raise ValueError(f"output term {rhs!r} repeats a letter")
    missing = set(letters) - set(counts)
    if missing:
        raise ValueError(f"output letters {sorted(missing)} do not appear in the inputs of {equation!r}")
    return terms, rhs


def canonical_einsum(equation: str, n_inputs: int) -> str:
    """The explicit, space-free form of an equation ("ij,jk->ik")."""
    terms, rhs = parse_einsum(equation, n_inputs)
    return ",".join(terms) + "->" + rhs


def _infer_einsum(ctx):
    types = [ctx.type(i) for i in range(len(ctx.types))]
    try:
        terms, rhs = parse_einsum(ctx.attrs["equation"], len(types))
    except ValueError as e:
        raise ctx.error(str(e)) from None
    if ctx.attrs["combine"] not in EINSUM_COMBINE:
        raise ctx.error(f"combine={ctx.attrs['combine']!r} should be one of {', '.join(EINSUM_COMBINE)}")
    if ctx.attrs["reduce"] not in EINSUM_REDUCE:
        raise ctx.error(f"reduce={ctx.attrs['reduce']!r} should be one of {', '.join(EINSUM_REDUCE)}")
    dt = types[0].dtype
    if not (dt.is_float or dt in _EINSUM_INT_DTYPES):
        raise ctx.error(f"unsupported dtype {dt}")
    dims: dict = {}
    ellipsis_shapes = []
    for i, (term, t) in enumerate(zip(terms, types)):
        _check_same_dtype(ctx, types[0], t, "operand 0", f"operand {i}")
        pre, has_ellipsis, post = term.partition("...")
        n_ellipsis = t.rank - len(pre) - len(post)
        if n_ellipsis < 0 or (n_ellipsis > 0 and not has_ellipsis):
            raise ctx.error(f"term {term!r} does not fit operand {i} of type {t}")
        ellipsis_shapes.append(t.shape[len(pre) : len(pre) + n_ellipsis])
        labelled = list(zip(pre, t.shape[: len(pre)])) + list(zip(post, t.shape[len(pre) + n_ellipsis :]))
        for letter, d in labelled:
            prev = dims.get(letter)
            if prev is None or prev == 1:
                dims[letter] = d
            elif d != 1 and dim_known_ne(prev, d):  # numpy lets size-1 dims broadcast
                raise ctx.error(f"letter {letter!r} has sizes {prev} and {d}")
    try:
        ellipsis = broadcast_shapes(*ellipsis_shapes)
    except ValueError:
        raise ctx.error(f"the '...' dims of the operands do not broadcast: {ellipsis_shapes}") from None
    pre, has_ellipsis, post = rhs.partition("...")
    if ellipsis and not has_ellipsis:
        raise ctx.error(f"output term {rhs!r} needs '...' for the broadcast dims {list(ellipsis)}")
    shape = tuple(dims[c] for c in pre) + (ellipsis if has_ellipsis else ()) + tuple(dims[c] for c in post)
    return [TensorType(shape, dt)]


# Extended Einsum operators (FuseMax): the binary `combine` applied across the operands at
# each point of the iteration space, and the `reduce` over the letters not in the output.
EINSUM_COMBINE = ("mul", "add", "sub", "max", "min")
EINSUM_REDUCE = ("sum", "max", "min")
_COMBINE_FNS = {"mul": np.multiply, "add": np.add, "sub": np.subtract, "max": np.maximum, "min": np.minimum}
_REDUCE_FNS = {"sum": np.sum, "max": np.max, "min": np.min}


@register(
    "einsum",
    family=OUT_FUSABLE,
    inputs=(1, None),
    attrs={"equation": Attr("str"), "combine": Attr("str", "mul"), "reduce": Attr("str", "sum")},
    infer=_infer_einsum,
)
def einsum(*operands, equation, combine, reduce):
    """Extended Einsum over the equation: operands combined elementwise with `combine`
    (left to right), then reduced with `reduce` over the letters not in the output; the
    default mul/sum is numpy's einsum."""
    if combine == "mul" and reduce == "sum":
        out = np.einsum(equation, *(_acc(x) for x in operands), optimize=len(operands) > 1)
        return _out(out, operands[0].dtype)
    return _out(_extended_einsum(equation, [_acc(x) for x in operands], combine, reduce), operands[0].dtype)


def _extended_einsum(equation: str, operands: list, combine: str, reduce: str) -> np.ndarray:
    """The generic path: each operand laid out over all letters (diagonals taken, missing
    letters as size-1 axes), combined with broadcasting, then reduced."""
    terms, rhs = parse_einsum(equation, len(operands))
    # '...' becomes explicit letters, right-aligned across the operands as numpy broadcasts.
    used = set("".join(terms) + rhs)
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    n_ell = max((x.ndim - len(t.replace("...", "")) for t, x in zip(terms, operands) if "..." in t), default=0)
    ell = "".join(spare[:n_ell])
    terms = [t.replace("...", ell[n_ell - (x.ndim - len(t.replace("...", ""))) :]) for t, x in zip(terms, operands)]
    rhs = rhs.replace("...", ell)
    letters = list(dict.fromkeys(rhs + "".join(terms)))
    acc = None
    for term, x in zip(terms, operands):
        present = "".join(c for c in letters if c in term)
        view = np.einsum(f"{term}->{present}", x)  # diagonal of repeated letters, letters in order
        shape = [view.shape[present.index(c)] if c in present else 1 for c in letters]
        full = view.reshape(shape)
        acc = full if acc is None else _COMBINE_FNS[combine](acc, full)
    sizes = {}
    for term, x in zip(terms, operands):
        for c, d in zip(term, x.shape):
            if d != 1 or c not in sizes:
                sizes[c] = d
    acc = np.broadcast_to(acc, [sizes[c] for c in letters])
    axes = tuple(k for k, c in enumerate(letters) if c not in rhs)
    if axes:
        if acc.size == 0 and reduce != "sum":
            from einfuse.errors import ExecutionError

            raise ExecutionError(f"einsum: a {reduce} reduction over an empty dimension in {equation!r}")
        acc = _REDUCE_FNS[reduce](acc, axis=axes)
    kept = [c for c in letters if c in rhs]
    return np.transpose(acc, [kept.index(c) for c in rhs])


# ---------------------------------------------------------------------------
# conv, conv_transpose


def _conv_common(ctx):
    x, w = ctx.type(0), ctx.type(1)
    _check_float(ctx, x, "input")
    _check_same_dtype(ctx, x, w, "input", "weight")
    if x.rank < 3:
        raise ctx.error(f"input must be (N, C, spatial...) with rank >= 3, got {x}")
    if w.rank != x.rank:
        raise ctx.error(f"weight {w} must have the rank of the input {x}")
    group = ctx.attrs["group"]
    if group < 1:
        raise ctx.error(f"group={group} must be >= 1")
    nd = x.rank - 2
    kernel, strides, pads, dilations = _checked_window_params(ctx, nd, w.shape[2:])
    for k, wk in zip(kernel, w.shape[2:]):
        if dim_known_ne(k, wk):
            raise ctx.error(f"kernel_shape={kernel} does not match the weight {w}")
    if ctx.has(2):
        _check_same_dtype(ctx, x, ctx.type(2), "input", "bias")
    return x, w, group, nd, kernel, strides, pads, dilations


def _infer_conv(ctx):
    x, w, group, nd, kernel, strides, pads, dilations = _conv_common(ctx)
    channels = simplify_dim(w.shape[1] * group)
    if dim_known_ne(x.shape[1], channels):
        raise ctx.error(f"input {x} has {x.shape[1]} channels but the weight {w} with group={group} expects {channels}")
    m = w.shape[0]
    if isinstance(m, int) and m % group:
        raise ctx.error(f"weight {w} has {m} output channels, not a multiple of group={group}")
    _check_vector(ctx, 2, m, "bias")
    spatial = [
        conv_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]) for i in range(nd)
    ]
    _check_out_dims(ctx, spatial)
    return [TensorType((x.shape[0], m, *spatial), x.dtype)]


_WINDOW_ATTRS = {
    "kernel_shape": Attr("ints", ()),
    "strides": Attr("ints", ()),
    "pads": Attr("ints", ()),
    "dilations": Attr("ints", ()),
}


@register(
    "conv",
    family=OUT_FUSABLE,
    inputs=(2, 3),
    attrs={**_WINDOW_ATTRS, "group": Attr("int", 1)},
    infer=_infer_conv,
)
def conv(x, w, b=None, *, kernel_shape, strides, pads, dilations, group):
    """N-d grouped convolution (cross-correlation) of x (N, C, ...) with w (M, C/group, K...)."""
    nd = x.ndim - 2
    kernel, strides, pads, dilations = window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nd, w.shape[2:]
    )
    n, c = x.shape[:2]
    m = w.shape[0]
    cg, mg = c // group, m // group
    out_sizes = [
        conv_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]) for i in range(nd)
    ]
    xa, wa = _acc(x), _acc(w)
    cols = _windows(xa, kernel, strides, dilations, pads, out_sizes, 0)  # (N, C, O..., K...)
    # Splitting C into (group, C/group) keeps the view; the transpose+reshape below is the im2col copy.
    cols = cols.reshape(n, group, cg, *cols.shape[2:])
    o_axes = list(range(3, 3 + nd))
    k_axes = list(range(3 + nd, 3 + 2 * nd))
    cols = cols.transpose(1, 0, *o_axes, 2, *k_axes)  # (G, N, O..., C/G, K...)
    n_out = n * int(np.prod(out_sizes, dtype=np.int64))
    patch = cg * int(np.prod(kernel, dtype=np.int64))
    cols = cols.reshape(group, n_out, patch)
    wg = wa.reshape(group, mg, patch).transpose(0, 2, 1)  # (G, C/G*K, M/G)
    y = np.matmul(cols, wg)  # (G, N*O, M/G): one BLAS gemm per group
    y = y.reshape(group, n, *out_sizes, mg)
    y = y.transpose(1, 0, 2 + nd, *range(2, 2 + nd)).reshape(n, m, *out_sizes)  # (N, G, M/G, O...)
    if b is not None:
        y = y + _acc(b).reshape(m, *([1] * nd))
    return _out(y, x.dtype)


def _infer_conv_transpose(ctx):
    x, w, group, nd, kernel, strides, pads, dilations = _conv_common(ctx)
    if dim_known_ne(x.shape[1], w.shape[0]):
        raise ctx.error(f"input {x} has {x.shape[1]} channels but the weight {w} expects {w.shape[0]}")
    if isinstance(w.shape[0], int) and w.shape[0] % group:
        raise ctx.error(f"weight {w} has {w.shape[0]} input channels, not a multiple of group={group}")
    output_padding = ctx.attrs["output_padding"] or (0,) * nd
    if len(output_padding) != nd or any(p < 0 for p in output_padding):
        raise ctx.error(f"output_padding={output_padding} should be {nd} non-negative entries")
    m = simplify_dim(w.shape[1] * group)
    _check_vector(ctx, 2, m, "bias")
    spatial = [
        simplify_dim(
            strides[i] * (x.shape[2 + i] - 1)
            + output_padding[i]
            + dilations[i] * (kernel[i] - 1)
            + 1
            - pads[i]
            - pads[nd + i]
        )
        for i in range(nd)
    ]
    _check_out_dims(ctx, spatial)
    return [TensorType((x.shape[0], m, *spatial), x.dtype)]


@register(
    "conv_transpose",
    family=OUT_FUSABLE,
    inputs=(2, 3),
    attrs={**_WINDOW_ATTRS, "group": Attr("int", 1), "output_padding": Attr("ints", ())},
    infer=_infer_conv_transpose,
)
def conv_transpose(x, w, b=None, *, kernel_shape, strides, pads, dilations, group, output_padding):
    """Transposed convolution of x (N, C, ...) with w (C, M/group, K...); output_padding grows
    the end of each spatial dim (the output shape is already resolved into pads)."""
    nd = x.ndim - 2
    kernel, strides, pads, dilations = window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nd, w.shape[2:]
    )
    output_padding = output_padding or (0,) * nd
    n, c = x.shape[:2]
    in_sizes = x.shape[2:]
    cg, mg = c // group, w.shape[1]
    m = mg * group
    xa, wa = _acc(x), _acc(w)
    # cols[g, n*I, m*K] = x[n, g, c, I] . w[g, c, m*K]: one gemm per group
    xg = xa.reshape(n, group, cg, -1).transpose(1, 0, 3, 2).reshape(group, -1, cg)
    wg = wa.reshape(group, cg, -1)
    cols = np.matmul(xg, wg).reshape(group, n, *in_sizes, mg, *kernel)
    # -> (K..., N, G, M/G, I...) so that each kernel tap is one contiguous block to scatter-add
    k_axes = list(range(3 + nd, 3 + 2 * nd))
    i_axes = list(range(2, 2 + nd))
    cols = np.ascontiguousarray(cols.transpose(*k_axes, 1, 0, 2 + nd, *i_axes))
    full_sizes = [
        (in_sizes[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 + output_padding[i] for i in range(nd)
    ]
    full = np.zeros((n, group, mg, *full_sizes), dtype=cols.dtype)
    for tap in np.ndindex(*kernel):
        index = (slice(None),) * 3 + tuple(
            slice(tap[i] * dilations[i], tap[i] * dilations[i] + (in_sizes[i] - 1) * strides[i] + 1, strides[i])
            for i in range(nd)
        )
        full[index] += cols[tap]
    crop = (slice(None),) * 3 + tuple(slice(pads[i], full_sizes[i] - pads[nd + i]) for i in range(nd))
    y = full[crop].reshape(n, m, *[full_sizes[i] - pads[i] - pads[nd + i] for i in range(nd)])
    if b is not None:
        y = y + _acc(b).reshape(m, *([1] * nd))
    return _out(y, x.dtype)


# ---------------------------------------------------------------------------
# pooling


def _infer_pool(ctx, *, int_dtypes=frozenset(), n_outputs: int = 1):
    x = ctx.type(0)
    if not (x.dtype.is_float or x.dtype in int_dtypes):
        raise ctx.error(f"unsupported dtype {x.dtype}")
    if x.rank < 3:
        raise ctx.error(f"input must be (N, C, spatial...) with rank >= 3, got {x}")
    nd = x.rank - 2
    if not ctx.attrs["kernel_shape"]:
        raise ctx.error("kernel_shape is required")
    kernel, strides, pads, dilations = _checked_window_params(ctx, nd)
    ceil_mode = ctx.attrs.get("ceil_mode", False)
    spatial = [
        pool_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], ceil_mode)
        for i in range(nd)
    ]
    _check_out_dims(ctx, spatial)
    shape = (*x.shape[:2], *spatial)
    out = [TensorType(shape, x.dtype)]
    if n_outputs == 2:
        out.append(TensorType(shape, DType.i64))
    return out


def _pool_setup(x, kernel_shape, strides, pads, dilations, ceil_mode):
    nd = x.ndim - 2
    kernel, strides, pads, dilations = window_params(
        {"kernel_shape": kernel_shape, "strides": strides, "pads": pads, "dilations": dilations}, nd
    )
    out_sizes = [
        pool_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i], ceil_mode)
        for i in range(nd)
    ]
    return nd, kernel, strides, pads, dilations, out_sizes


def _max_pool_infer(ctx):
    n = 2 if ctx.attrs["with_indices"] else 1
    if ctx.attrs["storage_order"] not in (0, 1):
        raise ctx.error(f"storage_order={ctx.attrs['storage_order']} must be 0 (row major) or 1 (column major)")
    return _infer_pool(ctx, int_dtypes=_POOL_INT_DTYPES, n_outputs=n)


@register(
    "max_pool",
    family=REDUCE,
    inputs=1,
    attrs={
        **_WINDOW_ATTRS,
        "kernel_shape": Attr("ints"),
        "ceil_mode": Attr("bool", False),
        "storage_order": Attr("int", 0),
        "with_indices": Attr("bool", False),
    },
    outputs=lambda attrs: 2 if attrs.get("with_indices") else 1,
    infer=_max_pool_infer,
)
def max_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode, storage_order, with_indices):
    """Max over each window (padding never wins). With `with_indices`, also the flat index of
    each maximum into x (row major, or column major over the spatial dims if storage_order=1)."""
    nd, kernel, strides, pads, dilations, out_sizes = _pool_setup(x, kernel_shape, strides, pads, dilations, ceil_mode)
    if x.dtype.kind in "iu":
        lowest = np.iinfo(x.dtype).min
    else:
        # onnxruntime's initial value (TVM's too): a window of padding only gives the
        # lowest float, not -inf (ONNX does not say; onnx.reference gives NaN)
        lowest = float(ml_dtypes.finfo(x.dtype).min)
    view = _windows(x, kernel, strides, dilations, pads, out_sizes, lowest)
    k_axes = tuple(range(2 + nd, 2 + 2 * nd))
    y = view.max(axis=k_axes)
    if not with_indices:
        return _out(y, x.dtype)
    flat = view.reshape(*view.shape[: 2 + nd], -1)
    taps = np.unravel_index(flat.argmax(axis=-1), kernel)  # first maximum in window order
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    # Flat index: (n*C + c) * prod(spatial) + position inside the (row or column major) plane.
    index = (np.arange(n * c, dtype=np.int64).reshape(n, c, *([1] * nd))) * int(np.prod(spatial, dtype=np.int64))
    plane_stride = 1
    dims = range(nd) if storage_order == 1 else reversed(range(nd))
    for i in dims:
        start = np.arange(out_sizes[i], dtype=np.int64) * strides[i] - pads[i]
        coord = start.reshape([-1 if j == i else 1 for j in range(nd)]) + taps[i].astype(np.int64) * dilations[i]
        index = index + coord * plane_stride
        plane_stride *= spatial[i]
    return _out(y, x.dtype), index.astype(np.int64)


@register(
    "average_pool",
    family=REDUCE,
    inputs=1,
    attrs={
        **_WINDOW_ATTRS,
        "kernel_shape": Attr("ints"),
        "ceil_mode": Attr("bool", False),
        "count_include_pad": Attr("bool", False),
    },
    infer=_infer_pool,
)
def average_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode, count_include_pad):
    """Mean over each window: of the real elements, or (count_include_pad) of the elements
    inside the padded input; positions past the end padding (ceil mode) never count."""
    nd, kernel, strides, pads, dilations, out_sizes = _pool_setup(x, kernel_shape, strides, pads, dilations, ceil_mode)
    view = _windows(_acc(x), kernel, strides, dilations, pads, out_sizes, 0)
    total = view.sum(axis=tuple(range(2 + nd, 2 + 2 * nd)))
    # Windows are boxes, so the element count factorises into one 1-D count per spatial dim.
    count = np.ones((), dtype=total.dtype)
    for i in range(nd):
        lo, hi = (-pads[i], x.shape[2 + i] + pads[nd + i]) if count_include_pad else (0, x.shape[2 + i])
        pos = (np.arange(out_sizes[i]) * strides[i] - pads[i])[:, None] + np.arange(kernel[i]) * dilations[i]
        per_dim = ((pos >= lo) & (pos < hi)).sum(axis=1).astype(total.dtype)
        count = count * per_dim.reshape([-1 if j == i else 1 for j in range(nd)])
    return _out(total / count, x.dtype)


def _lp_norm(values: np.ndarray, p: int, axis) -> np.ndarray:
    if p == 1:
        return np.abs(values).sum(axis=axis)
    if p == 2:
        return np.sqrt(np.square(values).sum(axis=axis))
    return np.power(np.power(np.abs(values), p).sum(axis=axis), 1.0 / p)


def _infer_lp_pool(ctx):
    if ctx.attrs["p"] < 1:
        raise ctx.error(f"p={ctx.attrs['p']} must be >= 1")
    return _infer_pool(ctx)


@register(
    "lp_pool",
    family=REDUCE,
    inputs=1,
    attrs={**_WINDOW_ATTRS, "kernel_shape": Attr("ints"), "ceil_mode": Attr("bool", False), "p": Attr("int", 2)},
    infer=_infer_lp_pool,
)
def lp_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode, p):
    """(sum |x|^p)^(1/p) over each window (padding is zeros)."""
    nd, kernel, strides, pads, dilations, out_sizes = _pool_setup(x, kernel_shape, strides, pads, dilations, ceil_mode)
    view = _windows(_acc(x), kernel, strides, dilations, pads, out_sizes, 0)
    return _out(_lp_norm(view, p, tuple(range(2 + nd, 2 + 2 * nd))), x.dtype)


def _infer_global_pool(ctx, *, int_dtypes=frozenset()):
    x = ctx.type(0)
    if not (x.dtype.is_float or x.dtype in int_dtypes):
        raise ctx.error(f"unsupported dtype {x.dtype}")
    if x.rank < 3:
        raise ctx.error(f"input must be (N, C, spatial...) with rank >= 3, got {x}")
    if ctx.attrs.get("p", 1) < 1:
        raise ctx.error(f"p={ctx.attrs['p']} must be >= 1")
    return [TensorType((*x.shape[:2], *([1] * (x.rank - 2))), x.dtype)]


def _spatial_axes(x) -> tuple:
    return tuple(range(2, x.ndim))


@register("global_average_pool", family=REDUCE, inputs=1, infer=_infer_global_pool)
def global_average_pool(x):
    """Mean over all spatial dims (kept as size 1)."""
    return _out(_acc(x).mean(axis=_spatial_axes(x), keepdims=True), x.dtype)


@register(
    "global_max_pool",
    family=REDUCE,
    inputs=1,
    infer=lambda ctx: _infer_global_pool(ctx, int_dtypes=_POOL_INT_DTYPES),
)
def global_max_pool(x):
    """Max over all spatial dims (kept as size 1)."""
    return _out(x.max(axis=_spatial_axes(x), keepdims=True), x.dtype)


@register("global_lp_pool", family=REDUCE, inputs=1, attrs={"p": Attr("int", 2)}, infer=_infer_global_pool)
def global_lp_pool(x, *, p):
    """(sum |x|^p)^(1/p) over all spatial dims (kept as size 1)."""
    y = _lp_norm(_acc(x), p, _spatial_axes(x))
    return _out(y.reshape(*x.shape[:2], *([1] * (x.ndim - 2))), x.dtype)


# ---------------------------------------------------------------------------
# normalisations


def _channel_shape(x: np.ndarray) -> tuple:
    return (x.shape[1],) + (1,) * (x.ndim - 2)


def _infer_batch_norm(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 2:
        raise ctx.error(f"input must be (N, C, ...) with rank >= 2, got {x}")
    # ONNX-15 lets scale/bias and mean/var have their own float types.
    for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")):
        _check_vector(ctx, i, x.shape[1], what)
    return [x]


@register("batch_norm", family=NORMALIZE, inputs=5, attrs={"epsilon": Attr("float", 1e-5)}, infer=_infer_batch_norm)
def batch_norm(x, scale, bias, mean, var, *, epsilon):
    """Inference batch norm over channel axis 1: (x - mean) / sqrt(var + eps) * scale + bias."""
    acc = _acc_dtype(x.dtype)
    shape = _channel_shape(x)
    mult = scale.astype(acc) / np.sqrt(var.astype(acc) + np.asarray(epsilon, acc))
    y = (_acc(x) - mean.astype(acc).reshape(shape)) * mult.reshape(shape) + bias.astype(acc).reshape(shape)
    return _out(y, x.dtype)


def _infer_instance_norm(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 3:
        raise ctx.error(f"input must be (N, C, spatial...) with rank >= 3, got {x}")
    _check_vector(ctx, 1, x.shape[1], "scale")
    _check_vector(ctx, 2, x.shape[1], "bias")
    return [x]


def _standardize(x: np.ndarray, axes, epsilon: float, acc: np.dtype):
    """(x - mean) * inv_std over `axes`, with the statistics (keepdims) in dtype `acc`."""
    xa = x.astype(acc, copy=False)
    mean = xa.mean(axis=axes, keepdims=True)
    centered = xa - mean
    var = np.square(centered).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + np.asarray(epsilon, acc))
    return centered * inv_std, mean, inv_std


@register(
    "instance_norm",
    family=NORMALIZE,
    inputs=3,
    attrs={"epsilon": Attr("float", 1e-5)},
    infer=_infer_instance_norm,
)
def instance_norm(x, scale, bias, *, epsilon):
    """Normalise each (n, c) plane over the spatial dims, then scale and shift per channel."""
    acc = _acc_dtype(x.dtype)
    y, _, _ = _standardize(x, _spatial_axes(x), epsilon, acc)
    shape = _channel_shape(x)
    return _out(y * scale.astype(acc).reshape(shape) + bias.astype(acc).reshape(shape), x.dtype)


def _infer_layer_norm(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 1:
        raise ctx.error(f"input must have rank >= 1, got {x}")
    axis = _norm_axis(ctx, ctx.attrs["axis"], x.rank)
    if not ctx.attrs["stash_type"].is_float:
        raise ctx.error(f"stash_type={ctx.attrs['stash_type']} must be a float type")
    for i, what in ((1, "scale"), (2, "bias")):
        if not ctx.has(i):
            continue
        t = ctx.type(i)
        _check_same_dtype(ctx, x, t, "input", what)
        try:
            ok = t.rank <= x.rank - axis and broadcast_shapes(x.shape, t.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ctx.error(f"{what} {t} does not broadcast to the normalised dims {list(x.shape[axis:])}")
    out = [x]
    if ctx.attrs["with_stats"]:
        stats = TensorType((*x.shape[:axis], *([1] * (x.rank - axis))), ctx.attrs["stash_type"])
        out += [stats, stats]
    return out


@register(
    "layer_norm",
    family=NORMALIZE,
    inputs=(2, 3),
    attrs={
        "axis": Attr("int", -1),
        "epsilon": Attr("float", 1e-5),
        "stash_type": Attr("dtype", DType.f32),
        "with_stats": Attr("bool", False),
    },
    outputs=lambda attrs: 3 if attrs.get("with_stats") else 1,
    infer=_infer_layer_norm,
)
def layer_norm(x, scale, bias=None, *, axis, epsilon, stash_type, with_stats):
    """Normalise over dims axis..rank-1 (statistics in stash_type), then * scale + bias.
    With `with_stats`, also returns Mean and InvStdDev (keepdims, in stash_type)."""
    axis = axis + x.ndim if axis < 0 else axis
    acc = np.promote_types(stash_type.np, _acc_dtype(x.dtype))
    y, mean, inv_std = _standardize(x, tuple(range(axis, x.ndim)), epsilon, acc)
    y = y * scale.astype(acc)
    if bias is not None:
        y = y + bias.astype(acc)
    y = _out(y, x.dtype)
    if not with_stats:
        return y
    return y, _out(mean, stash_type.np), _out(inv_std, stash_type.np)


def _infer_group_norm(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 2:
        raise ctx.error(f"input must be (N, C, ...) with rank >= 2, got {x}")
    groups = ctx.attrs["num_groups"]
    c = x.shape[1]
    if groups < 1 or (isinstance(c, int) and c % groups):
        raise ctx.error(f"num_groups={groups} must be >= 1 and divide the {c} channels")
    if not ctx.attrs["stash_type"].is_float:
        raise ctx.error(f"stash_type={ctx.attrs['stash_type']} must be a float type")
    _check_vector(ctx, 1, c, "scale")
    _check_vector(ctx, 2, c, "bias")
    return [x]


@register(
    "group_norm",
    family=NORMALIZE,
    inputs=3,
    attrs={"num_groups": Attr("int"), "epsilon": Attr("float", 1e-5), "stash_type": Attr("dtype", DType.f32)},
    infer=_infer_group_norm,
)
def group_norm(x, scale, bias, *, num_groups, epsilon, stash_type):
    """Normalise each group of C/num_groups channels (with their spatial dims) per instance,
    then scale and shift per channel (ONNX-21 semantics: scale and bias have C entries)."""
    acc = np.promote_types(stash_type.np, _acc_dtype(x.dtype))
    grouped = x.reshape(x.shape[0], num_groups, -1)
    y, _, _ = _standardize(grouped, (2,), epsilon, acc)
    y = y.reshape(x.shape)
    shape = _channel_shape(x)
    return _out(y * scale.astype(acc).reshape(shape) + bias.astype(acc).reshape(shape), x.dtype)


def _infer_lrn(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 3:
        raise ctx.error(f"input must be (N, C, spatial...) with rank >= 3, got {x}")
    if ctx.attrs["size"] < 1:
        raise ctx.error(f"size={ctx.attrs['size']} must be >= 1")
    return [x]


@register(
    "lrn",
    family=NORMALIZE,
    inputs=1,
    attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75), "bias": Attr("float", 1.0)},
    infer=_infer_lrn,
)
def lrn(x, *, size, alpha, beta, bias):
    """x / (bias + alpha/size * sum of x^2 over a window of `size` channels) ^ beta."""
    xa = _acc(x)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.pad(np.square(xa), [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    square_sum = sliding_window_view(sq, size, axis=1).sum(axis=-1)
    return _out(xa / np.power(bias + (alpha / size) * square_sum, beta), x.dtype)


def _infer_axis_op(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    if x.rank < 1:
        raise ctx.error(f"input must have rank >= 1, got {x}")
    _norm_axis(ctx, ctx.attrs["axis"], x.rank)
    return [x]


@register("softmax", family=NORMALIZE, inputs=1, attrs={"axis": Attr("int", -1)}, infer=_infer_axis_op)
def softmax(x, *, axis):
    """exp(x) / sum(exp(x)) along axis (max-subtracted)."""
    xa = _acc(x)
    # initial=-inf: an empty axis gives an empty result (numpy's max of nothing fails)
    e = np.exp(xa - xa.max(axis=axis, keepdims=True, initial=-np.inf))
    return _out(e / e.sum(axis=axis, keepdims=True), x.dtype)


@register("log_softmax", family=NORMALIZE, inputs=1, attrs={"axis": Attr("int", -1)}, infer=_infer_axis_op)
def log_softmax(x, *, axis):
    """x - log(sum(exp(x))) along axis (max-subtracted)."""
    xa = _acc(x)
    shifted = xa - xa.max(axis=axis, keepdims=True, initial=-np.inf)
    return _out(shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True)), x.dtype)


@register("hardmax", family=NORMALIZE, inputs=1, attrs={"axis": Attr("int", -1)}, infer=_infer_axis_op)
def hardmax(x, *, axis):
    """1 at the first maximum along axis, 0 elsewhere."""
    y = np.zeros(x.shape, dtype=x.dtype)
    if x.size:
        np.put_along_axis(y, np.expand_dims(x.argmax(axis=axis), axis), 1, axis=axis)
    return y


def _infer_lp_normalization(ctx):
    if ctx.attrs["p"] < 1:
        raise ctx.error(f"p={ctx.attrs['p']} must be >= 1")
    return _infer_axis_op(ctx)


@register(
    "lp_normalization",
    family=NORMALIZE,
    inputs=1,
    attrs={"axis": Attr("int", -1), "p": Attr("int", 2)},
    infer=_infer_lp_normalization,
)
def lp_normalization(x, *, axis, p):
    """x / ||x||_p along axis (0 where the norm is 0)."""
    xa = _acc(x)
    norm = np.expand_dims(_lp_norm(xa, p, axis), axis)
    safe = np.where(norm == 0, np.ones((), norm.dtype), norm)
    return _out(np.where(norm == 0, np.zeros((), norm.dtype), xa / safe), x.dtype)


def _infer_mvn(ctx):
    x = ctx.type(0)
    _check_float(ctx, x, "input")
    axes = ctx.attrs["axes"]
    normed = [_norm_axis(ctx, a, x.rank, "axes") for a in axes]
    if len(set(normed)) != len(normed):
        raise ctx.error(f"axes={axes} repeats an axis")
    return [x]


@register(
    "mean_variance_normalization",
    family=NORMALIZE,
    inputs=1,
    attrs={"axes": Attr("ints", (0, 2, 3))},
    infer=_infer_mvn,
)
def mean_variance_normalization(x, *, axes):
    """(x - mean) / (std + 1e-9) over axes (the ONNX function's epsilon)."""
    axes = tuple(a + x.ndim if a < 0 else a for a in axes)
    xa = _acc(x)
    centered = xa - xa.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.square(centered).mean(axis=axes, keepdims=True))
    return _out(centered / (std + np.asarray(1e-9, xa.dtype)), x.dtype)
