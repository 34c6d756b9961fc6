"""ONNX op converters: one function per ONNX op type, turning a NodeProto into core ops.

    @converter("LeakyRelu")
    def leaky_relu(ctx: ConvertCtx, node) -> list:
        return [ctx.op("leaky_relu", [ctx.input(node, 0)], alpha=ctx.attr(node, "alpha", 0.01))]

A converter returns one Value (or None for an output ONNX leaves empty) per ONNX
output. `ctx.opset` is the model's default-domain opset, so one converter handles
every version of its op (opsets 9 to 21). Operands that core ops need as static
parameters (axes, shapes, pads, split sizes...) are read with `ctx.const_input`,
which raises a clear error when the operand is not a constant. `ctx.op` folds the
node into a constant when every operand is constant (shape computations), after
checking the result's size against the memory limit.

Converters live in the modules of this package, grouped like the core ops.
"""

from __future__ import annotations

from typing import Callable

CONVERTERS: dict[str, Callable] = {}


def converter(*op_types: str):
    """Registers a converter for one or more ONNX op types (default domain)."""

    def deco(fn):
        for t in op_types:
            if t in CONVERTERS:
                raise ValueError(f"converter for {t!r} registered twice")
            CONVERTERS[t] = fn
        return fn

    return deco


_loaded = False


def load_all() -> dict[str, Callable]:
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib
        import pkgutil

        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
    return CONVERTERS
