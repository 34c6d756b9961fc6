"""What the op tests (tests/ir/test_ops_*.py) share: a one-node ONNX model checked against
onnxruntime, seeded random inputs, and the ONNX conformance cases of a set of ops.

    from tests.onnx_helpers import OnnxModel, case_ids, check_conformance_case, conformance_cases, rand, tolerances
    from tests.onnx_helpers import seeded_rng  # noqa: F401 (the rng fixture, by importing it)

    class Model(OnnxModel):
        default_opset = 18
        tol = tolerances(f16=(1e-2, 1e-2), f32=(1e-5, 1e-6), f64=(1e-12, 1e-12))

    def test_relu(rng):
        Model("Relu", [("x", rand(rng, (3, 4)))]).check()

    CASES = conformance_cases({"Relu"})

    @pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
    def test_conformance(case):
        check_conformance_case(case)
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper as nh

from einfuse.codegen import reference
from einfuse.frontends.onnx import MAX_OPSET, MIN_OPSET, convert_model
from einfuse.ir.graph import Graph
from einfuse.ir.parser import parse
from einfuse.ir.printer import print_graph

# Used for a float dtype a tolerance table does not list (bfloat16, float8...): about 2 ulps
# of bfloat16.
OTHER_FLOAT_TOL = (1e-2, 1e-2)


# ---------------------------------------------------------------------------
# random inputs


@pytest.fixture(name="rng")
def seeded_rng(request) -> np.random.Generator:
    """The `rng` fixture of the op tests (import `seeded_rng` into the test module): one seed
    per test id, so every parametrization gets its own data, the same in every run (crc32,
    unlike hash(), does not change between processes)."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def rand(rng: np.random.Generator, shape, dtype=np.float32, lo: float | None = None, hi: float | None = None):
    """Uniform values in [lo, hi]: continuous for floats (default [-1, 1]), whole numbers for
    integers (default [-20, 20]; clipped to the dtype's range), fair coin flips for bools."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = max(int(-20 if lo is None else lo), info.min), min(int(20 if hi is None else hi), info.max)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    return rng.uniform(-1.0 if lo is None else lo, 1.0 if hi is None else hi, size=shape).astype(dtype)


def randn(rng: np.random.Generator, shape, dtype=np.float32, scale: float = 1.0) -> np.ndarray:
    """Normally distributed floats: mean 0, standard deviation `scale`."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def i64(*values) -> np.ndarray:
    """A 1-D int64 array: axes, shapes, pads... operands."""
    return np.asarray(values, dtype=np.int64)


def param_id(value) -> str:
    """pytest ids that name dtypes ("float16") rather than numbering them."""
    return np.dtype(value).name if isinstance(value, type) else str(value)


# ---------------------------------------------------------------------------
# comparing results


def tolerances(*, f16: tuple, f32: tuple, f64: tuple) -> Mapping:
    """A tolerance table: (rtol, atol) for results of each float dtype."""
    return MappingProxyType({np.dtype(np.float16): f16, np.dtype(np.float32): f32, np.dtype(np.float64): f64})


def uniform_tol(rtol: float, atol: float) -> Mapping:
    """A tolerance table with the same (rtol, atol) for f16, f32 and f64."""
    return tolerances(f16=(rtol, atol), f32=(rtol, atol), f64=(rtol, atol))


def tolerance(dtype: np.dtype, table: Mapping, rtol: float | None = None, atol: float | None = None) -> tuple:
    """(rtol, atol) for results of `dtype`: the explicit ones, else the table's; integers and
    bools default to exact."""
    dtype = np.dtype(dtype)
    default = (0.0, 0.0) if dtype.kind in "iub" else table.get(dtype, OTHER_FLOAT_TOL)
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def assert_same(got: np.ndarray, want: np.ndarray, rtol=None, atol=None, table: Mapping | None = None) -> None:
    """Same dtype and shape, and values within tolerance (see `tolerance`); NaN equals NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    rtol, atol = tolerance(want.dtype, table or {}, rtol, atol)
    if got.dtype.kind in "iub" and rtol == 0 and atol == 0:
        # Exactly: float64 cannot hold every int64.
        np.testing.assert_array_equal(got, want)
        return
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list:
    """The model's outputs computed by onnxruntime on the CPU."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def ort_refuses(e: Exception) -> bool:
    """onnxruntime has no kernel for these dtypes, or ONNX's type constraints exclude them."""
    return "NOT_IMPLEMENTED" in str(e) or "Type Error" in str(e)


def assert_text_round_trip(graph: Graph) -> str:
    """The graph's text form parses back to the same graph, and prints the same; returns it."""
    text = print_graph(graph)
    again = parse(text, {name: arr for name, (_, arr) in graph.constants.items()})
    assert print_graph(again) == text
    assert again.structurally_equal(graph), text
    return text


def assert_bool_flags(model, flags: Mapping[str, int]) -> None:
    """The model's ONNX 0/1 flags arrive as bool attributes of the core op (an int 1 would
    compare equal to True: `is` tells them apart), and the graph round-trips the text form."""
    graph = model.graph()
    node = next(n for n in graph.nodes if flags.keys() <= n.attrs.keys())
    for name, value in flags.items():
        assert node.attrs[name] is bool(value), (name, node.attrs[name])
    assert_text_round_trip(graph)


# ---------------------------------------------------------------------------
# one-node models


class OnnxModel:
    """A one-node ONNX model (self.proto) and the feeds of its graph inputs (self.feeds).

    Operands are (name, array) pairs: a name starting with '@' is an initializer, the others
    graph inputs; None is an absent optional operand. `outputs` is the number of outputs
    (named y0, y1...) or their names, "" for an absent optional one. `input_shapes` overrides
    the declared shape of graph inputs (strings are dim_params: {"x": ["B", 3]}). Keyword
    arguments left over are the node's attributes.

    A test module subclasses it to set its defaults: `default_opset` and `tol`, the
    (rtol, atol) per result dtype of check() (floats it does not list: OTHER_FLOAT_TOL;
    integers and bools: exact)."""

    default_opset: int = MAX_OPSET
    tol: Mapping = MappingProxyType({})

    def __init__(
        self,
        op_type: str,
        operands: Sequence,
        *,
        opset: int | None = None,
        outputs: int | Sequence[str] = 1,
        input_shapes: Mapping | None = None,
        **attrs,
    ):
        self.op_type, self.operands = op_type, list(operands)
        self.options = dict(opset=opset, outputs=outputs, input_shapes=input_shapes, **attrs)
        opset = self.default_opset if opset is None else opset
        names, inputs, inits, self.feeds = [], [], [], {}
        for item in self.operands:
            if item is None:
                names.append("")
                continue
            name, arr = item
            arr = np.asarray(arr)
            if name.startswith("@"):
                name = name[1:]
                inits.append(nh.from_array(arr, name))
            else:
                shape = (input_shapes or {}).get(name, arr.shape)
                inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(arr.dtype), shape))
                self.feeds[name] = arr
            names.append(name)
        outs = [f"y{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        node = oh.make_node(op_type, names, outs, name="n0", **attrs)
        graph = oh.make_graph(
            [node], "g", inputs, [oh.make_empty_tensor_value_info(o) for o in outs if o], initializer=inits
        )
        self.proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
        self.proto.ir_version = 8 if opset <= 18 else 10

    def graph(self, **kw) -> Graph:
        return convert_model(self.proto, **kw)

    def out_types(self, **kw) -> list[str]:
        """The inferred output types in text form ("f32[B, 3]")."""
        return [str(v.type) for v in self.graph(**kw).outputs]

    def einfuse(self, feeds: Mapping | None = None) -> list:
        return list(reference.run(self.graph(), self.feeds if feeds is None else feeds).values())

    def ort(self, feeds: Mapping | None = None) -> list:
        return run_ort(self.proto, self.feeds if feeds is None else feeds)

    def retyped(self, via: Mapping, only: Iterable[str] | None = None) -> OnnxModel:
        """The same model with the operands (those named in `only`, default all) of a dtype in
        `via` cast to via[dtype]."""
        operands = []
        for item in self.operands:
            if item is not None and (only is None or item[0].lstrip("@") in only):
                arr = np.asarray(item[1])
                item = (item[0], arr.astype(via.get(arr.dtype.type, arr.dtype)))
            operands.append(item)
        return type(self)(self.op_type, operands, **self.options)

    def onnx_reference(self) -> list:
        """The outputs of the ONNX reference evaluator (onnx.reference)."""
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(self.proto).run(None, self.feeds)

    def check(self, rtol=None, atol=None, *, via: Mapping | None = None, only=None, against="onnxruntime") -> list:
        """einfuse's results against onnxruntime's (or, against="onnx-reference", the ONNX
        reference evaluator's): same number, dtypes and shapes, values within tolerance.
        Where onnxruntime has no kernel for these dtypes (or ONNX does not allow them), `via`
        names wider types to run it in (see retyped): its results there, cast back, are the
        oracle, compared with at most f32 precision."""
        oracle = {"onnxruntime": self.ort, "onnx-reference": self.onnx_reference}[against]
        got = self.einfuse()
        try:
            want = oracle()
        except Exception as e:
            if via is None or not ort_refuses(e):
                raise
            want = [w.astype(g.dtype) for w, g in zip(self.retyped(via, only).ort(), got)]
            if any(g.dtype == np.float64 for g in got):
                rtol, atol = tolerance(np.float32, self.tol)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w, rtol, atol, self.tol)
        return got


# ---------------------------------------------------------------------------
# ONNX conformance cases


@functools.cache
def all_conformance_cases() -> tuple:
    """Every ONNX node conformance case, built once per process (a few seconds).

    Cases register themselves in onnx's module-level list when their case module is first
    imported, and `collect_testcases(op_type)` drops, for good, those of other ops in the
    modules it imports: importing chosen case modules or filtering by op type gives lists that
    depend on what else the process imported before (a test file once found 86 of its 104
    cases in mixed runs). One unfiltered collection, shared by every test file, does not."""
    from einfuse.testing.conformance import collect_cases

    return tuple(collect_cases())


def _default_opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def _at_supported_opset(case):
    """The case at the nearest opset einfuse supports (the Not cases are exported at opset 1;
    the op has not changed since)."""
    if MIN_OPSET <= _default_opset(case.model) <= MAX_OPSET:
        return case
    model = onnx.ModelProto.FromString(case.model.SerializeToString())
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = min(max(imp.version, MIN_OPSET), MAX_OPSET)
    return dataclasses.replace(case, model=model)


def conformance_cases(ops: Iterable[str], *, helpers: Iterable[str] = (), expanded: bool = False) -> list:
    """The ONNX node cases of `ops` (ONNX op types), sorted by name: those whose nodes all run
    ops of `ops` or `helpers` (Constant, Cast... that `*_expanded` function bodies use), one
    of `ops` at least. expanded=True adds the `*_expanded` twins of those cases whatever ops
    they use. Each case is `dataclasses.replace`-able (model, data_sets, rtol, atol)."""
    ops, allowed = frozenset(ops), frozenset(ops) | frozenset(helpers)
    cases = all_conformance_cases()
    chosen = {}
    for case in cases:
        used = {n.op_type for n in case.model.graph.node if n.domain in ("", "ai.onnx")}
        foreign = any(n.domain not in ("", "ai.onnx") for n in case.model.graph.node)
        if used & ops and used <= allowed and not foreign:
            chosen[case.name] = case
    if expanded:
        for case in cases:
            native = case.name.split("_expanded")[0]
            if native != case.name and native in chosen:
                chosen[case.name] = case
    return [_at_supported_opset(chosen[name]) for name in sorted(chosen)]


def conformance_failures(cases: Iterable, *, refused: Mapping[str, str] | None = None) -> list[str]:
    """One line per case that does not pass (see einfuse.testing.conformance: passing may bind
    graph inputs that feed static operands). `refused` names the cases einfuse refuses on
    purpose, with why: they must fail with a clean einfuse error instead."""
    from einfuse.testing.conformance import PASSED, SPECIALIZED, UNSUPPORTED, run_case

    refused = refused or {}
    wrong = []
    for case in cases:
        res = run_case(case)
        why = refused.get(case.name)
        if why is None and res.outcome not in (PASSED, SPECIALIZED):
            wrong.append(f"{case.name}: {res.outcome}: {res.message}")
        elif why is not None and res.outcome != UNSUPPORTED:
            wrong.append(f"{case.name} ({why}) should be refused cleanly: {res.outcome}: {res.message}")
    return wrong


def case_ids(cases: Sequence) -> list[str]:
    return [case.name for case in cases]


def check_conformance_case(case, *, refused: Mapping[str, str] | None = None) -> None:
    """The case passes, or is refused cleanly if `refused` names it (see conformance_failures)."""
    wrong = conformance_failures([case], refused=refused)
    assert not wrong, wrong[0]
