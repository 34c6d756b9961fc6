"""Tests for the ONNX conformance runner (einfuse/testing/conformance.py).

Outcome classification is tested on small hand-made cases (with test-only converters
installed for the duration of a test); the real ONNX cases are used for a filtered
subset of ops that exist, and, marked slow, for the full suite.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto, helper

from einfuse.errors import ShapeError
from einfuse.frontends.onnx_ops import CONVERTERS, load_all
from einfuse.testing.conformance import (
    CRASHED,
    FAILED,
    PASSED,
    SPECIALIZED,
    UNSUPPORTED,
    case_ops,
    collect_cases,
    compare_output,
    run_case,
    run_conformance,
)

# ------------------------------------------------------------------------- helpers


def one_node_model(op_type: str, inputs: list, outputs: list, *, domain: str = "", opset: int = 17, **attrs):
    node = helper.make_node(op_type, [vi.name for vi in inputs], [vi.name for vi in outputs], domain=domain, **attrs)
    graph = helper.make_graph([node], "g", inputs, outputs)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports)


def f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def case(name: str, model, inputs, outputs, rtol: float = 1e-3, atol: float = 1e-7):
    return SimpleNamespace(name=name, model=model, data_sets=[(inputs, outputs)], rtol=rtol, atol=atol)


X = np.array([-2.0, -0.5, 0.0, 3.0], np.float32)
RELU = one_node_model("Relu", [f32("x", [4])], [f32("y", [4])])


@pytest.fixture
def test_converter(monkeypatch):
    """Installs a converter for a made-up default-domain op type for one test."""
    load_all()

    def install(op_type: str, fn) -> None:
        monkeypatch.setitem(CONVERTERS, op_type, fn)

    return install


def leaky_with_operand_alpha(ctx, node):
    # alpha is a static parameter read from operand 1, as real converters read axes.
    alpha = ctx.const_input(node, 1)
    return [ctx.op("leaky_relu", [ctx.input(node, 0)], alpha=float(alpha[0]))]


LEAKY_MODEL = one_node_model("EinfuseTestLeaky", [f32("x", [4]), f32("alpha", [1])], [f32("y", [4])])
LEAKY_OUT = np.where(X < 0, 0.25 * X, X).astype(np.float32)


# -------------------------------------------------------------- outcome classification


def test_passed():
    res = run_case(case("test_relu_ok", RELU, [X], [np.maximum(X, 0)]), "Relu")
    assert (res.outcome, res.message, res.op) == (PASSED, "", "Relu")


def test_numpy_scalar_outputs_are_accepted():
    model = one_node_model("Relu", [f32("x", [])], [f32("y", [])])
    res = run_case(case("test_scalar", model, [np.array(-1.0, np.float32)], [np.float32(0.0)]))
    assert res.outcome == PASSED, res.message


def test_wrong_values_fail():
    res = run_case(case("test_relu_wrong", RELU, [X], [X]))
    assert res.outcome == FAILED
    assert "output 0 ('y'): 2/4 values differ; at [0] got" in res.message


def test_wrong_dtype_fails():
    res = run_case(case("test_relu_dtype", RELU, [X], [np.maximum(X, 0).astype(np.float64)]))
    assert res.outcome == FAILED
    assert "dtype float32, expected float64" in res.message


def test_wrong_shape_fails():
    res = run_case(case("test_relu_shape", RELU, [X], [np.maximum(X, 0).reshape(2, 2)]))
    assert res.outcome == FAILED
    assert "shape [4], expected [2, 2]" in res.message


def test_unknown_op_is_unsupported():
    model = one_node_model("Frobnicate", [f32("x", [4])], [f32("y", [4])], domain="com.example")
    res = run_case(case("test_frob", model, [X], [X]))
    assert res.outcome == UNSUPPORTED
    assert "UnsupportedOpError" in res.message and "Frobnicate" in res.message


def test_sequence_and_optional_inputs_are_unsupported():
    res = run_case(case("test_seq", RELU, [[X, X]], [X]))
    assert res.outcome == UNSUPPORTED and "list (sequence/optional)" in res.message
    res = run_case(case("test_opt", RELU, [None], [X]))
    assert res.outcome == UNSUPPORTED and "optional" in res.message


def test_dynamic_operand_bound_from_the_case_is_specialized(test_converter):
    test_converter("EinfuseTestLeaky", leaky_with_operand_alpha)
    res = run_case(case("test_leaky_dyn", LEAKY_MODEL, [X, np.array([0.25], np.float32)], [LEAKY_OUT]))
    assert res.outcome == SPECIALIZED, res.message
    assert res.message == "bound 'alpha'"


def test_specialized_but_wrong_still_fails(test_converter):
    test_converter("EinfuseTestLeaky", leaky_with_operand_alpha)
    res = run_case(case("test_leaky_dyn", LEAKY_MODEL, [X, np.array([0.5], np.float32)], [LEAKY_OUT]))
    assert res.outcome == FAILED


def refuse(ctx, node):
    raise ctx.unsupported(node, "no way")


def test_clean_converter_refusal_is_unsupported(test_converter):
    test_converter("EinfuseTestRefuse", refuse)
    model = one_node_model("EinfuseTestRefuse", [f32("x", [4])], [f32("y", [4])])
    res = run_case(case("test_refuse", model, [X], [X]))
    assert res.outcome == UNSUPPORTED
    assert res.message.endswith("no way")


def raise_type_error(ctx, node):
    raise TypeError("oops")


def raise_shape_error_from_bug(ctx, node):
    try:
        {}["missing"]
    except KeyError as e:
        raise ShapeError("looks clean but wraps a bug") from e


def call_unregistered_core_op(ctx, node):
    return [ctx.op("einfuse_test_no_such_core_op", [ctx.input(node, 0)])]


@pytest.mark.parametrize(
    "converter, match",
    [
        (raise_type_error, "internal error converting"),
        (raise_shape_error_from_bug, "looks clean but wraps a bug"),
        (call_unregistered_core_op, "unknown op 'einfuse_test_no_such_core_op'"),
    ],
)
def test_bugs_are_crashed(test_converter, converter, match):
    test_converter("EinfuseTestBug", converter)
    model = one_node_model("EinfuseTestBug", [f32("x", [4])], [f32("y", [4])])
    res = run_case(case("test_bug", model, [X], [X]))
    assert res.outcome == CRASHED
    assert match in res.message


def test_reference_contradicting_inference_is_crashed(test_converter, monkeypatch):
    from einfuse.ir.ops import ELEMENTWISE, REGISTRY, OpDef, get_op

    get_op("relu")  # load the registry before adding to it
    monkeypatch.setitem(
        REGISTRY,
        "einfuse_test_liar",
        OpDef(
            name="einfuse_test_liar",
            family=ELEMENTWISE,
            infer=lambda ctx: [ctx.type(0)],
            reference=lambda x: x[:1],  # says same shape, gives one element
            min_inputs=1,
            max_inputs=1,
        ),
    )
    test_converter("EinfuseTestLiar", lambda ctx, node: [ctx.op("einfuse_test_liar", [ctx.input(node, 0)])])
    model = one_node_model("EinfuseTestLiar", [f32("x", [4])], [f32("y", [4])])
    res = run_case(case("test_liar", model, [X], [X]))
    assert res.outcome == CRASHED
    assert "does not match the inferred type" in res.message
    # Folded at import when the operand is constant: caught by the importer instead.
    model.graph.initializer.append(onnx.numpy_helper.from_array(X, "x"))
    res = run_case(case("test_liar_folded", model, [], [X]))
    assert res.outcome == CRASHED
    assert "inference said" in res.message


def test_slow_case_times_out_as_crashed(test_converter):
    def sleepy(ctx, node):
        time.sleep(10)

    test_converter("EinfuseTestSleep", sleepy)
    model = one_node_model("EinfuseTestSleep", [f32("x", [4])], [f32("y", [4])])
    start = time.perf_counter()
    res = run_case(case("test_sleep", model, [X], [X]), timeout=0.2)
    assert time.perf_counter() - start < 5
    assert (res.outcome, res.message) == (CRASHED, "timed out after 0.2 s")


# ----------------------------------------------------------------- compare_output


@pytest.mark.parametrize(
    "actual, expected, ok",
    [
        ([1.0, np.nan, np.inf], [1.0, np.nan, np.inf], True),  # NaN equals NaN
        ([1.0, np.nan], [1.0, 2.0], False),
        ([np.inf], [-np.inf], False),
        ([1.0005], [1.0], True),  # within rtol * |expected|
        ([1.002], [1.0], False),
        ([1e-8], [0.0], True),  # within atol
        ([1e-6], [0.0], False),
    ],
)
def test_compare_output_tolerances(actual, expected, ok):
    diff = compare_output(0, "y", np.array(actual, np.float32), np.array(expected, np.float32), 1e-3, 1e-7)
    assert (diff == "") == ok, diff


def test_compare_output_bool_and_int():
    assert compare_output(0, "y", np.array([True, False]), np.array([True, False]), 1e-3, 1e-7) == ""
    assert "1/2 values differ" in compare_output(0, "y", np.array([True, True]), np.array([True, False]), 0, 0)
    assert "max abs diff 1" in compare_output(0, "y", np.array([3, 4]), np.array([3, 5]), 0, 0)


def test_compare_output_bfloat16():
    import ml_dtypes

    a = np.array([1.0, 2.0], ml_dtypes.bfloat16)
    assert compare_output(0, "y", a, a.copy(), 1e-3, 1e-7) == ""
    assert "values differ" in compare_output(0, "y", a, np.array([1.0, 3.0], ml_dtypes.bfloat16), 1e-3, 1e-7)


# ------------------------------------------------------------------------- runner


def test_runner_filters_summarises_and_runs_in_parallel(test_converter):
    test_converter("EinfuseTestBug", raise_type_error)
    bug = one_node_model("EinfuseTestBug", [f32("x", [4])], [f32("y", [4])])
    cases = [
        case("test_relu_ok", RELU, [X], [np.maximum(X, 0)]),
        case("test_relu_wrong", RELU, [X], [X]),
        case("test_relu_seq", RELU, [[X]], [X]),
        case("test_bug", bug, [X], [X]),
        case("test_other", RELU, [X], [np.maximum(X, 0)]),
    ]
    seen = []
    report = run_conformance("relu", progress=lambda done, total, r: seen.append((done, total)), cases=cases)
    assert [c.name for c in report.cases] == ["test_relu_ok", "test_relu_wrong", "test_relu_seq", "test_other"]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert report.summary_line() == "total: 2/4 passed (50.0%), 1 failed, 1 unsupported, 0 crashed"
    (relu,) = report.by_op().values()
    assert (relu.op, relu.total, relu.passed, relu.counts[FAILED]) == ("Relu", 4, 2, 1)

    # The filter also matches op names, case-insensitively; forked workers give the same answer.
    serial = run_conformance("einfusetestbug", cases=cases)
    parallel = run_conformance("EinfuseTestBug", jobs=2, cases=cases)
    assert [(c.name, c.outcome) for c in serial.cases] == [("test_bug", CRASHED)]
    assert [(c.name, c.outcome) for c in parallel.cases] == [("test_bug", CRASHED)]
    assert run_conformance(cases=cases, jobs=2).to_json()["counts"] == {
        "passed": 2,
        "specialized": 0,
        "failed": 1,
        "unsupported": 1,
        "crashed": 1,
    }


# ------------------------------------------------------------ the real ONNX cases


@pytest.fixture(scope="module")
def onnx_cases():
    return collect_cases()


def test_case_ops(onnx_cases):
    ops = case_ops(onnx_cases)
    assert len(ops) == len(onnx_cases)
    assert ops["test_relu"] == "Relu"
    assert ops["test_relu_expanded_ver18"] == "Relu"  # Constant, CastLike, Max: named by its twin
    assert ops["test_softmax_axis_0_expanded"] == "Softmax"
    assert ops["test_conv_with_strides_padding"] == "Conv"
    assert all(ops.values())


def test_real_cases_of_existing_ops(onnx_cases):
    # Add, Relu, LeakyRelu and Equal existed first; their plain cases must pass.
    report = run_conformance("relu", cases=onnx_cases)
    by_name = {c.name: c for c in report.cases}
    assert by_name["test_relu"].outcome == PASSED, by_name["test_relu"].message
    assert by_name["test_leakyrelu_example"].outcome == PASSED, by_name["test_leakyrelu_example"].message
    assert report.count(CRASHED) == 0, [(c.name, c.message) for c in report.cases if c.outcome == CRASHED]
    equal = {c.name: c for c in run_conformance("test_equal", cases=onnx_cases).cases}
    assert equal["test_equal"].outcome == PASSED
    # Strings are not an einfuse dtype: a clean refusal, not a crash.
    assert equal["test_equal_string"].outcome == UNSUPPORTED


@pytest.mark.slow
def test_full_conformance(onnx_cases):
    report = run_conformance(cases=onnx_cases)
    crashed = [(c.name, c.message) for c in report.cases if c.outcome == CRASHED]
    assert not crashed, crashed[:20]
    assert report.pass_rate >= 85.0, report.summary_line()
