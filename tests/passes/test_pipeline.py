"""The default pipeline and `optimize`: its passes, extra passes before `fuse`, a loud
failure when a pass is missing, a property test (it keeps reference outputs on random
graphs), the test models end to end (light model zoo with random weights, BERT-like,
GPT-2-like: same outputs, every node in a fused group), and `einfuse explain`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from einfuse import cli
from einfuse.codegen import reference
from einfuse.errors import EinfuseError, ExecutionError
from einfuse.frontends.onnx import convert_model
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.ops import ELEMENTWISE, REGISTRY, get_op
from einfuse.ir.parser import parse
from einfuse.ir.types import DType, TensorType
from einfuse.passes import Pass, registered_passes
from einfuse.passes import pipeline as pipeline_module
from einfuse.passes.fuse import fused_groups
from einfuse.passes.pipeline import DEFAULT_PIPELINE, default_pipeline, optimize, pipeline_passes
from einfuse.testing.check import check
from einfuse.testing.models import (
    LIGHT_MODELS,
    expose_outputs,
    light_model_dir,
    light_random_input,
    load_light,
    logits_names,
    randomize_weights,
    token_inputs,
)
from einfuse.testing.strategies import RECIPES, graphs, random_inputs

# The pipeline reorders float arithmetic (batch norms folded into weights in float64
# then rounded once, sibling matmuls concatenated, affine chains merged): differences
# are rounding-level per layer, compounding over ~100 layers to ~1e-5 of the activation
# scale. 1e-4 of the output's scale still catches a dropped bias or a wrong fold.
RTOL = 1e-4
ATOL_OF_SCALE = 1e-4

# Over 20 s on this 2-core machine (VGG-19: 140 M weights to draw, fold and run twice).
SLOW = {"light_vgg19"}


def _assert_close(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), f"{what}: outputs {list(got)} != {list(want)}"
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, (what, name)
        if not DType.from_numpy(expected.dtype).is_float:
            np.testing.assert_array_equal(actual, expected, err_msg=f"{what}: {name!r}")
            continue
        # float64 copies: numpy's testing functions do not know bfloat16 and float8.
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
        finite = expected[np.isfinite(expected)]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
        np.testing.assert_allclose(
            actual, expected, rtol=RTOL, atol=ATOL_OF_SCALE * scale, equal_nan=True, err_msg=f"{what}: {name!r}"
        )


def _assert_all_fused(graph: Graph, what: str) -> None:
    loose = [n.label for n in graph.nodes if n.op != "fused"]
    assert not loose, f"{what}: nodes outside fused groups: {loose}"


# -- the pipeline ------------------------------------------------------------------------------


def test_default_pipeline_is_one_flat_list_of_registered_passes_ending_in_fuse():
    names = default_pipeline()
    assert names == list(DEFAULT_PIPELINE)
    assert names == [
        "fold-constants",
        "fold-shape-computations",
        "canonicalize",
        "recognize-attention",
        "fold-batchnorm",
        "fuse-sibling-matmuls",
        "lower-attention",
        "eliminate-common-subexpressions",
        "eliminate-dead-code",
        "fuse",
    ]
    assert set(names) <= set(registered_passes())
    names.append("mine")  # a fresh list each time: editing it changes nothing else
    assert default_pipeline()[-1] == "fuse"


def test_a_missing_pass_fails_loudly(monkeypatch):
    known = registered_passes()
    del known["canonicalize"]
    monkeypatch.setattr(pipeline_module, "registered_passes", lambda: known)
    with pytest.raises(EinfuseError, match="not registered: canonicalize") as e:
        optimize(parse(SMALL))
    assert "fold-constants" in e.value.hint


@dataclass(frozen=True)
class Spy(Pass):
    """Records the ops it sees (a stand-in for a user's fusion pass)."""

    name: ClassVar[str] = "spy"
    seen: list

    def run(self, graph: Graph) -> Graph:
        self.seen.append([n.op for n in graph.nodes])
        return graph


SMALL = """
    graph @main(%x: f32[B,8]) -> (%y: f32[B,8]) {
      @two = const [2.0] : f32[]
      %a = div(%x, @two) : f32[B,8]
      %i = identity(%a) : f32[B,8]
      %y = relu(%i) : f32[B,8]
      return %y
    }
"""


def test_extra_passes_run_just_before_fuse(tmp_path):
    spy = Spy([])
    records = []
    out = optimize(
        parse(SMALL), verify=True, dump=tmp_path, instrument=lambda r, g: records.append(r.name), extra=[spy]
    )
    assert records == [*DEFAULT_PIPELINE[:-1], "spy", "fuse"]
    assert pipeline_passes([spy])[-2:] == [spy, "fuse"]
    # By then canonicalize turned the division by two into a mul and dropped the identity.
    assert spy.seen == [["mul", "relu"]]
    assert [n.op for n in out.nodes] == ["fused"]
    assert [n.op for n in out.nodes[0].attrs["region"].nodes] == ["mul", "relu"]
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps[0] == "00-input.ir" and dumps[-1] == "11-fuse.ir" and len(dumps) == 12


# -- property: the pipeline keeps reference outputs -----------------------------------------

get_op("add")  # loads every op module
# Every op the graph strategies can draw (nonzero, compress and unique, left out until the
# verifier let data-dependent dims match a folded constant operand, have no recipe yet:
# test_data_dependent_ops_after_folded_operands covers them).
RANDOM_GRAPH_OPS = sorted(REGISTRY)


@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: the hypothesis profile (tests/conftest.py)
@given(g=graphs(max_nodes=8, ops=RANDOM_GRAPH_OPS), seed=st.integers(0, 2**16))
def test_default_pipeline_preserves_reference_outputs(g, seed):
    inputs = random_inputs(g, seed)  # in each input's domain (no log of a negative number)
    try:
        want = reference.run(g, inputs)
    except ExecutionError:
        assume(False)  # e.g. an index out of range for these sizes: nothing to compare
    out = optimize(g, verify=True)
    _assert_all_fused(out, "random graph")
    _assert_close(reference.run(out, inputs), want, "random graph")


def test_data_dependent_ops_after_folded_operands():
    # fold-constants turns the operands of nonzero, unique and compress into constants: their
    # inferred shapes become static while the nodes keep their fresh symbols (verifier-legal).
    g = Graph()
    x = g.add_input("x", TensorType((4, 3), DType.f32))
    b = Builder(g)
    a = g.add_constant("a", np.array([[1, 0, 2], [0, 0, 3]], np.float32))
    c = g.add_constant("c", np.array([[1, 1, 0], [0, 2, 3]], np.float32))
    s = b.op("sub", [a, c])
    nz = b.op("nonzero", [s])
    uniq = b.op("unique", [s], sorted=True, axis=1)
    rows = b.op("greater", [b.op("reduce_max", [s], axes=(1,), keepdims=False), g.add_constant("h", np.float32(0))])
    kept = b.op("compress", [b.op("relu", [x]), b.op("concat", [rows, rows], axis=0)], axis=0)
    g.outputs = [nz, kept, *uniq]
    inputs = {"x": np.arange(12, dtype=np.float32).reshape(4, 3) - 5}
    want = reference.run(g, inputs)
    out = optimize(g, verify=True)
    _assert_all_fused(out, "data-dependent ops")
    ops = sorted(m.op for n in out.nodes for m in n.attrs["region"].nodes)
    assert ops == ["compress", "nonzero", "relu", "unique"]  # sub, reduce_max, greater, concat folded
    got = reference.run(out, inputs)
    assert [got[k].shape for k in want] == [(2, 3), (2, 3), (2, 3), (3,), (3,), (3,)]
    for name, expected in want.items():
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


# -- what fusion assumes of op families --------------------------------------------------------

# The fuse pass runs elementwise ops in one loop nest with their neighbours, a kernel
# computing any tile of the output from the same tile of the operands. An op whose
# element depends on other elements (a whole-tensor min/max, a running sum) must not
# be registered as elementwise.
ELEMENTWISE_OPS = sorted(op for op in REGISTRY if get_op(op).family == ELEMENTWISE)


def test_every_elementwise_op_can_be_drawn():
    # The contract below is checked on graphs the strategies build: an elementwise op
    # without a recipe would escape it (dynamic_quantize_linear had none).
    assert ELEMENTWISE_OPS and not [op for op in ELEMENTWISE_OPS if op not in RECIPES]


def _halves(arr: np.ndarray, out_shape: tuple, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """An operand's parts for the two halves of the output along `axis` (an operand that
    broadcasts along it is given whole to both)."""
    k = axis - (len(out_shape) - arr.ndim)  # numpy aligns shapes on the right
    if k < 0 or arr.shape[k] == 1:
        return arr, arr
    cut = out_shape[axis] // 2
    index = [slice(None)] * arr.ndim
    lo, hi = list(index), list(index)
    lo[k], hi[k] = slice(0, cut), slice(cut, None)
    return arr[tuple(lo)], arr[tuple(hi)]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_elementwise_ops_compute_each_element_alone(data, seed):
    op = data.draw(st.sampled_from(ELEMENTWISE_OPS), label="op")
    g = data.draw(graphs(min_nodes=1, max_nodes=1, ops=[op], symbolic=False, hostile_names=False), label="graph")
    node = next(n for n in g.nodes if n.op == op)
    out_shape = node.outputs[0].type.static_shape
    assume(out_shape and max(out_shape) >= 2)
    axis = int(np.argmax(out_shape))
    inputs = random_inputs(g, seed)
    values = {**inputs, **{name: arr for name, (_, arr) in g.constants.items()}}
    operands = [None if x is None else values[x.name] for x in node.inputs]
    reference_of = get_op(op).reference
    whole = reference_of(*operands, **node.attrs)
    parts = [_halves(a, out_shape, axis) if a is not None else (None, None) for a in operands]
    lo = reference_of(*[p[0] for p in parts], **node.attrs)
    hi = reference_of(*[p[1] for p in parts], **node.attrs)
    wholes, los, his = (r if isinstance(r, tuple) else (r,) for r in (whole, lo, hi))
    for w, a, b in zip(wholes, los, his):
        np.testing.assert_array_equal(np.concatenate([a, b], axis=axis), w, err_msg=f"{op} on halves")


def test_dynamic_quantize_linear_stands_alone_after_an_elementwise_producer():
    # Each row has its own range, so a scale computed per row or per tile would differ
    # from the whole tensor's; 64 x 300 is more than one row, tile or vector.
    g = Graph()
    x = g.add_input("x", TensorType((64, 300), DType.f32))
    b = Builder(g)
    r = b.op("mul", [x, g.add_constant("k", np.float32(3.0))])
    g.outputs = list(b.op("dynamic_quantize_linear", [r]))
    inputs = {"x": np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)}
    inputs["x"] *= np.arange(1, 65, dtype=np.float32)[:, None]
    want = reference.run(g, inputs)
    out = optimize(g, verify=True)
    regions = {n.attrs["kind"]: [m.op for m in n.attrs["region"].nodes] for n in out.nodes}
    assert regions == {"elementwise": ["mul"], "opaque": ["dynamic_quantize_linear"]}
    got = reference.run(out, inputs)
    for name, expected in want.items():
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    check(g, backends=["reference", "tvm"], inputs=inputs, onnx=False)


# -- the test models ------------------------------------------------------------------------


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(LIGHT_MODELS))
def test_light_model_keeps_its_outputs_and_ends_fused(name):
    model = randomize_weights(load_light(name), seed=0)
    model = expose_outputs(model, logits_names(model))  # softmax alone can hide errors
    inputs = light_random_input(model, seed=0)
    graph = convert_model(model)
    before = [n.op for n in graph.nodes]
    want = reference.run(graph, inputs)
    out = optimize(graph, verify=True)
    _assert_all_fused(out, name)
    inner = [m.op for n in out.nodes for m in n.attrs["region"].nodes]
    assert inner.count("conv") == before.count("conv"), name
    if name == "light_resnet50":
        # Every batch norm folds into its conv; 53 conv groups (with bias, residual add
        # and relu), the classifier matmul, the two pools (the average pool taking the
        # reshape after it) and the softmax: at most 60 kernels.
        assert before.count("batch_norm") == 53 and "batch_norm" not in inner
        assert len(out.nodes) <= 60
        assert fused_groups(out) == {"out_fusable": 54, "reduce": 2, "normalize": 1}
    _assert_close(reference.run(out, inputs), want, name)


@pytest.mark.parametrize("which", ["bert_like_model", "gpt2_like_model"])
def test_transformer_keeps_its_outputs_and_ends_fused(which, request):
    model = request.getfixturevalue(which)
    inputs = token_inputs(model, seed=0)
    graph = convert_model(model)
    want = reference.run(graph, inputs)
    out = optimize(graph, verify=True)
    _assert_all_fused(out, which)
    groups = fused_groups(out)
    # Per layer: the QKV projection, the output projection (with the residual add) and the
    # two MLP matmuls (the first with GELU); QK^T, mask, softmax and P.V are one attention
    # cascade, lowered to the 1-pass form, in a group of its own.
    assert groups["out_fusable"] == 6 * 4 + 1, groups
    assert groups["opaque"] == 6, groups
    assert groups["normalize"] == 6 * 2 + 1, groups  # two layer norms per layer, one more
    cascades = [m for n in out.nodes for m in n.attrs["region"].nodes if m.op == "einsum_cascade"]
    assert len(cascades) == 6 and all(c.attrs["kv_tile"] > 0 for c in cascades)
    _assert_close(reference.run(out, inputs), want, which)


# -- einfuse explain ----------------------------------------------------------------------------


def _explain(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["explain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_explain_prints_each_pass_and_the_groups(capsys):
    path = str(light_model_dir() / "light_squeezenet.onnx")
    rc, out, err = _explain(capsys, path)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{path}: 71 nodes, 52 constants"
    steps = [line.split()[1] for line in lines if line[:3].strip().rstrip(".").isdigit()]
    assert steps == list(DEFAULT_PIPELINE)
    fuse_line = next(line for line in lines if line.startswith(f"{len(DEFAULT_PIPELINE):2d}. fuse"))
    assert "->    39 nodes" in fuse_line and " ms  changed" in fuse_line
    rules = lines[lines.index(fuse_line) + 1]
    assert rules.startswith("      rules: epilogue 28, one_anchor_per_group 22")
    assert lines[-1] == "fused groups: 39 (out_fusable 26, injective 8, reduce 4, normalize 1)"
    assert "---" not in out  # no diff without -v


def test_explain_verbose_shows_the_ir_diff_of_each_pass(capsys, tmp_path):
    # relu(x * 0.5 - 1) over a symbolic batch: canonicalize rewrites the sub, fuse groups all.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["m"]),
        helper.make_node("Sub", ["m", "one"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[half, one])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    rc, out, err = _explain(capsys, str(path), "-v", "--dims", "B=2", "--verify")
    assert rc == 0, err
    assert "--- before canonicalize\n+++ after canonicalize" in out
    assert "-  %s = sub(%m, @one)" in out
    assert "--- before fuse\n+++ after fuse" in out
    assert '+  %y = fused(%x) {kind="elementwise", region=graph @mul_add_relu(%x: f32[2,4]) -> (%y: f32[2,4]) {' in out
    assert out.rstrip().endswith("fused groups: 1 (elementwise 1)")
    # Passes that change nothing show no diff.
    assert "--- before fold-batchnorm" not in out

    rc, out, err = _explain(capsys, str(path))
    assert rc == 0 and "%x: f32[B,4]" not in out  # symbolic dims stay symbolic, no IR without -v


def test_explain_on_a_transformer(capsys, tmp_path, gpt2_like_model):
    path = tmp_path / "gpt2.onnx"
    onnx.save(gpt2_like_model, str(path))
    rc, out, err = _explain(capsys, str(path))
    assert rc == 0, err
    assert "fuse-sibling-matmuls" in out
    assert "outside fused groups" not in out
    lines = out.splitlines()
    assert lines.index("attention: 6 cascade(s) lowered") == len(lines) - 7
    assert lines[-8].startswith("fused groups: ")
    for line in lines[-6:]:
        assert re.fullmatch(r"  attention cascade %\S+: 3-pass -> 1-pass \(kv_tile=\d+, kv_splits=1\)", line), line


def test_explain_reports_a_bad_model_cleanly(capsys, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    rc, _, err = _explain(capsys, str(path))
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err


def test_explain_dump_writes_the_ir_after_every_pass(capsys, tmp_path):
    path = str(light_model_dir() / "light_squeezenet.onnx")
    rc, out, err = _explain(capsys, path, "--dump", str(tmp_path / "ir"))
    assert rc == 0, err
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files[0] == "00-input.ir" and files[-1] == f"{len(DEFAULT_PIPELINE):02d}-fuse.ir"
    assert len(files) == len(DEFAULT_PIPELINE) + 1
    last = (tmp_path / "ir" / files[-1]).read_text()
    assert last.startswith("graph @main(") and "= fused(" in last and "batch_norm" not in last
