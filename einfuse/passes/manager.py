"""Passes, their registry, and the PassManager that runs a pipeline of them.

A pass is a small frozen dataclass: its fields are its options, `name` is its stable
kebab-case name (pipelines, the CLI, dump file names), its docstring is one line
saying what it does, and `run(graph)` returns the transformed graph (the same object,
mutated, or a new one):

    @register_pass
    @dataclass(frozen=True)
    class FoldConstants(Pass):
        \"\"\"Evaluates nodes whose operands are all constants.\"\"\"

        name: ClassVar[str] = "fold-constants"
        max_bytes: int = 16 << 20

        def run(self, graph: Graph) -> Graph: ...

    pm = PassManager(["fold-constants", "eliminate-dead-code"], verify=True, dump="ir/")
    graph = pm.run(graph)
    for r in pm.records: print(r.name, r.seconds, r.nodes_before, r.nodes_after)
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import importlib
import pkgutil
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from einfuse.errors import EinfuseError, VerifyError
from einfuse.ir.graph import Graph
from einfuse.ir.printer import print_graph
from einfuse.ir.verifier import verify as verify_graph

_PASS_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Pass:
    """Base of all passes (subclasses are frozen dataclasses; see the module docstring)."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError(f"pass {self.name!r} does not define run()")

    def __str__(self) -> str:
        if not dataclasses.is_dataclass(self):
            return self.name
        options = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name}{{{options}}}" if options else self.name


# -- registry -------------------------------------------------------------------

PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: adds a pass to PASSES under its `name` (checked for the shape
    every pass must have, so a mistake shows at import, not in a pipeline)."""
    where = f"pass class {cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise TypeError(f"{where}: a pass must subclass einfuse.passes.Pass")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{where}: a pass must be a @dataclass(frozen=True) (its fields are its options)")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _PASS_NAME.match(name):
        raise ValueError(f"{where}: `name: ClassVar[str]` must be kebab-case like 'fold-constants', got {name!r}")
    doc = (cls.__doc__ or "").strip()
    # @dataclass writes "Name(field: type, ...)" as the docstring when there is none.
    if not doc or doc.startswith(cls.__name__ + "(") or "\n" in doc:
        raise ValueError(f"{where}: a pass needs a one-line docstring saying what it does")
    if name in PASSES and PASSES[name] is not cls:
        raise ValueError(f"{where}: pass name {name!r} is already taken by {PASSES[name].__qualname__}")
    PASSES[name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """All passes of einfuse.passes, by name (imports the pass modules on first use)."""
    _load_all()
    return dict(PASSES)


def get_pass(name: str, **options) -> Pass:
    """The pass registered as `name`, built with `options` (its dataclass fields)."""
    _load_all()
    try:
        cls = PASSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, PASSES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known passes: {', '.join(sorted(PASSES))}"
        raise EinfuseError(f"unknown pass {name!r}", hint=hint) from None
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in options:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise EinfuseError(f"pass {name!r} has no option {key!r} (its options: {known})")
    try:
        return cls(**options)
    except TypeError as e:  # a required option is missing
        raise EinfuseError(f"pass {name!r}: {e}") from None


_loaded = False


def _load_all() -> None:
    """Imports every module of einfuse.passes, which registers their passes."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import einfuse.passes as package

    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


# -- running pipelines ------------------------------------------------------------


@dataclass
class PassRecord:
    """What one pass did in one PassManager run."""

    index: int  # 1-based position in the pipeline
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool  # did the IR text (constants elided) change?
    rules_fired: dict[str, int] = field(default_factory=dict)  # rewrite rules fired in this pass

    def __str__(self) -> str:
        change = "changed" if self.changed else "no change"
        return (
            f"{self.index:2d}. {self.name}: {self.seconds * 1e3:.1f} ms, "
            f"{self.nodes_before} -> {self.nodes_after} nodes, {change}"
        )


# The rewrite driver adds its rule counts here while a PassManager runs a pass.
_rule_counter: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("einfuse_rule_counter", default=None)


def note_rules_fired(fired: Counter) -> None:
    """Called by the rewrite driver: credits rule firings to the pass now running."""
    counter = _rule_counter.get()
    if counter is not None:
        counter.update(fired)


Observer = Callable[[PassRecord, Graph], None]


class PassManager:
    """Runs passes in order; optionally verifies after each one, dumps the IR after
    each one to `dump/NN-passname.ir`, and calls `instrument(record, graph)`."""

    def __init__(
        self,
        passes: list[Pass | str],
        verify: bool = False,
        dump: str | Path | None = None,
        instrument: Observer | None = None,
    ):
        self.passes: list[Pass] = [get_pass(p) if isinstance(p, str) else p for p in passes]
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"PassManager takes passes or pass names, not {p!r}")
        self.verify = verify
        self.dump = Path(dump) if dump is not None else None
        self.instrument = instrument
        self.records: list[PassRecord] = []

    def run(self, graph: Graph) -> Graph:
        self.records = []
        if self.verify:
            try:
                verify_graph(graph)
            except VerifyError as e:
                raise VerifyError(f"the graph given to the pipeline is invalid: {e.message}", context=e.context) from e
        if self.dump is not None:
            self.dump.mkdir(parents=True, exist_ok=True)
            self._write_dump(0, "input", graph)
        for index, p in enumerate(self.passes, start=1):
            graph = self._run_one(index, p, graph)
        return graph

    def _run_one(self, index: int, p: Pass, graph: Graph) -> Graph:
        text_before = print_graph(graph, constants="elide")
        nodes_before = len(graph.nodes)
        fired: Counter = Counter()
        token = _rule_counter.set(fired)
        t0 = time.perf_counter()
        try:
            result = p.run(graph)
        except Exception as e:
            e.add_note(f"in pass {p.name!r} (#{index} of the pipeline)")
            raise
        finally:
            seconds = time.perf_counter() - t0
            _rule_counter.reset(token)
        if not isinstance(result, Graph):
            raise TypeError(f"pass {p.name!r} returned {type(result).__name__}, not a Graph")
        text_after = print_graph(result, constants="elide")
        record = PassRecord(
            index=index,
            name=p.name,
            seconds=seconds,
            nodes_before=nodes_before,
            nodes_after=len(result.nodes),
            changed=text_after != text_before,
            rules_fired=dict(fired),
        )
        self.records.append(record)
        if self.dump is not None:
            self._write_dump(index, p.name, result, text_after)
        if self.verify:
            try:
                verify_graph(result)
            except VerifyError as e:
                raise VerifyError(
                    f"pass {p.name!r} (#{index} of the pipeline) broke an IR invariant: {e.message}",
                    context=e.context,
                    hint="rerun with dump=DIR to compare the IR before and after this pass",
                ) from e
        if self.instrument is not None:
            self.instrument(record, result)
        return result

    def _write_dump(self, index: int, name: str, graph: Graph, text: str | None = None) -> None:
        # File names come from the index and the (kebab-case) pass name only: never from
        # the model, whose names are untrusted.
        if not _PASS_NAME.match(name):
            name = "pass"  # an unregistered pass with an odd name
        if text is None:
            text = print_graph(graph, constants="elide")
        (self.dump / f"{index:02d}-{name}.ir").write_text(text + "\n", encoding="utf-8")

    def summary(self) -> str:
        """One line per pass of the last run (time, node counts, change)."""
        return "\n".join(str(r) for r in self.records)
