"""Every test model compiled with the TVM backend (target llvm) against the reference
evaluator and onnxruntime: the nine light model-zoo graphs with seeded random weights,
the BERT-like encoder and the GPT-2-like decoder.

Each model must run entirely on TVM (no group falls back to the reference backend),
and in the transformers every attention layer must be a 1-pass attention cascade
compiled by TVM. Compiles share one kernel cache per test session; the first compile
of the large models takes tens of seconds on this 2-core machine, so they are `slow`.
"""

from __future__ import annotations

import numpy as np
import pytest

import einfuse
from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.testing.models import (
    LIGHT_MODELS,
    expose_outputs,
    light_random_input,
    load_light,
    logits_names,
    ort_run,
    randomize_weights,
    token_inputs,
)

pytestmark = pytest.mark.slow

# Kernels sum in other orders than numpy (register tiles, split reductions) and the
# softmax of the attention cascade is the online one: errors relative to the output's
# scale stay near 1e-6 per layer; 1e-3 relative / 1e-4 of the scale leaves a margin
# over ~120 layers (the same bound as the reference-vs-onnxruntime model tests).
RTOL = 1e-3
ATOL_OF_SCALE = 1e-4


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def _close(got: dict, want: dict, what: str) -> None:
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, f"{what}: output {name!r}"
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        np.testing.assert_allclose(
            actual, expected, rtol=RTOL, atol=ATOL_OF_SCALE * max(scale, 1e-30), err_msg=f"{what}: output {name!r}"
        )


def _compile(model, kernel_cache):
    compiled = einfuse.compile(model, target="llvm", cache_dir=kernel_cache, progress=False)
    assert compiled.report.fallbacks == [], str(compiled.report)
    return compiled


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_on_tvm_matches_reference_and_onnxruntime(name, kernel_cache):
    model = randomize_weights(load_light(name), seed=0)
    model = expose_outputs(model, logits_names(model))  # logits: softmax would hide errors
    inputs = light_random_input(model, seed=0)
    compiled = _compile(model, kernel_cache)
    got = compiled(**inputs)
    _close(got, reference.run(convert_model(model), inputs), f"{name} vs reference")
    _close(got, ort_run(model, inputs, threads=1), f"{name} vs onnxruntime")


def _attention_launches(compiled) -> list[dict]:
    """The kernel info of each launch that runs an attention cascade."""
    ex = compiled.executable
    return [ex.kernels[ln.kernel].info for ln in ex.launches if "einsum_cascade" in ex.kernels[ln.kernel].info["ops"]]


@pytest.mark.parametrize("which", ["bert_like_model", "gpt2_like_model"])
def test_transformer_on_tvm_lowers_every_attention_layer_to_one_pass(which, request, kernel_cache):
    from einfuse.ir.einsum import count_passes, parse_cascade
    from einfuse.passes.pipeline import optimize

    model = request.getfixturevalue(which)
    inputs = token_inputs(model, seed=0)
    graph = convert_model(model)
    want = reference.run(graph, inputs)
    # What the compiler's pipeline makes of the six attention layers: 1-pass cascades.
    optimized = optimize(convert_model(model))
    cascades = [m for n in optimized.nodes for m in n.attrs["region"].nodes if m.op == "einsum_cascade"]
    assert len(cascades) == 6
    assert all(count_passes(parse_cascade(c.attrs["cascade"])) == 1 for c in cascades)
    # ...and the compiled model runs each of them as a TVM kernel.
    compiled = _compile(model, kernel_cache)
    launches = _attention_launches(compiled)
    assert len(launches) == 6 and all(info["backend"] == "tvm" for info in launches), launches
    got = compiled(**inputs)
    _close(got, want, f"{which} vs reference")
    _close(got, ort_run(model, inputs, threads=1), f"{which} vs onnxruntime")
