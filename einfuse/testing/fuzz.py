"""The graph fuzzer behind `einfuse fuzz`: random typed graphs over the ops a backend
supports, checked against the reference and onnxruntime; each new kind of failure is
shrunk (hypothesis, then delta debugging) and written as a reproducer.

    report = fuzz(FuzzConfig(backend="tvm", max_graphs=2000, out_dir="fuzz-out"))
    print(report.summary())

Graphs are drawn by hypothesis in chunks (a fresh seed per chunk); a failing example
makes hypothesis shrink the draw (with a time budget), then `shrink.shrink` cuts the
graph down further, and `write_reproducer` saves it. A failure signature (backend,
mismatch or crash, op at fault) already seen is counted but not shrunk again.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from einfuse.errors import EinfuseError
from einfuse.ir.types import DType

# check, shrink and strategies (hypothesis) are imported where used, so that the
# `einfuse` command can register `fuzz` without paying for them.
ORT = "onnxruntime"

# Failure signatures with a known, accepted explanation: counted as "explained".
# (backend, kind, op) -> why. Empty while nothing is accepted.
EXPLAINED: dict[tuple, str] = {}


def backend_ops(backend) -> frozenset[str]:
    """The ops `backend` (a name or a Backend) can compile, as far as it says."""
    from einfuse.codegen.backend import get_backend
    from einfuse.ir.ops import REGISTRY, get_op

    get_op("add")
    import inspect

    if backend == ORT:  # the reference against onnxruntime alone: every op
        return frozenset(REGISTRY) - {"fused"}
    obj = get_backend(backend) if isinstance(backend, str) else backend
    # The backend object, or its module (einfuse.codegen.tvm.supported_ops()), may say.
    for where in (obj, inspect.getmodule(type(obj))):
        ops = getattr(where, "supported_ops", None)
        if callable(ops):
            ops = ops()
        if ops:
            return frozenset(ops)
    return frozenset(REGISTRY) - {"fused"}


@dataclass
class FuzzConfig:
    backend: Any = "reference"  # a backend name or object
    max_graphs: int | None = None
    time_budget: float | None = None  # seconds
    ops: list[str] | None = None  # default: the backend's ops that graphs() has a recipe for
    onnx: bool = True  # also compare with onnxruntime
    max_nodes: int = 8
    dtypes: tuple = (DType.f32,)
    symbolic: bool = True
    seed: int = 0
    out_dir: str | Path | None = "fuzz-out"
    shrink_seconds: float = 60.0  # per new failure, hypothesis + delta debugging
    chunk: int = 50  # examples per hypothesis run
    target: Any = None
    passes: list | None = None
    graph_timeout: float = 120.0  # a graph still running after this long is a "hang" finding
    # Check graphs in a child process (backends given by name only), so that a compile
    # that never ends is killed after graph_timeout and fuzzing goes on.
    isolate: bool = False


@dataclass
class Finding:
    signature: tuple
    count: int
    nodes: int  # of the shrunk reproducer
    message: str
    path: Path | None
    explained: str | None = None
    replays: bool | None = None  # does the saved reproducer fail again when loaded from disk?


@dataclass
class FuzzReport:
    graphs: int = 0
    nodes: int = 0
    ops: Counter = field(default_factory=Counter)
    mismatches: int = 0  # graphs with a mismatch
    crashes: int = 0  # graphs whose backend (or the reference) crashed
    unsupported: int = 0  # graphs the backend refused cleanly
    onnx_checked: int = 0
    onnx_skipped: Counter = field(default_factory=Counter)
    findings: dict = field(default_factory=dict)  # signature -> Finding
    seconds: float = 0.0
    errors: list = field(default_factory=list)  # generator errors (bugs in the toolkit)
    hangs: list = field(default_factory=list)  # reproducers of graphs that ran past graph_timeout

    @property
    def unexplained(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.explained is None]

    def summary(self) -> str:
        lines = [
            f"graphs: {self.graphs} ({self.nodes} nodes) in {self.seconds:.0f} s",
            f"ops covered: {len(self.ops)}",
            f"mismatches: {self.mismatches}",
            f"crashes: {self.crashes}",
            f"unsupported (clean refusals): {self.unsupported}",
            f"onnxruntime compared: {self.onnx_checked} graphs"
            + (f", skipped {sum(self.onnx_skipped.values())}" if self.onnx_skipped else ""),
            f"hangs (past the graph timeout): {len(self.hangs)}",
            f"distinct failures: {len(self.findings)} ({len(self.unexplained)} unexplained)",
        ]
        for f in self.findings.values():
            tag = f"explained: {f.explained}" if f.explained else "UNEXPLAINED"
            if f.replays is False:
                tag += " (does not replay from the saved files)"
            where = f" -> {f.path}" if f.path else ""
            lines.append(
                f"  {'/'.join(map(str, f.signature))}: {f.count} graph(s), shrunk to {f.nodes} node(s), {tag}{where}"
            )
        for h in self.hangs:
            lines.append(f"  hang -> {h}")
        for e in self.errors[:5]:
            lines.append(f"  generator error: {e}")
        return "\n".join(lines)


class _Found(Exception):
    pass


class _Watchdog:
    """Saves the graph being checked as a reproducer when its check runs longer than
    config.graph_timeout (a compile that never ends cannot be interrupted from Python,
    but it can be reported): out_dir/hang-<backend>-<hash>, and a line on stderr."""

    def __init__(
        self, config: FuzzConfig, graph, input_seed: int, backend: str, report: FuzzReport, enabled: bool = True
    ):
        self.config, self.graph, self.seed, self.backend = config, graph, input_seed, backend
        self.report = report
        self.enabled = enabled
        self.timer = None

    def __enter__(self):
        import threading

        if self.enabled and self.config.out_dir is not None and self.config.graph_timeout:
            self.timer = threading.Timer(self.config.graph_timeout, self._save)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        return False

    def _save(self) -> None:
        from einfuse.testing.shrink import write_reproducer
        from einfuse.testing.strategies import random_inputs

        message = f"still running after {self.config.graph_timeout:.0f} s (a compile or kernel that hangs)"
        path = write_reproducer(
            self.config.out_dir,
            self.graph,
            random_inputs(self.graph, self.seed),
            backend=self.backend,
            message=message,
            signature=(self.backend, "hang", "graph"),
            passes=self.config.passes,
        )
        self.report.hangs.append(path)
        print(f"\nfuzz: a graph is {message}; saved to {path}", file=sys.stderr, flush=True)


def fuzz(config: FuzzConfig, progress: Callable[[FuzzReport], None] | None = None) -> FuzzReport:
    from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
    from hypothesis import strategies as st

    from einfuse.testing.strategies import covered_ops, graphs, random_inputs

    report = FuzzReport()
    ops = sorted(set(config.ops) if config.ops is not None else backend_ops(config.backend) & covered_ops())
    if not ops:
        raise EinfuseError(f"no op to fuzz for backend {config.backend!r}")
    backend_name = config.backend if isinstance(config.backend, str) else getattr(config.backend, "name", "custom")
    backends = [] if backend_name == ORT else [config.backend]
    start = time.monotonic()
    rnd = random.Random(config.seed)

    def done() -> bool:
        if config.max_graphs is not None and report.graphs >= config.max_graphs:
            return True
        return config.time_budget is not None and time.monotonic() - start >= config.time_budget

    isolated = config.isolate and isinstance(config.backend, str) and not config.passes
    checker = _IsolatedChecker(backend_name, config) if isolated else _InProcessChecker(backends, config)

    def run_check(g, input_seed):
        inputs = random_inputs(g, input_seed)
        with _Watchdog(config, g, input_seed, backend_name, report, enabled=not isolated):
            r = checker(g, inputs, onnx=config.onnx, localize=False)
            if not r.ok and not r.hang:
                # Only failing graphs pay for localization (a compile per prefix); it names
                # the op at fault, which tells one bug from another.
                r = checker(g, inputs, onnx=config.onnx, localize=True)
        return r

    chunk_index = 0
    while not done():
        chunk_index += 1
        # Op order varies per chunk so that hypothesis's bias towards early choices
        # does not always favour the same ops.
        order = list(ops)
        rnd.shuffle(order)
        state: dict = {"target": None, "best": None, "shrink_deadline": None}
        prop = _make_property(state, report, config, run_check, done, progress)

        test = given(
            graphs(
                max_nodes=config.max_nodes,
                ops=order,
                hostile_names=False,
                symbolic=config.symbolic,
                dtypes_=tuple(config.dtypes),
                generic=False,
            ),
            st.integers(0, 2**16),
        )(prop)
        test = settings(
            max_examples=config.chunk,
            deadline=None,
            database=None,
            # explicit: on CI (CI=true) hypothesis' default profile derandomizes, which would
            # ignore the per-chunk seed below and draw the same graphs in every chunk
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
            report_multiple_bugs=False,
            print_blob=False,
            verbosity=Verbosity.quiet,
        )(test)
        test = seed(config.seed * 100003 + chunk_index)(test)
        try:
            test()
        except _Found:
            pass
        except Exception as e:  # noqa: BLE001 - hypothesis' flakiness errors, generator bugs
            if state["best"] is None:
                report.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if state["best"] is not None:
            _record(report, config, state["target"], *state["best"], checker=checker)
        report.seconds = time.monotonic() - start
        if chunk_index > 10 and report.graphs == 0:
            break  # nothing can be generated: do not spin
    checker.close()
    report.seconds = time.monotonic() - start
    return report


def _make_property(state: dict, report: FuzzReport, config: FuzzConfig, run_check, done, progress):
    """The hypothesis test body of one chunk: checks a graph, and once a new kind of
    failure shows, keeps the smallest example hypothesis' shrinker finds for it."""

    def prop(g, input_seed):
        if state["target"] is None:
            if done():
                return
            r = run_check(g, input_seed)
            _count(report, g, r)
            if progress is not None:
                progress(report)
            sig = r.signature()
            if sig is None:
                return
            if sig in report.findings:
                report.findings[sig].count += 1
                return
            if r.hang:
                # no shrinking: every candidate could cost the whole timeout
                _record_hang(report, config, sig, g, input_seed)
                return
            state["target"] = sig
            state["best"] = (g, input_seed, r)
            state["shrink_deadline"] = time.monotonic() + config.shrink_seconds / 2
            raise _Found(sig)
        # hypothesis is shrinking: keep the smallest example with the same failure
        if time.monotonic() > state["shrink_deadline"]:
            raise _Found(state["target"])  # out of time: let hypothesis finish at once
        r = run_check(g, input_seed)
        if r.signature() == state["target"]:
            if len(g.nodes) <= len(state["best"][0].nodes):
                state["best"] = (g, input_seed, r)
            raise _Found(state["target"])

    return prop


def _count(report: FuzzReport, g, r: Outcome) -> None:
    report.graphs += 1
    report.nodes += len(g.nodes)
    report.ops.update(n.op for n in g.nodes)
    if r.mismatches:
        report.mismatches += 1
    if r.crashes:
        report.crashes += 1
    if r.unsupported:
        report.unsupported += 1
    skipped = [n for n in r.notes if n.startswith("onnxruntime skipped")]
    if skipped:
        report.onnx_skipped[skipped[0][:100]] += 1
    elif ORT in r.backends:
        report.onnx_checked += 1


def _record(report: FuzzReport, config: FuzzConfig, sig, g, input_seed, result, checker) -> None:
    """Delta-debugs the failing example and writes its reproducer."""
    from einfuse.testing.shrink import load_reproducer, shrink, write_reproducer
    from einfuse.testing.strategies import random_inputs

    inputs = random_inputs(g, input_seed)
    onnx = sig[0] == ORT

    def same_failure(graph, ins) -> bool:
        r = checker(graph, ins, onnx=onnx, localize=False)
        if r.signature() is None or r.signature()[:2] != sig[:2]:
            return False
        if not r.ok and not r.hang:
            r = checker(graph, ins, onnx=onnx, localize=True)
        return r.signature() == sig

    small, small_inputs = shrink(g, inputs, same_failure, max_seconds=config.shrink_seconds / 2)
    final = checker(small, small_inputs, onnx=onnx, localize=True)
    path = None
    replays = None
    if config.out_dir is not None:
        path = write_reproducer(
            config.out_dir, small, small_inputs, backend=sig[0], message=final.text, signature=sig, passes=config.passes
        )
        # Replaying from the files catches failures that depend on state the files do not
        # carry (array strides, caches): those are reported as not replaying.
        graph, ins, _ = load_reproducer(path)
        replays = checker(graph, ins, onnx=onnx, localize=False).signature() is not None
    report.findings[sig] = Finding(sig, 1, len(small.nodes), final.text, path, EXPLAINED.get(sig), replays)


def _record_hang(report: FuzzReport, config: FuzzConfig, sig, g, input_seed) -> None:
    from einfuse.testing.shrink import write_reproducer
    from einfuse.testing.strategies import random_inputs

    message = f"still running after {config.graph_timeout:.0f} s (a compile or kernel that hangs): killed"
    path = None
    if config.out_dir is not None:
        path = write_reproducer(
            config.out_dir,
            g,
            random_inputs(g, input_seed),
            backend=sig[0],
            message=message,
            signature=sig,
            passes=config.passes,
        )
        report.hangs.append(path)
    report.findings[sig] = Finding(sig, 1, len(g.nodes), message, path, EXPLAINED.get(sig), None)


# -- checking, in process or in a child ------------------------------------------------


@dataclass
class Outcome:
    """What the fuzzer keeps of one check (picklable, so a child process can send it)."""

    backends: list
    sig: tuple | None
    mismatches: int = 0
    crashes: int = 0  # real crashes
    unsupported: int = 0  # clean refusals
    notes: list = field(default_factory=list)
    text: str = ""
    hang: bool = False

    @property
    def ok(self) -> bool:
        return self.sig is None

    def signature(self) -> tuple | None:
        return self.sig

    @staticmethod
    def of(r) -> Outcome:
        return Outcome(
            backends=list(r.backends),
            sig=r.signature(),
            mismatches=len(r.mismatches),
            crashes=sum(not c.unsupported for c in r.crashes),
            unsupported=sum(c.unsupported for c in r.crashes),
            notes=list(r.notes),
            text=str(r),
        )


class _InProcessChecker:
    def __init__(self, backends: list, config: FuzzConfig):
        self.backends, self.config = backends, config

    def __call__(self, graph, inputs, *, onnx: bool, localize: bool) -> Outcome:
        from einfuse.testing.check import check

        r = check(
            graph,
            backends=self.backends,
            inputs=inputs,
            onnx=onnx,
            target=self.config.target,
            passes=self.config.passes,
            localize=localize,
            raise_on_failure=False,
        )
        return Outcome.of(r)

    def close(self) -> None:
        """Nothing to release: this checker runs in the fuzzing process (the isolated one
        owns a child process)."""


class _IsolatedChecker:
    """Checks in a child process that is killed (and restarted) when a check runs
    longer than config.graph_timeout."""

    def __init__(self, backend: str, config: FuzzConfig):
        import multiprocessing

        self.backend, self.config = backend, config
        self.ctx = multiprocessing.get_context("spawn")  # no fork of a process holding TVM's threads
        self.proc = None
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.backend, self.config.target), daemon=True)
        self.proc.start()
        child.close()
        self.conn.recv()  # "ready": imports and the backend are loaded (not timed)

    def __call__(self, graph, inputs, *, onnx: bool, localize: bool) -> Outcome:
        from einfuse.ir.printer import print_graph

        self.conn.send((print_graph(graph, constants="full"), inputs, onnx, localize))
        if self.conn.poll(self.config.graph_timeout):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self._start()
        return Outcome(
            backends=[self.backend],
            sig=(self.backend, "hang", "graph"),
            crashes=1,
            hang=True,
            text=f"{self.backend}: still running after {self.config.graph_timeout:.0f} s: killed",
        )

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(10)
        finally:
            if self.proc.is_alive():
                self.proc.kill()


def _worker(conn, backend: str, target) -> None:
    from einfuse.ir.parser import parse
    from einfuse.testing.check import check

    if backend != ORT:
        from einfuse.codegen.backend import get_backend

        get_backend(backend)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        text, inputs, onnx, localize = msg
        try:
            r = check(
                parse(text),
                backends=[] if backend == ORT else [backend],
                inputs=inputs,
                onnx=onnx,
                target=target,
                localize=localize,
                raise_on_failure=False,
            )
            conn.send(Outcome.of(r))
        except Exception as e:  # noqa: BLE001 - the checker itself failed: report it as a crash of the toolkit
            conn.send(
                Outcome(
                    backends=[backend],
                    sig=("toolkit", "crash", type(e).__name__),
                    crashes=1,
                    text=f"toolkit: {type(e).__name__}: {e}",
                )
            )


# -- command line -------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        from einfuse.errors import InputError

        raise InputError(f"--time expects a duration like 90s, 5m or 1h, got {text!r}") from None


class ProgressLine:
    """A one-line progress display on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int | None, budget: float | None, stream=None):
        self.total = total
        self.budget = budget
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, report: FuzzReport) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 15.0):
            return
        self.last = now
        elapsed = now - self.start
        of = f"/{self.total}" if self.total else ""
        left = f", {max(self.budget - elapsed, 0):.0f} s left" if self.budget else ""
        line = (
            f"fuzz: {report.graphs}{of} graphs, {len(report.ops)} ops, {report.mismatches} mismatches, "
            f"{report.crashes} crashes, {len(report.findings)} distinct{left}"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def add_arguments(p) -> None:
    """The `einfuse fuzz` options (cli.py registers the subcommand)."""
    p.add_argument(
        "--backend",
        default=None,
        help="backend to test (default: tvm; with --replay, the "
        "reproducer's); 'onnxruntime' checks only the reference against onnxruntime",
    )
    p.add_argument("--time", metavar="DURATION", help="stop after this long (e.g. 90s, 5m, 1h)")
    p.add_argument("--graphs", type=int, metavar="N", help="stop after N graphs (default 200 without --time)")
    p.add_argument("--ops", metavar="OP,...", help="only these ops (default: every op the backend supports)")
    p.add_argument("--max-nodes", type=int, default=8, metavar="N", help="nodes per graph at most (default 8)")
    p.add_argument("--dtypes", default="f32", metavar="DT,...", help="graph input dtypes (default f32)")
    p.add_argument("--no-onnx", action="store_true", help="do not compare with onnxruntime")
    p.add_argument("--static", action="store_true", help="no symbolic dims")
    p.add_argument("--seed", type=int, default=0, help="fuzzer seed (default 0)")
    p.add_argument("--out", default="fuzz-out", metavar="DIR", help="where reproducers go (default fuzz-out)")
    p.add_argument(
        "--shrink-time", type=float, default=60.0, metavar="SEC", help="time to shrink each new failure (default 60)"
    )
    p.add_argument(
        "--graph-timeout",
        type=float,
        default=120.0,
        metavar="SEC",
        help="a graph whose check runs longer than SEC seconds is a hang: its checker process is killed and the "
        "graph saved as a reproducer (default 120)",
    )
    p.add_argument("--replay", metavar="DIR", help="re-run a reproducer folder instead of fuzzing")


def cli_main(args) -> int:
    """`einfuse fuzz`: exit 0 when nothing unexplained failed, 1 otherwise."""
    from einfuse.errors import InputError

    if args.replay:
        from einfuse.testing.shrink import replay

        result = replay(args.replay, backends=[args.backend] if args.backend else None)
        print(result)
        return 0 if result.ok else 1
    dtypes = []
    for name in args.dtypes.split(","):
        try:
            dtypes.append(DType.parse(name.strip()))
        except ValueError:
            raise InputError(f"--dtypes: unknown dtype {name.strip()!r}") from None
    ops = [o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else None
    if ops:
        from einfuse.ir.ops import REGISTRY, get_op

        get_op("add")
        unknown = [o for o in ops if o not in REGISTRY]
        if unknown:
            raise InputError(f"--ops: unknown op(s) {', '.join(unknown)}")
    backend = args.backend or "tvm"
    budget = parse_duration(args.time) if args.time else None
    max_graphs = args.graphs if args.graphs is not None else (None if budget else 200)
    config = FuzzConfig(
        backend=backend,
        max_graphs=max_graphs,
        time_budget=budget,
        ops=ops,
        onnx=not args.no_onnx,
        max_nodes=args.max_nodes,
        dtypes=tuple(dtypes),
        symbolic=not args.static,
        seed=args.seed,
        out_dir=args.out,
        shrink_seconds=args.shrink_time,
        graph_timeout=args.graph_timeout,
        isolate=True,
    )
    if backend != ORT:
        from einfuse.codegen.backend import get_backend

        get_backend(backend)  # an unknown backend fails here, cleanly
    line = ProgressLine(max_graphs, budget)
    try:
        report = fuzz(config, progress=line)
    finally:
        line.close()
    print(report.summary())
    return 0 if not report.unexplained and not report.errors and not report.hangs else 1
