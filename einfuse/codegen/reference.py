"""The numpy reference evaluator: the oracle every backend and pass is tested against.

`run(graph, inputs)` evaluates each node with its op's numpy reference, checking on
the way that every result has the dtype and shape its inferred type promises (a
symbol binds to the size it first meets). A mismatch is a bug in einfuse or a bad
input, reported with the node at fault.
"""

from __future__ import annotations

import time

import numpy as np

from einfuse.errors import EinfuseError, ExecutionError, InputError
from einfuse.ir.graph import Graph, Value
from einfuse.ir.ops import get_op
from einfuse.ir.types import DType


def check_inputs(graph: Graph, inputs: dict) -> dict:
    """Validates named inputs against the graph signature; returns {Value: array} and
    the symbol bindings they imply."""
    unknown = set(inputs) - {v.name for v in graph.inputs}
    if unknown:
        raise InputError(f"unknown input(s) {sorted(unknown)}; the model takes {[v.name for v in graph.inputs]}")
    env: dict[int, np.ndarray] = {}
    bindings: dict = {}
    for v in graph.inputs:
        if v.name not in inputs:
            raise InputError(f"missing input {v.name!r} of type {v.type}")
        arr = np.asarray(inputs[v.name])
        if arr.dtype != v.dtype.np:
            raise InputError(f"input {v.name!r} should be {v.dtype} ({v.dtype.np}), got {arr.dtype}")
        if not v.type.matches(arr, bindings):
            raise InputError(f"input {v.name!r} should have shape {v.type}, got {list(arr.shape)}")
        env[id(v)] = arr
    return env, bindings


def run(graph: Graph, inputs: dict, *, check_types: bool = True, profile: dict | None = None) -> dict:
    """Evaluates `graph` on {input name: array}; returns {output name: array} in order.

    profile: a dict that receives {op name: [seconds, calls]} for this run."""
    env, bindings = check_inputs(graph, inputs)
    return _run(graph, env, bindings, check_types, profile)


def run_values(graph: Graph, inputs: dict, *, check_types: bool = True) -> dict[Value, np.ndarray]:
    """Like run, but returns every computed value (for differential debugging)."""
    env, bindings = check_inputs(graph, inputs)
    _run(graph, env, bindings, check_types)
    out = {}
    for v in graph.values():
        if id(v) in env:
            out[v] = env[id(v)]
    return out


def _run(graph: Graph, env: dict, bindings: dict, check_types: bool, profile: dict | None = None) -> dict:
    for name, (v, arr) in graph.constants.items():
        env[id(v)] = arr
    for node in graph.nodes:
        args = []
        for x in node.inputs:
            if x is None:
                args.append(None)
            else:
                try:
                    args.append(env[id(x)])
                except KeyError:
                    raise ExecutionError(f"{node.label}: operand %{x.name} is not computed before it") from None
        d = get_op(node.op)
        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                res = d.reference(*args, **node.attrs)
        except EinfuseError:
            raise
        except Exception as e:
            raise ExecutionError(f"{node.label}: reference {node.op} failed: {type(e).__name__}: {e}") from e
        if profile is not None:
            entry = profile.setdefault(node.op, [0.0, 0])
            entry[0] += time.perf_counter() - t0
            entry[1] += 1
        res = res if isinstance(res, tuple) else (res,)
        if len(res) != len(node.outputs):
            raise ExecutionError(f"{node.label}: reference gave {len(res)} results for {len(node.outputs)} outputs")
        for o, r in zip(node.outputs, res):
            r = np.asarray(r)
            if check_types and not o.type.matches(r, bindings):
                raise ExecutionError(
                    f"{node.label}: result {DType.from_numpy(r.dtype) if r.dtype in _NP_OK else r.dtype}"
                    f"{list(r.shape)} does not match the inferred type {o.type}"
                )
            env[id(o)] = r
    return {v.name: env[id(v)] for v in graph.outputs}


_NP_OK = {t.np for t in DType}
