"""The ONNX importer's own checks: unsupported ops listed at once, opsets, symbols, names."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from einfuse.codegen import reference
from einfuse.errors import ModelLoadError, UnsupportedOpError
from einfuse.frontends.onnx import convert_model
from einfuse.ir.printer import print_graph


def model(nodes, inputs, outputs, opset=17, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def test_every_unsupported_op_is_listed_in_one_error():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("FooBar", ["a"], ["b"], name="foo1"),
        helper.make_node("FooBar", ["b"], ["c"], name="foo2"),
        helper.make_node("Baz", ["c"], ["y"], name="baz", domain="com.example"),
    ]
    m = model(nodes, [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(UnsupportedOpError, match=r"2 unsupported op type\(s\): 'FooBar' \('foo1', 'foo2'\); 'com.example.Baz' \('baz'\)"):
        convert_model(m)


def test_opset_out_of_range_is_refused():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=3)
    with pytest.raises(UnsupportedOpError, match="opset 3"):
        convert_model(m)


def test_reading_an_undefined_value_names_the_node():
    m = model([helper.make_node("Relu", ["nowhere"], ["y"], name="r0")], [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(ModelLoadError, match=r"Relu node 'r0' reads 'nowhere', which is not defined"):
        convert_model(m)


def test_hostile_dim_params_become_safe_symbols():
    m = model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [vi("x", ["batch size", "__import__('os').system('x')"])],
        [vi("y", ["batch size", "__import__('os').system('x')"])],
    )
    g = convert_model(m)
    text = print_graph(g)
    assert "f32[batch_size,__import____os___system__x__]" in text
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    np.testing.assert_array_equal(reference.run(g, {"x": x})["y"], np.maximum(x, 0))


def test_missing_graph_output_is_reported():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("z", [2])])
    with pytest.raises(ModelLoadError, match="graph output 'z' is never computed"):
        convert_model(m)


def test_bind_inputs_turns_an_input_into_a_constant():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")]
    m = model(nodes, [vi("x", [2, 3]), vi("shape", [2], TensorProto.INT64)], [vi("y", [3, 2])])
    g = convert_model(m, bind_inputs={"shape": np.array([3, 2], np.int64)})
    assert [v.name for v in g.inputs] == ["x"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(reference.run(g, {"x": x})["y"], x.reshape(3, 2))
