"""einfuse tune: MetaSchedule-space tuning, the saved database, and compile consulting it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

import einfuse  # noqa: E402
from einfuse.cli import main  # noqa: E402
from einfuse.codegen.reference import run as reference_run  # noqa: E402
from einfuse.codegen.tvm import tune  # noqa: E402
from einfuse.frontends.onnx import convert_model  # noqa: E402


def tiny_model() -> onnx.ModelProto:
    """x @ W + b -> relu (an out_fusable kernel), then tanh(y) * 0.5 on a separate branch
    shape (an elementwise kernel)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((64,)).astype(np.float32), "b")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["mb"]),
        helper.make_node("Relu", ["mb"], ["y"]),
        helper.make_node("Tanh", ["z"], ["t"]),
        helper.make_node("Mul", ["t", "half"], ["u"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 64]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [16, 1024]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 64]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, [16, 1024]),
        ],
        [w, b, half],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs():
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((32, 64)).astype(np.float32),
        "z": rng.standard_normal((16, 1024)).astype(np.float32),
    }


def check_outputs(compiled, model):
    feeds = inputs()
    got = compiled(**feeds)
    want = reference_run(convert_model(model), feeds)
    for name in ("y", "u"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    """A database made by tuning the tiny model; a sample that does not beat the rule-based
    schedule is not stored, so one forced record (the best sample) is written too."""
    path = tmp_path_factory.mktemp("tune") / "db"
    report = tune.tune_model(tiny_model(), db=path, trials=6, progress=False, log=lambda m: None)
    return path, report


def test_tune_writes_a_database_and_compile_uses_it(tuned_db, tmp_path, monkeypatch):
    path, report = tuned_db
    assert report.total_kernels == 2
    assert len(report.kernels) == 2
    for r in report.kernels:
        assert r.trials == 6, r.message
        assert r.rule_ms is not None and r.tuned_ms is not None, r.message
    doc = json.loads((path / tune.RECORDS).read_text())
    assert doc["format"] == tune.FORMAT
    kept = {r.key for r in report.kernels if r.kept}
    assert set(doc["records"]) == kept

    # Whether a sample won depends on timing; make sure the compile path is exercised with
    # a record for every kernel: store the best sample of each (forced) when none was kept.
    db = tune.TuneDatabase.load(path)
    forced = _force_records(db)
    db.save()

    monkeypatch.setenv(tune.ENV, str(path))
    compiled = einfuse.compile(tiny_model(), cache=False, progress=False)
    check_outputs(compiled, tiny_model())
    schedules = {slot.kernel.meta.get("schedule") for slot in compiled.executable.kernels}
    assert schedules == {"tuned"}, (schedules, forced)

    # Without a database: the rule-based schedules, same results.
    monkeypatch.delenv(tune.ENV)
    plain = einfuse.compile(tiny_model(), cache=False, progress=False)
    check_outputs(plain, tiny_model())
    assert "tuned" not in {slot.kernel.meta.get("schedule") for slot in plain.executable.kernels}


def _force_records(db: tune.TuneDatabase) -> list[str]:
    """Adds a record (the seed-1 sample of design space 0) for each kernel of the tiny model
    that has none; returns their keys."""
    from einfuse.codegen.tvm import _load_optional
    from einfuse.codegen.tvm.lower import lower_region
    from einfuse.codegen.tvm.target import get_target
    from einfuse.compiler import CompileReport, canonical_region, import_model, optimize_graph
    from einfuse.ir.graph import Node

    _load_optional()  # the dense emitters (matmul)
    tgt = get_target(None)
    graph, bound = import_model(tiny_model(), None, CompileReport())
    graph, _ = optimize_graph(graph)
    added = []
    for node in graph.nodes:
        region, _ = canonical_region(node.attrs["region"])
        canon = Node("fused", node.inputs, node.outputs, {"region": region, "kind": node.attrs["kind"]})
        key = tune.record_key(canon, tgt, bound)
        if db.get(key) is not None:
            continue
        func, _, _ = lower_region(canon, tgt, bound)
        spaces, postprocs = tune._design_space(func, tgt)
        sch = tune._replay(func, spaces[0], 1, postprocs)
        assert sch is not None
        db.put(key, {"space": 0, "seed": 1, "func_hash": tune._hash(func), "sched_hash": tune._hash(sch.mod)})
        added.append(key)
    return added


def test_corrupted_database_is_ignored_with_a_warning(tmp_path, monkeypatch):
    path = tmp_path / "db"
    path.mkdir()
    (path / tune.RECORDS).write_text("{not json")
    monkeypatch.setenv(tune.ENV, str(path))
    tune._DB_CACHE.clear()
    tune._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = einfuse.compile(tiny_model(), cache=False, progress=False)
    assert any("corrupted" in str(w.message) for w in caught)
    check_outputs(compiled, tiny_model())
    # tune refuses to overwrite it.
    with pytest.raises(tune.TuneError, match="corrupted"):
        tune.tune_model(tiny_model(), db=path, trials=1, progress=False)


def test_missing_database_is_ignored_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(tune.ENV, str(tmp_path / "nowhere"))
    tune._DB_CACHE.clear()
    tune._WARNED.clear()
    with pytest.warns(UserWarning, match="does not exist"):
        compiled = einfuse.compile(tiny_model(), cache=False, progress=False)
    check_outputs(compiled, tiny_model())


def test_stale_record_is_ignored(tmp_path, monkeypatch):
    """A record whose PrimFunc hash does not match (an older lowering) is not applied."""
    from einfuse.codegen.tvm.target import get_target
    from einfuse.compiler import CompileReport, canonical_region, import_model, optimize_graph
    from einfuse.ir.graph import Node

    tgt = get_target(None)
    graph, bound = import_model(tiny_model(), None, CompileReport())
    graph, _ = optimize_graph(graph)
    db = tune.TuneDatabase(tmp_path / "db")
    for node in graph.nodes:
        region, _ = canonical_region(node.attrs["region"])
        canon = Node("fused", node.inputs, node.outputs, {"region": region, "kind": node.attrs["kind"]})
        db.put(tune.record_key(canon, tgt, bound), {"space": 0, "seed": 1, "func_hash": "0" * 16, "sched_hash": ""})
    db.save()
    monkeypatch.setenv(tune.ENV, str(db.path))
    tune._DB_CACHE.clear()
    tune._WARNED.clear()
    with pytest.warns(UserWarning, match="another lowering"):
        compiled = einfuse.compile(tiny_model(), cache=False, progress=False)
    assert "tuned" not in {slot.kernel.meta.get("schedule") for slot in compiled.executable.kernels}
    check_outputs(compiled, tiny_model())


def test_bad_arguments(tmp_path):
    with pytest.raises(einfuse.errors.InputError, match="trials"):
        tune.tune_model(tiny_model(), db=tmp_path / "db", trials=0)
    with pytest.raises(einfuse.errors.InputError, match="llvm"):
        tune.tune_model(tiny_model(), target="reference", db=tmp_path / "db")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(tune.TuneError, match="not a directory"):
        tune.tune_model(tiny_model(), db=a_file, trials=1)
    assert tune.parse_duration("2m") == 120.0
    with pytest.raises(einfuse.errors.InputError, match="duration"):
        tune.parse_duration("soon")


def test_cli_tune(tmp_path, capsys):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), model)
    db = tmp_path / "db"
    rc = main(["tune", str(model), "--db", str(db), "--trials", "2", "--kernels", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "1 of 2 distinct kernels tried" in out.out
    assert f"EINFUSE_TUNE_DB={db}" in out.out
    assert (db / tune.RECORDS).exists()

    rc = main(["tune", str(tmp_path / "missing.onnx"), "--db", str(db)])
    assert rc == 1
    assert "error:" in capsys.readouterr().err


def test_kernel_cache_key_includes_the_database(tmp_path):
    """A kernel cached without a database is not reused when one applies (and vice versa)."""
    db = tune.TuneDatabase(tmp_path / "db")
    _force_records(db)
    db.save()
    cache = tmp_path / "cache"
    plain = einfuse.compile(tiny_model(), cache_dir=cache, progress=False)
    assert "tuned" not in {slot.kernel.meta.get("schedule") for slot in plain.executable.kernels}
    tuned = einfuse.compile(tiny_model(), cache_dir=cache, progress=False, tune_db=db.path)
    assert tuned.report.cache_hits == 0
    assert {slot.kernel.meta.get("schedule") for slot in tuned.executable.kernels} == {"tuned"}
    check_outputs(tuned, tiny_model())
    again = einfuse.compile(tiny_model(), cache_dir=cache, progress=False, tune_db=db.path)
    assert again.report.cache_hits == 2
    check_outputs(again, tiny_model())
