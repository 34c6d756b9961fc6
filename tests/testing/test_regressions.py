"""Minimal reproducers of bugs the fuzzer found in other parts of einfuse, shrunk by
einfuse.testing.shrink. Each asserts the correct behaviour. Open bugs are marked
xfail(strict): when a fix lands the test starts passing, strict makes that an error, and
the marker comes off (the test then guards against the bug coming back).

Replay one with its IR text: `check(parse(TEXT), backends=[...])`."""

from __future__ import annotations

import numpy as np
import pytest

from einfuse.errors import VerifyError
from einfuse.ir.parser import parse
from einfuse.ir.verifier import verify
from einfuse.testing.check import check

# Ops with an open bug below: the property tests and the CI fuzz run leave them out until
# the fix lands, so that they keep guarding everything else.
OPEN_BUGS: dict[str, str] = {}
# ...and ops the TVM tests leave out: TVM compiles regions whose inputs are all constants
# slowly or never (test_tvm_compile_of_softplus_on_constant_expressions_finishes; also
# one_hot of constant indices then elu: 28 s), which would stall CI.
TVM_OPEN_BUGS: dict[str, str] = {
    **OPEN_BUGS,
    "softplus": "test_tvm_compile_of_softplus_on_constant_expressions_finishes",
    "mish": "the same (mish is x * tanh(softplus(x)))",
    "one_hot": "the same (one_hot of constant indices, then elu or softplus)",
}


def _gather_elements_expected(x, idx, axis):
    out = np.empty(idx.shape, x.dtype)
    for pos in np.ndindex(idx.shape):
        src = list(pos)
        src[axis] = idx[pos]
        out[pos] = x[tuple(src)]
    return out


def test_reference_gather_elements_indices_narrower_than_data():
    """Was: take_along_axis broadcast indices smaller than the data on a non-axis dim."""
    g = parse("""
    graph @g(%x: f32[1,2]) -> (%y: f32[1,1]) {
      @i = const [0] : i64[1,1]
      %y = gather_elements(%x, @i) : f32[1,1]
      return %y
    }
    """)
    check(g, backends=["reference"], inputs={"x": np.array([[1.5, 2.5]], np.float32)})


def test_reference_gather_elements_indices_shorter_on_other_axis():
    """Was: IndexError when the indices are smaller than the data on another axis."""
    g = parse("""
    graph @g(%x: f32[2,4]) -> (%y: f32[2,3]) {
      @i = const [0, 1, 1, 1, 0, 1] : i64[2,3]
      %y = gather_elements(%x, @i) {axis=0} : f32[2,3]
      return %y
    }
    """)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = check(g, backends=["reference"], inputs={"x": x})
    assert result.ok
    from einfuse.codegen import reference

    np.testing.assert_array_equal(
        reference.run(g, {"x": x})["y"], _gather_elements_expected(x, np.array([[0, 1, 1], [1, 0, 1]]), 0)
    )


def test_det_rejects_non_square_matrices_at_inference():
    # The parser reads types as written; the verifier re-infers and refuses them.
    with pytest.raises(VerifyError, match="square"):
        verify(
            parse("""
        graph @g(%x: f32[2,3]) -> (%y: f32[]) {
          %y = det(%x) : f32[]
          return %y
        }
        """)
        )


@pytest.mark.slow
def test_tvm_cast_to_bf16():
    """Was: a bf16 result could not go through DLPack from numpy (BufferError); fixed."""
    g = parse("""
    graph @g(%x: f32[1]) -> (%y: bf16[1]) {
      %y = cast(%x) {to=bf16} : bf16[1]
      return %y
    }
    """)
    check(g, backends=["tvm"], onnx=False, inputs={"x": np.array([0.5], np.float32)})


@pytest.mark.slow
def test_tvm_argmax_over_a_leading_axis_with_a_unit_dim():
    """Was: wrong indices for argmax over axis 0 of f32[2,1,4] (f32[2,4] was right); fixed."""
    g = parse("""
    graph @g(%x: f32[2,1,4]) -> (%y: i64[1,4]) {
      %y = argmax(%x) {keepdims=false} : i64[1,4]
      return %y
    }
    """)
    x = np.array([[[-1.0, 2.0, -3.0, 4.0]], [[1.0, -2.0, 3.0, -4.0]]], np.float32)
    check(g, backends=["tvm"], inputs={"x": x})


@pytest.mark.xfail(
    strict=True,
    reason="reference softmax / log_softmax over an empty axis: numpy's max of an empty "
    "array fails (the result is simply empty)",
)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_reference_softmax_over_an_empty_axis(op):
    g = parse(f"""
    graph @g(%x: f32[2,0]) -> (%y: f32[2,0]) {{
      %y = {op}(%x) {{axis=1}} : f32[2,0]
      return %y
    }}
    """)
    check(g, backends=["reference"], inputs={"x": np.zeros((2, 0), np.float32)})


@pytest.mark.xfail(
    strict=True,
    reason="reference max_pool gives -inf for a window that sees only padding; "
    "onnxruntime and tvm give the lowest float (-3.4e38); ONNX does not say",
)
def test_reference_max_pool_window_of_padding_only():
    g = parse("""
    graph @g(%x: f32[1,1,1]) -> (%y: f32[1,1,1]) {
      %y = max_pool(%x) {dilations=(2,), kernel_shape=(2,), pads=(1,1), strides=(2,)} : f32[1,1,1]
      return %y
    }
    """)
    check(g, backends=["reference"], inputs={"x": np.array([[[-2.5]]], np.float32)})


# Found twice by the fuzzer: one_hot of constant indices then softplus, and this.
HANG_SOFTPLUS_OF_CONSTANTS = """
graph @g() -> (%y: f32[3,2]) {
  @c = const [2.1237223, -1.8290857, -2.800123, -0.7745747, 0.6812071, 2.185949] : f32[3,2]
  %z = softplus(@c) : f32[3,2]
  %y = softplus(%z) : f32[3,2]
  return %y
}
"""


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="tvm: compiling softplus(softplus(constant)) does not finish (minutes in the TIR pipeline; also "
    "one_hot(constant indices) then softplus; softplus(constant) alone compiles in seconds)",
)
def test_tvm_compile_of_softplus_on_constant_expressions_finishes():
    import subprocess
    import sys

    # In a child process: a compile that hangs cannot be interrupted from Python.
    code = (
        "import sys; from einfuse.ir.parser import parse; from einfuse.testing.check import check; "
        "check(parse(sys.stdin.read()), backends=['tvm'], inputs={}, onnx=False)"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", code],
            input=HANG_SOFTPLUS_OF_CONSTANTS,
            text=True,
            timeout=45,
            check=True,
            capture_output=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the compile did not finish within 45 s")
