"""The differential checker: dtype-aware comparison, whole-graph backend runs, the
onnxruntime oracle, and localisation of the first divergent node. The property tests
at the end run the toolkit over every backend (reference, tvm, onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from einfuse.ir.parser import parse
from einfuse.ir.types import DType
from einfuse.testing.check import CheckFailure, Tolerance, check, compare, partition, singleton_fused
from einfuse.testing.pytest_plugin import KernelBackend, backend_property, kernel_property
from tests.testing.test_regressions import OPEN_BUGS, TVM_OPEN_BUGS

F32 = DType.f32


def test_compare_floats_by_ulps_and_magnitude():
    want = np.array([1.0, 100.0, 0.0], np.float32)
    tol = Tolerance(ulps=4)
    eps = np.finfo(np.float32).eps
    assert compare(want * (1 + 2 * eps), want, F32, tol) is None
    d = compare(want + np.float32(1e-3), want, F32, tol)
    assert d is not None and d.bad == 3
    # an absolute error the size of the values it came from passes with that scale
    assert compare(np.array([1e-5], np.float32), np.array([0.0], np.float32), F32, tol, scale=1e3) is None
    assert compare(np.array([1e-5], np.float32), np.array([0.0], np.float32), F32, tol, scale=1.0) is not None


def test_compare_special_values():
    tol = Tolerance(ulps=4)
    nan, inf = np.nan, np.inf
    assert compare(np.array([nan, inf, -0.0], np.float32), np.array([nan, inf, 0.0], np.float32), F32, tol) is None
    assert compare(np.array([1.0], np.float32), np.array([nan], np.float32), F32, tol) is not None
    assert compare(np.array([-inf], np.float32), np.array([inf], np.float32), F32, tol) is not None
    assert compare(np.array([1.0], np.float32), np.array([1.0], np.float64), DType.f64, tol).note.startswith("dtype")


def test_compare_integers_exact_and_quantized_by_one_step():
    a, b = np.array([3, 4], np.uint8), np.array([3, 5], np.uint8)
    assert compare(a, b, DType.u8, Tolerance()) is not None
    assert compare(a, b, DType.u8, Tolerance(steps=1)) is None


GRAPH = """
graph @g(%x: f32[B,4], %w: f32[4,3]) -> (%y: f32[B,3]) {
  %m = matmul(%x, %w) : f32[B,3]
  %s = reduce_sum(%m) {axes=(1), keepdims=true} : f32[B,1]
  %y = sub(%m, %s) : f32[B,3]
  return %y
}
"""


def _off_by_one(x, *, axes, keepdims, noop_with_empty_axes):
    """reduce_sum that skips the last element of the (single) reduced axis."""
    (a,) = axes
    return np.sum(np.take(x, range(x.shape[a] - 1), axis=a), axis=a, keepdims=keepdims).astype(x.dtype)


def test_check_passes_a_correct_backend_and_reports_onnxruntime():
    result = check(parse(GRAPH), backends=["reference"], dims={"B": 2})
    assert result.ok and result.backends == ["reference", "onnxruntime"]
    assert not result.notes


def test_check_names_the_first_divergent_node():
    buggy = KernelBackend({"reduce_sum": _off_by_one}, name="buggy")
    with pytest.raises(CheckFailure) as e:
        check(parse(GRAPH), backends=[buggy], dims={"B": 2})
    result = e.value.result
    assert result.signature() == ("buggy", "mismatch", "reduce_sum")
    assert "first divergent node: %s = reduce_sum(%m)" in str(e.value)
    assert "graph @g" in str(e.value)  # the failing graph is shown


def test_check_reports_crashes_with_the_backend():
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    result = check(parse(GRAPH), backends=[KernelBackend({"sub": boom}, "b")], raise_on_failure=False, onnx=False)
    assert not result.ok and "kaboom" in str(result) and result.signature() == ("b", "crash", "sub", "RuntimeError")
    assert "first crashing node: %y = sub(%m, %s)" in str(result)


def test_check_takes_a_fused_node():
    g = parse(GRAPH)
    node = singleton_fused(g.nodes[0])
    assert node.op == "fused" and node.attrs["kind"] == "out_fusable"
    assert check(node, backends=["reference"]).ok


def test_partition_puts_every_node_in_a_fused_group():
    g = partition(parse(GRAPH))
    assert {n.op for n in g.nodes} == {"fused"}
    assert [v.name for v in g.outputs] == ["y"]


def test_f64_values_computed_in_f32_get_f32_tolerance():
    g = parse("""
    graph @g(%x: f32[3]) -> (%y: f64[3]) {
      %e = exp(%x) : f32[3]
      %y = cast(%e) {to=f64} : f64[3]
      return %y
    }
    """)

    def exp_f32_ulp_off(x):
        return np.nextafter(np.exp(x), np.float32(np.inf)).astype(np.float32)

    assert check(g, backends=[KernelBackend({"exp": exp_f32_ulp_off})], onnx=False).ok


def test_a_pass_is_checked_through_passes():
    from dataclasses import dataclass
    from typing import ClassVar

    from einfuse.passes import Pass

    @dataclass(frozen=True)
    class NegateOutputs(Pass):
        """Breaks the graph: negates the last node's result."""

        name: ClassVar[str] = "negate-outputs"

        def run(self, graph):
            from einfuse.ir.builder import Builder

            last = graph.outputs[0]
            graph.outputs = [Builder(graph).op("neg", [last])]
            return graph

    with pytest.raises(CheckFailure, match="reference: output"):
        check(parse(GRAPH), backends=["reference"], passes=[NegateOutputs()], onnx=False)


# -- the toolkit on every backend (bounded by the einfuse-ci profile) ----------------------


def _reference_ops():
    from einfuse.testing.strategies import covered_ops

    return sorted(covered_ops() - set(OPEN_BUGS))


test_reference_backend = backend_property("reference", ops=_reference_ops, max_nodes=6)
test_reference_against_onnxruntime = backend_property(
    "reference", ops=_reference_ops, max_nodes=6, onnx=True, dtypes=(DType.f32, DType.f64)
)
test_kernel_property_helper = kernel_property("relu", lambda x: np.maximum(x, 0).astype(x.dtype))


def _tvm_ops():
    from einfuse.testing.fuzz import backend_ops
    from einfuse.testing.strategies import covered_ops

    return sorted((backend_ops("tvm") & covered_ops()) - set(TVM_OPEN_BUGS))


test_tvm_backend = pytest.mark.slow(backend_property("tvm", ops=_tvm_ops, max_nodes=4, onnx=True, max_examples=15))


def test_check_feeds_pre_packed_weights_to_tvm_kernels():
    """A TVM kernel may take a constant weight pre-packed (Kernel.meta["prepack"]): the
    checker packs it once, as the runtime does, instead of passing the raw array."""
    from einfuse.codegen import reference
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.types import TensorType
    from einfuse.testing.check import compile_graph

    rng = np.random.default_rng(0)
    g = Graph("g")
    x = g.add_input("x", TensorType((4, 64), F32))
    img = g.add_input("img", TensorType((1, 8, 10, 10), F32))
    b = Builder(g)
    w = b.const("w", (rng.standard_normal((64, 48)) * 0.1).astype(np.float32))
    bias = b.const("bias", rng.standard_normal(48).astype(np.float32))
    y = b.op("relu", [b.op("add", [b.op("matmul", [x, w]), bias])])
    cw = b.const("cw", (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32))
    conv_attrs = {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "strides": (1, 1), "dilations": (1, 1), "group": 1}
    c = b.op("conv", [img, cw], **conv_attrs)
    g.outputs = [y, c]
    inputs = {
        "x": rng.standard_normal((4, 64)).astype(np.float32),
        "img": rng.standard_normal((1, 8, 10, 10)).astype(np.float32),
    }
    compiled = compile_graph(g, "tvm")
    got = compiled(inputs)
    assert any((k.meta or {}).get("prepack") for k in compiled.kernels.values()), "no kernel asked for packed weights"
    assert compiled.packed, "the packed weights were not fed"
    want = reference.run(g, inputs)
    for v in g.outputs:
        np.testing.assert_allclose(got[v.name], want[v.name], rtol=1e-4, atol=1e-4)
    assert check(g, backends=["tvm"], inputs=inputs).ok
