"""scripts/eval_demo_checkpoint.py, the checkpoint comparison used before a demo model is committed: the built-in
model's WER on a one-recording held-out set (jfk.wav in the trainer's layout) through the real script, and missing
files refused by name."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.evict_fixtures import child_env

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval_demo_checkpoint.py"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=child_env())


@pytest.mark.native
def test_heldout_set_of_one_recording(tmp_path):
    from audiokv_edge.demo_model import export

    demo = export.demo_paths()
    held = tmp_path / "heldout"
    (held / "audio").mkdir(parents=True)
    audio, rate = sf.read(REPO / "audiokv_edge" / "data" / "jfk.wav", dtype="float32")
    assert rate == 16000
    sf.write(held / "audio" / "000000.flac", audio, rate)
    (held / "manifest.jsonl").write_text(json.dumps({"id": "000000", "kind": "short", "text": JFK_TEXT}) + "\n")
    res = run("--mmproj", demo.mmproj, *(["--lora", demo.lora] if demo.lora else []), "--work", tmp_path,
              "--max-tokens", "64", "--threads", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("000000 short WER ")
    summary = json.loads(lines[-1])
    assert summary["n"] == 1 and summary["set"] == "heldout" and summary["wer_long"] is None
    assert np.isclose(summary["wer"], float(lines[0].split()[3]), atol=1e-3) and summary["wer"] <= 0.5


def test_missing_files_are_named(tmp_path):
    res = run("--mmproj", tmp_path / "nope.gguf", "--work", tmp_path)
    assert res.returncode == 2 and "nope.gguf: no such file" in res.stderr
    (tmp_path / "m.gguf").write_bytes(b"x")
    res = run("--mmproj", tmp_path / "m.gguf", "--work", tmp_path)
    assert res.returncode == 2 and "no recordings in the heldout set" in res.stderr
    res = run("--mmproj", tmp_path / "m.gguf", "--work", tmp_path, "--set", "heldout-long")
    assert res.returncode == 2 and "no recordings in the heldout-long set" in res.stderr


def test_reserved_set_is_made_from_the_pinned_texts(tmp_path, monkeypatch):
    import importlib.util

    from audiokv_edge.demo_model import evalset

    pin = {"items": {f"{v}-4s": {"sentences": [f"The {v} lake is calm."], "distractors": ["One.", "Two."] * 10}
                     for v in evalset.EVAL_VOICES}}
    (tmp_path / "pin.json").write_text(json.dumps(pin))
    monkeypatch.setattr(evalset, "PINNED_TEXT", tmp_path / "pin.json")
    spec = importlib.util.spec_from_file_location("eval_demo_checkpoint", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recs = mod.recordings("reserved", tmp_path, tmp_path / "set", durations=(4,))
    assert [(r[0], r[1], r[3]) for r in recs] == [("jfk", "human", JFK_TEXT), ("awb-4s", "long", "The awb lake is calm."),
                                                  ("rms-4s", "long", "The rms lake is calm.")]
    assert all(pathlib.Path(r[2]).is_file() for r in recs)
