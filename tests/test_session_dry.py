"""SessionConfig.dry_multiplier: llama.cpp's DRY penalty before the greedy pick. Off (0) it is the plain greedy
sampler; on, a random-weight model that loops greedily ("countr countr ...") stops repeating long sequences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import DRY_ALLOWED_LENGTH, SessionConfig
from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parents[1]
JFK = REPO / "audiokv_edge" / "data" / "jfk.wav"

PROBE = r"""
import json, sys
from audiokv_edge.runtime.session import Session, SessionConfig
model, jfk = sys.argv[1:3]
out = {}
for dry in (0.0, 0.0, 3.0):
    with Session(model, config=SessionConfig(method="full", max_tokens=48, threads=2, ctx=2048,
                                             dry_multiplier=dry)) as s:
        out.setdefault(str(dry), []).append(s.answer(jfk).tokens)
print(json.dumps(out))
"""


def _longest_repeat(tokens: list[int]) -> int:
    """Length of the longest token sequence that occurs twice (overlaps allowed)."""
    best = 0
    for n in range(1, len(tokens)):
        seen = {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
        if len(seen) == len(tokens) - n + 1:
            break
        best = n
    return best


@pytest.mark.native
def test_dry_penalty_breaks_the_greedy_loop_of_a_random_model(tmp_path):
    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), str(JFK)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    greedy, again = out["0.0"]
    dry = out["3.0"][0]
    assert greedy == again and len(greedy) == 48
    assert _longest_repeat(greedy) > 2 * DRY_ALLOWED_LENGTH      # the random model loops
    assert dry != greedy and _longest_repeat(dry) < _longest_repeat(greedy)


@pytest.mark.parametrize("bad", [-0.5, 101.0, True, "0.8", float("nan")])
def test_dry_multiplier_is_validated(bad):
    with pytest.raises(ValueError, match="dry_multiplier"):
        SessionConfig(dry_multiplier=bad)
