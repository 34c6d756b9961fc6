"""The on-disk kernel cache: a second compile reuses every kernel, entries are verified
against their sha256 (a damaged one is rebuilt, never trusted), writes are atomic."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import einfuse
from einfuse.codegen import reference
from einfuse.codegen.backend import BACKENDS
from einfuse.runtime.cache import KernelCache
from tests.runtime.test_executable import chain_graph, x_input


def compile_toy(cache_dir):
    return einfuse.compile(chain_graph(), target="toy", cache_dir=cache_dir, progress=False)


def entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "kernels").rglob("*.json"))


def test_second_compile_uses_the_cache(toy_backend, tmp_path):
    before = toy_backend.compiles
    first = compile_toy(tmp_path)
    assert toy_backend.compiles - before == 4  # softmax falls back (recorded in the cache too)
    assert len(entries(tmp_path)) == 5
    second = compile_toy(tmp_path)
    assert toy_backend.compiles - before == 4, "the second compile compiled nothing"
    assert second.report.cache_hits == 5
    assert second.report.fallbacks == first.report.fallbacks
    want = reference.run(chain_graph(), x_input())
    for name, arr in second(**x_input()).items():
        np.testing.assert_allclose(arr, want[name], rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.rglob(".tmp-*")), "no temporary files are left behind"


def test_no_cache_compiles_everything(toy_backend, tmp_path):
    compile_toy(tmp_path)
    before = toy_backend.compiles
    einfuse.compile(chain_graph(), target="toy", cache_dir=tmp_path, cache=False, progress=False)
    assert toy_backend.compiles - before == 4


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    for k in range(i, min(i + 8, len(data))):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_library_is_rebuilt(toy_backend, tmp_path):
    compile_toy(tmp_path)
    libs = sorted((tmp_path / "libs").glob("*.so"))
    assert len(libs) == 4
    _flip(libs[0])
    before = toy_backend.compiles
    model = compile_toy(tmp_path)
    assert toy_backend.compiles - before == 1, "exactly the damaged kernel is compiled again"
    assert "1 damaged entry rebuilt" in model.report.cache
    want = reference.run(chain_graph(), x_input())
    for name, arr in model(**x_input()).items():
        np.testing.assert_allclose(arr, want[name], rtol=1e-5, atol=1e-6)
    # The rebuilt entry is whole again: a third compile compiles nothing.
    before = toy_backend.compiles
    compile_toy(tmp_path)
    assert toy_backend.compiles == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: _flip(p, at=20),  # bytes flipped in the JSON
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "info": {"name": "evil"}})),
        lambda p: p.write_bytes(b""),
    ],
)
def test_tampered_entry_is_not_trusted(toy_backend, tmp_path, damage):
    compile_toy(tmp_path)
    target = next(p for p in entries(tmp_path) if "fallback_reason" not in p.read_text())
    damage(target)
    cache = KernelCache(tmp_path)
    assert cache.get(target.stem) is None
    assert cache.stats.rebuilt and not target.exists(), "a damaged entry is removed"
    before = toy_backend.compiles
    compile_toy(tmp_path)
    assert toy_backend.compiles - before == 1


def test_put_get_round_trip(tmp_path):
    cache = KernelCache(tmp_path)
    lib = tmp_path / "x.so"
    lib.write_bytes(b"\x7fELF" + bytes(100))
    key = "ab" * 32
    cache.put(key, {"name": "k"}, lib)
    entry = cache.get(key)
    assert entry.info == {"name": "k"} and entry.library.read_bytes() == lib.read_bytes()
    assert entry.library.parent == tmp_path / "libs"
    assert cache.get("cd" * 32) is None
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.get("../../etc/passwd")


def test_env_cache_dir_is_default(monkeypatch, tmp_path):
    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path / "c"))
    assert KernelCache().root == tmp_path / "c"
    monkeypatch.delenv("EINFUSE_CACHE_DIR")
    assert KernelCache().root == Path.home() / ".cache" / "einfuse"


def _tvm_backend_available() -> bool:
    from einfuse.codegen.backend import _load_builtin

    _load_builtin()
    return "tvm" in BACKENDS


@pytest.mark.skipif(not _tvm_backend_available(), reason="the TVM backend is not registered")
def test_second_tvm_compile_takes_under_a_tenth(tmp_path):
    from tests.test_compile import small_cnn

    model = small_cnn()
    t0 = time.perf_counter()
    first = einfuse.compile(model, target="llvm", cache_dir=tmp_path, progress=False)
    t1 = time.perf_counter()
    second = einfuse.compile(model, target="llvm", cache_dir=tmp_path, progress=False)
    t2 = time.perf_counter()
    assert second.report.cache_hits >= first.report.kernels - len(first.report.fallbacks)
    assert (t2 - t1) < 0.1 * (t1 - t0), f"first {t1 - t0:.2f} s, second {t2 - t1:.2f} s"
