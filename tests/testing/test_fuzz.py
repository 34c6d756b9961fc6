"""The fuzzer finds planted bugs and shrinks them to tiny reproducers; `einfuse fuzz`
prints its counts; a bounded fuzz run of the TVM backend (the CI profile of the
2,000-graph run in docs/property-testing.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from einfuse.cli import main
from einfuse.ir.graph import Graph
from einfuse.passes import Pass
from einfuse.passes.pattern import Any, Const, P, RuleSet, rewrite, rule
from einfuse.testing.fuzz import FuzzConfig, fuzz, parse_duration
from einfuse.testing.pytest_plugin import KernelBackend
from einfuse.testing.shrink import replay


def _sum_skipping_last(x, *, axes, keepdims, noop_with_empty_axes):
    """The planted bug: a reduce_sum whose generated loop stops one element early."""
    ax = tuple(axes) if axes else (() if noop_with_empty_axes else tuple(range(x.ndim)))
    for a in ax:
        if x.shape[a] > 1:
            x = np.take(x, range(x.shape[a] - 1), axis=a)
    return np.asarray(np.sum(x, axis=ax, keepdims=keepdims), dtype=x.dtype)


def test_fuzzer_finds_an_off_by_one_reduction_and_shrinks_it(tmp_path):
    buggy = KernelBackend({"reduce_sum": _sum_skipping_last}, name="offbyone")
    report = fuzz(
        FuzzConfig(
            backend=buggy,
            max_graphs=60,
            ops=["reduce_sum", "add", "mul", "exp", "transpose"],
            onnx=False,
            out_dir=tmp_path,
            shrink_seconds=10,
            seed=1,
        )
    )
    sig = ("offbyone", "mismatch", "reduce_sum")
    assert sig in report.findings, report.summary()
    finding = report.findings[sig]
    assert finding.nodes <= 3
    assert (finding.path / "graph.ir").read_text().count("reduce_sum(") == 1
    assert not replay(finding.path, backends=[buggy], onnx=False).ok
    assert replay(finding.path, backends=["reference"], onnx=False).ok


@rule(P("add", P("matmul", Any("x"), Any("w")), Const("bias"), commutative=True))
def _fuse_matmul_bias(x, w, bias, builder):
    """The planted bug: a 'fusion' that forgets the bias."""
    return builder.op("matmul", [x, w])


@dataclass(frozen=True)
class DropBias(Pass):
    """Fuses matmul + bias, dropping the bias (a planted bug)."""

    name: ClassVar[str] = "drop-bias"

    def run(self, graph: Graph) -> Graph:
        return rewrite(graph, RuleSet([_fuse_matmul_bias])).graph


def test_fuzzer_finds_a_fusion_rule_that_drops_a_bias(tmp_path):
    report = fuzz(
        FuzzConfig(
            backend="reference",
            passes=[DropBias()],
            # Hypothesis draws constants it finds in the imported modules, so which test
            # files ran before changes the graphs: the pattern must be common, not lucky
            # (matmul + add, a bias add follows a matmul in about one graph in eight).
            max_graphs=200,
            max_nodes=3,
            ops=["matmul", "add"],
            onnx=False,
            out_dir=tmp_path,
            shrink_seconds=10,
            symbolic=False,
            seed=2,
        )
    )
    findings = [f for s, f in report.findings.items() if s[:2] == ("reference", "mismatch")]
    assert findings, report.summary()
    assert min(f.nodes for f in findings) <= 3
    text = (findings[0].path / "graph.ir").read_text()
    assert "matmul(" in text and "add(" in text


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("5m") == 300 and parse_duration("1h") == 3600


def test_cli_fuzz_prints_counts(tmp_path, capsys):
    ops = "add,mul,exp,relu,reduce_sum,transpose,matmul,softmax,slice,concat"
    args = ["fuzz", "--backend", "reference", "--graphs", "20", "--max-nodes", "4", "--ops", ops]
    code = main([*args, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for key in ("graphs: 20", "ops covered:", "mismatches: 0", "crashes: 0", "distinct failures: 0"):
        assert key in out


def test_cli_fuzz_rejects_bad_options(capsys):
    assert main(["fuzz", "--backend", "reference", "--ops", "nope"]) == 1
    assert "unknown op(s) nope" in capsys.readouterr().err
    assert main(["fuzz", "--backend", "reference", "--time", "soon"]) == 1


@pytest.mark.slow
def test_tvm_fuzz_ci_profile(tmp_path):
    """A bounded run of `einfuse fuzz --backend tvm`: no crash, no unexplained mismatch."""
    from einfuse.testing.fuzz import backend_ops
    from einfuse.testing.strategies import covered_ops
    from tests.testing.test_regressions import TVM_OPEN_BUGS

    ops = sorted((backend_ops("tvm") & covered_ops()) - set(TVM_OPEN_BUGS))
    # isolated, with a timeout: a compile that never ends fails this test instead of stalling CI
    config = FuzzConfig(
        backend="tvm",
        ops=ops,
        max_graphs=25,
        max_nodes=5,
        out_dir=tmp_path,
        shrink_seconds=20,
        seed=3,
        isolate=True,
        graph_timeout=90,
    )
    report = fuzz(config)
    assert not report.unexplained, report.summary()
    assert report.graphs == 25


def test_a_graph_that_hangs_is_saved_as_a_reproducer(tmp_path):
    import time

    def slow_relu(x):
        time.sleep(0.6)
        return np.maximum(x, 0).astype(x.dtype)

    slow = KernelBackend({"relu": slow_relu}, name="slow")
    report = fuzz(
        FuzzConfig(
            backend=slow, ops=["relu"], max_graphs=1, max_nodes=1, onnx=False, out_dir=tmp_path, graph_timeout=0.2
        )
    )
    assert len(report.hangs) == 1
    assert "still running after" in (report.hangs[0] / "README.txt").read_text()
    assert "hangs (past the graph timeout): 1" in report.summary()
