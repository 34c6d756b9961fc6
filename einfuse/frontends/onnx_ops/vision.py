"""Converters for ONNX vision and detection ops (see einfuse/ir/ops/vision.py).

Static operands (AffineGrid's size, Col2Im's image and block shapes, CenterCropPad's
shape, MaxUnpool's output_shape) are read with `ctx.const_input` and become attributes;
defaults are filled and axes normalised. Opset differences folded away here:
GridSample's opset-16 mode names (bilinear, bicubic) become linear and cubic; RoiAlign
before opset 16 has no coordinate_transformation_mode and behaves as output_half_pixel;
Unique without an axis is Unique of the flattened input along axis 0.
"""

from __future__ import annotations

import numpy as np

from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.vision import GRID_SAMPLE_MODES, PADDING_MODES, ROI_ALIGN_MODES, ROI_COORD_MODES

# GridSample's opset-16 mode names -> the opset-20 ones.
_GRID_MODE_ALIASES = {"bilinear": "linear", "bicubic": "cubic"}


def _ints(arr) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(arr).reshape(-1))


def _choice(ctx, node, name: str, default: str, allowed: tuple, aliases: dict | None = None) -> str:
    v = ctx.attr(node, name, default)
    v = (aliases or {}).get(v, v)
    if v not in allowed:
        raise ctx.unsupported(node, f"{name} {v!r} (expected one of {', '.join(allowed)})")
    return v


def _shape_operand(ctx, node, i: int, what: str) -> tuple[int, ...]:
    arr = ctx.const_input(node, i)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise ctx.error(node, f"{what} must be a vector of integers, got {arr.dtype}{list(arr.shape)}")
    return _ints(arr)


def _spatial_rank(ctx, node, x, what: str = "input") -> int:
    r = x.type.rank - 2
    if r < 1:
        raise ctx.error(node, f"{what} must have shape (N, C, d1..dr), got {x.type}")
    return r


def _ints_attr(ctx, node, name: str, n: int, fill: int) -> tuple:
    v = ctx.attr(node, name)
    if v is None:
        return (fill,) * n
    if len(v) != n:
        raise ctx.error(node, f"attribute {name} {list(v)} should have {n} values")
    return tuple(int(a) for a in v)


@converter("GridSample")
def grid_sample(ctx, node):
    mode = _choice(
        ctx, node, "mode", "linear" if ctx.opset >= 20 else "bilinear", GRID_SAMPLE_MODES, _GRID_MODE_ALIASES
    )
    return [
        ctx.op(
            "grid_sample",
            [ctx.input(node, 0), ctx.input(node, 1)],
            mode=mode,
            padding_mode=_choice(ctx, node, "padding_mode", "zeros", PADDING_MODES),
            align_corners=bool(ctx.attr(node, "align_corners", 0)),
        )
    ]


@converter("AffineGrid")
def affine_grid(ctx, node):
    size = _shape_operand(ctx, node, 1, "size")
    return [
        ctx.op("affine_grid", [ctx.input(node, 0)], size=size, align_corners=bool(ctx.attr(node, "align_corners", 0)))
    ]


@converter("Col2Im")
def col2im(ctx, node):
    image = _shape_operand(ctx, node, 1, "image_shape")
    block = _shape_operand(ctx, node, 2, "block_shape")
    r = len(image)
    return [
        ctx.op(
            "col2im",
            [ctx.input(node, 0)],
            image_shape=image,
            block_shape=block,
            dilations=_ints_attr(ctx, node, "dilations", r, 1),
            pads=_ints_attr(ctx, node, "pads", 2 * r, 0),
            strides=_ints_attr(ctx, node, "strides", r, 1),
        )
    ]


@converter("CenterCropPad")
def center_crop_pad(ctx, node):
    x = ctx.input(node, 0)
    shape = _shape_operand(ctx, node, 1, "shape")
    rank = x.type.rank
    axes = ctx.attr(node, "axes")
    axes = tuple(range(rank)) if axes is None else axes
    if any(not -rank <= a < rank for a in axes):
        raise ctx.error(node, f"axes {list(axes)} are out of range for rank {rank}")
    axes = tuple(a + rank if a < 0 else a for a in axes)
    if len(shape) != len(axes):
        raise ctx.error(node, f"shape {list(shape)} should have one size per axis {list(axes)}")
    return [ctx.op("center_crop_pad", [x], shape=shape, axes=axes)]


@converter("MaxUnpool")
def max_unpool(ctx, node):
    x = ctx.input(node, 0)
    r = _spatial_rank(ctx, node, x)
    kernel = ctx.attr(node, "kernel_shape")
    if kernel is None:
        raise ctx.error(node, "MaxUnpool needs kernel_shape")
    output_shape = _shape_operand(ctx, node, 2, "output_shape") if ctx.has_input(node, 2) else ()
    return [
        ctx.op(
            "max_unpool",
            [x, ctx.input(node, 1)],
            kernel_shape=tuple(int(k) for k in kernel),
            strides=_ints_attr(ctx, node, "strides", r, 1),
            pads=_ints_attr(ctx, node, "pads", 2 * r, 0),
            output_shape=output_shape,
        )
    ]


@converter("RoiAlign")
def roi_align(ctx, node):
    # Before opset 16 RoiAlign did not shift by half a pixel (the output_half_pixel mode).
    coord_default = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"
    coord = _choice(ctx, node, "coordinate_transformation_mode", coord_default, ROI_COORD_MODES)
    if ctx.opset < 16 and ctx.has_attr(node, "coordinate_transformation_mode"):
        raise ctx.error(node, "coordinate_transformation_mode exists from opset 16 on")
    return [
        ctx.op(
            "roi_align",
            [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)],
            mode=_choice(ctx, node, "mode", "avg", ROI_ALIGN_MODES),
            output_height=int(ctx.attr(node, "output_height", 1)),
            output_width=int(ctx.attr(node, "output_width", 1)),
            sampling_ratio=int(ctx.attr(node, "sampling_ratio", 0)),
            spatial_scale=float(ctx.attr(node, "spatial_scale", 1.0)),
            coordinate_transformation_mode=coord,
        )
    ]


@converter("NonMaxSuppression")
def non_max_suppression(ctx, node):
    operands = [ctx.input(node, i) for i in range(5)]
    return [ctx.op("non_max_suppression", operands, center_point_box=bool(ctx.attr(node, "center_point_box", 0)))]


@converter("Unique")
def unique(ctx, node):
    x = ctx.input(node, 0)
    axis = ctx.attr(node, "axis")
    if axis is None:
        x = ctx.op("reshape", [x], shape=(-1,))
        axis = 0
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise ctx.error(node, f"axis={axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return list(ctx.op("unique", [x], axis=axis, sorted=bool(ctx.attr(node, "sorted", 1))))


@converter("Det")
def det(ctx, node):
    return [ctx.op("det", [ctx.input(node, 0)])]
