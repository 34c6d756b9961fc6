"""The ONNX conformance runner: every ONNX node test case through import + reference execution.

`run_conformance()` runs each case of `onnx.backend.test.case.node.collect_testcases()`:
it imports the case model with `import_onnx`, runs it with the numpy reference
evaluator on the case's inputs, and compares every output with the expected one.
The CLI (`einfuse conformance`) only formats the returned `ConformanceReport`.

Outcome of a case:

- passed:       every output has the expected dtype, shape and values (within the case's
                rtol/atol, `np.testing.assert_allclose` semantics, NaN equal to NaN).
- specialized:  passed, but only after binding graph inputs that feed static-parameter
                operands (axes, shapes...) to the case's values: import raised
                `DynamicOperandError` naming a graph input, and we retried with that
                input bound (repeatedly). Counts as a pass, shown in its own column.
- failed:       a wrong answer: an output differs in dtype, shape or values.
- unsupported:  import or run raised a clean einfuse error (an `EinfuseError` subclass), or
                the case feeds sequences/optionals, which einfuse does not model.
- crashed:      a bug: any other exception, the bare `EinfuseError` that wraps converter
                bugs and unknown core ops, an einfuse error raised *from* a non-einfuse
                exception (a reference or inference function that blew up), a reference
                result that contradicts shape inference (at run time or while folding
                constants: the ONNX inputs are valid, so einfuse disagrees with itself),
                or a case that ran over the time limit. This count must be zero.

The op of a case is the op type of its single node (`domain.OpType` outside the default
domain). Multi-node cases are the `*_expanded` function bodies of a single-node case
(`test_softmax_axis_0_expanded` is Softmax written with ReduceMax/Exp/...): they count
under the op of that single-node case, so a row answers "does einfuse run op X", in
both its native and its expanded form. A multi-node case without such a twin counts
under its first node that is not plumbing (Constant, Identity, Cast, Shape...).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from einfuse.errors import EinfuseError

PASSED = "passed"
SPECIALIZED = "specialized"
FAILED = "failed"
UNSUPPORTED = "unsupported"
CRASHED = "crashed"
OUTCOMES = (PASSED, SPECIALIZED, FAILED, UNSUPPORTED, CRASHED)

DEFAULT_TIMEOUT = 30.0  # seconds per case; the slowest real cases take about a second

# Nodes that only move or convert data; skipped when naming a multi-node case by its first op.
_PLUMBING = frozenset({"Constant", "Identity", "Cast", "CastLike", "Shape", "Size"})
_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")

# Clean-looking einfuse errors that report einfuse disagreeing with itself (reference
# vs inference), raised without a cause to detect them by.
_SELF_CONTRADICTIONS = re.compile(
    r"does not match the inferred type"  # codegen.reference._run
    r"|folded \S+ gave .*, inference said"  # frontends.onnx.ConvertCtx._fold
    r"|could not fold constant"  # idem, the reference raised
)


@dataclass
class CaseResult:
    name: str
    op: str
    outcome: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class OpSummary:
    op: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def passed(self) -> int:
        """Passes, specialized ones included."""
        return self.counts[PASSED] + self.counts[SPECIALIZED]


@dataclass
class ConformanceReport:
    cases: list[CaseResult]

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def passed(self) -> int:
        """Passes, specialized ones included."""
        return self.count(PASSED) + self.count(SPECIALIZED)

    @property
    def pass_rate(self) -> float:
        """Percentage of cases that pass (specialized included); 0 for an empty report."""
        return 100.0 * self.passed / self.total if self.total else 0.0

    def by_op(self) -> dict[str, OpSummary]:
        """Per-op counts, ordered by op name."""
        out: dict[str, OpSummary] = {}
        for c in sorted(self.cases, key=lambda c: c.op.lower()):
            out.setdefault(c.op, OpSummary(c.op)).counts[c.outcome] += 1
        return out

    def summary_line(self) -> str:
        return (
            f"total: {self.passed}/{self.total} passed ({self.pass_rate:.1f}%), "
            f"{self.count(FAILED)} failed, {self.count(UNSUPPORTED)} unsupported, {self.count(CRASHED)} crashed"
        )

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "passed": self.passed,
            "pass_rate": round(self.pass_rate, 2),
            "counts": {o: self.count(o) for o in OUTCOMES},
            "cases": [asdict(c) for c in self.cases],
        }


# ----------------------------------------------------------------------------- cases


def collect_cases() -> list:
    """The ONNX node test cases (building them takes a few seconds and warns a lot)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(collect_testcases())


def _node_op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def case_ops(cases: list) -> dict[str, str]:
    """{case name: op label} following the rules in the module docstring."""
    single = {c.name: _node_op(c.model.graph.node[0]) for c in cases if len(c.model.graph.node) == 1}
    out = {}
    for c in cases:
        nodes = c.model.graph.node
        if c.name in single:
            out[c.name] = single[c.name]
            continue
        twin = single.get(_EXPANDED.sub("", c.name))
        if twin is not None:
            out[c.name] = twin
            continue
        real = [n for n in nodes if n.op_type not in _PLUMBING]
        out[c.name] = _node_op((real or list(nodes))[0]) if len(nodes) else "(empty)"
    return out


def _matches(filter: str | None, name: str, op: str) -> bool:
    if not filter:
        return True
    f = filter.lower()
    return f in name.lower() or f in op.lower()


# ------------------------------------------------------------------------ one case


class CaseTimeout(BaseException):
    """Raised in a case that runs too long. A BaseException so that converters'
    `except Exception` wrappers cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    # SIGALRM interrupts pure-Python loops; a single long numpy call finishes first.
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Unsupported(Exception):
    """The case itself uses something einfuse does not model (sequences, optionals)."""


def _as_array(x, where: str) -> np.ndarray:
    from einfuse.frontends.onnx_io import tensor_to_numpy

    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):  # 0-d results are sometimes stored as numpy scalars
        return np.asarray(x)
    if isinstance(x, onnx.TensorProto):  # types numpy lacks (bf16, float8, int4...)
        return tensor_to_numpy(x, where=where)
    kind = "an optional (None)" if x is None else f"a {type(x).__name__} (sequence/optional)"
    raise _Unsupported(f"{where} is {kind}; einfuse only supports tensors")


def _is_internal(e: BaseException) -> bool:
    """Is this exception a bug in einfuse rather than a clean refusal?"""
    if not isinstance(e, EinfuseError):
        return True
    # The bare base class is what convert_model wraps converter bugs in, and what
    # make_node raises for a core op nobody registered.
    if type(e) is EinfuseError:
        return True
    if _SELF_CONTRADICTIONS.search(e.message):
        return True
    # A clean error raised `from` a foreign exception wraps a crash (reference or
    # inference functions that raised TypeError, IndexError...).
    cause = e.__cause__
    while cause is not None:
        if not isinstance(cause, EinfuseError):
            return True
        cause = cause.__cause__
    return False


def _one_line(e: BaseException) -> str:
    text = e.message if isinstance(e, EinfuseError) else str(e)
    text = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def compare_output(i: int, name: str, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> str:
    """'' when `actual` matches `expected`, else a one-line description of the difference."""
    label = f"output {i} ({name!r})"
    if actual.dtype != expected.dtype:
        return f"{label}: dtype {actual.dtype}, expected {expected.dtype}"
    if actual.shape != expected.shape:
        return f"{label}: shape {list(actual.shape)}, expected {list(expected.shape)}"
    if actual.size == 0:
        return ""
    kind = expected.dtype.kind
    if kind == "b" or kind not in "iuf" and not _is_ml_float(expected.dtype):
        bad = actual != expected
    else:
        # assert_allclose: |actual - expected| <= atol + rtol * |expected|, NaN == NaN.
        # float64 holds every float type exactly (ml_dtypes ones included) and ints up to 2**53.
        a = actual.astype(np.float64)
        e = expected.astype(np.float64)
        bad = ~np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return ""
    first = tuple(int(k) for k in np.argwhere(bad)[0])
    msg = f"{label}: {n_bad}/{actual.size} values differ; at {list(first)} got {actual[first]}, "
    msg += f"expected {expected[first]}"
    if kind in "iuf" or _is_ml_float(expected.dtype):
        with np.errstate(all="ignore"):
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))[bad]
        finite = diff[np.isfinite(diff)]
        if finite.size:
            msg += f" (max abs diff {float(finite.max()):.3g}, rtol={rtol:g}, atol={atol:g})"
    return msg


def _is_ml_float(dt: np.dtype) -> bool:
    # ml_dtypes floats (bfloat16, float8...) have kind 'V' but convert to float64 exactly.
    return dt.kind == "V" and dt.names is None and dt.itemsize <= 2 and "float" in dt.name


def _check_data_set(case, inputs: list, expected: list) -> tuple[str, str]:
    from einfuse.codegen.reference import run
    from einfuse.frontends.onnx import DynamicOperandError, import_onnx

    graph = case.model.graph
    init = {t.name for t in graph.initializer}
    names = [vi.name for vi in graph.input if vi.name not in init]
    if len(inputs) > len(names):
        raise _Unsupported(f"the case gives {len(inputs)} inputs for {len(names)} graph inputs")
    feeds = {n: _as_array(x, f"input {n!r}") for n, x in zip(names, inputs)}
    wanted = [_as_array(x, f"expected output {i}") for i, x in enumerate(expected)]

    bind: dict[str, np.ndarray] = {}
    while True:
        try:
            g = import_onnx(case.model, bind_inputs=dict(bind))
            break
        except DynamicOperandError as e:
            if e.value_name in feeds and e.value_name not in bind:
                # A copy: the graph freezes its constants, which must not touch the case's data.
                bind[e.value_name] = feeds[e.value_name].copy()
                continue  # one more input becomes a constant; retry
            raise
    out = run(g, {n: a for n, a in feeds.items() if n not in bind})
    got = list(out.values())
    if len(got) != len(wanted):
        return FAILED, f"{len(got)} outputs, expected {len(wanted)}"
    out_names = [vi.name for vi in graph.output]
    for i, (a, e) in enumerate(zip(got, wanted)):
        name = out_names[i] if i < len(out_names) else str(i)
        diff = compare_output(i, name, np.asarray(a), e, case.rtol, case.atol)
        if diff:
            return FAILED, diff
    if bind:
        return SPECIALIZED, "bound " + ", ".join(repr(n) for n in bind)
    return PASSED, ""


def run_case(case, op: str = "", timeout: float | None = DEFAULT_TIMEOUT) -> CaseResult:
    """Runs one conformance case; never raises (except KeyboardInterrupt and friends)."""
    start = time.perf_counter()
    outcome, message = PASSED, ""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"), _time_limit(timeout):
            warnings.simplefilter("ignore")
            for inputs, expected in case.data_sets:
                outcome_i, message_i = _check_data_set(case, list(inputs), list(expected))
                if outcome_i != PASSED:
                    outcome, message = outcome_i, message_i
                    if outcome_i != SPECIALIZED:
                        break
    except CaseTimeout:
        outcome, message = CRASHED, f"timed out after {timeout:g} s"
    except _Unsupported as e:
        outcome, message = UNSUPPORTED, str(e)
    except Exception as e:  # noqa: BLE001 - classifying every exception is the point
        outcome = CRASHED if _is_internal(e) else UNSUPPORTED
        message = _one_line(e)
    return CaseResult(case.name, op, outcome, message, round(time.perf_counter() - start, 4))


# ---------------------------------------------------------------------------- runner

# Cases handed to forked workers (set before the pool starts, inherited by fork).
_WORKER_CASES: list = []


def _run_indexed(i: int, op: str, timeout: float | None) -> tuple[int, CaseResult]:
    return i, run_case(_WORKER_CASES[i], op, timeout)


def run_conformance(
    filter: str | None = None,
    progress: bool | Callable[[int, int, CaseResult], None] = False,
    *,
    jobs: int = 1,
    timeout: float | None = DEFAULT_TIMEOUT,
    cases: list | None = None,
) -> ConformanceReport:
    """Runs the ONNX node conformance cases whose name or op contains `filter`
    (case-insensitive).

    progress: True shows a rich progress bar on stderr; a callable is called as
    fn(done, total, result) after each case. jobs > 1 runs cases in forked worker
    processes (POSIX only; falls back to one process elsewhere). cases: run these
    instead of collecting ONNX's (objects with .name, .model, .data_sets, .rtol, .atol).
    """
    all_cases = collect_cases() if cases is None else list(cases)
    ops = case_ops(all_cases)
    selected = [c for c in all_cases if _matches(filter, c.name, ops[c.name])]
    results: list[CaseResult | None] = [None] * len(selected)

    with _progress_reporter(progress, len(selected)) as report:
        if jobs > 1 and len(selected) > 1 and "fork" in multiprocessing.get_all_start_methods():
            global _WORKER_CASES
            _WORKER_CASES = selected
            try:
                ctx = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                    futures = [pool.submit(_run_indexed, i, ops[c.name], timeout) for i, c in enumerate(selected)]
                    for fut in as_completed(futures):
                        i, res = fut.result()
                        results[i] = res
                        report(res)
            finally:
                _WORKER_CASES = []
        else:
            for i, c in enumerate(selected):
                results[i] = run_case(c, ops[c.name], timeout)
                report(results[i])
    return ConformanceReport([r for r in results if r is not None])


@contextlib.contextmanager
def _progress_reporter(progress, total: int) -> Iterator[Callable[[CaseResult], None]]:
    done = 0
    if callable(progress):

        def call(res: CaseResult) -> None:
            nonlocal done
            done += 1
            progress(done, total, res)

        yield call
        return
    if not progress:
        yield lambda res: None
        return

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("conformance"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task("", total=total)

        def advance(res: CaseResult) -> None:
            bar.update(task, advance=1, description=res.name)

        yield advance


__all__ = [
    "CRASHED",
    "FAILED",
    "OUTCOMES",
    "PASSED",
    "SPECIALIZED",
    "UNSUPPORTED",
    "CaseResult",
    "ConformanceReport",
    "OpSummary",
    "case_ops",
    "collect_cases",
    "compare_output",
    "run_case",
    "run_conformance",
]
