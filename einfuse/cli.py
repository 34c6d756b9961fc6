"""The `einfuse` command.

    einfuse show MODEL [--dims B=1,S=128]          print the IR text
    einfuse run MODEL [--input NAME=X.npy] ...     run on given or random inputs
                 [--target llvm]                   (compiled with TVM; MODEL may be an .einf file)
    einfuse compile MODEL -o OUT.einf [--dims ..]  compile for this CPU into one file
    einfuse bench MODEL [--runs N] [--profile]     einfuse vs onnxruntime vs TVM Relax, side by side
    einfuse tune MODEL [--trials N] [--db DIR]     tune kernels; EINFUSE_TUNE_DB=DIR compile uses them
    einfuse explain MODEL [-v] [--dims B=1]        run the default pipeline, pass by pass
    einfuse conformance [--filter SUBSTR] ...      ONNX node conformance report
    einfuse fuzz [--backend tvm] [--time 5m]       differential graph fuzzer (reproducers in fuzz-out/)

An `EinfuseError` prints `error: <message>` (and `hint: <hint>`) on stderr and exits
with 1, without a traceback; any other exception is an internal error (exit 2).
`--debug` re-raises both so that the traceback shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Sequence

import numpy as np

from einfuse.errors import EinfuseError, InputError

EXIT_OK = 0
EXIT_ERROR = 1  # a clean einfuse error: bad model, bad input, unsupported op
EXIT_INTERNAL = 2  # a bug in einfuse

TARGETS = ("reference", "llvm")

RANDOM_INPUTS_DOC = (
    "Inputs not given with --input are random, from --seed (default 0): floats standard "
    "normal; integers 0 or 1, since any wider range breaks index, size and flag inputs "
    "more often (give real values with --input when 0/1 is not valid); bools uniform. "
    "Symbolic dims not set with --dims take their size from --input arrays, else 1."
)


# ----------------------------------------------------------------------------- parsing


def _parse_dims(specs: Sequence[str] | None) -> dict[str, int]:
    """'B=1,S=128' (repeatable) -> {'B': 1, 'S': 128}."""
    dims: dict[str, int] = {}
    for spec in specs or ():
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip()
            try:
                size = int(value)
            except ValueError:
                size = -1
            if not sep or not name or size < 0:
                raise InputError(f"--dims expects NAME=SIZE with SIZE >= 0, got {item!r}", hint="e.g. --dims B=1,S=128")
            dims[name] = size
    return dims


def _parse_named_files(specs: Sequence[str] | None, flag: str) -> dict[str, np.ndarray]:
    """['x=a.npy', ...] -> {'x': array}; arrays are loaded without pickle."""
    out: dict[str, np.ndarray] = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{flag} expects NAME=FILE.npy, got {spec!r}")
        if name in out:
            raise InputError(f"{flag} gives {name!r} twice")
        out[name] = _load_npy(path, f"{flag} {name}")
    return out


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise InputError(f"{what}: file {path!r} does not exist") from None
    except OSError as e:
        raise InputError(f"{what}: cannot read {path!r}: {e.strerror or e}") from None
    if magic.startswith(b"PK"):
        raise InputError(f"{what}: {path!r} is an .npz archive; give one array per .npy file")
    if magic != b"\x93NUMPY":
        raise InputError(f"{what}: {path!r} is not a .npy file", hint="save arrays with np.save(path, array)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{what}: {path!r} is not a readable .npy file ({reason})") from None


# ------------------------------------------------------------------------------ models


def _symbolic_input_dims(model, bound: set[str]) -> dict[str, str]:
    """{symbol name: name in the model} for the model's symbolic input dims, in order.

    Uses the importer's own naming function, walking inputs in the importer's order, so
    that `--dims` and the default-to-1 rule use exactly the importer's symbols. A dim
    without a dim_param is named after its input and axis (`x_0`), as the importer does."""
    from einfuse.frontends.onnx import _sanitize_symbol

    init = {t.name for t in model.graph.initializer}
    taken: dict[str, str] = {}
    names: dict[str, str] = {}
    for vi in model.graph.input:
        if vi.name in init or vi.name in bound:
            continue
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            continue  # the importer reports these
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                continue
            raw = d.dim_param if d.HasField("dim_param") and d.dim_param else f"{vi.name}_{k}"
            names.setdefault(_sanitize_symbol(raw, taken), raw)
    return names


def _check_bind(model, bind: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """--bind values must name graph inputs and match their declared dtype and rank."""
    from einfuse.frontends.onnx import ONNX_TO_DTYPE

    init = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in init}
    out = {}
    for name, arr in bind.items():
        vi = inputs.get(name)
        if vi is None:
            takes = ", ".join(repr(n) for n in inputs) or "no inputs"
            raise InputError(f"unknown input {name!r} in --bind; the model takes {takes}")
        tt = vi.type.tensor_type
        dtype = ONNX_TO_DTYPE.get(tt.elem_type)
        if dtype is not None:
            arr = _coerce_input(dtype, arr)
            if arr.dtype != dtype.np:
                raise InputError(f"--bind {name}: input {name!r} should be {dtype} ({dtype.np}), got {arr.dtype}")
        if tt.HasField("shape") and len(tt.shape.dim) != arr.ndim:
            raise InputError(f"--bind {name}: input {name!r} has rank {len(tt.shape.dim)}, got shape {list(arr.shape)}")
        out[name] = arr
    return out


def _dims_from_inputs(model, given: dict[str, np.ndarray], symbols: dict[str, str]) -> dict[str, int]:
    """Sizes that --input arrays give to symbolic dims (first one wins; run checks the rest)."""
    by_model_name = {raw: s for s, raw in symbols.items()}
    out: dict[str, int] = {}
    for vi in model.graph.input:
        arr = given.get(vi.name)
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if arr is None or tt is None or not tt.HasField("shape") or len(tt.shape.dim) != arr.ndim:
            continue
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                continue
            raw = d.dim_param if d.HasField("dim_param") and d.dim_param else f"{vi.name}_{k}"
            sym = by_model_name.get(raw)
            if sym is not None:
                out.setdefault(sym, int(arr.shape[k]))
    return out


def _load_graph(args, bind: dict | None = None, given: dict | None = None, *, default_dims: bool):
    """Imports args.model with --dims; for `run`, symbolic dims not set by --dims take
    their size from the --input arrays, or else default to 1."""
    from einfuse.frontends.onnx import convert_model
    from einfuse.frontends.onnx_io import load_model_proto

    model = load_model_proto(args.model, max_external_bytes=args.max_const_bytes)
    bind = _check_bind(model, bind or {})
    symbols = _symbolic_input_dims(model, set(bind))
    by_model_name = {raw: s for s, raw in symbols.items()}
    dims = {}
    for name, size in _parse_dims(args.dims).items():
        # Either the importer's symbol or the model's own dim_param spelling.
        sym = name if name in symbols else by_model_name.get(name)
        if sym is None:
            known = ", ".join(symbols) if symbols else "none"
            raise InputError(f"--dims names unknown dimension {name!r}; the model's symbolic dims: {known}")
        dims[sym] = size
    if default_dims:
        for sym, size in _dims_from_inputs(model, given or {}, symbols).items():
            dims.setdefault(sym, size)
        missing = [s for s in symbols if s not in dims]
        if missing:
            _note(f"symbolic dims {', '.join(missing)} default to 1 (set them with --dims {missing[0]}=N,...)")
            dims.update(dict.fromkeys(missing, 1))
    return convert_model(model, max_const_bytes=args.max_const_bytes, bind_inputs=bind or None, dims=dims or None)


# -------------------------------------------------------------------------------- show


def cmd_show(args) -> int:
    graph = _load_graph(args, default_dims=False)
    print(str(graph))
    return EXIT_OK


# ----------------------------------------------------------------------------- explain


def cmd_explain(args) -> int:
    """Runs the default pipeline, printing per pass: nodes before -> after, time, the
    rules that fired, and with -v the unified diff of the IR text (constants elided);
    ends with the fused groups by kind."""
    import difflib

    from einfuse.ir.printer import print_graph
    from einfuse.passes.fuse import fused_groups
    from einfuse.passes.pipeline import optimize

    graph = _load_graph(args, default_dims=False)
    print(f"{args.model}: {len(graph.nodes)} nodes, {len(graph.constants)} constants")
    texts = [print_graph(graph, constants="elide")] if args.verbose else []

    def observe(record, result) -> None:
        change = "changed" if record.changed else "no change"
        print(
            f"{record.index:2d}. {record.name:<32} {record.nodes_before:5d} -> {record.nodes_after:5d} nodes"
            f"  {record.seconds * 1e3:9.1f} ms  {change}"
        )
        if record.rules_fired:
            fired = sorted(record.rules_fired.items(), key=lambda item: (-item[1], item[0]))
            print("      rules: " + ", ".join(f"{name} {count}" for name, count in fired))
        if args.verbose and record.changed:
            text = print_graph(result, constants="elide")
            diff = difflib.unified_diff(
                texts[-1].splitlines(), text.splitlines(), f"before {record.name}", f"after {record.name}", lineterm=""
            )
            print("\n".join(diff))
            texts.append(text)
        sys.stdout.flush()  # a pass at a time, as they finish

    # The attention passes log why an attention op was left alone; explain shows it.
    import logging

    class _Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record) -> None:
            self.messages.append(record.getMessage())

    collect = _Collect()
    attention_logs = [logging.getLogger(f"einfuse.passes.{m}") for m in ("recognize_attention", "lower_attention")]
    saved = [(lg, lg.level) for lg in attention_logs]
    for lg in attention_logs:
        lg.addHandler(collect)
        lg.setLevel(logging.INFO)
    try:
        graph = optimize(graph, verify=args.verify, dump=args.dump, instrument=observe)
    finally:
        for lg, level in saved:
            lg.removeHandler(collect)
            lg.setLevel(level)
    groups = fused_groups(graph)
    by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"fused groups: {sum(groups.values())}" + (f" ({by_kind})" if by_kind else ""))
    loose = [n.op for n in graph.nodes if n.op != "fused"]
    if loose:
        print(f"outside fused groups: {len(loose)} node(s) ({', '.join(sorted(set(loose)))})")
    _explain_attention(graph, collect.messages)
    return EXIT_OK


def _explain_attention(graph, messages: list[str]) -> None:
    """Every attention cascade with its pass count over the key rank, before and after
    lowering (FuseMax), and the attention ops left unlowered."""
    from einfuse.ir.einsum import describe

    cascades, unlowered = [], []

    def visit(g) -> None:
        for n in g.nodes:
            if n.op == "fused":
                visit(n.attrs["region"])
            elif n.op == "einsum_cascade":
                cascades.append(describe(n))
            elif n.op == "attention":
                unlowered.append(n)

    visit(graph)
    if not cascades and not unlowered:
        return
    print(f"attention: {len(cascades)} cascade(s) lowered" + (f", {len(unlowered)} left as attention" if unlowered else ""))
    for line in cascades:
        print(f"  {line}")
    for message in messages:
        print(f"  {message}")


# --------------------------------------------------------------------------------- run


def random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A seeded random array for `einfuse run` (see RANDOM_INPUTS_DOC)."""
    np_dtype = dtype.np
    if dtype.is_float:
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 2, size=shape).astype(np_dtype)


def _concrete_shape(value) -> tuple[int, ...]:
    shape = []
    for d in value.shape:
        if isinstance(d, int):
            shape.append(d)
        else:  # an expression over symbols not fixed at import: every symbol is 1
            v = d.subs({s: 1 for s in d.free_symbols})
            shape.append(max(int(v), 0))
    return tuple(shape)


def _coerce_input(dtype, arr: np.ndarray) -> np.ndarray:
    # .npy files cannot hold bfloat16/float8; accept ordinary floats for those inputs.
    if dtype.np.kind == "V" and arr.dtype.kind == "f":
        return arr.astype(dtype.np)
    return arr


def cmd_run(args) -> int:
    from einfuse.codegen import reference
    from einfuse.compiler import is_executable_file

    given = _parse_named_files(args.input, "--input")
    bind = _parse_named_files(args.bind, "--bind")
    both = sorted(set(given) & set(bind))
    if both:
        raise InputError(f"{', '.join(repr(n) for n in both)} given with both --input and --bind")
    if is_executable_file(args.model):
        # A compiled .einf file: fixed shapes and target, nothing to import or compile.
        if bind or args.dims:
            raise InputError("--bind and --dims apply when compiling; an .einf file has fixed shapes")
        from einfuse.compiler import load

        compiled = load(args.model)
        feeds = _make_feeds(compiled.inputs, given, args.seed)
        outputs = compiled.run(feeds)
    else:
        graph = _load_graph(args, bind, given, default_dims=True)
        feeds = _make_feeds(graph.inputs, given, args.seed)
        if args.target == "reference":
            outputs = reference.run(graph, feeds)
        else:
            from einfuse.compiler import compile as compile_model

            outputs = compile_model(graph, target=args.target).run(feeds)
    for name, arr in outputs.items():
        print(summarize(name, np.asarray(arr)))
    if args.save:
        save_npz(args.save, outputs)
        _note(f"saved {len(outputs)} output(s) to {args.save}")
    return EXIT_OK


def _make_feeds(inputs, given: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The --input arrays by name, and seeded random arrays for the other inputs."""
    by_name = {v.name: v for v in inputs}
    unknown = [n for n in given if n not in by_name]
    if unknown:
        takes = ", ".join(repr(n) for n in by_name) or "no inputs"
        raise InputError(f"unknown input {unknown[0]!r} in --input; the model takes {takes}")

    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    randomized = []
    for v in inputs:
        if v.name in given:
            feeds[v.name] = _coerce_input(v.dtype, given[v.name])
        else:
            feeds[v.name] = random_input(rng, _concrete_shape(v), v.dtype)
            randomized.append(v.name)
    if randomized and given:
        _note(f"random inputs (seed {seed}) for {', '.join(repr(n) for n in randomized)}")
    elif randomized:
        _note(f"random inputs (seed {seed})")
    return feeds


# ----------------------------------------------------------------------------- compile


def cmd_compile(args) -> int:
    """Imports MODEL, compiles it for --target and writes one .einf file."""
    from einfuse.compiler import compile as compile_model
    from einfuse.passes.plan_memory import format_bytes

    bind = _parse_named_files(args.bind, "--bind")
    graph = _load_graph(args, bind, default_dims=True)
    compiled = compile_model(graph, target=args.target, cache=not args.no_cache)
    compiled.save(args.output)
    print(str(compiled.report))
    size = os.path.getsize(args.output)
    print(f"wrote {args.output} ({format_bytes(size)}); run it with `einfuse run {args.output}`")
    return EXIT_OK


# ------------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    """einfuse, onnxruntime and TVM Relax on each MODEL, side by side (see runtime/profiler.py)."""
    threads = args.threads or _cpu_count()
    # TVM's thread pool reads this when it starts: before anything imports TVM.
    os.environ["TVM_NUM_THREADS"] = str(threads)
    from einfuse.frontends.onnx import ONNX_TO_DTYPE
    from einfuse.frontends.onnx_io import load_model_proto
    from einfuse.passes.plan_memory import format_bytes
    from einfuse.runtime.profiler import bench_model

    dims = _parse_dims(args.dims)
    for path in args.model:
        model = load_model_proto(path, max_external_bytes=args.max_const_bytes)
        rng = np.random.default_rng(args.seed)
        init = {t.name for t in model.graph.initializer}
        feeds = {}
        for vi in model.graph.input:
            if vi.name in init:
                continue
            tt = vi.type.tensor_type
            dtype = ONNX_TO_DTYPE.get(tt.elem_type)
            if dtype is None:
                raise InputError(f"{path}: input {vi.name!r} has an element type einfuse does not support")
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 1) for d in tt.shape.dim
            )
            feeds[vi.name] = random_input(rng, shape, dtype)
        print(f"== {path}: {threads} thread(s), up to {args.runs} runs after {args.warmup} warm-up, median")
        sys.stdout.flush()
        result = bench_model(
            model,
            label=str(path),
            inputs=feeds,
            target=args.target,
            dims=dims or None,
            runs=args.runs,
            warmup=args.warmup,
            threads=threads,
            relax=not args.no_relax,
            progress=sys.stderr.isatty(),
        )
        print(result.table())
        if result.report is not None:
            r = result.report
            print(f"einfuse: {r.groups} groups, {r.kernels} kernels, compile {r.seconds.get('total', 0):.2f} s "
                  f"(cache: {r.cache or 'off'}); planned peak {format_bytes(r.arena_bytes)} of intermediates "
                  f"(sum {format_bytes(r.intermediate_bytes)})")  # fmt: skip
            for f in r.fallbacks:
                print(f"  reference fallback: {f['kernel']} ({f['kind']}: {'+'.join(f['ops'][:6])}): {f['reason']}")
        if result.agreement:
            print(result.agreement)
        if args.profile and result.profile is not None:
            print(result.profile.table(limit=args.profile_rows))
        print(result.closing_line())
        sys.stdout.flush()
    return EXIT_OK


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -------------------------------------------------------------------------------- tune


def cmd_tune(args) -> int:
    from einfuse.codegen.tvm.tune import default_db_path, parse_duration, tune_model

    time_limit = parse_duration(args.time) if args.time else None
    report = tune_model(
        args.model,
        target=args.target,
        dims=_parse_dims(args.dims),
        db=args.db,
        trials=args.trials,
        kernels=args.kernels,
        time_limit=time_limit,
        seed=args.seed,
    )
    print(report)
    db = args.db or default_db_path()
    print(f"use it: EINFUSE_TUNE_DB={db} einfuse compile {args.model} -o OUT.einf")
    return EXIT_OK


def summarize(name: str, arr: np.ndarray, first: int = 5) -> str:
    """One line: name, dtype, shape, min/max/mean and the first few values."""
    from einfuse.ir.types import DType

    try:
        dt = str(DType.from_numpy(arr.dtype))
    except Exception:  # noqa: BLE001 - a dtype einfuse does not name is shown by numpy's name
        dt = str(arr.dtype)
    head = f"{name}: {dt}[{','.join(str(s) for s in arr.shape)}]"
    if arr.size == 0:
        return f"{head}  (empty)"
    flat = arr.reshape(-1)
    wide = flat.astype(np.float64)  # also handles bool and bfloat16/float8
    with np.errstate(all="ignore"):
        stats = f"min={_fmt(wide.min())} max={_fmt(wide.max())} mean={_fmt(wide.mean())}"
    if arr.dtype.kind == "b":
        stats = f"true={int(np.count_nonzero(flat))}/{flat.size}"
        values = [str(bool(x)) for x in flat[:first]]
    else:
        values = [_fmt(x) for x in wide[:first]]
    more = ", ..." if flat.size > first else ""
    return f"{head}  {stats}  [{', '.join(values)}{more}]"


def _fmt(x) -> str:
    x = float(x)
    if np.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))  # integers print without a trailing .0
    return f"{x:.6g}"


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes {name: array} as an .npz readable with np.load(path, allow_pickle=False).

    Written member by member (what np.savez does) because np.savez(**arrays) breaks on
    names like 'file' or 'allow_pickle'. Types .npy cannot describe (bfloat16, float8)
    are widened to float32."""
    try:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype.kind == "V":
                    arr = arr.astype(np.float32)
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
    except OSError as e:
        raise InputError(f"cannot write {path!r}: {e.strerror or e}") from None


# ------------------------------------------------------------------------- conformance


def cmd_conformance(args) -> int:
    from einfuse.testing.conformance import run_conformance

    tty = sys.stdout.isatty()
    report = run_conformance(args.filter, progress=sys.stderr.isatty(), jobs=args.jobs, timeout=args.timeout)
    if report.total == 0:
        raise InputError(f"no conformance case matches --filter {args.filter!r}")
    if tty:
        _print_table_rich(report)
    else:
        _print_table_plain(report)
    print(report.summary_line())
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report.to_json(), f, indent=1)
        except OSError as e:
            raise InputError(f"cannot write {args.json!r}: {e.strerror or e}") from None
    return EXIT_OK


_COLUMNS = ("passed", "specialized", "failed", "unsupported", "crashed")


def _print_table_plain(report) -> None:
    rows = [(s.op, s.total, *(s.counts[c] for c in _COLUMNS)) for s in report.by_op().values()]
    header = ("op", "cases", *_COLUMNS)
    width = max([len(header[0])] + [len(r[0]) for r in rows])
    widths = [width] + [max(len(h), 5) for h in header[1:]]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for r in rows:
        print("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))))


def _print_table_rich(report) -> None:
    from rich.console import Console
    from rich.table import Table

    styles = {"passed": "green", "specialized": "cyan", "failed": "red", "unsupported": "yellow", "crashed": "bold red"}
    summaries = list(report.by_op().values())
    table = Table(title="ONNX node conformance (reference backend)")
    table.add_column("op", no_wrap=True, min_width=max((len(s.op) for s in summaries), default=2))
    table.add_column("cases", justify="right")
    for c in _COLUMNS:
        table.add_column(c, justify="right", style=styles[c])
    for s in summaries:
        cells = [str(s.counts[c]) if s.counts[c] else "" for c in _COLUMNS]
        table.add_row(s.op, str(s.total), *cells)
    Console().print(table)


# -------------------------------------------------------------------------------- fuzz


def cmd_fuzz(args) -> int:
    from einfuse.testing.fuzz import cli_main

    return cli_main(args)


# -------------------------------------------------------------------------------- main


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _add_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the subcommand; SUPPRESS keeps a subparser's default
    # from overwriting a value given before the subcommand.
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks for errors")
    p.add_argument(
        "--max-const-bytes",
        type=int,
        default=default(None),
        metavar="N",
        help="largest constant/weight the importer accepts (default 1 GiB)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einfuse",
        description="einfuse: a deep-learning compiler with a graph IR, fusion passes and TVM code generation for CPUs.",
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dims_help = "fix symbolic dims, e.g. B=1,S=128 (repeatable)"

    p = sub.add_parser("show", help="print a model's IR text")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help)
    _add_common(p, top=False)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("run", help="run a model on given or random inputs", description=RANDOM_INPUTS_DOC)
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input's value (repeatable)")
    p.add_argument(
        "--bind",
        action="append",
        metavar="NAME=FILE.npy",
        help="make a graph input a constant at import (for inputs that feed shapes/axes; repeatable)",
    )
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help + "; unset ones default to 1")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    p.add_argument("--save", metavar="OUT.npz", help="write every output, by name, to an .npz file")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="reference",
        help="reference (numpy, default) or llvm (compiled with TVM for this CPU); ignored for .einf files",
    )
    _add_common(p, top=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "compile",
        help="compile a model for this CPU into one .einf file",
        description="Imports MODEL, runs the default pipeline, compiles every fused group (through the kernel "
        "cache, $EINFUSE_CACHE_DIR or ~/.cache/einfuse) and writes kernels, weights and the buffer plan to one "
        "file that `einfuse run FILE.einf` runs without recompiling.",
    )
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.einf", help="the file to write")
    p.add_argument("--target", choices=TARGETS, default="llvm", help="llvm (TVM, default) or reference")
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help + "; unset ones default to 1")
    p.add_argument("--bind", action="append", metavar="NAME=FILE.npy", help="make a graph input a constant")
    p.add_argument("--no-cache", action="store_true", help="compile every kernel afresh; store nothing")
    _add_common(p, top=False)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "bench",
        help="time einfuse, onnxruntime and TVM Relax on a model, side by side",
        description="Each runtime is set up, warmed up and timed in its own block (never interleaved), with "
        "the same thread count; the median latency, the ratio to onnxruntime, setup time and the growth of "
        "peak RSS are shown, and the last line per model is `ratio vs onnxruntime: R`.",
    )
    p.add_argument("model", metavar="MODEL", nargs="+", help="ONNX model file(s)")
    p.add_argument("--runs", type=int, default=50, metavar="N", help="timed runs per runtime (default 50)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default 3)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="threads for every runtime (default: CPUs)")
    p.add_argument("--profile", action="store_true", help="add einfuse's per-kernel time table")
    p.add_argument("--profile-rows", type=int, default=25, metavar="N", help="rows of that table (default 25)")
    p.add_argument("--no-relax", action="store_true", help="leave out TVM Relax's own ONNX pipeline")
    p.add_argument("--target", choices=TARGETS, default="llvm", help="einfuse's target (default llvm)")
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help + "; unset ones default to 1")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    _add_common(p, top=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "tune",
        help="tune a model's TVM kernels (MetaSchedule search space) into a database compile reuses",
        description="Samples --trials schedules per kernel from MetaSchedule's design space for this CPU, "
        "measures the best against the rule-based schedule (medians, the kernels' thread count) and stores it "
        "when it is faster, keyed by the kernel's region key and the target. Compile uses the database when "
        "EINFUSE_TUNE_DB names it (compile never needs one; a missing or corrupted database is ignored with a "
        "warning). Keep budgets small on a shared machine.",
    )
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("--db", metavar="DIR", help="the database directory (default: <cache dir>/tune)")
    p.add_argument("--trials", type=int, default=64, metavar="N", help="schedules sampled per kernel (default 64)")
    p.add_argument("--kernels", type=int, metavar="N", help="tune only the N largest kernels by FLOPs")
    p.add_argument("--time", metavar="DURATION", help="time limit for the whole run, e.g. 600, 10m, 1h")
    p.add_argument("--target", default="llvm", metavar="TARGET", help="llvm (this CPU, default) or an mcpu name")
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help + "; unset ones default to 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the schedule sampling (default 0)")
    _add_common(p, top=False)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "explain",
        help="run the default pass pipeline on a model, pass by pass",
        description="Prints, for each pass of the default pipeline, the node counts before and after, the "
        "time and the rewrite rules that fired (with -v also a diff of the IR text, constants elided), "
        "then the fused groups by kind.",
    )
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("-v", "--verbose", action="store_true", help="show a unified diff of the IR after each pass")
    p.add_argument("--dims", action="append", metavar="NAME=N,...", help=dims_help)
    p.add_argument("--verify", action="store_true", help="run the IR verifier after every pass")
    p.add_argument("--dump", metavar="DIR", help="write the IR text after every pass into DIR (NN-pass.ir)")
    _add_common(p, top=False)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "conformance",
        help="run the ONNX node conformance cases on the reference backend",
        description="Imports and runs every ONNX node test case; see einfuse/testing/conformance.py for outcomes.",
    )
    p.add_argument("--filter", metavar="SUBSTR", help="only cases whose name or op contains SUBSTR")
    p.add_argument("--json", metavar="OUT.json", help="write per-case results as JSON")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SEC", help="time limit per case (default 30)")
    _add_common(p, top=False)
    p.set_defaults(func=cmd_conformance)

    from einfuse.testing.fuzz import add_arguments as add_fuzz_arguments

    p = sub.add_parser(
        "fuzz",
        help="fuzz a backend with random graphs against the reference and onnxruntime",
        description="Random typed graphs over the ops the backend supports, checked against the reference "
        "and onnxruntime; each new kind of failure is shrunk and written as a reproducer (IR text, .onnx, "
        "inputs .npz) with the command that replays it. Exits 1 when a failure is not explained.",
    )
    add_fuzz_arguments(p)
    _add_common(p, top=False)
    p.set_defaults(func=cmd_fuzz)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_const_bytes is None:
        from einfuse.frontends.onnx_io import DEFAULT_MAX_BYTES

        args.max_const_bytes = DEFAULT_MAX_BYTES
    try:
        return args.func(args)
    except EinfuseError as e:
        if args.debug:
            raise
        print(f"error: {e.message}", file=sys.stderr)
        if e.context:
            print(e.context, file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`einfuse show m.onnx | head`): not an error. Point stdout
        # at devnull so that the interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # the last line of defence for users
        if args.debug:
            raise
        text = str(e).splitlines()[0] if str(e) else ""
        print(f"internal error: {type(e).__name__}" + (f": {text}" if text else ""), file=sys.stderr)
        print("this is a bug in einfuse; rerun with --debug for the traceback and please report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
