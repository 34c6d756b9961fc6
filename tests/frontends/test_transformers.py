"""End to end on transformers: a BERT-like encoder (padding mask) and a GPT-2-like
decoder (causal mask), built with `transformers` from a config with random weights,
exported by torch.onnx (dynamo, opset 18), imported and run with the reference
evaluator, and compared with onnxruntime on the same inputs.

Besides agreement with onnxruntime, two properties that hold whatever the weights
check the masks on the einfuse side alone: padded tokens cannot influence the
other positions of BERT, and later tokens cannot influence earlier GPT-2 logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.testing.models import metadata, op_types, ort_run, token_inputs

# float32 on both sides, different summation orders in K <= 1536-term matmuls and a
# float32 erf/tanh; LayerNorm keeps activations O(1) through the six layers, so the
# differences stay near 1e-5 absolute. 1e-4 leaves a margin without hiding a wrong
# mask or a missing bias (those move values by 1e-2 or more).
RTOL = 1e-4
ATOL = 1e-4

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bert_graph(bert_like_model):
    return convert_model(bert_like_model)


@pytest.fixture(scope="module")
def gpt2_graph(gpt2_like_model):
    return convert_model(gpt2_like_model)


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), f"{what}: outputs {list(got)} != {list(want)}"
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=f"{what}: output {name!r}")


# ------------------------------------------------------------------- the export


@pytest.mark.parametrize("which", ["bert_like_model", "gpt2_like_model"])
def test_export_is_static_standard_onnx(which, request):
    model = request.getfixturevalue(which)
    assert {(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")} == {("", 18)}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), op_types(model)
    for vi in list(model.graph.input) + list(model.graph.output):
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    assert "dynamo=True" in metadata(model)["exporter"]
    # The attention pattern the passes will look for is there, once per layer.
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 6


def test_token_inputs_pad_the_bert_mask(bert_like_model):
    inputs = token_inputs(bert_like_model, seed=0)
    mask = inputs["attention_mask"]
    assert mask.shape == (1, 128) and mask.dtype == np.int64
    assert 0 < mask.sum() < mask.size and mask[0, -1] == 0 and mask[0, 0] == 1
    assert inputs["input_ids"].max() < 1000


# ------------------------------------------------------------------------- BERT


def test_bert_like_matches_onnxruntime(bert_like_model, bert_graph):
    inputs = token_inputs(bert_like_model, seed=0)
    want = ort_run(bert_like_model, inputs, threads=1)
    got = reference.run(bert_graph, inputs)
    _assert_close(got, want, "bert_like")


def test_bert_like_ignores_padded_tokens(bert_like_model, bert_graph):
    inputs = token_inputs(bert_like_model, seed=1)
    keep = inputs["attention_mask"][0] == 1
    changed = dict(inputs)
    ids = inputs["input_ids"].copy()
    ids[0, ~keep] = (ids[0, ~keep] + 1) % 1000
    changed["input_ids"] = ids
    a = reference.run(bert_graph, inputs)["last_hidden_state"][0]
    b = reference.run(bert_graph, changed)["last_hidden_state"][0]
    # Masked scores get the float32 minimum added, so exp() gives exactly 0.
    np.testing.assert_allclose(a[keep], b[keep], rtol=0, atol=1e-6)
    assert np.abs(a[~keep] - b[~keep]).max() > 1e-2  # the padded rows themselves do change


# ------------------------------------------------------------------------ GPT-2


def test_gpt2_like_matches_onnxruntime(gpt2_like_model, gpt2_graph):
    inputs = token_inputs(gpt2_like_model, seed=0)
    want = ort_run(gpt2_like_model, inputs, threads=1)
    got = reference.run(gpt2_graph, inputs)
    _assert_close(got, want, "gpt2_like")


def test_gpt2_like_is_causal(gpt2_like_model, gpt2_graph):
    inputs = token_inputs(gpt2_like_model, seed=1)
    ids = inputs["input_ids"].copy()
    ids[0, 100:] = (ids[0, 100:] + 1) % 1000
    a = reference.run(gpt2_graph, inputs)["logits"][0]
    b = reference.run(gpt2_graph, {"input_ids": ids})["logits"][0]
    np.testing.assert_allclose(a[:100], b[:100], rtol=0, atol=1e-6)
    assert np.abs(a[100:] - b[100:]).max() > 1e-2
