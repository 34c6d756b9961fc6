"""ONNX frontend: ModelProto -> Graph of core ops.

Order of work, so that a bad model costs nothing:
1. read the file safely (onnx_io: paths, sizes, external data);
2. check the opset and list EVERY unsupported op type with its node names in one error;
3. make graph inputs (dim_param names become symbols), constants from initializers;
4. convert node by node, folding all-constant computations (shape arithmetic) on the
   way, refusing any folded constant over the memory limit before allocating it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx

from einfuse.errors import EinfuseError, ModelLoadError, ShapeError, UnsafeModelError, UnsupportedOpError
from einfuse.frontends.onnx_io import DEFAULT_MAX_BYTES, load_model_proto, tensor_to_numpy
from einfuse.frontends.onnx_ops import load_all
from einfuse.ir.builder import make_node
from einfuse.ir.graph import Graph, Value
from einfuse.ir.ops import SHAPE, get_op
from einfuse.ir.types import DType, TensorType, is_identifier, sym

MIN_OPSET = 7
MAX_OPSET = 28  # the newest opset onnx 1.23 defines

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: DType.f32,
    onnx.TensorProto.DOUBLE: DType.f64,
    onnx.TensorProto.FLOAT16: DType.f16,
    onnx.TensorProto.BFLOAT16: DType.bf16,
    onnx.TensorProto.FLOAT8E4M3FN: DType.f8e4m3,
    onnx.TensorProto.FLOAT8E5M2: DType.f8e5m2,
    onnx.TensorProto.FLOAT8E4M3FNUZ: DType.f8e4m3fnuz,
    onnx.TensorProto.FLOAT8E5M2FNUZ: DType.f8e5m2fnuz,
    onnx.TensorProto.FLOAT8E8M0: DType.f8e8m0,
    onnx.TensorProto.INT64: DType.i64,
    onnx.TensorProto.INT32: DType.i32,
    onnx.TensorProto.INT16: DType.i16,
    onnx.TensorProto.INT8: DType.i8,
    onnx.TensorProto.UINT64: DType.u64,
    onnx.TensorProto.UINT32: DType.u32,
    onnx.TensorProto.UINT16: DType.u16,
    onnx.TensorProto.UINT8: DType.u8,
    onnx.TensorProto.BOOL: DType.bool,
}
ONNX_TO_DTYPE = _ONNX_DTYPES
DTYPE_TO_ONNX = {v: k for k, v in _ONNX_DTYPES.items()}


class DynamicOperandError(UnsupportedOpError):
    """A static-parameter operand (axes, shape, pads...) is computed at run time.

    `value_name` is the ONNX tensor at fault; when it is a graph input, callers may
    retry with that input bound to a value (`bind_inputs`)."""

    def __init__(self, message: str, value_name: str, **kw):
        super().__init__(message, **kw)
        self.value_name = value_name


def onnx_dtype(elem_type: int, where: str) -> DType:
    try:
        return _ONNX_DTYPES[elem_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)
        raise UnsupportedOpError(f"{where} has element type {name}, which einfuse does not support") from None


class ConvertCtx:
    """What a converter sees: the graph being built and the ONNX name -> Value map."""

    def __init__(self, graph: Graph, opset: int, max_const_bytes: int):
        self.graph = graph
        self.opset = opset
        self.max_const_bytes = max_const_bytes
        self.values: dict[str, Value] = {}
        self.node: onnx.NodeProto | None = None
        # Small integer tensors computed from symbolic shapes (Shape -> Gather -> Concat),
        # kept element-wise as dims so a Reshape target can still be resolved:
        # {Value: tuple of dims}. Filled by the shape-group converters.
        self.shape_values: dict[Value, tuple] = {}

    # -- reading the node ---------------------------------------------------

    def node_label(self, node) -> str:
        return f"{node.op_type} node {node.name or '(unnamed)'!r}"

    def input(self, node, i: int) -> Value | None:
        if i >= len(node.input) or node.input[i] == "":
            return None
        name = node.input[i]
        try:
            return self.values[name]
        except KeyError:
            raise ModelLoadError(
                f"{self.node_label(node)} reads {name!r}, which is not defined before it "
                "(the graph is not in topological order, or the name is misspelt)"
            ) from None

    def inputs(self, node) -> list:
        return [self.input(node, i) for i in range(len(node.input))]

    def has_input(self, node, i: int) -> bool:
        return i < len(node.input) and node.input[i] != ""

    def attr(self, node, name: str, default=None):
        """The attribute as a Python value (tuples for lists, ndarray for tensors)."""
        for a in node.attribute:
            if a.name == name:
                return self._attr_value(node, a)
        return default

    def has_attr(self, node, name: str) -> bool:
        return any(a.name == name for a in node.attribute)

    def _attr_value(self, node, a):
        A = onnx.AttributeProto
        if a.ref_attr_name:
            raise self.unsupported(node, f"attribute {a.name!r} refers to a function attribute")
        if a.type == A.INT:
            return int(a.i)
        if a.type == A.FLOAT:
            return float(a.f)
        if a.type == A.STRING:
            return a.s.decode("utf-8", errors="replace")
        if a.type == A.INTS:
            return tuple(int(x) for x in a.ints)
        if a.type == A.FLOATS:
            return tuple(float(x) for x in a.floats)
        if a.type == A.STRINGS:
            return tuple(s.decode("utf-8", errors="replace") for s in a.strings)
        if a.type == A.TENSOR:
            return tensor_to_numpy(a.t, where=f"attribute {a.name!r} of {self.node_label(node)}")
        if a.type == A.GRAPH:
            raise self.unsupported(node, f"attribute {a.name!r} is a subgraph (control flow)")
        raise self.unsupported(node, f"attribute {a.name!r} has type {A.AttributeType.Name(a.type)}")

    def const_input(self, node, i: int, default=None) -> np.ndarray | None:
        """Operand i as a numpy array; it must be a constant (after folding)."""
        v = self.input(node, i)
        if v is None:
            return default
        arr = self.graph.const_value(v)
        if arr is None:
            # Name the graph input it is computed from, so callers can bind that input.
            sources = self._source_inputs(v)
            raise DynamicOperandError(
                f"{self.node_label(node)}: operand {i} ({node.input[i]!r}) must be a constant "
                "for einfuse (it is computed at run time)",
                value_name=sources[0].name if sources else node.input[i],
                hint="bind the graph input that feeds it (einfuse run --bind NAME=FILE.npy) or export with static shapes",
            )
        return arr

    def _source_inputs(self, v: Value) -> list[Value]:
        """The graph inputs `v` is computed from, in graph-input order."""
        seen, stack, found = set(), [v], set()
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            prod = self.graph.producer(x)
            if prod is None:
                if not x.is_const:
                    found.add(id(x))
                continue
            stack.extend(y for y in prod.inputs if y is not None)
        return [g for g in self.graph.inputs if id(g) in found]

    # -- building -----------------------------------------------------------

    def unsupported(self, node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.node_label(node)}: {why}")

    def error(self, node, why: str) -> ShapeError:
        return ShapeError(f"{self.node_label(node)}: {why}")

    def const(self, array, hint: str = "const") -> Value:
        array = np.asarray(array)
        if array.nbytes > self.max_const_bytes:
            raise UnsafeModelError(f"constant {hint!r} would take {array.nbytes} bytes, over the limit")
        return self.graph.add_constant(_safe_hint(hint), array, fresh=True)

    def op(self, op: str, inputs, **attrs):
        """Adds a core op (folding it to a constant when its operands are constant)."""
        node = self.node
        name = node.name if node is not None else ""
        label = self.node_label(node) if node is not None else op
        try:
            n = make_node(self.graph, op, inputs, attrs, name=name)
        except ShapeError as e:
            raise ShapeError(f"{label}: {e.message}", hint=e.hint) from None
        operands = [v for v in n.inputs if v is not None]
        d = get_op(op)
        foldable = all(v.is_const for v in operands) or (
            d.family == SHAPE and all(v.type.is_static for v in operands)
        )
        if foldable:
            return self._fold(n, d, label)
        self.graph.add_node(n)
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs


    def _fold(self, n, d, label: str):
        """Evaluates an all-constant node with the reference and adds its results as constants."""
        static = all(o.type.is_static for o in n.outputs)
        if static:
            # exact Python integers: int64 products wrap around for hostile shapes
            total = sum(math.prod(o.type.shape) * o.type.dtype.itemsize for o in n.outputs)
            if total > self.max_const_bytes:
                raise UnsafeModelError(
                    f"{label}: folding it would create a constant of {total} bytes, over the "
                    f"limit of {self.max_const_bytes} bytes",
                    hint="raise the limit with max_const_bytes= (einfuse --max-const-bytes) if the model is trusted",
                )
        args = []
        for v in n.inputs:
            if v is None:
                args.append(None)
            elif v.is_const:
                args.append(self.graph.const_value(v))
            else:  # shape-only op on a static input: no data needed
                args.append(np.broadcast_to(np.zeros((), v.dtype.np), v.type.shape))
        try:
            res = d.reference(*args, **n.attrs)
        except EinfuseError:
            raise
        except Exception as e:
            raise ShapeError(f"{label}: could not fold constant {n.op}: {type(e).__name__}: {e}") from e
        res = res if isinstance(res, tuple) else (res,)
        outs = []
        for o, r in zip(n.outputs, res):
            r = np.asarray(r)
            # Data-dependent shapes (fresh symbols) are only known now; ranks must agree.
            if r.dtype != o.dtype.np or r.ndim != o.type.rank or (static and r.shape != o.type.shape):
                raise ShapeError(f"{label}: folded {n.op} gave {r.dtype}{list(r.shape)}, inference said {o.type}")
            if r.nbytes > self.max_const_bytes:
                raise UnsafeModelError(f"{label}: folded constant of {r.nbytes} bytes is over the limit")
            self.graph._names.discard(o.name)  # the folded node never enters the graph
            outs.append(self.graph.add_constant(o.name, r, fresh=True))
        return outs[0] if len(outs) == 1 else tuple(outs)


def _safe_hint(name: str) -> str:
    return name if name else "const"


def _sanitize_symbol(name: str, taken: dict) -> str:
    """dim_param names become symbols; anything not an identifier is rewritten."""
    if name in taken:
        return taken[name]
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or not (s[0].isalpha() or s[0] == "_"):
        s = "d_" + s
    base, i = s, 1
    while s in taken.values():
        i += 1
        s = f"{base}_{i}"
    taken[name] = s
    return s


def _value_type(vi, where: str, symbols: dict, overrides: dict | None = None) -> TensorType:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise UnsupportedOpError(f"{where} is not a tensor (sequences, maps and optionals are unsupported)")
    dtype = onnx_dtype(t.tensor_type.elem_type, where)
    if not t.tensor_type.HasField("shape"):
        raise UnsupportedOpError(f"{where} has no declared rank; einfuse needs the rank of every input")
    dims = []
    for k, d in enumerate(t.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise ModelLoadError(f"{where} has a negative dimension {d.dim_value}")
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            name = _sanitize_symbol(d.dim_param, symbols)
            dims.append(overrides.get(name, sym(name)) if overrides else sym(name))
        else:
            name = _sanitize_symbol(f"{vi.name}_{k}", symbols)
            dims.append(sym(name))
    return TensorType(tuple(dims), dtype)


def import_onnx(
    source,
    *,
    max_const_bytes: int = DEFAULT_MAX_BYTES,
    bind_inputs: dict | None = None,
    dims: dict | None = None,
    base_dir=None,
) -> Graph:
    """Imports an ONNX model (path, bytes or ModelProto) into a Graph.

    bind_inputs: {input name: array} turns those graph inputs into constants.
    dims: {symbol name: int} fixes symbolic dimensions (e.g. {"batch": 1}).
    """
    kwargs = {"max_external_bytes": max_const_bytes}
    if base_dir is not None:
        kwargs["base_dir"] = base_dir
    model = load_model_proto(source, **kwargs)
    return convert_model(model, max_const_bytes=max_const_bytes, bind_inputs=bind_inputs, dims=dims)


def model_opset(model: onnx.ModelProto) -> int:
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset is None:
        raise ModelLoadError("the model imports no version of the default ONNX opset")
    return opset


def _converter_key(node) -> str:
    """Converters are registered by op type for the default domain, as "domain.Op" otherwise."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def check_supported(model: onnx.ModelProto) -> None:
    """Raises ONE UnsupportedOpError listing every unsupported op type and its nodes."""
    converters = load_all()
    bad: dict[str, list[str]] = {}

    def visit(graph):
        for node in graph.node:
            key = _converter_key(node)
            if key not in converters:
                bad.setdefault(key, []).append(node.name or "(unnamed)")

    visit(model.graph)
    if bad:
        parts = []
        for op, names in sorted(bad.items()):
            shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{op!r} ({shown})")
        raise UnsupportedOpError(
            f"the model uses {len(bad)} unsupported op type(s): " + "; ".join(parts),
            hint="see `einfuse conformance` for what einfuse supports",
        )


def convert_model(
    model: onnx.ModelProto,
    *,
    max_const_bytes: int = DEFAULT_MAX_BYTES,
    bind_inputs: dict | None = None,
    dims: dict | None = None,
) -> Graph:
    opset = model_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedOpError(f"the model uses ONNX opset {opset}; einfuse supports opsets {MIN_OPSET} to {MAX_OPSET}")
    check_supported(model)
    converters = load_all()
    og = model.graph
    g = Graph("main")
    ctx = ConvertCtx(g, opset, max_const_bytes)
    bind_inputs = dict(bind_inputs or {})
    symbols: dict[str, str] = {}

    init_names = set()
    for t in og.initializer:
        if t.name in ctx.values:
            raise ModelLoadError(f"initializer {t.name!r} is defined twice")
        arr = tensor_to_numpy(t, where=f"initializer {t.name!r}")
        onnx_dtype(t.data_type, f"initializer {t.name!r}")
        ctx.values[t.name] = g.add_constant(t.name, arr)
        init_names.add(t.name)
    for t in getattr(og, "sparse_initializer", []):
        raise UnsupportedOpError(f"sparse initializer {t.values.name!r} is not supported")

    for vi in og.input:
        if vi.name in init_names:
            continue  # an initializer with a default value: a constant for us
        if vi.name in ctx.values:
            raise ModelLoadError(f"graph input {vi.name!r} is declared twice")
        if vi.name in bind_inputs:
            arr = np.asarray(bind_inputs.pop(vi.name))
            ctx.values[vi.name] = g.add_constant(vi.name, arr)
            continue
        ty = _value_type(vi, f"graph input {vi.name!r}", symbols, dims)
        ctx.values[vi.name] = g.add_input(vi.name, ty)
    if bind_inputs:
        raise ModelLoadError(f"bind_inputs names unknown graph inputs: {sorted(bind_inputs)}")

    for node in og.node:
        ctx.node = node
        fn = converters[_converter_key(node)]
        try:
            outs = fn(ctx, node)
        except EinfuseError:
            raise
        except Exception as e:  # a converter bug still names the node
            raise EinfuseError(
                f"internal error converting {ctx.node_label(node)}: {type(e).__name__}: {e}",
                hint="please report this with the model; --debug shows the traceback",
            ) from e
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for i, name in enumerate(node.output):
            if name == "":
                continue
            v = outs[i] if i < len(outs) else None
            if v is None:
                raise UnsupportedOpError(f"{ctx.node_label(node)}: output {i} ({name!r}) is not supported")
            if name in ctx.values:
                raise ModelLoadError(f"{ctx.node_label(node)}: output {name!r} is defined twice")
            if v.name != name and name not in g._names and g.producer(v) is not None and not _is_named_elsewhere(ctx, v):
                g.rename(v, name)
            ctx.values[name] = v
    ctx.node = None

    for vi in og.output:
        if vi.name not in ctx.values:
            raise ModelLoadError(f"graph output {vi.name!r} is never computed")
        v = ctx.values[vi.name]
        g.outputs.append(v)
    g.remove_unused_constants()
    return g


def _is_named_elsewhere(ctx: ConvertCtx, v: Value) -> bool:
    return any(x is v for x in ctx.values.values())
