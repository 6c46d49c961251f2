"""scripts/bench_evict_multi_seq.py on the real SmolLM2 Q4_1 with a short fill: the JSON result holds the three
phases (no eviction, one sequence compacted, both), and the KV accounting of each sequence follows the evictions
(the speed numbers themselves are the script's job: docs/per-head-eviction.md, section 8)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_evict_multi_seq.py"


@pytest.mark.native
@pytest.mark.parametrize("extra", [[], ["--unified", "--no-flash-attn"]], ids=["streams-fa", "unified-nofa"])
def test_bench_evict_multi_seq_result(tmp_path, extra):
    out = tmp_path / "result.json"
    command = [sys.executable, str(SCRIPT), "--n-ctx-fill", "96", "--n-decode", "3", "--threads", "1",
               "--out", str(out), *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("machine", "versions", "command"):
        assert report[key]
    assert report["kv_unified"] == ("--unified" in extra) and report["flash_attn"] == ("--no-flash-attn" not in extra)
    phases = report["phases"]
    assert list(phases) == ["none", "one", "both"]
    for phase in phases.values():
        assert phase["tokens_per_s"] > 0 and phase["tokens_per_s_full"] > 0
        assert len(phase["step_seconds"]) == len(phase["step_seconds_full"]) == 3
    none, one, both = (phases[k]["kv"] for k in ("none", "one", "both"))
    for s in ("seq0", "seq1"):
        assert none[s]["n_entries"] == none[s]["n_entries_full"] and none[s]["bytes_headroom"] == 0
    assert one["seq0"]["n_entries"] < 0.9 * one["seq0"]["n_entries_full"]  # keep ~0.4, the last 32 entries all
    assert one["seq1"]["n_entries"] == one["seq1"]["n_entries_full"]     # the other sequence untouched
    assert both["seq1"]["n_entries"] < 0.9 * both["seq1"]["n_entries_full"]
    assert both["seq0"]["bytes_used"] < none["seq0"]["bytes_used"]
