"""The reference backend: a fused group run by the numpy evaluator.

It is the oracle, and the fallback the runtime uses for groups another backend
cannot lower (data-dependent ops, rare ops), so every model runs end to end.
"""

from __future__ import annotations

import numpy as np

from einfuse.codegen import reference
from einfuse.codegen.backend import Kernel, kernel_name, register_backend
from einfuse.ir.graph import Node


class ReferenceBackend:
    name = "reference"

    def compile(self, node: Node, target=None) -> Kernel:
        region = node.attrs["region"]
        names = [p.name for p in region.inputs]
        outs = [v.name for v in region.outputs]

        def fn(inputs, outputs):
            res = reference.run(region, dict(zip(names, inputs)))
            for dst, name in zip(outputs, outs):
                np.copyto(dst, res[name])

        ops = tuple(n.op for n in region.nodes)
        return Kernel(kernel_name(node, "reference"), fn, "reference", str(node.attrs["kind"]), ops)


@register_backend("reference")
def _factory():
    return ReferenceBackend()
