"""The on-disk kernel cache: compiled kernels keyed by the content hash of their region.

    cache = KernelCache()                      # $EINFUSE_CACHE_DIR or ~/.cache/einfuse
    entry = cache.get(key)                     # None on a miss or a damaged entry
    entry = cache.put(key, info, library_path)

The key is `codegen.backend.region_key(node, salt)` with the target, the library
versions and a fingerprint of einfuse's codegen sources in the salt (see
`einfuse.compiler.cache_salt`), so a changed backend never reuses an old kernel.

Layout (every file name is derived from a hash, never from model text):

    <root>/kernels/<key[:2]>/<key>.json    the entry: kernel info + the library's sha256
    <root>/libs/<sha256>.so                compiled libraries, content-addressed

Every file is written to a temporary file in its final folder and moved into place
with os.replace, so a reader (another process, a crash) never sees half a file.
An entry carries the sha256 of its own JSON and of its library; `get` checks both
and treats a mismatch as a miss (the damaged entry is removed and rebuilt by the
caller), so a corrupted or tampered entry is never trusted. Libraries are
content-addressed, which also means that two kernels with the same code share one
file, and a loaded library is never replaced by different bytes at the same path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
_KEY = re.compile(r"^[0-9a-f]{64}$")
MAX_ENTRY_BYTES = 1 << 20  # an entry is a small JSON document
MAX_LIBRARY_BYTES = 1 << 30


def default_cache_dir() -> Path:
    env = os.environ.get("EINFUSE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "einfuse"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class CacheEntry:
    key: str
    info: dict  # the kernel's description (name, backend, kind, ops, flops, meta, ...)
    library: Path | None  # a verified library file, or None (e.g. a recorded fallback)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt: list = field(default_factory=list)  # (key, why) for damaged entries

    def __str__(self) -> str:
        text = f"{self.hits} hit(s), {self.misses} miss(es)"
        if self.rebuilt:
            text += f", {len(self.rebuilt)} damaged entr{'y' if len(self.rebuilt) == 1 else 'ies'} rebuilt"
        return text


class KernelCache:
    """Content-hashed compiled kernels on disk (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.stats = CacheStats()

    # -- paths (all derived from hashes) ------------------------------------------

    def entry_path(self, key: str) -> Path:
        _check_key(key)
        return self.root / "kernels" / key[:2] / f"{key}.json"

    def library_path(self, sha256: str) -> Path:
        _check_key(sha256)
        return self.root / "libs" / f"{sha256}.so"

    # -- reading -------------------------------------------------------------------

    def get(self, key: str) -> CacheEntry | None:
        """The verified entry for `key`, or None (a miss, or a damaged entry, removed)."""
        path = self.entry_path(key)
        try:
            raw = _read_limited(path, MAX_ENTRY_BYTES)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except OSError as e:
            return self._damaged(key, path, f"unreadable entry ({e.strerror or e})")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._damaged(key, path, "entry is not valid JSON")
        why = _check_entry(doc, key)
        if why:
            return self._damaged(key, path, why)
        library = None
        if doc["library_sha256"] is not None:
            library = self.library_path(doc["library_sha256"])
            try:
                if library.stat().st_size != doc["library_size"] or sha256_file(library) != doc["library_sha256"]:
                    return self._damaged(key, path, "library does not match its sha256", library)
            except OSError:
                return self._damaged(key, path, "library file is missing")
        self.stats.hits += 1
        return CacheEntry(key, doc["info"], library)

    def _damaged(self, key: str, path: Path, why: str, library: Path | None = None) -> None:
        self.stats.rebuilt.append((key, why))
        self.stats.misses += 1
        for p in (path, library):
            if p is not None:
                try:
                    p.unlink()
                except OSError:
                    pass
        return None

    # -- writing -------------------------------------------------------------------

    def put(self, key: str, info: dict, library: str | os.PathLike | None = None) -> CacheEntry:
        """Stores `info` (JSON-able) and a copy of the `library` file under `key`."""
        lib_sha = lib_size = None
        stored = None
        if library is not None:
            data = Path(library).read_bytes()
            lib_sha, lib_size = hashlib.sha256(data).hexdigest(), len(data)
            stored = self.store_library(data, lib_sha)
        doc = {"format": FORMAT, "key": key, "info": info, "library_sha256": lib_sha, "library_size": lib_size}
        doc["entry_sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
        atomic_write(self.entry_path(key), _canonical(doc))
        return CacheEntry(key, info, stored)

    def store_library(self, data: bytes, sha256: str | None = None) -> Path:
        """Writes library bytes at their content-addressed path (once); returns the path."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        path = self.library_path(sha256)
        try:
            if path.stat().st_size == len(data) and sha256_file(path) == sha256:
                return path
        except OSError:
            pass
        atomic_write(path, data)
        return path


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"a cache key is 64 lowercase hex digits, got {key!r}")


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"larger than {limit} bytes")
    return data


def _check_entry(doc, key: str) -> str | None:
    """Why an entry document cannot be trusted, or None."""
    if not isinstance(doc, dict):
        return "entry is not a JSON object"
    fields = {"format", "key", "info", "library_sha256", "library_size", "entry_sha256"}
    if set(doc) != fields:
        return "entry has unexpected fields"
    body = {k: v for k, v in doc.items() if k != "entry_sha256"}
    if doc["entry_sha256"] != hashlib.sha256(_canonical(body)).hexdigest():
        return "entry does not match its sha256"
    if doc["format"] != FORMAT or doc["key"] != key or not isinstance(doc["info"], dict):
        return "entry is for another key or format"
    sha, size = doc["library_sha256"], doc["library_size"]
    if sha is not None and (not isinstance(sha, str) or not _KEY.fullmatch(sha)):
        return "entry names a bad library hash"
    if sha is not None and (not isinstance(size, int) or not 0 < size <= MAX_LIBRARY_BYTES):
        return "entry gives a bad library size"
    return None
