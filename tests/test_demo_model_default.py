"""The built-in demo audio model as set-up assembles it (committed projector + LoRA, pip encoder and text model):
it transcribes the shipped human speech clip, its files are the recorded ones, and its parts are refused on a model
they do not fit."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.test_run_cli import JFK, assert_one_line_error, run_cli

pytestmark = pytest.mark.native

JFK_TEXT = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


@pytest.fixture(scope="module")
def demo():
    from audiokv_edge.demo_model import export

    try:
        return export.demo_paths()
    except export.DemoModelError as exc:
        pytest.fail(f"{exc} (scripts/setup.sh assembles it from the committed weights)")


def test_demo_model_transcribes_jfk_at_full_cache(demo):
    """No model argument: the demo model transcribes whisper.cpp's jfk.wav with WER <= 0.5 (full cache, greedy;
    jiwer on normalised text)."""
    import jiwer

    from audiokv_edge.demo_model import corpus

    proc = run_cli("--method", "full", "--json", "--max-tokens", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built-in demo audio model" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["lora"] == str(demo.lora) and out["audio_tokens"] == 375
    wer = jiwer.wer(corpus.normalise(JFK_TEXT), corpus.normalise(out["text"]) or "-")
    assert wer <= 0.5, (wer, out["text"])


def test_demo_files_match_their_recorded_sha256(demo):
    from audiokv_edge.demo_model import export

    sums = export.read_sums()
    for path in (demo.model, demo.mmproj, demo.lora):
        assert export.sha256(path) == sums[pathlib.Path(path).name], path


def test_demo_projector_on_another_text_model_is_refused(tmp_path, demo):
    """The demo projector (576-wide output) on a 64-wide text model: one error line naming the projector."""
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    assert_one_line_error(run_cli(str(model), str(JFK), "--mmproj", str(demo.mmproj), "--method", "full"),
                          "mmproj.gguf")
    assert_one_line_error(run_cli(str(model), str(JFK), "--mmproj", str(_), "--lora", str(demo.lora),
                                  "--method", "full"), "lora.gguf")
