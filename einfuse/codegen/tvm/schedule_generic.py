"""Rule-based schedules for the non-dense kernel kinds: elementwise, injective, reduce,
normalize and (lowerable) opaque groups.

Without a schedule TVM runs every stage as its own single-threaded scalar loop nest;
that is why its default pipeline is 18-126x slower than onnxruntime here. The rules:

1. Inline every non-output stage without a reduction into its consumers (the chain of
   elementwise/injective producers becomes one expression per output element).
2. Row reductions (softmax, layer/instance norm, reduce + epilogue): when each
   reduction feeding an output has the output's rank with every dim either 1 (reduced)
   or the output's (kept) -- or, across a reshape, the same rows and row length as a
   suffix of the output -- the output's kept axes are fused into one parallel "row"
   loop, the reductions (and stages marked MATERIALIZE, like softmax's exponentials)
   are computed per row inside it (compute_at), and the output's row is vectorized.
   Long contiguous reductions are vectorized through rfactor (16 partial accumulators,
   then a short final reduction).
3. Other reductions (pools, global pools, reduce_*, argmax, group norm statistics)
   run at the root: spatial loops fused and parallel (pooling: over N*C*OH), the
   reduction inner; for pooling windows the last output axis is vectorized with the
   window loops outside it.
4. Spatial outputs: the outer loops fused into one parallel loop, the innermost
   dims (a suffix whose size divides the vector width) vectorized: 16 f32 lanes on
   AVX-512.

Small kernels (< PARALLEL_MIN work items) stay on one thread: a parallel launch costs
a few microseconds. A scheduler may return a new Schedule; the backend uses it.
"""

from __future__ import annotations

import math
import re

from einfuse.codegen.tvm.emit import GroupInfo, scheduler
from einfuse.codegen.tvm.target import vector_lanes

# Work (output elements x reduction length) below which a kernel stays single-threaded:
# about 10 us of work on one core, where a parallel launch (a few us, more when the
# machine is busy) would eat the gain.
PARALLEL_MIN = 1 << 15
# Reductions at least this long (and a multiple of the lanes) are vectorized with rfactor.
RFACTOR_MIN = 64

SPATIAL = 0  # IterVar type of data-parallel block iterators
# Block annotation an emitter sets on a stage that must stay a buffer (not be inlined):
# e.g. softmax's exponentials, computed once per row and read by the sum and the output.
MATERIALIZE = "einfuse.materialize"


def _blocks(sch):
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def _name(sch, b) -> str:
    return sch.get(b).name_hint


def _iters(sch, b) -> list[tuple[int, int]]:
    """(iter type, extent) of each block iter var."""
    return [(int(iv.iter_type), int(iv.dom.extent)) for iv in sch.get(b).iter_vars]


def _is_reduction(sch, b) -> bool:
    return any(t != SPATIAL for t, _ in _iters(sch, b))


def _spatial_extents(sch, b) -> list[int]:
    return [e for t, e in _iters(sch, b) if t == SPATIAL]


def _out_bits(sch, b) -> int:
    """Element width for choosing vector lanes: the output's, but at least 32 bits
    (16-bit floats compute in f32; wider vectors of narrow outputs only bloat the code)."""
    import tvm

    blk = sch.get(b)
    try:
        return max(32, tvm.DataType(str(blk.writes[0].source.dtype)).bits)
    except Exception:  # noqa: BLE001
        return 32


def _materialized(sch, b) -> bool:
    return MATERIALIZE in {str(k) for k in sch.get(b).annotations}


def inline_injective(sch, outputs: set[str]) -> None:
    """compute_inline every non-output block without reduction axes (except those marked
    MATERIALIZE), repeating until nothing changes."""
    changed = True
    while changed:
        changed = False
        for b in _blocks(sch):
            name = _name(sch, b)
            if name in outputs or _is_reduction(sch, b) or _materialized(sch, b):
                continue
            try:
                sch.compute_inline(b)
                changed = True
            except Exception:  # noqa: BLE001, S112 - some producers cannot be inlined (kept as a stage)
                continue


def _vector_split(extents: list[int], lanes: int) -> tuple[int, int] | None:
    """(k, width): fuse dims k.. (their product divisible by width) and vectorize by width.
    Prefers the widest vector over the shortest suffix; None when nothing divides."""
    width = lanes
    while width >= 4:
        prod = 1
        for k in range(len(extents) - 1, -1, -1):
            prod *= extents[k]
            if prod % width == 0:
                return k, width
            if prod > 4096 * width:
                break
        width //= 2
    return None


def schedule_spatial(sch, b, lanes: int, parallel: bool = True) -> None:
    """Fuse, parallelize and vectorize one spatial block."""
    loops = list(sch.get_loops(b))
    extents = _spatial_extents(sch, b)
    if not loops or len(loops) != len(extents) or 0 in extents:
        return
    total = math.prod(extents)
    split = _vector_split(extents, lanes)
    vec = None
    if split is not None:
        k, width = split
        inner = loops[k:]
        fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        outer_part, vec = sch.split(fused, [None, width])
        outer = loops[:k] + [outer_part]
    else:
        outer = loops
    p = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if parallel and total >= PARALLEL_MIN:
        sch.parallel(p)
    if vec is not None:
        sch.vectorize(vec)


def _row_axes(sch, out_block, reductions: list) -> list[int] | None:
    """The output axes the reductions run along (dims where every reduction has extent
    1 and the output more), or None when a reduction does not have the output's rank
    with each dim 1 or the output's."""
    out_ext = _spatial_extents(sch, out_block)
    if any(len(_spatial_extents(sch, r)) != len(out_ext) for r in reductions):
        return _row_axes_reshaped(sch, out_ext, reductions)
    rows: set[int] = set()
    for r in reductions:
        ext = _spatial_extents(sch, r)
        for k, (a, o) in enumerate(zip(ext, out_ext)):
            if a == o:
                continue
            if a == 1:
                rows.add(k)
            else:
                return None
    return sorted(rows)


def _row_axes_reshaped(sch, out_ext: list[int], reductions: list) -> list[int] | None:
    """Row axes when a reshape separates the output from its reductions (layer_norm then
    a reshape): every reduction covers the same number of rows and row length, and a
    suffix of the output's dims spans exactly one row. (compute_at checks the data flow;
    a misaligned row would only cost recomputation, never a wrong result.)"""
    shapes = set()
    for r in reductions:
        its = _iters(sch, r)
        rows = math.prod(e for t, e in its if t == SPATIAL)
        length = math.prod(e for t, e in its if t != SPATIAL)
        if length == 1 and not _is_reduction(sch, r):
            length = 0  # a materialized stage: any row structure
        shapes.add((rows, length) if length else None)
    shapes.discard(None)
    if len(shapes) != 1:
        return None
    n_rows, row_len = shapes.pop()
    for k in range(len(out_ext), -1, -1):
        if math.prod(out_ext[k:]) == row_len and math.prod(out_ext[:k]) == n_rows:
            return list(range(k, len(out_ext)))
    return None


def _reduction_producers(sch, b, seen: set[str]) -> list:
    """Reduction blocks b depends on (directly or through other reductions), consumers
    first (the order compute_at needs: a block moves only after all its consumers)."""
    found = _collect_reductions(sch, b, seen)
    order = {name: k for k, name in enumerate(_name(sch, x) for x in _blocks(sch))}
    return sorted(found, key=lambda r: -order[_name(sch, r)])


def _collect_reductions(sch, b, seen: set[str]) -> list:
    """Reductions (and materialized row stages) b depends on, transitively."""
    out = []
    for p in sch.get_producers(b):
        name = _name(sch, p)
        if name in seen or not (_is_reduction(sch, p) or _materialized(sch, p)):
            continue
        seen.add(name)
        out.append(p)
        out.extend(_collect_reductions(sch, p, seen))
    return out


def _try_rfactor(sch, r, lanes: int):
    """Splits the (single, contiguous, long) reduction loop of root block r by `lanes` and
    rfactors the lane loop: `lanes` partial results then accumulate in one vector register
    and a short final reduction combines them. Returns (new schedule, rfactor block name),
    or None when the reduction does not qualify or TVM cannot rfactor it."""
    its = _iters(sch, r)
    red = [e for t, e in its if t != SPATIAL]
    if len(red) != 1 or red[0] < RFACTOR_MIN or red[0] % lanes:
        return None
    trial = sch.copy()
    try:
        loops = list(trial.get_loops(trial.get_sblock(_name(sch, r))))
        _, ki = trial.split(loops[-1], [None, lanes])
        rf = trial.rfactor(ki, 0)
    except Exception:  # noqa: BLE001 - reducers TVM cannot rfactor (argmax tuples, -inf max)
        return None
    return trial, _name(trial, rf)


def _vectorize_rf(sch, rf) -> None:
    """Under its row loop the rfactor block iterates (lane, k): make the lane loop
    innermost and vectorize it."""
    loops = list(sch.get_loops(rf))
    its = _iters(sch, rf)
    if len(loops) < 2 or its[-1][0] == SPATIAL:
        return
    lane, k = loops[-2], loops[-1]
    sch.reorder(k, lane)
    sch.vectorize(lane)


def _vectorize_inner(sch, b, row_loop, lanes: int) -> None:
    """Vectorizes the loops of a stage placed under `row_loop` (its per-row part)."""
    loops = list(sch.get_loops(b))
    row = sch.get(row_loop)
    at = next((k for k, lp in enumerate(loops) if sch.get(lp).same_as(row)), None)
    if at is None or at + 1 >= len(loops):
        return
    inner = loops[at + 1 :]
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    n = int(sch.get(fused).extent)
    width = lanes
    while width >= 4 and n % width:
        width //= 2
    if width >= 4:
        _, v = sch.split(fused, [None, width])
        sch.vectorize(v)


def _hoist_init(sch, rf) -> None:
    """Moves the rfactor block's init out of its k loop. Last step: after it the block is
    no longer a reduction block, and loops above it cannot be transformed any more."""
    loops = list(sch.get_loops(rf))
    if len(loops) >= 2:
        sch.decompose_reduction(rf, loops[-2])


def schedule_rows(sch, out_name: str, red_names: list[str], rows: list[int], lanes: int):
    """Output with per-row reductions: one parallel loop over rows with the reductions
    computed inside it; returns the new schedule (raises when a step does not apply)."""
    red_len = max(
        (math.prod(e for t, e in _iters(sch, sch.get_sblock(n)) if t != SPATIAL) for n in red_names), default=1
    )
    rf_names = []
    for name in red_names:
        got = _try_rfactor(sch, sch.get_sblock(name), lanes)
        if got is not None:
            sch, rf_name = got
            rf_names.append(rf_name)
    out_block = sch.get_sblock(out_name)
    loops = list(sch.get_loops(out_block))
    extents = _spatial_extents(sch, out_block)
    keep = [k for k in range(len(loops)) if k not in rows]
    if keep and rows and keep + rows != list(range(len(loops))):
        sch.reorder(*([loops[k] for k in keep] + [loops[k] for k in rows]))
    n_rows = math.prod(extents[k] for k in keep) if keep else 1
    row_len = math.prod(extents[k] for k in rows) if rows else 1
    outer = [loops[k] for k in keep]
    p = None
    if outer:
        p = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        order = {_name(sch, x): k for k, x in enumerate(_blocks(sch))}
        # Consumers first: a block moves under the row loop only after all its consumers.
        for name in sorted(red_names + rf_names, key=lambda n: -order[n]):
            sch.compute_at(sch.get_sblock(name), p, preserve_unit_loops=False)
        for name in rf_names:
            _vectorize_rf(sch, sch.get_sblock(name))
        for name in red_names:
            b = sch.get_sblock(name)
            if not _is_reduction(sch, b):
                _vectorize_inner(sch, b, p, lanes)
    inner = [loops[k] for k in rows]
    if inner:
        i = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        width = lanes
        while width >= 4 and row_len % width:
            width //= 2
        if width >= 4:
            _, v = sch.split(i, [None, width])
            sch.vectorize(v)
    if p is not None and n_rows * max(row_len, red_len) >= PARALLEL_MIN and n_rows > 1:
        sch.parallel(p)
    for name in rf_names:
        _hoist_init(sch, sch.get_sblock(name))
    return sch


def _inner_read_is_spatial(sch, b) -> bool:
    """Whether the innermost index of b's main (largest) read follows the block's last
    spatial iterator (pooling windows: vectorize across outputs) rather than a reduction
    iterator (a contiguous reduction)."""
    blk = sch.get(b)
    spatial = [str(iv.var) for iv in blk.iter_vars if int(iv.iter_type) == SPATIAL]
    reads = [r for r in blk.reads if len(r.region) > 0]
    if not reads or not spatial:
        return False
    main = max(reads, key=lambda r: math.prod(int(x) for x in r.source.shape))
    text = str(main.region[-1].min)
    return re.search(rf"\b{re.escape(spatial[-1])}\b", text) is not None


def schedule_root_reduction(sch, b, lanes: int) -> None:
    """A reduction at the root: spatial loops fused and parallel, reduction inner. When
    the input's contiguous axis is the output's last axis (pooling windows), the window
    loops go outside it and the last output axis is vectorized."""
    its = _iters(sch, b)
    loops = list(sch.get_loops(b))
    n_sp = sum(1 for t, _ in its if t == SPATIAL)
    if n_sp == 0 or len(loops) != len(its) or any(t != SPATIAL for t, _ in its[:n_sp]):
        return
    spatial, red = loops[:n_sp], loops[n_sp:]
    n_out = math.prod(e for t, e in its if t == SPATIAL)
    work = n_out * math.prod(e for t, e in its if t != SPATIAL)
    parallel = work >= PARALLEL_MIN and n_out > 1
    last = its[n_sp - 1][1]
    width = lanes
    while width >= 4 and last % width:
        width //= 2
    # Tuple reductions (argmax) stay scalar: TVM's vectorizer miscompiles their update.
    single = len(sch.get(b).writes) == 1
    if red and n_sp >= 2 and width >= 4 and single and _inner_read_is_spatial(sch, b):
        outer = spatial[:-1]
        p = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        w_o, w_i = sch.split(spatial[-1], [None, width])
        sch.reorder(w_o, *red, w_i)
        if parallel:
            sch.parallel(p)
        sch.vectorize(w_i)
        sch.decompose_reduction(b, red[0])
        return
    p = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if parallel:
        sch.parallel(p)


def schedule_group(sch, info: GroupInfo):
    """The generic schedule (see the module docstring); returns the schedule to use."""
    lanes = vector_lanes(info.target, 32)
    outputs = set(info.outputs)
    inline_injective(sch, outputs)

    planned: set[str] = set()
    for name in [_name(sch, b) for b in _blocks(sch)]:
        if name not in outputs:
            continue
        b = sch.get_sblock(name)
        if _is_reduction(sch, b):
            continue
        reductions = _reduction_producers(sch, b, set())
        width = vector_lanes(info.target, _out_bits(sch, b))
        rows = _row_axes(sch, b, reductions) if reductions else None
        if rows is not None and not any(_name(sch, r) in planned for r in reductions):
            red_names = [_name(sch, r) for r in reductions]
            try:
                sch = schedule_rows(sch.copy(), name, red_names, rows, lanes)
                planned.add(name)
                planned.update(red_names)
                continue
            except Exception:  # noqa: BLE001, S110 - fall back: reductions at the root
                pass
        trial = sch.copy()
        try:
            schedule_spatial(trial, trial.get_sblock(name), width)
            sch = trial
        except Exception:  # noqa: BLE001, S110 - leave the block as it is: correct, only slower
            pass
        planned.add(name)

    for name in [_name(sch, b) for b in _blocks(sch)]:
        if name in planned:
            continue
        trial = sch.copy()
        try:
            b = trial.get_sblock(name)
            if _is_reduction(trial, b):
                schedule_root_reduction(trial, b, lanes)
            else:
                schedule_spatial(trial, b, vector_lanes(info.target, _out_bits(trial, b)))
            sch = trial
        except Exception:  # noqa: BLE001, S110 - leave the block as it is: correct, only slower
            pass
    return sch


@scheduler("elementwise", "injective", "reduce", "normalize", "opaque")
def schedule_generic(sch, info: GroupInfo):
    return schedule_group(sch, info)
