"""Tests for the `einfuse` command (einfuse/cli.py), run in-process through main(argv)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from einfuse import cli
from einfuse.errors import InputError
from einfuse.testing import conformance

# ------------------------------------------------------------------------- helpers


def save_model(path, nodes, inputs, outputs, opset: int = 17) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def model(tmp_path) -> str:
    """out = relu(x + y) with x: f32[B,3], y: f32[2,3]; eq = (i == i) with i: i64[2,3]."""
    return save_model(
        tmp_path / "m.onnx",
        [
            helper.make_node("Add", ["x", "y"], ["s"]),
            helper.make_node("Relu", ["s"], ["out"]),
            helper.make_node("Equal", ["i", "i"], ["eq"]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("eq", TensorProto.BOOL, None),
        ],
    )


def npy(tmp_path, name: str, arr) -> str:
    path = tmp_path / name
    np.save(path, arr)
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc: int, err: str, match: str) -> None:
    """Exit 1 and exactly one `error:` line (notes may precede it), no traceback."""
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert match in errors[0], err
    assert "Traceback" not in err
    assert all(line.startswith(("error:", "hint:", "note:")) for line in err.splitlines()), err


# ------------------------------------------------------------------------------ run


def test_run_random_inputs_prints_one_line_per_output(capsys, model):
    rc, out, err = run_cli(capsys, "run", model)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("out: f32[2,3]  min=") and "mean=" in lines[0] and ", ...]" in lines[0]
    assert lines[1].startswith("eq: bool[2,3]  true=6/6")
    assert "note: symbolic dims B default to 1" in err
    assert "random inputs (seed 0)" in err


def test_run_is_seeded(capsys, model):
    first = run_cli(capsys, "run", model)[1]
    again = run_cli(capsys, "run", model, "--seed", "0")[1]
    other = run_cli(capsys, "run", model, "--seed", "1")[1]
    assert first == again
    assert first != other


def test_run_save_round_trip(capsys, tmp_path, model):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    y = np.full((2, 3), 0.5, np.float32)
    i = np.array([[0, 1, 2], [3, 4, 5]], np.int64)
    out_path = tmp_path / "out.npz"
    rc, out, err = run_cli(
        capsys,
        "run",
        model,
        "--input",
        f"x={npy(tmp_path, 'x.npy', x)}",
        "--input",
        f"y={npy(tmp_path, 'y.npy', y)}",
        "--input",
        f"i={npy(tmp_path, 'i.npy', i)}",
        "--save",
        str(out_path),
    )
    assert rc == 0, err
    assert "random inputs" not in err
    # B comes from the given x, so no default-to-1 note.
    assert "default to 1" not in err
    with np.load(out_path, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["eq", "out"]
        np.testing.assert_array_equal(saved["out"], np.maximum(x + y, 0))
        assert saved["out"].dtype == np.float32
        np.testing.assert_array_equal(saved["eq"], np.ones((2, 3), bool))
    assert "out: f32[2,3]  min=0 max=3.5 mean=1.33333  [0, 0, 0.5, 1.5, 2.5, ...]" in out


def test_run_partial_inputs_and_dims(capsys, tmp_path, model):
    y = np.zeros((2, 3), np.float32)
    rc, _, err = run_cli(capsys, "run", model, "--input", f"y={npy(tmp_path, 'y.npy', y)}", "--dims", "B=2")
    assert rc == 0, err
    assert "random inputs (seed 0) for 'x', 'i'" in err
    assert "default to 1" not in err


def test_save_handles_awkward_output_names(tmp_path):
    path = tmp_path / "o.npz"
    cli.save_npz(str(path), {"file": np.ones(2, np.float32), "allow_pickle": np.zeros(1, np.int64)})
    with np.load(path, allow_pickle=False) as saved:
        assert saved["file"].tolist() == [1.0, 1.0]
        assert saved["allow_pickle"].tolist() == [0]


def test_bind_makes_an_input_constant(capsys, tmp_path, model):
    x = np.ones((2, 3), np.float32)
    rc, _, err = run_cli(capsys, "run", model, "--bind", f"x={npy(tmp_path, 'x.npy', x)}")
    assert rc == 0, err
    assert "default to 1" not in err  # x was the only input with a symbolic dim


def test_random_ints_are_zero_or_one():
    from einfuse.ir.types import DType

    rng = np.random.default_rng(0)
    ints = cli.random_input(rng, (1000,), DType.i64)
    assert ints.dtype == np.int64 and set(np.unique(ints)) == {0, 1}
    floats = cli.random_input(rng, (1000,), DType.f16)
    assert floats.dtype == np.float16 and 0.8 < floats.astype(np.float32).std() < 1.2


# --------------------------------------------------------------------------- errors


def test_missing_model(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "run", str(tmp_path / "nope.onnx"))
    assert_one_error(rc, err, "nope.onnx")
    assert "does not exist" in err


def test_missing_input_file(capsys, tmp_path, model):
    rc, _, err = run_cli(capsys, "run", model, "--input", f"x={tmp_path / 'nope.npy'}")
    assert_one_error(rc, err, "nope.npy' does not exist")


def test_bad_npy(capsys, tmp_path, model):
    bad = tmp_path / "bad.npy"
    bad.write_text("not an array\n")
    rc, _, err = run_cli(capsys, "run", model, "--input", f"x={bad}")
    assert_one_error(rc, err, "is not a .npy file")


def test_npy_with_pickled_objects_is_refused(capsys, tmp_path, model):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rc, _, err = run_cli(capsys, "run", model, "--input", f"x={path}")
    assert_one_error(rc, err, "is not a readable .npy file")


def test_npz_given_as_input(capsys, tmp_path, model):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.ones((2, 3), np.float32))
    rc, _, err = run_cli(capsys, "run", model, "--input", f"x={path}")
    assert_one_error(rc, err, "is an .npz archive")


def test_wrong_input_name(capsys, tmp_path, model):
    rc, _, err = run_cli(capsys, "run", model, "--input", f"z={npy(tmp_path, 'z.npy', np.ones(3))}")
    assert_one_error(rc, err, "unknown input 'z' in --input; the model takes 'x', 'y', 'i'")


def test_wrong_input_dtype(capsys, tmp_path, model):
    rc, _, err = run_cli(capsys, "run", model, "--input", f"y={npy(tmp_path, 'y.npy', np.ones((2, 3)))}")
    assert_one_error(rc, err, "input 'y' should be f32 (float32), got float64")


def test_wrong_input_shape(capsys, tmp_path, model):
    y = np.ones((3, 2), np.float32)
    rc, _, err = run_cli(capsys, "run", model, "--input", f"y={npy(tmp_path, 'y.npy', y)}")
    assert_one_error(rc, err, "input 'y' should have shape f32[2,3], got [3, 2]")


def test_bad_bind_dtype(capsys, tmp_path, model):
    rc, _, err = run_cli(capsys, "run", model, "--bind", f"x={npy(tmp_path, 'x.npy', np.ones((2, 3)))}")
    assert_one_error(rc, err, "--bind x: input 'x' should be f32 (float32), got float64")


@pytest.mark.parametrize(
    "dims, match",
    [("B", "--dims expects NAME=SIZE"), ("B=-1", "--dims expects NAME=SIZE"), ("Q=2", "unknown dimension 'Q'")],
)
def test_bad_dims(capsys, model, dims, match):
    rc, _, err = run_cli(capsys, "run", model, "--dims", dims)
    assert_one_error(rc, err, match)


def test_unsupported_op_is_a_clean_error(capsys, tmp_path):
    path = save_model(
        tmp_path / "u.onnx",
        [helper.make_node("NoSuchOp", ["x"], ["y"], name="weird")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    rc, _, err = run_cli(capsys, "run", path)
    assert_one_error(rc, err, "'NoSuchOp' ('weird')")
    assert "hint: " in err


def test_debug_reraises(tmp_path, model):
    with pytest.raises(InputError, match="unknown input 'z'"):
        cli.main(["--debug", "run", model, "--input", f"z={npy(tmp_path, 'z.npy', np.ones(3))}"])
    # Also accepted after the subcommand.
    with pytest.raises(InputError):
        cli.main(["run", model, "--debug", "--dims", "Q=1"])


def test_internal_error_exit_2(capsys, monkeypatch, model):
    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_run", boom)
    rc, _, err = run_cli(capsys, "run", model)
    assert rc == 2
    assert err.splitlines()[0] == "internal error: RuntimeError: boom"
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "run", model])


# ----------------------------------------------------------------------------- show


def test_show_prints_ir(capsys, model):
    rc, out, err = run_cli(capsys, "show", model, "--dims", "B=2")
    assert rc == 0, err
    assert out.startswith("graph @main(%x: f32[2,3]")
    assert "relu(" in out and "equal(" in out


def test_show_keeps_dims_symbolic(capsys, model):
    rc, out, err = run_cli(capsys, "show", model)
    assert rc == 0, err
    assert "%x: f32[B,3]" in out


def test_show_missing_model(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "show", str(tmp_path / "gone.onnx"))
    assert_one_error(rc, err, "gone.onnx")


# ---------------------------------------------------------------------- conformance


def fake_case(name: str, model_path_or_proto, inputs, outputs):
    proto = model_path_or_proto if isinstance(model_path_or_proto, onnx.ModelProto) else onnx.load(model_path_or_proto)
    return SimpleNamespace(name=name, model=proto, data_sets=[(inputs, outputs)], rtol=1e-3, atol=1e-7)


def test_conformance_command_table_and_json(capsys, monkeypatch, tmp_path):
    relu = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    x = np.array([-1, 0, 2], np.float32)
    cases = [
        fake_case("test_relu_ok", relu, [x], [np.maximum(x, 0)]),
        fake_case("test_relu_wrong", relu, [x], [x]),
    ]
    monkeypatch.setattr(conformance, "collect_cases", lambda: cases)
    json_path = tmp_path / "r.json"
    rc, out, err = run_cli(capsys, "conformance", "--filter", "relu", "--json", str(json_path))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["op", "cases", "passed", "specialized", "failed", "unsupported", "crashed"]
    assert lines[1].split() == ["Relu", "2", "1", "0", "1", "0", "0"]
    assert lines[-1] == "total: 1/2 passed (50.0%), 1 failed, 0 unsupported, 0 crashed"
    import json

    data = json.loads(json_path.read_text())
    assert [(c["name"], c["op"], c["outcome"]) for c in data["cases"]] == [
        ("test_relu_ok", "Relu", "passed"),
        ("test_relu_wrong", "Relu", "failed"),
    ]
    assert "values differ" in data["cases"][1]["message"]


def test_conformance_filter_matching_nothing(capsys, monkeypatch):
    monkeypatch.setattr(conformance, "collect_cases", list)
    rc, _, err = run_cli(capsys, "conformance", "--filter", "zzz")
    assert_one_error(rc, err, "no conformance case matches --filter 'zzz'")


# --------------------------------------------------------------------------- module


def test_python_m_einfuse_help():
    res = subprocess.run(
        [sys.executable, "-m", "einfuse", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "usage: einfuse" in res.stdout
    for command in ("show", "run", "conformance"):
        assert command in res.stdout
