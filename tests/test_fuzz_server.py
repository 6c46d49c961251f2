"""scripts/fuzz_server.py, bounded: llama-server with --kv-evict (``python -m audiokv_edge.serve``, tiny model, two
slots) fed seeded random and malformed JSON bodies and audio payloads for a few seconds answers every request with
an HTTP status (4xx for bad input, with a message), never a 5xx but 501, and stays alive. The long run:
``bash scripts/fuzz.sh -t SECONDS server`` (docs/fuzzing.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "fuzz_server.py"
sys.path.insert(0, str(REPO / "scripts"))


@pytest.mark.native
def test_bounded_fuzz_run_finds_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "15", "--seed", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    summary = json.loads((tmp_path / "summary.json").read_text())
    findings = [json.loads(p.read_text()) for p in sorted((tmp_path / "findings").glob("*.json"))]
    assert proc.returncode == 0, (summary, [(f["problem"], f["endpoint"], f["response"][:200]) for f in findings[:5]])
    assert summary["server_alive_at_end"] and summary["findings"] == 0
    assert summary["executions"] >= 10
    assert sum(n for status, n in summary["statuses"].items() if status.startswith("4")) >= 3  # bad input was sent


def test_the_mutator_is_seeded_and_reaches_every_kind_of_damage():
    """Same seed, same requests; a few hundred of them hold bodies that are not JSON, damaged audio, broken base64,
    kv_evict fields of random types and nesting a thousand deep."""
    from fuzz_server import ServerFuzzer

    def draw(seed):
        fuzzer = ServerFuzzer(seed, max_tokens=4)
        return [fuzzer.request() for _ in range(400)]

    first = draw(3)
    assert first == draw(3) and first != draw(4)
    bodies = [raw for _, raw, _ in first]
    not_json = 0
    for raw in bodies:
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            not_json += 1
    assert not_json >= 40
    assert any(b"[" * 1000 in raw for raw in bodies)
    assert any(b'"kv_evict": {"method": ' in raw and b'"keep": 0.4' not in raw for raw in bodies)
    assert len({endpoint for endpoint, _, _ in first}) >= 6
    assert len({content_type for _, _, content_type in first}) >= 3
