"""The TVM backend: one fused node -> one LLVM-compiled kernel for this CPU.

    kernel = get_backend("tvm").compile(node, target=None, dims={"B": 1})
    kernel([x, w], [y])          # numpy in, results written into preallocated outputs

Pipeline: `lower.lower_region` (TE emitters from emit.EMITTERS -> PrimFunc) ->
scheduler for the group kind (emit.SCHEDULERS, else the generic one) -> parameters
relaxed to element alignment -> `tvm.compile` -> a destination-passing wrapper that hands
numpy arrays to the compiled function through DLPack, without copying them.

Kernel contract (see codegen/backend.py):
- `kernel(inputs, outputs)`: inputs are the node's operands, optionally followed by the
  constant parameters (`meta["const_params"]`, in that order); when only the operands
  are given, the kernel feeds the constants it was compiled with. Outputs must be
  C-contiguous arrays of the right shape and dtype (a non-contiguous one goes through a
  temporary).
- `kernel.artifact(path)` writes the compiled library (a shared object) to `path`;
  `load_kernel(path, meta, const_arrays)` rebuilds the callable from it without
  recompiling.
- `meta`: symbol, const_params (names: region constants, "param:<k>" for arrays an
  emitter derived, whose values are in meta["param_arrays"]), prepack ({operand index:
  layout steps} for weight operands the kernel takes pre-packed; see
  runtime/executable.apply_prepack), target, schedule (which scheduler ran), source (the
  scheduled TIR: op-derived names only, no model text).
"""

from __future__ import annotations

import math

import numpy as np

from einfuse.codegen.backend import Kernel, LoweringError, kernel_name, register_backend


def import_tvm():
    """Imports tvm without letting tvm_ffi import torch: tvm_ffi imports torch only to
    recognise torch tensors, which einfuse never passes, and that costs about 3 s per
    process (most of a cached compile, or of loading a .einf). torch stays importable
    afterwards; a process that imported torch before keeps it."""
    import sys

    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tvm
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


import_tvm()

# Registers the emitters and the generic schedules.
from einfuse.codegen.tvm import ops_elementwise, ops_injective, ops_reduce, schedule_generic  # noqa: E402, F401
from einfuse.codegen.tvm.emit import EMITTERS, SCHEDULERS, GroupInfo
from einfuse.codegen.tvm.target import configure_threads, get_target, num_threads, target_dict, target_key
from einfuse.errors import ExecutionError
from einfuse.ir.graph import Node

__all__ = [
    "TVMBackend",
    "aligned_empty",
    "get_target",
    "load_kernel",
    "num_threads",
    "region_cost",
    "supported_ops",
]

configure_threads()


def supported_ops() -> frozenset[str]:
    """Ops the TVM backend can lower (others make the runtime use the reference backend)."""
    _load_optional()
    return frozenset(EMITTERS)


def _load_optional() -> None:
    """The dense kernels (matmul, conv, ...) live in modules another part of the backend
    owns; import them when present."""
    import importlib

    for mod in ("einfuse.codegen.tvm.dense", "einfuse.codegen.tvm.conv", "einfuse.codegen.tvm.attention"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


class TVMBackend:
    name = "tvm"

    def compile(self, node: Node, target=None, dims: dict | None = None, tune_db=None) -> Kernel:
        import tvm

        from einfuse.codegen.tvm.lower import lower_region, relax_param_alignment

        _load_optional()
        tgt = get_target(target)
        tkey = target_key(tgt)
        dims = {str(k): int(v) for k, v in (dims or {}).items()}
        salt = f"tvm={tvm.__version__}|{tkey}|dims={sorted(dims.items())}"
        name = kernel_name(node, salt)
        func, info, plan = lower_region(node, tgt, dims)

        # A tuning database (einfuse tune; tune_db or $EINFUSE_TUNE_DB) overrides the rule-based schedule.
        tuned = _tuned_schedule(node, func, tgt, dims, tune_db)
        sched_name, sch = tuned if tuned is not None else _schedule(func, info)
        func = relax_param_alignment(sch.mod["main"]).with_attr("global_symbol", name)
        # Inlining can copy a Let-bound expression into several places; give each copy
        # its own variable before code generation.
        mod = tvm.tirx.transform.ConvertSSA()(tvm.IRModule({name: func}))
        try:
            lib = tvm.compile(mod, target=tgt)
        except Exception as e:  # noqa: BLE001 - any TVM failure is this group's lowering error
            raise LoweringError(f"{node.label}: TVM build failed: {type(e).__name__}: {str(e)[:300]}") from None
        packed = lib[name]

        region = node.attrs["region"]
        ops = tuple(n.op for n in region.nodes)
        meta = {
            "symbol": name,
            "const_params": plan.const_names,
            "param_arrays": {n: a for n, a in plan.consts if n.startswith("param:")},
            "prepack": {int(i): steps for i, steps in plan.prepack.items()},
            "num_operands": plan.num_operands,
            "num_outputs": plan.num_outputs,
            "target": target_dict(tgt),
            "schedule": sched_name,
            "source": _script(func),
            "dims": dims,
        }
        fn = make_kernel_fn(packed, plan.num_operands, [a for _, a in plan.consts], name)
        flops, moved = region_cost(region, dims, plan)

        def export(path) -> None:
            lib.export_library(str(path))

        kernel = Kernel(
            name=name,
            fn=fn,
            backend="tvm",
            kind=str(node.attrs.get("kind", "opaque")),
            ops=ops,
            flops=flops,
            bytes_moved=moved,
            artifact=export,
            meta=meta,
        )
        return kernel


def _tuned_schedule(node, func, tgt, dims, tune_db):
    from einfuse.codegen.tvm.tune import configured_db, lookup_schedule

    if configured_db(tune_db) is None:
        return None
    return lookup_schedule(node, func, tgt, dims, tune_db)


def _schedule(func, info: GroupInfo):
    """Runs the kind's scheduler (or the generic one); falls back to the generic schedule,
    then to none, when a scheduler fails: an unscheduled kernel is slow but correct."""
    from tvm import s_tir

    from einfuse.codegen.tvm.schedule_generic import schedule_group

    candidates = []
    if info.kind in SCHEDULERS:
        candidates.append((info.kind, SCHEDULERS[info.kind]))
    candidates.append(("generic", schedule_group))
    for label, fn in candidates:
        sch = s_tir.Schedule(func)
        try:
            out = fn(sch, info)
        except Exception:  # noqa: BLE001, S112 - a scheduler bug must not lose the kernel
            continue
        return label, (out if out is not None else sch)
    return "none", s_tir.Schedule(func)


def _script(func) -> str:
    try:
        return func.script()
    except Exception:  # noqa: BLE001 - the printed TIR is informational only
        return ""


# -- calling convention ---------------------------------------------------------------------


# ml_dtypes name -> TVM dtype, for the arrays numpy cannot export over DLPack.
_ML_DTYPES = {"bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}


def _to_tvm(x):
    """A TVM tensor sharing x's memory (DLPack, no copy); copies only a non-contiguous array."""
    import tvm_ffi

    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.size == 0:
        # numpy exports empty arrays with strides TVM does not take as compact; nothing
        # is read or written through them anyway.
        import tvm

        from einfuse.codegen.tvm.lower import tvm_dtype

        return tvm.runtime.empty(x.shape, tvm_dtype(x.dtype))
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    name = _ML_DTYPES.get(x.dtype.name)
    if name is not None:
        # ml_dtypes (bfloat16, float8_*) are not DLPack types for numpy: export the bits as
        # an unsigned integer of the same width and view them under the TVM dtype (no copy).
        bits = tvm_ffi.from_dlpack(
            x.view(f"u{x.dtype.itemsize}").__dlpack__(max_version=(1, 0)), require_alignment=0, require_contiguous=True
        )
        return bits._create_view(bits.shape, name)
    # The versioned (DLPack 1.0) capsule also carries read-only arrays (weights).
    return tvm_ffi.from_dlpack(x.__dlpack__(max_version=(1, 0)), require_alignment=0, require_contiguous=True)


def make_kernel_fn(packed, num_operands: int, const_arrays: list, name: str):
    """The destination-passing fn(inputs, outputs) around a compiled function."""
    bound = [_to_tvm(a) for a in const_arrays]
    n_const = len(bound)

    def fn(inputs, outputs) -> None:
        n = len(inputs)
        # Fast path: numpy arrays go straight to the compiled function (DLPack inside TVM's
        # FFI, ~0.5 us per array, no copy); it checks shapes, dtypes and compact strides.
        # Read-only or non-contiguous arrays fail it and take the careful path below.
        try:
            if n == num_operands:
                packed(*inputs, *bound, *outputs)
                return
            if n == num_operands + n_const:
                packed(*inputs, *outputs)
                return
        except Exception:  # noqa: BLE001, S110 - retried below, where a real error is reported
            pass
        _call_careful(inputs, outputs)

    def _call_careful(inputs, outputs) -> None:
        n = len(inputs)
        if n == num_operands:
            args = [_to_tvm(x) for x in inputs] + bound
        elif n == num_operands + n_const:
            args = [_to_tvm(x) for x in inputs]
        else:
            raise ExecutionError(f"kernel {name} takes {num_operands} operands (+ {n_const} constants), got {n} inputs")
        staged = []
        for o in outputs:
            if isinstance(o, np.ndarray) and o.flags.c_contiguous and o.flags.writeable:
                args.append(_to_tvm(o))
            else:
                tmp = np.empty_like(o, order="C")
                staged.append((o, tmp))
                args.append(_to_tvm(tmp))
        try:
            packed(*args)
        except Exception as e:  # noqa: BLE001 - TVM raises several types for bad arguments
            raise ExecutionError(f"kernel {name} failed: {type(e).__name__}: {str(e)[:300]}") from None
        for dst, tmp in staged:
            np.copyto(dst, tmp)

    return fn


def load_kernel(path, meta: dict, const_arrays: list | None = None):
    """Rebuilds fn(inputs, outputs) of a kernel from its exported library, without
    recompiling. const_arrays: the constant parameters in meta["const_params"] order
    (omit to require callers to pass them with the inputs)."""
    import tvm

    lib = tvm.runtime.load_module(str(path))
    packed = lib[meta["symbol"]]
    return make_kernel_fn(packed, int(meta["num_operands"]), list(const_arrays or []), meta["symbol"])


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is `align`-byte aligned (kernels take
    any alignment; aligned buffers keep vector loads from straddling cache lines)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


# -- cost model ------------------------------------------------------------------------------


def region_cost(region, dims: dict, plan=None) -> tuple[int, int]:
    """(FLOPs, bytes moved) of a region: 2*M*N*K for matmul-like ops, one per output
    element per elementwise op, the input size for reductions; bytes are the operands,
    constant parameters and outputs."""
    from einfuse.codegen.tvm.lower import static_shape
    from einfuse.ir.ops import ELEMENTWISE, NORMALIZE, OUT_FUSABLE, REDUCE, get_op

    def numel(v) -> int:
        try:
            return math.prod(static_shape(v.type, dims))
        except LoweringError:
            return 0

    flops = 0
    for n in region.nodes:
        fam = get_op(n.op).family
        out = numel(n.outputs[0]) if n.outputs else 0
        if n.op == "einsum_cascade":
            from einfuse.codegen.tvm.attention import cascade_flops

            flops += cascade_flops(n, dims)
        elif fam == OUT_FUSABLE:
            flops += _dense_flops(n, numel, dims)
        elif fam == ELEMENTWISE:
            flops += sum(numel(o) for o in n.outputs)
        elif fam == REDUCE:
            window = math.prod(n.attrs.get("kernel_shape", ()) or (1,))
            flops += max(numel(n.inputs[0]), out * window) if n.inputs else out
        elif fam == NORMALIZE:
            flops += 5 * (numel(n.inputs[0]) if n.inputs else out)
    moved = sum(numel(v) * v.dtype.itemsize for v in region.inputs)
    moved += sum(numel(v) * v.dtype.itemsize for v in region.outputs)
    if plan is not None:
        moved += sum(int(a.nbytes) for _, a in plan.consts)
    return int(flops), int(moved)


def _dense_flops(n, numel, dims: dict) -> int:
    """2 * (output elements) * (reduction length) for matmul/gemm/conv/einsum nodes."""
    from einfuse.codegen.tvm.lower import static_shape

    out = numel(n.outputs[0])
    try:
        shapes = [static_shape(v.type, dims) if v is not None else () for v in n.inputs]
        if n.op in ("matmul", "matmul_integer", "qlinear_matmul"):
            return 2 * out * shapes[0][-1]
        if n.op == "gemm":
            return 2 * out * (shapes[0][0] if n.attrs.get("transA") else shapes[0][-1])
        if n.op in ("conv", "conv_integer", "qlinear_conv"):
            w = shapes[3] if n.op == "qlinear_conv" else shapes[1]
            return 2 * out * math.prod(w[1:])
        if n.op == "conv_transpose":
            return 2 * numel(n.inputs[0]) * math.prod(shapes[1][1:])
        if n.op == "einsum":
            sizes: dict = {}
            terms = n.attrs["equation"].replace(" ", "").split("->")[0].split(",")
            for term, shape in zip(terms, shapes):
                for letter, d in zip(term.replace("...", ""), shape[len(shape) - len(term.replace("...", "")) :]):
                    sizes[letter] = d
            return (
                2 * max(out, 1) * math.prod(v for k, v in sizes.items() if k not in n.attrs["equation"].split("->")[-1])
            )
    except (LoweringError, IndexError, KeyError, TypeError, ValueError):
        return 2 * out
    return 2 * out


@register_backend("tvm")
def _factory():
    return TVMBackend()
