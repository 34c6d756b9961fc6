"""The one interface every backend implements.

A backend compiles ONE `fused` node (a region) for a target into a `Kernel`: a
callable in destination-passing style (it reads its operand arrays and writes its
result arrays, which the runtime allocates from its buffer plan), plus the cost
figures the roofline report needs. Backends never edit the graph.

    kernel = get_backend("tvm").compile(node, target)
    kernel(inputs=[x, w], outputs=[y])

Kernel names are derived from a content hash and the group kind, never pasted from
model names, so generated source and symbols cannot carry injected text.

Constants inside a region: those with at most `printer.LITERAL_LIMIT` elements may be
baked into the kernel; larger ones (weights) MUST be kernel parameters, fed by the
runtime (listed in `Kernel.meta["const_params"]` in parameter order). That is what
makes the region text with large constants elided a sound cache key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from einfuse.errors import EinfuseError
from einfuse.ir.graph import Node


class LoweringError(EinfuseError):
    """A fused group could not be lowered for a backend (names the node and the op)."""


@dataclass
class Kernel:
    name: str  # a safe symbol: [a-z0-9_]+
    fn: Callable[..., None]  # fn(inputs: list[array], outputs: list[array]) -> None
    backend: str
    kind: str  # the fused group's anchor family
    ops: tuple[str, ...]  # op names inside the group, for profiles
    flops: int = 0
    bytes_moved: int = 0
    artifact: Any = None  # what the runtime saves (e.g. a path to a compiled library)
    meta: dict = field(default_factory=dict)

    def __call__(self, inputs, outputs) -> None:
        self.fn(inputs, outputs)


class Backend(Protocol):
    name: str

    def compile(self, node: Node, target: Any) -> Kernel: ...


BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str):
    def deco(factory):
        BACKENDS[name] = factory
        return factory

    return deco


def get_backend(name: str) -> Backend:
    _load_builtin()
    try:
        return BACKENDS[name]()
    except KeyError:
        raise EinfuseError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}") from None


def _load_builtin() -> None:
    import importlib

    for mod in ("einfuse.codegen.reference_backend", "einfuse.codegen.tvm"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod and not mod.startswith(e.name or "\0"):
                raise


_SAFE = re.compile(r"[^a-z0-9_]")


def region_key(node: Node, salt: str = "") -> str:
    """Content hash of a fused node's code identity: its region text with large
    constants elided (they are kernel parameters), plus `salt` (target, versions)."""
    from einfuse.ir.printer import print_graph

    region = node.attrs["region"]
    text = print_graph(region, constants="auto") + "|" + str(node.attrs.get("kind")) + "|" + salt
    return hashlib.sha256(text.encode()).hexdigest()


def kernel_name(node: Node, salt: str = "") -> str:
    """A deterministic, safe symbol for a fused node: kind + hash of its region text."""
    digest = region_key(node, salt)[:12]
    kind = _SAFE.sub("_", str(node.attrs.get("kind", node.op)).lower())[:20]
    return f"k_{kind}_{digest}"
