"""lower-attention: rewrites each `attention` core op into an `einsum_cascade` (FuseMax).

For every `attention` node it can express, the pass builds the textbook softmax cascade
(3 passes over the keys), rewrites it with einfuse.ir.einsum.to_two_pass (the division
moved after the reduction: 2 passes) and to_one_pass (online softmax over key tiles of
`kv_tile`: 1 pass), then, when a simple cost model says so, split_kv (decode split into
chunks merged by the associative (max, sum, numerator) reduction). Each step's pass count
is checked (3, 2, 1) and the result node keeps the cascade text; `describe(node)` (for
`einfuse explain`) shows "3-pass -> 1-pass (kv_tile=..., kv_splits=...)".

What is lowered (anything else stays `attention`, which runs through its reference, and
the reason is logged on logger `einfuse.passes.lower_attention` at INFO and counted):
- q/k/v 4-D (the converter already turned the 3-D packed form into heads);
- softcap 0, no sliding window, qk_output "none", no nonpad_kv_seqlen;
- past_key/past_value become a concat along the key axis before the op;
- attn_mask: rank 1-4 (unsqueezed to 4-D), a float mask as the additive bias, a boolean
  mask as `where(mask, 0, -inf)` (computed here when the mask is a constant); its last
  dim must be the total key length (attention pads a shorter mask with "masked", the
  cascade broadcasts: not the same);
- softmax_precision: the cascade computes in f32 (f64 for f64 inputs), at least as precise
  as any precision attention allows for these types;
- is_causal: "top_left" without past; with past "bottom_right" (key j visible to query i
  iff j <= i + past), which is the cascade's `m <= p + M - P` only when the new keys are
  as many as the queries (checked on the dims).

Tile: the largest power of two t with a K and a V tile of t rows (t * (D + Dv) * 4 bytes)
in half the L2 (`l2_bytes`, 1 MiB per Zen 4 core), clamped to [32, 512], and not above M
when M is static. Split (decode): when the query length S is static and <= 4, M is static,
M / kv_tile >= 2 * threads, and the decode kernel's parallel units (batch x kv heads: the
query heads sharing a kv head run as one unit) are fewer than the threads:
kv_splits = min(number of tiles, ceil(2 * threads / units)) chunks, each at least one tile.
Measured (benchmarks/RESULTS.md, 2 threads, 32k context): 1 kv head, split 1.53x faster;
2 or 12 kv heads, a tie (the units already keep both threads busy; decode is memory-bound);
2k context, 12 heads, split 0.62x (slower).

Counters (PassRecord.rules_fired): `lower_attention` (nodes lowered), `attention 3-pass ->
1-pass` (or `-> 2-pass`, ... as chosen), `attention_split` (of which split) and
`attention_not_lowered` (kept).

Preconditions: a verified graph; recognize-attention has run (or the model has ONNX
Attention). Ordering: after recognize-attention and the clean-ups, before fuse (an
einsum_cascade is OPAQUE: it becomes its own fused group).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from einfuse.ir.builder import Builder
from einfuse.ir.einsum import attention_cascade, count_passes, split_kv, to_one_pass, to_two_pass
from einfuse.ir.graph import Graph, Node
from einfuse.ir.types import DType, dims_equal
from einfuse.passes.manager import Pass, note_rules_fired, register_pass

log = logging.getLogger(__name__)

FORMS = ("auto", "3-pass", "2-pass", "1-pass", "split")


class NotLowered(Exception):
    """Why an attention node stays as it is (logged and counted, never raised to users)."""


def choose_kv_tile(d, dv, m, l2_bytes: int = 1 << 20) -> int:
    """A power of two in [32, 512] with a K and a V tile of f32 rows in half the L2, not
    above M when M is static (then possibly below 32: a short context is one tile)."""
    width = (d if isinstance(d, int) else 128) + (dv if isinstance(dv, int) else 128)
    rows = max(1, (l2_bytes // 2) // (4 * max(width, 1)))
    tile = 1 << (rows.bit_length() - 1)
    tile = min(512, max(32, tile))
    if isinstance(m, int) and m >= 1:
        tile = min(tile, 1 << (m.bit_length() - 1))
    return tile


def choose_kv_splits(s, m, kv_tile: int, threads: int = 2, units: int = 1) -> int:
    """The decode split: chunks of at least one tile when few queries meet a long context
    and the (batch x kv head) units alone would leave threads idle."""
    if not (isinstance(s, int) and isinstance(m, int)) or s > 4 or units >= threads:
        return 1
    tiles = -(-m // kv_tile)
    if tiles < 2 * threads:
        return 1
    return min(tiles, -(-2 * threads // max(units, 1)))


@register_pass
@dataclass(frozen=True)
class LowerAttention(Pass):
    """Rewrites attention ops into extended-Einsum cascades (3-pass -> 1-pass, tiled, split for decode)."""

    name: ClassVar[str] = "lower-attention"
    form: str = "auto"  # "auto": 1-pass, split by the cost model; or force one form
    kv_tile: int = 0  # 0: from the cache sizes
    kv_splits: int = 0  # 0: from the cost model (form "split" without it: 2)
    l2_bytes: int = 1 << 20
    threads: int = 2

    def run(self, graph: Graph) -> Graph:
        if self.form not in FORMS:
            raise ValueError(f"lower-attention: form={self.form!r} should be one of {', '.join(FORMS)}")
        counts: Counter = Counter()
        # By output value: lowering one attention rewires its users, which replaces their
        # Node objects (graph.set_inputs), so a list of the nodes themselves goes stale.
        for value in [n.outputs[0] for n in graph.nodes if n.op == "attention"]:
            node = graph.producer(value)
            try:
                self._lower(graph, node, counts)
            except NotLowered as why:
                log.info("%s not lowered: %s", node.label, why)
                counts["attention_not_lowered"] += 1
        note_rules_fired(counts)
        return graph

    def _lower(self, graph: Graph, node: Node, counts: Counter) -> None:
        a = node.attrs
        ins = list(node.inputs) + [None] * (7 - len(node.inputs))
        q, k, v, mask, past_k, past_v, nonpad = ins
        if a["softcap"] > 0:
            raise NotLowered(f"softcap={a['softcap']}")
        if a["left_window_size"] >= 0 or a["right_window_size"] >= 0:
            raise NotLowered("sliding-window masks")
        if a["qk_output"] != "none":
            raise NotLowered(f"qk_output={a['qk_output']!r} (the logits are an output)")
        if nonpad is not None:
            raise NotLowered("nonpad_kv_seqlen")
        if q.rank != 4:
            raise NotLowered(f"q is {q.type}, not 4-D")
        sq, new_kv = q.shape[2], k.shape[2]
        total = new_kv if past_k is None else past_k.shape[2] + new_kv
        causal = "none"
        if a["is_causal"]:
            if past_k is None:
                causal = "top_left"
            elif dims_equal(new_kv, sq):
                causal = "bottom_right"
            else:
                raise NotLowered(f"is_causal with a past and {new_kv} new keys for {sq} queries")
        if mask is not None and not dims_equal(mask.shape[-1], total):
            raise NotLowered(f"attn_mask {mask.type} is shorter than the {total} keys (attention pads it)")

        b = Builder(graph, before=node)
        if past_k is not None:
            k = b.op("concat", [past_k, k], axis=2)
            v = b.op("concat", [past_v, v], axis=2)
        bias = None
        arr = graph.const_value(mask)
        if arr is not None:  # a constant mask becomes a constant bias (nothing left to run)
            if arr.dtype == np.bool_:
                arr = np.where(arr, np.zeros((), q.dtype.np), np.full((), -np.inf, q.dtype.np))
            bias = b.const("attn_bias", arr.reshape((1,) * (4 - arr.ndim) + arr.shape))
        elif mask is not None:
            bias = mask
            if mask.dtype == DType.bool:
                zero = b.const("zero", np.zeros((), q.dtype.np))
                neg_inf = b.const("neg_inf", np.full((), -np.inf, q.dtype.np))
                bias = b.op("where", [mask, zero, neg_inf])
            if bias.rank < 4:
                bias = b.op("unsqueeze", [bias], axes=tuple(range(4 - bias.rank)))

        hq, hkv = q.shape[1], k.shape[1]
        grouped = not dims_equal(hq, hkv)
        m = k.shape[2]
        tile = self.kv_tile or choose_kv_tile(q.shape[3], v.shape[3], m, self.l2_bytes)
        form = self.form
        splits = self.kv_splits or 1
        if form == "auto":
            batch = q.shape[0] if isinstance(q.shape[0], int) else 1  # a symbolic batch: decode's usual 1
            units = batch * hkv if isinstance(hkv, int) else 1
            splits = self.kv_splits or choose_kv_splits(sq, m, tile, self.threads, units)
            form = "split" if splits > 1 else "1-pass"
        elif form == "split" and splits < 2:
            splits = 2

        # The rewrite chain, each step checked by its pass count.
        c = attention_cascade("3-pass", causal=causal, has_bias=bias is not None, grouped=grouped)
        steps = [count_passes(c)]
        if form != "3-pass":
            c = to_two_pass(c)
            steps.append(count_passes(c))
        if form in ("1-pass", "split"):
            c = to_one_pass(c, tile)
            steps.append(count_passes(c))
        if form == "split":
            c = split_kv(c, splits)
            steps.append(count_passes(c))
        want = {"3-pass": [3], "2-pass": [3, 2], "1-pass": [3, 2, 1], "split": [3, 2, 1, 1]}[form]
        if steps != want:  # a bug in the rewrites, not in the model
            raise AssertionError(f"lower-attention: pass counts {steps} for form {form}, expected {want}")

        operands = [q, k, v] + ([bias] if bias is not None else [])
        out = b.op(
            "einsum_cascade",
            operands,
            cascade=c.lines(),
            scale=float(a["scale"]),
            causal=causal,
            kv_tile=tile if form in ("1-pass", "split") else 0,
            kv_splits=splits if form == "split" else 1,
        )
        old = node.outputs[0]
        graph.replace_all_uses(old, out)
        graph.erase(node)
        graph.rename(out, old.name)  # graph outputs keep their names; other values read alike
        counts["lower_attention"] += 1
        counts[f"attention {steps[0]}-pass -> {steps[-1]}-pass"] += 1
        if form == "split":
            counts["attention_split"] += 1
