"""The `fused` op: a group of ops that codegen turns into one kernel.

    %y = fused(%x, @w) {kind="out_fusable", region=graph @conv_relu(%a: f32[..], %b: f32[..]) -> (...) {...}}

Operand i binds region input i; output j is region output j. The region is an
ordinary Graph (it may hold constants of its own, e.g. folded scales). `kind` names
the group's anchor family (out_fusable, reduce, normalize, elementwise, injective,
opaque) so backends pick a schedule without re-deriving it.
"""

from __future__ import annotations

from einfuse.ir.ops import OPAQUE, Attr, register
from einfuse.ir.types import dims_equal


def _fused_infer(ctx):
    region = ctx.attrs["region"]
    if len(ctx.types) != len(region.inputs):
        raise ctx.error(f"region takes {len(region.inputs)} operands, got {len(ctx.types)}")
    bindings: dict = {}
    for i, (t, p) in enumerate(zip(ctx.types, region.inputs)):
        if t is None:
            raise ctx.error(f"operand {i} is required")
        if t.dtype != p.dtype or t.rank != p.rank:
            raise ctx.error(f"operand {i} is {t}, the region's input %{p.name} is {p.type}")
        for a, b in zip(t.shape, p.shape):
            # A region is typed with the same dims as its operands (symbols included).
            if not dims_equal(a, b):
                raise ctx.error(f"operand {i} is {t}, the region's input %{p.name} is {p.type}")
    return [v.type for v in region.outputs]


@register(
    "fused",
    family=OPAQUE,
    inputs=(0, None),
    attrs={"region": Attr("graph"), "kind": Attr("str", "opaque")},
    outputs=lambda attrs: len(attrs["region"].outputs),
    infer=_fused_infer,
)
def fused(*operands, region, kind):
    """Evaluates the region with the reference evaluator."""
    from einfuse.codegen import reference

    results = reference.run(region, {p.name: x for p, x in zip(region.inputs, operands)})
    out = tuple(results[v.name] for v in region.outputs)
    return out[0] if len(out) == 1 else out
