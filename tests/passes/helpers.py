"""Before/after IR-text checks: the one way pass tests compare graphs.

    check_rewrite(BEFORE, AFTER, "fold-constants")
    check_rewrite(BEFORE, AFTER, ["fold-constants", "eliminate-dead-code"])
    check_rewrite(BEFORE, AFTER, SIMPLIFY_RULES, fired={"fold_double_relu": 2})

`before` is parsed and verified, the transform runs with the verifier after every
pass, the result is printed and compared with `after` parsed and printed again (so
spacing, attribute order and default attributes do not matter). On a mismatch both
sides are shown, numbered, with the first differing line marked.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from einfuse.ir.graph import Graph
from einfuse.ir.parser import parse
from einfuse.ir.printer import print_graph
from einfuse.ir.verifier import verify
from einfuse.passes import Pass, PassManager
from einfuse.passes.pattern import Rule, RuleSet, rewrite

Transform = Pass | str | list | Rule | RuleSet


def apply(graph: Graph, transform: Transform) -> tuple[Graph, dict[str, int]]:
    """Runs a pass, pass name, list of them, rule or rule set on `graph`, verifying
    after each step; returns the result and how many times each rule fired."""
    if isinstance(transform, (Rule, RuleSet)):
        result = rewrite(graph, transform)
        verify(result.graph)
        return result.graph, dict(result.fired)
    passes = transform if isinstance(transform, list) else [transform]
    pm = PassManager(passes, verify=True)
    out = pm.run(graph)
    fired: Counter = Counter()
    for record in pm.records:
        fired.update(record.rules_fired)
    return out, dict(fired)


def check_rewrite(
    before: str,
    after: str,
    transform: Transform,
    constants: dict[str, np.ndarray] | None = None,
    fired: dict[str, int] | None = None,
) -> Graph:
    """Asserts that `transform` turns IR text `before` into `after`; returns the result.

    constants: values of constants elided in the texts (`@w = const : f32[64,64]`); a
    constant elided in `after` that is not given here takes the result's value, so only
    its type is checked. fired: the exact rule counts expected, e.g. {"fold_x": 2}."""
    graph = parse(before, constants=constants)
    verify(graph)
    result, counts = apply(graph, transform)
    got = print_graph(result)
    known = {name: arr for name, (_, arr) in result.constants.items()}
    known.update(constants or {})
    expected_graph = parse(after, constants=known)
    verify(expected_graph)
    expected = print_graph(expected_graph)
    if got != expected:
        pytest.fail(describe_difference(got, expected))
    if not result.structurally_equal(expected_graph):
        pytest.fail("the IR text matches but the data of a large (elided) constant differs:\n" + got)
    if fired is not None and counts != fired:
        pytest.fail(f"rules fired {counts}, expected {fired}")
    return result


def describe_difference(got: str, expected: str) -> str:
    """Both texts, numbered, the first line where they differ marked with `>>`."""
    a, b = got.splitlines(), expected.splitlines()
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def numbered(lines: list[str]) -> str:
        out = []
        for i, line in enumerate(lines):
            mark = ">>" if i == first else "  "
            out.append(f"{mark}{i + 1:4d} | {line}")
        if first >= len(lines):
            out.append(f">>{first + 1:4d} | <end of text>")
        return "\n".join(out)

    return (
        f"the IR after the transform differs from the expected IR at line {first + 1}\n"
        f"--- got ---\n{numbered(a)}\n"
        f"--- expected ---\n{numbered(b)}"
    )
