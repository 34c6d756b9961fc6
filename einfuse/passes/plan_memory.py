"""plan-memory: liveness-based placement of intermediate buffers in one arena.

An analysis, not a rewrite: it reads the launch order the compiler fixed and gives
every intermediate buffer an offset in one arena, so that buffers whose lifetimes do
not overlap share memory. It runs last, after fusion, on the ordered kernel launches
(the Executable's), and changes no graph, which is why it is a function rather than
a registered Pass.

A buffer is live from the launch that writes it through the last launch that reads
it, both inclusive. Inclusive ends matter: a kernel's results never share memory
with its own operands, since a kernel may read an operand after writing part of a
result.

Placement is greedy by size (the strategy of TFLite's arena planner): largest buffer
first; each goes into the smallest gap, between the already placed buffers that are
live at the same time, that holds it (best fit), else above them all. Offsets and
sizes are rounded up to `alignment` bytes (64: an AVX-512 vector, and what TVM asks
of the arrays it is given).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ALIGNMENT = 64


@dataclass(frozen=True)
class BufferUse:
    """One intermediate buffer: its id, its size in bytes, and its lifetime in launch steps."""

    id: int
    size: int
    first: int  # the step that writes it
    last: int  # the last step that reads it (>= first)

    def overlaps_in_time(self, other: "BufferUse") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    """Offsets of intermediate buffers in one arena, and the figures the report shows."""

    offsets: dict[int, int]  # buffer id -> byte offset in the arena
    arena_bytes: int  # the planned peak: the arena's size
    total_bytes: int  # the sum of all intermediate buffers (what no reuse would need)
    alignment: int = ALIGNMENT

    @property
    def saving(self) -> float:
        """The fraction of `total_bytes` that reuse saves."""
        return 1.0 - self.arena_bytes / self.total_bytes if self.total_bytes else 0.0

    def __str__(self) -> str:
        return (
            f"planned peak {format_bytes(self.arena_bytes)} for {format_bytes(self.total_bytes)} "
            f"of intermediates ({100 * self.saving:.0f}% saved by reuse)"
        )


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return -(-n // alignment) * alignment


def plan_memory(buffers: Iterable[BufferUse], alignment: int = ALIGNMENT) -> MemoryPlan:
    """Places `buffers` in one arena; two buffers live at the same step never overlap."""
    buffers = list(buffers)
    for b in buffers:
        if b.size < 0 or b.first > b.last:
            raise ValueError(f"bad buffer {b}: size must be >= 0 and first <= last")
    # Largest first; ties by birth then id, so that a plan is deterministic.
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.id))
    placed: list[tuple[int, int, BufferUse]] = []  # (offset, aligned size, buffer)
    offsets: dict[int, int] = {}
    arena = 0
    for b in order:
        size = align_up(b.size, alignment)
        if size == 0:
            offsets[b.id] = 0
            continue
        live = sorted((off, sz) for off, sz, p in placed if p.overlaps_in_time(b))
        offset = _best_fit(live, size)
        offsets[b.id] = offset
        placed.append((offset, size, b))
        arena = max(arena, offset + size)
    total = sum(align_up(b.size, alignment) for b in buffers)
    return MemoryPlan(offsets, arena, total, alignment)


def _best_fit(live: Sequence[tuple[int, int]], size: int) -> int:
    """The start of the smallest gap between `live` blocks (sorted by offset) that holds
    `size` bytes, else the first offset above them all."""
    best: tuple[int, int] | None = None  # (gap, offset)
    cursor = 0
    for off, sz in live:
        gap = off - cursor
        if gap >= size and (best is None or gap < best[0]):
            best = (gap, cursor)
        cursor = max(cursor, off + sz)
    return best[1] if best is not None else cursor


def lifetimes(
    launches: Sequence[tuple[Sequence[int], Sequence[int]]], candidates: Iterable[int]
) -> dict[int, tuple[int, int]]:
    """{buffer id: (first, last)} for the `candidates` among the buffers that
    `launches` ((operand ids, result ids) per step, in order) write and read.

    A buffer written but never read lives for its own step only."""
    wanted = set(candidates)
    spans: dict[int, list[int]] = {}
    for step, (operands, results) in enumerate(launches):
        for r in results:
            if r in wanted:
                span = spans.setdefault(r, [step, step])
                span[1] = max(span[1], step)
        for o in operands:
            if o in wanted and o in spans:
                spans[o][1] = max(spans[o][1], step)
    return {k: (a, b) for k, (a, b) in spans.items()}


def peak_live_bytes(buffers: Iterable[BufferUse], alignment: int = ALIGNMENT) -> int:
    """The largest total size of buffers live at one step: a lower bound for any plan."""
    buffers = list(buffers)
    if not buffers:
        return 0
    steps = max(b.last for b in buffers) + 1
    live = [0] * (steps + 1)
    for b in buffers:
        size = align_up(b.size, alignment)
        live[b.first] += size
        live[b.last + 1] -= size
    peak = run = 0
    for d in live:
        run += d
        peak = max(peak, run)
    return peak


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
