"""The differential checker: run a graph (or one fused node) on the reference, on each
compiled backend and, where it exports to ONNX, on onnxruntime, and compare.

    from einfuse.testing.check import check

    check(graph, backends=["tvm"])                  # raises CheckFailure on a mismatch
    result = check(graph, backends=["tvm"], raise_on_failure=False)
    print(result)                                   # per backend: ok / mismatch / crash

The whole-graph path: the graph is fused (the `fuse` pass when it is registered;
otherwise each node becomes its own fused group), every `fused` node is compiled with
`get_backend(name).compile(node, target)` and run as a `Kernel(inputs, outputs)` in
graph order. `passes=[...]` runs a pass pipeline first (testing a pass: compare with
backends=["reference"]).

Tolerances depend on the output's dtype (TOLERANCES, override with `tolerance=`):
a float element passes when |got - want| <= rel * (|want| + scale), where
rel = ulps * eps for the coarsest float dtype on the way to the value (an f64 computed
from f32 values is held to f32 precision), and `scale` is the largest magnitude the
reference saw on the way (the value itself and every value it depends on), so that
cancellation (a - b with large a and b) is measured against the size of a and b.
NaN must meet NaN, infinities must match in sign, -0.0 equals 0.0. Integers and
bools are exact, except outputs of quantizing ops (quantize_linear,
dynamic_quantize_linear, qlinear_*), which may differ by one step.

A mismatch report names the first node whose output diverges, found by running the
reference and the backend on growing prefixes of the graph.
"""

from __future__ import annotations

import inspect
import math
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from einfuse.codegen import reference
from einfuse.errors import UnsupportedOpError
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.types import DType
from einfuse.testing.strategies import concrete_shape, random_inputs

ORT = "onnxruntime"


# -- tolerances ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """|got - want| <= ulps * eps * (|want| + scale) for floats; |got - want| <= steps
    for integers (0: exact)."""

    ulps: float = 0.0
    steps: int = 0


TOLERANCES: dict[DType, Tolerance] = {
    DType.f64: Tolerance(ulps=4096),  # ~ 9e-13 relative
    DType.f32: Tolerance(ulps=512),  # ~ 6e-5 relative: reassociated sums, fused transcendentals
    DType.f16: Tolerance(ulps=16),  # ~ 1.6e-2: f32 accumulation in kernels vs per-op f16 rounding
    DType.bf16: Tolerance(ulps=8),  # ~ 6e-2
    DType.f8e4m3: Tolerance(ulps=2),
    DType.f8e4m3fnuz: Tolerance(ulps=2),
    DType.f8e5m2: Tolerance(ulps=2),
    DType.f8e5m2fnuz: Tolerance(ulps=2),
    DType.f8e8m0: Tolerance(ulps=1),
}
# Integer outputs of these ops are rounded quantizations: one step apart is fine.
QUANTIZING_OPS = frozenset({"quantize_linear", "dynamic_quantize_linear", "qlinear_matmul", "qlinear_conv"})


def _eps(dtype: DType) -> float:
    from einfuse.testing.strategies import _finfo

    return float(_finfo(dtype).eps)


def tolerance_for(dtype: DType, producer_op: str | None = None, override: Tolerance | dict | None = None) -> Tolerance:
    if isinstance(override, Tolerance):
        return override
    if isinstance(override, dict) and dtype in override:
        return override[dtype]
    if dtype.is_float:
        return TOLERANCES[dtype]
    if producer_op in QUANTIZING_OPS:
        return Tolerance(steps=1)
    return Tolerance()


@dataclass
class Difference:
    """How one array differs from the reference."""

    bad: int  # elements out of tolerance
    total: int
    index: tuple  # the worst element
    want: Any
    got: Any
    error: float  # |got - want| there
    allowed: float  # what the tolerance allowed there
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return self.note
        return (
            f"{self.bad}/{self.total} elements differ; worst at {list(self.index)}: got {self.got!r}, "
            f"want {self.want!r} (error {self.error:.3g}, allowed {self.allowed:.3g})"
        )


def compare(
    got: np.ndarray, want: np.ndarray, dtype: DType, tol: Tolerance, scale: float = 1.0, rel: float | None = None
) -> Difference | None:
    """None when `got` matches `want` within `tol` (floats: |got - want| <= rel * (|want| +
    scale), rel = tol.ulps * eps(dtype) unless given); else what differs."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return Difference(
            0, want.size, (), None, None, math.inf, 0, f"shape {list(got.shape)}, want {list(want.shape)}"
        )
    if got.dtype != want.dtype:
        return Difference(0, want.size, (), None, None, math.inf, 0, f"dtype {got.dtype}, want {want.dtype}")
    if want.size == 0:
        return None
    if dtype.is_float:
        g = got.astype(np.float64)
        w = want.astype(np.float64)
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        inf_w = np.isinf(w)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(g - w)
            r = tol.ulps * _eps(dtype) if rel is None else rel
            allowed = r * (np.abs(np.where(inf_w, 0, w)) + scale)
            bad = (nan_g != nan_w) | (inf_w & (g != w)) | (~nan_w & ~inf_w & ~(err <= allowed))
        err = np.where(np.isnan(err) | np.isinf(err), math.inf, err)
    elif dtype == DType.bool:
        bad = got != want
        err = bad.astype(np.float64)
        allowed = np.zeros(want.shape)
    else:
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        allowed = np.full(want.shape, float(tol.steps))
        bad = err > allowed
    if not bad.any():
        return None
    worst = np.where(bad, err, -1.0)
    idx = np.unravel_index(int(np.argmax(worst)), want.shape)
    return Difference(
        int(bad.sum()),
        int(want.size),
        tuple(int(i) for i in idx),
        want[idx].item(),
        got[idx].item(),
        float(err[idx]),
        float(np.asarray(allowed)[idx]),
    )


@dataclass(frozen=True)
class PathInfo:
    """What the reference saw on the way to a value: the largest finite magnitude of it
    and everything it depends on, and the coarsest float precision (eps * ulps of the
    dtype's tolerance) any float value on the way had."""

    scale: float
    rel: float


def path_info(graph: Graph, values: dict[Value, np.ndarray], tolerance=None) -> dict[int, PathInfo]:
    own: dict[int, float] = {id(v): _maxabs(arr) for v, arr in values.items()}

    def rel_of(v: Value) -> float:
        if not v.dtype.is_float:
            return 0.0
        t = tolerance_for(v.dtype, None, tolerance)
        return t.ulps * _eps(v.dtype)

    out: dict[int, PathInfo] = {}
    for v in list(graph.inputs) + [v for v, _ in graph.constants.values()]:
        out[id(v)] = PathInfo(own.get(id(v), 0.0), rel_of(v))
    for n in graph.nodes:
        ins = [out[id(x)] for x in n.inputs if x is not None and id(x) in out]
        scale = max([p.scale for p in ins], default=0.0)
        rel = max([p.rel for p in ins], default=0.0)
        for o in n.outputs:
            out[id(o)] = PathInfo(max(scale, own.get(id(o), 0.0)), max(rel, rel_of(o)))
    return out


def _maxabs(arr: np.ndarray) -> float:
    arr = np.asarray(arr)
    if arr.size == 0 or arr.dtype == np.bool_:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.abs(arr.astype(np.float64))
    f = f[np.isfinite(f)]
    return float(f.max()) if f.size else 0.0


# -- running a graph on a backend ----------------------------------------------------------


def singleton_fused(node: Node) -> Node:
    """`node` as a fused node of its own (each operand, constants included, a region input)."""
    from einfuse.ir.ops import get_op

    region = Graph("region")
    params: dict[int, Value] = {}
    operands = []
    for i, x in enumerate(node.inputs):
        if x is None or id(x) in params:
            continue
        params[id(x)] = region.add_input(f"p{len(params)}", x.type)
        operands.append(x)
    new_outputs = tuple(region.new_value(f"r{i}", o.type) for i, o in enumerate(node.outputs))
    inner = Node(
        node.op, tuple(None if x is None else params[id(x)] for x in node.inputs), new_outputs, node.attrs, node.name
    )
    region.add_node(inner)
    region.outputs = list(new_outputs)
    kind = get_op(node.op).family
    return Node("fused", tuple(operands), node.outputs, {"region": region, "kind": kind}, node.name)


def partition(graph: Graph, fuse: bool = True) -> Graph:
    """The graph with every node inside a fused group: the `fuse` pass's groups when
    that pass exists (and fuse=True), each remaining node on its own."""
    g = graph
    if fuse:
        g = _run_fuse_pass(graph)
    out = g.copy()
    out.nodes = [n if n.op == "fused" else singleton_fused(n) for n in g.nodes]
    out._invalidate()
    return out


def _run_fuse_pass(graph: Graph) -> Graph:
    from einfuse.passes import manager

    passes = manager.registered_passes()
    if "fuse" not in passes:
        return graph
    # Passes mutate graphs in place: the fuse pass gets its own copy.
    return manager.PassManager(["fuse"], verify=True).run(_deep_copy(graph))


@dataclass
class CompiledGraph:
    """A partitioned graph with one kernel per fused node, run in graph order."""

    graph: Graph  # partitioned: only fused nodes
    backend: Any
    target: Any = None
    kernels: dict = field(default_factory=dict)  # (id(node), dims key) -> Kernel
    fallbacks: list = field(default_factory=list)  # node labels run on the reference (data-dependent shapes)
    packed: dict = field(default_factory=dict)  # pre-packed weight operands, per kernel

    def kernel(self, node: Node, dims: dict):
        key = (id(node), tuple(sorted(dims.items())))
        if key not in self.kernels:
            compile_ = self.backend.compile
            if "dims" in inspect.signature(compile_).parameters:
                self.kernels[key] = compile_(node, self.target, dims=dict(dims))
            else:
                self.kernels[key] = compile_(node, self.target)
        return self.kernels[key]

    def kernel_inputs(self, kernel, node: Node, args: list) -> None:
        """Weight operands in the layout the kernel asks for (Kernel.meta["prepack"]: the
        runtime packs constant operands once, as einfuse.runtime does)."""
        spec = (kernel.meta or {}).get("prepack")
        if not spec:
            return
        from einfuse.runtime.executable import apply_prepack

        for index, steps in spec.items() if isinstance(spec, dict) else spec:
            i = int(index)
            key = (id(node), i, id(kernel))
            if key not in self.packed:
                self.packed[key] = np.ascontiguousarray(apply_prepack(args[i], steps))
            args[i] = self.packed[key]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env, bindings = reference.check_inputs(self.graph, inputs)
        dims = {s.name: int(n) for s, n in bindings.items()}
        for v, arr in self.graph.constants.values():
            env[id(v)] = arr
        for node in self.graph.nodes:
            args = [env[id(x)] if x is not None else None for x in node.inputs]
            try:
                shapes = [concrete_shape(o.shape, dims) for o in node.outputs]
            except ValueError:
                shapes = None  # a data-dependent dim: no destination buffer can be sized
            if shapes is None:
                self.fallbacks.append(node.label)
                res = reference.run(
                    node.attrs["region"], dict(zip([p.name for p in node.attrs["region"].inputs], args))
                )
                outs = [res[v.name] for v in node.attrs["region"].outputs]
            else:
                outs = [np.empty(s, o.dtype.np) for s, o in zip(shapes, node.outputs)]
                kernel = self.kernel(node, dims)
                self.kernel_inputs(kernel, node, args)
                kernel(args, outs)
            for o, arr in zip(node.outputs, outs):
                env[id(o)] = arr
        return {v.name: env[id(v)] for v in self.graph.outputs}


def compile_graph(graph: Graph, backend, target=None, *, fuse: bool = True) -> CompiledGraph:
    """Partitions `graph` and prepares it to run on `backend` (a name or a Backend);
    kernels are compiled on first use, per binding of the symbolic dims."""
    from einfuse.codegen.backend import get_backend

    if isinstance(backend, str):
        backend = get_backend(backend)
    return CompiledGraph(partition(graph, fuse=fuse), backend, target)


# -- check -----------------------------------------------------------------------------------


@dataclass
class Mismatch:
    backend: str
    output: str
    difference: Difference
    first_divergent: str | None = None  # the first node whose output diverges (its IR line)

    def __str__(self) -> str:
        where = f"\n    first divergent node: {self.first_divergent}" if self.first_divergent else ""
        return f"{self.backend}: output %{self.output}: {self.difference}{where}"


@dataclass
class Crash:
    backend: str
    error: str  # one line: exception type and message
    trace: str = ""
    unsupported: bool = False  # a clean 'cannot lower this' error rather than a crash
    node: str | None = None  # the IR line of the first node that crashes on its own

    def __str__(self) -> str:
        kind = "unsupported" if self.unsupported else "crashed"
        where = f"\n    first crashing node: {self.node}" if self.node else ""
        return f"{self.backend}: {kind}: {self.error}{where}"

    def op(self) -> str:
        """The op at fault: from the crashing node, or the node label an einfuse error
        message starts with (reference errors: 'gather %g: reference gather failed...')."""
        if self.node:
            return _op_of_line(self.node)
        m = re.match(r"(?:\w+Error: )?([a-z_][a-z0-9_]*) %", self.error)
        return m.group(1) if m else "?"

    def kind(self) -> str:
        """The exception type, and the one inside it for wrapped errors ('ExecutionError/IndexError')."""
        outer = self.error.split(":", 1)[0]
        inner = re.search(r"failed: (\w+)(?::|$)", self.error)
        return f"{outer}/{inner.group(1)}" if inner else outer


@dataclass
class CheckResult:
    graph: Graph
    inputs: dict
    backends: list[str]
    mismatches: list[Mismatch] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # oracles skipped and why

    @property
    def ok(self) -> bool:
        return not self.mismatches and not any(not c.unsupported for c in self.crashes)

    def failures(self) -> list:
        return [*self.mismatches, *[c for c in self.crashes if not c.unsupported]]

    def signature(self) -> tuple | None:
        """What kind of failure this is (backend, mismatch/crash, op at fault): the shrinker
        keeps it while reducing, the fuzzer reports each kind once."""
        for c in self.crashes:
            if not c.unsupported:
                return (c.backend, "crash", c.op(), c.kind())
        for m in self.mismatches:
            op = _op_of_line(m.first_divergent) if m.first_divergent else "?"
            return (m.backend, "mismatch", op)
        return None

    def __str__(self) -> str:
        lines = [
            f"checked {len(self.graph.nodes)} nodes on {', '.join(self.backends)}: "
            + (
                "ok"
                if self.ok
                else f"{len(self.mismatches)} mismatch(es), {sum(not c.unsupported for c in self.crashes)} crash(es)"
            )
        ]
        lines += [f"  {m}" for m in self.mismatches]
        lines += [f"  {c}" for c in self.crashes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class CheckFailure(AssertionError):
    """check() found a mismatch or a crash; `.result` has the details."""

    def __init__(self, result: CheckResult):
        from einfuse.ir.printer import print_graph

        text = print_graph(result.graph, constants="auto")
        super().__init__(f"{result}\n--- graph ---\n{text}")
        self.result = result


def _as_graph(subject) -> tuple[Graph, bool]:
    """(graph, fuse?) for a Graph or a fused Node (which is compiled as it is)."""
    if isinstance(subject, Graph):
        return subject, True
    if isinstance(subject, Node) and subject.op == "fused":
        region = subject.attrs["region"]
        g = Graph("fused_node")
        params = [g.add_input(p.name, p.type) for p in region.inputs]
        outs = tuple(g.new_value(v.name, v.type) for v in region.outputs)
        g.add_node(Node("fused", tuple(params), outs, subject.attrs, subject.name))
        g.outputs = list(outs)
        return g, False
    raise TypeError(f"check() takes a Graph or a fused Node, not {subject!r}")


def _backend_name(b) -> str:
    return b if isinstance(b, str) else getattr(b, "name", type(b).__name__)


def _apply_passes(graph: Graph, passes) -> Graph:
    if not passes:
        return graph
    from einfuse.passes import PassManager

    return PassManager(list(passes), verify=True).run(_deep_copy(graph))


def _deep_copy(graph: Graph) -> Graph:
    """A copy a pass may mutate freely (text round trip keeps names, types, constants)."""
    from einfuse.ir.parser import parse
    from einfuse.ir.printer import print_graph

    g = parse(print_graph(graph, constants="full"))
    from einfuse.testing.strategies import input_ranges, set_input_ranges

    set_input_ranges(g, input_ranges(graph))
    return g


def run_backend(graph: Graph, backend, inputs: dict, *, target=None, fuse=True, passes=None) -> dict:
    """The outputs of `graph` (after `passes`) compiled for `backend` ('onnxruntime' runs
    the exported ONNX model instead)."""
    if _backend_name(backend) == ORT:
        from einfuse.testing.onnx_export import run_onnxruntime, to_onnx

        model = to_onnx(graph)
        outs = run_onnxruntime(model, inputs)
        return {v.name: np.asarray(a) for v, a in zip(graph.outputs, outs)}
    g = _apply_passes(graph, passes)
    res = compile_graph(g, backend, target, fuse=fuse)(inputs)
    # Passes keep output names; map by position to be safe.
    return {v.name: res[w.name] for v, w in zip(graph.outputs, g.outputs)}


def _producer_ops(graph: Graph) -> dict[str, str]:
    out = {}
    for n in graph.nodes:
        for o in n.outputs:
            out[o.name] = n.op
    return out


# onnxruntime computes some f64 ops through f32 (GroupNormalization's default stash_type,
# f32 constants in Gelu...): as an oracle, it is held to f32 precision at most.
_ORT_REL_FLOOR = TOLERANCES[DType.f32].ulps * float(np.finfo(np.float32).eps)


def _compare_outputs(
    graph, got: dict, want_values: dict[Value, np.ndarray], paths, tolerance, rel_floor: float = 0.0
) -> list[tuple]:
    ops = _producer_ops(graph)
    diffs = []
    for v in graph.outputs:
        want = want_values[v]
        if v.name not in got:
            diffs.append((v, Difference(0, 0, (), None, None, math.inf, 0, "output missing")))
            continue
        tol = tolerance_for(v.dtype, ops.get(v.name), tolerance)
        p = paths.get(id(v), PathInfo(0.0, 0.0))
        rel = max(p.rel, tol.ulps * _eps(v.dtype), rel_floor) if v.dtype.is_float else None
        d = compare(got[v.name], want, v.dtype, tol, scale=max(1.0, p.scale), rel=rel)
        if d is not None:
            diffs.append((v, d))
    return diffs


def check(
    subject,
    backends=("reference",),
    inputs: dict | None = None,
    *,
    onnx: bool = True,
    seed: int = 0,
    dims: dict | None = None,
    passes=None,
    tolerance: Tolerance | dict | None = None,
    target=None,
    localize: bool = True,
    raise_on_failure: bool = True,
) -> CheckResult:
    """Differentially tests `subject` (a Graph or a fused Node).

    backends: backend names or Backend objects (each compiled through the whole-graph
    path); onnx: also run onnxruntime on the exported graph when it exports; inputs:
    {name: array} (default: random_inputs(graph, seed, dims)); passes: a pipeline run
    before each backend compiles (check(g, ["reference"], passes=[...]) tests a pass);
    tolerance: a Tolerance for every output, or {DType: Tolerance}.
    Raises CheckFailure (an AssertionError) on a mismatch or crash unless
    raise_on_failure=False; returns the CheckResult."""
    graph, fuse = _as_graph(subject)
    if inputs is None:
        inputs = random_inputs(graph, seed, dims)
    names = [_backend_name(b) for b in backends]
    result = CheckResult(graph, inputs, names + ([ORT] if onnx and ORT not in names else []))
    try:
        want_values = reference.run_values(graph, inputs)
    except Exception as e:  # noqa: BLE001 - the oracle itself failing is a finding
        result.crashes.append(
            Crash("reference", _one_line(e), traceback.format_exc(), unsupported=isinstance(e, UnsupportedOpError))
        )
        if raise_on_failure and not result.ok:
            raise CheckFailure(result)
        return result
    mags = path_info(graph, want_values, tolerance)
    runs = list(backends)
    if onnx and ORT not in names:
        runs.append(ORT)
    for backend in runs:
        name = _backend_name(backend)
        try:
            got = run_backend(graph, backend, inputs, target=target, fuse=fuse, passes=passes if name != ORT else None)
        except Exception as e:  # noqa: BLE001
            if name == ORT:
                result.notes.append(f"onnxruntime skipped: {_one_line(e)}")
                continue
            unsupported = isinstance(e, UnsupportedOpError) or type(e).__name__ == "LoweringError"
            crash = Crash(name, _one_line(e), traceback.format_exc(), unsupported=unsupported)
            if localize and not unsupported and len(graph.nodes) > 1:
                line = first_divergent_node(
                    graph,
                    backend,
                    inputs,
                    want_values,
                    mags,
                    target=target,
                    fuse=fuse,
                    passes=passes,
                    tolerance=tolerance,
                )
                if line and "(crashes: " in line:
                    crash.node = line.split("  (crashes: ", 1)[0]
            elif not unsupported and len(graph.nodes) == 1:
                crash.node = _node_line(graph, graph.nodes[0])
            result.crashes.append(crash)
            continue
        floor = _ORT_REL_FLOOR if name == ORT and tolerance is None else 0.0
        for v, diff in _compare_outputs(graph, got, want_values, mags, tolerance, floor):
            m = Mismatch(name, v.name, diff)
            if localize:
                m.first_divergent = first_divergent_node(
                    graph,
                    backend,
                    inputs,
                    want_values,
                    mags,
                    target=target,
                    fuse=fuse,
                    passes=passes if name != ORT else None,
                    tolerance=tolerance,
                )
            result.mismatches.append(m)
    if raise_on_failure and not result.ok:
        raise CheckFailure(result)
    return result


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def prefix_graph(graph: Graph, k: int) -> Graph:
    """The first k nodes of `graph`, returning the k-th node's outputs."""
    g = graph.copy()
    g.nodes = list(graph.nodes[:k])
    g.outputs = list(graph.nodes[k - 1].outputs)
    g._invalidate()
    g.remove_unused_constants()
    from einfuse.testing.strategies import input_ranges, set_input_ranges

    set_input_ranges(g, input_ranges(graph))
    return g


def first_divergent_node(
    graph: Graph,
    backend,
    inputs: dict,
    want_values=None,
    mags=None,
    *,
    target=None,
    fuse=True,
    passes=None,
    tolerance=None,
) -> str | None:
    """The IR line of the first node whose outputs differ from the reference when the
    backend runs the graph's prefix ending there (None if no prefix diverges: the
    divergence needs the whole graph, e.g. a fusion across the last nodes)."""
    if want_values is None:
        want_values = reference.run_values(graph, inputs)
    if mags is None:
        mags = path_info(graph, want_values, tolerance)
    for k in range(1, len(graph.nodes) + 1):
        g = prefix_graph(graph, k)
        feeds = {v.name: inputs[v.name] for v in g.inputs}
        try:
            got = run_backend(g, backend, feeds, target=target, fuse=fuse, passes=passes)
        except Exception as e:  # noqa: BLE001
            return _node_line(graph, graph.nodes[k - 1]) + f"  (crashes: {_one_line(e)})"
        floor = _ORT_REL_FLOOR if _backend_name(backend) == ORT and tolerance is None else 0.0
        if _compare_outputs(g, got, want_values, mags, tolerance, floor):
            return _node_line(graph, graph.nodes[k - 1])
    return None


def _op_of_line(line: str) -> str:
    """'%y = reduce_sum(%x) {...} : f32[B]' -> 'reduce_sum'."""
    m = re.search(r"= ([a-z_][a-z0-9_]*)\(", line)
    return m.group(1) if m else "?"


def _node_line(graph: Graph, node: Node) -> str:
    from einfuse.ir.printer import format_node

    return format_node(node, indent="").strip().splitlines()[0]


__all__ = [
    "ORT",
    "QUANTIZING_OPS",
    "TOLERANCES",
    "CheckFailure",
    "CheckResult",
    "CompiledGraph",
    "Crash",
    "Difference",
    "Mismatch",
    "PathInfo",
    "Tolerance",
    "check",
    "compare",
    "compile_graph",
    "first_divergent_node",
    "partition",
    "path_info",
    "prefix_graph",
    "run_backend",
    "singleton_fused",
    "tolerance_for",
]
