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
    # the kernel's high-water mark and VmRSS are kept by different counters: equal within a few pages, not exactly
    assert run["child_maxrss_bytes"] >= 0.98 * max(s["rss_bytes"] for s in samples)
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


PEAK_OF_TOKENIZING = """
import sys
from audiokv_edge.runtime.session import Session, SessionConfig
from audiokv_edge.runtime.stats import peak_rss_bytes
with Session(sys.argv[1], sys.argv[2], config=SessionConfig(method="full", ctx=64, max_tokens=1)) as session:
    session.count_audio_tokens(sys.argv[3])
print(peak_rss_bytes())
"""


@pytest.mark.native
def test_peak_memory_of_reading_audio_does_not_grow_with_its_length(tmp_path):
    """Reading and tokenizing 30 minutes of speech peaks within 32 MiB of 30 seconds' (nothing is encoded): the
    file is read block by block and tokenized one 30 s mel window at a time (audiokv_edge/runtime/audio_windows.py;
    it was 607 vs 68 MiB when the whole recording was decoded and cut into its mel windows at once)."""
    import soundfile

    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    peaks = {}
    for seconds in (30.0, 1800.0):
        wav = tmp_path / f"speech-{seconds:g}.wav"
        soundfile.write(wav, soak_memory.tiled_speech(seconds), 16000)
        proc = subprocess.run([sys.executable, "-c", PEAK_OF_TOKENIZING, str(model), str(mmproj), str(wav)],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[seconds] = int(proc.stdout.split()[-1])
    assert peaks[1800.0] - peaks[30.0] < 32 << 20, {k: v >> 20 for k, v in peaks.items()}
