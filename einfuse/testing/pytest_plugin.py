"""pytest integration: property-test a backend, a pass or a hand-written kernel in a few lines.

    # conftest.py (optional: adds the --einfuse-profile option and the einfuse_check fixture)
    pytest_plugins = ["einfuse.testing.pytest_plugin"]

    # test_mine.py
    from einfuse.testing.pytest_plugin import backend_property, kernel_property, pass_property

    test_tvm_elementwise = backend_property("tvm", ops=["add", "mul", "exp", "relu"])
    test_fold_batchnorm = pass_property("fold-batchnorm", ops=["conv", "batch_norm", "relu"])
    test_my_gelu = kernel_property("gelu", my_gelu)      # my_gelu(x, *, approximate) -> array

Each returns a test function (hypothesis over `graphs()`, checked with `check()`): a
failure shows the check report and the graph's IR text, and hypothesis shrinks it.

Profiles (hypothesis settings): "einfuse-ci" (the default: 25 examples, derandomized,
no example database, so CI is bounded and repeatable) and "einfuse-long" (500
examples, random, for a local run). Pick one with `--einfuse-profile long` or
EINFUSE_PROFILE=long.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from einfuse.codegen.backend import Kernel, kernel_name
from einfuse.ir.ops import get_op
from einfuse.ir.types import DType
from einfuse.testing.check import check
from einfuse.testing.strategies import graphs

_QUIET = list(HealthCheck)
# No "explain" phase: it re-runs the (compiling) check many times to list covered lines.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
settings.register_profile(
    "einfuse-ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_QUIET,
    print_blob=False,
    phases=_PHASES,
)
settings.register_profile("einfuse-long", max_examples=500, deadline=None, suppress_health_check=_QUIET, phases=_PHASES)

_option_profile: str | None = None


def profile_name() -> str:
    """The active einfuse profile: --einfuse-profile, else EINFUSE_PROFILE, else ci."""
    name = _option_profile or os.environ.get("EINFUSE_PROFILE") or "ci"
    return name if name.startswith("einfuse-") else f"einfuse-{name}"


def profile_settings(**overrides) -> settings:
    return settings(settings.get_profile(profile_name()), **overrides)


def pytest_addoption(parser):
    parser.addoption(
        "--einfuse-profile",
        default=None,
        choices=["ci", "long"],
        help="einfuse property-test profile: ci (bounded, the default) or long",
    )


def pytest_configure(config):
    global _option_profile
    _option_profile = config.getoption("--einfuse-profile", default=None)


@pytest.fixture
def einfuse_check():
    """check() (see einfuse.testing.check); use it inside your own @given tests."""
    return check


# -- property tests -----------------------------------------------------------------


def _settings_wrap(test, max_examples):
    overrides = {"max_examples": max_examples} if max_examples is not None else {}
    return profile_settings(**overrides)(test)


def backend_property(
    backend,
    *,
    ops=None,
    max_nodes: int = 5,
    dtypes=(DType.f32,),
    onnx: bool = False,
    symbolic: bool = True,
    target=None,
    max_examples: int | None = None,
    tolerance=None,
):
    """A test: random graphs over `ops` compiled for `backend` match the reference (and
    onnxruntime when onnx=True). `ops` may be a callable returning the list, called when
    the test first runs (e.g. to ask the backend without importing it at collection)."""

    def strategy():
        return graphs(
            max_nodes=max_nodes,
            ops=ops() if callable(ops) else ops,
            hostile_names=False,
            symbolic=symbolic,
            dtypes_=tuple(dtypes),
            generic=False,
        )

    @given(g=st.deferred(strategy), seed=st.integers(0, 2**16))
    def test(g, seed):
        check(g, backends=[backend], seed=seed, onnx=onnx, target=target, tolerance=tolerance)

    test.__name__ = f"test_backend_{backend if isinstance(backend, str) else type(backend).__name__}"
    return _settings_wrap(test, max_examples)


def pass_property(
    passes,
    *,
    ops=None,
    max_nodes: int = 6,
    dtypes=(DType.f32,),
    backend="reference",
    symbolic: bool = True,
    max_examples: int | None = None,
    tolerance=None,
):
    """A test: running `passes` (a pass, its name, or a list) keeps the outputs of random
    graphs over `ops` (within tolerance)."""
    pipeline = passes if isinstance(passes, (list, tuple)) else [passes]

    @given(
        g=graphs(
            max_nodes=max_nodes, ops=ops, hostile_names=False, symbolic=symbolic, dtypes_=tuple(dtypes), generic=False
        ),
        seed=st.integers(0, 2**16),
    )
    def test(g, seed):
        check(g, backends=[backend], seed=seed, onnx=False, passes=pipeline, tolerance=tolerance)

    test.__name__ = "test_pass_" + "_".join(str(getattr(p, "name", p)).replace("-", "_") for p in pipeline)
    return _settings_wrap(test, max_examples)


class KernelBackend:
    """A backend that runs `kernels[op](*arrays, **attrs)` for those ops and the
    reference for the rest: plugs a hand-written kernel into check()."""

    def __init__(self, kernels: dict[str, Callable], name: str = "kernel"):
        self.kernels = dict(kernels)
        self.name = name

    def compile(self, node, target=None) -> Kernel:
        region = node.attrs["region"]

        def fn(inputs, outputs):
            env = {id(p): x for p, x in zip(region.inputs, inputs)}
            for v, arr in region.constants.values():
                env[id(v)] = arr
            for n in region.nodes:
                args = [None if x is None else env[id(x)] for x in n.inputs]
                impl = self.kernels.get(n.op) or get_op(n.op).reference
                res = impl(*args, **n.attrs)
                res = res if isinstance(res, tuple) else (res,)
                for o, r in zip(n.outputs, res):
                    env[id(o)] = np.asarray(r)
            for dst, v in zip(outputs, region.outputs):
                np.copyto(dst, env[id(v)], casting="same_kind")

        ops = tuple(n.op for n in region.nodes)
        return Kernel(kernel_name(node, self.name), fn, self.name, str(node.attrs["kind"]), ops)


def kernel_property(
    op: str,
    kernel: Callable,
    *,
    dtypes=(DType.f32,),
    context_ops=None,
    max_nodes: int = 3,
    max_examples: int | None = None,
    tolerance=None,
):
    """A test: `kernel(*arrays, **attrs)` computes op `op` like the reference, on random
    graphs holding `op` (alone, or among `context_ops`, so that its operands come from
    real producers)."""
    ops = [op, *(context_ops or [])]
    backend = KernelBackend({op: kernel}, name=f"kernel_{op}")

    @given(
        g=graphs(
            max_nodes=max_nodes if context_ops else 1,
            ops=ops,
            hostile_names=False,
            dtypes_=tuple(dtypes),
            generic=False,
        ),
        seed=st.integers(0, 2**16),
    )
    def test(g, seed):
        from hypothesis import assume

        assume(any(n.op == op for n in g.nodes))
        check(g, backends=[backend], seed=seed, onnx=False, tolerance=tolerance)

    test.__name__ = f"test_kernel_{op}"
    return _settings_wrap(test, max_examples)


__all__ = [
    "KernelBackend",
    "backend_property",
    "einfuse_check",
    "kernel_property",
    "pass_property",
    "profile_name",
    "profile_settings",
]
