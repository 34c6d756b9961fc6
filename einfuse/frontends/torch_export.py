"""torch.export frontend: ExportedProgram (or nn.Module + example args) -> Graph of core ops.

    g = import_torch(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    g = import_torch(torch.export.export(model, (x,)))

Order of work, as in the ONNX importer, so that a bad program costs nothing:
1. export (for a module) and decompose to Core ATen, keeping scaled_dot_product_attention
   whole (it becomes ONE `attention` node, which the attention passes lower themselves),
   and linear/matmul too (see KEPT_WHOLE for why);
2. list EVERY unsupported aten op with its FX node names in one UnsupportedOpError;
3. placeholders: user inputs become graph inputs (torch's symbolic sizes become einfuse
   symbols named after their torch.export.Dim), parameters/buffers/lifted constants become
   constants named by their state-dict key;
4. convert node by node through ConvertCtx (all-constant computations such as a weight's
   transpose fold on the way); every converted value is checked against the shape and
   dtype torch recorded for the node (node.meta["val"]), so a converter slip is an error
   naming the node, never a wrong answer.

SymInt-valued FX nodes (aten.sym_size, operator.mul on sizes...) are not converted: their
value is read from node.meta["val"] as a symbolic dim and used where a shape operand needs
it (view sizes, slice ends).

Known difference: torch's SDPA gives NaN for a query row whose keys are all masked out;
einfuse's `attention` gives 0 there (see einfuse/ir/ops/attention.py).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy

from einfuse.errors import EinfuseError, ModelLoadError, ShapeError, UnsupportedOpError
from einfuse.frontends.onnx import ConvertCtx, _sanitize_symbol
from einfuse.frontends.onnx_io import DEFAULT_MAX_BYTES
from einfuse.ir.graph import Graph, Value
from einfuse.ir.types import DType, TensorType, dim_known_ne, dims_equal, floordiv, simplify_dim, sym

__all__ = ["SDPA_OPS", "check_supported", "import_torch"]

# ----------------------------------------------------------------------------- tables

# torch.dtype (by name, so this module imports without torch) -> DType
_DTYPES = {
    "float64": DType.f64,
    "float32": DType.f32,
    "float16": DType.f16,
    "bfloat16": DType.bf16,
    "float8_e4m3fn": DType.f8e4m3,
    "float8_e5m2": DType.f8e5m2,
    "float8_e4m3fnuz": DType.f8e4m3fnuz,
    "float8_e5m2fnuz": DType.f8e5m2fnuz,
    "int64": DType.i64,
    "int32": DType.i32,
    "int16": DType.i16,
    "int8": DType.i8,
    "uint64": DType.u64,
    "uint32": DType.u32,
    "uint16": DType.u16,
    "uint8": DType.u8,
    "bool": DType.bool,
}

# The aten ops kept whole through the Core ATen decomposition. SDPA becomes one
# `attention` node. linear and matmul on N-D inputs would decompose to view -> mm -> view,
# and the last view splits a merged (B*S) dim back into two symbolic dims, which a reshape
# with an int target (0 = copy, one -1) cannot express; einfuse's matmul takes N-D directly.
SDPA_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
KEPT_WHOLE = SDPA_OPS + ("linear", "matmul")

# FX call_function targets that check or constrain symbolic sizes; nothing to convert.
_ASSERT_OPS = frozenset(
    {
        "_assert_scalar",
        "_assert_async",
        "_assert_tensor_metadata",
        "sym_constrain_range",
        "sym_constrain_range_for_size",
        "_functional_sym_constrain_range",
        "_functional_sym_constrain_range_for_size",
    }
)

# aten op (schema name without "aten::") -> converter(ctx, node, args) -> Value or tuple
CONVERTERS: dict[str, Callable] = {}


def converter(*names: str):
    def deco(fn):
        for n in names:
            if n in CONVERTERS:
                raise ValueError(f"converter for aten.{n} registered twice")
            CONVERTERS[n] = fn
        return fn

    return deco


def torch_dtype(dt, where: str) -> DType:
    name = str(dt).removeprefix("torch.")
    try:
        return _DTYPES[name]
    except KeyError:
        raise UnsupportedOpError(f"{where} has dtype {dt}, which einfuse does not support") from None


def _to_numpy(t, where: str) -> np.ndarray:
    """A real (not fake) torch tensor as a numpy array of the matching dtype."""
    import torch

    dtype = torch_dtype(t.dtype, where)
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(dtype.np)  # numpy has no bf16: exact through f32
    if dtype in (DType.f8e4m3, DType.f8e5m2, DType.f8e4m3fnuz, DType.f8e5m2fnuz):
        return t.float().numpy().astype(dtype.np)
    return t.contiguous().numpy()  # Graph.add_constant takes a private copy


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _is_symint(x) -> bool:
    import torch

    return isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool))


def _schema_name(target) -> str | None:
    """The aten op name ("add" for torch.ops.aten.add.Tensor), or None for other targets."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.name.startswith("aten::"):
        return None
    return schema.name.removeprefix("aten::")


def _op_label(target) -> str:
    if hasattr(target, "_schema"):
        return str(target.name()).replace("::", ".")
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


# ----------------------------------------------------------------------------- context


class TorchCtx(ConvertCtx):
    """ConvertCtx over an FX graph: `self.node` is the FX node being converted."""

    def __init__(self, graph: Graph, max_const_bytes: int, symbols: _Symbols):
        super().__init__(graph, opset=0, max_const_bytes=max_const_bytes)
        self.symbols = symbols
        self.env: dict[Any, Any] = {}  # FX node -> Value | tuple | dim

    def node_label(self, node) -> str:
        return f"{_op_label(node.target)} node {node.name!r}"

    def dim(self, x, what: str = "size"):
        """A torch size (int or SymInt already mapped to a dim) as an einfuse dim."""
        if isinstance(x, bool):
            raise self.unsupported(self.node, f"{what} is a bool")
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, sympy.Basic):
            return simplify_dim(x)
        raise self.unsupported(self.node, f"{what} {x!r} is not a size")

    def static_int(self, x, what: str) -> int:
        d = self.dim(x, what)
        if not isinstance(d, int):
            raise self.unsupported(self.node, f"{what} is symbolic ({d}); einfuse needs it static here")
        return d

    def meta(self, node=None):
        return (node or self.node).meta.get("val")

    def out_dtype(self, i: int | None = None) -> DType:
        val = self.meta()
        if i is not None:
            val = val[i]
        return torch_dtype(val.dtype, self.node_label(self.node))

    def scalar(self, x, dtype: DType) -> Value:
        """A Python number as a 0-d constant of `dtype`."""
        return self.const(np.asarray(x, dtype=dtype.np), "scalar")

    def tensor(self, x, dtype: DType | None = None) -> Value:
        """x (a Value or a Python number) as a Value, cast to `dtype` when given."""
        if isinstance(x, Value):
            return self.cast(x, dtype) if dtype is not None else x
        if isinstance(x, (bool, int, float, np.number)):
            if dtype is None:
                dtype = DType.bool if isinstance(x, bool) else DType.i64 if isinstance(x, int) else DType.f32
            return self.scalar(x, dtype)
        raise self.unsupported(self.node, f"operand {x!r} is not a tensor or a number")

    def cast(self, v: Value, dtype: DType) -> Value:
        return v if v.dtype == dtype else self.op("cast", [v], to=dtype)


class _Symbols:
    """torch's sympy symbols (s0, s77...) -> einfuse symbols named after their Dim."""

    def __init__(self):
        self.taken: dict[str, str] = {}  # as in the ONNX importer: raw name -> sanitised
        self.map: dict[sympy.Symbol, sympy.Symbol] = {}

    def name(self, s: sympy.Symbol, shape_env, fallback: str) -> None:
        if s in self.map:
            return
        raw = _debug_name(s, shape_env) or fallback
        self.map[s] = sym(_sanitize_symbol(raw, self.taken))

    def convert(self, expr, where: str):
        """A torch size expression as an einfuse dim (Add/Mul/Pow/FloorDiv over symbols)."""
        if isinstance(expr, (int, np.integer)) or (isinstance(expr, sympy.Basic) and expr.is_Integer):
            return int(expr)
        if isinstance(expr, sympy.Symbol):
            if expr not in self.map:
                self.map[expr] = sym(_sanitize_symbol(str(expr), self.taken))
            return self.map[expr]
        args = [self.convert(a, where) for a in expr.args]
        kind = type(expr).__name__
        if isinstance(expr, sympy.Add):
            return simplify_dim(sympy.Add(*args))
        if isinstance(expr, sympy.Mul):
            return simplify_dim(sympy.Mul(*args))
        if isinstance(expr, sympy.Pow) and isinstance(args[1], int) and args[1] >= 0:
            return simplify_dim(sympy.Pow(args[0], args[1]))
        if kind == "FloorDiv":
            return floordiv(args[0], args[1])
        if kind in ("Max", "Min"):
            return simplify_dim(getattr(sympy, kind)(*args))
        raise UnsupportedOpError(f"{where}: the symbolic size {expr} uses {kind}, which einfuse does not convert")


def _debug_name(s, shape_env) -> str | None:
    """The torch.export.Dim name of symbol `s` (private ShapeEnv tables: best effort)."""
    if shape_env is None:
        return None
    try:
        for source in shape_env.var_to_sources.get(s, []):
            src = source.name() if callable(source.name) else source.name  # a property in newer torch
            name = shape_env.source_name_to_debug_name.get(src)
            if name:
                return name
    except Exception:  # noqa: BLE001 - a newer torch may move these; fall back to input_axis
        return None
    return None


# ----------------------------------------------------------------------------- driver


def decomposition_table() -> dict:
    """Core ATen decompositions, minus those of the ops in KEPT_WHOLE."""
    import torch

    table = dict(torch.export.default_decompositions())
    for op in list(table):
        if _schema_name(op) in KEPT_WHOLE or "scaled_dot_product" in str(op):
            del table[op]
    return table


def _export(module, example_args, dynamic_shapes):
    import torch

    if example_args is None:
        raise ModelLoadError("import_torch needs example_args to export an nn.Module")
    if not isinstance(example_args, tuple):
        example_args = tuple(example_args) if isinstance(example_args, list) else (example_args,)
    with torch.no_grad():
        return torch.export.export(module, example_args, dynamic_shapes=dynamic_shapes)


def check_supported(ep) -> None:
    """Raises ONE UnsupportedOpError listing every unsupported op and its FX nodes."""
    bad: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function":
            if _skip(node) or node.target is operator.getitem:
                continue
            name = _schema_name(node.target)
            if name is not None and name in CONVERTERS:
                continue
            bad.setdefault(_op_label(node.target), []).append(node.name)
        elif node.op in ("call_module", "call_method", "get_attr"):
            bad.setdefault(f"{node.op} {node.target}", []).append(node.name)
    mutated = _mutated_state(ep)
    if not bad and not mutated:
        return
    parts = []
    for op, names in sorted(bad.items()):
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{op} ({shown})")
    message = f"the program uses {len(bad)} unsupported op(s): " + "; ".join(parts) if bad else ""
    if mutated:
        message += "; " if message else ""
        message += (
            f"the program writes {', '.join(mutated)} (einfuse graphs are pure: export in eval mode, without in-place "
            "updates of buffers or inputs)"
        )
    raise UnsupportedOpError(
        message, hint="einfuse converts Core ATen ops; see einfuse/frontends/torch_export.py for the list"
    )


def _mutated_state(ep) -> list[str]:
    """The buffers/inputs the program writes (einfuse graphs are pure functions)."""
    from torch.export.graph_signature import OutputKind

    what = {"BUFFER_MUTATION": "buffer", "PARAMETER_MUTATION": "parameter", "USER_INPUT_MUTATION": "input"}
    return [
        f"{what.get(spec.kind.name, spec.kind.name.lower())} {spec.target or spec.arg.name!r}"
        for spec in ep.graph_signature.output_specs
        if spec.kind != OutputKind.USER_OUTPUT
    ]


def _skip(node) -> bool:
    """Size arithmetic (read from meta) and runtime assertions: nothing to convert."""
    name = _schema_name(node.target) or getattr(node.target, "__name__", "")
    return name in _ASSERT_OPS or _is_symint(node.meta.get("val"))


class _Unconvertible:
    """A size expression einfuse cannot express; an error only if an op really reads it."""

    def __init__(self, error: EinfuseError):
        self.error = error


def import_torch(
    exported_program_or_module,
    example_args=None,
    *,
    dynamic_shapes=None,
    name: str = "main",
    max_const_bytes: int = DEFAULT_MAX_BYTES,
) -> Graph:
    """Imports a torch.export.ExportedProgram, or an nn.Module exported here with
    `example_args` (and `dynamic_shapes`), into a Graph of core ops."""
    import torch

    ep = exported_program_or_module
    if isinstance(ep, torch.nn.Module):
        ep = _export(ep, example_args, dynamic_shapes)
    elif not isinstance(ep, torch.export.ExportedProgram):
        raise ModelLoadError(f"import_torch takes an ExportedProgram or an nn.Module, not {type(ep).__name__}")
    elif example_args is not None or dynamic_shapes is not None:
        raise ModelLoadError("example_args/dynamic_shapes only apply to an nn.Module (the program is exported)")
    # Output names as the caller's program spells them (decomposition renames nodes).
    out_names = [getattr(spec.arg, "name", "") for spec in ep.graph_signature.output_specs]
    ep = ep.run_decompositions(decomposition_table())
    check_supported(ep)

    g = Graph(name)
    symbols = _Symbols()
    ctx = TorchCtx(g, max_const_bytes, symbols)
    _placeholders(ep, ctx)

    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        ctx.node = node
        if _is_symint(node.meta.get("val")):
            try:
                ctx.env[node] = symbols.convert(node.meta["val"].node.expr, ctx.node_label(node))
            except UnsupportedOpError as e:
                ctx.env[node] = _Unconvertible(e)
            continue
        if _skip(node):
            continue
        if node.target is operator.getitem:
            ctx.env[node] = _getitem(ctx, node)
            continue
        fn = CONVERTERS[_schema_name(node.target)]
        args = _bind(node, ctx)
        try:
            out = fn(ctx, node, args)
        except EinfuseError:
            raise
        except Exception as e:  # a converter bug still names the node
            raise EinfuseError(
                f"internal error converting {ctx.node_label(node)}: {type(e).__name__}: {e}",
                hint="please report this with the program",
            ) from e
        ctx.env[node] = _check_against_meta(ctx, node, out)
    ctx.node = None

    _outputs(ep, ctx, out_names)
    g.remove_unused_constants()
    return g


def _placeholders(ep, ctx: TorchCtx) -> None:
    from torch.export.graph_signature import InputKind

    g = ctx.graph
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    shape_env = None
    for node in placeholders:
        val = node.meta.get("val")
        for d in getattr(val, "shape", ()):
            if _is_symint(d):
                shape_env = d.node.shape_env
                break
    # Name the symbols first, walking the user inputs in order, so that a symbol without
    # a Dim name is called after the first input axis it sizes (like the ONNX importer).
    for node in placeholders:
        spec = specs.get(node.name)
        if spec is None or spec.kind != InputKind.USER_INPUT or not _is_tensor(node.meta.get("val")):
            continue
        for k, d in enumerate(node.meta["val"].shape):
            if _is_symint(d):
                for s in sorted(d.node.expr.free_symbols, key=str):
                    ctx.symbols.name(s, shape_env, f"{node.name}_{k}")

    for node in placeholders:
        spec = specs.get(node.name)
        where = f"placeholder {node.name!r}"
        if spec is None:
            raise ModelLoadError(f"{where} is not in the program's graph signature")
        val = node.meta.get("val")
        if spec.kind == InputKind.USER_INPUT and type(spec.arg).__name__ == "ConstantArgument":
            ctx.env[node] = spec.arg.value  # a non-tensor argument baked in by export (None, a flag)
        elif spec.kind == InputKind.USER_INPUT:
            if not _is_tensor(val):
                raise UnsupportedOpError(f"user input {node.name!r} is a {type(val).__name__}, not a tensor")
            dims = tuple(ctx.symbols.convert(_size_expr(d), where) for d in val.shape)
            ctx.env[node] = g.add_input(node.name, TensorType(dims, torch_dtype(val.dtype, where)))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target
            if target in ep.state_dict:
                t = ep.state_dict[target]
            elif target in ep.constants:
                t = ep.constants[target]
            else:
                raise ModelLoadError(f"{where}: no tensor {target!r} in the program's state_dict or constants")
            ctx.env[node] = g.add_constant(g.fresh_name(target), _to_numpy(t, f"{spec.kind.name.lower()} {target!r}"))
        else:
            raise UnsupportedOpError(f"{where} is a {spec.kind.name} input, which einfuse does not support")


def _size_expr(d):
    return d.node.expr if _is_symint(d) else int(d)


def _outputs(ep, ctx: TorchCtx, names: list[str]) -> None:
    from torch.export.graph_signature import OutputKind

    g = ctx.graph
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    flat = list(out_node.args[0]) if isinstance(out_node.args[0], (list, tuple)) else [out_node.args[0]]
    specs = ep.graph_signature.output_specs
    if len(specs) != len(flat):
        raise ModelLoadError(f"the output node returns {len(flat)} values, the signature lists {len(specs)}")
    if len(names) != len(specs):
        names = [getattr(spec.arg, "name", "") for spec in specs]
    for spec, arg, want in zip(specs, flat, names):
        if spec.kind != OutputKind.USER_OUTPUT:
            raise UnsupportedOpError(
                f"output {getattr(spec.arg, 'name', '?')!r} is a {spec.kind.name} "
                "(the program mutates a buffer or an input); export the model in eval mode without in-place updates"
            )
        v = ctx.env.get(arg) if hasattr(arg, "op") else None
        if not isinstance(v, Value):
            raise UnsupportedOpError(f"output {getattr(spec.arg, 'name', arg)!r} is not a tensor ({arg!r})")
        if want and v.name != want and want not in g._names and g.producer(v) is not None:
            g.rename(v, want)
        g.outputs.append(v)


def _bind(node, ctx: TorchCtx) -> dict:
    """The node's arguments by schema name, defaults filled, FX nodes mapped to Values/dims."""
    schema = node.target._schema
    args, kwargs = node.args, node.kwargs
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args) and not a.kwarg_only:
            x = args[i]
        elif a.name in kwargs:
            x = kwargs[a.name]
        elif a.has_default_value():
            x = a.default_value
        else:
            x = None
        out[a.name] = _map(ctx, x)
    return out


def _map(ctx: TorchCtx, x):
    if hasattr(x, "op") and hasattr(x, "target"):  # an FX node
        if x not in ctx.env:
            raise ModelLoadError(f"{ctx.node_label(ctx.node)} reads {x.name!r}, which einfuse did not convert")
        v = ctx.env[x]
        if isinstance(v, _Unconvertible):
            raise v.error
        return v
    if isinstance(x, (list, tuple)):
        return type(x)(_map(ctx, y) for y in x)
    return x


def _getitem(ctx: TorchCtx, node):
    src, i = node.args
    outs = ctx.env.get(src)
    if not isinstance(outs, tuple):
        raise ctx.unsupported(node, f"getitem on {src.name!r}, which has one output")
    v = outs[i]
    if v is None and node.users:
        raise ctx.unsupported(node, f"output {i} of {ctx.node_label(src)} is not supported (only its first is)")
    return v


def _check_against_meta(ctx: TorchCtx, node, out):
    """Checks each converted Value against the FakeTensor torch recorded; casts where only
    the dtype differs (torch's type promotion decides the result dtype)."""
    val = node.meta.get("val")
    if isinstance(out, Value):
        return _check_one(ctx, node, out, val)
    if isinstance(out, tuple) and isinstance(val, (list, tuple)):
        return tuple(None if o is None else _check_one(ctx, node, o, m) for o, m in zip(out, val))
    return out


def _check_one(ctx: TorchCtx, node, v: Value, val) -> Value:
    if not _is_tensor(val):
        return v
    label = ctx.node_label(node)
    want = tuple(ctx.symbols.convert(_size_expr(d), label) for d in val.shape)
    # Provably different only: torch knows facts einfuse does not (S >= 2 makes its x[1:]
    # S - 1 where einfuse says max(0, S - 1)), so equal-but-differently-spelt dims pass.
    if len(want) != v.rank or any(dim_known_ne(a, b) for a, b in zip(v.shape, want)):
        raise ShapeError(f"{label}: einfuse inferred {v.type} but torch says {list(want)} (a converter bug)")
    dt = torch_dtype(val.dtype, label)
    return ctx.cast(v, dt)


# ----------------------------------------------------------------------------- helpers


def _axis(ctx: TorchCtx, d, rank: int) -> int:
    d = ctx.static_int(d, "dim")
    r = max(rank, 1)  # torch lets a 0-d tensor use dim 0 / -1
    if not -r <= d < r:
        raise ctx.error(ctx.node, f"dim {d} is out of range for rank {rank}")
    return d % r


def _axes(ctx: TorchCtx, dims, rank: int) -> tuple:
    if dims is None:
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({_axis(ctx, d, rank) for d in dims}))


def _ints(ctx: TorchCtx, xs, n: int, what: str) -> tuple:
    """A torch int-list parameter (one value repeated, as torch does) of length n."""
    if isinstance(xs, int):
        xs = [xs]
    xs = [ctx.static_int(x, what) for x in xs]
    if len(xs) == 1 and n > 1:
        xs = xs * n
    if len(xs) != n:
        raise ctx.error(ctx.node, f"{what} {xs} should have {n} entries")
    return tuple(xs)


# ----------------------------------------------------------------------------- elementwise

_UNARY = {
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "exp": "exp",
    "log": "log",
    "sqrt": "sqrt",
    "neg": "neg",
    "abs": "abs",
    "erf": "erf",
    "sin": "sin",
    "cos": "cos",
    "floor": "floor",
    "ceil": "ceil",
    "reciprocal": "reciprocal",
    "sign": "sign",
    "logical_not": "not",
}


@converter(*_UNARY)
def _unary(ctx: TorchCtx, node, a):
    op = _UNARY[_schema_name(node.target)]
    dt = ctx.out_dtype()
    x = a["self"]
    if op == "not":
        return ctx.op("not", [ctx.cast(x, DType.bool)])
    return ctx.op(op, [ctx.tensor(x, dt)])


@converter("rsqrt")
def _rsqrt(ctx: TorchCtx, node, a):
    return ctx.op("reciprocal", [ctx.op("sqrt", [ctx.tensor(a["self"], ctx.out_dtype())])])


@converter("log1p", "expm1")
def _log1p(ctx: TorchCtx, node, a):
    # log(1 + x) / exp(x) - 1: absolute error ~1e-7 near 0 in f32, well inside float tolerances
    x = ctx.tensor(a["self"], ctx.out_dtype())
    one = ctx.scalar(1, x.dtype)
    if _schema_name(node.target) == "log1p":
        return ctx.op("log", [ctx.op("add", [x, one])])
    return ctx.op("sub", [ctx.op("exp", [x]), one])


@converter("bitwise_not")
def _bitwise_not(ctx: TorchCtx, node, a):
    x = a["self"]
    return ctx.op("not" if x.dtype == DType.bool else "bitwise_not", [x])


@converter("elu")
def _elu(ctx: TorchCtx, node, a):
    if a.get("scale", 1) != 1 or a.get("input_scale", 1) != 1:
        raise ctx.unsupported(node, "elu with scale or input_scale (selu/celu forms)")
    return ctx.op("elu", [ctx.tensor(a["self"], ctx.out_dtype())], alpha=float(a.get("alpha", 1.0)))


@converter("silu")
def _silu(ctx: TorchCtx, node, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    return ctx.op("mul", [x, ctx.op("sigmoid", [x])])


@converter("leaky_relu")
def _leaky_relu(ctx: TorchCtx, node, a):
    x = ctx.tensor(a["self"], ctx.out_dtype())
    return ctx.op("leaky_relu", [x], alpha=float(a.get("negative_slope", 0.01)))


@converter("gelu")
def _gelu(ctx: TorchCtx, node, a):
    approx = a.get("approximate") or "none"
    if approx not in ("none", "tanh"):
        raise ctx.unsupported(node, f"gelu approximate={approx!r}")
    return ctx.op("gelu", [ctx.tensor(a["self"], ctx.out_dtype())], approximate=approx)


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "maximum": "max", "minimum": "min"}
_COMPARE = {"eq": "equal", "lt": "less", "le": "less_or_equal", "gt": "greater", "ge": "greater_or_equal", "ne": "ne"}
_LOGICAL = {"logical_and": "and", "logical_or": "or", "logical_xor": "xor"}


@converter(*_BINARY, "rsub")
def _binary(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = ctx.out_dtype()
    x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
    alpha = a.get("alpha", 1)
    if alpha is None:
        alpha = 1
    if name == "rsub":  # other - alpha * self
        return ctx.op("sub", [y, _scaled(ctx, x, alpha, dt)])
    if name in ("add", "sub"):
        return ctx.op(name, [x, _scaled(ctx, y, alpha, dt)])
    if name == "div":
        mode = a.get("rounding_mode")
        q = ctx.op("div", [x, y])
        if mode is None:
            return q
        if mode == "floor" and dt.is_float:
            return ctx.op("floor", [q])
        raise ctx.unsupported(node, f"div with rounding_mode={mode!r} on {dt}")
    return ctx.op(_BINARY[name], [x, y])


def _scaled(ctx: TorchCtx, x: Value, alpha, dt: DType) -> Value:
    return x if alpha == 1 else ctx.op("mul", [x, ctx.scalar(alpha, dt)])


def _promoted(ctx: TorchCtx, x, y) -> DType:
    """torch's result dtype of two operands (Values or Python numbers), for comparisons."""
    import torch

    def probe(v):
        if isinstance(v, Value):  # 0-d tensors promote differently from dimensioned ones
            return torch.zeros((1,) * min(v.rank, 1), dtype=_torch_dtype_of(v.dtype))
        return v

    return torch_dtype(torch.result_type(probe(x), probe(y)), ctx.node_label(ctx.node))


def _torch_dtype_of(dt: DType):
    import torch

    for name, d in _DTYPES.items():
        if d == dt:
            return getattr(torch, name)
    raise UnsupportedOpError(f"dtype {dt} has no torch equivalent")


@converter("remainder", "fmod")
def _remainder(ctx: TorchCtx, node, a):
    # remainder takes the divisor's sign (Python's %), fmod the dividend's (C's fmod)
    dt = ctx.out_dtype()
    x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
    return ctx.op("mod", [x, y], fmod=_schema_name(node.target) == "fmod")


@converter(*_COMPARE)
def _compare(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = _promoted(ctx, a["self"], a["other"])
    x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
    if name == "ne":
        return ctx.op("not", [ctx.op("equal", [x, y])])
    return ctx.op(_COMPARE[name], [x, y])


@converter(*_LOGICAL)
def _logical(ctx: TorchCtx, node, a):
    op = _LOGICAL[_schema_name(node.target)]
    return ctx.op(op, [ctx.tensor(a["self"], DType.bool), ctx.tensor(a["other"], DType.bool)])


@converter("pow")
def _pow(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    base = a["self"]
    exp = a["exponent"]
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        if exp == 1:
            return ctx.tensor(base, dt)
        if exp == 2:  # x*x: exact, and what fusion sees as plain elementwise
            x = ctx.tensor(base, dt)
            return ctx.op("mul", [x, x])
        if exp == 0.5:
            return ctx.op("sqrt", [ctx.tensor(base, dt)])
    return ctx.op("pow", [ctx.tensor(base, dt), ctx.tensor(exp, dt)])


@converter("where")
def _where(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    cond = ctx.tensor(a["condition"], DType.bool)
    return ctx.op("where", [cond, ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)])


@converter("clamp", "clamp_min", "clamp_max", "hardtanh")
def _clamp(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = ctx.out_dtype()
    x = ctx.tensor(a["self"], dt)
    if name == "hardtanh":
        lo, hi = a["min_val"], a["max_val"]
    elif name == "clamp_min":
        lo, hi = a["min"], None
    elif name == "clamp_max":
        lo, hi = None, a["max"]
    else:
        lo, hi = a.get("min"), a.get("max")
    if not isinstance(lo, Value) and not isinstance(hi, Value):
        bounds = [None if b is None else ctx.scalar(b, dt) for b in (lo, hi)]
        return ctx.op("clip", [x, *bounds])
    # tensor bounds broadcast: max/min do that, clip's scalar bounds do not
    if lo is not None:
        x = ctx.op("max", [x, ctx.tensor(lo, dt)])
    if hi is not None:
        x = ctx.op("min", [x, ctx.tensor(hi, dt)])
    return x


# ----------------------------------------------------------------------------- identity / dtype


@converter("clone", "alias", "detach", "lift_fresh_copy", "contiguous", "dropout")
def _identity(ctx: TorchCtx, node, a):
    if _schema_name(node.target) == "dropout" and a.get("train"):
        raise ctx.unsupported(node, "dropout in training mode (export the model in eval mode)")
    return a["input"] if "input" in a else a["self"]


@converter("_to_copy", "to", "type_as")
def _to_copy(ctx: TorchCtx, node, a):
    return ctx.cast(a["self"], ctx.out_dtype())


# ----------------------------------------------------------------------------- linear algebra


@converter("mm", "bmm", "matmul")
def _matmul(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    return ctx.op("matmul", [ctx.tensor(a["self"], dt), ctx.tensor(a[_second(a)], dt)])


def _second(a: dict) -> str:
    return "mat2" if "mat2" in a else "other"


@converter("addmm")
def _addmm(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    m1, m2, bias = (ctx.tensor(a[k], dt) for k in ("mat1", "mat2", "self"))
    return ctx.op("gemm", [m1, m2, bias], alpha=float(a.get("alpha", 1)), beta=float(a.get("beta", 1)))


@converter("linear")
def _linear(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    x, w = ctx.tensor(a["input"], dt), ctx.tensor(a["weight"], dt)
    if w.rank != 2:
        raise ctx.error(node, f"linear weight must be 2-D, got {w.type}")
    weight = ctx.graph.const_value(w)
    if weight is not None:  # a weight: store it transposed once, under its own name
        wt = ctx.const(np.ascontiguousarray(weight.T), f"{w.name}.T")
    else:
        wt = ctx.op("transpose", [w], perm=(1, 0))
    y = ctx.op("matmul", [x, wt])
    if a.get("bias") is not None:
        y = ctx.op("add", [y, ctx.tensor(a["bias"], dt)])
    return y


@converter("convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d")
def _convolution(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = ctx.out_dtype()
    x, w = ctx.tensor(a["input"], dt), ctx.tensor(a["weight"], dt)
    bias = a.get("bias")
    bias = None if bias is None else ctx.tensor(bias, dt)
    n = w.rank - 2
    transposed = a.get("transposed", name.startswith("conv_transpose"))
    if any(not isinstance(d, int) for d in w.shape):
        raise ctx.unsupported(node, "the weight has a symbolic shape")
    padding = a.get("padding", 0)
    if isinstance(padding, str):
        raise ctx.unsupported(node, f"padding={padding!r} (string padding is decomposed by Core ATen)")
    strides = _ints(ctx, a.get("stride", 1), n, "stride")
    pads = _ints(ctx, padding, n, "padding")
    dilations = _ints(ctx, a.get("dilation", 1), n, "dilation")
    group = ctx.static_int(a.get("groups", 1), "groups")
    attrs = {
        "kernel_shape": tuple(w.shape[2:]),
        "strides": strides,
        "pads": pads + pads,
        "dilations": dilations,
        "group": group,
    }
    if transposed:
        out_pad = _ints(ctx, a.get("output_padding", 0), n, "output_padding")
        return ctx.op("conv_transpose", [x, w, bias], output_padding=out_pad, **attrs)
    return ctx.op("conv", [x, w, bias], **attrs)


# ----------------------------------------------------------------------------- normalisation


@converter("_softmax", "softmax", "_log_softmax", "log_softmax")
def _softmax(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    if a.get("half_to_float"):
        raise ctx.unsupported(node, "half_to_float=True (a CUDA-only variant)")
    x = a["self"]
    dt = ctx.out_dtype()
    op = "log_softmax" if "log" in name else "softmax"
    return ctx.op(op, [ctx.cast(x, dt)], axis=_axis(ctx, a["dim"], x.rank))


@converter("native_layer_norm", "layer_norm")
def _layer_norm(ctx: TorchCtx, node, a):
    x = a["input"]
    multi = _schema_name(node.target) == "native_layer_norm"
    dt = ctx.out_dtype(0 if multi else None)
    k = len(a["normalized_shape"])
    norm_shape = tuple(x.shape[x.rank - k :])
    if not all(isinstance(d, int) for d in norm_shape):
        raise ctx.unsupported(node, f"normalized shape {list(norm_shape)} is symbolic")
    w, b = a.get("weight"), a.get("bias")
    w = ctx.const(np.ones(norm_shape, dt.np), "ln_ones") if w is None else ctx.tensor(w, dt)
    inputs = [ctx.cast(x, dt), w] + ([] if b is None else [ctx.tensor(b, dt)])
    stash = DType.f64 if dt == DType.f64 else DType.f32
    y = ctx.op("layer_norm", inputs, axis=x.rank - k, epsilon=float(a["eps"]), stash_type=stash)
    return (y, None, None) if multi else y


@converter("_native_batch_norm_legit_no_training", "native_batch_norm", "batch_norm", "_native_batch_norm_legit")
def _batch_norm(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    if a.get("training"):
        raise ctx.unsupported(node, "batch norm in training mode (export the model in eval mode)")
    if a.get("running_mean") is None or a.get("running_var") is None:
        raise ctx.unsupported(node, "batch norm without running statistics")
    multi = name != "batch_norm"
    dt = ctx.out_dtype(0 if multi else None)
    x = ctx.cast(a["input"], dt)
    c = x.shape[1]
    if not isinstance(c, int):
        raise ctx.unsupported(node, "the channel dim is symbolic")
    w, b = a.get("weight"), a.get("bias")
    w = ctx.const(np.ones((c,), dt.np), "bn_ones") if w is None else ctx.tensor(w, dt)
    b = ctx.const(np.zeros((c,), dt.np), "bn_zeros") if b is None else ctx.tensor(b, dt)
    mean, var = ctx.tensor(a["running_mean"], dt), ctx.tensor(a["running_var"], dt)
    y = ctx.op("batch_norm", [x, w, b, mean, var], epsilon=float(a["eps"]))
    return (y, None, None) if multi else y


@converter("native_group_norm", "group_norm")
def _group_norm(ctx: TorchCtx, node, a):
    multi = _schema_name(node.target) == "native_group_norm"
    dt = ctx.out_dtype(0 if multi else None)
    x = ctx.cast(a["input"], dt)
    c = x.shape[1]
    if not isinstance(c, int):
        raise ctx.unsupported(node, "the channel dim is symbolic")
    groups = ctx.static_int(a["group"] if multi else a["num_groups"], "groups")
    w, b = a.get("weight"), a.get("bias")
    w = ctx.const(np.ones((c,), dt.np), "gn_ones") if w is None else ctx.tensor(w, dt)
    b = ctx.const(np.zeros((c,), dt.np), "gn_zeros") if b is None else ctx.tensor(b, dt)
    y = ctx.op("group_norm", [x, w, b], num_groups=groups, epsilon=float(a["eps"]))
    return (y, None, None) if multi else y


# ----------------------------------------------------------------------------- pooling


@converter("max_pool2d_with_indices", "max_pool2d", "max_pool1d", "max_pool3d", "max_pool3d_with_indices")
def _max_pool(ctx: TorchCtx, node, a):
    x = a["self"]
    name = _schema_name(node.target)
    n = int(name[8])  # max_pool{n}d
    attrs = _pool_attrs(ctx, a, n)
    y = ctx.op("max_pool", [x], dilations=_ints(ctx, a.get("dilation", 1), n, "dilation"), **attrs)
    return (y, None) if name.endswith("with_indices") else y


def _pool_attrs(ctx: TorchCtx, a: dict, n: int) -> dict:
    kernel = _ints(ctx, a["kernel_size"], n, "kernel_size")
    stride = a.get("stride") or kernel  # torch: an empty stride means the kernel size
    pads = _ints(ctx, a.get("padding", 0), n, "padding")
    return {
        "kernel_shape": kernel,
        "strides": _ints(ctx, stride, n, "stride"),
        "pads": pads + pads,
        "ceil_mode": bool(a.get("ceil_mode", False)),
    }


@converter("avg_pool2d", "avg_pool1d", "avg_pool3d")
def _avg_pool(ctx: TorchCtx, node, a):
    if a.get("divisor_override") is not None:
        raise ctx.unsupported(node, "avg_pool with divisor_override")
    n = int(_schema_name(node.target)[8])
    attrs = _pool_attrs(ctx, a, n)
    return ctx.op("average_pool", [a["self"]], count_include_pad=bool(a.get("count_include_pad", True)), **attrs)


@converter("_adaptive_avg_pool2d", "adaptive_avg_pool2d")
def _adaptive_avg_pool(ctx: TorchCtx, node, a):
    x = a["self"]
    out = _ints(ctx, a["output_size"], 2, "output_size")
    if out == (1, 1):
        return ctx.op("global_average_pool", [x])
    spatial = x.shape[-2:]
    if all(isinstance(d, int) and d % o == 0 for d, o in zip(spatial, out)):
        # even bins: a plain average pool with kernel = stride = in / out
        k = tuple(d // o for d, o in zip(spatial, out))
        return ctx.op("average_pool", [x], kernel_shape=k, strides=k, pads=(0, 0, 0, 0))
    raise ctx.unsupported(node, f"adaptive_avg_pool2d from {list(spatial)} to {list(out)} (uneven bins)")


# ----------------------------------------------------------------------------- reductions

_REDUCE = {"mean": "reduce_mean", "sum": "reduce_sum", "amax": "reduce_max", "amin": "reduce_min"}


@converter(*_REDUCE)
def _reduce(ctx: TorchCtx, node, a):
    op = _REDUCE[_schema_name(node.target)]
    dt = ctx.out_dtype()
    x = ctx.cast(a["self"], dt)  # sum of bools/ints is i64 in torch: accumulate in that
    dims = a.get("dim")
    axes = _axes(ctx, None if dims in (None, [], ()) else dims, x.rank)
    if x.rank == 0:
        return x
    return ctx.op(op, [x], axes=axes, keepdims=bool(a.get("keepdim", False)))


@converter("argmax", "argmin")
def _argmax(ctx: TorchCtx, node, a):
    x = a["self"]
    op = _schema_name(node.target)
    if a.get("dim") is None:  # over the flattened tensor
        x = ctx.op("reshape", [x], shape=(-1,))
        y = ctx.op(op, [x], axis=0, keepdims=False)
        if a.get("keepdim"):
            y = ctx.op("reshape", [y], shape=(1,) * a["self"].rank)
        return y
    return ctx.op(op, [x], axis=_axis(ctx, a["dim"], x.rank), keepdims=bool(a.get("keepdim", False)))


@converter("max", "min")
def _max_dim(ctx: TorchCtx, node, a):
    x = a["self"]
    name = _schema_name(node.target)
    if "other" in a:  # max.other: elementwise, like maximum
        dt = ctx.out_dtype()
        return ctx.op(name, [ctx.tensor(x, dt), ctx.tensor(a["other"], dt)])
    keep = bool(a.get("keepdim", False))
    if "dim" not in a:  # max.default: the whole tensor
        return ctx.op(f"reduce_{name}", [x], axes=tuple(range(x.rank)), keepdims=False)
    axis = _axis(ctx, a["dim"], x.rank)
    values = ctx.op(f"reduce_{name}", [x], axes=(axis,), keepdims=keep)
    indices = ctx.op(f"arg{name}", [x], axis=axis, keepdims=keep)
    return (values, indices)


@converter("var", "var_mean")
def _var(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = ctx.out_dtype(0 if name == "var_mean" else None)
    x = ctx.cast(a["self"], dt)
    dims = a.get("dim")
    axes = _axes(ctx, None if dims in (None, [], ()) else dims, x.rank)
    count = 1
    for i in axes:
        count *= x.shape[i]
    if not isinstance(count, int):
        raise ctx.unsupported(node, f"variance over symbolic dims ({count} elements)")
    correction = a.get("correction")
    correction = 1 if correction is None else correction  # torch's default is Bessel's correction
    keep = bool(a.get("keepdim", False))
    mean = ctx.op("reduce_mean", [x], axes=axes, keepdims=True)
    d = ctx.op("sub", [x, mean])
    ss = ctx.op("reduce_sum", [ctx.op("mul", [d, d])], axes=axes, keepdims=keep)
    var = ctx.op("div", [ss, ctx.scalar(max(count - correction, 0), dt)])
    if name == "var":
        return var
    return (var, mean if keep else ctx.op("squeeze", [mean], axes=axes))


@converter("cumsum")
def _cumsum(ctx: TorchCtx, node, a):
    x = ctx.cast(a["self"], ctx.out_dtype())
    return ctx.op("cumsum", [x], axis=_axis(ctx, a["dim"], x.rank))


# ----------------------------------------------------------------------------- shapes


@converter("view", "reshape", "_unsafe_view", "_reshape_alias")
def _view(ctx: TorchCtx, node, a):
    x = a["self"]
    size = [ctx.dim(d, "size") for d in (a["size"] if "size" in a else a["shape"])]
    return ctx.op("reshape", [x], shape=_reshape_target(ctx, x.shape, size))


def _reshape_target(ctx: TorchCtx, in_shape: tuple, size: list) -> tuple:
    """torch's view sizes (ints, -1, symbolic dims) as reshape's int target: a symbolic
    size is spelt 0 (copy the input dim) when it equals the input dim at that place, or -1
    when it is the only one left."""
    target: list = []
    for i, d in enumerate(size):
        if isinstance(d, int):
            if d == 0:
                raise ctx.unsupported(ctx.node, "a view with a zero-sized dim")
            target.append(d)
        elif i < len(in_shape) and dims_equal(in_shape[i], d):
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1:
        raise ctx.unsupported(ctx.node, f"view to {size}: more than one size is symbolic and not an input dim")
    return tuple(target)


@converter("permute")
def _permute(ctx: TorchCtx, node, a):
    x = a["self"]
    perm = tuple(_axis(ctx, d, x.rank) for d in a["dims"])
    return ctx.op("transpose", [x], perm=perm)


@converter("transpose")
def _transpose(ctx: TorchCtx, node, a):
    x = a["self"]
    if x.rank < 2:
        return x
    i, j = _axis(ctx, a["dim0"], x.rank), _axis(ctx, a["dim1"], x.rank)
    perm = list(range(x.rank))
    perm[i], perm[j] = perm[j], perm[i]
    return ctx.op("transpose", [x], perm=tuple(perm))


@converter("t")
def _t(ctx: TorchCtx, node, a):
    x = a["self"]
    return x if x.rank < 2 else ctx.op("transpose", [x], perm=(1, 0))


@converter("unsqueeze")
def _unsqueeze(ctx: TorchCtx, node, a):
    x = a["self"]
    return ctx.op("unsqueeze", [x], axes=(_axis(ctx, a["dim"], x.rank + 1),))


@converter("squeeze")
def _squeeze(ctx: TorchCtx, node, a):
    x = a["self"]
    dims = a.get("dim", a.get("dims"))
    candidates = _axes(ctx, dims, x.rank) if dims is not None else tuple(range(x.rank))
    # torch leaves a dim that is not 1 alone instead of failing
    axes = tuple(i for i in candidates if isinstance(x.shape[i], int) and x.shape[i] == 1)
    return ctx.op("squeeze", [x], axes=axes) if axes else x


@converter("expand")
def _expand(ctx: TorchCtx, node, a):
    x = a["self"]
    size = [ctx.dim(d, "size") for d in a["size"]]
    lead = len(size) - x.rank
    if lead < 0:
        raise ctx.error(node, f"cannot expand {x.type} to {size}")
    target = []
    for i, d in enumerate(size):
        src = x.shape[i - lead] if i >= lead else None
        if src is not None and (d == -1 or dims_equal(src, d)):
            target.append(1)  # expand's both-ways broadcast keeps the input dim
        elif isinstance(d, int) and d >= 0:
            target.append(d)
        else:
            raise ctx.unsupported(node, f"expand to the symbolic size {d} (dim {i}) from {x.type}")
    return ctx.op("expand", [x], shape=tuple(target))


@converter("cat", "concat")
def _cat(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    xs = [ctx.tensor(t, dt) for t in a["tensors"]]
    # torch still accepts (and skips) legacy empty 1-D tensors next to N-D ones
    rank = max(x.rank for x in xs)
    xs = [x for x in xs if not (x.rank == 1 and rank > 1 and x.shape == (0,))]
    if len(xs) == 1:
        return xs[0]
    return ctx.op("concat", xs, axis=_axis(ctx, a["dim"], rank))


_INT64_MAX = 2**63 - 1


@converter("slice")
def _slice(ctx: TorchCtx, node, a):
    x = a["self"]
    axis = _axis(ctx, a.get("dim", 0), x.rank)
    start, end, step = a.get("start"), a.get("end"), a.get("step", 1)
    start = 0 if start is None else ctx.dim(start, "start")
    end = _INT64_MAX if end is None else ctx.dim(end, "end")
    if not isinstance(end, int) and dims_equal(end, x.shape[axis]):
        end = _INT64_MAX  # x[:, :S] with S the dim's own (symbolic) size
    if not isinstance(start, int) or not isinstance(end, int):
        raise ctx.unsupported(node, f"slice bounds [{start}:{end}] are symbolic")
    step = ctx.static_int(step, "step")
    if start == 0 and end >= _INT64_MAX and step == 1:
        return x
    return ctx.op("slice", [x], starts=(start,), ends=(end,), axes=(axis,), steps=(step,))


@converter("split_with_sizes", "split")
def _split(ctx: TorchCtx, node, a):
    x = a["self"]
    axis = _axis(ctx, a.get("dim", 0), x.rank)
    if "split_sizes" in a:
        sizes = [ctx.static_int(d, "split size") for d in a["split_sizes"]]
    else:
        # equal chunks of split_size, the last one shorter: torch's sizes are in the meta
        sizes = []
        for t in ctx.meta():
            size = ctx.symbols.convert(_size_expr(t.shape[axis]), ctx.node_label(node))
            sizes.append(ctx.static_int(size, "split size"))
    outs = ctx.op("split", [x], axis=axis, split=tuple(sizes))
    return outs if isinstance(outs, tuple) else (outs,)


@converter("constant_pad_nd")
def _constant_pad(ctx: TorchCtx, node, a):
    x = a["self"]
    pad = [ctx.static_int(p, "pad") for p in a["pad"]]
    if len(pad) % 2 or len(pad) // 2 > x.rank:
        raise ctx.error(node, f"pad {pad} does not fit a rank-{x.rank} tensor")
    begins, ends = [0] * x.rank, [0] * x.rank
    # torch lists (before, after) pairs from the LAST dim backwards; negative pads crop
    for i in range(len(pad) // 2):
        begins[x.rank - 1 - i], ends[x.rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    value = a.get("value", 0)
    if isinstance(value, Value):
        raise ctx.unsupported(node, "a pad value computed at run time")
    return ctx.op("pad", [x], pads=tuple(begins + ends), mode="constant", value=float(value))


@converter("index")
def _index(ctx: TorchCtx, node, a):
    x = a["self"]
    given = [(i, t) for i, t in enumerate(a["indices"]) if t is not None]
    if len(given) != 1:
        raise ctx.unsupported(node, f"indexing with {len(given)} index tensors (einfuse takes one)")
    axis, index = given[0]
    if index.dtype == DType.bool:
        raise ctx.unsupported(node, "indexing with a boolean mask (a data-dependent shape)")
    return ctx.op("gather", [x, index], axis=axis)


@converter("upsample_nearest2d", "upsample_bilinear2d")
def _upsample(ctx: TorchCtx, node, a):
    x = a["input"] if "input" in a else a["self"]
    nearest = _schema_name(node.target) == "upsample_nearest2d"
    out = [ctx.symbols.convert(_size_expr(d), ctx.node_label(node)) for d in ctx.meta().shape[2:]]
    factors = a.get("scale_factors")
    if factors is None and a.get("scales_h") is not None:
        factors = [a["scales_h"], a["scales_w"]]
    if factors is None:  # an output size: scale = out / in, exact enough for the integer ratios used
        if not all(isinstance(d, int) for d in (*x.shape[2:], *out)):
            raise ctx.unsupported(node, "resizing symbolic spatial dims to a fixed size")
        factors = [o / i for o, i in zip(out, x.shape[2:])]
    scales = (1.0, 1.0) + tuple(float(f) for f in factors)
    if nearest:  # torch: src = floor(dst / scale)
        return ctx.op(
            "resize",
            [x],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
            scales=scales,
        )
    mode = "align_corners" if a.get("align_corners") else "pytorch_half_pixel"
    return ctx.op("resize", [x], mode="linear", coordinate_transformation_mode=mode, scales=scales)


@converter("select")
def _select(ctx: TorchCtx, node, a):
    x = a["self"]
    axis = _axis(ctx, a["dim"], x.rank)
    index = ctx.static_int(a["index"], "index")
    return ctx.op("gather", [x, ctx.const(np.asarray(index, np.int64), "index")], axis=axis)


@converter("index_select")
def _index_select(ctx: TorchCtx, node, a):
    x = a["self"]
    return ctx.op("gather", [x, a["index"]], axis=_axis(ctx, a["dim"], x.rank))


@converter("embedding")
def _embedding(ctx: TorchCtx, node, a):
    # padding_idx only matters for gradients; max_norm is not in the aten op
    return ctx.op("gather", [a["weight"], a["indices"]], axis=0)


# ----------------------------------------------------------------------------- factories


@converter("full", "zeros", "ones", "scalar_tensor", "empty", "full_like", "zeros_like", "ones_like")
def _full(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    dt = ctx.out_dtype()
    if name == "scalar_tensor":
        return ctx.scalar(a["s"], dt)
    if name.endswith("_like"):
        shape = a["self"].shape
    else:
        shape = tuple(ctx.dim(d, "size") for d in a["size"])
    if not all(isinstance(d, int) for d in shape):
        raise ctx.unsupported(node, f"{name} with the symbolic shape {list(shape)}")
    fill = {"zeros": 0, "ones": 1, "empty": 0, "zeros_like": 0, "ones_like": 1}.get(name)
    if fill is None:
        fill = a["fill_value"]
        if isinstance(fill, Value):
            raise ctx.unsupported(node, "a fill value computed at run time")
    return ctx.const(np.full(shape, fill, dt.np), name)


@converter("arange")
def _arange(ctx: TorchCtx, node, a):
    dt = ctx.out_dtype()
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    vals = []
    for what, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, (Value, sympy.Basic)):
            raise ctx.unsupported(node, f"arange with a {what} computed at run time ({v})")
        vals.append(v)
    return ctx.const(np.arange(*vals).astype(dt.np), "arange")


# ----------------------------------------------------------------------------- attention


@converter(*SDPA_OPS)
def _sdpa(ctx: TorchCtx, node, a):
    name = _schema_name(node.target)
    q, k, v = a["query"], a["key"], a["value"]
    dt = ctx.out_dtype(0 if name != "scaled_dot_product_attention" else None)
    if float(a.get("dropout_p") or 0.0) != 0.0:
        raise ctx.unsupported(node, f"scaled_dot_product_attention with dropout_p={a['dropout_p']} (must be 0)")
    if not (q.rank == k.rank == v.rank) or q.rank not in (3, 4):
        raise ctx.unsupported(node, f"attention on ranks {q.rank}/{k.rank}/{v.rank} (einfuse takes 4-D, or 3-D)")
    three_d = q.rank == 3
    if three_d:  # (N, S, D) is one head of batch N: add the head axis
        q, k, v = (ctx.op("unsqueeze", [t], axes=(1,)) for t in (q, k, v))
    d = q.shape[-1]
    scale = a.get("scale")
    if scale is None:
        if not isinstance(d, int):
            raise ctx.unsupported(node, f"the head size {d} is symbolic and no scale is given")
        scale = 1.0 / math.sqrt(d)
    hq, hkv = q.shape[1], k.shape[1]
    if not a.get("enable_gqa", False) and not dims_equal(hq, hkv):
        raise ctx.error(node, f"{hq} query heads but {hkv} key/value heads, and enable_gqa is not set")
    inputs = [ctx.cast(q, dt), ctx.cast(k, dt), ctx.cast(v, dt)]
    mask = a.get("attn_mask")
    if mask is not None:
        if a.get("is_causal"):
            raise ctx.error(node, "attn_mask and is_causal cannot both be given (torch refuses it too)")
        mask = ctx.tensor(mask)
        if mask.dtype != DType.bool:
            mask = ctx.cast(mask, dt)
        if three_d and mask.rank == 3:
            mask = ctx.op("unsqueeze", [mask], axes=(1,))
        inputs.append(mask)
    precision = DType.f64 if dt == DType.f64 else DType.f32
    y = ctx.op(
        "attention", inputs, scale=float(scale), is_causal=bool(a.get("is_causal", False)), softmax_precision=precision
    )
    if three_d:
        y = ctx.op("squeeze", [y], axes=(1,))
    return y if name == "scaled_dot_product_attention" else (y,) + (None,) * (len(ctx.meta()) - 1)
