"""The tutorials in docs/ run as written: every ```python block is executed in order in
one namespace, and a ```text block right after a python block is the output that block
must print. Then the claims the prose makes are checked one by one."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from einfuse.codegen import reference
from einfuse.frontends.onnx import convert_model
from einfuse.passes.fuse import FUSION_RULES
from einfuse.passes.pipeline import optimize
from einfuse.testing.models import token_inputs

DOCS = Path(__file__).resolve().parent.parent / "docs"
FUSION_DOC = DOCS / "writing-a-fusion-pass.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)


def code_blocks(path: Path) -> list[tuple[str, str | None, int]]:
    """(python source, expected output or None, line number) per python block."""
    text = path.read_text(encoding="utf-8")
    fences = [(m.group(1), m.group(2), m.start(), m.end()) for m in _FENCE.finditer(text)]
    out = []
    for k, (lang, body, start, end) in enumerate(fences):
        if lang != "python":
            continue
        expected = None
        if k + 1 < len(fences):
            next_lang, next_body, next_start, _ = fences[k + 1]
            if next_lang == "text" and not text[end:next_start].strip():
                expected = next_body
        out.append((body, expected, text.count("\n", 0, start) + 1))
    return out


def run_doc(path: Path) -> dict:
    """Runs the python blocks of `path`; returns the namespace they share."""
    module = types.ModuleType(f"doc_{path.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        for source, expected, line in code_blocks(path):
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                exec(compile(source, f"{path.name}:{line}", "exec"), module.__dict__)
            if expected is not None:
                got = [s.rstrip() for s in stdout.getvalue().rstrip("\n").splitlines()]
                want = [s.rstrip() for s in expected.rstrip("\n").splitlines()]
                assert got == want, f"{path.name}, block at line {line} printed:\n{stdout.getvalue()}"
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


@pytest.fixture(scope="module")
def fusion_doc() -> dict:
    return run_doc(FUSION_DOC)


def test_every_block_runs_and_prints_what_the_page_shows(fusion_doc):
    blocks = code_blocks(FUSION_DOC)
    assert len(blocks) >= 6 and sum(expected is not None for _, expected, _ in blocks) >= 4
    assert "FuseMatmulBiasGelu" in fusion_doc


def test_the_pass_is_well_under_40_lines():
    (source,) = [s for s, _, _ in code_blocks(FUSION_DOC) if "class FuseMatmulBiasGelu" in s]
    lines = [line for line in source.splitlines() if line.strip()]
    assert len(lines) < 40, len(lines)


def test_the_rule_table_lists_fusion_rules_in_order():
    text = FUSION_DOC.read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE)
    assert listed == [r.__name__ for r in FUSION_RULES]


def test_the_pass_fires_once_per_bert_layer(fusion_doc, bert_like_model):
    inputs = token_inputs(bert_like_model, seed=0)
    graph = convert_model(bert_like_model)
    want = reference.run(graph, inputs)
    records = []
    out = optimize(
        graph, verify=True, extra=[fusion_doc["FuseMatmulBiasGelu"]()], instrument=lambda r, g: records.append(r)
    )
    (mine,) = [r for r in records if r.name == "fuse-matmul-bias-gelu"]
    assert mine.rules_fired == {"fold_erf_gelu": 6, "fuse_matmul_bias_gelu": 6}
    regions = [n.attrs["region"] for n in out.nodes]
    assert [[m.op for m in r.nodes] for r in regions if r.name == "matmul_bias_gelu"] == [["matmul", "add", "gelu"]] * 6
    got = reference.run(out, inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)
