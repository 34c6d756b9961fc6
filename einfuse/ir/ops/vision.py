"""Vision and detection ops: sampling (grid_sample, affine_grid, roi_align), image folding
and cropping (col2im, center_crop_pad, max_unpool), detection post-processing
(non_max_suppression), unique and det. Semantics are those of the newest ONNX opset.

Static parameters (sizes, shapes, kernel shapes, axes...) are attributes the ONNX
converter reads from constant operands, with every default filled and axes made
non-negative. Value-like operands (NonMaxSuppression's thresholds) stay operands.

Floating-point arithmetic on 16-bit floats runs in f32 and is rounded back, as in
onnxruntime; f32 and f64 compute in their own precision. Data-dependent output sizes
(non_max_suppression, unique) are fresh symbols unless the input is a constant.
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np

from einfuse.errors import ExecutionError
from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.types import (
    DType,
    TensorType,
    dim_known_ne,
    floordiv,
    prod,
)

_LOW_PRECISION = frozenset(
    np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
)
# Float types the ONNX sampling ops accept (no float8).
SAMPLING_FLOATS = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})


def _work_dtype(*dts) -> np.dtype:
    """f64 if any operand is f64, else f32 (16-bit floats and integers compute in f32)."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dts) else np.dtype(np.float32)


def _acc_dtype(dt: np.dtype) -> np.dtype:
    """The dtype sums run in: f32 for low-precision floats, else the input's own."""
    return np.dtype(np.float32) if np.dtype(dt) in _LOW_PRECISION else np.dtype(dt)


def _check_float(ctx, i: int, what: str, allowed=SAMPLING_FLOATS) -> TensorType:
    t = ctx.type(i)
    if t.dtype not in allowed:
        raise ctx.error(f"{what} must be a float tensor, got {t}")
    return t


def _check_choice(ctx, name: str, allowed: tuple) -> str:
    v = ctx.attrs[name]
    if v not in allowed:
        raise ctx.error(f"unknown {name} {v!r} (expected one of {', '.join(allowed)})")
    return v


def _check_len(ctx, name: str, n: int) -> tuple:
    v = ctx.attrs[name]
    if len(v) != n:
        raise ctx.error(f"{name} {list(v)} should have {n} values")
    return v


# ---------------------------------------------------------------------------
# grid_sample

GRID_SAMPLE_MODES = ("linear", "nearest", "cubic")
PADDING_MODES = ("zeros", "border", "reflection")
_CUBIC_ALPHA = -0.75  # Keys' cubic convolution, as PyTorch and onnxruntime use


def _grid_sample_infer(ctx):
    x, grid = ctx.type(0), ctx.type(1)
    mode = _check_choice(ctx, "mode", GRID_SAMPLE_MODES)
    _check_choice(ctx, "padding_mode", PADDING_MODES)
    _check_float(ctx, 1, "grid")
    if mode != "nearest" and x.dtype not in SAMPLING_FLOATS:
        raise ctx.error(f"{mode} sampling needs a float input, got {x}")
    r = x.rank - 2
    if r < 1:
        raise ctx.error(f"input must have shape (N, C, d1..dr) with r >= 1, got {x}")
    if grid.rank != x.rank:
        raise ctx.error(f"grid {grid} must have rank {x.rank} (N, D1..D{r}, {r}) for input {x}")
    if dim_known_ne(grid.shape[-1], r):
        raise ctx.error(f"the last dim of grid {grid} must be {r}, one coordinate per spatial dim of {x}")
    if dim_known_ne(grid.shape[0], x.shape[0]):
        raise ctx.error(f"grid {grid} and input {x} disagree on the batch size")
    return [x.with_shape(x.shape[:2] + grid.shape[1:-1])]


def _denormalize(g: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """Normalised [-1, 1] coordinates to pixel coordinates."""
    if align_corners:
        return (g + 1) / 2 * (size - 1)  # -1 and 1 are the centres of the corner pixels
    return ((g + 1) * size - 1) / 2  # -1 and 1 are the outer edges of the corner pixels


def _coord_bounds(size: int, align_corners: bool) -> tuple[float, float]:
    return (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflects coordinates outside [lo, hi] back in, off the borders as many times as needed."""
    span = hi - lo
    if span <= 0:
        return np.full_like(v, lo)
    below, above = v < lo, v > hi
    dx = np.where(below, lo - v, v - hi)
    flips = np.floor(dx / span)
    rest = dx - flips * span
    even = flips % 2 == 0
    from_below = np.where(even, lo + rest, hi - rest)
    from_above = np.where(even, hi - rest, lo + rest)
    return np.where(below, from_below, np.where(above, from_above, v))


def _pad_coordinates(v: np.ndarray, size: int, padding_mode: str, align_corners: bool) -> np.ndarray:
    """Moves out-of-range coordinates inside for border and reflection padding."""
    lo, hi = _coord_bounds(size, align_corners)
    outside = (v < lo) | (v > hi)
    if padding_mode == "border":
        return np.where(outside, np.clip(v, 0, size - 1), v)
    if padding_mode == "reflection":
        return np.where(outside, _reflect(v, lo, hi), v)
    return v


def _pixel_index(i: np.ndarray, size: int, padding_mode: str, align_corners: bool, wt) -> tuple:
    """(in-range index, valid mask) of integer tap positions `i` under a padding mode."""
    if padding_mode == "zeros":
        valid = (i >= 0) & (i < size)
        return np.clip(i, 0, max(size - 1, 0)), valid
    if padding_mode == "reflection":
        lo, hi = _coord_bounds(size, align_corners)
        i = np.trunc(_reflect(i.astype(wt), lo, hi)).astype(np.int64)
    return np.clip(i, 0, max(size - 1, 0)), None


def _cubic_coeffs(t: np.ndarray) -> list:
    """Weights of the taps at -1, 0, 1, 2 for a fractional offset t in [0, 1)."""
    a = _CUBIC_ALPHA
    c0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    c1 = ((a + 2) * t - (a + 3)) * t * t + 1
    c2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    c3 = ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a
    return [c0, c1, c2, c3]


def _taps(v: np.ndarray, mode: str) -> list:
    """[(integer position, weight or None)] whose weighted sum interpolates at coordinates v."""
    if mode == "nearest":
        return [(_to_index(v), None)]
    base = np.floor(v)
    frac = v - base
    i0 = _to_index(base)
    if mode == "linear":
        return [(i0, 1 - frac), (i0 + 1, frac)]
    return [(i0 + k - 1, c) for k, c in enumerate(_cubic_coeffs(frac))]


def _to_index(v: np.ndarray) -> np.ndarray:
    # NaN or huge coordinates have no meaningful index; keep the cast defined (they are
    # clipped and masked later, and their NaN weights propagate).
    v = np.where(np.isfinite(v), v, -2.0)
    return np.trunc(np.clip(v, -(2.0**40), 2.0**40)).astype(np.int64)


@register(
    "grid_sample",
    family=OPAQUE,
    inputs=2,
    attrs={
        "mode": Attr("str", "linear"),
        "padding_mode": Attr("str", "zeros"),
        "align_corners": Attr("bool", False),
    },
    infer=_grid_sample_infer,
)
def grid_sample(x, grid, *, mode, padding_mode, align_corners):
    """x sampled at the normalised positions of grid (N, D1..Dr, r; innermost coordinate first)"""
    n, c = x.shape[:2]
    dims = x.shape[2:]
    r = len(dims)
    out_shape = (n, c) + grid.shape[1:-1]
    if math.prod(out_shape) == 0:
        return np.zeros(out_shape, x.dtype)
    if math.prod(dims) == 0:
        if padding_mode != "zeros":
            raise ExecutionError(f"grid_sample: cannot pad an empty input {list(x.shape)} with {padding_mode}")
        return np.zeros(out_shape, x.dtype)
    wt = _work_dtype(x.dtype, grid.dtype)
    g = grid.astype(wt).reshape(n, -1, r)
    taps_per_dim = []
    for i, size in enumerate(dims):
        v = _denormalize(g[..., r - 1 - i], size, align_corners)  # grid lists (x, y, z): reversed dims
        if mode == "nearest":
            v = np.rint(v)  # half to even, as PyTorch and onnxruntime
        if mode != "cubic":
            # Cubic taps reach past a clamped coordinate, so PyTorch and onnxruntime pad
            # only its taps (below); moving the coordinate too would change border results.
            v = _pad_coordinates(v, size, padding_mode, align_corners)
        taps = []
        for pos, w in _taps(v, mode):
            idx, valid = _pixel_index(pos, size, padding_mode, align_corners, wt)
            taps.append((idx, valid, w))
        taps_per_dim.append(taps)

    strides = [math.prod(dims[i + 1 :]) for i in range(r)]
    flat_x = x.reshape(n, c, -1)
    acc = None
    for combo in itertools.product(*taps_per_dim):
        flat = sum(idx * s for (idx, _, _), s in zip(combo, strides))
        vals = np.take_along_axis(flat_x, np.broadcast_to(flat[:, None, :], (n, c, flat.shape[1])), axis=2)
        valid = None
        for _, m, _ in combo:
            if m is not None:
                valid = m if valid is None else valid & m
        if mode == "nearest":
            acc = vals if valid is None else np.where(valid[:, None, :], vals, np.zeros((), x.dtype))
            break
        w = math.prod(wk for _, _, wk in combo)
        if valid is not None:
            w = np.where(valid, w, 0)
        term = vals.astype(wt) * w[:, None, :]
        acc = term if acc is None else acc + term
    return np.asarray(acc).astype(x.dtype, copy=False).reshape(out_shape)


# ---------------------------------------------------------------------------
# affine_grid


def _affine_grid_infer(ctx):
    theta = _check_float(ctx, 0, "theta")
    size = ctx.attrs["size"]
    r = len(size) - 2
    if r < 1 or any(s < 0 for s in size):
        raise ctx.error(f"size {list(size)} must be (N, C, d1..dr) with r >= 1 non-negative sizes")
    if theta.rank != 3 or dim_known_ne(theta.shape[1], r) or dim_known_ne(theta.shape[2], r + 1):
        raise ctx.error(f"theta {theta} must have shape (N, {r}, {r + 1}) for a size of rank {r + 2}")
    if dim_known_ne(theta.shape[0], size[0]):
        raise ctx.error(f"theta {theta} and size {list(size)} disagree on the batch size")
    return [theta.with_shape((theta.shape[0],) + tuple(size[2:]) + (r,))]


def _base_coordinates(size: int, align_corners: bool, wt) -> np.ndarray:
    """size evenly spaced positions in [-1, 1]: pixel centres (align_corners) or cell centres."""
    if size == 1:
        # One pixel is both corners with align_corners: PyTorch (whose affine_grid the ONNX
        # op follows) puts it at the centre; onnxruntime (1) and the ONNX reference (-1)
        # disagree with it and with each other.
        return np.zeros(1, wt)
    i = np.arange(size, dtype=np.float64)
    pos = i * 2 / (size - 1) - 1 if align_corners else (2 * i + 1) / size - 1
    return pos.astype(wt)


@register(
    "affine_grid",
    family=OPAQUE,
    inputs=1,
    attrs={"size": Attr("ints"), "align_corners": Attr("bool", False)},
    infer=_affine_grid_infer,
)
def affine_grid(theta, *, size, align_corners):
    """the sampling grid (N, d1..dr, r) of the affine maps theta (N, r, r+1) over a size-(N, C, d1..dr) image"""
    spatial = tuple(size[2:])
    r = len(spatial)
    wt = _acc_dtype(theta.dtype)
    axes = [_base_coordinates(d, align_corners, wt) for d in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")
    # Homogeneous positions with the innermost axis first: (x, y[, z], 1).
    base = np.stack(list(mesh[::-1]) + [np.ones(spatial, wt)], axis=-1).reshape(-1, r + 1)
    grid = base @ np.swapaxes(theta.astype(wt), 1, 2)  # (N, prod(spatial), r)
    return grid.reshape((theta.shape[0],) + spatial + (r,)).astype(theta.dtype, copy=False)


# ---------------------------------------------------------------------------
# col2im


def _col2im_blocks(image_shape, block_shape, dilations, pads, strides) -> list:
    r = len(image_shape)
    return [
        (image_shape[i] + pads[i] + pads[i + r] - dilations[i] * (block_shape[i] - 1) - 1) // strides[i] + 1
        for i in range(r)
    ]


def _col2im_infer(ctx):
    x = ctx.type(0)
    a = ctx.attrs
    image, block = a["image_shape"], a["block_shape"]
    r = len(image)
    if r < 1 or len(block) != r:
        raise ctx.error(f"image_shape {list(image)} and block_shape {list(block)} must have the same length >= 1")
    dilations, strides = _check_len(ctx, "dilations", r), _check_len(ctx, "strides", r)
    pads = _check_len(ctx, "pads", 2 * r)
    if any(v < 1 for v in block + dilations + strides) or any(v < 0 for v in image + pads):
        raise ctx.error(
            f"block_shape {list(block)}, dilations {list(dilations)} and strides {list(strides)} must be "
            f"positive, image_shape {list(image)} and pads {list(pads)} non-negative"
        )
    if x.rank != 3:
        raise ctx.error(f"input must have shape (N, C * prod(block_shape), L), got {x}")
    blocks = _col2im_blocks(image, block, dilations, pads, strides)
    if any(b < 1 for b in blocks):
        raise ctx.error(f"image_shape {list(image)} with pads {list(pads)} is smaller than one dilated block")
    k = math.prod(block)
    if isinstance(x.shape[1], int) and x.shape[1] % k:
        raise ctx.error(f"dim 1 of input {x} is not a multiple of prod(block_shape) = {k}")
    if dim_known_ne(x.shape[2], math.prod(blocks)):
        raise ctx.error(f"dim 2 of input {x} should be the number of blocks, {' * '.join(map(str, blocks))}")
    return [x.with_shape((x.shape[0], floordiv(x.shape[1], k)) + tuple(image))]


@register(
    "col2im",
    family=OPAQUE,
    inputs=1,
    attrs={
        "image_shape": Attr("ints"),
        "block_shape": Attr("ints"),
        "dilations": Attr("ints"),
        "pads": Attr("ints"),
        "strides": Attr("ints"),
    },
    infer=_col2im_infer,
)
def col2im(x, *, image_shape, block_shape, dilations, pads, strides):
    """sums column blocks (N, C * prod(block), L) back into images (N, C, *image_shape) (PyTorch's fold)"""
    r = len(image_shape)
    n, k = x.shape[0], math.prod(block_shape)
    c = x.shape[1] // k
    blocks = _col2im_blocks(image_shape, block_shape, dilations, pads, strides)
    acc = _acc_dtype(x.dtype)
    cols = x.reshape((n, c) + tuple(block_shape) + tuple(blocks)).astype(acc, copy=False)
    padded = np.zeros((n, c) + tuple(image_shape[i] + pads[i] + pads[i + r] for i in range(r)), acc)
    for offset in np.ndindex(*block_shape):
        # Block b of kernel position k lands at b * stride + k * dilation (padded coordinates).
        window = tuple(
            slice(o * dilations[i], o * dilations[i] + strides[i] * (blocks[i] - 1) + 1, strides[i])
            for i, o in enumerate(offset)
        )
        padded[(slice(None), slice(None)) + window] += cols[(slice(None), slice(None)) + offset]
    crop = tuple(slice(pads[i], pads[i] + image_shape[i]) for i in range(r))
    return padded[(slice(None), slice(None)) + crop].astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# center_crop_pad


def _center_crop_pad_infer(ctx):
    x = ctx.type(0)
    shape, axes = ctx.attrs["shape"], ctx.attrs["axes"]
    if len(shape) != len(axes):
        raise ctx.error(f"shape {list(shape)} and axes {list(axes)} must have the same length")
    if any(not 0 <= a < x.rank for a in axes) or len(set(axes)) != len(axes):
        raise ctx.error(f"axes {list(axes)} must be distinct axes of {x} (the converter normalises them)")
    if any(s < 0 for s in shape):
        raise ctx.error(f"shape {list(shape)} has a negative size")
    out = list(x.shape)
    for a, s in zip(axes, shape):
        out[a] = s
    return [x.with_shape(out)]


@register(
    "center_crop_pad",
    family=OPAQUE,
    inputs=1,
    attrs={"shape": Attr("ints"), "axes": Attr("ints")},
    infer=_center_crop_pad_infer,
)
def center_crop_pad(x, *, shape, axes):
    """x centre-cropped or zero-padded to `shape` along `axes` (odd leftovers go to the end)"""
    out_shape = list(x.shape)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    for a, s in zip(axes, shape):
        d = x.shape[a]
        out_shape[a] = s
        if s < d:
            start = (d - s) // 2
            src[a] = slice(start, start + s)
        elif s > d:
            start = (s - d) // 2
            dst[a] = slice(start, start + d)
    out = np.zeros(out_shape, x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# ---------------------------------------------------------------------------
# max_unpool


def _unpooled_dims(dims, kernel_shape, strides, pads) -> tuple:
    """The spatial dims MaxPool read to produce `dims` (int or symbolic)."""
    r = len(kernel_shape)
    return tuple((d - 1) * strides[i] - (pads[i] + pads[i + r]) + kernel_shape[i] for i, d in enumerate(dims))


def _max_unpool_infer(ctx):
    x = _check_float(ctx, 0, "input")
    idx = ctx.type(1)
    a = ctx.attrs
    r = x.rank - 2
    if r < 1:
        raise ctx.error(f"input must have shape (N, C, d1..dr), got {x}")
    if idx.dtype != DType.i64 or idx.rank != x.rank or any(dim_known_ne(p, q) for p, q in zip(idx.shape, x.shape)):
        raise ctx.error(f"indices {idx} must be i64 with the shape of the input {x}")
    kernel = _check_len(ctx, "kernel_shape", r)
    strides = _check_len(ctx, "strides", r)
    pads = _check_len(ctx, "pads", 2 * r)
    if any(v < 1 for v in kernel + strides) or any(p < 0 for p in pads):
        raise ctx.error(f"kernel_shape {list(kernel)} and strides {list(strides)} must be positive, pads non-negative")
    out_shape = a["output_shape"]
    if out_shape:
        if len(out_shape) != x.rank or any(d < 0 for d in out_shape):
            raise ctx.error(f"output_shape {list(out_shape)} must be {x.rank} non-negative sizes")
        return [x.with_shape(out_shape)]
    spatial = _unpooled_dims(x.shape[2:], kernel, strides, pads)
    for d in spatial:
        if isinstance(d, int) and d < 0:
            raise ctx.error(f"kernel_shape {list(kernel)}, strides and pads give a negative output size for {x}")
    return [x.with_shape(x.shape[:2] + spatial)]


@register(
    "max_unpool",
    family=OPAQUE,
    inputs=2,
    attrs={
        "kernel_shape": Attr("ints"),
        "strides": Attr("ints"),
        "pads": Attr("ints"),
        "output_shape": Attr("ints", ()),
    },
    infer=_max_unpool_infer,
)
def max_unpool(x, indices, *, kernel_shape, strides, pads, output_shape):
    """zeros of output_shape (or the shape MaxPool came from) with x scattered to the flat `indices`"""
    if output_shape:
        shape = tuple(output_shape)
    else:
        shape = tuple(x.shape[:2]) + _unpooled_dims(x.shape[2:], kernel_shape, strides, pads)
    total = math.prod(shape)
    flat_i = indices.reshape(-1)
    if flat_i.size and (flat_i.min() < 0 or flat_i.max() >= total):
        raise ExecutionError(f"max_unpool: an index is outside the output of {total} elements {list(shape)}")
    # Indices address the whole output flattened (batch and channel included), as MaxPool's
    # do; with an explicit output_shape that is its layout (onnxruntime, PyTorch).
    out = np.zeros(total, x.dtype)
    out[flat_i] = x.reshape(-1)
    return out.reshape(shape)


# ---------------------------------------------------------------------------
# roi_align

ROI_ALIGN_MODES = ("avg", "max")
ROI_COORD_MODES = ("half_pixel", "output_half_pixel")


def _roi_align_infer(ctx):
    x = _check_float(ctx, 0, "input")
    rois, batch = ctx.type(1), ctx.type(2)
    a = ctx.attrs
    _check_choice(ctx, "mode", ROI_ALIGN_MODES)
    _check_choice(ctx, "coordinate_transformation_mode", ROI_COORD_MODES)
    if x.rank != 4:
        raise ctx.error(f"input must have shape (N, C, H, W), got {x}")
    if rois.dtype != x.dtype or rois.rank != 2 or dim_known_ne(rois.shape[1], 4):
        raise ctx.error(f"rois {rois} must be ({x.dtype}) boxes of shape (num_rois, 4)")
    if batch.dtype != DType.i64 or batch.rank != 1 or dim_known_ne(batch.shape[0], rois.shape[0]):
        raise ctx.error(f"batch_indices {batch} must be an i64 vector of one index per roi ({rois})")
    if a["output_height"] < 1 or a["output_width"] < 1 or a["sampling_ratio"] < 0:
        raise ctx.error("output_height and output_width must be positive, sampling_ratio non-negative")
    return [x.with_shape((rois.shape[0], x.shape[1], a["output_height"], a["output_width"]))]


def _roi_axis(start, bin_size, pooled: int, grid: int, size: int, wt) -> tuple:
    """Bilinear taps along one axis for the (pooled, grid) sample positions of one roi:
    (low index, high index, low weight, high weight), weights 0 outside the feature map."""
    p = np.arange(pooled, dtype=wt)[:, None]
    g = np.arange(grid, dtype=wt)[None, :]
    pos = start + p * bin_size + (g + wt.type(0.5)) * bin_size / grid
    valid = (pos >= -1) & (pos <= size)
    pos = np.maximum(pos, 0)
    low = np.trunc(pos).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, size - 1, low + 1)
    pos = np.where(edge, low.astype(wt), pos)
    frac = pos - low
    zero = np.zeros((), wt)
    return low, high, np.where(valid, 1 - frac, zero), np.where(valid, frac, zero)


@register(
    "roi_align",
    family=OPAQUE,
    inputs=3,
    attrs={
        "mode": Attr("str", "avg"),
        "output_height": Attr("int", 1),
        "output_width": Attr("int", 1),
        "sampling_ratio": Attr("int", 0),
        "spatial_scale": Attr("float", 1.0),
        "coordinate_transformation_mode": Attr("str", "half_pixel"),
    },
    infer=_roi_align_infer,
)
def roi_align(
    x,
    rois,
    batch_indices,
    *,
    mode,
    output_height,
    output_width,
    sampling_ratio,
    spatial_scale,
    coordinate_transformation_mode,
):
    """bilinear-sampled average (or max) pooling of x over each roi (x1, y1, x2, y2) into an output_height x output_width grid"""
    n, c, h, w = x.shape
    oh, ow = output_height, output_width
    wt = _acc_dtype(x.dtype)
    out = np.zeros((rois.shape[0], c, oh, ow), wt)
    half_pixel = coordinate_transformation_mode == "half_pixel"
    offset = wt.type(0.5 if half_pixel else 0.0)
    boxes = rois.astype(wt) * wt.type(spatial_scale) - offset
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        b = int(batch_indices[i])
        if not 0 <= b < n:
            raise ExecutionError(f"roi_align: batch index {b} of roi {i} is out of range for {n} images")
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:  # the legacy mode forces malformed rois to 1 x 1
            roi_w, roi_h = max(roi_w, wt.type(1)), max(roi_h, wt.type(1))
        bin_h, bin_w = roi_h / oh, roi_w / ow
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / oh))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / ow))
        if gh <= 0 or gw <= 0 or h == 0 or w == 0:
            continue  # no sample point: the output stays 0, as in onnxruntime
        ylo, yhi, wylo, wyhi = _roi_axis(y1, bin_h, oh, gh, h, wt)
        xlo, xhi, wxlo, wxhi = _roi_axis(x1, bin_w, ow, gw, w, wt)
        img = x[b].astype(wt, copy=False)
        if mode == "avg":
            # The bilinear weights factor per axis: out = My @ img @ Mx^T / count.
            my = np.zeros((oh, h), wt)
            rows = np.broadcast_to(np.arange(oh)[:, None], ylo.shape)
            np.add.at(my, (rows, ylo), wylo)
            np.add.at(my, (rows, yhi), wyhi)
            mx = np.zeros((ow, w), wt)
            rows = np.broadcast_to(np.arange(ow)[:, None], xlo.shape)
            np.add.at(mx, (rows, xlo), wxlo)
            np.add.at(mx, (rows, xhi), wxhi)
            out[i] = (my @ img @ mx.T) / wt.type(gh * gw)
            continue
        # max: the largest weighted corner of each sample (onnxruntime's definition), then
        # the largest sample of each bin. One row of samples at a time bounds the memory.
        best = None
        for iy in range(gh):
            corners = []
            for yi, wy in ((ylo[:, iy], wylo[:, iy]), (yhi[:, iy], wyhi[:, iy])):
                for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
                    vals = img[:, yi[:, None, None], xi[None, :, :]]  # (C, oh, ow, gw)
                    corners.append(vals * (wy[:, None, None] * wx[None, :, :]))
            m = np.max(np.stack(corners), axis=(0, 4))
            best = m if best is None else np.maximum(best, m)
        out[i] = best
    return out.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------
# non_max_suppression


def _nms_infer(ctx):
    boxes, scores = ctx.type(0), ctx.type(1)
    if boxes.dtype != DType.f32 or scores.dtype != DType.f32:
        raise ctx.error(f"boxes and scores must be f32, got {boxes} and {scores}")
    if boxes.rank != 3 or dim_known_ne(boxes.shape[2], 4):
        raise ctx.error(f"boxes must have shape (batches, boxes, 4), got {boxes}")
    if (
        scores.rank != 3
        or dim_known_ne(scores.shape[0], boxes.shape[0])
        or dim_known_ne(scores.shape[2], boxes.shape[1])
    ):
        raise ctx.error(f"scores {scores} must have shape (batches, classes, boxes) for boxes {boxes}")
    for i, (what, dt) in enumerate(
        (("max_output_boxes_per_class", DType.i64), ("iou_threshold", DType.f32), ("score_threshold", DType.f32)), 2
    ):
        if ctx.has(i):
            t = ctx.type(i)
            if t.dtype != dt or t.rank > 1 or dim_known_ne(prod(t.shape), 1):
                raise ctx.error(f"{what} must be one {dt} value, got {t}")
    return [TensorType((ctx.fresh_dim("selected"), 3), DType.i64)]


def _box_bounds(boxes: np.ndarray, center_point_box: bool) -> tuple:
    """(x_min, y_min, x_max, y_max) of boxes in either ONNX format (corners may come flipped)."""
    if center_point_box:
        xc, yc, bw, bh = boxes.T
        return xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2
    y1, x1, y2, x2 = boxes.T
    return np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)


def _first_value(arr, default, dtype):
    if arr is None or arr.size == 0:
        return default
    return dtype(arr.reshape(-1)[0])


@register(
    "non_max_suppression",
    family=OPAQUE,
    inputs=(2, 5),
    attrs={"center_point_box": Attr("bool", False)},
    infer=_nms_infer,
)
def non_max_suppression(
    boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None, *, center_point_box
):
    """greedy per-class NMS: (batch, class, box) triples of the kept boxes, best score first"""
    max_keep = max(_first_value(max_output_boxes_per_class, 0, int), 0)
    iou_t = _first_value(iou_threshold, np.float32(0), np.float32)
    score_t = _first_value(score_threshold, None, np.float32)
    selected: list[tuple[int, int, int]] = []
    if max_keep > 0:
        for b in range(boxes.shape[0]):
            x0, y0, x1, y1 = _box_bounds(boxes[b], center_point_box)
            area = (x1 - x0) * (y1 - y0)
            for c in range(scores.shape[1]):
                s = scores[b, c]
                cand = np.arange(s.shape[0]) if score_t is None else np.flatnonzero(s > score_t)
                # Best score first; equal scores keep the lower box index first.
                order = cand[np.argsort(-s[cand], kind="stable")]
                suppressed = np.zeros(order.shape[0], dtype=bool)
                kept = 0
                for j, k in enumerate(order):
                    if suppressed[j]:
                        continue
                    selected.append((b, c, int(k)))
                    kept += 1
                    if kept >= max_keep:
                        break
                    rest = order[j + 1 :]
                    iw = np.minimum(x1[k], x1[rest]) - np.maximum(x0[k], x0[rest])
                    ih = np.minimum(y1[k], y1[rest]) - np.maximum(y0[k], y0[rest])
                    inter = iw * ih
                    union = area[k] + area[rest] - inter
                    overlaps = (iw > 0) & (ih > 0) & (inter > 0) & (area[k] > 0) & (area[rest] > 0) & (union > 0)
                    with np.errstate(all="ignore"):
                        iou = inter / union
                    # Suppressed only when strictly above the threshold.
                    suppressed[j + 1 :] |= overlaps & (iou > iou_t)
    return np.asarray(selected, dtype=np.int64).reshape(-1, 3)


# ---------------------------------------------------------------------------
# unique


def _unique_groups(x: np.ndarray, axis: int) -> tuple:
    """(first occurrence, inverse, counts) of the distinct slices of x along axis, in
    ascending (lexicographic) order; NaNs count as equal, as in numpy.unique."""
    a = np.moveaxis(x, axis, 0)
    m = a.shape[0]
    rows = a.reshape(m, math.prod(a.shape[1:]))
    if rows.dtype in _LOW_PRECISION:
        rows = rows.astype(np.float32)  # exact, and sortable
    if rows.shape[1] == 0:
        order = np.arange(m)
        change = np.zeros(max(m - 1, 0), dtype=bool)  # empty slices are all equal
    else:
        # lexsort is stable, so each run of equal slices starts at its first occurrence.
        order = np.lexsort(rows.T[::-1])
        s = rows[order]
        differ = s[1:] != s[:-1]
        if s.dtype.kind in "fc":
            differ &= ~(np.isnan(s[1:]) & np.isnan(s[:-1]))
        change = differ.any(axis=1)
    starts = np.flatnonzero(np.concatenate(([True], change))) if m else np.zeros(0, np.int64)
    group = np.cumsum(np.concatenate(([True], change))) - 1 if m else np.zeros(0, np.int64)
    inverse = np.empty(m, np.int64)
    inverse[order] = group
    counts = np.diff(np.append(starts, m))
    return order[starts].astype(np.int64), inverse, counts.astype(np.int64)


def _unique_infer(ctx):
    x = ctx.type(0)
    axis = ctx.attrs["axis"]
    if not 0 <= axis < x.rank:
        raise ctx.error(f"axis {axis} is out of range for {x} (the converter normalises axes)")
    const = ctx.const(0)
    u = len(_unique_groups(const, axis)[0]) if const is not None else ctx.fresh_dim("unique")
    i64 = DType.i64
    y = x.with_shape(x.shape[:axis] + (u,) + x.shape[axis + 1 :])
    return [y, TensorType((u,), i64), TensorType((x.shape[axis],), i64), TensorType((u,), i64)]


@register(
    "unique",
    family=OPAQUE,
    inputs=1,
    attrs={"axis": Attr("int"), "sorted": Attr("bool", True)},
    outputs=4,
    infer=_unique_infer,
)
def unique(x, *, axis, sorted):
    """the distinct slices of x along axis (sorted, or in order of first occurrence), their first
    indices, the inverse map and the counts"""
    first, inverse, counts = _unique_groups(x, axis)
    if not sorted:
        perm = np.argsort(first, kind="stable")
        rank = np.empty_like(perm)
        rank[perm] = np.arange(perm.shape[0])
        first, counts, inverse = first[perm], counts[perm], rank[inverse].astype(np.int64)
    y = np.take(x, first, axis=axis)
    return y, first, inverse, counts


# ---------------------------------------------------------------------------
# det


def _det_infer(ctx):
    x = _check_float(ctx, 0, "input")
    if x.rank < 2 or dim_known_ne(x.shape[-1], x.shape[-2]):
        raise ctx.error(f"input must be a (batch of) square matrices (..., M, M), got {x}")
    return [x.with_shape(x.shape[:-2])]


@register("det", family=OPAQUE, inputs=1, infer=_det_infer)
def det(x):
    """the determinant of each square matrix in the last two dims"""
    return np.asarray(np.linalg.det(x.astype(_acc_dtype(x.dtype), copy=False))).astype(x.dtype, copy=False)


__all__ = [
    "GRID_SAMPLE_MODES",
    "PADDING_MODES",
    "ROI_ALIGN_MODES",
    "ROI_COORD_MODES",
    "SAMPLING_FLOATS",
]
