"""The hypothesis strategies: shapes, tensors with special values, solved attributes, and
graphs that are valid, in-domain and runnable for every binding of their symbols."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from einfuse.codegen import reference
from einfuse.ir.builder import make_node
from einfuse.ir.graph import Graph
from einfuse.ir.types import DType, TensorType, sym
from einfuse.ir.verifier import verify
from einfuse.testing.strategies import (
    SYM_MAX,
    attrs_for,
    covered_ops,
    graphs,
    input_ranges,
    random_inputs,
    shapes,
    symbols_of,
    tensors,
)
from tests.testing.test_regressions import OPEN_BUGS

QUIET = settings(suppress_health_check=list(HealthCheck), deadline=None)
WORKING_OPS = sorted(covered_ops() - set(OPEN_BUGS))  # ops without an open bug


def test_shapes_reach_zero_one_and_symbols():
    assert 0 in find(shapes(min_rank=1), lambda s: 0 in s)
    assert 1 in find(shapes(min_rank=1), lambda s: 1 in s)
    assert sym("B") in find(shapes(min_rank=1, symbolic=True), lambda s: sym("B") in s)
    assert find(shapes(min_rank=2, max_rank=2), lambda s: True).__len__() == 2


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16, DType.bf16])
def test_tensors_special_values_are_opt_in(dtype):
    def finite(a):
        return bool(np.all(np.isfinite(a.astype(np.float64))))

    assert finite(find(tensors((16,), dtype), lambda a: True))
    with pytest.raises(Exception):  # noqa: B017 - hypothesis' NoSuchExample: no NaN without special=True
        find(tensors((16,), dtype), lambda a: np.isnan(a.astype(np.float64)).any(), settings=settings(max_examples=50))
    f64 = lambda a: a.astype(np.float64)
    assert np.isnan(f64(find(tensors((16,), dtype, special=True), lambda a: np.isnan(f64(a)).any()))).any()
    assert np.isposinf(f64(find(tensors((16,), dtype, special=["inf"]), lambda a: np.isposinf(f64(a)).any()))).any()
    neg_zero = find(tensors((16,), dtype, special=["-0"]), lambda a: ((f64(a) == 0) & np.signbit(f64(a))).any())
    assert ((f64(neg_zero) == 0) & np.signbit(f64(neg_zero))).any()
    tiny = float(np.finfo(np.float32).tiny) if dtype == DType.f32 else 6.2e-5 if dtype == DType.f16 else 1.2e-38
    sub = find(tensors((16,), dtype, special=["subnormal"]), lambda a: ((np.abs(f64(a)) < tiny) & (f64(a) != 0)).any())
    assert sub.dtype == dtype.np


def test_tensors_honour_shape_dtype_and_range():
    a = find(tensors((2, 3), DType.i8, lo=-2, hi=2), lambda a: True)
    assert a.shape == (2, 3) and a.dtype == np.int8 and a.min() >= -2 and a.max() <= 2
    b = find(tensors((0, 3), DType.f32), lambda a: True)
    assert b.shape == (0, 3)


@pytest.mark.parametrize(
    "op, types",
    [
        ("transpose", [TensorType((2, 3, 4), DType.f32)]),
        ("reduce_sum", [TensorType((sym("B"), 3), DType.f32)]),
        ("slice", [TensorType((5, sym("S")), DType.f32)]),
        ("softmax", [TensorType((2, 3), DType.f16)]),
        ("split", [TensorType((2, 6), DType.f32)]),
        ("pad", [TensorType((3, 4), DType.f32)]),
    ],
)
def test_attrs_for_solves_attributes_for_given_operands(op, types):
    @settings(QUIET, max_examples=20)
    @given(attrs_for(op, *types))
    def prop(attrs):
        g = Graph()
        xs = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
        make_node(g, op, xs, attrs)  # inference accepts them

    prop()


def test_attrs_for_without_types_follows_the_schema():
    attrs = find(attrs_for("leaky_relu"), lambda a: True)
    assert set(attrs) <= {"alpha"}


@QUIET
@given(g=graphs(max_nodes=8, ops=WORKING_OPS, dtypes_=(DType.f32, DType.f16)), seed=st.integers(0, 2**16))
def test_graphs_verify_and_run_in_domain_for_every_binding(g, seed):
    verify(g)
    for size in (1, SYM_MAX):
        inputs = random_inputs(g, seed, dims={s: size for s in symbols_of(g)})
        out = reference.run(g, inputs)
        for name, arr in out.items():
            if arr.dtype.kind == "f" or arr.dtype.kind == "V":
                # by construction: no NaN/inf (domains respected, no overflow)
                assert np.all(np.isfinite(arr.astype(np.float64))), f"{name} is not finite:\n{g}"


@QUIET
@given(g=graphs(max_nodes=5, ops=["add", "relu", "transpose"], dtypes_=(DType.f16,), symbolic=False))
def test_graphs_use_only_the_ops_and_dtypes_asked(g):
    assert {n.op for n in g.nodes} <= {"add", "relu", "transpose"}
    assert 1 <= len(g.nodes) <= 5
    assert all(v.dtype == DType.f16 for v in g.inputs)
    assert all(not v.type.symbols() for v in g.inputs)
    assert set(input_ranges(g)) == {v.name for v in g.inputs}


def test_graphs_reach_many_ops():
    seen: set[str] = set()

    @settings(QUIET, max_examples=150, derandomize=True, database=None)
    @given(graphs(max_nodes=8, hostile_names=False, generic=False))
    def prop(g):
        seen.update(n.op for n in g.nodes)

    prop()
    assert len(seen) >= 60, sorted(seen)
    assert seen <= covered_ops()


def test_recipes_cover_the_tvm_backend():
    from einfuse.testing.fuzz import backend_ops

    assert backend_ops("tvm") - covered_ops() == set()
