"""scripts/soak_memory.py: its --smoke run on the tiny pair (one minute of speech streamed under a KV budget that
binds, four answers in one Session), and the last-half slope it reports (the hour-long numbers are the script's
job: docs/results/soak_memory.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "soak_memory.py"
sys.path.insert(0, str(REPO / "scripts"))

import soak_memory  # noqa: E402


def test_last_half_slope():
    flat = soak_memory.last_half_slope([0, 1, 2, 3, 4, 5], [9, 100, 100, 100, 100, 100])
    assert flat["slope"] == pytest.approx(0.0, abs=1e-9) and flat["samples"] == 3 and flat["x_from"] == 3
    rising = soak_memory.last_half_slope([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 10, 12, 14, 16])
    assert rising["slope"] == pytest.approx(2.0) and rising["change"] == pytest.approx(6.0)
    assert soak_memory.last_half_slope([1], [5])["slope"] is None


@pytest.mark.native
@pytest.mark.slow
def test_smoke_run(tmp_path):
    out = tmp_path / "soak.json"
    budget = 256
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--kv-budget", str(budget), "--out", str(out),
                           "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"machine", "versions", "command", "finished_utc"} <= set(report)
    assert report["kv_budget"] == budget and report["stream"] is True and report["chunk_tokens"] == 750
    assert out.with_suffix(".png").stat().st_size > 10000
    [run] = report["audio_runs"]
    assert run["status"] == "ok" and run["minutes"] == 1.0
    assert run["stats"]["audio_tokens"] == 2250 and run["stats"]["kv_budget"] == budget  # 60.0 s: a 3rd window
    samples = run["samples"]
    assert len(samples) >= 3 and samples[-1]["done_positions"] == samples[-1]["total_positions"]
    assert samples[-1]["audio_minutes"] == pytest.approx(1.0)
    assert all(s["rss_bytes"] > 10 << 20 for s in samples)
    assert run["child_maxrss_bytes"] >= max(s["rss_bytes"] for s in samples)
    assert run["slope_last_half"]["slope"] is not None
    # the budget binds: 2,250 audio tokens seen, every eviction keeps at most 256 entries per (layer, KV head)
    records = run["eviction_records"]
    assert len(records) == run["evictions"] >= 2
    assert all(r["entries_after"] <= budget * run["heads"] for r in records)
    assert records[-1]["keep"] < budget / 2250 + 0.01
    answers = report["answers_run"]
    assert answers["status"] == "ok" and [s["answer"] for s in answers["samples"]] == [1, 2, 3, 4]
    assert [s["kind"] for s in answers["samples"]] == ["audio", "follow_up", "audio", "follow_up"]
    assert answers["slope_last_half"]["samples"] == 2
    assert report["peak_rss_by_minutes"]["1"]["child_maxrss_bytes"] == run["child_maxrss_bytes"]
