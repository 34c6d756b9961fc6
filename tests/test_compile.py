"""einfuse.compile end to end: CompiledModel against the reference evaluator on small
models (reference and, when registered, TVM targets), symbolic dims, the report and the
profile, and the CLI's compile / run / bench / tune on a tiny model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import einfuse
from einfuse.cli import main
from einfuse.codegen import reference
from einfuse.codegen.backend import BACKENDS, _load_builtin
from einfuse.errors import InputError
from einfuse.frontends.onnx import convert_model

ROOT = Path(__file__).resolve().parents[1]


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def small_mlp(batch="B") -> onnx.ModelProto:
    """x[B,16] -> MatMul 16x32 + bias -> Relu -> MatMul 32x10 -> Softmax."""
    rng = np.random.default_rng(0)
    inits = [
        _init("w1", rng.standard_normal((16, 32)).astype(np.float32) / 4),
        _init("b1", rng.standard_normal(32).astype(np.float32)),
        _init("w2", rng.standard_normal((32, 10)).astype(np.float32) / 6),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def small_cnn() -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv 8x3x3x3 + Relu -> MaxPool 2 -> Conv 8x8x3x3 + residual Add ->
    GlobalAveragePool -> Flatten -> Gemm 8x10."""
    rng = np.random.default_rng(1)
    inits = [
        _init("c1w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5),
        _init("c1b", rng.standard_normal(8).astype(np.float32) / 10),
        _init("c2w", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8),
        _init("fw", rng.standard_normal((10, 8)).astype(np.float32) / 3),
        _init("fb", rng.standard_normal(10).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def has_tvm_backend() -> bool:
    _load_builtin()
    return "tvm" in BACKENDS


TARGETS = ["reference", pytest.param("llvm", marks=pytest.mark.skipif(not has_tvm_backend(), reason="no tvm"))]


def feeds_for(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("build", [small_mlp, small_cnn])
def test_compiled_model_matches_reference(build, target, tmp_path):
    model = build()
    compiled = einfuse.compile(model, target=target, cache_dir=tmp_path, progress=False)
    feeds = feeds_for(model)
    graph = convert_model(model, dims={"B": 1})
    want = reference.run(graph, feeds)
    got = compiled(**feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    if target == "llvm":
        # Groups run on TVM unless the backend declines them cleanly (LoweringError).
        assert len(compiled.report.fallbacks) < compiled.report.groups, str(compiled.report)
        assert not [f for f in compiled.report.fallbacks if "backend error" in f["reason"]], str(compiled.report)
    path = tmp_path / "m.einf"
    compiled.save(path)
    again = einfuse.load(path, cache_dir=tmp_path / "c2")
    for name, arr in again.run(feeds).items():
        np.testing.assert_array_equal(arr, got[name])


def test_symbolic_dims_bind_or_default_to_one():
    model = small_mlp()
    compiled = einfuse.compile(model, target="reference", dims={"B": 3}, progress=False)
    assert compiled.report.dims == {"B": 3}
    assert [tuple(v.shape) for v in compiled.inputs] == [(3, 16)]
    out = compiled(**feeds_for(model, batch=3))
    assert out["probs"].shape == (3, 10)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1, rtol=1e-5)

    defaulted = einfuse.compile(model, target="reference", progress=False)
    assert defaulted.report.dims == {"B": 1}
    assert any("default to 1" in n for n in defaulted.report.notes)
    with pytest.raises(InputError, match=r"should have shape f32\[1,16\], got \[3, 16\]"):
        defaulted(**feeds_for(model, batch=3))
    with pytest.raises(InputError, match="unknown dimension 'Q'"):
        einfuse.compile(model, target="reference", dims={"Q": 2}, progress=False)


def test_accepts_path_bytes_proto_and_graph(tmp_path):
    model = small_mlp(batch=2)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    feeds = feeds_for(model)
    want = einfuse.compile(model, target="reference", progress=False)(**feeds)["probs"]
    for source in (str(path), path, model.SerializeToString(), convert_model(model)):
        got = einfuse.compile(source, target="reference", progress=False)(**feeds)["probs"]
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="unknown target"):
        einfuse.compile(model, target="cuda")


def test_report_and_profile():
    model = small_cnn()
    compiled = einfuse.compile(model, target="reference", progress=False)
    text = str(compiled.report)
    assert re.search(r"\d+ fused groups, \d+ distinct kernels", text)
    assert "planned peak" in text
    assert compiled.report.arena_bytes <= compiled.report.intermediate_bytes
    assert "no runs yet" in str(compiled.profile)
    compiled(**feeds_for(model))
    rows = compiled.profile.rows
    assert sum(r.calls for r in rows) == compiled.report.groups
    assert {r.kind for r in rows} >= {"out_fusable"}


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(small_mlp(), path)
    return path


def test_cli_compile_and_run(tiny, tmp_path, capsys):
    out = tmp_path / "tiny.einf"
    assert main(["compile", str(tiny), "-o", str(out), "--target", "reference", "--dims", "B=2"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and out.exists()
    assert main(["run", str(out), "--save", str(tmp_path / "a.npz")]) == 0
    first = capsys.readouterr().out
    assert first.startswith("probs: f32[2,10]")
    assert main(["run", str(tiny), "--dims", "B=2", "--save", str(tmp_path / "b.npz")]) == 0
    capsys.readouterr()
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-6)
    assert main(["run", str(out), "--dims", "B=3"]) == 1
    assert "an .einf file has fixed shapes" in capsys.readouterr().err


@pytest.mark.skipif(not has_tvm_backend(), reason="no tvm")
def test_cli_run_with_llvm_target(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", str(tiny), "--target", "llvm", "--save", str(tmp_path / "l.npz")]) == 0
    assert main(["run", str(tiny), "--save", str(tmp_path / "r.npz")]) == 0
    capsys.readouterr()
    got, want = np.load(tmp_path / "l.npz"), np.load(tmp_path / "r.npz")
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-4, atol=1e-6)


def test_cli_bench(tiny, capsys):
    args = ["bench", str(tiny), "--target", "reference", "--runs", "3", "--warmup", "1", "--profile", "--no-relax"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ratio vs onnxruntime: ") and out[-1].endswith("x")
    text = "\n".join(out)
    assert re.search(r"^einfuse\s+\d", text, re.M) and re.search(r"^onnxruntime\s+\d", text, re.M)
    assert "per-kernel time" in text and "matmul" in text


def test_cli_bad_einf(tmp_path):
    bad = tmp_path / "bad.einf"
    import zipfile

    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("manifest.json", "{}")
    proc = subprocess.run(
        [sys.executable, "-m", "einfuse", "run", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 1
    assert "is not a valid einfuse executable" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not has_tvm_backend(), reason="no tvm")
def test_large_region_constants_are_fed_per_group(tmp_path):
    """Two groups with the same code but different large constants inside their regions:
    the kernel takes them as parameters, and each launch gets its own."""
    from einfuse.ir.builder import Builder
    from einfuse.ir.graph import Graph
    from einfuse.ir.types import DType, TensorType
    from einfuse.passes.fuse import extract_region

    rng = np.random.default_rng(0)
    g = Graph("main")
    x = g.add_input("x", TensorType((4, 8), DType.f32))
    b = Builder(g)
    c1 = g.add_constant("c1", rng.standard_normal((4, 8)).astype(np.float32))
    c2 = g.add_constant("c2", rng.standard_normal((4, 8)).astype(np.float32))
    y1 = b.op("add", [x, c1])
    y2 = b.op("add", [y1, c2])
    g.outputs = [y2]
    want = reference.run(g, {"x": np.ones((4, 8), np.float32)})[y2.name]

    fused = Graph("main")
    fx = fused.add_input("x", TensorType((4, 8), DType.f32))
    fb = Builder(fused)
    h = fb.op("fused", [fx], region=extract_region(g, [x], [y1]), kind="elementwise")
    r2 = extract_region(g, [y1], [y2])
    out = fb.op("fused", [h], region=r2, kind="elementwise")
    fused.outputs = [out]
    assert all(len(n.attrs["region"].constants) == 1 for n in fused.nodes)

    model = einfuse.compile(fused, target="llvm", cache_dir=tmp_path, progress=False)
    assert model.report.fallbacks == [], str(model.report)
    got = model(x=np.ones((4, 8), np.float32))[out.name]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    model.save(tmp_path / "c.einf")
    again = einfuse.load(tmp_path / "c.einf", cache_dir=tmp_path)
    np.testing.assert_allclose(again(x=np.ones((4, 8), np.float32))[out.name], want, rtol=1e-6)
    cached = einfuse.compile(fused, target="llvm", cache_dir=tmp_path, progress=False)
    assert cached.report.cache_hits == 2
    np.testing.assert_allclose(cached(x=np.ones((4, 8), np.float32))[out.name], want, rtol=1e-6)


def test_cli_bench_reports_relax_side_by_side(tiny, capsys):
    assert main(["bench", str(tiny), "--target", "reference", "--runs", "3", "--warmup", "1", "--dims", "B=2"]) == 0
    out = capsys.readouterr().out
    # Relax either runs (a timing row) or says why not, in the same table.
    assert re.search(r"^relax\s+(\d|-.*relax: did not)", out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("ratio vs onnxruntime: ")
