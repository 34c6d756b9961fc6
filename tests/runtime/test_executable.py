"""The Executable: runs against the reference, the buffer plan, .einf save/load (in a
fresh process, with compilation made impossible), and clear errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import einfuse
from einfuse.codegen import reference
from einfuse.compiler import wrap_node
from einfuse.errors import InputError
from einfuse.ir.builder import Builder
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType
from einfuse.passes.plan_memory import BufferUse, lifetimes, peak_live_bytes, plan_memory
from einfuse.runtime.executable import ExecutableFormatError, aligned_empty, apply_prepack

ROOT = Path(__file__).resolve().parents[2]


def chain_graph() -> Graph:
    """x -> relu -> add x -> exp -> softmax -> mul x, one fused group per op (softmax is
    beyond the toy backend: a reference fallback); returns (mul, add)."""
    g = Graph("main")
    x = g.add_input("x", TensorType((4, 8), DType.f32))
    b = Builder(g)
    a = b.op("relu", [x])
    c = b.op("add", [a, x])
    d = b.op("exp", [c])
    e = b.op("softmax", [d])
    f = b.op("mul", [e, x])
    g.outputs = [f, c]
    for n in list(g.nodes):
        g.replace_node(n, [wrap_node(g, n)])
    return g


def x_input(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((4, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def toy_model(toy_backend, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return einfuse.compile(chain_graph(), target="toy", cache_dir=cache, progress=False)


# ----------------------------------------------------------------------------- running


def test_toy_model_matches_reference(toy_model):
    want = reference.run(chain_graph(), x_input())
    got = toy_model(**x_input())
    assert list(got) == ["mul", "add"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    report = toy_model.report
    assert report.groups == 5
    assert [f["ops"] for f in report.fallbacks] == [["softmax"]]
    assert "toy backend: no lowering for softmax" in str(report)
    backends = sorted(slot.kernel.backend for slot in toy_model.executable.kernels)
    assert backends == ["reference", "toytvm", "toytvm", "toytvm", "toytvm"]


def test_outputs_are_fresh_arrays(toy_model):
    a = toy_model(**x_input(0))
    b = toy_model(**x_input(1))
    assert not np.shares_memory(a["mul"], b["mul"])
    assert not np.allclose(a["mul"], b["mul"])


def test_profile_counts_every_launch(toy_model):
    toy_model.reset_profile()
    for _ in range(3):
        toy_model(**x_input())
    prof = toy_model.profile
    assert prof.runs == 3
    assert sum(r.calls for r in prof.rows) == 5
    assert abs(sum(r.percent for r in prof.rows) - 100) < 1e-6
    text = str(prof)
    assert "kernel" in text and "GFLOP/s" in text and "softmax" in text


@pytest.mark.parametrize(
    "feeds, match",
    [
        ({}, "missing input 'x'"),
        ({"x": np.zeros((4, 8), np.float64)}, "input 'x' should be f32"),
        ({"x": np.zeros((4, 9), np.float32)}, r"input 'x' should have shape f32\[4,8\], got \[4, 9\]"),
        ({"x": np.zeros((4, 8), np.float32), "y": np.zeros(1)}, r"unknown input\(s\) \['y'\]"),
    ],
)
def test_input_errors_match_reference(toy_model, feeds, match):
    with pytest.raises(InputError, match=match):
        toy_model.run(feeds)
    with pytest.raises(InputError, match=match):
        reference.run(chain_graph(), feeds)


def test_unaligned_and_readonly_inputs_are_accepted(toy_model):
    raw = np.zeros(4 * 8 + 1, np.float32)[1:].reshape(4, 8)  # 4-byte offset: not 64-aligned
    raw[:] = x_input()["x"]
    raw.flags.writeable = False
    got = toy_model(x=raw)
    np.testing.assert_allclose(got["mul"], reference.run(chain_graph(), x_input())["mul"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.slow  # a fresh interpreter imports TVM (seconds; tens on a loaded machine)
def test_save_load_in_fresh_process_without_compiling(toy_model, tmp_path):
    path = tmp_path / "chain.einf"
    toy_model.save(path)
    want = toy_model(**x_input(3))
    np.save(tmp_path / "x.npy", x_input(3)["x"])
    for name, arr in want.items():
        np.save(tmp_path / f"want_{name}.npy", arr)
    script = textwrap.dedent(
        f"""
        import importlib
        import numpy as np, tvm

        def forbidden(*a, **k):
            raise AssertionError("compiled while loading")

        tvm.compile = forbidden
        tvm.build = forbidden
        try:  # the TVM backend's lowering, where it exists
            importlib.import_module("einfuse.codegen.tvm.lower").lower_region = forbidden
        except ImportError:
            pass
        import einfuse

        # The toy backend is not registered in this process: the generic loader runs.
        model = einfuse.load({str(path)!r}, cache_dir={str(tmp_path / "cache2")!r})
        got = model(x=np.load({str(tmp_path / "x.npy")!r}))
        for name in ("mul", "add"):
            want = np.load({str(tmp_path)!r} + f"/want_{{name}}.npy")
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)
        libs = [s.library for s in model.executable.kernels if s.library is not None]
        assert len(libs) == 4 and all(str(p).startswith({str(tmp_path / "cache2")!r}) for p in libs), libs
        print("loaded-ok", model.report.groups)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded-ok 5" in out.stdout


def test_save_load_keeps_bf16_and_float8_weights(tmp_path):
    g = Graph("main")
    x = g.add_input("x", TensorType((4, 8), DType.bf16))
    rng = np.random.default_rng(0)
    w = g.add_constant("w", rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16))
    q = g.add_constant("q", rng.standard_normal((4, 8)).astype(ml_dtypes.float8_e4m3fn))
    b = Builder(g)
    y = b.op("add", [x, w])
    z = b.op("cast", [q], to=DType.f32)
    g.outputs = [y, b.op("add", [z, b.op("cast", [y], to=DType.f32)])]
    feeds = {"x": rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)}
    want = reference.run(g, feeds)
    model = einfuse.compile(g, target="reference", progress=False)
    path = tmp_path / "m.einf"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        raws = [n for n in zf.namelist() if n.endswith(".bin")]
    assert raws, "bf16/float8 weights are stored as raw bytes"
    loaded = einfuse.load(path)
    got = loaded(**feeds)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name].astype(np.float32), want[name].astype(np.float32))


def test_dynamic_shapes_run_through_the_reference(tmp_path):
    g = Graph("main")
    x = g.add_input("x", TensorType((6,), DType.f32))
    b = Builder(g)
    nz = b.op("nonzero", [x])
    y = b.op("add", [nz, nz])
    g.outputs = [y]
    model = einfuse.compile(g, target="reference", progress=False)
    feeds = {"x": np.array([0, 1, 0, 2, 3, 0], np.float32)}
    np.testing.assert_array_equal(model(**feeds)[y.name], reference.run(g, feeds)[y.name])
    model.save(tmp_path / "d.einf")
    again = einfuse.load(tmp_path / "d.einf")
    np.testing.assert_array_equal(again(**feeds)[y.name], [[2, 6, 8]])
    assert any(ln.dynamic for ln in again.executable.launches)


# ----------------------------------------------------------------------------- bad files


@pytest.fixture
def saved(tmp_path):
    g = chain_graph()
    model = einfuse.compile(g, target="reference", progress=False)
    path = tmp_path / "ok.einf"
    model.save(path)
    return path


def rewrite_archive(src: Path, dst: Path, edit) -> Path:
    """Copies the archive, letting edit(name, bytes) change (or drop, with None) entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def edit_manifest(fn):
    def edit(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        fn(m)
        return json.dumps(m).encode()

    return edit


def test_loads_what_it_saved(saved):
    got = einfuse.load(saved)(**x_input())
    np.testing.assert_allclose(got["mul"], reference.run(chain_graph(), x_input())["mul"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "edit, match",
    [
        (edit_manifest(lambda m: m["launches"][0]["operands"].__setitem__(0, 999)), "buffer id 999 is out of range"),
        (edit_manifest(lambda m: m["buffers"][1].__setitem__("shape", [-1, 8])), "bad shape"),
        (edit_manifest(lambda m: m["buffers"][1].__setitem__("dtype", "f128")), "unknown dtype 'f128'"),
        (edit_manifest(lambda m: m.__setitem__("version", 99)), "format version 99"),
        (edit_manifest(lambda m: m["kernels"][0]["info"].__setitem__("name", "../../evil")), "malformed description"),
        (edit_manifest(lambda m: m["launches"].reverse()), "reads buffer .* before it is written"),
        (edit_manifest(lambda m: m.__setitem__("arena_bytes", 0)), "lies outside the arena"),
        (lambda n, d: None if n == "manifest.json" else d, "entry 'manifest.json' is missing"),
        (lambda n, d: b"{not json" if n == "manifest.json" else d, "not valid JSON"),
        (lambda n, d: None if n.startswith("regions/0") else d, r"entry 'regions/0.ir' is missing"),
        (lambda n, d: b"graph @x(" if n == "regions/2.ir" else d, r"regions/2.ir:"),
    ],
)
def test_tampered_files_give_clear_errors(saved, tmp_path, edit, match):
    bad = rewrite_archive(saved, tmp_path / "bad.einf", edit)
    with pytest.raises(ExecutableFormatError, match=match):
        einfuse.load(bad)


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.einf"
    p.write_bytes(b"hello")
    with pytest.raises(ExecutableFormatError, match="not a zip archive"):
        einfuse.load(p)
    with pytest.raises(ExecutableFormatError, match="does not exist"):
        einfuse.load(tmp_path / "missing.einf")


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    p = tmp_path / "cut.einf"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExecutableFormatError):
        einfuse.load(p)


def test_weight_with_lying_npy_header(tmp_path):
    g = Graph("main")
    x = g.add_input("x", TensorType((4, 8), DType.f32))
    w = g.add_constant("w", np.ones((4, 8), np.float32))
    g.outputs = [Builder(g).op("add", [x, w])]
    model = einfuse.compile(g, target="reference", progress=False)
    model.save(tmp_path / "w.einf")

    def edit(name, data):
        if name.startswith("weights/") and name.endswith(".npy"):
            return data.replace(b"(4, 8)", b"(8, 4)")
        return data

    bad = rewrite_archive(tmp_path / "w.einf", tmp_path / "bad.einf", edit)
    with pytest.raises(ExecutableFormatError, match=r"holds float32\[8, 4\], expected f32\[4, 8\]"):
        einfuse.load(bad)


def test_library_hash_is_checked(toy_model, tmp_path):
    toy_model.save(tmp_path / "t.einf")

    def edit(name, data):
        if name == "kernels/0.so":
            mid = len(data) // 2
            return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
        return data

    bad = rewrite_archive(tmp_path / "t.einf", tmp_path / "bad.einf", edit)
    with pytest.raises(ExecutableFormatError, match=r"kernels/0.so does not match its sha256"):
        einfuse.load(bad, cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- the buffer plan


def check_plan(uses: list[BufferUse]) -> None:
    plan = plan_memory(uses)
    for i, a in enumerate(uses):
        oa = plan.offsets[a.id]
        assert oa % 64 == 0
        assert oa + a.size <= plan.arena_bytes
        for b in uses[i + 1 :]:
            if a.size and b.size and a.overlaps_in_time(b):
                ob = plan.offsets[b.id]
                assert oa + a.size <= ob or ob + b.size <= oa, (a, b, oa, ob)
    assert peak_live_bytes(uses) <= plan.arena_bytes <= plan.total_bytes


@given(
    st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 30), st.integers(0, 10)),
        max_size=40,
    )
)
def test_plan_never_overlaps_live_buffers(spans):
    check_plan([BufferUse(i, size, first, first + length) for i, (size, first, length) in enumerate(spans)])


@st.composite
def random_programs(draw):
    """A random DAG of launches: each reads some earlier buffers and writes 1-2 new ones."""
    sizes = {0: draw(st.integers(1, 4096))}  # buffer 0 is the input
    launches = []
    for _ in range(draw(st.integers(1, 25))):
        reads = draw(st.lists(st.sampled_from(sorted(sizes)), min_size=1, max_size=3, unique=True))
        writes = []
        for _ in range(draw(st.integers(1, 2))):
            bid = len(sizes)
            sizes[bid] = draw(st.integers(0, 4096))
            writes.append(bid)
        launches.append((reads, writes))
    return sizes, launches


@given(random_programs())
def test_plan_over_random_programs(program):
    sizes, launches = program
    temps = [b for b in sizes if b != 0]
    spans = lifetimes(launches, temps)
    assert set(spans) == set(temps)
    for step, (reads, writes) in enumerate(launches):
        for r in reads:
            if r in spans:
                assert spans[r][0] <= step <= spans[r][1]
        for w in writes:
            assert spans[w][0] == step
    check_plan([BufferUse(b, sizes[b], *spans[b]) for b in temps])


def test_plan_reuses_memory_in_a_chain():
    # a -> b -> c -> d, each 1 KiB: two slots suffice.
    uses = [BufferUse(i, 1024, i, i + 1) for i in range(4)]
    plan = plan_memory(uses)
    assert plan.arena_bytes == 2048 and plan.total_bytes == 4096
    assert "planned peak 2.0 KiB" in str(plan)


def test_compiled_plan_is_sound(toy_model):
    exe = toy_model.executable
    temps = [i for i, b in enumerate(exe.buffers) if b.role == "temp"]
    spans = lifetimes([(ln.operands, ln.results) for ln in exe.launches], temps)
    uses = [BufferUse(i, exe.buffers[i].nbytes, *spans[i]) for i in temps]
    for i, a in enumerate(uses):
        for b in uses[i + 1 :]:
            if a.overlaps_in_time(b):
                oa, ob = exe.buffers[a.id].offset, exe.buffers[b.id].offset
                assert oa + a.size <= ob or ob + b.size <= oa
    assert toy_model.report.arena_bytes < toy_model.report.intermediate_bytes


# ----------------------------------------------------------------------------- helpers


def test_aligned_empty_and_prepack():
    a = aligned_empty((3, 5), np.float32)
    assert a.ctypes.data % 64 == 0 and a.shape == (3, 5)
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    steps = [["pad", [[0, 1], [0, 0]]], ["reshape", [2, 2, 4]], ["transpose", [1, 0, 2]], ["astype", "f16"]]
    got = apply_prepack(w, steps)
    want = np.pad(w, [(0, 1), (0, 0)]).reshape(2, 2, 4).transpose(1, 0, 2).astype(np.float16)
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(apply_prepack(w, [["astype", "float64"]]), w.astype(np.float64))


def test_identical_groups_share_one_kernel(toy_backend, tmp_path):
    g = Graph("main")
    x = g.add_input("x", TensorType((4, 8), DType.f32))
    b = Builder(g)
    y = b.op("relu", [b.op("neg", [b.op("relu", [b.op("neg", [x])])])])
    g.outputs = [y]
    for n in list(g.nodes):
        g.replace_node(n, [wrap_node(g, n)])
    before = toy_backend.compiles
    model = einfuse.compile(g, target="toy", cache_dir=tmp_path, progress=False)
    assert toy_backend.compiles - before == 2  # neg and relu, once each
    assert (model.report.groups, model.report.kernels) == (4, 2)
    np.testing.assert_allclose(model(**x_input())[y.name], reference.run(g, x_input())[y.name])
