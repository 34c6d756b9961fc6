"""The shrinker: cutting graphs at values (fed with the reference's values), smaller
shapes, and reproducer folders that replay (API and `einfuse fuzz --replay`)."""

from __future__ import annotations

import json

import numpy as np

from einfuse.cli import main
from einfuse.codegen import reference
from einfuse.ir.parser import parse
from einfuse.ir.verifier import verify
from einfuse.testing.check import check
from einfuse.testing.pytest_plugin import KernelBackend
from einfuse.testing.shrink import keep_nodes, load_reproducer, replay, shrink, write_reproducer
from einfuse.testing.strategies import random_inputs

CHAIN = """
graph @g(%x: f32[B,6]) -> (%y: f32[B,1], %t: f32[B,6]) {
  %a = exp(%x) : f32[B,6]
  %b = mul(%a, %x) : f32[B,6]
  %t = tanh(%b) : f32[B,6]
  %s = reduce_sum(%b) {axes=(1,), keepdims=true} : f32[B,1]
  %y = relu(%s) : f32[B,1]
  return %y, %t
}
"""


def _bad_sum(x, *, axes, keepdims, noop_with_empty_axes):
    (a,) = axes
    return np.sum(np.take(x, range(x.shape[a] - 1), axis=a), axis=a, keepdims=keepdims).astype(x.dtype)


BUGGY = KernelBackend({"reduce_sum": _bad_sum}, "buggy")


def _fails(g, ins):
    return not check(g, backends=[BUGGY], inputs=ins, onnx=False, localize=False, raise_on_failure=False).ok


def test_keep_nodes_feeds_cut_values_from_the_reference():
    g = parse(CHAIN)
    inputs = random_inputs(g, 0, dims={"B": 2})
    small, ins = keep_nodes(g, inputs, [3])  # just the reduce_sum
    verify(small)
    assert [n.op for n in small.nodes] == ["reduce_sum"]
    assert [v.name for v in small.inputs] == ["b"]
    want = reference.run_values(g, inputs)
    np.testing.assert_array_equal(ins["b"], want[g.nodes[1].outputs[0]])
    np.testing.assert_allclose(reference.run(small, ins)["s"], want[g.nodes[3].outputs[0]], rtol=1e-6)


def test_shrink_finds_the_one_node_and_smaller_shapes():
    g = parse(CHAIN)
    inputs = random_inputs(g, 0, dims={"B": 3})
    assert _fails(g, inputs)
    small, ins = shrink(g, inputs, _fails)
    assert [n.op for n in small.nodes] == ["reduce_sum"]
    assert ins[small.inputs[0].name].shape[0] == 1  # B shrunk to 1
    assert _fails(small, ins)


def test_shrink_keeps_a_graph_nothing_smaller_reproduces():
    g = parse(CHAIN)
    inputs = random_inputs(g, 0)
    small, ins = shrink(g, inputs, lambda gg, ii: len(gg.nodes) == 5)
    # the same nodes; only sizes shrank (B -> 1, the static 6 -> 1 by re-typing)
    assert [n.op for n in small.nodes] == [n.op for n in g.nodes]
    assert ins["x"].shape == (1, 1) and small.inputs[0].shape[1] == 1


def test_reproducer_round_trip_and_replay(tmp_path, capsys):
    g = parse(CHAIN)
    inputs = random_inputs(g, 0, dims={"B": 2})
    result = check(g, backends=["reference"], inputs=inputs, raise_on_failure=False)
    path = write_reproducer(
        tmp_path, g, inputs, backend="reference", message=str(result), signature=("reference", "mismatch", "reduce_sum")
    )
    assert {p.name for p in path.iterdir()} == {"graph.ir", "graph.onnx", "inputs.npz", "repro.json", "README.txt"}
    meta = json.loads((path / "repro.json").read_text())
    assert meta["command"] == f"einfuse fuzz --replay {path}"
    g2, ins2, _ = load_reproducer(path)
    assert g2.structurally_equal(g)
    for k in inputs:
        np.testing.assert_array_equal(ins2[k], inputs[k])
    assert replay(path).ok
    assert main(["fuzz", "--replay", str(path)]) == 0
    assert "ok" in capsys.readouterr().out
