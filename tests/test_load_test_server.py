"""scripts/load_test_server.py --smoke: llama-server with --kv-evict audiokv --kv-evict-keep 0.4 and two slots answers
four requests of real speech, each slot's KV at <= 0.42 of full, its RSS sampled; malformed requests sent while the
slots are busy (bad base64, a text file and random bytes as audio, two hours of audio, an unknown method, keep 0 and 2)
are each an HTTP 4xx naming the problem, and the server stays up (the full run's numbers: docs/results/
load_test_server.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "load_test_server.py"
sys.path.insert(0, str(REPO / "scripts"))

import load_test_server as load  # noqa: E402

#: what each malformed request's message must say
MALFORMED = {
    "bad base64": "Invalid base64 value",
    "not audio: a text file": "Failed to load image or audio file",
    "not audio: random bytes": "Failed to load image or audio file",
    "two hours of audio": "s is too long for the context: it needs at least",
    "unknown method": "unknown KV eviction method 'magic'",
    "keep 0": "\"kv_evict.keep\" must be a number in (0, 1], got 0",
    "keep 2": "\"kv_evict.keep\" must be a number in (0, 1], got 2",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    out = tmp / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--work-dir", str(tmp / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    report = json.loads(out.read_text()) if out.is_file() else None
    return proc, report, out


@pytest.mark.native
def test_smoke_run_passes(smoke):
    proc, report, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"machine", "versions", "command", "finished_utc"} <= set(report)
    assert report["slots"] == 2 and report["requests"] == 4 and report["passed"]
    summary = report["summary"]
    assert summary["answered"] == 4
    assert 0.3 < summary["kv_ratio_max"] <= 0.42 and set(summary["kv_ratio_max_per_slot"]) == {"0", "1"}
    assert {r["slot"] for r in report["requests_detail"]} == {0, 1}
    assert all(r["kv_evict"]["method"] == "audiokv" and r["kv_evict"]["n_evictions"] == 1
               for r in report["requests_detail"])
    assert report["checks"]["rss_stable"] is None  # too short to judge; the full run judges it
    assert len(report["rss_samples"]) >= 3 and all(rss > 0 for _, rss, _ in report["rss_samples"])
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.native
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_is_4xx_and_the_server_stays_up(smoke, name):
    _, report, _ = smoke
    found = {m["name"]: m for m in report["malformed"]}
    assert set(found) == set(MALFORMED)
    m = found[name]
    assert 400 <= m["status"] < 500, m
    assert MALFORMED[name] in m["message"], m
    assert m["ok"]  # the server answered /health after it


def test_rss_trend_fits_the_last_half():
    rising = [(float(i), 1000 + 10 * done, done) for i, done in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 8])]
    trend = load.rss_trend(rising, 8)
    assert trend["from_request"] == 4 and trend["samples_last_half"] == 5
    assert trend["slope_bytes_per_request"] == pytest.approx(10.0)
    assert trend["rise_over_last_half_bytes"] == pytest.approx(40.0)
    flat = [(float(i), 5000 + (7 if i % 2 else -7), done) for i, done in enumerate([0, 2, 4, 4, 5, 6, 7, 8, 8])]
    assert abs(load.rss_trend(flat, 8)["rise_relative"]) < 0.01
    assert load.rss_trend(rising[:3], 8)["slope_bytes_per_request"] is None  # nothing in the last half yet


def test_speech_wav_is_real_speech_of_the_length_asked():
    import io
    import wave

    with wave.open(io.BytesIO(load.speech_wav(12.5)), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 200000)
    with wave.open(io.BytesIO(load.speech_wav(3.0, rate=8000, sample_width=1)), "rb") as w:
        assert (w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 8000, 24000)
