"""Tests for the safe ONNX loader: every hostile model is built here, in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from einfuse.errors import ModelLoadError, UnsafeModelError
from einfuse.frontends import onnx_io
from einfuse.frontends.onnx_io import load_model_proto, tensor_to_numpy

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


# ------------------------------------------------------------------------- helpers


def make_model(
    initializers: list[TensorProto], nodes: list[onnx.NodeProto] | None = None, name: str = "g"
) -> onnx.ModelProto:
    """A small model: Y = X + W, plus any extra nodes and initializers."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])
    add = helper.make_node("Add", ["X", "W"], ["Y"], name="add")
    graph = helper.make_graph([add, *(nodes or [])], name, [x], [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external_tensor(
    name: str,
    dims: list[int],
    location: str,
    *,
    offset: int | str | None = None,
    length: int | str | None = None,
    data_type: int = TensorProto.FLOAT,
) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            entry = t.external_data.add()
            entry.key = key
            entry.value = str(value)
    return t


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


W = np.arange(4, dtype=np.float32) + 0.5


def write_weights(folder: Path, name: str = "w.bin", values: np.ndarray = W) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(values.astype("<f4").tobytes())
    return path


def model_with_external(folder: Path, location: str, **kw: int | str | None) -> Path:
    """Saves folder/m.onnx whose initializer W (FLOAT [4]) is stored at `location`."""
    model = make_model([external_tensor("W", [4], location, **kw)])
    return save(model, folder / "m.onnx")


@pytest.fixture(params=["dir_fd", "by_path"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with both ways of opening external files."""
    if request.param == "dir_fd" and not onnx_io._USE_DIR_FD:
        pytest.skip("no dir_fd support on this platform")
    monkeypatch.setattr(onnx_io, "_USE_DIR_FD", request.param == "dir_fd")
    return request.param


# ---------------------------------------------------------------- valid models


def test_normal_model_round_trip(tmp_path: Path) -> None:
    model = make_model([numpy_helper.from_array(W, "W")])
    path = save(model, tmp_path / "m.onnx")
    for source in (path, str(path), path.read_bytes(), model):
        loaded = load_model_proto(source)
        assert loaded.graph.node[0].op_type == "Add"
        got = tensor_to_numpy(loaded.graph.initializer[0], where="initializer 'W'")
        np.testing.assert_array_equal(got, W)
        assert got.flags.writeable and got.dtype == np.float32


def test_model_proto_source_is_copied_not_modified(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    model = make_model([external_tensor("W", [4], "w.bin")])
    loaded = load_model_proto(model, base_dir=tmp_path)
    assert loaded is not model
    assert model.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert loaded.graph.initializer[0].data_location == TensorProto.DEFAULT


def test_external_data_inside_folder_loads_everywhere(tmp_path: Path, opener: str) -> None:
    """Initializers, Constant attributes, subgraphs and functions all get their data."""
    data = np.arange(20, dtype=np.float32)
    write_weights(tmp_path, "data/weights.bin", data)
    # W at offset 0; the Constant's value at offset 16; a subgraph initializer at 32;
    # a function's Constant reads to the end of the file (no length given).
    const = helper.make_node("Constant", [], ["C"], name="const")
    const_value = external_tensor("c", [4], "data/weights.bin", offset=16, length=16)
    const.attribute.append(helper.make_attribute("value", const_value))
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["S"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        initializer=[external_tensor("S", [4], "./data//weights.bin", offset=32, length=16)],
    )
    if_node = helper.make_node("If", ["cond"], ["Z"], name="if", then_branch=then_graph, else_branch=then_graph)
    model = make_model([external_tensor("W", [4], "data/weights.bin", offset=0, length=16)], [const, if_node])
    fn_const = helper.make_node("Constant", [], ["k"])
    fn_const.attribute.append(helper.make_attribute("value", external_tensor("k", [4], "data/weights.bin", offset=64)))
    model.functions.append(helper.make_function("local", "F", [], ["k"], [fn_const], [helper.make_opsetid("", 17)]))
    path = save(model, tmp_path / "m.onnx")

    loaded = load_model_proto(path)
    tensors = list(onnx_io._iter_tensors(loaded))
    assert len(tensors) == 5  # W, C's value, S in both branches, the function's k
    for t, where in tensors:
        assert t.data_location == TensorProto.DEFAULT and not t.external_data
        assert "\n" not in where
    g = loaded.graph
    np.testing.assert_array_equal(tensor_to_numpy(g.initializer[0], where="W"), data[0:4])
    np.testing.assert_array_equal(tensor_to_numpy(g.node[1].attribute[0].t, where="C"), data[4:8])
    np.testing.assert_array_equal(tensor_to_numpy(g.node[2].attribute[0].g.initializer[0], where="S"), data[8:12])
    np.testing.assert_array_equal(tensor_to_numpy(loaded.functions[0].node[0].attribute[0].t, where="k"), data[16:20])


def test_bytes_source_with_external_data_needs_base_dir(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    data = make_model([external_tensor("W", [4], "w.bin")]).SerializeToString()
    with pytest.raises(ModelLoadError, match=r"initializer 'W' stores its data in external file 'w.bin'.*no folder"):
        load_model_proto(data)
    loaded = load_model_proto(data, base_dir=tmp_path)
    np.testing.assert_array_equal(tensor_to_numpy(loaded.graph.initializer[0], where="W"), W)


# ------------------------------------------------------------ broken model files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match=r"model file '.*nope\.onnx' does not exist"):
        load_model_proto(path)


def test_truncated_file(tmp_path: Path) -> None:
    model = make_model([numpy_helper.from_array(np.arange(256, dtype=np.float32), "W")])
    data = model.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"'.*m\.onnx' is not a valid ONNX model \(protobuf"):
        load_model_proto(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=r"is not a valid ONNX model \("):
        load_model_proto(path)


@pytest.mark.parametrize("text", ["hello world\n", "ir_version: 8\ngraph { name: 'g' }\n", "{}"])
def test_text_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=r"is not a valid ONNX model \("):
        load_model_proto(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"is not a valid ONNX model \(it is empty\)"):
        load_model_proto(path)
    with pytest.raises(ModelLoadError, match=r"is not a valid ONNX model \(it is empty\)"):
        load_model_proto(b"")


def test_model_without_graph_or_ir_version() -> None:
    with pytest.raises(ModelLoadError, match=r"no graph"):
        load_model_proto(onnx.ModelProto(ir_version=8).SerializeToString())
    model = make_model([numpy_helper.from_array(W, "W")])
    model.ir_version = 0
    with pytest.raises(ModelLoadError, match=r"no ir_version"):
        load_model_proto(model)


def test_directory_as_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model file .* is not a regular file"):
        load_model_proto(tmp_path)


def test_protobuf_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: a real 2 GiB file is too slow to write, so shrink the limit."""
    path = save(make_model([numpy_helper.from_array(np.zeros(64, np.float32), "W")]), tmp_path / "m.onnx")
    monkeypatch.setattr(onnx_io, "PROTOBUF_LIMIT", 100)
    with pytest.raises(ModelLoadError, match=r"over the 100-byte protobuf limit") as info:
        load_model_proto(path)
    assert info.value.hint is not None and "external data" in info.value.hint
    with pytest.raises(ModelLoadError, match=r"protobuf limit"):
        load_model_proto(path.read_bytes())


def test_wrong_source_type() -> None:
    with pytest.raises(TypeError, match=r"cannot load an ONNX model from int"):
        load_model_proto(3)  # type: ignore[arg-type]


# --------------------------------------------------------- hostile external data


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside.bin", r"contains '\.\.'"),
        ("sub/../../outside.bin", r"contains '\.\.'"),
        ("..\\outside.bin", r"contains '\.\.'"),
        ("sub/..", r"contains '\.\.'"),
        ("/etc/passwd", r"is an absolute path"),
        ("\\\\server\\share\\w.bin", r"is an absolute path"),
        ("C:\\w.bin", r"is an absolute path"),
        ("w\0.bin", r"NUL byte"),
    ],
)
def test_escaping_locations_refused(tmp_path: Path, opener: str, location: str, message: str) -> None:
    (tmp_path / "model").mkdir()
    write_weights(tmp_path, "outside.bin")
    path = model_with_external(tmp_path / "model", location)
    with pytest.raises(UnsafeModelError, match=r"initializer 'W': external data location .*" + message):
        load_model_proto(path)


def test_absolute_path_to_real_file_refused(tmp_path: Path, opener: str) -> None:
    target = write_weights(tmp_path)
    path = model_with_external(tmp_path, str(target))
    with pytest.raises(UnsafeModelError, match=r"is an absolute path"):
        load_model_proto(path)


@needs_symlinks
def test_symlink_pointing_outside_refused(tmp_path: Path, opener: str) -> None:
    (tmp_path / "model").mkdir()
    outside = write_weights(tmp_path, "secret.bin")
    os.symlink(outside, tmp_path / "model" / "w.bin")
    path = model_with_external(tmp_path / "model", "w.bin")
    with pytest.raises(UnsafeModelError, match=r"goes through the symlink 'w\.bin'"):
        load_model_proto(path)


@needs_symlinks
def test_symlink_pointing_inside_refused(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path, "real.bin")
    os.symlink("real.bin", tmp_path / "w.bin")
    path = model_with_external(tmp_path, "w.bin")
    with pytest.raises(UnsafeModelError, match=r"symlink 'w\.bin'; einfuse does not follow symlinks"):
        load_model_proto(path)


@needs_symlinks
def test_symlinked_folder_component_refused(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path, "real/w.bin")
    os.symlink("real", tmp_path / "link")
    path = model_with_external(tmp_path, "link/w.bin")
    with pytest.raises(UnsafeModelError, match=r"goes through the symlink 'link'"):
        load_model_proto(path)


def test_hard_link_refused(tmp_path: Path, opener: str) -> None:
    real = write_weights(tmp_path, "real.bin")
    try:
        os.link(real, tmp_path / "w.bin")
    except OSError as e:  # some filesystems have no hard links
        pytest.skip(f"no hard links here: {e}")
    path = model_with_external(tmp_path, "w.bin")
    with pytest.raises(UnsafeModelError, match=r"external data file 'w\.bin' has 2 hard links") as info:
        load_model_proto(path)
    assert info.value.hint is not None


@needs_fifo
def test_fifo_refused_without_blocking(tmp_path: Path, opener: str) -> None:
    os.mkfifo(tmp_path / "w.bin")
    path = model_with_external(tmp_path, "w.bin")
    with pytest.raises(UnsafeModelError, match=r"'w\.bin' is not a regular file"):
        load_model_proto(path)


def test_folder_as_external_file_refused(tmp_path: Path, opener: str) -> None:
    (tmp_path / "w.bin").mkdir()
    path = model_with_external(tmp_path, "w.bin")
    with pytest.raises(UnsafeModelError, match=r"'w\.bin' is not a regular file"):
        load_model_proto(path)


def test_missing_external_file(tmp_path: Path, opener: str) -> None:
    path = model_with_external(tmp_path, "sub/w.bin")
    with pytest.raises(ModelLoadError, match=r"external data file 'sub/w\.bin' does not exist"):
        load_model_proto(path)


@pytest.mark.parametrize(
    ("offset", "length", "message"),
    [
        (100, None, r"offset 100 is past the end of 'w\.bin' \(16 bytes\)"),
        (8, 16, r"offset=8 length=16 goes past the end of 'w\.bin' \(16 bytes\)"),
        (0, 1 << 40, r"goes past the end"),
    ],
)
def test_offset_length_past_end(tmp_path: Path, opener: str, offset: int, length: int | None, message: str) -> None:
    write_weights(tmp_path)
    path = model_with_external(tmp_path, "w.bin", offset=offset, length=length)
    with pytest.raises(ModelLoadError, match=r"initializer 'W': external data .*" + message):
        load_model_proto(path)


@pytest.mark.parametrize("bad", ["-1", "1e3", " 4", "+4", "1_0", "0x10", "9" * 100])
def test_malformed_offset(tmp_path: Path, opener: str, bad: str) -> None:
    write_weights(tmp_path)
    path = model_with_external(tmp_path, "w.bin", offset=bad)
    with pytest.raises(ModelLoadError, match=r"initializer 'W' has an invalid external data offset"):
        load_model_proto(path)


def test_external_entries_must_be_unambiguous(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    t = external_tensor("W", [4], "w.bin")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../x.bin"
    save(make_model([t]), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"repeats the external_data key 'location'"):
        load_model_proto(tmp_path / "m.onnx")

    t = external_tensor("W", [4], "w.bin")
    t.raw_data = W.tobytes()
    save(make_model([t]), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"has both external data and in-file data"):
        load_model_proto(tmp_path / "m.onnx")


def test_external_length_must_match_shape(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    path = model_with_external(tmp_path, "w.bin", offset=4)  # 12 bytes left, 16 needed
    with pytest.raises(ModelLoadError, match=r"declares shape \[4\] of FLOAT \(16 bytes\) but its external data is 12"):
        load_model_proto(path)


def test_external_byte_budget(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    model = make_model([external_tensor("W", [4], "w.bin"), external_tensor("W2", [4], "w.bin")])
    path = save(model, tmp_path / "m.onnx")
    assert len(load_model_proto(path, max_external_bytes=32).graph.initializer) == 2
    with pytest.raises(UnsafeModelError, match=r"initializer 'W2' brings the external data to 32 bytes, over"):
        load_model_proto(path, max_external_bytes=31)


def test_external_huge_declared_shape_refused_before_reading(tmp_path: Path, opener: str) -> None:
    write_weights(tmp_path)
    path = save(make_model([external_tensor("W", [1 << 40, 1 << 40], "w.bin")]), tmp_path / "m.onnx")
    with pytest.raises(UnsafeModelError, match=r"declares shape \[1099511627776, 1099511627776\] of FLOAT, over"):
        load_model_proto(path)


def test_hostile_names_cannot_forge_lines(tmp_path: Path, opener: str) -> None:
    name = "W'\nerror: everything is fine\r"
    model = make_model([external_tensor(name, [4], "../x\n.bin")])
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsafeModelError) as info:
        load_model_proto(path)
    text = str(info.value)
    assert "\n" not in text and "\r" not in text
    assert repr(name) in text and repr("../x\n.bin") in text


# ------------------------------------------------------------ tensor_to_numpy


def raw_tensor(name: str, data_type: int, dims: list[int], raw: bytes) -> TensorProto:
    # Built by hand: helper.make_tensor refuses mismatched sizes itself.
    return TensorProto(name=name, data_type=data_type, dims=dims, raw_data=raw)


def test_raw_data_too_short_or_long() -> None:
    short = raw_tensor("w", TensorProto.FLOAT, [4], W.tobytes()[:12])
    with pytest.raises(ModelLoadError, match=r"initializer 'w' declares shape \[4\] of FLOAT \(16 bytes\) but has 12"):
        tensor_to_numpy(short, where="initializer 'w'")
    long = raw_tensor("w", TensorProto.FLOAT, [2], W.tobytes())
    with pytest.raises(ModelLoadError, match=r"\(8 bytes\) but has 16 bytes of raw_data"):
        tensor_to_numpy(long, where="initializer 'w'")


def test_float_data_too_short() -> None:
    t = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    t.dims[:] = [4]
    with pytest.raises(ModelLoadError, match=r"initializer 'w' declares shape \[4\] of FLOAT \(4 elements\) but has 3"):
        tensor_to_numpy(t, where="initializer 'w'")


def test_packed_int32_data_count_and_range() -> None:
    t = helper.make_tensor("h", TensorProto.FLOAT16, [2], np.array([1, 2], np.float16))
    t.int32_data.append(0)
    with pytest.raises(ModelLoadError, match=r"of FLOAT16 \(2 elements\) but has 3 elements of int32_data"):
        tensor_to_numpy(t, where="h")
    t = TensorProto(name="b", data_type=TensorProto.INT8, dims=[2], int32_data=[1, 1000])
    with pytest.raises(ModelLoadError, match=r"int32_data value out of range for INT8"):
        tensor_to_numpy(t, where="b")


def test_data_in_wrong_or_two_fields() -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], int64_data=[1])
    with pytest.raises(ModelLoadError, match=r"has dtype FLOAT but stores data in int64_data"):
        tensor_to_numpy(t, where="w")
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], float_data=[1.0], raw_data=b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match=r"has both raw_data and float_data"):
        tensor_to_numpy(t, where="w")


def test_negative_dims() -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=W.tobytes())
    with pytest.raises(ModelLoadError, match=r"'w' has a negative dimension -1"):
        tensor_to_numpy(t, where="initializer 'w'")


@pytest.mark.parametrize("dims", [[1 << 62, 1 << 62], [1 << 40, 0, 1 << 40], [1 << 20] * 10])
def test_huge_declared_shape_refused_before_allocation(dims: list[int]) -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=b"")
    with pytest.raises(UnsafeModelError, match=r"initializer 'w' declares shape .* over the limit of"):
        tensor_to_numpy(t, where="initializer 'w'")
    small = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64], raw_data=bytes(256))
    with pytest.raises(UnsafeModelError, match=r"over the limit of 100 bytes"):
        tensor_to_numpy(small, where="w", max_bytes=100)


def test_unsupported_dtypes() -> None:
    t = helper.make_tensor("s", TensorProto.STRING, [1], [b"hi"])
    with pytest.raises(ModelLoadError, match=r"^tensor 's' has dtype STRING, which einfuse does not support$"):
        tensor_to_numpy(t, where="tensor 's'")
    with pytest.raises(ModelLoadError, match=r"has dtype COMPLEX64, which einfuse does not support"):
        tensor_to_numpy(TensorProto(name="c", data_type=TensorProto.COMPLEX64, dims=[0]), where="c")
    with pytest.raises(ModelLoadError, match=r"has no dtype"):
        tensor_to_numpy(TensorProto(name="u", dims=[0]), where="u")
    with pytest.raises(ModelLoadError, match=r"has unknown dtype 999"):
        tensor_to_numpy(TensorProto(name="u", data_type=999, dims=[0]), where="u")


def test_still_external_tensor_refused() -> None:
    t = external_tensor("W", [4], "w.bin")
    with pytest.raises(ModelLoadError, match=r"still refers to external data"):
        tensor_to_numpy(t, where="initializer 'W'")


VALUES = np.array([0.0, -1.5, 2.25, 448.0, -0.015625, 3.0], dtype=np.float32)


@pytest.mark.parametrize(
    ("data_type", "np_dtype"),
    [
        (TensorProto.FLOAT, np.float32),
        (TensorProto.DOUBLE, np.float64),
        (TensorProto.FLOAT16, np.float16),
        (TensorProto.BFLOAT16, ml_dtypes.bfloat16),
        (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
        (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2),
    ],
)
@pytest.mark.parametrize("raw", [True, False])
def test_float_dtypes_round_trip(data_type: int, np_dtype: type, raw: bool) -> None:
    expected = VALUES.astype(np_dtype).reshape(2, 3)
    if raw:
        t = helper.make_tensor("t", data_type, [2, 3], expected.tobytes(), raw=True)
    else:
        t = helper.make_tensor("t", data_type, [2, 3], expected)
    got = tensor_to_numpy(t, where="t")
    assert got.dtype == np.dtype(np_dtype) and got.shape == (2, 3)
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))  # bit-exact
    np.testing.assert_array_equal(got.view(np.uint8), numpy_helper.to_array(t).view(np.uint8))


@pytest.mark.parametrize(
    "np_dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]
)
@pytest.mark.parametrize("raw", [True, False])
def test_integer_dtypes_round_trip(np_dtype: type, raw: bool) -> None:
    if np_dtype is np.bool_:
        expected = np.array([True, False, True, True])
    else:
        info = np.iinfo(np_dtype)
        expected = np.array([info.min, 0, 1, info.max], dtype=np_dtype)
    data_type = helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    t = helper.make_tensor("t", data_type, [4], expected.tobytes() if raw else expected, raw=raw)
    got = tensor_to_numpy(t, where="t")
    assert got.dtype == np.dtype(np_dtype)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, numpy_helper.to_array(t))


def test_scalar_and_empty_tensors() -> None:
    scalar = numpy_helper.from_array(np.array(7, dtype=np.int64), "s")
    assert tensor_to_numpy(scalar, where="s").shape == ()
    empty = TensorProto(name="e", data_type=TensorProto.FLOAT, dims=[0, 3])
    assert tensor_to_numpy(empty, where="e").shape == (0, 3)


@needs_symlinks
def test_model_folder_reached_through_symlink_loads(tmp_path: Path, opener: str) -> None:
    """Only components under the model's folder are policed, not the folder's own path."""
    write_weights(tmp_path / "real")
    model_with_external(tmp_path / "real", "w.bin")
    os.symlink("real", tmp_path / "alias")
    loaded = load_model_proto(tmp_path / "alias" / "m.onnx")
    np.testing.assert_array_equal(tensor_to_numpy(loaded.graph.initializer[0], where="W"), W)
