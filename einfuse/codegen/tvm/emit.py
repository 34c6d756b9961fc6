"""Region -> TE: the emission table (op name -> emitter) and the schedule table
(group kind -> scheduler). "How is op X emitted" has one answer: EMITTERS[X].

An emitter receives the EmitCtx, the region node, and one te.Tensor per operand
(None for an absent optional operand), and returns one te.Tensor per node output:

    @emitter("relu")
    def relu(ctx, node, x):
        return [te.compute(x.shape, lambda *i: te.max(x(*i), tvm.tir.const(0, x.dtype)), name=ctx.name("relu"))]

A scheduler receives an s_tir.Schedule of the group's PrimFunc and a GroupInfo and
applies the rule-based schedule for that kind of kernel (tiling, vectorize, parallel).

Stage names come from ctx.name(), which derives them from the op and a counter,
never from model-supplied names.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

EMITTERS: dict[str, Callable] = {}
SCHEDULERS: dict[str, Callable] = {}


def emitter(*ops: str):
    def deco(fn):
        for op in ops:
            if op in EMITTERS:
                raise ValueError(f"TVM emitter for {op!r} registered twice")
            EMITTERS[op] = fn
        return fn

    return deco


def scheduler(*kinds: str):
    def deco(fn):
        for kind in kinds:
            if kind in SCHEDULERS:
                raise ValueError(f"TVM scheduler for {kind!r} registered twice")
            SCHEDULERS[kind] = fn
        return fn

    return deco


@dataclass
class EmitCtx:
    """State while lowering one region."""

    target: Any
    dims: dict = field(default_factory=dict)  # symbol name -> int, for static lowering
    _counter: Any = field(default_factory=itertools.count)
    # Stage name -> the op that produced it, so schedulers can find anchors.
    stages: dict = field(default_factory=dict)
    # Stage/placeholder name -> numpy value, for operands that are region constants
    # (see const_value). Filled by the lowering (codegen/tvm/lower.py).
    const_arrays: dict = field(default_factory=dict)
    # Extra kernel parameters an emitter derived from constants (e.g. pre-packed
    # weights): [(placeholder, array)], fed by the runtime like any constant parameter.
    extra_params: list = field(default_factory=list)
    # Set by the lowering: prepack_operand(tensor, steps, shape, dtype) -> placeholder or
    # None. For an operand that is a graph constant (a weight), the kernel takes it in the
    # packed layout `steps` produce (runtime/executable.apply_prepack), packed once by
    # the runtime (Kernel.meta["prepack"]); None: pack in the kernel instead.
    prepack_operand: Any = None

    def name(self, op: str) -> str:
        """A safe, unique TE stage name derived from the op name."""
        safe = "".join(c if c.isalnum() else "_" for c in op)
        return f"{safe}_{next(self._counter)}"

    def shape(self, value) -> tuple:
        """The static shape of an IR Value, with the symbols bound from `dims`
        (the lowering has already checked that they all bind)."""
        from einfuse.codegen.tvm.lower import static_shape

        return static_shape(value.type, self.dims)

    def const_value(self, tensor):
        """The numpy array behind an operand tensor when it is a region constant, else None
        (emitters may specialise on it: a constant exponent, pre-packed weights)."""
        if tensor is None:
            return None
        return self.const_arrays.get(tensor.op.name)

    def add_const_param(self, array, hint: str = "p"):
        """A new kernel parameter holding `array` (e.g. a weight in a packed layout computed
        at compile time); returns its te placeholder. The runtime feeds it like the region's
        large constants (Kernel.meta["const_params"])."""
        from tvm import te

        from einfuse.codegen.tvm.lower import tvm_dtype

        t = te.placeholder(tuple(int(d) for d in array.shape), tvm_dtype(array.dtype), name=self.name(hint))
        self.extra_params.append((t, array))
        self.const_arrays[t.op.name] = array
        return t


@dataclass
class GroupInfo:
    """What a scheduler knows about the group it schedules."""

    kind: str
    anchor: str | None  # stage name of the anchor op (matmul, conv, reduction), if any
    anchor_op: str | None
    stages: dict  # stage name -> op
    outputs: list  # stage names of the PrimFunc's outputs
    target: Any = None
    num_threads: int = 2
