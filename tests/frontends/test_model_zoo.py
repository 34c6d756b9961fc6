"""End to end on the ONNX light model zoo: import, run with the reference evaluator,
compare with the outputs onnx ships and, with random weights, with onnxruntime.

The light models carry their weights as `ConstantOfShape(0.02)` nodes, so the
shipped expected outputs are nearly constant (softmax of equal logits); the second
test per model draws seeded random weights of a sane scale and compares logits as
well as probabilities with onnxruntime, which is the informative check.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.backend.test.runner import Runner

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.testing.models import (
    LIGHT_MODELS,
    expose_outputs,
    light_expected,
    light_input,
    light_model_dir,
    light_random_input,
    light_tolerance,
    load_light,
    logits_names,
    op_types,
    ort_run,
    randomize_weights,
)

# Random-weight tests that take over 20 s on this 2-core machine (VGG-19: 140 M
# weights to draw, serialise for onnxruntime and import; 20 GFLOP per run).
SLOW_RANDOM = {"light_vgg19"}

# Einfuse's reference and onnxruntime both compute in float32 but sum in different
# orders (numpy/OpenBLAS vs MLAS; im2col vs direct or Winograd convolution). Each
# layer's relative error is about sqrt(K) * 6e-8 for a K-term sum (K <= 25088, so
# < 1e-5), and it compounds over at most ~120 layers to well under 1e-4 of the
# activation scale; rtol 1e-3 leaves a 10x margin. Errors in logits near zero are
# relative to the scale of the logits, not to the element: atol is 1e-4 of max|x|.
RTOL = 1e-3
ATOL_OF_SCALE = 1e-4


def _params(names, slow=frozenset()):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def _assert_outputs_close(got: dict, want: dict, rtol: float, atol_of_scale: float, what: str) -> None:
    assert list(got) == list(want), f"{what}: outputs {list(got)} != {list(want)}"
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
            f"{what}: output {name!r} is {actual.dtype}{list(actual.shape)}, "
            f"expected {expected.dtype}{list(expected.shape)}"
        )
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        np.testing.assert_allclose(
            actual, expected, rtol=rtol, atol=atol_of_scale * max(scale, 1e-30), err_msg=f"{what}: output {name!r}"
        )


# ----------------------------------------------------------------- the helpers


def test_light_model_dir_holds_the_nine_models():
    stems = sorted(p.stem for p in light_model_dir().glob("*.onnx"))
    assert stems == sorted(LIGHT_MODELS)


def test_light_input_is_what_the_onnx_runner_feeds():
    model = load_light("light_squeezenet")
    (vi,) = [x for x in model.graph.input if x.name not in {t.name for t in model.graph.initializer}]
    want = Runner.generate_dummy_data(vi, seed=0, name="squeezenet", random=False)
    got = light_input(model)
    assert list(got) == [vi.name]
    np.testing.assert_array_equal(got[vi.name], want)
    assert got[vi.name].dtype == np.float32 and got[vi.name].shape == (1, 3, 224, 224)


def test_light_tolerances_come_from_the_onnx_model_cases():
    assert light_tolerance("light_densenet121") == (2e-3, 1e-7)
    assert light_tolerance("resnet50") == (1e-3, 1e-7)
    with pytest.raises(ValueError, match="unknown light model"):
        light_tolerance("light_mobilenet")


def test_randomize_weights_is_seeded_and_keeps_the_graph():
    model = load_light("light_squeezenet")
    a = randomize_weights(model, seed=1)
    b = randomize_weights(model, seed=1)
    c = randomize_weights(model, seed=2)
    onnx.checker.check_model(a)
    # Only the ConstantOfShape weight generators go away; inputs and outputs stay.
    assert op_types(a) == op_types(model) - {"ConstantOfShape"}
    assert [x.name for x in a.graph.output] == [x.name for x in model.graph.output]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    assert {t.name for t in b.graph.initializer} == set(weights)
    for t in b.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), weights[t.name])
    conv_w = "conv1_w_0"
    other = next(t for t in c.graph.initializer if t.name == conv_w)
    assert not np.array_equal(onnx.numpy_helper.to_array(other), weights[conv_w])
    # The first conv reads the image, not a ReLU output: std sqrt(1 / fan_in).
    w = weights[conv_w]
    fan_in = int(np.prod(w.shape[1:]))
    assert 0.9 < w.std() * np.sqrt(fan_in) < 1.1
    # Later convs read ReLU outputs: std sqrt(2 / fan_in).
    w = weights["fire2/squeeze1x1_w_0"]
    assert 0.9 < w.std() * np.sqrt(int(np.prod(w.shape[1:])) / 2) < 1.1


# ------------------------------------------------------------ the real models


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnx_expected_outputs(name):
    model = load_light(name)
    graph = convert_model(model)
    got = reference.run(graph, light_input(model))
    want = light_expected(name)
    rtol, atol = light_tolerance(name)
    assert len(got) == len(want)
    for (out_name, actual), expected in zip(got.items(), want):
        assert actual.shape == expected.shape, f"output {out_name!r}: shape {actual.shape} != {expected.shape}"
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=f"{name} output {out_name!r}")


@pytest.mark.parametrize("name", _params(LIGHT_MODELS, SLOW_RANDOM))
def test_light_model_with_random_weights_matches_onnxruntime(name):
    model = randomize_weights(load_light(name), seed=0)
    # Softmax saturates or flattens; its inputs show whether the network itself agrees.
    model = expose_outputs(model, logits_names(model))
    inputs = light_random_input(model, seed=0)
    want = ort_run(model, inputs, threads=1)

    # The check is only informative if the random network has spread-out logits.
    pre = want[logits_names(model)[0]] if logits_names(model) else next(iter(want.values()))
    assert np.isfinite(pre).all() and 0.3 < pre.std() < 100, f"{name}: uninformative logits, std {pre.std():.3g}"

    graph = convert_model(model)
    got = reference.run(graph, inputs)
    _assert_outputs_close(got, want, RTOL, ATOL_OF_SCALE, name)
