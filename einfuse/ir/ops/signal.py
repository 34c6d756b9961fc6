"""Signal-processing ops: the discrete Fourier transform (dft), the short-time Fourier
transform (stft), the Hann/Hamming/Blackman windows and the mel filter bank
(mel_weight_matrix).

Complex tensors are real tensors with a trailing axis of 2 (real, imaginary), as in ONNX;
a real signal has a trailing axis of 1. Semantics are those of the newest ONNX opset:

- dft: forward or inverse (1/n-normalised) DFT along `axis` of `dft_length` points (the
  signal is truncated or zero-padded). `onesided` forward is the RFFT (real input, the
  floor(n/2)+1 non-redundant bins); `onesided` inverse is the IRFFT (one-sided complex
  input, real output of n points, numpy's `irfft`).
- stft: frames of `frame_length` samples every `frame_step` samples, times the window,
  DFT of each frame.

The window and mel generators take their parameters as attributes and have no operands:
the ONNX converter folds them into constants. Transforms compute in f32 (f64 for f64
inputs) like onnxruntime; 16-bit inputs are rounded back.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from einfuse.errors import ExecutionError
from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.types import DType, TensorType, dim_known_ne, floordiv, simplify_dim

# Element types of signals and windows (ONNX T1 of DFT/STFT); float8 has no use here.
SIGNAL_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})
# Element types a window or mel matrix may be generated in (ONNX T2/T3).
GENERATOR_DTYPES = SIGNAL_DTYPES | frozenset(
    {DType.i8, DType.i16, DType.i32, DType.i64, DType.u8, DType.u16, DType.u32, DType.u64}
)


def _work_dtype(dt: np.dtype) -> tuple[type, type]:
    """(real, complex) numpy types a transform of `dt` computes in."""
    if np.dtype(dt) == np.float64:
        return np.float64, np.complex128
    return np.float32, np.complex64


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] (real) or [..., 2] (real, imag) -> complex array without the trailing axis."""
    real, cplx = _work_dtype(x.dtype)
    if x.shape[-1] == 1:
        return x[..., 0].astype(cplx)
    return (x[..., 0].astype(real) + 1j * x[..., 1].astype(real)).astype(cplx)


def _from_complex(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """complex array -> [..., 2] real array of `dtype`."""
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _check_signal(ctx, i: int, what: str) -> TensorType:
    t = ctx.type(i)
    if t.dtype not in SIGNAL_DTYPES:
        raise ctx.error(f"{what} must be f64/f32/f16/bf16, got {t}")
    if t.rank < 2:
        raise ctx.error(f"{what} {t} needs a signal axis and a trailing real/complex axis of 1 or 2")
    last = t.shape[-1]
    if not isinstance(last, int) or last not in (1, 2):
        raise ctx.error(f"{what} {t} must end in an axis of 1 (real) or 2 (complex)")
    return t


# ---------------------------------------------------------------------------
# dft


def dft_default_length(size, inverse: bool, onesided: bool):
    """ONNX's dft_length when none is given: the axis size, or 2*(size-1) for the IRFFT."""
    if inverse and onesided:
        return simplify_dim(2 * (size - 1))
    return size


def _infer_dft(ctx):
    x = _check_signal(ctx, 0, "input")
    a = ctx.attrs
    axis, inverse, onesided, n = a["axis"], a["inverse"], a["onesided"], a["dft_length"]
    if not 0 <= axis <= x.rank - 2:
        raise ctx.error(f"axis={axis} must be a signal axis of {x}, in [0, {x.rank - 2}] (the converter normalises it)")
    complex_in = x.shape[-1] == 2
    if onesided and not inverse and complex_in:
        raise ctx.error(f"a one-sided forward DFT (RFFT) needs a real input (last axis 1), got {x}")
    if onesided and inverse and not complex_in:
        raise ctx.error(f"a one-sided inverse DFT (IRFFT) needs a complex input (last axis 2), got {x}")
    if n < 0:
        raise ctx.error(f"dft_length={n} must be positive")
    if n == 0:  # the default: only written when the axis size is symbolic
        n = dft_default_length(x.shape[axis], inverse, onesided)
    if isinstance(n, int) and n < 1:
        raise ctx.error(f"the DFT length is {n}: the signal axis of {x} is too short")
    shape = list(x.shape)
    if onesided and inverse:
        shape[axis], shape[-1] = n, 1
    elif onesided:
        shape[axis], shape[-1] = simplify_dim(floordiv(n, 2) + 1), 2
    else:
        shape[axis], shape[-1] = n, 2
    return [TensorType(tuple(shape), x.dtype)]


@register(
    "dft",
    family=OPAQUE,
    inputs=1,
    attrs={
        "axis": Attr("int"),
        "inverse": Attr("bool", False),
        "onesided": Attr("bool", False),
        "dft_length": Attr("int", 0),
    },
    infer=_infer_dft,
)
def dft(x, *, axis, inverse, onesided, dft_length):
    """DFT of `dft_length` points along `axis` (0: the axis size); one-sided = RFFT / IRFFT."""
    n = dft_length or dft_default_length(x.shape[axis], inverse, onesided)
    if n < 1:  # a symbolic axis that turned out too short for the default length
        raise ExecutionError(f"dft: the default DFT length of an axis of {x.shape[axis]} is {n}")
    real, _ = _work_dtype(x.dtype)
    if onesided and not inverse:  # RFFT: the input is real (checked by inference)
        y = np.fft.rfft(x[..., 0].astype(real), n=n, axis=axis)
    elif onesided:  # IRFFT: numpy's irfft reads the first n//2 + 1 bins as a Hermitian spectrum
        y = np.fft.irfft(_to_complex(x), n=n, axis=axis).astype(real)
        return y[..., np.newaxis].astype(x.dtype)
    elif inverse:
        y = np.fft.ifft(_to_complex(x), n=n, axis=axis)
    else:
        y = np.fft.fft(_to_complex(x), n=n, axis=axis)
    return _from_complex(y, x.dtype)


# ---------------------------------------------------------------------------
# stft


def _infer_stft(ctx):
    x = _check_signal(ctx, 0, "signal")
    a = ctx.attrs
    step, length, onesided = a["frame_step"], a["frame_length"], a["onesided"]
    if x.rank != 3:
        raise ctx.error(f"signal {x} must be [batch, length, 1 or 2]")
    if step < 1 or length < 1:
        raise ctx.error(f"frame_step={step} and frame_length={length} must be positive")
    if onesided and x.shape[-1] == 2:
        raise ctx.error(f"a one-sided STFT needs a real signal (last axis 1), got {x}")
    if ctx.has(1):
        w = ctx.type(1)
        if w.dtype != x.dtype:
            raise ctx.error(f"window {w} must have the signal's dtype {x.dtype}")
        if w.rank != 1 or dim_known_ne(w.shape[0], length):
            raise ctx.error(f"window {w} must be 1-D of frame_length={length} elements")
    frames = simplify_dim(floordiv(simplify_dim(x.shape[1] - length), step) + 1)
    if isinstance(frames, int) and frames < 1:
        raise ctx.error(f"signal {x} is shorter than frame_length={length}")
    bins = length // 2 + 1 if onesided else length
    return [TensorType((x.shape[0], frames, bins, 2), x.dtype)]


@register(
    "stft",
    family=OPAQUE,
    inputs=(1, 2),
    attrs={"frame_step": Attr("int"), "frame_length": Attr("int"), "onesided": Attr("bool", True)},
    infer=_infer_stft,
)
def stft(signal, window=None, *, frame_step, frame_length, onesided):
    """DFT of each window-weighted frame: output [batch, frames, bins, 2]."""
    if signal.shape[1] < frame_length:  # only possible when the length was symbolic
        raise ExecutionError(f"stft: a signal of {signal.shape[1]} samples is shorter than frame_length={frame_length}")
    real, _ = _work_dtype(signal.dtype)
    # [B, L] real or complex samples; the frames are a strided view of them: [B, F, frame_length].
    z = signal[..., 0].astype(real) if signal.shape[-1] == 1 else _to_complex(signal)
    frames = sliding_window_view(z, frame_length, axis=1)[:, ::frame_step]
    if window is not None:
        frames = frames * window.astype(real)
    fft = np.fft.rfft if onesided else np.fft.fft  # onesided: real signals only (checked)
    return _from_complex(fft(frames, n=frame_length, axis=-1), signal.dtype)


# ---------------------------------------------------------------------------
# windows: w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), N = size (periodic) or size - 1


def _infer_window(ctx):
    size, dtype = ctx.attrs["size"], ctx.attrs["dtype"]
    if size < 0:
        raise ctx.error(f"size={size} must not be negative")
    if dtype not in GENERATOR_DTYPES:
        raise ctx.error(f"a window cannot be generated as {dtype}")
    return [TensorType((size,), dtype)]


_WINDOW_ATTRS = {"size": Attr("int"), "periodic": Attr("bool", True), "dtype": Attr("dtype", DType.f32)}


def _cosine_sum_window(size: int, periodic: bool, dtype: DType, a0: float, a1: float, a2: float) -> np.ndarray:
    # Computed in f64 like onnxruntime; integer dtypes truncate (C casts).
    period = size if periodic else size - 1
    if period == 0:  # a symmetric window of one sample (0/0 otherwise): torch's [1]
        return np.ones((size,), dtype.np)
    angle = 2.0 * np.pi * np.arange(size, dtype=np.float64) / period
    w = a0 - a1 * np.cos(angle) + a2 * np.cos(2.0 * angle)
    return np.asarray(w).astype(dtype.np)


@register("hann_window", family=OPAQUE, inputs=0, attrs=_WINDOW_ATTRS, infer=_infer_window)
def hann_window(*, size, periodic, dtype):
    """Hann window: sin^2(pi n / N)"""
    return _cosine_sum_window(size, periodic, dtype, 0.5, 0.5, 0.0)


@register("hamming_window", family=OPAQUE, inputs=0, attrs=_WINDOW_ATTRS, infer=_infer_window)
def hamming_window(*, size, periodic, dtype):
    """Hamming window: 25/46 - 21/46 cos(2 pi n / N)"""
    return _cosine_sum_window(size, periodic, dtype, 25.0 / 46.0, 21.0 / 46.0, 0.0)


@register("blackman_window", family=OPAQUE, inputs=0, attrs=_WINDOW_ATTRS, infer=_infer_window)
def blackman_window(*, size, periodic, dtype):
    """Blackman window: 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)"""
    return _cosine_sum_window(size, periodic, dtype, 0.42, 0.5, 0.08)


# ---------------------------------------------------------------------------
# mel_weight_matrix


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _mel_edge_bins(a: dict) -> tuple[int, int]:
    """FFT bin indices of the lower and upper band edges."""
    n, rate = a["dft_length"], a["sample_rate"]
    lo = int(np.floor((n + 1) * np.float64(a["lower_edge_hertz"]) / rate))
    hi = int(np.floor((n + 1) * np.float64(a["upper_edge_hertz"]) / rate))
    return lo, hi


def _infer_mel(ctx):
    a = ctx.attrs
    mels, n, rate, dtype = a["num_mel_bins"], a["dft_length"], a["sample_rate"], a["dtype"]
    if mels < 1 or n < 1 or rate < 1:
        raise ctx.error(f"num_mel_bins={mels}, dft_length={n} and sample_rate={rate} must be positive")
    if dtype not in GENERATOR_DTYPES:
        raise ctx.error(f"a mel weight matrix cannot be generated as {dtype}")
    bins = n // 2 + 1
    lo, hi = _mel_edge_bins(a)
    if not 0 <= lo <= hi < bins:
        raise ctx.error(
            f"the band edges {a['lower_edge_hertz']} Hz and {a['upper_edge_hertz']} Hz fall on FFT bins "
            f"{lo} and {hi}, outside [0, {bins - 1}] for dft_length={n} at sample_rate={rate} (or in reverse order)"
        )
    return [TensorType((bins, mels), dtype)]


@register(
    "mel_weight_matrix",
    family=OPAQUE,
    inputs=0,
    attrs={
        "num_mel_bins": Attr("int"),
        "dft_length": Attr("int"),
        "sample_rate": Attr("int"),
        "lower_edge_hertz": Attr("float"),
        "upper_edge_hertz": Attr("float"),
        "dtype": Attr("dtype", DType.f32),
    },
    infer=_infer_mel,
)
def mel_weight_matrix(*, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, dtype):
    """[dft_length//2 + 1, num_mel_bins] triangular filters, evenly spaced on the mel scale, peak 1."""
    # Band points are computed in f64, as onnxruntime does. Note the step divides the mel
    # range by num_mel_bins + 2 (not + 1): onnxruntime and the ONNX reference agree on it.
    bins = dft_length // 2 + 1
    lo_mel = _hz_to_mel(np.float64(lower_edge_hertz))
    hi_mel = _hz_to_mel(np.float64(upper_edge_hertz))
    points = num_mel_bins + 2
    step = (hi_mel - lo_mel) / points
    hz = _mel_to_hz(lo_mel + step * np.arange(points, dtype=np.float64))
    edges = np.floor((dft_length + 1) * hz / sample_rate).astype(np.int64)
    edges = np.clip(edges, 0, bins - 1)  # only rounding can push a point past the checked edges
    integer = np.dtype(dtype.np).kind in "iu"
    out = np.zeros((bins, num_mel_bins), np.float64)
    for i in range(num_mel_bins):
        left, centre, right = int(edges[i]), int(edges[i + 1]), int(edges[i + 2])
        if centre == left:
            out[centre, i] = 1.0
        else:
            j = np.arange(left, centre + 1)
            out[left : centre + 1, i] = (j - left) // (centre - left) if integer else (j - left) / (centre - left)
        if right > centre:
            j = np.arange(centre, right)
            out[centre:right, i] = (right - j) // (right - centre) if integer else (right - j) / (right - centre)
    return out.astype(dtype.np)
