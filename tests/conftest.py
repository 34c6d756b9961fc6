"""Shared pytest configuration: hypothesis profiles and session-wide fixtures.

Hypothesis profiles: "ci" (the default, 25 examples per property) keeps the suite
fast; "dev" (200 examples) digs deeper when working on an op or a pass:

    HYPOTHESIS_PROFILE=dev .venv/bin/python -m pytest tests/ir -q

No deadline in either: the first example of a test pays for imports and caches,
and a loaded machine must not turn into flaky failures.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test: values never depend on test order."""
    return np.random.default_rng(0)


# Exported transformers are cached on disk (einfuse.testing.models.model_cache_dir);
# the session scope also keeps the parsed protos, so several tests share one export.


@pytest.fixture(scope="session")
def bert_like_model():
    """BERT-like encoder: hidden 384, 6 layers, 12 heads, seq 128, batch 1."""
    from einfuse.testing.models import bert_like

    return bert_like(seq=128, hidden=384, layers=6, heads=12, batch=1, seed=0)


@pytest.fixture(scope="session")
def gpt2_like_model():
    """GPT-2-like decoder with LM head: hidden 384, 6 layers, 12 heads, seq 128, vocab 1000."""
    from einfuse.testing.models import gpt2_like

    return gpt2_like(seq=128, hidden=384, layers=6, heads=12, batch=1, seed=0)
