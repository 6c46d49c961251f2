"""Shared set-up of the text-document tests (tests/test_text_input.py, tests/test_eval_text_quality.py,
tests/test_kv_budget.py, tests/test_interrupt.py): the tiny models' filler text and a tiny text-only model.
Import the fixture by name: ``from tests.text_fixtures import FILLER, text_model  # noqa: F401``."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The tiny models' filler: words of their BPE corpus, so that a sentence is a few tokens.
FILLER = "The New York Times. Men walk on moon. Astronauts land on plain, collect rocks, plant flag. "


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A tiny random qwen2 text model (ChatML), alone in its folder: no projector."""
    from audiokv_edge.testing import tiny_models as tm

    path = tmp_path_factory.mktemp("text_only") / "model.gguf"
    tm.write_text_model(path, tm.TextModelSpec("qwen2", tm.CHATML, n_embd=128, n_head=4, n_head_kv=2, head_dim=32),
                        seed=5)
    return path
