"""Region -> one TE/TIR PrimFunc.

`lower_region(node, target, dims)` turns a `fused` node's region into a PrimFunc whose
parameters are, in order:

    operands (region inputs) | constant parameters | outputs (region outputs)

Constant parameters are the region's constants with more than `printer.LITERAL_LIMIT`
elements (weights: the runtime feeds them, so the region text with those constants
elided is a sound cache key), then any arrays an emitter derived from constants with
`ctx.add_const_param` (pre-packed weights). Smaller constants are baked into the code.

Nodes whose operands are all constants are evaluated here, with the numpy reference, and
their results used as constants (scalars baked in, arrays as derived parameters): code
for them would compute a constant at run time, and TVM's simplifier takes minutes, or
never finishes, on transcendental chains over the select chain a baked array becomes
(softplus(softplus(constant)), one_hot of constant indices then elu).

Shapes are static: symbols bind from `dims` ({"B": 1, "S": 128}); a dim that stays
symbolic is a LoweringError. Every TE name comes from op names and counters
(`EmitCtx.name`, "in0", "c0"), never from model-supplied value names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from einfuse.codegen.backend import LoweringError
from einfuse.codegen.tvm.emit import EMITTERS, EmitCtx, GroupInfo
from einfuse.ir.graph import Node, Value
from einfuse.ir.ops import NORMALIZE, OUT_FUSABLE, REDUCE, get_op
from einfuse.ir.printer import LITERAL_LIMIT
from einfuse.ir.types import DType, TensorType

# einfuse dtype -> TVM dtype string. float8 and bfloat16 are left out, so regions using
# them run on the reference backend: TVM has no CPU arithmetic for float8, and the
# emitters have no tested bfloat16 arithmetic. The exception: ops in BF16_OPS, whose
# kernels take bfloat16 buffers and compute in f32 themselves (regions of only those).
_TVM_DTYPES = {
    DType.f64: "float64",
    DType.f32: "float32",
    DType.f16: "float16",
    DType.i64: "int64",
    DType.i32: "int32",
    DType.i16: "int16",
    DType.i8: "int8",
    DType.u64: "uint64",
    DType.u32: "uint32",
    DType.u16: "uint16",
    DType.u8: "uint8",
    DType.bool: "bool",
}
BF16_OPS = frozenset({"einsum_cascade"})


def tvm_dtype(dt) -> str:
    """The TVM dtype string of an einfuse DType or numpy dtype (LoweringError if none)."""
    if not isinstance(dt, DType):
        try:
            dt = DType.from_numpy(dt)
        except TypeError:
            raise LoweringError(f"dtype {dt} has no TVM lowering") from None
    try:
        return _TVM_DTYPES[dt]
    except KeyError:
        raise LoweringError(f"dtype {dt} has no TVM lowering") from None


def static_shape(t: TensorType, dims: dict | None) -> tuple[int, ...]:
    """t's shape with symbols bound from `dims` (symbol name -> int)."""
    out = []
    for d in t.shape:
        if isinstance(d, int):
            out.append(d)
            continue
        subs = {s: int(dims[s.name]) for s in d.free_symbols if dims and s.name in dims}
        v = sympy.sympify(d).subs(subs)
        if not v.is_Integer:
            missing = sorted(s.name for s in d.free_symbols if not dims or s.name not in dims)
            raise LoweringError(
                f"dim {d} of {t} is symbolic; the TVM backend needs static shapes",
                hint=f"bind {', '.join(missing)} with dims={{...}}" if missing else None,
            )
        out.append(int(v))
    return tuple(out)


@dataclass
class ParamPlan:
    """What the PrimFunc's parameters are, in order."""

    num_operands: int
    # Constant parameters after the operands: (name, array). Names of region constants
    # are their region names; derived arrays (pre-packed weights) are named "param:<k>".
    consts: list = field(default_factory=list)
    num_outputs: int = 0
    # TVM dtype strings and static shapes of every parameter (operands, consts, outputs).
    dtypes: list = field(default_factory=list)
    shapes: list = field(default_factory=list)
    # Operand index -> layout steps (runtime/executable.apply_prepack): the kernel takes
    # that weight operand pre-packed (Kernel.meta["prepack"]).
    prepack: dict = field(default_factory=dict)

    @property
    def const_names(self) -> list[str]:
        return [name for name, _ in self.consts]


def _const_tensor(ctx: EmitCtx, arr: np.ndarray):
    """A small constant baked into the code: a compute stage the schedulers inline."""
    import tvm
    from tvm import te

    dtype = tvm_dtype(arr.dtype)
    shape = tuple(int(s) for s in arr.shape)
    flat = [_scalar(v, dtype) for v in np.asarray(arr).reshape(-1).tolist()]
    name = ctx.name("const")
    if len(flat) == 1:
        return te.compute(shape, lambda *i: flat[0], name=name)
    if len(flat) == 0:
        return te.compute(shape, lambda *i: tvm.tirx.const(0, dtype), name=name)
    strides = [int(np.prod(shape[k + 1 :], dtype=np.int64)) for k in range(len(shape))]

    def body(*idx):
        pos = idx[0] * strides[0]
        for i, s in zip(idx[1:], strides[1:]):
            pos = pos + i * s
        out = flat[-1]
        for k in range(len(flat) - 2, -1, -1):
            out = tvm.tirx.Select(pos == k, flat[k], out)
        return out

    return te.compute(shape, body, name=name)


def _scalar(v, dtype: str):
    import tvm

    if dtype == "bool":
        return tvm.tirx.const(bool(v), "bool")
    if dtype.startswith(("int", "uint")):
        return tvm.tirx.const(int(v), dtype)
    return tvm.tirx.const(float(v), dtype)


def _used_values(region) -> set[int]:
    used = {id(v) for n in region.nodes for v in n.inputs if v is not None}
    return used | {id(v) for v in region.outputs}


def _new_stages(outs, known: set[str]) -> list:
    """Compute ops reachable from `outs` that are not in `known` (their names)."""
    from tvm import te

    found = []
    stack = list(outs)
    seen = set(known)
    while stack:
        t = stack.pop()
        op = t.op
        if op.name in seen:
            continue
        seen.add(op.name)
        if isinstance(op, te.PlaceholderOp):
            continue
        found.append(op)
        stack.extend(op.input_tensors)
    return found


def _reachable_placeholders(outs) -> set[str]:
    from tvm import te

    names: set[str] = set()
    seen: set[str] = set()
    stack = list(outs)
    while stack:
        t = stack.pop()
        if t.op.name in seen:
            continue
        seen.add(t.op.name)
        if isinstance(t.op, te.PlaceholderOp):
            names.add(t.op.name)
        else:
            stack.extend(t.op.input_tensors)
    return names


_ANCHOR_FAMILIES = {"out_fusable": OUT_FUSABLE, "reduce": REDUCE, "normalize": NORMALIZE}


def lower_region(node: Node, target=None, dims: dict | None = None):
    """Lowers a fused node's region: returns (PrimFunc, GroupInfo, ParamPlan)."""
    try:
        return _lower(node, target, dims, allow_prepack=True)
    except _PrepackConflict:
        # A pre-packed weight is also read unpacked inside the region: pack in-kernel.
        return _lower(node, target, dims, allow_prepack=False)


class _PrepackConflict(Exception):
    pass


def _lower(node: Node, target, dims: dict | None, allow_prepack: bool):
    from tvm import te

    from einfuse.codegen.tvm import ops_elementwise, ops_injective, ops_reduce  # noqa: F401  (register emitters)
    from einfuse.codegen.tvm.target import num_threads

    region = node.attrs["region"]
    kind = str(node.attrs.get("kind", "opaque"))
    dims = {str(k): int(v) for k, v in (dims or {}).items()}
    bf16 = bool(region.nodes) and all(n.op in BF16_OPS for n in region.nodes)
    ctx = EmitCtx(target=target, dims=dims)
    env: dict[int, object] = {}

    def shape_of(v: Value) -> tuple[int, ...]:
        try:
            return static_shape(v.type, dims)
        except LoweringError as e:
            raise LoweringError(f"{node.label}: value %{v.name}: {e.message}", hint=e.hint) from None

    operands = []
    for i, v in enumerate(region.inputs):
        t = te.placeholder(shape_of(v), _dtype_for(node, v, bf16), name=f"in{i}")
        env[id(v)] = t
        operands.append(t)

    used = _used_values(region)
    const_params: list = []
    for name, (v, arr) in region.constants.items():
        if id(v) not in used:
            continue
        if arr.size > LITERAL_LIMIT:
            t = te.placeholder(tuple(int(s) for s in arr.shape), _dtype_for(node, v, bf16), name=f"c{len(const_params)}")
            const_params.append((name, t, arr))
        else:
            _dtype_for(node, v, bf16)
            t = _const_tensor(ctx, arr)
            ctx.stages[t.op.name] = "const"
        ctx.const_arrays[t.op.name] = arr
        env[id(v)] = t

    # Emitters of dense kernels ask for weight operands in a packed layout; when the fused
    # node's operand is a graph constant the runtime packs it once, ahead of time.
    packed: dict[int, object] = {}
    prepack: dict[int, list] = {}

    def prepack_operand(t, steps, shape, dtype):
        if not allow_prepack:
            return None
        index = next((i for i, o in enumerate(operands) if o.op.name == t.op.name), None)
        outer = node.inputs[index] if index is not None and index < len(node.inputs) else None
        if outer is None or not outer.is_const:
            return None
        spec = [list(step) for step in steps]
        shape = tuple(int(d) for d in shape)
        if index in packed:
            p = packed[index]
            same = prepack[index] == spec and tuple(int(d) for d in p.shape) == shape and str(p.dtype) == dtype
            return p if same else None
        p = te.placeholder(shape, dtype, name=f"in{index}_packed")
        packed[index], prepack[index] = p, spec
        return p

    ctx.prepack_operand = prepack_operand

    known = {t.op.name for t in env.values()}
    anchor = anchor_op = None
    anchor_family = _ANCHOR_FAMILIES.get(kind)
    # Values known at compile time: the region's constants, then the results of nodes
    # computed from them alone.
    folded: dict[int, np.ndarray] = {id(v): arr for v, arr in region.constants.values()}
    for n in region.nodes:
        results = _fold(n, folded)
        if results is not None:
            for o, arr in zip(n.outputs, results):
                folded[id(o)] = arr
                t = _const_tensor(ctx, arr) if arr.size <= 1 else ctx.add_const_param(arr, hint="folded")
                ctx.stages.setdefault(t.op.name, "const")
                known.add(t.op.name)
                env[id(o)] = t
            continue
        fn = EMITTERS.get(n.op)
        if fn is None:
            raise LoweringError(f"{n.label}: the TVM backend has no lowering for op {n.op!r}")
        args = []
        for x in n.inputs:
            if x is None:
                args.append(None)
                continue
            try:
                args.append(env[id(x)])
            except KeyError:
                raise LoweringError(f"{n.label}: operand %{x.name} is not defined before it") from None
        for o in n.outputs:
            _dtype_for(n, o, bf16)
        try:
            outs = fn(ctx, n, *args)
        except LoweringError as e:
            if e.message.startswith(n.label):
                raise
            raise LoweringError(f"{n.label}: {e.message}", hint=e.hint) from None
        if len(outs) != len(n.outputs):
            raise LoweringError(f"{n.label}: the TVM emitter gave {len(outs)} results for {len(n.outputs)} outputs")
        for o, t in zip(n.outputs, outs):
            want = shape_of(o)
            got = tuple(int(s) for s in t.shape)
            if got != want or str(t.dtype) != _dtype_for(n, o, bf16):
                raise LoweringError(
                    f"{n.label}: the TVM emitter produced {t.dtype}{list(got)} for output %{o.name} of type {o.type}"
                )
            env[id(o)] = t
        for op in _new_stages(outs, known):
            ctx.stages.setdefault(op.name, n.op)
            known.add(op.name)
        if anchor is None and anchor_family is not None and get_op(n.op).family == anchor_family:
            anchor, anchor_op = outs[0].op.name, n.op

    outputs = []
    for k, v in enumerate(region.outputs):
        t = env.get(id(v))
        if t is None:
            raise LoweringError(f"{node.label}: region output %{v.name} is never computed")
        # A PrimFunc output must be a stage of its own: copy inputs/constants and repeats.
        if isinstance(t.op, te.PlaceholderOp) or any(t.op.name == o.op.name for o in outputs):
            t = te.compute(t.shape, _reader(t), name=ctx.name("copy"))
            ctx.stages[t.op.name] = "identity"
        outputs.append(t)

    reachable = _reachable_placeholders(outputs)
    for index, p in packed.items():
        if operands[index].op.name in reachable:
            raise _PrepackConflict()
        operands[index] = p
    consts = [(name, t, arr) for name, t, arr in const_params if t.op.name in reachable]
    for k, (t, arr) in enumerate(ctx.extra_params):
        if t.op.name in reachable:
            consts.append((f"param:{k}", t, arr))
    params = operands + [t for _, t, _ in consts] + outputs
    try:
        func = te.create_prim_func(params)
    except Exception as e:  # noqa: BLE001 - reported as this group's lowering error
        raise LoweringError(f"{node.label}: TE -> TIR failed: {type(e).__name__}: {str(e)[:300]}") from None

    plan = ParamPlan(
        num_operands=len(operands),
        consts=[(name, arr) for name, _, arr in consts],
        num_outputs=len(outputs),
        dtypes=[str(t.dtype) for t in params],
        shapes=[tuple(int(s) for s in t.shape) for t in params],
        prepack={i: prepack[i] for i in packed if packed[i].op.name in reachable},
    )
    info = GroupInfo(
        kind=kind,
        anchor=anchor,
        anchor_op=anchor_op,
        stages=dict(ctx.stages),
        outputs=[t.op.name for t in outputs],
        target=target,
        num_threads=num_threads(),
    )
    return func, info, plan


def _fold(n: Node, folded: dict) -> tuple | None:
    """n's results when all its operands are known constants (None otherwise)."""
    if n.op.startswith(("random", "multinomial", "bernoulli")):  # none registered yet
        return None
    if not n.inputs or any(x is not None and id(x) not in folded for x in n.inputs):
        return None
    args = [None if x is None else folded[id(x)] for x in n.inputs]
    try:
        with np.errstate(all="ignore"):
            res = get_op(n.op).reference(*args, **n.attrs)
    except Exception:  # noqa: BLE001 - leave it to the emitter (which reports what it cannot do)
        return None
    res = res if isinstance(res, tuple) else (res,)
    out = []
    for o, r in zip(n.outputs, res):
        r = np.ascontiguousarray(r, dtype=o.dtype.np)
        if tuple(r.shape) != tuple(o.shape):  # symbolic or data-dependent: not foldable here
            return None
        out.append(r)
    return tuple(out) if len(out) == len(n.outputs) else None


def _reader(t):
    def read(*i):
        return t(*i)

    return read


def _dtype_for(node: Node, v: Value, bf16: bool = False) -> str:
    if bf16 and v.dtype == DType.bf16:
        return "bfloat16"
    try:
        return tvm_dtype(v.dtype)
    except LoweringError:
        raise LoweringError(f"{node.label}: value %{v.name} has dtype {v.dtype}, which has no TVM lowering") from None


def relax_param_alignment(func):
    """The PrimFunc with its parameters assumed aligned to their element size only.

    TVM assumes 64-byte aligned parameters and emits aligned vector moves, which fault on
    numpy arrays (16-byte aligned in general). Unaligned moves cost nothing on aligned
    data, so every kernel accepts any C-contiguous array without a copy."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    repl = {}
    for p in func.params:
        align = max(1, tvm.DataType(str(p.dtype)).bits // 8)
        repl[p] = tirx.decl_buffer(p.shape, p.dtype, p.name, data_alignment=align)

    def swap(v):
        for old, new in repl.items():
            if v.same_as(old):
                return new
        return v

    return tvm_ffi.structural_map(func, (type(func.params[0]), swap))
