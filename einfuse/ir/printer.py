"""The IR text form. `einfuse.ir.parser.parse` reads it back exactly.

    graph @main(%x: f32[B,3,224,224]) -> (%y: f32[B,1000]) {
      @conv1.w = const : f32[64,3,7,7]
      @shape = const [1, -1] : i64[2]
      %c = conv(%x, @conv1.w) {pads=(3,3,3,3), strides=(2,2)} : f32[B,64,112,112]
      ...
      return %y
    }

Names that are not plain (letters, digits, `_`, `.`) are printed quoted with escapes
(`%"a b"`), so a name holding quotes, newlines or code stays data. Attributes equal to
their op's default are left out. Constants are printed by value when small, and elided
(`const : type`) when large unless `constants="full"` (exact bytes in hex).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from einfuse.ir.graph import Graph, Node, Value
from einfuse.ir.ops import REQUIRED, get_op
from einfuse.ir.types import DType, TensorType

_PLAIN = re.compile(r"^[A-Za-z0-9_.]+$")
LITERAL_LIMIT = 16  # constants with at most this many elements print by value


def quote_name(name: str) -> str:
    if _PLAIN.fullmatch(name):
        return name
    return json.dumps(name, ensure_ascii=True)


def value_ref(v: Value) -> str:
    return ("@" if v.is_const else "%") + quote_name(v.name)


def format_type(t: TensorType) -> str:
    return str(t)


def format_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = repr(x)
    if not any(c in s for c in ".e"):
        s += ".0"
    return s


def _format_float_in(x) -> str:
    """The shortest text that reads back to the same value in x's own dtype
    (0.1 for an f32 0.1, not the f64 expansion 0.10000000149011612)."""
    f = float(x)
    if math.isnan(f) or math.isinf(f):
        return format_scalar(f)
    s = str(x)
    if float(np.asarray(float(s), dtype=x.dtype)) != f or (f == 0 and math.copysign(1, f) < 0 and not s.startswith("-")):
        return format_scalar(f)  # this dtype's str is not a round-trip form: exact f64 text
    if not any(c in s for c in ".eE"):
        s += ".0"
    return s


def format_attr(v, indent: str) -> str:
    if isinstance(v, Graph):
        return print_graph(v, indent=indent, constants="full")
    if isinstance(v, DType):
        return v.value
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, tuple):
        inner = ",".join(format_attr(x, indent) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, (bool, int, float, np.generic)):
        return format_scalar(v)
    raise TypeError(f"cannot print attribute value {v!r}")


def format_node(node: Node, indent: str = "  ") -> str:
    outs = ", ".join(value_ref(o) for o in node.outputs)
    ins = ", ".join("none" if v is None else value_ref(v) for v in node.inputs)
    text = f"{indent}{outs} = {node.op}({ins})"
    attrs = _non_default_attrs(node)
    if attrs:
        parts = [f"{k}={format_attr(v, indent + '  ')}" for k, v in sorted(attrs.items())]
        text += " {" + ", ".join(parts) + "}"
    if node.name:
        text += f" #{json.dumps(node.name, ensure_ascii=True)}"
    text += " : " + ", ".join(format_type(o.type) for o in node.outputs)
    return text


def _non_default_attrs(node: Node) -> dict:
    try:
        d = get_op(node.op)
    except KeyError:
        return dict(node.attrs)
    out = {}
    for k, v in node.attrs.items():
        spec = d.attrs.get(k)
        if spec is not None and spec.default is not REQUIRED and _same(spec.default, v):
            continue
        out[k] = v
    return out


def _same(a, b) -> bool:
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))
    return a == b


def format_constant(v: Value, arr: np.ndarray, mode: str, indent: str) -> str:
    head = f"{indent}{value_ref(v)} = const"
    if mode == "elide" or (mode == "auto" and arr.size > LITERAL_LIMIT):
        body = ""
    elif arr.size <= LITERAL_LIMIT:
        flat = arr.reshape(-1)
        if v.dtype.is_float:
            body = " [" + ", ".join(_format_float_in(x) for x in flat) + "]"
        else:
            body = " [" + ", ".join(format_scalar(x) for x in flat.tolist()) + "]"
    else:
        # Exact bytes for a lossless round trip (einfuse targets little-endian hosts only).
        body = f' hex"{np.ascontiguousarray(arr).tobytes().hex()}"'
    return f"{head}{body} : {format_type(v.type)}"


def print_graph(graph: Graph, *, constants: str = "auto", indent: str = "", elide_constants: bool = False) -> str:
    """The text form of `graph`. constants: "auto" (small by value, large elided),
    "full" (every value, exact) or "elide" (types only)."""
    if elide_constants:
        constants = "elide"
    if constants not in ("auto", "full", "elide"):
        raise ValueError(f"constants must be auto, full or elide, not {constants!r}")
    params = ", ".join(f"{value_ref(v)}: {format_type(v.type)}" for v in graph.inputs)
    results = ", ".join(f"{value_ref(v)}: {format_type(v.type)}" for v in graph.outputs)
    lines = [f"graph @{quote_name(graph.name)}({params}) -> ({results}) {{"]
    inner = indent + "  "
    for name, (v, arr) in graph.constants.items():
        lines.append(format_constant(v, arr, constants, inner))
    for node in graph.nodes:
        lines.append(format_node(node, inner))
    lines.append(f"{inner}return " + ", ".join(value_ref(v) for v in graph.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def context_lines(graph: Graph, node: Node, radius: int = 2) -> str:
    """The IR lines around `node`, the node's own line marked with `>`, for errors."""
    try:
        i = next(k for k, n in enumerate(graph.nodes) if n is node)
    except StopIteration:
        return format_node(node, "> ")
    lo, hi = max(0, i - radius), min(len(graph.nodes), i + radius + 1)
    out = []
    for k in range(lo, hi):
        mark = "> " if k == i else "  "
        try:
            out.append(format_node(graph.nodes[k], mark))
        except Exception:  # never let a printing problem hide the real error
            out.append(f"{mark}<{graph.nodes[k].op}>")
    return "\n".join(out)
