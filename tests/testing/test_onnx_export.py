"""Graph -> ONNX export: valid models, symbolic dims as dim_params, 0-d constants, hostile
names, a clean error for ops without an ONNX form, and round trips through the importer
and onnxruntime on random graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.errors import UnsupportedOpError
from einfuse.frontends.onnx import convert_model
from einfuse.ir.parser import parse
from einfuse.ir.types import DType
from einfuse.testing.check import TOLERANCES, compare
from einfuse.testing.onnx_export import EXPORT_OPSET, onnx_op_name, run_onnxruntime, to_onnx
from einfuse.testing.strategies import covered_ops, graphs, random_inputs
from tests.testing.test_regressions import OPEN_BUGS


def test_op_names():
    assert onnx_op_name("reduce_sum") == "ReduceSum"
    assert onnx_op_name("is_nan") == "IsNaN"
    assert onnx_op_name("batch_norm") == "BatchNormalization"
    assert onnx_op_name("matmul") == "MatMul"


def test_export_keeps_symbols_scalars_and_static_operands():
    g = parse("""
    graph @g(%x: f32[B,3,4]) -> (%y: f32[B,4], %z: f32[]) {
      @c = const [0.5] : f32[]
      %r = reduce_sum(%x) {axes=(1,), keepdims=false} : f32[B,4]
      %y = mul(%r, @c) : f32[B,4]
      %z = thresholded_relu(@c) {alpha=0.25} : f32[]
      return %y, %z
    }
    """)
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == EXPORT_OPSET
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y, z = run_onnxruntime(model, {"x": x})
    np.testing.assert_allclose(y, x.sum(axis=1) * 0.5, rtol=1e-6)
    assert z.shape == ()  # a 0-d constant stays 0-d


def test_hostile_names_and_outputs_that_are_inputs():
    g = parse("""
    graph @g(%"a\\"b": f32[2], %"line\\nbreak": f32[2]) -> (%"a\\"b": f32[2], %"x; import os": f32[2]) {
      %"x; import os" = add(%"a\\"b", %"line\\nbreak") : f32[2]
      return %"a\\"b", %"x; import os"
    }
    """)
    model = to_onnx(g)
    onnx.checker.check_model(model)
    a, b = np.array([1, 2], np.float32), np.array([3, 4], np.float32)
    out = run_onnxruntime(model, {'a"b': a, "line\nbreak": b})
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], a + b)


def test_ops_without_an_onnx_form_raise_cleanly():
    g = parse("""
    graph @g(%x: f32[2,4], %s: f32[4]) -> (%y: f32[2,4]) {
      %y = rms_norm(%x, %s) : f32[2,4]
      return %y
    }
    """)
    with pytest.raises(UnsupportedOpError, match="rms_norm %y: cannot export to ONNX"):
        to_onnx(g)


@settings(suppress_health_check=list(HealthCheck), deadline=None)
@given(g=graphs(max_nodes=6, ops=sorted(covered_ops() - set(OPEN_BUGS))), seed=st.integers(0, 2**16))
def test_export_round_trips_through_the_importer(g, seed):
    try:
        model = to_onnx(g)
    except UnsupportedOpError:
        return
    onnx.checker.check_model(model)
    inputs = random_inputs(g, seed)
    back = convert_model(model)
    want = reference.run(g, inputs)
    got = reference.run(back, inputs)
    for v, w in zip(back.outputs, g.outputs):
        d = compare(got[v.name], want[w.name], w.dtype, TOLERANCES.get(w.dtype, TOLERANCES[DType.f32]), scale=10.0)
        assert d is None, f"{w.name}: {d}\n{g}"


@pytest.mark.parametrize("causal", [False, True])
def test_attention_exports_at_opset_23_and_matches_onnxruntime(causal):
    # 4 query heads over 2 key/value heads (grouped), a float mask, optionally causal
    flag = str(causal).lower()
    g = parse(f"""
    graph @g(%q: f32[1,4,3,2], %k: f32[1,2,5,2], %v: f32[1,2,5,3], %m: f32[1,1,3,5]) -> (%y: f32[1,4,3,3]) {{
      %y = attention(%q, %k, %v, %m) {{is_causal={flag}, scale=0.7, softmax_precision=f32}} : f32[1,4,3,3]
      return %y
    }}
    """)
    model = to_onnx(g)
    assert model.opset_import[0].version == 23 and model.graph.node[0].op_type == "Attention"
    inputs = random_inputs(g, seed=1)
    (got,) = run_onnxruntime(model, inputs)
    want = reference.run(g, inputs)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
