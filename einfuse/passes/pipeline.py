"""The default compile pipeline: one flat list of named passes, and `optimize` to run it.

    from einfuse.passes.pipeline import default_pipeline, optimize

    graph = optimize(graph)                             # every compute op ends in a fused group
    graph = optimize(graph, verify=True, dump="ir/")    # verifier after each pass, IR after each pass
    graph = optimize(graph, extra=[MyFusionPass()])     # your passes run just before `fuse`

    passes = default_pipeline()                         # or edit the list yourself
    passes.insert(passes.index("fuse"), "my-registered-pass")
    graph = PassManager(passes).run(graph)

Order, and why:
1. fold-constants: evaluate what depends on constants only (and shape ops on static
   shapes), so the later rules see constants;
2. fold-shape-computations: the shape arithmetic that remains (symbolic dims);
3. canonicalize: one spelling per computation (gemm -> matmul, x - c -> x + (-c),
   no-op reshapes/transposes gone), so fewer patterns need matching;
4. recognize-attention: MatMul-(scale)-(mask)-Softmax-MatMul subgraphs, however they
   were exported, become `attention` ops (which ONNX Attention and torch's SDPA already
   are); after canonicalize, so that transposes and scales have one spelling, and
   before fold-batchnorm, which could move a scale out of the pattern;
5. fold-batchnorm: batch norms into the weights of the conv/matmul next to them, or
   into mul/add that fusion sees as elementwise;
6. fuse-sibling-matmuls: matmuls sharing an operand (Q, K, V) become one wider matmul;
7. lower-attention: each attention op becomes an extended-Einsum cascade (FuseMax),
   rewritten from the 3-pass textbook form to the 1-pass online softmax, with its key
   tile and, for decode, a split over the keys (`einfuse explain` shows the counts);
8. eliminate-common-subexpressions, 9. eliminate-dead-code: clean up after the rewrites;
10. fuse: partition into fused groups, one kernel each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from einfuse.errors import EinfuseError
from einfuse.ir.graph import Graph
from einfuse.passes.manager import Observer, Pass, PassManager, registered_passes

__all__ = ["DEFAULT_PIPELINE", "default_pipeline", "optimize", "pipeline_passes"]

DEFAULT_PIPELINE: tuple[str, ...] = (
    "fold-constants",
    "fold-shape-computations",
    "canonicalize",
    "recognize-attention",
    "fold-batchnorm",
    "fuse-sibling-matmuls",
    "lower-attention",
    "eliminate-common-subexpressions",
    "eliminate-dead-code",
    "fuse",
)


def default_pipeline() -> list[str]:
    """The default pass names, in order (a new list: edit it freely)."""
    return list(DEFAULT_PIPELINE)


def pipeline_passes(extra: Sequence[Pass | str] = ()) -> list[Pass | str]:
    """The default pipeline with `extra` passes inserted just before `fuse` (where a user's
    fusion pass belongs: after simplification, before the partitioner, which keeps the
    fused groups it finds). Fails, naming them, when default passes are not registered."""
    known = registered_passes()
    missing = [name for name in DEFAULT_PIPELINE if name not in known]
    if missing:
        raise EinfuseError(
            f"the default pipeline needs pass(es) that are not registered: {', '.join(missing)}",
            hint=f"registered passes: {', '.join(sorted(known))}",
        )
    passes: list[Pass | str] = default_pipeline()
    at = passes.index("fuse")
    passes[at:at] = list(extra)
    return passes


def optimize(
    graph: Graph,
    verify: bool = False,
    dump: str | Path | None = None,
    instrument: Observer | None = None,
    extra: Sequence[Pass | str] = (),
) -> Graph:
    """Runs the default pipeline (with `extra` passes before `fuse`) on `graph`.

    Passes rewrite the graph in place; the result is returned. verify: run the verifier
    before the first pass and after each one. dump: write the IR after each pass to
    DIR/NN-pass.ir. instrument: called with (PassRecord, graph) after each pass."""
    pm = PassManager(pipeline_passes(extra), verify=verify, dump=dump, instrument=instrument)
    return pm.run(graph)
