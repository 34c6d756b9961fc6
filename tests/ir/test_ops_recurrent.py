"""The recurrent op group (einfuse/ir/ops/recurrent.py + frontends/onnx_ops/recurrent.py): RNN,
GRU and LSTM against onnxruntime over directions, layouts, optional operands and
activations; symbolic shapes; errors; and the ONNX conformance cases."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from einfuse.codegen import reference
from einfuse.errors import ShapeError, UnsupportedOpError
from einfuse.ir.types import DType, TensorType, sym
from tests.onnx_helpers import (
    OnnxModel,
    case_ids,
    check_conformance_case,
    conformance_cases,
    randn,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}


class Model(OnnxModel):
    default_opset = 22
    tol = uniform_tol(1e-4, 1e-5)


class BatchMajor(Model):
    """A layout=1 model checked against onnxruntime, which only runs layout=0: the time-major
    twin runs in onnxruntime on transposed inputs, its outputs are transposed back."""

    def __init__(self, op_type, operands, *, twin: Model, **kw):
        super().__init__(op_type, operands, **kw)
        self.twin = twin

    def ort(self, feeds=None) -> list:
        assert feeds is None, "the twin runs on its own (transposed) feeds"
        return [np.transpose(o, (2, 0, 1, 3) if o.ndim == 4 else (1, 0, 2)) for o in self.twin.ort()]


def recurrent_model(
    rng,
    op: str,
    *,
    direction="forward",
    seq=5,
    batch=3,
    inputs=4,
    hidden=6,
    layout=0,
    bias=True,
    initial=False,
    lens=None,
    peepholes=False,
    outputs=None,
    dtype=np.float32,
    **attrs,
):
    """A random RNN/GRU/LSTM; weights are initializers, X, the initial states and lens inputs."""
    dirs, gates = DIRS.get(direction, 1), GATES[op]

    def weights(*shape):
        return randn(rng, shape, dtype, scale=0.5)

    operands = [("X", randn(rng, (seq, batch, inputs), dtype)), ("@W", weights(dirs, gates * hidden, inputs))]
    operands.append(("@R", weights(dirs, gates * hidden, hidden)))
    operands.append(("@B", weights(dirs, 2 * gates * hidden)) if bias else None)
    operands.append(("lens", np.asarray(lens, np.int32)) if lens is not None else None)
    operands.append(("h0", weights(dirs, batch, hidden)) if initial else None)
    if op == "LSTM":
        operands.append(("c0", weights(dirs, batch, hidden)) if initial else None)
        operands.append(("@P", weights(dirs, 3 * hidden)) if peepholes else None)
    while operands[-1] is None:
        operands.pop()
    if outputs is None:
        outputs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    common = {"outputs": outputs, "direction": direction, "hidden_size": hidden, **attrs}
    if layout == 0:
        return Model(op, operands, **common)
    twin = Model(op, operands, **common)
    batch_major = [
        None if item is None else (item[0], np.swapaxes(item[1], 0, 1) if item[0] in ("X", "h0", "c0") else item[1])
        for item in operands
    ]
    return BatchMajor(op, batch_major, twin=twin, layout=1, **common)


# ---------------------------------------------------------------------------
# against onnxruntime


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("initial", [False, True])
def test_directions_layouts_states(rng, op, direction, layout, initial):
    recurrent_model(rng, op, direction=direction, layout=layout, initial=initial).check()


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lens(rng, op, direction, layout):
    # Lengths below, at and (0) far below the padded length.
    recurrent_model(rng, op, direction=direction, layout=layout, lens=[3, 5, 0, 1], batch=4, initial=True).check()


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_no_bias_and_clip(rng, op):
    recurrent_model(rng, op, bias=False, clip=0.3, direction="bidirectional").check()


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("input_forget", [0, 1])
def test_lstm_peepholes_input_forget(rng, direction, input_forget):
    recurrent_model(
        rng, "LSTM", direction=direction, peepholes=True, initial=True, input_forget=input_forget, lens=[5, 2, 4]
    ).check()


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_gru_linear_before_reset(rng, linear_before_reset, direction):
    recurrent_model(rng, "GRU", direction=direction, linear_before_reset=linear_before_reset, initial=True).check()


ACTIVATION_CASES = [
    # (op, direction, activations, alpha, beta): alphas/betas are consumed in order by the
    # functions that take them; missing ones take the defaults of the ONNX operators.
    ("RNN", "forward", ["Relu"], None, None),
    ("RNN", "forward", ["Relu", "Tanh"], None, None),  # the schema's default has two entries: the first counts
    ("RNN", "bidirectional", ["LeakyRelu", "Tanh"], [0.2], None),
    ("RNN", "forward", ["Affine"], [0.7], [0.1]),
    ("RNN", "forward", ["ThresholdedRelu"], [0.1], None),
    ("RNN", "forward", ["Softsign"], None, None),
    ("RNN", "forward", ["Softplus"], None, None),
    ("RNN", "forward", ["ScaledTanh"], [1.5], [0.5]),
    ("GRU", "forward", ["HardSigmoid", "Elu"], [0.3, 0.8], [0.4]),
    ("GRU", "forward", ["Sigmoid", "LeakyRelu"], None, None),  # LeakyRelu alpha 0.01
    ("GRU", "bidirectional", ["Sigmoid", "Tanh", "HardSigmoid", "Relu"], [0.25], None),  # HardSigmoid beta 0.5
    ("LSTM", "forward", ["HardSigmoid", "Tanh", "Softsign"], None, None),  # HardSigmoid 0.2, 0.5
    ("LSTM", "forward", ["Sigmoid", "Elu", "ScaledTanh"], [0.5, 1.1], [0.9]),
]


@pytest.mark.parametrize("op,direction,activations,alpha,beta", ACTIVATION_CASES)
def test_activations(rng, op, direction, activations, alpha, beta):
    attrs = {"activations": activations}
    if alpha is not None:
        attrs["activation_alpha"] = alpha
    if beta is not None:
        attrs["activation_beta"] = beta
    recurrent_model(rng, op, direction=direction, initial=True, **attrs).check()


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_double(rng, op):
    """f64 runs in f64 (onnxruntime has no f64 kernels: compare with its f32 run on the same values)."""
    m = recurrent_model(rng, op, dtype=np.float64, direction="bidirectional", initial=True)
    got = m.einfuse()
    assert all(g.dtype == np.float64 for g in got)
    for init in m.proto.graph.initializer:
        init.CopyFrom(nh.from_array(nh.to_array(init).astype(np.float32), init.name))
    for vi in m.proto.graph.input:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
    m.feeds = {k: v.astype(np.float32) for k, v in m.feeds.items()}
    for g, w in zip(got, m.ort()):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_activation_names_are_case_insensitive(rng):
    """onnxruntime's GRU/LSTM match names case-insensitively (its RNN does not); einfuse always does."""
    upper = recurrent_model(rng, "LSTM", activations=["Sigmoid", "Tanh", "HardSigmoid"], activation_alpha=[0.3])
    lower = recurrent_model(rng, "LSTM", activations=["sigmoid", "TANH", "hardsigmoid"], activation_alpha=[0.3])
    lower.feeds = upper.feeds
    del lower.proto.graph.initializer[:]
    lower.proto.graph.initializer.extend(upper.proto.graph.initializer)
    for g, w in zip(lower.einfuse(), upper.check()):
        np.testing.assert_array_equal(g, w)
    assert lower.graph().nodes[0].attrs["activations"] == ("Sigmoid", "Tanh", "HardSigmoid")


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_optional_outputs(rng, op):
    """Only Y_h requested (Y left out), in batch-major layout: the unused transposes are not emitted."""
    outputs = ["", "Y_h"]
    m = recurrent_model(rng, op, layout=1, outputs=outputs, direction="bidirectional")
    (y_h,) = m.check()
    assert y_h.shape == (3, 2, 6)
    assert [n.op for n in m.graph().nodes].count("transpose") == 2  # X in, Y_h out


def test_hidden_size_from_weights(rng):
    m = recurrent_model(rng, "GRU")
    del m.proto.graph.node[0].attribute[[a.name for a in m.proto.graph.node[0].attribute].index("hidden_size")]
    got = m.einfuse()
    assert got[1].shape == (1, 3, 6)


def test_float16_computes_in_f32(rng):
    m = recurrent_model(rng, "LSTM", initial=True)
    want = m.einfuse()
    for proto_init in m.proto.graph.initializer:
        arr = nh.to_array(proto_init).astype(np.float16)
        proto_init.CopyFrom(nh.from_array(arr, proto_init.name))
    for vi in m.proto.graph.input:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    m.feeds = {k: v.astype(np.float16) for k, v in m.feeds.items()}
    got = m.einfuse()
    for g, w in zip(got, want):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), w, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------
# symbolic shapes and errors


@pytest.mark.parametrize("layout", [0, 1])
def test_symbolic_shapes(rng, layout):
    m = recurrent_model(rng, "LSTM", direction="bidirectional", layout=layout)
    dims = m.proto.graph.input[0].type.tensor_type.shape.dim
    (dims[0].dim_param, dims[1].dim_param) = ("S", "B") if layout == 0 else ("B", "S")
    g = m.graph()
    s, b = sym("S"), sym("B")
    y_shape = (s, 2, b, 6) if layout == 0 else (b, s, 2, 6)
    state = (2, b, 6) if layout == 0 else (b, 2, 6)
    assert [v.type for v in g.outputs] == [TensorType(y_shape, DType.f32)] + [TensorType(state, DType.f32)] * 2
    x = rng.standard_normal((7, 3, 4) if layout == 0 else (3, 7, 4)).astype(np.float32)
    y, y_h, y_c = reference.run(g, {"X": x}).values()
    assert y.shape == ((7, 2, 3, 6) if layout == 0 else (3, 7, 2, 6))
    assert y_h.shape == y_c.shape == ((2, 3, 6) if layout == 0 else (3, 2, 6))


def test_errors(rng):
    m = recurrent_model(rng, "LSTM", hidden=6)
    m.proto.graph.node[0].attribute[[a.name for a in m.proto.graph.node[0].attribute].index("hidden_size")].i = 5
    with pytest.raises(ShapeError, match=r"W f32\[1,24,4\] should have shape \[1,20,4\]"):
        m.graph()
    with pytest.raises(ShapeError, match="direction='sideways'"):
        recurrent_model(rng, "RNN", direction="sideways").graph()
    with pytest.raises(ShapeError, match="should name 3 function"):
        recurrent_model(rng, "LSTM", activations=["Sigmoid", "Tanh"]).graph()
    with pytest.raises(ShapeError, match=r"should name 2 function\(s\) per direction \(4\)"):
        recurrent_model(rng, "GRU", direction="bidirectional", activations=["Sigmoid", "Tanh"]).graph()
    with pytest.raises(UnsupportedOpError, match="activation 'Swish'"):
        recurrent_model(rng, "RNN", activations=["Swish"]).graph()
    with pytest.raises(UnsupportedOpError, match="Affine needs activation_alpha and activation_beta"):
        recurrent_model(rng, "RNN", activations=["Affine"], activation_alpha=[1.0]).graph()
    with pytest.raises(ShapeError, match="clip=-1.0 must be positive"):
        recurrent_model(rng, "GRU", clip=-1.0).graph()
    m = recurrent_model(rng, "GRU")
    m.proto.graph.node[0].attribute.append(oh.make_attribute("layout", 2))
    with pytest.raises(ShapeError, match="layout=2"):
        m.graph()
    m = recurrent_model(rng, "GRU", lens=[1, 2, 3])
    m.proto.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ShapeError, match=r"sequence_lens i32\[4\] should have shape \[3\]"):
        m.graph()


def test_bad_sequence_lens_at_run_time(rng):
    from einfuse.errors import ExecutionError

    m = recurrent_model(rng, "RNN", lens=[1, 2, 3])
    m.feeds["lens"] = np.array([1, 9, 3], np.int32)
    with pytest.raises(ExecutionError, match="sequence_lens"):
        m.einfuse()


# ---------------------------------------------------------------------------
# ONNX conformance cases

RECURRENT_OPS = {"RNN", "GRU", "LSTM"}


CASES = conformance_cases(RECURRENT_OPS)


def test_conformance_cases_are_collected():
    assert len(CASES) == 18


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_onnx_conformance(case):
    check_conformance_case(case)
