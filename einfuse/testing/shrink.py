"""Shrinking a failing graph to a minimal reproducer, and writing / replaying it.

    small, small_inputs = shrink(graph, inputs, still_fails)
    path = write_reproducer("fuzz-out", small, small_inputs, backend="tvm", message=str(result))
    # replay:  einfuse fuzz --replay fuzz-out/<name>

`still_fails(graph, inputs) -> bool` is the property to keep (usually "check() gives
the same failure signature"). Delta debugging, after hypothesis has shrunk the draw:

1. outputs: keep one graph output when that still fails;
2. nodes: keep only a subset of the nodes (single nodes first, then removing one node
   at a time to a fixpoint); a value a kept node reads from a removed node becomes a
   graph input fed with the value the reference computed for it, so the kept nodes see
   exactly what they saw before;
3. shapes: smaller sizes for the symbolic dims (inputs sliced to fit), then for each
   static input dim (the graph re-typed by re-running inference; candidates whose
   inference fails are skipped).

A reproducer directory holds graph.ir (IR text with every constant), graph.onnx
(when the graph exports), inputs.npz (arrays i0, i1, ... in graph-input order),
repro.json (backend, failure, input names and dtypes, the replay command) and
README.txt.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sympy

from einfuse.codegen import reference
from einfuse.errors import EinfuseError, InputError
from einfuse.ir.builder import make_node
from einfuse.ir.graph import Graph, Value
from einfuse.ir.types import DType, TensorType
from einfuse.testing.strategies import input_ranges, set_input_ranges

Predicate = Callable[[Graph, dict], bool]


def _safe(pred: Predicate, g: Graph, inputs: dict) -> bool:
    try:
        return bool(pred(g, inputs))
    except Exception:  # noqa: BLE001 - a candidate the property cannot even evaluate does not count
        return False


# -- candidates --------------------------------------------------------------------


def keep_nodes(graph: Graph, inputs: dict, keep: list[int], values: dict | None = None) -> tuple[Graph, dict] | None:
    """The graph made of the nodes at positions `keep` (in order); values they read from
    dropped nodes become inputs fed with the reference's values. Outputs: the original
    outputs among kept nodes' results, else the last kept node's outputs."""
    if not keep:
        return None
    if values is None:
        values = reference.run_values(graph, inputs)
    kept = [graph.nodes[i] for i in sorted(keep)]
    produced = {id(o) for n in kept for o in n.outputs}
    g = Graph(graph.name)
    new_inputs: dict[str, np.ndarray] = {}
    subst: dict[int, Value] = {}  # a dropped node's result -> the input standing for it
    for v in graph.inputs:
        if any(x is v for n in kept for x in n.inputs):
            g.inputs.append(v)
            g._names.add(v.name)
            new_inputs[v.name] = inputs[v.name]
    nodes = []
    for n in kept:
        for x in n.inputs:
            if x is None or id(x) in produced or id(x) in subst or x.name in g._names:
                continue
            if x.is_const:
                g.constants[x.name] = graph.constants[x.name]
                g._names.add(x.name)
            else:  # a dropped node's result: now an input carrying the reference's value
                subst[id(x)] = Value(x.name, x.type)
                g.inputs.append(subst[id(x)])
                g._names.add(x.name)
                new_inputs[x.name] = values[x]
        ins = tuple(subst.get(id(x), x) if x is not None else None for x in n.inputs)
        nodes.append(n.with_(inputs=ins) if ins != n.inputs else n)
        for o in n.outputs:
            g._names.add(o.name)
    g.nodes = nodes
    outs = [v for v in graph.outputs if id(v) in produced]
    g.outputs = outs or list(nodes[-1].outputs)
    g._invalidate()
    _drop_dead(g)
    used = {x.name for n in g.nodes for x in n.inputs if x is not None} | {v.name for v in g.outputs}
    for v in [v for v in g.inputs if v.name not in used]:
        g._names.discard(v.name)
        new_inputs.pop(v.name, None)
    g.inputs = [v for v in g.inputs if v.name in used]
    ranges = input_ranges(graph)
    set_input_ranges(g, {k: r for k, r in ranges.items() if k in new_inputs})
    return g, new_inputs


def _drop_dead(g: Graph) -> None:
    live = {id(v) for v in g.outputs}
    nodes = []
    for n in reversed(g.nodes):
        if any(id(o) in live for o in n.outputs):
            nodes.append(n)
            live |= {id(x) for x in n.inputs if x is not None}
    g.nodes = nodes[::-1]
    g._invalidate()
    g.remove_unused_constants()


def with_outputs(graph: Graph, outputs: list[Value]) -> Graph:
    g = graph.copy()
    g.outputs = list(outputs)
    g._invalidate()
    _drop_dead(g)
    set_input_ranges(g, input_ranges(graph))
    return g


def retype(graph: Graph, types: dict[str, TensorType]) -> Graph | None:
    """The graph with some inputs re-typed, every node re-inferred (None when
    inference rejects a node)."""
    g = Graph(graph.name)
    env: dict[int, Value] = {}
    for v in graph.inputs:
        nv = g.add_input(v.name, types.get(v.name, v.type))
        env[id(v)] = nv
    for name, (v, arr) in graph.constants.items():
        env[id(v)] = g.add_constant(name, arr)
    try:
        for n in graph.nodes:
            ins = [None if x is None else env[id(x)] for x in n.inputs]
            attrs = {k: val for k, val in n.attrs.items()}
            node = make_node(g, n.op, ins, attrs, name=n.name, out_names=[o.name for o in n.outputs])
            for o, no in zip(n.outputs, node.outputs):
                env[id(o)] = no
            g.add_node(node)
    except (EinfuseError, KeyError, ValueError):
        return None
    g.outputs = [env[id(v)] for v in graph.outputs]
    set_input_ranges(g, input_ranges(graph))
    return g


def _bindings(graph: Graph, inputs: dict) -> dict:
    out: dict = {}
    for v in graph.inputs:
        v.type.matches(np.asarray(inputs[v.name]), out)
    return out


def _slice_to(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(arr[tuple(slice(0, n) for n in shape)])


# -- the shrinker ------------------------------------------------------------------------


def shrink(
    graph: Graph,
    inputs: dict,
    still_fails: Predicate,
    *,
    max_seconds: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> tuple[Graph, dict]:
    """A smaller (graph, inputs) for which `still_fails` holds (the given pair if
    nothing smaller does)."""
    deadline = time.monotonic() + max_seconds
    say = log or (lambda msg: None)
    if not _safe(still_fails, graph, inputs):
        return graph, inputs
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        # 1. one output
        if len(graph.outputs) > 1:
            for v in graph.outputs:
                g = with_outputs(graph, [v])
                ins = {x.name: inputs[x.name] for x in g.inputs}
                if _safe(still_fails, g, ins):
                    graph, inputs, progress = g, ins, True
                    say(f"one output: {len(g.nodes)} nodes")
                    break
        # 2. nodes: single nodes first, then drop one at a time
        if len(graph.nodes) > 1:
            res = _shrink_nodes(graph, inputs, still_fails, deadline)
            if res is not None:
                graph, inputs = res
                progress = True
                say(f"nodes: {len(graph.nodes)} left")
        # 3. shapes
        res = _shrink_shapes(graph, inputs, still_fails, deadline)
        if res is not None:
            graph, inputs = res
            progress = True
            say("shapes: smaller")
    g, ins = without_unused_inputs(graph, inputs)
    if len(g.inputs) < len(graph.inputs) and _safe(still_fails, g, ins):
        graph, inputs = g, ins
    return graph, inputs


def without_unused_inputs(graph: Graph, inputs: dict) -> tuple[Graph, dict]:
    used = {id(x) for n in graph.nodes for x in n.inputs if x is not None} | {id(v) for v in graph.outputs}
    if all(id(v) in used for v in graph.inputs):
        return graph, inputs
    g = graph.copy()
    g.inputs = [v for v in graph.inputs if id(v) in used]
    for v in graph.inputs:
        if id(v) not in used:
            g._names.discard(v.name)
    g._invalidate()
    set_input_ranges(g, input_ranges(graph))
    return g, {v.name: inputs[v.name] for v in g.inputs}


def reference_values(graph: Graph, inputs: dict) -> dict[Value, np.ndarray]:
    """Every value the reference computes, node by node, up to the first node that fails
    (a graph whose reference crashes can still be cut before that node)."""
    from einfuse.ir.ops import get_op

    env, _ = reference.check_inputs(graph, inputs)
    out: dict[Value, np.ndarray] = {v: env[id(v)] for v in graph.inputs}
    for v, arr in graph.constants.values():
        env[id(v)] = arr
        out[v] = arr
    for n in graph.nodes:
        try:
            with np.errstate(all="ignore"):
                res = get_op(n.op).reference(*[None if x is None else env[id(x)] for x in n.inputs], **n.attrs)
        except Exception:  # noqa: BLE001 - the failing node: stop here
            break
        res = res if isinstance(res, tuple) else (res,)
        for o, r in zip(n.outputs, res):
            env[id(o)] = np.asarray(r)
            out[o] = env[id(o)]
    return out


def _shrink_nodes(graph: Graph, inputs: dict, pred: Predicate, deadline: float):
    try:
        values = reference_values(graph, inputs)
    except EinfuseError:
        values = None
    n = len(graph.nodes)
    best = None
    # a single node, latest first (the last node is usually where a divergence shows)
    for i in reversed(range(n)):
        if time.monotonic() > deadline:
            return best
        cand = _cut(graph, inputs, [i], values)
        if cand is not None and _safe(pred, *cand):
            return cand
    keep = list(range(n))
    changed = False
    i = len(keep) - 1
    while i >= 0 and time.monotonic() < deadline:
        trial = keep[:i] + keep[i + 1 :]
        cand = _cut(graph, inputs, trial, values)
        if cand is not None and _safe(pred, *cand):
            keep = trial
            best = cand
            changed = True
        i -= 1
    return best if changed else None


def _cut(graph, inputs, keep, values):
    if values is None:
        return None
    try:
        return keep_nodes(graph, inputs, keep, values)
    except (EinfuseError, KeyError):  # a cut value the reference never computed
        return None


def _shrink_shapes(graph: Graph, inputs: dict, pred: Predicate, deadline: float):
    changed = False
    # symbolic dims: smaller bindings, inputs sliced to fit
    bind = _bindings(graph, inputs)
    for s, size in sorted(bind.items(), key=lambda kv: kv[0].name):
        for smaller in sorted({1, size // 2} - {size}):
            if smaller < 1 or time.monotonic() > deadline:
                continue
            new_bind = dict(bind)
            new_bind[s] = smaller
            try:
                ins = {
                    v.name: _slice_to(np.asarray(inputs[v.name]), _concrete(v.type.shape, new_bind))
                    for v in graph.inputs
                }
            except (TypeError, ValueError):
                continue
            if _safe(pred, graph, ins):
                inputs, bind, changed = ins, new_bind, True
                break
    # static input dims: re-typed graph
    for k, v in enumerate(list(graph.inputs)):
        for axis, d in enumerate(v.shape):
            if not isinstance(d, int) or d <= 1 or time.monotonic() > deadline:
                continue
            for smaller in sorted({1, d // 2} - {d}):
                shape = list(v.shape)
                shape[axis] = smaller
                g = retype(graph, {v.name: TensorType(tuple(shape), v.dtype)})
                if g is None:
                    continue
                ins = dict(inputs)
                ins[v.name] = _slice_to(
                    np.asarray(inputs[v.name]),
                    tuple(smaller if i == axis else n for i, n in enumerate(np.asarray(inputs[v.name]).shape)),
                )
                if _safe(pred, g, ins):
                    graph, inputs, changed = g, ins, True
                    v = g.inputs[k]
                    break
    return (graph, inputs) if changed else None


def _concrete(shape, bind) -> tuple[int, ...]:
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(int(sympy.sympify(d).subs(bind)))
    return tuple(out)


# -- reproducers --------------------------------------------------------------------------


def write_reproducer(
    out_dir: str | Path,
    graph: Graph,
    inputs: dict,
    *,
    backend: str,
    message: str = "",
    signature: tuple | None = None,
    name: str | None = None,
    passes=None,
) -> Path:
    """Writes graph.ir, graph.onnx (when it exports), inputs.npz, repro.json and
    README.txt into a new folder of `out_dir`; returns the folder. `passes`: the pass
    pipeline the failure needs (replay runs it when every pass is registered by name)."""
    from einfuse.ir.printer import print_graph

    text = print_graph(graph, constants="full")
    if name is None:
        digest = hashlib.sha256((text + backend).encode()).hexdigest()[:10]
        op = signature[2] if signature and len(signature) > 2 else "case"
        safe_op = "".join(c if c.isalnum() or c == "_" else "_" for c in str(op))[:30]
        name = f"{backend if backend.isidentifier() else 'backend'}-{safe_op}-{digest}"
    path = Path(out_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "graph.ir").write_text(text + "\n", encoding="utf-8")
    onnx_note = "graph.onnx"
    try:
        from einfuse.testing.onnx_export import to_onnx

        (path / "graph.onnx").write_bytes(to_onnx(graph).SerializeToString())
    except EinfuseError as e:
        onnx_note = f"(no graph.onnx: {e.message})"
    _save_inputs(path / "inputs.npz", graph, inputs)
    command = f"einfuse fuzz --replay {path}"
    pass_names = [_pass_name(p) for p in passes or ()]
    registered = _registered_pass_names()
    if pass_names and not set(pass_names) <= registered:
        command += f"  # the failure needs the passes {pass_names}: check(graph, passes=[...]) with yours"
    meta = {
        "backend": backend,
        "signature": list(signature) if signature else None,
        "message": message,
        "inputs": [{"name": v.name, "dtype": str(v.dtype)} for v in graph.inputs],
        "input_ranges": {k: list(r) for k, r in input_ranges(graph).items()},
        "nodes": len(graph.nodes),
        "passes": pass_names,
        "command": command,
    }
    (path / "repro.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    readme = (
        f"einfuse reproducer: {len(graph.nodes)} node(s), backend {backend}\n\n"
        f"{message}\n\nreplay:  {command}\n\nfiles: graph.ir (IR text), {onnx_note}, inputs.npz "
        f"(i0, i1, ... in graph-input order; bfloat16/float8 stored widened to float32)\n\n{text}\n"
    )
    (path / "README.txt").write_text(readme, encoding="utf-8")
    return path


def _pass_name(p) -> str:
    return p if isinstance(p, str) else getattr(p, "name", type(p).__name__)


def _registered_pass_names() -> set[str]:
    from einfuse.passes.manager import registered_passes

    return set(registered_passes())


def _save_inputs(path: Path, graph: Graph, inputs: dict) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, v in enumerate(graph.inputs):
            arr = np.asarray(inputs[v.name])
            if (
                arr.dtype.kind == "V"
                or v.dtype not in (DType.f64, DType.f32, DType.f16, DType.bool)
                and v.dtype.is_float
            ):
                arr = arr.astype(np.float32)
            with zf.open(f"i{i}.npy", "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def load_reproducer(path: str | Path) -> tuple[Graph, dict, dict]:
    """(graph, inputs, meta) from a reproducer folder."""
    from einfuse.ir.parser import parse

    path = Path(path)
    try:
        meta = json.loads((path / "repro.json").read_text(encoding="utf-8"))
        graph = parse((path / "graph.ir").read_text(encoding="utf-8"))
        data = np.load(path / "inputs.npz", allow_pickle=False)
    except FileNotFoundError as e:
        raise InputError(f"{path} is not an einfuse reproducer: {e.filename} is missing") from None
    inputs = {}
    for i, v in enumerate(graph.inputs):
        inputs[v.name] = np.asarray(data[f"i{i}"]).astype(v.dtype.np)
    ranges = meta.get("input_ranges") or {}
    set_input_ranges(graph, {k: tuple(r) for k, r in ranges.items()})
    return graph, inputs, meta


def replay(path: str | Path, backends=None, **check_kwargs):
    """Re-runs a reproducer through check(); returns the CheckResult."""
    from einfuse.testing.check import ORT, check

    graph, inputs, meta = load_reproducer(path)
    backend = meta.get("backend", "reference")
    if backends is None:
        backends = [] if backend == ORT else [backend]
    passes = meta.get("passes") or []
    if passes and "passes" not in check_kwargs and set(passes) <= _registered_pass_names():
        check_kwargs["passes"] = passes
    check_kwargs.setdefault("raise_on_failure", False)
    return check(graph, backends=backends, inputs=inputs, **check_kwargs)


__all__ = ["keep_nodes", "load_reproducer", "reference_values", "replay", "retype", "shrink", "write_reproducer"]
