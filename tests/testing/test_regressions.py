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
# ...and ops the TVM tests leave out (none now: the compile-time blow-up on chains of
# transcendentals and on constant operands is fixed, see test_tvm_compiles_chains_of_transcendentals_quickly).
TVM_OPEN_BUGS: dict[str, str] = {**OPEN_BUGS}
# (pass, op) pairs with an open bug in the pass: its property test leaves the op out.
PASS_OPEN_BUGS: dict[tuple[str, str], str] = {}


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


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_reference_softmax_over_an_empty_axis(op):
    g = parse(f"""
    graph @g(%x: f32[2,0]) -> (%y: f32[2,0]) {{
      %y = {op}(%x) {{axis=1}} : f32[2,0]
      return %y
    }}
    """)
    check(g, backends=["reference"], inputs={"x": np.zeros((2, 0), np.float32)})


def test_reference_max_pool_window_of_padding_only():
    g = parse("""
    graph @g(%x: f32[1,1,1]) -> (%y: f32[1,1,1]) {
      %y = max_pool(%x) {dilations=(2,), kernel_shape=(2,), pads=(1,1), strides=(2,)} : f32[1,1,1]
      return %y
    }
    """)
    check(g, backends=["reference"], inputs={"x": np.array([[[-2.5]]], np.float32)})


# Found by the fuzzer: TVM compiles that took minutes or never finished. TVM's LLVM codegen
# simplifies every Let value with all enclosing Let values substituted, exponentially in
# the nesting; a chain of inlined transcendentals (or a constant baked in as a select
# chain, then a transcendental) went past any bound. Fixed in codegen/tvm: nodes over
# constants are folded at lowering (lower.py), and an elementwise stage whose inlined
# expression would grow too large reads its operands from a materialized stage
# (ops_elementwise.elementwise).
SLOW_TVM_COMPILES = [
    # softplus(softplus(constant)): never finished (TIR pass InjectPermutedLayout)
    """
graph @g() -> (%y: f32[3,2]) {
  @c = const [2.1237223, -1.8290857, -2.800123, -0.7745747, 0.6812071, 2.185949] : f32[3,2]
  %z = softplus(@c) : f32[3,2]
  %y = softplus(%z) : f32[3,2]
  return %y
}
""",
    # a baked constant under a softplus chain: never finished (LLVM codegen)
    """
graph @g(%x: f32[1]) -> (%y: f32[3,2]) {
  @c = const [2.1237223, -1.8290857, -2.800123, -0.7745747, 0.6812071, 2.185949] : f32[3,2]
  %a = add(%x, @c) : f32[3,2]
  %z = softplus(%a) : f32[3,2]
  %y = softplus(%z) : f32[3,2]
  return %y
}
""",
    # one_hot of constant indices, then elu and softplus: never finished
    """
graph @g() -> (%y: f32[2,3,4]) {
  @i = const [0, 2, 1, -1, 3, 1] : i64[2,3]
  @v = const [-1.5, 2.25] : f32[2]
  %o = one_hot(@i, @v) {axis=2, depth=4} : f32[2,3,4]
  %e = elu(%o) : f32[2,3,4]
  %y = softplus(%e) : f32[2,3,4]
  return %y
}
""",
    # the same with indices as an input: never finished
    """
graph @g(%i: i64[2,3], %v: f32[2]) -> (%y: f32[2,3,4]) {
  %o = one_hot(%i, %v) {axis=2, depth=4} : f32[2,3,4]
  %e = elu(%o) : f32[2,3,4]
  %y = softplus(%e) : f32[2,3,4]
  return %y
}
""",
    # four transcendentals in a row, mish last (x * tanh(softplus(x))): never finished
    """
graph @g(%x: f32[3,8]) -> (%y: f32[3,8]) {
  %a = exp(%x) : f32[3,8]
  %b = sigmoid(%a) : f32[3,8]
  %c = tanh(%b) : f32[3,8]
  %y = mish(%c) : f32[3,8]
  return %y
}
""",
]


def test_tvm_compiles_chains_of_transcendentals_quickly():
    import subprocess
    import sys

    # In a child process: a compile that hangs cannot be interrupted from Python. Each
    # graph is checked against the reference and onnxruntime (values: graph inputs drawn
    # by random_inputs; for graphs without inputs, the constants).
    code = (
        "import sys, json; from einfuse.ir.parser import parse; from einfuse.testing.check import check\n"
        "for text in json.load(sys.stdin):\n"
        "    check(parse(text), backends=['tvm'], onnx=True)\n"
    )
    import json

    try:
        subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(SLOW_TVM_COMPILES),
            text=True,
            timeout=90,  # about 10 s on a loaded machine; each used to take minutes or forever
            check=True,
            capture_output=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the compiles did not finish within 90 s")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"check failed:\n{e.stderr[-3000:]}")


def test_lower_attention_of_chained_attentions():
    g = parse("""
    graph @g(%x: f32[1,1,2,2], %y: f32[1,1,3,2]) -> (%b: f32[1,1,2,2]) {
      @c = const [0.25, -0.5, 0.75, 1.0, -0.25, 0.5] : f32[1,1,3,2]
      %a = attention(%x, @c, @c) {scale=0.5, softmax_precision=f32} : f32[1,1,2,2]
      %b = attention(%a, %y, @c) {is_causal=true, scale=0.5, softmax_precision=f32} : f32[1,1,2,2]
      return %b
    }
    """)
    check(g, backends=["reference"], passes=["lower-attention"], onnx=False)
