"""scripts/bench_stream_memory.py: its JSON result on a tiny model with 45 s of speech (two 30 s chunks), and how it
classifies a child run (the real five-minute numbers are the script's job: docs/results/bench_stream_memory.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_stream_memory.py"
sys.path.insert(0, str(REPO / "scripts"))

import bench_stream_memory as bench  # noqa: E402


def child(exit_code=0, stdout="", stderr="", timed_out=False) -> dict:
    return {"exit_code": exit_code, "stdout": stdout, "stderr": stderr, "timed_out": timed_out, "wall_s": 1.0,
            "child_maxrss_bytes": 1}


def test_classify_ok_refused_failed():
    assert bench.classify(child(stdout='progress\n{"audio_tokens": 3}\n')) == ("ok", None, {"audio_tokens": 3})
    refused = child(1, stderr="audiokv-run: error: --stream needs re-planning: drop --stream\n")
    assert bench.classify(refused) == ("refused", "--stream needs re-planning: drop --stream", None)
    status, error, _ = bench.classify(child(-11, stderr="Segmentation fault\n"))
    assert status == "failed" and "exit -11" in error and "Segmentation" in error
    assert bench.classify(child(0, stdout="no json"))[0] == "failed"
    assert bench.classify(child(1, stderr="Traceback (most recent call last):\n  boom\n"))[0] == "failed"
    assert bench.classify(child(-9, timed_out=True)) == ("failed", "timed out", None)


def test_parse_run():
    assert bench.parse_run("audiokv+stream") == ("audiokv", True)
    assert bench.parse_run("full") == ("full", False)
    for bad in ("nosuch", "audiokv+fast", "+stream"):
        with pytest.raises(Exception, match="METHOD"):
            bench.parse_run(bad)


def test_compare_against_full():
    def run(name, method, peak, kept, full=100, status="ok"):
        return {"run": name, "method": method, "status": status, "child_maxrss_bytes": peak,
                "kv_bytes_main_cache": full * 2, "runner": {"peak_rss_bytes": peak, "kv_bytes_kept": kept,
                                                           "kv_bytes_full": full, "eviction_applied": True}}
    rows = bench.compare([run("full", "full", 1000, 100), run("a", "audiokv", 800, 40),
                          run("b", "snapkv", 1, 1, status="refused")])
    assert [r["run"] for r in rows] == ["a"]
    assert rows[0]["peak_rss_ratio"] == 0.8 and rows[0]["peak_rss_saved_bytes"] == 200
    assert rows[0]["kv_kept_ratio"] == 0.4 and rows[0]["kv_main_cache_ratio"] == 1.0


def test_tiled_speech_length():
    samples = bench.tiled_speech(20.0)
    assert samples.shape == (320000,) and samples.dtype.name == "float32" and abs(samples).max() > 0.1


@pytest.mark.native
@pytest.mark.slow
def test_script_on_tiny_model(tmp_path):
    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), "--mmproj", str(mmproj),
                           "--audio-seconds", "45", "--runs", "full", "audiokv", "audiokv+stream",
                           "--max-tokens", "4", "--work-dir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"machine", "versions", "command", "finished_utc"} <= set(report)
    assert "bench_stream_memory.py" in report["command"] and report["versions"]["patches"]
    audio = report["audio"]
    assert audio["seconds"] == 45 and audio["chunks"] == 2 and audio["audio_tokens"] == 1500  # qwen2a: 750 / chunk
    assert report["ctx"] == {"full": 1792, "stream": 1024}  # all positions / one chunk + text + answer, to 256
    runs = {r["run"]: r for r in report["runs"]}
    for name, kept in (("full", 1.0), ("audiokv", 0.4)):
        r = runs[name]
        assert r["status"] == "ok" and r["exit_code"] == 0 and r["ctx"] == 1792, r
        assert r["runner"]["audio_tokens"] == 1500 and r["runner"]["eviction_applied"] is True
        assert abs(r["runner"]["kv_bytes_kept"] / r["runner"]["kv_bytes_full"] - kept) < 0.02
        # the kernel's ru_maxrss of the reaped child vs the runner's own VmHWM: the same peak, within 1%
        assert r["child_maxrss_bytes"] >= 0.99 * r["runner"]["peak_rss_bytes"] > 0 and r["wall_s"] > 0
        assert r["kv_bytes_main_cache"] > r["runner"]["kv_bytes_full"]  # 1792 cells for 1500 + text positions
    streamed = runs["audiokv+stream"]
    assert streamed["ctx"] == 1024
    assert streamed["status"] == "ok", streamed
    assert streamed["runner"]["eviction_applied"] is True and streamed["runner"]["stream"] is True
    assert abs(streamed["runner"]["kv_bytes_kept"] / streamed["runner"]["kv_bytes_full"] - 0.4) < 0.05
    assert [c["run"] for c in report["comparisons"]] == ["audiokv", "audiokv+stream"]
