"""The verifier names the node at fault and shows nearby IR."""

import numpy as np
import pytest

from einfuse.errors import ShapeError, VerifyError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Attrs, Graph, Node, Value
from einfuse.ir.types import DType, TensorType, sym
from einfuse.ir.verifier import verify


def chain():
    g = Graph()
    x = g.add_input("x", TensorType((sym("B"), 4), DType.f32))
    b = Builder(g)
    y = b.op("relu", [b.op("add", [x, x], name="first")], name="second")
    g.outputs = [y]
    return g


def test_valid_graph_passes():
    verify(chain())


def test_wrong_output_type_is_reported_with_context():
    g = chain()
    n = g.nodes[1]
    g.nodes[1] = n.with_(outputs=(Value("bad", TensorType((3, 4), DType.f32)),))
    g.outputs = [g.nodes[1].outputs[0]]
    with pytest.raises(VerifyError, match=r"relu %bad \(node 'second'\): output %bad has type f32\[3,4\]") as e:
        verify(g)
    assert "> %bad = relu" in str(e.value)


def test_use_before_definition():
    g = chain()
    g.nodes.reverse()
    g._invalidate()
    with pytest.raises(VerifyError, match="not defined before this node"):
        verify(g)


def test_unknown_op_and_bad_attribute():
    g = chain()
    x = g.inputs[0]
    g.nodes.append(Node("frobnicate", (x,), (Value("f", x.type),)))
    with pytest.raises(VerifyError, match="unknown op 'frobnicate'"):
        verify(g)
    g = chain()
    x = g.inputs[0]
    g.nodes.append(Node("leaky_relu", (x,), (Value("l", x.type),), Attrs(alpha="high")))
    with pytest.raises(VerifyError, match="attribute 'alpha' should be float"):
        verify(g)


def test_duplicate_names_and_undefined_output():
    g = chain()
    n = g.nodes[1]
    g.nodes[1] = n.with_(outputs=(Value("x", n.outputs[0].type),))
    with pytest.raises(VerifyError, match="defined twice"):
        verify(g)
    g = chain()
    g.outputs = [Value("ghost", g.outputs[0].type)]
    with pytest.raises(VerifyError, match="ghost"):
        verify(g)


def test_builder_refuses_mismatched_operands():
    g = Graph()
    x = g.add_input("x", TensorType((3, 4), DType.f32))
    c = g.add_constant("c", np.ones((5,), np.float32))
    with pytest.raises(ShapeError, match="cannot broadcast"):
        Builder(g).op("add", [x, c], name="bad_add")
    i = g.add_input("i", TensorType((3, 4), DType.i64))
    with pytest.raises(ShapeError, match="dtypes differ"):
        Builder(g).op("add", [x, i])


def test_to_networkx_edges():
    g = chain()
    nx = g.to_networkx()
    assert nx.number_of_nodes() == 2 and nx.number_of_edges() == 1
    assert g.users(g.inputs[0]) == [g.nodes[0]]
    assert g.producer(g.outputs[0]) is g.nodes[1]
