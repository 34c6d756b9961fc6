"""The compile driver: a model in, a CompiledModel (an Executable you can call) out.

    model = einfuse.compile("resnet50.onnx", target="llvm")
    y = model(data=x)["resnetv17_dense0_fwd"]
    model.save("resnet50.einf")
    model = einfuse.load("resnet50.einf")          # no recompiling
    print(model.report)                            # fallbacks, memory plan, timings
    print(model.profile)                           # where the time went, per kernel

One flat function of named steps:

1. import: a path, bytes or ModelProto goes through the safe ONNX loader and the
   importer; a Graph is taken as it is. Symbolic input dims are bound to `dims`, and
   those not given to 1 (with a note): kernels are compiled for static shapes.
2. optimize: the default pipeline (einfuse.passes.pipeline.optimize), which leaves
   every compute op inside a `fused` node. A node it leaves outside one runs on the
   reference backend (wrapped as a one-op group).
3. codegen: each fused group is compiled by the target's backend ("llvm" -> tvm),
   through the on-disk kernel cache. Groups with the same code (the same region up to
   value names) share one kernel. A group the backend cannot lower (LoweringError)
   falls back to the reference backend and is listed in the report; so does a group
   whose shapes are data-dependent (it runs through the reference evaluator, with
   shapes found at run time).
4. runtime: ordered launches, the liveness-based buffer plan (passes/plan_memory.py),
   the weights (pre-packed where a kernel asks) -> einfuse.runtime.executable.Executable.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np
import sympy

from einfuse.codegen.backend import Kernel, LoweringError, get_backend, region_key
from einfuse.errors import EinfuseError, InputError
from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.printer import LITERAL_LIMIT
from einfuse.ir.types import DType, TensorType
from einfuse.passes.plan_memory import BufferUse, format_bytes, lifetimes, plan_memory
from einfuse.runtime.cache import KernelCache
from einfuse.runtime.executable import (
    Buffer,
    Executable,
    KernelSlot,
    Launch,
    apply_prepack,
    kernel_info,
    load_library_kernel,
)
from einfuse.runtime.profiler import Profile, profile_of

__all__ = ["TARGETS", "CompileReport", "CompiledModel", "compile", "load"]

# target name -> the backend that compiles for it
TARGETS: dict[str, str] = {"llvm": "tvm", "reference": "reference"}


# ----------------------------------------------------------------------------- report


@dataclass
class CompileReport:
    """What a compile did: where each group went, the memory plan, and the timings."""

    target: str = ""
    backend: str = ""
    dims: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    groups: int = 0  # fused groups (launches)
    kernels: int = 0  # distinct kernels
    fallbacks: list = field(default_factory=list)  # {"kernel", "kind", "ops", "reason"} per group
    cache: str = ""  # hits / misses / rebuilt
    cache_hits: int = 0
    seconds: dict = field(default_factory=dict)  # import, optimize, codegen, runtime, total
    arena_bytes: int = 0  # the planned peak of intermediates
    intermediate_bytes: int = 0  # their sum without reuse
    weight_bytes: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc) -> "CompileReport":
        if not isinstance(doc, dict):
            return cls()
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def __str__(self) -> str:
        s = self.seconds
        lines = [
            f"target {self.target} (backend {self.backend}); dims {self.dims or 'static'}",
            f"{self.groups} fused groups, {self.kernels} distinct kernels; cache: {self.cache or 'off'}",
            f"memory: planned peak {format_bytes(self.arena_bytes)} of intermediates "
            f"(sum without reuse {format_bytes(self.intermediate_bytes)}); weights {format_bytes(self.weight_bytes)}",
        ]
        if s:
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in s.items())
            lines.append(f"time: {parts}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.fallbacks:
            lines.append(f"{len(self.fallbacks)} group(s) run on the reference backend:")
            for f in self.fallbacks:
                lines.append(f"  {f['kernel']} ({f['kind']}: {'+'.join(f['ops'][:6])}): {f['reason']}")
        else:
            lines.append(f"every group runs on the {self.backend} backend")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the model


class CompiledModel:
    """A compiled model: call it with numpy inputs by name, get numpy outputs by name."""

    def __init__(self, executable: Executable, report: CompileReport | None = None):
        self.executable = executable
        self.report = report or CompileReport.from_json(executable.meta.get("report"))

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        return self.executable.run(inputs)

    def run(self, inputs: dict) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: array}; inputs are checked against the
        signature (names, dtypes, shapes) with the reference evaluator's errors."""
        return self.executable.run(inputs)

    @property
    def inputs(self) -> list[Value]:
        """The input signature: Values with their names and (static) types."""
        return list(self.executable.signature.inputs)

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.executable.inputs]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.executable.outputs]

    @property
    def profile(self) -> Profile:
        """Per-kernel time over every run so far (kernel, kind, ops, calls, ms, %, GFLOP/s)."""
        return profile_of(self.executable)

    def reset_profile(self) -> None:
        self.executable.reset_profile()

    def save(self, path: str | os.PathLike) -> None:
        """Writes one .einf file; einfuse.load reads it back without recompiling."""
        self.executable.meta["report"] = self.report.to_json()
        self.executable.save(path)

    def __repr__(self) -> str:
        ins = ", ".join(f"{v.name}: {v.type}" for v in self.inputs)
        return f"<CompiledModel ({ins}) -> {self.output_names}, {len(self.executable.launches)} launches>"


def load(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> CompiledModel:
    """Reads a CompiledModel saved with .save(path) (an .einf file); compiles nothing."""
    return CompiledModel(Executable.load(path, cache_dir=cache_dir))


def is_executable_file(path: str | os.PathLike) -> bool:
    """True when `path` is a zip archive holding an einfuse manifest (an .einf file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "manifest.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


# ----------------------------------------------------------------------------- compile


def compile(  # noqa: A001 - the public name the issue asks for (einfuse.compile)
    model,
    target: str = "llvm",
    dims: dict[str, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    cache: bool = True,
    strict: bool = False,
    max_const_bytes: int | None = None,
    tune_db: str | os.PathLike | None = None,
) -> CompiledModel:
    """Compiles an ONNX model (path, bytes or ModelProto), a torch.export.ExportedProgram
    or a Graph for `target`.

    dims: sizes of symbolic input dims by name (unset ones are 1, with a note).
    cache_dir: the kernel cache ($EINFUSE_CACHE_DIR or ~/.cache/einfuse by default);
    cache=False compiles everything afresh and stores nothing. progress: a progress
    bar over kernels (on a terminal) and notes on stderr. strict: a backend error other
    than LoweringError raises instead of falling back to the reference backend. tune_db: a
    database written by `einfuse tune` (default $EINFUSE_TUNE_DB; none: rule-based schedules)."""
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    report = CompileReport(target=target, backend=TARGETS[target])
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    graph, bound = import_model(model, dims, report, max_const_bytes=max_const_bytes)
    report.dims = dict(bound)
    report.seconds["import"] = time.perf_counter() - t0
    if progress:
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)

    t0 = time.perf_counter()
    graph, leftovers = optimize_graph(graph)
    report.seconds["optimize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    builder = _ExecutableBuilder(
        graph, target, bound, report, cache_dir if cache else False, strict, leftovers, tune_db=tune_db
    )
    # Importing TVM takes seconds, once per process: shown apart from the kernels' time.
    report.seconds["backend import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exe = builder.build(progress=progress)
    report.seconds["codegen"] = builder.codegen_seconds
    report.seconds["runtime"] = time.perf_counter() - t0 - builder.codegen_seconds
    report.seconds["total"] = time.perf_counter() - t_start
    exe.meta["report"] = report.to_json()
    return CompiledModel(exe, report)


# -- 1. import ---------------------------------------------------------------------------


def import_model(model, dims: dict | None, report: CompileReport, *, max_const_bytes: int | None = None):
    """(Graph, {symbol: size}) for an ONNX model, an ExportedProgram or a Graph, symbolic input dims bound."""
    dims = dict(dims or {})
    for name, size in dims.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise InputError(f"dims[{name!r}] must be a size >= 0, got {size!r}")
    if type(model).__name__ == "ExportedProgram":  # torch.export; torch is imported only then
        from einfuse.frontends.onnx_io import DEFAULT_MAX_BYTES
        from einfuse.frontends.torch_export import import_torch

        model = import_torch(model, max_const_bytes=max_const_bytes or DEFAULT_MAX_BYTES)
    if isinstance(model, Graph):
        symbols = {s.name: s.name for v in model.inputs for d in v.shape if not isinstance(d, int)
                   for s in d.free_symbols}  # fmt: skip
        bound = _bind(symbols, dims, report)
        # Passes rewrite the graph's node list in place: work on a copy of the caller's.
        return model.copy(), bound

    from einfuse.frontends.onnx import convert_model
    from einfuse.frontends.onnx_io import DEFAULT_MAX_BYTES, load_model_proto

    limit = max_const_bytes or DEFAULT_MAX_BYTES
    if isinstance(model, Path):
        model = str(model)
    proto = load_model_proto(model, max_external_bytes=limit)
    symbols = symbolic_input_dims(proto)
    bound = _bind(symbols, dims, report)
    graph = convert_model(proto, max_const_bytes=limit, dims=bound or None)
    return graph, bound


def _bind(symbols: dict[str, str], dims: dict, report: CompileReport) -> dict[str, int]:
    """{symbol: size}: `dims` keys may be the importer's symbol or the model's spelling."""
    by_raw = {raw: sym for sym, raw in symbols.items()}
    bound: dict[str, int] = {}
    for name, size in dims.items():
        sym = name if name in symbols else by_raw.get(name)
        if sym is None:
            known = ", ".join(symbols) or "none"
            raise InputError(f"dims names unknown dimension {name!r}; the model's symbolic dims: {known}")
        bound[sym] = int(size)
    missing = [s for s in symbols if s not in bound]
    if missing:
        report.notes.append(f"symbolic dims {', '.join(missing)} default to 1 (set them with dims={{...}} / --dims)")
        bound.update(dict.fromkeys(missing, 1))
    return bound


def symbolic_input_dims(model) -> dict[str, str]:
    """{importer symbol: the model's spelling} for the symbolic dims of the model's inputs,
    named exactly as the importer names them (a dim without a dim_param is `input_axis`)."""
    from einfuse.frontends.onnx import _sanitize_symbol

    init = {t.name for t in model.graph.initializer}
    taken: dict[str, str] = {}
    names: dict[str, str] = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            continue
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                continue
            raw = d.dim_param if d.HasField("dim_param") and d.dim_param else f"{vi.name}_{k}"
            names.setdefault(_sanitize_symbol(raw, taken), raw)
    return names


# -- 2. optimize -------------------------------------------------------------------------


def optimize_graph(graph: Graph) -> tuple[Graph, set[int]]:
    """The default pipeline; nodes it leaves outside a fused group are wrapped one per
    group. Returns the graph and the ids of those wrapped nodes (for the reference)."""
    try:
        from einfuse.passes.pipeline import optimize
    except ModuleNotFoundError as e:  # an older tree without the fusion pipeline
        if e.name not in ("einfuse.passes.pipeline", "einfuse.passes.fuse"):
            raise
        from einfuse.passes import PassManager

        optimize = PassManager(["fold-constants", "eliminate-common-subexpressions", "eliminate-dead-code"]).run
    graph = optimize(graph)
    leftovers: set[int] = set()
    for node in list(graph.nodes):
        if node.op != "fused":
            wrapped = wrap_node(graph, node)
            graph.replace_node(node, [wrapped])
            leftovers.add(id(wrapped))
    return graph, leftovers


def wrap_node(graph: Graph, node: Node) -> Node:
    """A fused node holding `node` alone (small constants move into the region)."""
    from einfuse.ir.ops import get_op

    region = Graph("region")
    env: dict[int, Value] = {}
    operands: list[Value] = []
    for x in node.inputs:
        if x is None or id(x) in env:
            continue
        arr = graph.const_value(x)
        if arr is not None and arr.size <= LITERAL_LIMIT:
            env[id(x)] = region.add_constant(f"c{len(region.constants)}", arr)
        else:
            env[id(x)] = region.add_input(f"in{len(operands)}", x.type)
            operands.append(x)
    outs = tuple(region.new_value(f"out{i}", o.type) for i, o in enumerate(node.outputs))
    inputs = tuple(None if x is None else env[id(x)] for x in node.inputs)
    region.add_node(node.with_(inputs=inputs, outputs=outs))
    region.outputs = list(outs)
    family = get_op(node.op).family
    kind = family if family in ("out_fusable", "normalize", "reduce", "elementwise", "injective") else "opaque"
    return Node("fused", tuple(operands), node.outputs, {"region": region, "kind": kind}, name=node.name)


def canonical_region(region: Graph) -> tuple[Graph, dict[str, str]]:
    """A copy of `region` with values renamed by position (inputs in0.., constants c0..,
    node outputs v0..), frontend node names dropped, and the map {original name:
    canonical name}: groups that compute
    the same thing get the same text, so they share a kernel and a cache entry."""
    g = Graph("region")
    env: dict[int, Value] = {}
    names: dict[str, str] = {}
    for i, v in enumerate(region.inputs):
        env[id(v)] = g.add_input(f"in{i}", v.type)
        names[v.name] = f"in{i}"
    for i, (name, (v, arr)) in enumerate(region.constants.items()):
        env[id(v)] = g.add_constant(f"c{i}", arr)
        names[name] = f"c{i}"
    count = 0
    for n in region.nodes:
        outs = []
        for o in n.outputs:
            nv = Value(f"v{count}", o.type)
            names[o.name] = nv.name
            env[id(o)] = nv
            outs.append(nv)
            count += 1
        inputs = tuple(None if x is None else env[id(x)] for x in n.inputs)
        # Frontend node names are printed too (#"node_add"): dropped, like value names.
        g.add_node(n.with_(inputs=inputs, outputs=tuple(outs), name=""))
    g.outputs = [env[id(v)] for v in region.outputs]
    return g, names


# -- 3 and 4. codegen and the runtime program --------------------------------------------


def tvm_target(target: str = "llvm"):
    """The TVM target the TVM backend compiles `target` for (the detected host CPU)."""
    try:
        from einfuse.codegen.tvm.target import get_target
    except ImportError:
        import tvm
        from tvm.target import codegen

        return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
    return get_target(target)


@functools.lru_cache(maxsize=None)
def _code_fingerprint() -> str:
    """A hash of einfuse's codegen sources: a changed backend never reuses old kernels."""
    root = Path(__file__).resolve().parent / "codegen"
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _host_cpu() -> str:
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                model += " " + line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        model += " " + hashlib.sha256(flags.encode()).hexdigest()[:8]
    except OSError:
        pass
    return model


def cache_salt(backend: str, target: str, dims: dict) -> str:
    """What besides the region decides a kernel's code: backend, target, host CPU, the
    versions of einfuse and TVM, einfuse's codegen sources, the bound dims."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        # From the package metadata: importing tvm itself takes seconds.
        tvm_version = version("apache-tvm")
    except PackageNotFoundError:
        tvm_version = "none"
    parts = {
        "backend": backend,
        "target": target,
        "cpu": _host_cpu(),
        "einfuse": _version(),
        "tvm": tvm_version,
        "code": _code_fingerprint(),
        "dims": sorted(dims.items()),
    }
    return json.dumps(parts, sort_keys=True)


def concrete_shape(t: TensorType, dims: dict[str, int]) -> tuple[int, ...] | None:
    """The static shape of `t` with `dims` substituted, or None when a dim stays unknown."""
    out = []
    subs = None
    for d in t.shape:
        if isinstance(d, int):
            out.append(d)
            continue
        if subs is None:
            subs = {sympy.Symbol(k, integer=True, nonnegative=True): v for k, v in dims.items()}
        v = sympy.sympify(d).subs(subs)
        if not v.is_Integer:
            return None
        out.append(int(v))
    return tuple(out)


class _ExecutableBuilder:
    def __init__(
        self, graph, target: str, dims: dict, report: CompileReport, cache_dir, strict: bool, leftovers, tune_db=None
    ):
        self.graph = graph
        self.leftovers = leftovers
        self.target = target
        self.dims = dims
        self.report = report
        self.strict = strict
        self.backend_name = TARGETS[target]
        self.backend = get_backend(self.backend_name)
        self.reference = get_backend("reference")
        self.cache = None if cache_dir is False or self.backend_name == "reference" else KernelCache(cache_dir)
        self.tune_db = tune_db
        # A tuning database changes the code of the kernels it has records for.
        self.salt = cache_salt(self.backend_name, target, dims) + _tune_salt(self.backend_name, tune_db)
        self.buffers: list[Buffer] = []
        self.buffer_of: dict[int, int] = {}
        self.weights: dict[int, np.ndarray] = {}
        self.packed: dict[tuple, int] = {}
        self.slots: list[KernelSlot] = []
        self.slot_of_key: dict[str, int] = {}
        self.fallback_of_key: dict[str, str] = {}
        self.launches: list[Launch] = []
        self.codegen_seconds = 0.0
        self._accepts_dims = _accepts_kwarg(self.backend.compile, "dims")

    # -- buffers ----------------------------------------------------------------------

    def buffer(self, v: Value, role: str | None = None) -> int:
        bid = self.buffer_of.get(id(v))
        if bid is not None:
            return bid
        shape = concrete_shape(v.type, self.dims)
        if role is None:
            if v.is_const:
                role = "weight"
            elif shape is None:
                role = "dynamic"
            elif self.graph.is_output(v):
                role = "output"
            else:
                role = "temp"
        if role == "weight":
            arr = self.graph.const_value(v)
            if arr is None:
                raise EinfuseError(f"constant %{v.name} has no value in the graph")
            bid = self._new_buffer(Buffer(v.dtype, tuple(arr.shape), "weight"))
            self.weights[bid] = arr
        else:
            bid = self._new_buffer(Buffer(v.dtype, shape, role))
        self.buffer_of[id(v)] = bid
        return bid

    def _new_buffer(self, b: Buffer) -> int:
        self.buffers.append(b)
        return len(self.buffers) - 1

    def weight_buffer(self, arr: np.ndarray, dtype) -> int:
        bid = self._new_buffer(Buffer(dtype, tuple(arr.shape), "weight"))
        self.weights[bid] = arr
        return bid

    # -- the program --------------------------------------------------------------------

    def build(self, progress: bool) -> Executable:
        graph = self.graph
        for v in graph.inputs:
            self.buffer(v, "input")
        nodes = [n for n in graph.nodes]
        with Progress(len(nodes), enabled=progress) as bar:
            for node in nodes:
                bar.describe(node.attrs.get("kind", node.op))
                self.add_launch(node)
                bar.advance()
        for v in graph.outputs:
            self.buffer(v)
        if self.cache is not None:
            self.report.cache = str(self.cache.stats)
            self.report.cache_hits = self.cache.stats.hits

        # The memory plan: temps only (inputs, weights and outputs live outside the arena).
        temps = [i for i, b in enumerate(self.buffers) if b.role == "temp"]
        spans = lifetimes([(ln.operands, ln.results) for ln in self.launches], temps)
        uses = [BufferUse(i, self.buffers[i].nbytes, *spans[i]) for i in temps if i in spans]
        plan = plan_memory(uses)
        for i in temps:
            self.buffers[i].offset = plan.offsets.get(i, 0)
        self.report.groups = len(self.launches)
        self.report.kernels = len(self.slots)
        self.report.arena_bytes = plan.arena_bytes
        self.report.intermediate_bytes = plan.total_bytes  # the same 64-byte rounding as the plan
        exe = Executable(
            inputs=[(v.name, self.buffer_of[id(v)]) for v in graph.inputs],
            outputs=[(v.name, self.buffer_of[id(v)]) for v in graph.outputs],
            buffers=self.buffers,
            weights=self.weights,
            kernels=self.slots,
            launches=self.launches,
            arena_bytes=plan.arena_bytes,
            meta={"target": self.target, "dims": dict(self.dims), "einfuse": _version()},
        )
        self.report.weight_bytes = exe.weight_bytes
        return exe

    def add_launch(self, node: Node) -> None:
        region, _ = canonical_region(node.attrs["region"])
        kind = str(node.attrs.get("kind", "opaque"))
        canon = Node("fused", node.inputs, node.outputs, {"region": region, "kind": kind}, name=node.name)
        values = [x for x in node.inputs] + list(node.outputs)
        dynamic = any(x is not None and concrete_shape(x.type, self.dims) is None for x in values)
        operands = [self.buffer(x) for x in node.inputs]
        results = [self.buffer(o) for o in node.outputs]

        def launch(k: int, dyn: bool = False) -> None:
            self.launches.append(Launch(k, tuple(operands), tuple(results), dyn))

        if self.backend_name == "reference":
            return launch(self.reference_slot(canon, None), dynamic)
        if dynamic:
            return launch(self.reference_slot(canon, "data-dependent shapes"), True)
        if id(node) in self.leftovers:
            return launch(self.reference_slot(canon, "left outside a fused group by the pipeline"))

        key = region_key(canon, self.salt + _large_constants_digest(region))
        if key in self.fallback_of_key:
            # A reference kernel carries its own region's constants: one per group.
            return launch(self.reference_slot(canon, self.fallback_of_key[key]))
        k = self.slot_of_key.get(key)
        if k is None:
            outcome = self.compile_group(canon, key)
            if isinstance(outcome, str):
                self.fallback_of_key[key] = outcome
                return launch(self.reference_slot(canon, outcome))
            k = self.slot_of_key[key] = outcome
        meta = self.slots[k].kernel.meta or {}
        for name in meta.get("const_params", ()):
            # Kernel parameters: the region's large constants (canonical names), or arrays
            # the backend derived from them (meta["param_arrays"], e.g. packed weights).
            if name in region.constants:
                v, arr = region.constants[name]
                operands.append(self.weight_buffer(arr, v.dtype))
            else:
                arr = np.ascontiguousarray((meta.get("param_arrays") or {})[name])
                operands.append(self.weight_buffer(arr, DType.from_numpy(arr.dtype)))
        self.prepack(operands, meta.get("prepack"), self.slots[k])
        launch(k)

    def prepack(self, operands: list[int], spec, slot: KernelSlot) -> None:
        """Replaces weight operands by copies in the layout the kernel asks for (once per weight)."""
        if not spec:
            return
        items = spec.items() if isinstance(spec, dict) else spec
        for index, transform in items:
            i = int(index)
            src = operands[i]
            if self.buffers[src].role != "weight":
                raise EinfuseError(f"kernel {slot.kernel.name} asks to pre-pack operand {i}, which is not a constant")
            tag = (src, id(transform) if callable(transform) else json.dumps(transform))
            if tag not in self.packed:
                packed = apply_prepack(self.weights[src], transform)
                self.packed[tag] = self.weight_buffer(packed, DType.from_numpy(packed.dtype))
            operands[i] = self.packed[tag]

    def reference_slot(self, node: Node, reason: str | None) -> int:
        kernel = self.reference.compile(node, self.target)
        info = kernel_info(kernel)
        self.slots.append(KernelSlot(kernel, info, region=node.attrs["region"]))
        if reason is not None:
            self.report.fallbacks.append(
                {"kernel": kernel.name, "kind": kernel.kind, "ops": list(kernel.ops), "reason": reason}
            )
        return len(self.slots) - 1

    def compile_group(self, node: Node, key: str) -> int | str:
        """The slot of the kernel for `node`, compiled or loaded from the cache, or the
        reason it falls back to the reference backend."""
        t0 = time.perf_counter()
        try:
            entry = self.cache.get(key) if self.cache is not None else None
            if entry is not None:
                if "fallback_reason" in entry.info:
                    return str(entry.info["fallback_reason"])
                try:
                    kernel = load_library_kernel(entry.library, entry.info)
                    self.slots.append(KernelSlot(kernel, entry.info, library=entry.library))
                    return len(self.slots) - 1
                except Exception as e:  # noqa: BLE001 - an unloadable entry is rebuilt
                    self.cache.stats.rebuilt.append((key, f"cannot load: {type(e).__name__}"))
            try:
                kernel = self._backend_compile(node)
            except LoweringError as e:
                if self.cache is not None:
                    self.cache.put(key, {"fallback_reason": e.message})
                return e.message
            except Exception as e:
                if self.strict:
                    raise
                lines = str(e).strip().splitlines()
                return f"backend error ({type(e).__name__}: {lines[-1][:160] if lines else ''})"
            library = self._library_file(kernel)
            info = kernel_info(kernel)
            if self.cache is not None and library is not None and _cacheable(kernel):
                exported = library
                library = self.cache.put(key, info, library).library
                if exported != Path(kernel.artifact if isinstance(kernel.artifact, (str, os.PathLike)) else ""):
                    _remove_export(exported)  # our own temporary copy; the cache holds the library now
            self.slots.append(KernelSlot(kernel, info, library=library))
            return len(self.slots) - 1
        finally:
            self.codegen_seconds += time.perf_counter() - t0

    def _backend_compile(self, node: Node) -> Kernel:
        kwargs = {}
        if self.tune_db is not None and _accepts_kwarg(self.backend.compile, "tune_db"):
            kwargs["tune_db"] = self.tune_db
        if self._accepts_dims:
            return self.backend.compile(node, self.target, dims=dict(self.dims), **kwargs)
        return self.backend.compile(node, self.target, **kwargs)

    def _library_file(self, kernel: Kernel) -> Path | None:
        art = kernel.artifact
        if art is None:
            return None
        if isinstance(art, (str, os.PathLike)):
            return Path(art)
        import tempfile

        # A library object, or a function that writes the library to a path.
        path = Path(tempfile.mkdtemp(prefix="einfuse-lib-")) / f"{kernel.name}.so"
        if hasattr(art, "export_library"):
            art.export_library(str(path))
        elif callable(art):
            art(str(path))
        else:
            return None
        return path


def _tune_salt(backend: str, tune_db) -> str:
    """"" without a tuning database, else a hash of its records (no TVM import)."""
    if backend != "tvm":
        return ""
    from einfuse.codegen.tvm.tune import database_fingerprint

    fingerprint = database_fingerprint(tune_db)
    return f"|tune={fingerprint}" if fingerprint else ""


def _large_constants_digest(region: Graph) -> str:
    """A hash of the region's constants too large to print in its text (usually none:
    fusion keeps weights as operands). Groups that differ only in such a constant share
    code, but not the arrays a backend derives from it (meta["param_arrays"]), so they
    do not share a kernel."""
    h = None
    for name, (_, arr) in region.constants.items():
        if arr.size > LITERAL_LIMIT:
            h = h or hashlib.sha256()
            h.update(name.encode() + str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return "" if h is None else "|consts=" + h.hexdigest()


def _remove_export(path: Path) -> None:
    try:
        path.unlink()
        path.parent.rmdir()
    except OSError:
        pass


def _cacheable(kernel: Kernel) -> bool:
    """Whether a cache entry can rebuild `kernel`: not when its pre-packing is a callable,
    nor when it carries arrays derived at compile time (meta["param_arrays"]), which
    depend on constant values the cache key leaves out."""
    meta = kernel.meta or {}
    if meta.get("param_arrays"):
        return False
    spec = meta.get("prepack")
    if not spec:
        return True
    items = spec.values() if isinstance(spec, dict) else [t for _, t in spec]
    return not any(callable(t) for t in items)


def _accepts_kwarg(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("einfuse")
    except PackageNotFoundError:
        return "dev"


class Progress:
    """A rich progress bar over kernels, on a terminal only (compile, and `einfuse tune`)."""

    def __init__(self, total: int, enabled: bool, label: str = "compiling", width: int = 20):
        self.label = label
        self.width = width
        self.total = total
        self.enabled = enabled and sys.stderr.isatty() and total > 0
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def describe(self, what: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=str(what)[: self.width])

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

