"""The loss op group (einfuse/ir/ops/loss.py + frontends/onnx_ops/loss.py):
NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss against onnxruntime on seeded random
data, their symbolic shape inference and clean errors, and the ONNX conformance cases
(their `*_expanded` twins are the ops' ONNX function bodies: SoftmaxCrossEntropyLoss's runs
NegativeLogLikelihoodLoss after LogSoftmax, Reshape, Transpose... of other groups)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from einfuse.codegen import reference
from einfuse.errors import ExecutionError, ShapeError, UnsupportedOpError
from einfuse.frontends.onnx import convert_model

# ---------------------------------------------------------------------------
# helpers


def make_model(op_type, operands, *, opset=22, n_outputs=1, input_shapes=None, **attrs):
    """A one-node ONNX model and its feeds. Operands are (name, array) pairs (names starting
    with '@' become initializers) or None for an absent optional operand."""
    names, inputs, inits, feeds = [], [], [], {}
    for item in operands:
        if item is None:
            names.append("")
            continue
        name, arr = item
        if name.startswith("@"):
            name = name[1:]
            inits.append(nh.from_array(arr, name))
        else:
            shape = (input_shapes or {}).get(name, arr.shape)
            inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(arr.dtype), shape))
            feeds[name] = arr
        names.append(name)
    outs = [f"y{i}" for i in range(n_outputs)]
    node = oh.make_node(op_type, names, outs, name="n0", **attrs)
    graph = oh.make_graph([node], "g", inputs, [oh.make_empty_tensor_value_info(o) for o in outs], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 10
    return model, feeds


def check(model, feeds, rtol=1e-5, atol=1e-6) -> list:
    """einfuse and onnxruntime agree on every output: dtype, shape and values."""
    got = list(reference.run(convert_model(model), feeds).values())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return got


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def _labels(rng, shape, n_classes, ignore_index, dtype):
    labels = rng.integers(0, n_classes, shape)
    if ignore_index is not None:
        labels[rng.random(shape) < 0.3] = ignore_index  # out of [0, C) too: ignored, never read
    return labels.astype(dtype)


SHAPES = [(4, 5), (3, 4, 6), (2, 3, 4, 5)]


# ---------------------------------------------------------------------------
# NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss vs onnxruntime


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("ignore_index", [None, 1, -7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", SHAPES)
def test_nll(rng, shape, reduction, weighted, ignore_index, label_dtype):
    x = rng.standard_normal(shape).astype(np.float32)
    labels = _labels(rng, (shape[0],) + shape[2:], shape[1], ignore_index, label_dtype)
    operands = [("x", x), ("t", labels)] + ([("w", rng.random(shape[1]).astype(np.float32))] if weighted else [])
    attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    check(*make_model("NegativeLogLikelihoodLoss", operands, **attrs))


@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("ignore_index", [None, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_cross_entropy(rng, shape, reduction, weighted, ignore_index, n_outputs):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = _labels(rng, (shape[0],) + shape[2:], shape[1], ignore_index, np.int64)
    operands = [("x", x), ("t", labels)] + ([("@w", rng.random(shape[1]).astype(np.float32))] if weighted else [])
    attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    check(*make_model("SoftmaxCrossEntropyLoss", operands, opset=13, n_outputs=n_outputs, **attrs))


@pytest.mark.parametrize("op", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float16, 2e-3)])
def test_other_float_types(rng, op, dtype, tol):
    x = rng.standard_normal((6, 4, 3)).astype(dtype)
    labels = rng.integers(0, 4, (6, 3))
    operands = [("x", x), ("t", labels), ("w", rng.random(4).astype(dtype))]
    check(*make_model(op, operands, opset=13, reduction="mean"), rtol=tol, atol=tol)


def test_softmax_cross_entropy_extreme_scores_stay_finite():
    # Max-subtracted log-softmax: no overflow for huge scores, exact 0 loss for a sure class.
    x = np.asarray([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    model, feeds = make_model("SoftmaxCrossEntropyLoss", [("x", x), ("t", np.asarray([0, 2]))], opset=13, n_outputs=2)
    loss, log_prob = check(model, feeds)
    assert np.isfinite(log_prob[0, :2]).all() and log_prob[0, 0] == 0
    np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-6)


def test_mean_of_all_ignored_is_nan():
    x = np.zeros((2, 3), np.float32)
    model, feeds = make_model("NegativeLogLikelihoodLoss", [("x", x), ("t", np.asarray([5, 5]))], ignore_index=5)
    (loss,) = reference.run(convert_model(model), feeds).values()
    assert loss.shape == () and np.isnan(loss)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ignored_elements_are_never_read(reduction):
    # log(0) = -inf at the placeholder class of an ignored element must not turn into NaN.
    with np.errstate(divide="ignore"):
        x = np.log(np.asarray([[0, 1, 0], [0.5, 0.5, 0]], np.float32))
    operands = [("x", x), ("t", np.asarray([1, 3]))]
    (loss,) = check(*make_model("NegativeLogLikelihoodLoss", operands, ignore_index=3, reduction=reduction))
    assert np.isfinite(loss).all()


# ---------------------------------------------------------------------------
# inference and errors


def test_symbolic_shapes():
    x, t = np.zeros((2, 5, 3), np.float32), np.zeros((2, 3), np.int64)
    shapes = {"x": ["N", 5, "D"], "t": ["N", "D"]}
    model, _ = make_model("NegativeLogLikelihoodLoss", [("x", x), ("t", t)], reduction="none", input_shapes=shapes)
    assert [str(v.type) for v in convert_model(model).outputs] == ["f32[N,D]"]
    model, _ = make_model("SoftmaxCrossEntropyLoss", [("x", x), ("t", t)], opset=13, n_outputs=2, input_shapes=shapes)
    assert [str(v.type) for v in convert_model(model).outputs] == ["f32[]", "f32[N,5,D]"]


def test_errors():
    x, t = np.zeros((2, 5, 3), np.float32), np.zeros((2, 3), np.int64)
    nll = "NegativeLogLikelihoodLoss"
    with pytest.raises(ShapeError, match=r"labels must have shape \[2,3\]"):
        convert_model(make_model(nll, [("x", x), ("t", np.zeros((2, 4), np.int64))])[0])
    with pytest.raises(ShapeError, match="vector of C = 5 class weights"):
        convert_model(make_model(nll, [("x", x), ("t", t), ("w", np.zeros(4, np.float32))])[0])
    with pytest.raises(ShapeError, match="must have the dtype"):
        convert_model(make_model(nll, [("x", x), ("t", t), ("w", np.zeros(5, np.float64))])[0])
    with pytest.raises(ShapeError, match="float tensor"):
        convert_model(make_model(nll, [("x", x.astype(np.int32)), ("t", t)])[0])
    with pytest.raises(ShapeError, match="labels must be i64 or i32"):
        convert_model(make_model(nll, [("x", x), ("t", t.astype(np.float32))])[0])
    with pytest.raises(ShapeError, match=r"shape \(N, C, d1..dk\)"):
        convert_model(make_model(nll, [("x", np.zeros(5, np.float32)), ("t", np.zeros((), np.int64))])[0])
    with pytest.raises(UnsupportedOpError, match="reduction 'max'"):
        convert_model(make_model(nll, [("x", x), ("t", t)], reduction="max")[0])
    # A label outside [0, C) that is not ignored is a run-time error, as in onnxruntime.
    model, feeds = make_model(nll, [("x", x), ("t", np.full((2, 3), 5, np.int64))], ignore_index=-1)
    with pytest.raises(ExecutionError, match="label 5 is out of range for 5 classes"):
        reference.run(convert_model(model), feeds)


# ---------------------------------------------------------------------------
# ONNX conformance cases

_CASE_OPS = {"NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"}


def _conformance_cases() -> dict:
    # Importing a case module registers its cases; much faster than collect_testcases().
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in ("softmax_cross_entropy_loss", "negativeloglikelihoodloss"):
            importlib.import_module(f"onnx.backend.test.case.node.{m}")
    cases = node_cases._NodeTestCases
    native = {c.name for c in cases if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in _CASE_OPS}
    # The `_expanded` twins are the ops' function bodies (other groups' ops, NLL inside SCE's).
    return {c.name: c for c in cases if c.name in native or c.name.removesuffix("_expanded") in native}


CASES = _conformance_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance(name):
    case = CASES[name]
    names = [vi.name for vi in case.model.graph.input]
    graph = convert_model(case.model)
    for inputs, expected in case.data_sets:
        with np.errstate(all="ignore"):
            got = list(reference.run(graph, dict(zip(names, inputs))).values())
        assert len(got) == len(expected)
        for g, w in zip(got, expected):
            w = np.asarray(w)
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)


def test_conformance_cases_were_found():
    native = [c for c in CASES.values() if len(c.model.graph.node) == 1]
    ops = [c.model.graph.node[0].op_type for c in native]
    assert ops.count("SoftmaxCrossEntropyLoss") == 34 and ops.count("NegativeLogLikelihoodLoss") == 18
    assert len(CASES) == 2 * len(native)  # and each one's `_expanded` twin
