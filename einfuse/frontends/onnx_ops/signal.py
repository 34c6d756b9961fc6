"""Converters for the ONNX signal ops (see einfuse/ir/ops/signal.py): DFT, STFT,
HannWindow, HammingWindow, BlackmanWindow and MelWeightMatrix.

Scalar operands that fix shapes (dft_length, DFT's axis from opset 20, STFT's frame_step
and frame_length, window sizes, the mel parameters) must be constants and become
attributes. DFT before opset 20 takes `axis` as an attribute (default 1), from opset 20
as an operand (default -2); both are normalised to a non-negative axis.
"""

from __future__ import annotations

import numpy as np

from einfuse.frontends.onnx import ONNX_TO_DTYPE
from einfuse.frontends.onnx_ops import converter
from einfuse.ir.ops.signal import GENERATOR_DTYPES, dft_default_length


def _scalar(ctx, node, i: int, what: str, *, default=None, kind=int):
    """Constant scalar operand i (a one-element tensor is accepted too)."""
    arr = ctx.const_input(node, i)
    if arr is None:
        return default
    if arr.size != 1:
        raise ctx.error(node, f"{what} must be a scalar, got shape {list(arr.shape)}")
    value = arr.reshape(-1)[0]
    if kind is int and np.asarray(value).dtype.kind not in "iu":
        raise ctx.error(node, f"{what} must be an integer, got {arr.dtype}")
    return kind(value)


def _output_dtype(ctx, node):
    code = ctx.attr(node, "output_datatype", 1)  # 1 = FLOAT
    dt = ONNX_TO_DTYPE.get(code)
    if dt is None or dt not in GENERATOR_DTYPES:
        raise ctx.unsupported(node, f"output_datatype={code}")
    return dt


@converter("DFT")
def dft(ctx, node):
    x = ctx.input(node, 0)
    rank = x.rank
    if ctx.opset >= 20:
        axis = _scalar(ctx, node, 2, "axis", default=-2)
    else:
        axis = ctx.attr(node, "axis", 1)
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise ctx.error(node, f"axis={axis} must be a signal axis of {x.type}, in [-{rank}, -2] or [0, {rank - 2}]")
    axis = axis + rank if axis < 0 else axis
    inverse, onesided = bool(ctx.attr(node, "inverse", 0)), bool(ctx.attr(node, "onesided", 0))
    length = _scalar(ctx, node, 1, "dft_length")
    if length is not None and length < 1:
        raise ctx.error(node, f"dft_length={length} must be positive")
    if length is None:
        # Written out whenever the axis size is static; 0 ("the default") only for a symbolic one.
        default = dft_default_length(x.shape[axis], inverse, onesided)
        length = default if isinstance(default, int) else 0
    return [ctx.op("dft", [x], axis=axis, inverse=inverse, onesided=onesided, dft_length=length)]


@converter("STFT")
def stft(ctx, node):
    signal, window = ctx.input(node, 0), ctx.input(node, 2)
    step = _scalar(ctx, node, 1, "frame_step")
    length = _scalar(ctx, node, 3, "frame_length")
    if length is None:
        # The window's length, else the whole signal: either must be static.
        source = window if window is not None else signal
        axis = 0 if window is not None else 1
        if source.rank <= axis or not isinstance(source.shape[axis], int):
            raise ctx.unsupported(node, f"frame_length is not given and cannot be read from {source.type}")
        length = source.shape[axis]
    onesided = bool(ctx.attr(node, "onesided", 1))
    return [ctx.op("stft", [signal, window], frame_step=step, frame_length=length, onesided=onesided)]


def _window(op: str):
    def convert(ctx, node):
        size = _scalar(ctx, node, 0, "size")
        if size < 0:
            raise ctx.error(node, f"size={size} must not be negative")
        return [ctx.op(op, [], size=size, periodic=bool(ctx.attr(node, "periodic", 1)), dtype=_output_dtype(ctx, node))]

    return convert


converter("HannWindow")(_window("hann_window"))
converter("HammingWindow")(_window("hamming_window"))
converter("BlackmanWindow")(_window("blackman_window"))


@converter("MelWeightMatrix")
def mel_weight_matrix(ctx, node):
    return [
        ctx.op(
            "mel_weight_matrix",
            [],
            num_mel_bins=_scalar(ctx, node, 0, "num_mel_bins"),
            dft_length=_scalar(ctx, node, 1, "dft_length"),
            sample_rate=_scalar(ctx, node, 2, "sample_rate"),
            lower_edge_hertz=_scalar(ctx, node, 3, "lower_edge_hertz", kind=float),
            upper_edge_hertz=_scalar(ctx, node, 4, "upper_edge_hertz", kind=float),
            dtype=_output_dtype(ctx, node),
        )
    ]
