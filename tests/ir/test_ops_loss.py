"""The loss op group (einfuse/ir/ops/loss.py + frontends/onnx_ops/loss.py):
NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss against onnxruntime on seeded random
data, their symbolic shape inference and clean errors, and the ONNX conformance cases
(their `*_expanded` twins are the ops' ONNX function bodies: SoftmaxCrossEntropyLoss's runs
NegativeLogLikelihoodLoss after LogSoftmax, Reshape, Transpose... of other groups)."""

from __future__ import annotations

import numpy as np
import pytest

from einfuse.errors import ExecutionError, ShapeError, UnsupportedOpError
from tests.onnx_helpers import (
    OnnxModel,
    case_ids,
    check_conformance_case,
    conformance_cases,
    seeded_rng,  # noqa: F401 (the rng fixture)
    uniform_tol,
)


class Model(OnnxModel):
    default_opset = 22
    tol = uniform_tol(1e-5, 1e-6)


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
    Model("NegativeLogLikelihoodLoss", operands, **attrs).check()


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
    Model("SoftmaxCrossEntropyLoss", operands, opset=13, outputs=n_outputs, **attrs).check()


@pytest.mark.parametrize("op", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float16, 2e-3)])
def test_other_float_types(rng, op, dtype, tol):
    x = rng.standard_normal((6, 4, 3)).astype(dtype)
    labels = rng.integers(0, 4, (6, 3))
    operands = [("x", x), ("t", labels), ("w", rng.random(4).astype(dtype))]
    Model(op, operands, opset=13, reduction="mean").check(tol, tol)


def test_softmax_cross_entropy_extreme_scores_stay_finite():
    # Max-subtracted log-softmax: no overflow for huge scores, exact 0 loss for a sure class.
    x = np.asarray([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    m = Model("SoftmaxCrossEntropyLoss", [("x", x), ("t", np.asarray([0, 2]))], opset=13, outputs=2)
    loss, log_prob = m.check()
    assert np.isfinite(log_prob[0, :2]).all() and log_prob[0, 0] == 0
    np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-6)


def test_mean_of_all_ignored_is_nan():
    x = np.zeros((2, 3), np.float32)
    (loss,) = Model("NegativeLogLikelihoodLoss", [("x", x), ("t", np.asarray([5, 5]))], ignore_index=5).einfuse()
    assert loss.shape == () and np.isnan(loss)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ignored_elements_are_never_read(reduction):
    # log(0) = -inf at the placeholder class of an ignored element must not turn into NaN.
    with np.errstate(divide="ignore"):
        x = np.log(np.asarray([[0, 1, 0], [0.5, 0.5, 0]], np.float32))
    operands = [("x", x), ("t", np.asarray([1, 3]))]
    (loss,) = Model("NegativeLogLikelihoodLoss", operands, ignore_index=3, reduction=reduction).check()
    assert np.isfinite(loss).all()


# ---------------------------------------------------------------------------
# inference and errors


def test_symbolic_shapes():
    x, t = np.zeros((2, 5, 3), np.float32), np.zeros((2, 3), np.int64)
    shapes = {"x": ["N", 5, "D"], "t": ["N", "D"]}
    m = Model("NegativeLogLikelihoodLoss", [("x", x), ("t", t)], reduction="none", input_shapes=shapes)
    assert m.out_types() == ["f32[N,D]"]
    m = Model("SoftmaxCrossEntropyLoss", [("x", x), ("t", t)], opset=13, outputs=2, input_shapes=shapes)
    assert m.out_types() == ["f32[]", "f32[N,5,D]"]


def test_errors():
    x, t = np.zeros((2, 5, 3), np.float32), np.zeros((2, 3), np.int64)
    nll = "NegativeLogLikelihoodLoss"
    with pytest.raises(ShapeError, match=r"labels must have shape \[2,3\]"):
        Model(nll, [("x", x), ("t", np.zeros((2, 4), np.int64))]).graph()
    with pytest.raises(ShapeError, match="vector of C = 5 class weights"):
        Model(nll, [("x", x), ("t", t), ("w", np.zeros(4, np.float32))]).graph()
    with pytest.raises(ShapeError, match="must have the dtype"):
        Model(nll, [("x", x), ("t", t), ("w", np.zeros(5, np.float64))]).graph()
    with pytest.raises(ShapeError, match="float tensor"):
        Model(nll, [("x", x.astype(np.int32)), ("t", t)]).graph()
    with pytest.raises(ShapeError, match="labels must be i64 or i32"):
        Model(nll, [("x", x), ("t", t.astype(np.float32))]).graph()
    with pytest.raises(ShapeError, match=r"shape \(N, C, d1..dk\)"):
        Model(nll, [("x", np.zeros(5, np.float32)), ("t", np.zeros((), np.int64))]).graph()
    with pytest.raises(UnsupportedOpError, match="reduction 'max'"):
        Model(nll, [("x", x), ("t", t)], reduction="max").graph()
    # A label outside [0, C) that is not ignored is a run-time error, as in onnxruntime.
    m = Model(nll, [("x", x), ("t", np.full((2, 3), 5, np.int64))], ignore_index=-1)
    with pytest.raises(ExecutionError, match="label 5 is out of range for 5 classes"):
        m.einfuse()


# ---------------------------------------------------------------------------
# ONNX conformance cases

_CASE_OPS = {"NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"}
# With their `_expanded` twins: the ops' function bodies (other groups' ops, NLL inside SCE's).
CASES = conformance_cases(_CASE_OPS, expanded=True)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_conformance(case):
    check_conformance_case(case)


def test_conformance_cases_were_found():
    native = [c for c in CASES if len(c.model.graph.node) == 1]
    ops = [c.model.graph.node[0].op_type for c in native]
    assert ops.count("SoftmaxCrossEntropyLoss") == 34 and ops.count("NegativeLogLikelihoodLoss") == 18
    assert len(CASES) == 2 * len(native)  # and each one's `_expanded` twin
