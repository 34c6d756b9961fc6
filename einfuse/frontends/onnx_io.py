"""Safe loading of ONNX models that may come from strangers.

`load_model_proto` reads a model and pulls every external-data tensor into memory
without trusting anything in the file: external data must live in the model's own
folder, reached without symlinks, hard links, `..` or absolute paths, and within a
byte budget. `tensor_to_numpy` converts one in-memory tensor after checking that the
data present matches the declared shape and dtype, before allocating anything.

Every failure is a one-line `ModelLoadError` (or its subclass `UnsafeModelError`)
naming the file or tensor at fault. Names from the model are always shown with
`repr()` so that a newline in a name cannot forge extra lines of output. Nothing is
ever unpickled, and onnx's own external-data loader is never used (it follows links).
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PureWindowsPath

import ml_dtypes
import numpy as np
import onnx

from einfuse.errors import ModelLoadError, UnsafeModelError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PROTOBUF_LIMIT",
    "load_model_proto",
    "tensor_to_numpy",
]

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB

# Protobuf cannot parse messages of 2 GiB or more; bigger models must keep their
# weights as external data. A module constant so tests can shrink it.
PROTOBUF_LIMIT = (1 << 31) - 1

_EXTERNAL_HINT = (
    "store the weights as external data, e.g. "
    "onnx.save_model(model, path, save_as_external_data=True)"
)

# Open flags that exist only on some platforms; 0 makes them no-ops elsewhere.
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must never block
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)

# Walking the external-data path one component at a time with dir_fd + O_NOFOLLOW
# closes the race where a folder is swapped for a symlink between check and open.
_USE_DIR_FD = (
    os.open in os.supports_dir_fd
    and os.stat in os.supports_dir_fd
    and bool(_O_NOFOLLOW)
    and bool(_O_DIRECTORY)
)

# Where external-data paths may have separators: both, on any OS, for the `..` and
# absolute-path checks (a model written on Windows may be read on Linux).
_ANY_SEP = re.compile(r"[\\/]")
_OS_SEP = re.compile(r"[\\/]" if os.name == "nt" else "/")
_DECIMAL = re.compile(r"[0-9]{1,20}")  # bounded: int() refuses very long digit strings


# --------------------------------------------------------------------------- dtypes


@dataclass(frozen=True)
class _DType:
    name: str
    np_dtype: np.dtype
    # Unsigned integer type with the same bit layout; raw data is read as this
    # (little-endian) and then reinterpreted, which works for ml_dtypes types too.
    bits: np.dtype
    # The TensorProto repeated field that holds the data when raw_data is unused.
    field: str
    # For int32_data-packed types (one element per int32 entry, per the ONNX spec):
    # the element's bit width; None when the field holds the value directly.
    packed_bits: int | None = None


def _dt(name: str, np_dtype: object, bits: object, field: str, packed: int | None = None) -> _DType:
    return _DType(name, np.dtype(np_dtype), np.dtype(bits), field, packed)


_P = onnx.TensorProto
_DTYPES: dict[int, _DType] = {
    _P.FLOAT: _dt("FLOAT", np.float32, np.uint32, "float_data"),
    _P.DOUBLE: _dt("DOUBLE", np.float64, np.uint64, "double_data"),
    _P.FLOAT16: _dt("FLOAT16", np.float16, np.uint16, "int32_data", 16),
    _P.BFLOAT16: _dt("BFLOAT16", ml_dtypes.bfloat16, np.uint16, "int32_data", 16),
    _P.FLOAT8E4M3FN: _dt("FLOAT8E4M3FN", ml_dtypes.float8_e4m3fn, np.uint8, "int32_data", 8),
    _P.FLOAT8E5M2: _dt("FLOAT8E5M2", ml_dtypes.float8_e5m2, np.uint8, "int32_data", 8),
    _P.FLOAT8E4M3FNUZ: _dt("FLOAT8E4M3FNUZ", ml_dtypes.float8_e4m3fnuz, np.uint8, "int32_data", 8),
    _P.FLOAT8E5M2FNUZ: _dt("FLOAT8E5M2FNUZ", ml_dtypes.float8_e5m2fnuz, np.uint8, "int32_data", 8),
    _P.FLOAT8E8M0: _dt("FLOAT8E8M0", ml_dtypes.float8_e8m0fnu, np.uint8, "int32_data", 8),
    _P.INT8: _dt("INT8", np.int8, np.uint8, "int32_data", 8),
    _P.INT16: _dt("INT16", np.int16, np.uint16, "int32_data", 16),
    _P.INT32: _dt("INT32", np.int32, np.uint32, "int32_data"),
    _P.INT64: _dt("INT64", np.int64, np.uint64, "int64_data"),
    _P.UINT8: _dt("UINT8", np.uint8, np.uint8, "int32_data", 8),
    _P.UINT16: _dt("UINT16", np.uint16, np.uint16, "int32_data", 16),
    _P.UINT32: _dt("UINT32", np.uint32, np.uint32, "uint64_data"),
    _P.UINT64: _dt("UINT64", np.uint64, np.uint64, "uint64_data"),
    _P.BOOL: _dt("BOOL", np.bool_, np.uint8, "int32_data", 8),
}

# Every typed storage field of TensorProto, to detect data in the wrong field.
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _dtype_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"unknown dtype {data_type}"


def _dtype_of(t: onnx.TensorProto, where: str) -> _DType:
    spec = _DTYPES.get(t.data_type)
    if spec is not None:
        return spec
    if t.data_type == onnx.TensorProto.UNDEFINED:
        raise ModelLoadError(f"{where} has no dtype (UNDEFINED)")
    name = _dtype_name(t.data_type)
    if name.startswith("unknown"):
        raise ModelLoadError(f"{where} has {name}, which is not an ONNX dtype")
    raise ModelLoadError(f"{where} has dtype {name}, which einfuse does not support")


def _checked_shape(t: onnx.TensorProto, spec: _DType, where: str, max_bytes: int) -> tuple[tuple[int, ...], int]:
    """Returns (shape, element count), refusing negative or oversized shapes.

    The size bound is applied to the product of the dims with zeros counted as
    ones, so that numpy never sees a shape whose size overflows even when a zero
    dim makes the tensor empty. The product is built incrementally and stops as
    soon as it exceeds the bound, so a hostile list of dims stays cheap.
    """
    shape = tuple(int(d) for d in t.dims)
    for d in shape:
        if d < 0:
            raise ModelLoadError(f"{where} has a negative dimension {d} in its shape {list(shape)}")
    limit = max(1, max_bytes // spec.bits.itemsize)
    bounded = 1
    for d in shape:
        bounded *= max(d, 1)
        if bounded > limit:
            raise UnsafeModelError(
                f"{where} declares shape {list(shape)} of {spec.name}, "
                f"over the limit of {max_bytes} bytes",
                hint="pass a larger max_bytes / max_external_bytes if you trust this model",
            )
    return shape, math.prod(shape)


# -------------------------------------------------------------------- tensor_to_numpy


def tensor_to_numpy(t: onnx.TensorProto, *, where: str, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Converts one TensorProto (data already in memory) to a numpy array.

    Checks that the data present matches the declared dims and dtype before any
    allocation; `where` names the element for errors, e.g. "initializer 'conv1.w'"
    or "attribute 'value' of node 'Constant_3'" (callers should repr() names).
    Tensors declaring more than `max_bytes` are refused. The result owns its memory
    and is writable.
    """
    spec = _dtype_of(t, where)
    shape, count = _checked_shape(t, spec, where, max_bytes)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelLoadError(
            f"{where} still refers to external data",
            hint="load the model with einfuse.frontends.onnx_io.load_model_proto",
        )
    if t.HasField("segment"):
        raise ModelLoadError(f"{where} is a segmented tensor, which einfuse does not support")

    present = [f for f in _TYPED_FIELDS if len(getattr(t, f))]
    if t.HasField("raw_data"):
        if present:
            # Readers disagree on which one wins; refuse rather than guess.
            raise ModelLoadError(f"{where} has both raw_data and {present[0]}")
        raw = t.raw_data
        expected = count * spec.bits.itemsize
        if len(raw) != expected:
            raise ModelLoadError(
                f"{where} declares shape {list(shape)} of {spec.name} ({expected} bytes) "
                f"but has {len(raw)} bytes of raw_data"
            )
        # ONNX raw data is little-endian; astype() makes a native-order, owned copy.
        arr = np.frombuffer(raw, dtype=spec.bits.newbyteorder("<")).astype(spec.bits)
        values = arr != 0 if spec.np_dtype == np.bool_ else arr.view(spec.np_dtype)
        return values.reshape(shape)

    wrong = [f for f in present if f != spec.field]
    if wrong:
        raise ModelLoadError(f"{where} has dtype {spec.name} but stores data in {wrong[0]}")
    data = getattr(t, spec.field)
    if len(data) != count:
        raise ModelLoadError(
            f"{where} declares shape {list(shape)} of {spec.name} ({count} elements) "
            f"but has {len(data)} elements of {spec.field}"
        )
    return _typed_to_numpy(data, spec, where).reshape(shape)


def _typed_to_numpy(data: Sequence[float] | Sequence[int], spec: _DType, where: str) -> np.ndarray:
    if spec.packed_bits is None:
        if spec.field == "uint64_data" and spec.np_dtype == np.uint32:
            vals = np.asarray(data, dtype=np.uint64)
            if vals.size and int(vals.max()) > 0xFFFFFFFF:
                raise ModelLoadError(f"{where} has a uint64_data value out of range for UINT32")
            return vals.astype(np.uint32)
        return np.array(data, dtype=spec.np_dtype)

    # One element per int32 entry. Accept both the signed and the unsigned reading
    # of the element's bits (writers differ, e.g. INT16 -1 vs 0xFFFF) but nothing wider.
    vals = np.asarray(data, dtype=np.int64)
    lo, hi = -(1 << (spec.packed_bits - 1)), (1 << spec.packed_bits) - 1
    if vals.size and (int(vals.min()) < lo or int(vals.max()) > hi):
        raise ModelLoadError(f"{where} has an int32_data value out of range for {spec.name}")
    if spec.np_dtype == np.bool_:
        return vals != 0
    return (vals & hi).astype(spec.bits).view(spec.np_dtype)


# ------------------------------------------------------------------- load_model_proto


def load_model_proto(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | onnx.ModelProto,
    *,
    max_external_bytes: int = DEFAULT_MAX_BYTES,
    base_dir: str | os.PathLike[str] | None = None,
) -> onnx.ModelProto:
    """Loads an ONNX model with all tensor data in memory.

    `source` is a path to a .onnx file, the serialized bytes, or a ModelProto (which
    is copied, never modified). External data is read only from the model file's
    folder, or from `base_dir` when given (required for bytes / ModelProto sources
    that use external data). At most `max_external_bytes` of external data are read
    in total. On return, no tensor (initializers, Constant-style attributes, sparse
    tensors, inside subgraphs and functions too) refers to external data.
    """
    if isinstance(source, onnx.ModelProto):
        label = "in-memory model"
        model = onnx.ModelProto()
        model.CopyFrom(source)
        folder = None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = "in-memory model"
        data = bytes(source)
        if len(data) > PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{label} is {len(data)} bytes, over the {PROTOBUF_LIMIT}-byte protobuf limit",
                hint=_EXTERNAL_HINT,
            )
        model = _parse(data, label)
        folder = None
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not isinstance(path, str):
            raise TypeError(f"model path must be str, not {type(path).__name__}")
        label = f"model file {path!r}"
        model = _parse(_read_model_file(path, label), label)
        folder = os.path.dirname(os.path.abspath(path))
    else:
        raise TypeError(f"cannot load an ONNX model from {type(source).__name__}")

    _check_model(model, label)
    if base_dir is not None:
        folder = os.fspath(base_dir)
    _load_external_data(model, folder, max_external_bytes)
    return model


def _read_model_file(path: str, label: str) -> bytes:
    try:
        # O_NONBLOCK: a FIFO named as the model must not hang us before fstat.
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK | _O_BINARY)
    except FileNotFoundError:
        raise ModelLoadError(f"{label} does not exist") from None
    except OSError as e:
        raise ModelLoadError(f"cannot open {label}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{label} is not a regular file")
        # Checked before reading so a huge file is refused without loading it.
        if st.st_size > PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{label} is {st.st_size} bytes, over the {PROTOBUF_LIMIT}-byte protobuf limit",
                hint=_EXTERNAL_HINT,
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read(st.st_size)
        except OSError as e:
            raise ModelLoadError(f"cannot read {label}: {e.strerror}") from None


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{label} is not a valid ONNX model (it is empty)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # DecodeError, or RuntimeError etc. from some backends
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{label} is not a valid ONNX model (protobuf: {reason!r})") from None
    return model


def _check_model(model: onnx.ModelProto, label: str) -> None:
    # Random bytes or text sometimes parse as a protobuf with only unknown fields.
    if not model.HasField("graph"):
        raise ModelLoadError(f"{label} is not a valid ONNX model (it has no graph)")
    if model.ir_version <= 0:
        raise ModelLoadError(f"{label} is not a valid ONNX model (it has no ir_version)")


# ----------------------------------------------------------------- tensor traversal


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name!r}" if node.name else f"node #{index} ({node.op_type!r})"


def _iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Yields every TensorProto in the model with a description of where it is.

    Covers initializers, sparse initializers, tensor / sparse-tensor attributes,
    recursing into subgraphs, functions and training info. Iterative, so a deeply
    nested hostile model cannot hit Python's recursion limit.
    """
    # (initializers, sparse initializers, nodes, " in ..." suffix for messages)
    stack: list[tuple[Sequence[onnx.TensorProto], Sequence[onnx.SparseTensorProto], Sequence[onnx.NodeProto], str]]
    stack = []

    def push_graph(g: onnx.GraphProto, ctx: str) -> None:
        stack.append((g.initializer, g.sparse_initializer, g.node, ctx))

    push_graph(model.graph, "")
    for i, info in enumerate(model.training_info):
        push_graph(info.initialization, f" in training_info[{i}].initialization")
        push_graph(info.algorithm, f" in training_info[{i}].algorithm")
    for f in model.functions:
        stack.append(((), (), f.node, f" in function {f.name!r}"))

    while stack:
        inits, sparse_inits, nodes, ctx = stack.pop()
        for t in inits:
            yield t, f"initializer {t.name!r}{ctx}"
        for sp in sparse_inits:
            yield sp.values, f"values of sparse initializer {sp.values.name!r}{ctx}"
            yield sp.indices, f"indices of sparse initializer {sp.values.name!r}{ctx}"
        for i, node in enumerate(nodes):
            node_ctx = f"{_node_label(node, i)}{ctx}"
            for a in node.attribute:
                at = f"attribute {a.name!r} of {node_ctx}"
                if a.HasField("t"):
                    yield a.t, at
                for j, t in enumerate(a.tensors):
                    yield t, f"tensor #{j} of {at}"
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values, f"values of sparse {at}"
                    yield a.sparse_tensor.indices, f"indices of sparse {at}"
                for j, sp in enumerate(a.sparse_tensors):
                    yield sp.values, f"values of sparse tensor #{j} of {at}"
                    yield sp.indices, f"indices of sparse tensor #{j} of {at}"
                if a.HasField("g"):
                    push_graph(a.g, f" in subgraph {a.name!r} of {node_ctx}")
                for j, g in enumerate(a.graphs):
                    push_graph(g, f" in subgraph #{j} of {a.name!r} of {node_ctx}")


# -------------------------------------------------------------------- external data


def _load_external_data(model: onnx.ModelProto, folder: str | None, max_bytes: int) -> None:
    total = 0
    for t, where in _iter_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc, offset, length = _external_info(t, where)
        if folder is None:
            raise ModelLoadError(
                f"{where} stores its data in external file {loc!r}, but the model was "
                "not loaded from a file, so there is no folder to read it from",
                hint="load the model from its path, or pass base_dir=",
            )
        fd = _open_external(folder, loc, where)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            if offset > size:
                raise ModelLoadError(
                    f"{where}: external data offset {offset} is past the end of {loc!r} ({size} bytes)"
                )
            if length is None:
                length = size - offset
            if offset + length > size:
                raise ModelLoadError(
                    f"{where}: external data range offset={offset} length={length} "
                    f"goes past the end of {loc!r} ({size} bytes)"
                )
            # Both checks happen before reading anything.
            _check_external_length(t, where, length, max_bytes)
            total += length
            if total > max_bytes:
                raise UnsafeModelError(
                    f"{where} brings the external data to {total} bytes, "
                    f"over the limit of {max_bytes} bytes",
                    hint="pass a larger max_external_bytes if you trust this model",
                )
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ModelLoadError(f"{where}: external data file {loc!r} changed while being read")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _external_info(t: onnx.TensorProto, where: str) -> tuple[str, int, int | None]:
    """Returns (location, offset, length or None) from a tensor's external_data."""
    if t.HasField("raw_data") or any(len(getattr(t, f)) for f in _TYPED_FIELDS):
        raise ModelLoadError(f"{where} has both external data and in-file data")
    info: dict[str, str] = {}
    for entry in t.external_data:
        if entry.key in info:
            # Readers disagree on first-wins vs last-wins; refuse rather than guess.
            raise ModelLoadError(f"{where} repeats the external_data key {entry.key!r}")
        info[entry.key] = entry.value
    loc = info.get("location", "")
    if not loc:
        raise ModelLoadError(f"{where} uses external data but gives no location")
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        if key in info:
            # Strict decimal: int() would also accept " 1", "+1" and "1_0".
            if not _DECIMAL.fullmatch(info[key]):
                raise ModelLoadError(f"{where} has an invalid external data {key} {info[key]!r}")
            numbers[key] = int(info[key])
    return loc, numbers.get("offset", 0), numbers.get("length")


def _check_external_length(t: onnx.TensorProto, where: str, length: int, max_bytes: int) -> None:
    spec = _DTYPES.get(t.data_type)
    if spec is None:
        return  # tensor_to_numpy reports the dtype; the byte budget still applies
    shape, count = _checked_shape(t, spec, where, max_bytes)
    expected = count * spec.bits.itemsize
    if length != expected:
        raise ModelLoadError(
            f"{where} declares shape {list(shape)} of {spec.name} ({expected} bytes) "
            f"but its external data is {length} bytes"
        )


def _check_location(loc: str, where: str) -> list[str]:
    """Lexical checks on an external-data location; returns its path components."""
    if "\0" in loc:
        raise UnsafeModelError(f"{where}: external data location {loc!r} contains a NUL byte")
    win = PureWindowsPath(loc)
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or win.drive or win.root:
        raise UnsafeModelError(
            f"{where}: external data location {loc!r} is an absolute path; "
            "only files inside the model's folder are allowed"
        )
    if ".." in _ANY_SEP.split(loc):
        raise UnsafeModelError(
            f"{where}: external data location {loc!r} contains '..'; "
            "only files inside the model's folder are allowed"
        )
    parts = [p for p in _OS_SEP.split(loc) if p not in ("", ".")]
    if not parts:
        raise ModelLoadError(f"{where}: external data location {loc!r} does not name a file")
    return parts


def _open_external(folder: str, loc: str, where: str) -> int:
    """Opens an external-data file safely and returns its file descriptor."""
    parts = _check_location(loc, where)
    real_folder = os.path.realpath(folder)
    opener = _open_with_dir_fd if _USE_DIR_FD else _open_by_path
    fd = opener(real_folder, parts, loc, where)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeModelError(f"{where}: external data file {loc!r} is not a regular file")
        if st.st_nlink > 1:
            # A hard link can make a file elsewhere (even outside the folder) appear here.
            raise UnsafeModelError(
                f"{where}: external data file {loc!r} has {st.st_nlink} hard links; "
                "einfuse refuses hard-linked data files",
                hint="copy the file so that it has a single link",
            )
        # Defense in depth: the walk above already excludes '..' and symlinks.
        real = os.path.realpath(os.path.join(real_folder, *parts))
        if os.path.commonpath([real, real_folder]) != real_folder or real == real_folder:
            raise UnsafeModelError(
                f"{where}: external data location {loc!r} resolves outside the model's folder"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _component_error(
    where: str, loc: str, component: str, st: os.stat_result | None, last: bool, err: OSError | None
) -> ModelLoadError:
    """Builds the error for one path component that cannot be used.

    `st` is the component's lstat result (None if that failed), `err` the error
    from opening it, if any.
    """
    if st is None:
        if err is None or isinstance(err, FileNotFoundError):
            return ModelLoadError(f"{where}: external data file {loc!r} does not exist in the model's folder")
        return ModelLoadError(f"{where}: cannot open external data file {loc!r}: {err.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return UnsafeModelError(
            f"{where}: external data path {loc!r} goes through the symlink {component!r}; "
            "einfuse does not follow symlinks"
        )
    if last and not stat.S_ISREG(st.st_mode):
        return UnsafeModelError(f"{where}: external data file {loc!r} is not a regular file")
    if not last and not stat.S_ISDIR(st.st_mode):
        return ModelLoadError(f"{where}: external data path {loc!r}: {component!r} is not a folder")
    reason = err.strerror if err is not None else "it changed while being opened"
    return ModelLoadError(f"{where}: cannot open external data file {loc!r}: {reason}")


def _open_with_dir_fd(folder: str, parts: list[str], loc: str, where: str) -> int:
    """Opens folder/parts... one component at a time, never following a symlink."""
    dir_fd = os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                pre = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                raise _component_error(where, loc, part, None, last, e) from None
            # lstat first so devices and FIFOs are refused without being opened.
            ok = stat.S_ISREG(pre.st_mode) if last else stat.S_ISDIR(pre.st_mode)
            if not ok:
                raise _component_error(where, loc, part, pre, last, None)
            flags = os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | (_O_NONBLOCK if last else _O_DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=dir_fd)
            except OSError as e:
                # Swapped after the lstat (e.g. for a symlink): re-check to explain.
                try:
                    now: os.stat_result | None = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    now = None
                raise _component_error(where, loc, part, now, last, e) from None
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (pre.st_dev, pre.st_ino):
                os.close(fd)
                raise _component_error(where, loc, part, pre, last, None)
            if last:
                return fd
            os.close(dir_fd)
            dir_fd = fd
        raise AssertionError("unreachable: parts is never empty")
    finally:
        os.close(dir_fd)


def _open_by_path(folder: str, parts: list[str], loc: str, where: str) -> int:
    """Fallback without dir_fd support: lstat every component, then open and compare."""
    path = folder
    pre: os.stat_result | None = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path = os.path.join(path, part)
        try:
            pre = os.lstat(path)
        except OSError as e:
            raise _component_error(where, loc, part, None, last, e) from None
        ok = stat.S_ISREG(pre.st_mode) if last else stat.S_ISDIR(pre.st_mode)
        if not ok:
            raise _component_error(where, loc, part, pre, last, None)
    assert pre is not None
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK | _O_BINARY)
    except OSError as e:
        try:
            now: os.stat_result | None = os.lstat(path)
        except OSError:
            now = None
        raise _component_error(where, loc, parts[-1], now, True, e) from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (pre.st_dev, pre.st_ino):
        os.close(fd)
        raise _component_error(where, loc, parts[-1], pre, True, None)
    return fd
