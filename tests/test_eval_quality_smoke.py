"""Smoke run of scripts/eval_quality.py (the quality table): the evaluation set in the reserved voices, full /
snapkv / audiokv at keep 0.4 through the patched llama.cpp, and its JSON, PNG and markdown outputs. A tiny
random-weight pair stands in for the demo model, so the WER itself means nothing here; the figures come from
the real run (docs/demo-model.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.native
def test_eval_quality_smoke(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path / "models", "llama-ultravox")
    cmd = [sys.executable, str(REPO / "scripts" / "eval_quality.py"), "--smoke", "--model", str(model), "--mmproj",
           str(mmproj), "--set", str(tmp_path / "set"), "--out", str(tmp_path / "out"), "--name", "smoke",
           "--max-tokens", "16", "--ctx", "4096"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "smoke.json").read_text())
    names = {(r["config"], r["keep"]) for r in out["summary"]}
    assert names == {("full", 1.0), ("snapkv", 0.4), ("audiokv", 0.4)}
    items = {r["item"] for r in out["results"]}
    assert items == {"awb-60s", "rms-60s", "jfk.wav", "arctic_a0007.wav"}
    for r in out["results"]:
        assert r["wer"] >= 0 and r["ref_words"] > 0
        if r["config"] != "full":
            assert r["kv_bytes_kept"] < 0.5 * r["kv_bytes_full"]
    passages = json.loads((tmp_path / "set" / "evalset.json").read_text())
    assert {p["voice"] for p in passages} == {"flite:awb", "flite:rms", "human"}
    assert all(p["questions"] for p in passages if p["voice"] != "human")
    assert (tmp_path / "out" / "smoke.png").stat().st_size > 10_000
    assert "| audiokv | 0.4 |" in (tmp_path / "out" / "smoke.md").read_text()
    # resumable: a re-run finds every result and runs nothing
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and len(json.loads((tmp_path / "out" / "smoke.json").read_text())["results"]) == 12
