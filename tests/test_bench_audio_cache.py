"""scripts/bench_audio_cache.py at toy size: a tiny Qwen2-Audio pair, two questions, one round; the result records
both settings' times, the cache's hits and that the answers agree (the real figures are the script's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.native
def test_bench_audio_cache_smoke(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_audio_cache.py"), "--model", str(model),
                          "--mmproj", str(mmproj), "--audio", str(REPO / "audiokv_edge" / "data" / "jfk.wav"),
                          "--questions", "2", "--rounds", "1", "--max-tokens", "4", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["benchmark"] == "bench_audio_cache" and r["same_answers"] is True
    assert set(r["rounds_s"]) == {"0", "64"} and all(len(v) == 1 and v[0] > 0 for v in r["rounds_s"].values())
    assert r["cache"]["hits"] >= 1 and r["ratio_cached_to_uncached"] > 0


def test_bad_arguments_are_refused():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_audio_cache.py"), "--questions", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--questions must be" in res.stderr
