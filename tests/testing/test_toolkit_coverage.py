"""Every registered pass and every registered backend is property-tested with the toolkit
(einfuse.testing.pytest_plugin): random graphs over the ops each one acts on, checked
against the reference. A pass or a backend added later without an entry here fails
test_every_pass_is_covered / test_every_backend_is_covered, so coverage cannot quietly
fall behind the registries.

Examples are few and graphs small (bounded for CI); the long profile
(EINFUSE_PROFILE=long) and `einfuse fuzz` dig deeper."""

from __future__ import annotations

import pytest

from einfuse.testing.pytest_plugin import backend_property, pass_property
from tests.testing.test_regressions import OPEN_BUGS, PASS_OPEN_BUGS, TVM_OPEN_BUGS

# The ops each pass rewrites (and a few around them), so that the random graphs give the
# pass something to do. Passes whose subject the graph generator cannot build yet are
# still run over graphs of the ops next to it: they must leave those graphs alone.
PASS_OPS: dict[str, list[str]] = {
    "eliminate-dead-code": ["add", "mul", "relu", "exp", "split", "topk"],
    "fold-constants": ["add", "mul", "exp", "transpose", "reshape", "concat", "cast", "where"],
    "fold-shape-computations": ["shape", "size", "gather", "slice", "concat", "reshape", "unsqueeze", "cast", "mul"],
    "canonicalize": ["gemm", "matmul", "add", "mul", "transpose", "reshape", "flatten", "sub", "neg"],
    "eliminate-common-subexpressions": ["add", "mul", "exp", "relu", "transpose", "reduce_sum"],
    "fold-batchnorm": ["conv", "batch_norm", "matmul", "gemm", "add", "mul", "relu"],
    "fuse": ["add", "mul", "exp", "relu", "reduce_sum", "softmax", "matmul", "transpose", "reshape", "conv"],
    "fuse-sibling-matmuls": ["matmul", "add", "gemm", "relu"],
    "lower-attention": ["attention", "matmul", "softmax", "transpose", "mul"],
    "recognize-attention": ["matmul", "softmax", "transpose", "mul", "div", "add", "where"],
}

# Backends and the ops their property runs over (None: every op the generator covers,
# less open bugs). The TVM property compiles every graph, so it draws fewer, smaller ones.
BACKEND_SETTINGS: dict[str, dict] = {
    "reference": {"max_nodes": 5, "max_examples": 15},
    "tvm": {"max_nodes": 3, "max_examples": 6},
}


def _registered_passes() -> set[str]:
    from einfuse.passes import manager

    return set(manager.registered_passes())


def _registered_backends() -> set[str]:
    from einfuse.codegen import backend

    backend.get_backend("reference")  # loads the built-in backends
    return set(backend.BACKENDS)


def test_every_pass_is_covered():
    missing = _registered_passes() - set(PASS_OPS)
    stale = set(PASS_OPS) - _registered_passes()
    assert not missing, f"passes without a property test: {sorted(missing)} (add them to PASS_OPS)"
    assert not stale, f"PASS_OPS names passes that are not registered: {sorted(stale)}"


def test_every_backend_is_covered():
    assert _registered_backends() == set(BACKEND_SETTINGS)


def _ops_for_backend(name: str) -> list[str]:
    from einfuse.testing.fuzz import backend_ops
    from einfuse.testing.strategies import covered_ops

    open_bugs = TVM_OPEN_BUGS if name == "tvm" else OPEN_BUGS
    return sorted((backend_ops(name) & covered_ops()) - set(open_bugs))


@pytest.mark.parametrize("name", sorted(PASS_OPS))
def test_pass_keeps_what_graphs_compute(name):
    from einfuse.testing.strategies import covered_ops

    ops = [op for op in PASS_OPS[name] if op in covered_ops() and op not in OPEN_BUGS]
    ops = [op for op in ops if (name, op) not in PASS_OPEN_BUGS]
    assert ops, f"no generator recipe for any op of {name}"
    pass_property(name, ops=ops, max_nodes=5, max_examples=15)()


@pytest.mark.parametrize("name", sorted(BACKEND_SETTINGS))
def test_backend_matches_the_reference(name):
    settings = BACKEND_SETTINGS[name]
    backend_property(
        name,
        ops=lambda: _ops_for_backend(name),
        max_nodes=settings["max_nodes"],
        max_examples=settings["max_examples"],
    )()
