"""The op registry.

Each core op declares, in one `OpDef`: its operand arity, its attribute schema (with
defaults), its family (fusion legality refers to families, not op lists), symbolic
shape/type inference, and its numpy reference (the oracle every backend is tested
against). Ops are defined in the modules of this package, grouped by family, and
registered with `@register(...)`.

Inference functions receive an `InferCtx`: the operand types, attributes, the
constant value of an operand when the graph knows it, and `error()` which raises a
ShapeError naming the node. Reference functions receive numpy arrays (None for an
absent optional operand) and the attributes, and return an array or a tuple of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import sympy

from einfuse.errors import ShapeError
from einfuse.ir.types import DType, TensorType

# -- families -----------------------------------------------------------------
# Elementwise: one output element per aligned (broadcast) input element.
ELEMENTWISE = "elementwise"
# Injective: each output element reads one input element (transpose, slice, concat...).
INJECTIVE = "injective"
# Reduction over one or more axes.
REDUCE = "reduce"
# Compute-heavy ops that accept fused epilogues (matmul, conv).
OUT_FUSABLE = "out_fusable"
# Normalisations and softmax: row reductions with elementwise producers/consumers.
NORMALIZE = "normalize"
# Anything else: data-dependent shapes, control flow, gathers with irregular access.
OPAQUE = "opaque"
# Ops that only compute shapes/metadata (shape, size); folded away on static shapes.
SHAPE = "shape"

FAMILIES = frozenset({ELEMENTWISE, INJECTIVE, REDUCE, OUT_FUSABLE, NORMALIZE, OPAQUE, SHAPE})


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()

ATTR_KINDS = frozenset({"int", "float", "str", "bool", "ints", "floats", "strs", "dtype", "graph", "any"})


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED

    def __post_init__(self):
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")


def check_attr_value(kind: str, v) -> bool:
    from einfuse.ir.graph import Graph

    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (float, int)) and not isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "ints":
        return isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if kind == "floats":
        return isinstance(v, tuple) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    if kind == "strs":
        return isinstance(v, tuple) and all(isinstance(x, str) for x in v)
    if kind == "dtype":
        return isinstance(v, DType)
    if kind == "graph":
        return isinstance(v, Graph)
    return True


@dataclass
class InferCtx:
    """What an inference function may look at."""

    types: list  # TensorType or None per operand
    attrs: dict
    consts: list  # np.ndarray or None per operand (constant operands only)
    label: str = "?"
    _fresh: Callable[[str], sympy.Symbol] | None = None

    def error(self, msg: str) -> ShapeError:
        return ShapeError(f"{self.label}: {msg}")

    def fresh_dim(self, hint: str = "d") -> sympy.Symbol:
        """A new symbol for a data-dependent dimension."""
        if self._fresh is None:
            from einfuse.ir.types import sym

            global _fresh_counter
            _fresh_counter += 1
            return sym(f"_{hint}{_fresh_counter}")
        return self._fresh(hint)

    def const(self, i: int) -> np.ndarray | None:
        return self.consts[i] if i < len(self.consts) else None

    def type(self, i: int) -> TensorType:
        if i >= len(self.types) or self.types[i] is None:
            raise self.error(f"operand {i} is required")
        return self.types[i]

    def has(self, i: int) -> bool:
        return i < len(self.types) and self.types[i] is not None


_fresh_counter = 0


@dataclass(frozen=True)
class OpDef:
    name: str
    family: str
    infer: Callable[[InferCtx], list]
    reference: Callable[..., Any]
    min_inputs: int
    max_inputs: int | None  # None: variadic
    attrs: dict = field(default_factory=dict)
    num_outputs: int | Callable[[dict], int] = 1
    doc: str = ""

    def outputs_for(self, attrs: dict) -> int | None:
        if callable(self.num_outputs):
            return self.num_outputs(attrs)
        return self.num_outputs

    def with_defaults(self, attrs: dict) -> dict:
        out = {k: a.default for k, a in self.attrs.items() if a.default is not REQUIRED}
        out.update(attrs)
        return out


REGISTRY: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    family: str,
    inputs: int | tuple[int, int | None],
    attrs: dict | None = None,
    outputs: int | Callable[[dict], int] = 1,
    infer: Callable[[InferCtx], list],
):
    """Decorator registering a reference function as op `name`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs

    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"op {name!r} registered twice")
        REGISTRY[name] = OpDef(
            name=name,
            family=family,
            infer=infer,
            reference=fn,
            min_inputs=lo,
            max_inputs=hi,
            attrs=dict(attrs or {}),
            num_outputs=outputs,
            doc=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        return fn

    return deco


def get_op(name: str) -> OpDef:
    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(name) from None


def ops_in(family: str) -> frozenset[str]:
    _load_all()
    return frozenset(n for n, d in REGISTRY.items() if d.family == family)


_loaded = False


def _load_all():
    global _loaded
    if _loaded:
        return
    _loaded = True
    # Importing the op modules registers their ops.
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def infer_types(op: str, types: list, attrs: dict, consts: list, label: str = "?") -> list[TensorType]:
    """Runs op `op`'s inference with defaults filled in; returns the output types."""
    d = get_op(op)
    ctx = InferCtx(types=list(types), attrs=d.with_defaults(attrs), consts=list(consts), label=label)
    out = d.infer(ctx)
    return list(out)
