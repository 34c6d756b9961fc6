"""The Executable: ordered kernel launches over planned buffers, the weights, and the
compiled kernels; saved to one `.einf` file and loaded back without recompiling.

    exe = Executable(...)                 # built by einfuse.compiler
    outputs = exe.run({"x": x})
    exe.save("model.einf")
    exe = Executable.load("model.einf")   # no lowering, no tvm.compile

Buffers. Every tensor the program touches is a numbered buffer with a role: `input`
(given by the caller), `weight` (a constant, possibly pre-packed in the layout its
kernel wants), `temp` (an intermediate, placed in one arena by
einfuse.passes.plan_memory), `output` (a fresh array per run, handed to the caller)
or `dynamic` (a data-dependent shape: produced at run time by a reference launch).
All arrays the kernels see are C-contiguous, writeable and 64-byte aligned (TVM
refuses anything else without a copy).

Launches. A launch calls one kernel in destination-passing style:
`kernel.fn([operand buffers], [result buffers])`. A kernel's operands are the fused
node's operands followed by its constant parameters (`Kernel.meta["const_params"]`:
names of region constants; the compiler turns them into weight buffers), and a
`Kernel.meta["prepack"]` entry {operand index: transform} tells the compiler to store
that weight already transformed (see `apply_prepack`).

The .einf file is a zip archive:

    manifest.json             every buffer, launch and kernel description (validated on load)
    weights/<buffer>.npy      a weight (np.save, allow_pickle=False) ...
    weights/<buffer>.bin      ... or raw bytes for dtypes .npy cannot name (bf16, float8)
    kernels/<k>.so            a compiled kernel library (Kernel.artifact)
    regions/<k>.ir            a reference kernel's region (IR text, constants elided)
    regions/<k>/<j>.npy|.bin  that region's constants

Loading reads only the entries whose names it derives from the manifest's numbers;
it never unpickles, checks every id, shape and size in the manifest with a clear
error, and copies each library, after checking its sha256, into the kernel cache
folder under a name derived from that hash. A library is native code: load .einf
files only from a source you trust (the hashes detect damage, not a forger).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from einfuse.codegen.backend import Kernel
from einfuse.errors import EinfuseError, ExecutionError, ModelLoadError
from einfuse.ir.graph import Graph, c_contiguous
from einfuse.ir.types import DType, TensorType

ALIGN = 64
FORMAT = "einfuse-executable"
VERSION = 1
ROLES = ("input", "weight", "temp", "output", "dynamic")

MAX_MANIFEST_BYTES = 64 << 20
MAX_ENTRY_BYTES = 16 << 30
MAX_ARENA_BYTES = 1 << 40
_SYMBOL = re.compile(r"^[a-z0-9_]{1,128}$")
_BACKEND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class ExecutableFormatError(ModelLoadError):
    """An .einf file is not an einfuse executable, or is damaged or tampered with."""


# ------------------------------------------------------------------------ arrays


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def is_aligned(arr: np.ndarray) -> bool:
    return arr.flags.c_contiguous and arr.flags.writeable and arr.ctypes.data % ALIGN == 0


def as_aligned(arr: np.ndarray) -> np.ndarray:
    """`arr` itself when contiguous, writeable and aligned, else an aligned copy."""
    if is_aligned(arr):
        return arr
    out = aligned_empty(arr.shape, arr.dtype)
    # A weight may be a transposed view (canonicalize keeps W.T uncopied): numpy's strided
    # copy of a large one takes seconds, c_contiguous copies it tile by tile.
    np.copyto(out, c_contiguous(arr))
    return out


def apply_prepack(arr: np.ndarray, spec) -> np.ndarray:
    """A weight in the layout its kernel wants.

    `spec` is a callable (array -> array; not cacheable on disk) or a JSON-able list of
    steps applied in order: ["pad", [[before, after], ...]] (zeros), ["reshape", [dims]],
    ["transpose", [perm]], ["astype", "f32" or "float32"]. Pad + reshape + transpose express the
    usual packings (a matmul's B as [N/n, K, n], a conv weight as OIHW{i}o)."""
    if callable(spec):
        return np.asarray(spec(arr))
    out = np.asarray(arr)
    for step in spec:
        if not isinstance(step, (list, tuple)) or len(step) != 2 or not isinstance(step[0], str):
            raise EinfuseError(f"bad prepack step {step!r}: expected [name, argument]")
        name, arg = step
        if name == "pad":
            out = np.pad(out, [tuple(int(x) for x in p) for p in arg])
        elif name == "reshape":
            out = out.reshape([int(x) for x in arg])
        elif name == "transpose":
            out = out.transpose([int(x) for x in arg])
        elif name == "astype":
            out = out.astype(_np_dtype(arg))
        else:
            raise EinfuseError(f"unknown prepack step {name!r}; known: pad, reshape, transpose, astype")
    return np.ascontiguousarray(out)


def _np_dtype(name) -> np.dtype:
    """A dtype named the einfuse way ("f32", "bf16") or numpy's ("float32", "bfloat16")."""
    try:
        return DType.parse(name).np
    except (ValueError, TypeError):
        pass
    if name == "bfloat16":
        return DType.bf16.np
    try:
        return np.dtype(name)
    except TypeError:
        raise EinfuseError(f"unknown dtype {name!r} in a prepack step") from None


# ------------------------------------------------------------------------ records


@dataclass
class Buffer:
    dtype: DType
    shape: tuple[int, ...] | None  # None: data-dependent, known at run time only
    role: str
    offset: int = -1  # temps: byte offset in the arena

    @property
    def nbytes(self) -> int:
        if self.shape is None:
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class Launch:
    kernel: int
    operands: tuple[int, ...]
    results: tuple[int, ...]
    dynamic: bool = False  # evaluated through the region (data-dependent shapes)


@dataclass
class KernelSlot:
    """One kernel of an Executable and what saving it needs."""

    kernel: Kernel
    info: dict  # JSON-able: name, backend, kind, ops, flops, bytes_moved, meta
    library: Path | None = None  # the compiled library file (library kernels)
    region: Graph | None = None  # the region (reference kernels)


# Meta entries not persisted: informational and large (the scheduled TIR text).
_TRANSIENT_META = frozenset({"source"})


def kernel_info(kernel: Kernel) -> dict:
    """The JSON-able description of a kernel (meta entries that are not JSON are left out)."""
    meta = {}
    for k, v in (kernel.meta or {}).items():
        if k in _TRANSIENT_META:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        meta[str(k)] = v
    return {
        "name": kernel.name,
        "backend": kernel.backend,
        "kind": kernel.kind,
        "ops": list(kernel.ops),
        "flops": int(kernel.flops or 0),
        "bytes_moved": int(kernel.bytes_moved or 0),
        "meta": meta,
    }


# ------------------------------------------------------------------------ kernels from files


def reference_kernel(region: Graph, info: dict) -> Kernel:
    """A reference kernel evaluating `region` (rebuilt on load: nothing to compile)."""
    from einfuse.codegen import reference

    names = [p.name for p in region.inputs]
    outs = [v.name for v in region.outputs]

    def fn(inputs, outputs):
        res = reference.run(region, dict(zip(names, inputs)))
        for dst, name in zip(outputs, outs):
            np.copyto(dst, res[name])

    return Kernel(info["name"], fn, "reference", info["kind"], tuple(info["ops"]), info["flops"], info["bytes_moved"])


def load_library_kernel(path: Path, info: dict) -> Kernel:
    """A kernel from its compiled library, without compiling anything.

    The backend that made it loads it when it (or its module) defines
    `load_kernel(path, meta)`, returning a Kernel or the kernel's fn (operands, constant
    parameters and results are all passed by the runtime). Otherwise the library is
    taken as a TVM module whose function `meta["entry"]` (default: `meta["symbol"]`, the
    kernel's name, else "main") takes the operands then the results."""
    import sys

    from einfuse.codegen.backend import get_backend

    try:
        backend = get_backend(info["backend"])
    except EinfuseError:
        backend = None
    loader = getattr(backend, "load_kernel", None)
    if loader is None and backend is not None:
        loader = getattr(sys.modules.get(type(backend).__module__), "load_kernel", None)
    if loader is not None:
        meta = dict(info["meta"])
        n_const = len(meta.get("const_params") or ())
        if n_const:
            # The runtime passes constant parameters with the operands (each launch its
            # own); placeholders tell the TVM backend's loader how many to expect.
            made = loader(path, meta, [np.zeros(1, np.float32)] * n_const)
        else:
            made = loader(path, meta)
        if isinstance(made, Kernel):
            return made
        return Kernel(
            info["name"], made, info["backend"], info["kind"], tuple(info["ops"]), info["flops"],
            info["bytes_moved"], artifact=str(path), meta=dict(info["meta"]),
        )  # fmt: skip
    from einfuse.codegen.tvm import import_tvm

    tvm = import_tvm()
    mod = tvm.runtime.load_module(str(path))
    func = None
    for name in (info["meta"].get("entry"), info["meta"].get("symbol"), info["name"], "main"):
        if isinstance(name, str) and mod.implements_function(name, True):
            func = mod.get_function(name, True)
            break
    if func is None:
        raise ExecutableFormatError(f"kernel {info['name']}: its library has no entry function")
    return Kernel(
        info["name"], tvm_caller(func), info["backend"], info["kind"], tuple(info["ops"]), info["flops"],
        info["bytes_moved"], artifact=str(path), meta=dict(info["meta"]),
    )  # fmt: skip


def tvm_caller(func) -> Callable[[list, list], None]:
    """Wraps a TVM PrimFunc (operands..., results...) as a destination-passing kernel fn.

    Arrays are passed without a copy (DLPack) when aligned, contiguous and writeable,
    which every runtime buffer is; other arrays go through an aligned copy."""
    from einfuse.codegen.tvm import import_tvm

    from_dlpack = import_tvm().runtime.from_dlpack

    def fn(inputs, outputs):
        args = [from_dlpack(as_aligned(np.asarray(a))) for a in inputs]
        copies = []
        for o in outputs:
            if is_aligned(o):
                args.append(from_dlpack(o))
            else:
                tmp = aligned_empty(o.shape, o.dtype)
                copies.append((o, tmp))
                args.append(from_dlpack(tmp))
        func(*args)
        for o, tmp in copies:
            np.copyto(o, tmp)

    return fn


# ------------------------------------------------------------------------ the executable


@dataclass
class Executable:
    inputs: list[tuple[str, int]]  # (name, buffer id), the model's input order
    outputs: list[tuple[str, int]]  # (name, buffer id), the model's output order
    buffers: list[Buffer]
    weights: dict[int, np.ndarray]  # buffer id -> array
    kernels: list[KernelSlot]
    launches: list[Launch]
    arena_bytes: int
    meta: dict = field(default_factory=dict)  # target, dims, report (JSON-able)

    def __post_init__(self):
        # Kernels may hand weights to TVM, which takes only writeable, aligned arrays:
        # keep private aligned copies (the graph's constants are read-only).
        self.weights = {i: as_aligned(w) for i, w in self.weights.items()}
        self._signature = Graph("signature")
        for name, bid in self.inputs:
            b = self.buffers[bid]
            self._signature.add_input(name, TensorType(b.shape, b.dtype))
        dynamic_results = {r for ln in self.launches if ln.dynamic for r in ln.results}
        self._prealloc = [
            bid for _, bid in self.outputs if self.buffers[bid].role == "output" and bid not in dynamic_results
        ]
        self._lock = threading.Lock()
        self._arena: np.ndarray | None = None
        self._template: list | None = None
        self.step_seconds = np.zeros(len(self.launches))
        self.runs = 0

    # -- running ---------------------------------------------------------------------

    @property
    def signature(self) -> Graph:
        """A graph holding only the inputs, typed (for validation and for callers)."""
        return self._signature

    def _buffers_template(self) -> list:
        if self._template is None:
            self._arena = aligned_empty((self.arena_bytes,), np.uint8)
            template: list = [None] * len(self.buffers)
            for bid, w in self.weights.items():
                template[bid] = w
            for bid, b in enumerate(self.buffers):
                if b.role == "temp":
                    raw = self._arena[b.offset : b.offset + b.nbytes]
                    template[bid] = raw.view(b.dtype.np).reshape(b.shape)
            self._template = template
        return self._template

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        """Runs the program on {input name: array}; returns {output name: array}."""
        from einfuse.codegen.reference import check_inputs

        check_inputs(self._signature, inputs)
        with self._lock:
            bufs = list(self._buffers_template())
            for name, bid in self.inputs:
                bufs[bid] = as_aligned(np.asarray(inputs[name]))
            for bid in self._prealloc:
                b = self.buffers[bid]
                bufs[bid] = aligned_empty(b.shape, b.dtype.np)
            seconds = self.step_seconds
            clock = time.perf_counter
            for step, launch in enumerate(self.launches):
                slot = self.kernels[launch.kernel]
                t0 = clock()
                try:
                    if launch.dynamic:
                        self._run_dynamic(slot, launch, bufs)
                    else:
                        slot.kernel.fn([bufs[i] for i in launch.operands], [bufs[i] for i in launch.results])
                except EinfuseError:
                    raise
                except Exception as e:
                    ops = "+".join(slot.kernel.ops[:6])
                    raise ExecutionError(
                        f"kernel {slot.kernel.name} ({slot.kernel.kind}: {ops}) failed: {type(e).__name__}: {e}"
                    ) from e
                seconds[step] += clock() - t0
            self.runs += 1
            result: dict[str, np.ndarray] = {}
            handed: set[int] = set()
            for name, bid in self.outputs:
                arr = bufs[bid]
                # Only fresh output buffers go to the caller as they are; inputs, weights
                # and an output named twice are copied.
                if self.buffers[bid].role not in ("output", "dynamic") or bid in handed:
                    arr = np.array(arr, copy=True)
                handed.add(bid)
                result[name] = arr
        return result

    def _run_dynamic(self, slot: KernelSlot, launch: Launch, bufs: list) -> None:
        from einfuse.codegen import reference

        region = slot.region
        feeds = {p.name: bufs[i] for p, i in zip(region.inputs, launch.operands)}
        res = reference.run(region, feeds)
        for r, v in zip(launch.results, region.outputs):
            bufs[r] = res[v.name]

    def reset_profile(self) -> None:
        self.step_seconds[:] = 0.0
        self.runs = 0

    # -- figures ----------------------------------------------------------------------

    @property
    def intermediate_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers if b.role == "temp")

    @property
    def weight_bytes(self) -> int:
        return sum(int(w.nbytes) for w in self.weights.values())

    # -- saving ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Writes the executable to ONE file (see the module docstring), atomically."""
        from einfuse.ir.printer import print_graph

        path = Path(path)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "inputs": [{"name": n, "buffer": b} for n, b in self.inputs],
            "outputs": [{"name": n, "buffer": b} for n, b in self.outputs],
            "buffers": [
                {"dtype": b.dtype.value, "shape": None if b.shape is None else list(b.shape), "role": b.role,
                 "offset": b.offset}
                for b in self.buffers
            ],  # fmt: skip
            "arena_bytes": self.arena_bytes,
            "weights": [],
            "kernels": [],
            "launches": [
                {"kernel": ln.kernel, "operands": list(ln.operands), "results": list(ln.results), "dynamic": ln.dynamic}
                for ln in self.launches
            ],
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for bid in sorted(self.weights):
                    fmt = _write_array(zf, f"weights/{bid}", self.weights[bid])
                    manifest["weights"].append({"buffer": bid, "format": fmt})
                for k, slot in enumerate(self.kernels):
                    entry: dict[str, Any] = {"info": slot.info, "library": None, "region": None}
                    if slot.library is not None:
                        data = Path(slot.library).read_bytes()
                        zf.writestr(f"kernels/{k}.so", data)
                        entry["library"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    elif slot.region is not None:
                        zf.writestr(f"regions/{k}.ir", print_graph(slot.region, constants="elide"))
                        consts = []
                        for j, (name, (v, arr)) in enumerate(slot.region.constants.items()):
                            fmt = _write_array(zf, f"regions/{k}/{j}", arr)
                            record = {"name": name, "dtype": v.dtype.value, "shape": list(arr.shape), "format": fmt}
                            consts.append(record)
                        entry["region"] = {"constants": consts}
                    else:
                        raise EinfuseError(f"kernel {slot.info['name']} has neither a library nor a region to save")
                    manifest["kernels"].append(entry)
                zf.writestr("manifest.json", json.dumps(manifest, indent=1))
            os.replace(tmp, path)
        except OSError as e:
            raise EinfuseError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        finally:
            if tmp.exists():
                tmp.unlink()

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> "Executable":
        """Reads an .einf file written by `save`; compiles nothing."""
        return _Loader(Path(path), cache_dir).load()


def _write_array(zf: zipfile.ZipFile, stem: str, arr: np.ndarray) -> str:
    arr = c_contiguous(arr) if arr.ndim else np.ascontiguousarray(arr)
    if arr.dtype.kind == "V" or arr.dtype.names is not None or arr.dtype.kind not in "biuf":
        # bfloat16 / float8 (ml_dtypes) have no .npy name: raw bytes, dtype in the manifest.
        zf.writestr(f"{stem}.bin", arr.tobytes())
        return "raw"
    with zf.open(f"{stem}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)
    return "npy"


class _Loader:
    """Reads and validates an .einf file (every check raises ExecutableFormatError)."""

    def __init__(self, path: Path, cache_dir):
        self.path = path
        self.cache_dir = cache_dir

    def fail(self, what: str) -> ExecutableFormatError:
        return ExecutableFormatError(
            f"{str(self.path)!r} is not a valid einfuse executable: {what}",
            hint="rebuild it with `einfuse compile MODEL -o FILE.einf`",
        )

    def load(self) -> Executable:
        try:
            zf = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ExecutableFormatError(f"file {str(self.path)!r} does not exist") from None
        except IsADirectoryError:
            raise ExecutableFormatError(f"{str(self.path)!r} is a directory, not an .einf file") from None
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise self.fail(f"not a zip archive ({e})") from None
        with zf:
            self.zf = zf
            try:
                return self._load()
            except (zipfile.BadZipFile, EOFError, zlib_error()) as e:
                raise self.fail(f"damaged archive ({e})") from None

    def read(self, name: str, limit: int) -> bytes:
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise self.fail(f"entry {name!r} is missing") from None
        if info.file_size > limit:
            raise self.fail(f"entry {name!r} is too large ({info.file_size} bytes)")
        with self.zf.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise self.fail(f"entry {name!r} is too large")
        return data

    def _load(self) -> Executable:
        raw = self.read("manifest.json", MAX_MANIFEST_BYTES)
        try:
            m = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise self.fail("manifest.json is not valid JSON") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise self.fail("manifest.json does not describe an einfuse executable")
        if m.get("version") != VERSION:
            raise self.fail(f"format version {m.get('version')!r}; this einfuse reads version {VERSION}")
        for key, kind in (("meta", dict), ("inputs", list), ("outputs", list), ("buffers", list), ("weights", list),
                          ("kernels", list), ("launches", list), ("arena_bytes", int)):  # fmt: skip
            if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
                raise self.fail(f"manifest field {key!r} is missing or not a {kind.__name__}")
        arena = m["arena_bytes"]
        if not 0 <= arena <= MAX_ARENA_BYTES:
            raise self.fail(f"arena of {arena} bytes")
        buffers = [self._buffer(i, b, arena) for i, b in enumerate(m["buffers"])]
        nbuf = len(buffers)

        def buffer_id(x, where: str) -> int:
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < nbuf:
                raise self.fail(f"{where}: buffer id {x!r} is out of range (0..{nbuf - 1})")
            return x

        inputs = self._named(m["inputs"], "inputs", buffer_id)
        outputs = self._named(m["outputs"], "outputs", buffer_id)
        for name, bid in inputs:
            if buffers[bid].role != "input" or buffers[bid].shape is None:
                raise self.fail(f"input {name!r} names buffer {bid}, which is not a static input buffer")

        weights: dict[int, np.ndarray] = {}
        for i, w in enumerate(m["weights"]):
            if not isinstance(w, dict):
                raise self.fail(f"weights[{i}] is not an object")
            bid = buffer_id(w.get("buffer"), f"weights[{i}]")
            b = buffers[bid]
            if b.role != "weight" or bid in weights:
                raise self.fail(f"weights[{i}]: buffer {bid} is not a weight, or is given twice")
            weights[bid] = self._array(f"weights/{bid}", w.get("format"), b.dtype, b.shape)
        missing = [i for i, b in enumerate(buffers) if b.role == "weight" and i not in weights]
        if missing:
            raise self.fail(f"weight buffer {missing[0]} has no data")

        kernels = [self._kernel(k, e) for k, e in enumerate(m["kernels"])]
        launches = self._launches(m["launches"], buffers, kernels, buffer_id)
        written = {r for ln in launches for r in ln.results}
        for name, bid in outputs:
            if buffers[bid].role in ("temp", "output", "dynamic") and bid not in written:
                raise self.fail(f"output {name!r} (buffer {bid}) is never computed")
        return Executable(inputs, outputs, buffers, weights, kernels, launches, arena, m["meta"])

    def _buffer(self, i: int, b, arena: int) -> Buffer:
        if not isinstance(b, dict):
            raise self.fail(f"buffers[{i}] is not an object")
        role, offset = b.get("role"), b.get("offset")
        if role not in ROLES:
            raise self.fail(f"buffers[{i}] has an unknown role {role!r}")
        if b.get("shape") is None and role != "dynamic":
            raise self.fail(f"buffers[{i}]: only dynamic buffers may have no shape")
        dtype, shape = self._dtype_shape(f"buffers[{i}]", b.get("dtype"), b.get("shape"))
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise self.fail(f"buffers[{i}] has a bad offset {offset!r}")
        buf = Buffer(dtype, shape, role, offset)
        if role == "temp":
            if offset < 0 or offset % ALIGN or offset + buf.nbytes > arena:
                raise self.fail(f"buffers[{i}] ({buf.nbytes} bytes at offset {offset}) lies outside the arena")
        return buf

    def _dtype_shape(self, where: str, dtype, shape) -> tuple[DType, tuple[int, ...] | None]:
        try:
            dt = DType.parse(dtype)
        except (ValueError, TypeError):
            raise self.fail(f"{where} has an unknown dtype {dtype!r}") from None
        if shape is None:
            return dt, None
        if not isinstance(shape, list) or len(shape) > 64:
            raise self.fail(f"{where} has a bad shape {shape!r}")
        for d in shape:
            if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < (1 << 40):
                raise self.fail(f"{where} has a bad shape {shape!r}")
        return dt, tuple(shape)

    def _named(self, items: list, where: str, buffer_id) -> list[tuple[str, int]]:
        out, seen = [], set()
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise self.fail(f"{where}[{i}] must have a string name")
            name = item["name"]
            if name in seen:
                raise self.fail(f"{where}: {name!r} appears twice")
            seen.add(name)
            out.append((name, buffer_id(item.get("buffer"), f"{where}[{i}]")))
        return out

    def _array(self, stem: str, fmt, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fmt == "raw":
            data = self.read(f"{stem}.bin", MAX_ENTRY_BYTES)
            if len(data) != nbytes:
                raise self.fail(f"{stem}.bin holds {len(data)} bytes, {dtype}{list(shape)} needs {nbytes}")
            return np.frombuffer(data, dtype=dtype.np).reshape(shape).copy()
        if fmt != "npy":
            raise self.fail(f"{stem}: unknown array format {fmt!r}")
        data = self.read(f"{stem}.npy", nbytes + 4096)
        f = io.BytesIO(data)
        try:
            # Check the header before reading, so a lying header never sizes an allocation.
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            if tuple(got_shape) != shape or got_dtype != dtype.np or fortran:
                raise self.fail(f"{stem}.npy holds {got_dtype}{list(got_shape)}, expected {dtype}{list(shape)}")
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
        except ExecutableFormatError:
            raise
        except (ValueError, OSError, EOFError) as e:
            raise self.fail(f"{stem}.npy is not a readable .npy array ({e})") from None
        return arr

    def _kernel(self, k: int, e) -> KernelSlot:
        from einfuse.ir.parser import parse

        if not isinstance(e, dict) or not isinstance(e.get("info"), dict):
            raise self.fail(f"kernels[{k}] is not an object with info")
        info = e["info"]
        ok = (
            isinstance(info.get("name"), str)
            and _SYMBOL.fullmatch(info["name"])
            and isinstance(info.get("backend"), str)
            and _BACKEND.fullmatch(info["backend"])
            and isinstance(info.get("kind"), str)
            and isinstance(info.get("ops"), list)
            and all(isinstance(o, str) for o in info["ops"])
            and isinstance(info.get("flops"), int)
            and isinstance(info.get("bytes_moved"), int)
            and isinstance(info.get("meta"), dict)
        )
        if not ok:
            raise self.fail(f"kernels[{k}] has a malformed description")
        lib, region = e.get("library"), e.get("region")
        if lib is not None:
            if not isinstance(lib, dict) or not isinstance(lib.get("sha256"), str) or not _SHA.fullmatch(lib["sha256"]):
                raise self.fail(f"kernels[{k}] has a malformed library record")
            data = self.read(f"kernels/{k}.so", MAX_ENTRY_BYTES)
            if hashlib.sha256(data).hexdigest() != lib["sha256"]:
                raise self.fail(f"kernels/{k}.so does not match its sha256 (damaged or altered)")
            from einfuse.runtime.cache import KernelCache

            # The library goes into the cache folder under a name derived from its hash.
            path = KernelCache(self.cache_dir).store_library(data, lib["sha256"])
            try:
                kernel = load_library_kernel(path, info)
            except ExecutableFormatError:
                raise
            except Exception as ex:
                raise self.fail(f"kernels/{k}.so cannot be loaded ({type(ex).__name__}: {ex})") from None
            return KernelSlot(kernel, info, library=path)
        if region is None or not isinstance(region, dict) or not isinstance(region.get("constants"), list):
            raise self.fail(f"kernels[{k}] has neither a library nor a region")
        consts = {}
        for j, c in enumerate(region["constants"]):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                raise self.fail(f"kernels[{k}]: region constant {j} has no name")
            where = f"kernels[{k}] region constant {j}"
            if c.get("shape") is None:
                raise self.fail(f"{where} has no shape")
            dtype, shape = self._dtype_shape(where, c.get("dtype"), c.get("shape"))
            consts[c["name"]] = self._array(f"regions/{k}/{j}", c.get("format"), dtype, shape)
        raw = self.read(f"regions/{k}.ir", MAX_MANIFEST_BYTES)
        try:
            graph = parse(raw.decode("utf-8"), constants=consts)
        except EinfuseError as ex:
            raise self.fail(f"regions/{k}.ir: {ex.message}") from None
        except UnicodeDecodeError:
            raise self.fail(f"regions/{k}.ir is not UTF-8 text") from None
        if set(graph.constants) != set(consts):
            raise self.fail(f"regions/{k}.ir: its constants do not match the manifest")
        return KernelSlot(reference_kernel(graph, info), info, region=graph)

    def _launches(self, items: list, buffers: list[Buffer], kernels: list[KernelSlot], buffer_id) -> list[Launch]:
        out = []
        ready = {i for i, b in enumerate(buffers) if b.role in ("input", "weight")}
        for i, ln in enumerate(items):
            if not isinstance(ln, dict):
                raise self.fail(f"launches[{i}] is not an object")
            k = ln.get("kernel")
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(kernels):
                raise self.fail(f"launches[{i}]: kernel {k!r} is out of range")
            ops, res = ln.get("operands"), ln.get("results")
            if not isinstance(ops, list) or not isinstance(res, list) or not isinstance(ln.get("dynamic"), bool):
                raise self.fail(f"launches[{i}] is malformed")
            ops = tuple(buffer_id(x, f"launches[{i}]") for x in ops)
            res = tuple(buffer_id(x, f"launches[{i}]") for x in res)
            for x in ops:
                if x not in ready:
                    raise self.fail(f"launches[{i}] reads buffer {x} before it is written")
            for x in res:
                if buffers[x].role not in ("temp", "output", "dynamic") or x in ready:
                    raise self.fail(f"launches[{i}] writes buffer {x}, which is not a fresh result buffer")
                ready.add(x)
            slot = kernels[k]
            region = slot.region
            if region is not None and (len(region.inputs) != len(ops) or len(region.outputs) != len(res)):
                raise self.fail(f"launches[{i}] does not match its kernel's operands and results")
            meta = slot.info["meta"]
            if slot.library is not None and isinstance(meta.get("num_operands"), int):
                # A native function called with the wrong number of arrays could crash.
                want = meta["num_operands"] + len(meta.get("const_params") or ())
                outs = meta.get("num_outputs", len(res))
                if len(ops) != want or len(res) != outs:
                    got = f"{len(ops)}+{len(res)}"
                    raise self.fail(f"launches[{i}] passes {got} arrays to a kernel taking {want}+{outs}")
            if ln["dynamic"] and slot.region is None:
                raise self.fail(f"launches[{i}] is dynamic but its kernel has no region")
            out.append(Launch(k, ops, res, ln["dynamic"]))
        return out


def zlib_error():
    import zlib

    return zlib.error
