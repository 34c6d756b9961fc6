"""The signal op group (einfuse/ir/ops/signal.py + frontends/onnx_ops/signal.py): DFT, STFT,
the windows and MelWeightMatrix against onnxruntime, symbolic shapes, errors, and the ONNX
conformance cases."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from onnx import TensorProto

from einfuse.codegen import reference
from einfuse.errors import ExecutionError, ShapeError
from einfuse.frontends.onnx import DynamicOperandError
from einfuse.ir.ops import get_op
from einfuse.ir.types import DType, TensorType, sym
from tests.onnx_helpers import (
    OnnxModel,
    case_ids,
    check_conformance_case,
    conformance_cases,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)


class Model(OnnxModel):
    default_opset = 20
    tol = uniform_tol(1e-4, 1e-5)


# ---------------------------------------------------------------------------
# DFT


def _dft_model(x, *, opset, axis=None, length=None, **attrs) -> Model:
    """DFT with axis (attribute before opset 20, constant operand from 20) and dft_length."""
    operands = [("x", x), None if length is None else ("@len", np.int64(length))]
    if opset >= 20:
        operands.append(None if axis is None else ("@axis", np.int64(axis)))
    elif axis is not None:
        attrs["axis"] = axis
    return Model("DFT", operands, opset=opset, **attrs)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape,axis",
    [((2, 8, 1), 1), ((2, 8, 2), 1), ((3, 5, 6, 2), 2), ((3, 5, 6, 1), -2), ((3, 5, 6, 2), -3), ((4, 7, 2), 0)],
)
@pytest.mark.parametrize("inverse", [0, 1])
def test_dft(rng, opset, dtype, shape, axis, inverse):
    x = rng.standard_normal(shape).astype(dtype)
    # onnxruntime's f64 inverse DFT is only about f32-accurate (its twiddles), hence 1e-6 for f64.
    tol = (1e-4, 1e-5) if dtype == np.float32 else (1e-6, 1e-9)
    _dft_model(x, opset=opset, axis=axis, inverse=inverse).check(*tol)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("length", [None, 5, 8, 13])
def test_rfft(rng, opset, length):
    x = rng.standard_normal((3, 8, 1)).astype(np.float32)
    _dft_model(x, opset=opset, axis=1, length=length, onesided=1).check()


@pytest.mark.parametrize("length", [3, 12])
@pytest.mark.parametrize("inverse", [0, 1])
def test_dft_length_truncates_and_pads(rng, length, inverse):
    x = rng.standard_normal((2, 6, 4, 2)).astype(np.float32)
    _dft_model(x, opset=20, axis=1, length=length, inverse=inverse).check()


@pytest.mark.parametrize("bins,length", [(5, None), (6, None), (6, 10), (6, 8)])
def test_irfft(rng, bins, length):
    x = rng.standard_normal((3, bins, 2)).astype(np.float32)
    x[:, 0, 1] = 0  # a real DC bin, as a one-sided spectrum of a real signal has
    m = _dft_model(x, opset=20, axis=1, length=length, inverse=1, onesided=1)
    (y,) = m.check()
    spectrum = x[..., 0] + 1j * x[..., 1]
    np.testing.assert_allclose(y[..., 0], np.fft.irfft(spectrum, n=length, axis=1), rtol=1e-4, atol=1e-5)


def test_irfft_odd_length_follows_numpy(rng):
    """For an odd dft_length with more input bins than it needs, onnxruntime reads all the bins
    (not a Hermitian spectrum); einfuse follows the ONNX reference (numpy's irfft)."""
    x = rng.standard_normal((2, 6, 2)).astype(np.float32)
    (y,) = _dft_model(x, opset=20, axis=1, length=7, inverse=1, onesided=1).einfuse()
    assert y.shape == (2, 7, 1)
    np.testing.assert_allclose(y[..., 0], np.fft.irfft(x[..., 0] + 1j * x[..., 1], n=7, axis=1), rtol=1e-5, atol=1e-6)


def test_dft_f16_rounds_back(rng):
    x = rng.standard_normal((2, 8, 1)).astype(np.float16)
    y = get_op("dft").reference(x, axis=1, inverse=False, onesided=False, dft_length=8)
    assert y.dtype == np.float16 and y.shape == (2, 8, 2)
    want = np.fft.fft(x[..., 0].astype(np.float64), axis=1)
    np.testing.assert_allclose(y[..., 0], want.real, rtol=1e-2, atol=1e-2)


def test_dft_symbolic_shapes():
    b, n = sym("B"), sym("N")
    x = np.zeros((2, 8, 1), np.float32)
    m = _dft_model(x, opset=20, axis=1, onesided=1)
    m.proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "B"
    g = m.graph()
    assert g.outputs[0].type == TensorType((b, 5, 2), DType.f32)
    # A symbolic signal axis: the default length stays symbolic (dft_length=0 in the node).
    xc = np.zeros((2, 7, 2), np.float32)
    m = _dft_model(xc, opset=20, axis=1, inverse=1, onesided=1)
    m.proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "N"
    g = m.graph()
    assert g.nodes[0].attrs["dft_length"] == 0
    assert g.outputs[0].type == TensorType((2, 2 * n - 2, 1), DType.f32)
    (y,) = reference.run(g, {"x": np.ones((2, 4, 2), np.float32)}).values()
    assert y.shape == (2, 6, 1)


def test_dft_errors():
    real = np.zeros((2, 8, 1), np.float32)
    cplx = np.zeros((2, 8, 2), np.float32)
    with pytest.raises(ShapeError, match="RFFT.*real input"):
        _dft_model(cplx, opset=20, axis=1, onesided=1).graph()
    with pytest.raises(ShapeError, match="IRFFT.*complex input"):
        _dft_model(real, opset=20, axis=1, onesided=1, inverse=1).graph()
    with pytest.raises(ShapeError, match="axis=-1 must be a signal axis"):
        _dft_model(real, opset=20, axis=-1).graph()
    with pytest.raises(ShapeError, match="axis=2 must be a signal axis"):
        _dft_model(real, opset=17, axis=2).graph()
    with pytest.raises(ShapeError, match="dft_length=0 must be positive"):
        _dft_model(real, opset=20, axis=1, length=0).graph()
    with pytest.raises(ShapeError, match="end in an axis of 1"):
        _dft_model(np.zeros((2, 8, 3), np.float32), opset=20, axis=1).graph()
    with pytest.raises(DynamicOperandError, match="must be a constant"):
        Model("DFT", [("x", real), ("len", np.int64(4))], opset=20).graph()


# ---------------------------------------------------------------------------
# STFT


@pytest.mark.parametrize("with_window", [False, True])
@pytest.mark.parametrize("with_length", [False, True])
@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("step", [3, 8])
def test_stft(rng, with_window, with_length, onesided, step):
    signal = rng.standard_normal((2, 64, 1)).astype(np.float32)
    window = np.hanning(16).astype(np.float32)
    operands = [("signal", signal), ("@step", np.int64(step))]
    operands.append(("@window", window) if with_window else None)
    operands.append(("@length", np.int64(16)) if with_length or not with_window else None)
    Model("STFT", operands, opset=17, onesided=onesided).check(atol=1e-4)


def test_stft_complex_signal(rng):
    signal = rng.standard_normal((1, 40, 2)).astype(np.float32)
    Model("STFT", [("s", signal), ("@step", np.int64(5)), None, ("@len", np.int64(10))], opset=17, onesided=0).check(
        atol=1e-4
    )


def test_stft_symbolic_shapes():
    signal = np.zeros((2, 64, 1), np.float32)
    m = Model("STFT", [("s", signal), ("@step", np.int64(8)), None, ("@len", np.int64(16))], opset=17)
    dims = m.proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[1].dim_param = "B", "L"
    g = m.graph()
    b, length = sym("B"), sym("L")
    out = g.outputs[0].type
    assert out.shape[0] == b and out.shape[2:] == (9, 2)
    assert sympy.simplify(out.shape[1] - (sympy.floor((length - 16) / 8) + 1)) == 0
    (y,) = reference.run(g, {"s": np.ones((3, 40, 1), np.float32)}).values()
    assert y.shape == (3, 4, 9, 2)


def test_symbolic_lengths_too_short_at_run_time():
    m = Model("STFT", [("s", np.zeros((1, 32, 1), np.float32)), ("@step", np.int64(4)), None, ("@n", np.int64(16))])
    m.proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "L"
    with pytest.raises(ExecutionError, match="shorter than frame_length=16"):
        reference.run(m.graph(), {"s": np.zeros((1, 8, 1), np.float32)})
    m = _dft_model(np.zeros((1, 4, 2), np.float32), opset=20, axis=1, inverse=1, onesided=1)
    m.proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "N"
    with pytest.raises(ExecutionError, match="default DFT length"):
        reference.run(m.graph(), {"x": np.zeros((1, 1, 2), np.float32)})


def test_stft_errors():
    signal = np.zeros((1, 32, 1), np.float32)
    with pytest.raises(ShapeError, match="window .* must be 1-D of frame_length=8"):
        Model(
            "STFT", [("s", signal), ("@step", np.int64(4)), ("@w", np.ones(6, np.float32)), ("@n", np.int64(8))]
        ).graph()
    with pytest.raises(ShapeError, match="shorter than frame_length=64"):
        Model("STFT", [("s", signal), ("@step", np.int64(4)), None, ("@n", np.int64(64))]).graph()
    with pytest.raises(ShapeError, match="one-sided STFT needs a real signal"):
        Model(
            "STFT", [("s", np.zeros((1, 32, 2), np.float32)), ("@step", np.int64(4)), None, ("@n", np.int64(8))]
        ).graph()
    with pytest.raises(ShapeError, match="must be \\[batch, length, 1 or 2\\]"):
        Model("STFT", [("s", np.zeros((32, 1), np.float32)), ("@step", np.int64(4)), None, ("@n", np.int64(8))]).graph()
    with pytest.raises(DynamicOperandError):
        Model("STFT", [("s", signal), ("step", np.int64(4)), None, ("@n", np.int64(8))]).graph()


# ---------------------------------------------------------------------------
# windows and MelWeightMatrix (folded into constants by the converter)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("size", [1, 2, 10, 17])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_window(op, size, periodic, dtype):
    m = Model(op, [("@size", np.array(size, np.int32))], opset=17, periodic=periodic, output_datatype=dtype)
    g = m.graph()
    assert not g.nodes and g.outputs[0].is_const  # folded
    if size == 1 and not periodic:
        # 0/0 in the formula: onnxruntime gives NaN, einfuse (like torch) a window of one 1.
        (y,) = m.einfuse()
        np.testing.assert_array_equal(y, [1])
        return
    m.check(rtol=1e-6, atol=1e-7)


def test_window_integer_dtype():
    y = get_op("hann_window").reference(size=4, periodic=True, dtype=DType.i32)
    np.testing.assert_array_equal(y, [0, 0, 1, 0])  # [0, .5, 1, .5] truncated, like a C cast


def test_window_errors():
    with pytest.raises(ShapeError, match="size=-1"):
        Model("HannWindow", [("@size", np.array(-1, np.int32))], opset=17).graph()
    with pytest.raises(DynamicOperandError):
        Model("HannWindow", [("size", np.array(4, np.int32))], opset=17).graph()


MEL_CASES = [
    (8, 16, 8192, 0.0, 4096.0),
    (10, 64, 16000, 20.0, 7600.0),
    (4, 512, 22050, 100.0, 11000.0),
    (3, 32, 1000, 50.0, 400.0),
]


@pytest.mark.parametrize("mels,length,rate,lo,hi", MEL_CASES)
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32])
def test_mel_weight_matrix(mels, length, rate, lo, hi, dtype):
    operands = [
        ("@mels", np.array(mels, np.int32)),
        ("@n", np.array(length, np.int32)),
        ("@rate", np.array(rate, np.int32)),
        ("@lo", np.array(lo, np.float32)),
        ("@hi", np.array(hi, np.float32)),
    ]
    m = Model("MelWeightMatrix", operands, opset=17, output_datatype=dtype)
    (y,) = m.check(rtol=1e-6, atol=1e-7)
    assert y.shape == (length // 2 + 1, mels)


def test_mel_weight_matrix_errors():
    def model(lo, hi):
        operands = [("@m", np.array(4, np.int32)), ("@n", np.array(16, np.int32)), ("@r", np.array(8000, np.int32))]
        operands += [("@lo", np.array(lo, np.float32)), ("@hi", np.array(hi, np.float32))]
        return Model("MelWeightMatrix", operands, opset=17)

    with pytest.raises(ShapeError, match="outside \\[0, 8\\]"):
        model(0.0, 8000.0).graph()
    with pytest.raises(ShapeError, match="outside"):
        model(-100.0, 1000.0).graph()


# ---------------------------------------------------------------------------
# ONNX conformance cases

SIGNAL_OPS = {"DFT", "STFT", "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix"}


CASES = conformance_cases(SIGNAL_OPS)


def test_conformance_cases_are_collected():
    names = set(case_ids(CASES))
    assert len(names) == 19
    assert {"test_dft_irfft_opset19", "test_stft_with_window", "test_melweightmatrix"} <= names


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_onnx_conformance(case):
    check_conformance_case(case)
