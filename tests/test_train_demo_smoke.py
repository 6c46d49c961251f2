"""Smoke run of scripts/train_demo_model.py, the whole pipeline at toy size: speech synthesis (training and
held-out, and an extra long-form set), the encoder cache, 2 CTC steps, 1 LLM-in-the-loop step, export of the projector and of an mmproj GGUF,
and the held-out WER through the patched llama.cpp; then a re-run resumes from the checkpoint instead of starting
over; a new phase starts from the committed weights. The real run is the same command with default sizes (hours; docs/demo-model.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.native
def test_train_demo_model_smoke(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "train_demo_model.py"), "--work", str(tmp_path), "--recordings", "3",
           "--heldout", "1", "--ctc-steps", "2", "--llm-steps", "1", "--eval-every", "1000", "--threads", "2",
           "--extra-long", "1", "--extra-long-range", "30,32", "--heldout-long", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stage"] == "llm" and out["step"] == 1 and 0.0 <= out["heldout_wer"] and out["heldout_n"] == 1
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log if "loss" in r] == ["ctc", "ctc", "llm"]
    assert all(r["loss"] > 0 for r in log if "loss" in r)
    assert (tmp_path / "projector.npz").is_file() and (tmp_path / "mmproj.gguf").is_file()
    manifest = [json.loads(line) for line in (tmp_path / "data" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 4 and not any("awb" in r["voice"] or "rms" in r["voice"] for r in manifest)
    assert manifest[-1]["id"] == "L000000" and manifest[-1]["kind"] == "long" and manifest[-1]["seconds"] >= 30.0
    assert (tmp_path / "data" / "feats" / "L000000.npy").is_file()
    held_long = [json.loads(line) for line in (tmp_path / "heldout-long" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["kind"]) for r in held_long] == [("HL000000", "long")] and held_long[0]["seconds"] >= 30.0
    # resumable: a second run with one more LLM step continues at step 1
    res = subprocess.run(cmd[:10] + ["--llm-steps", "2", "--eval-every", "1000", "--threads", "2", "--skip-data"],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] == 2
    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in steps if "loss" in r][-2:] == [("llm", 1), ("llm", 2)]

    # a new phase on the committed built-in model in another folder (its data linked): starts from the committed
    # weights at --init-step, with the encoder-output augmentation, and its held-out WER is measured
    phase = tmp_path / "phase"
    phase.mkdir()
    for d in ("data", "heldout"):
        (phase / d).symlink_to(tmp_path / d)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "train_demo_model.py"), "--work", str(phase),
                          "--skip-data", "--llm-steps", "6", "--restart-at", "5", "--eval-every", "1000",
                          "--threads", "2", "--init-from", str(REPO / "audiokv_edge" / "data" / "demo"),
                          "--feature-gain-jitter", "0.2", "--feature-dropout", "0.1"],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stage"] == "llm" and out["step"] == 6 and 0.0 <= out["heldout_wer"]
    log = [json.loads(line) for line in (phase / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["init_from"].endswith("projector.npz") and log[0]["step"] == 5
    assert [(r["stage"], r["step"]) for r in log if "loss" in r] == [("llm", 6)]
