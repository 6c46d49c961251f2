"""Calibration speech: flite word timings (alignment + real synthesis), the generator script, the loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.profiling.calibration_set import load_calibration_dir
from audiokv_edge.profiling.synthetic_speech import SynthesisError, align_words, synthesize
from tests.profile_fixtures import write_calibration_set


def test_align_words_exact_with_replaced_and_inserted_phones():
    # "the apple is": alone "the" is dh ax; in context flite says dh iy; an extra "t" was inserted after "apple"
    segs = [("pau", 0.2), ("dh", 0.25), ("iy", 0.3), ("ae", 0.4), ("p", 0.45), ("ax", 0.5), ("l", 0.6),
            ("t", 0.62), ("pau", 0.8), ("ih", 0.9), ("z", 1.0), ("pau", 1.2)]
    phones = [("dh", "ax"), ("ae", "p", "ax", "l"), ("ih", "z")]
    t = align_words(segs, phones, ["The", "apple", "is."])
    assert [(w.word, w.start, w.end) for w in t] == [("The", 0.2, 0.3), ("apple", 0.3, 0.62), ("is.", 0.8, 1.0)]


def test_align_words_refuses_empty_word():
    with pytest.raises(SynthesisError):
        align_words([("pau", 0.1), ("a", 0.2)], [()], ["x"])


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0


def test_flite_timings_match_the_audio():
    text = "The birch canoe slid on the smooth planks. Four hours of steady work faced us."
    audio, sr, timings = synthesize(text, "slt")
    assert sr == 16000
    assert [t.word for t in timings] == text.split()
    starts = [t.start for t in timings]
    ends = [t.end for t in timings]
    assert starts == sorted(starts) and all(e > s for s, e in zip(starts, ends))
    assert all(ends[i] <= starts[i + 1] + 1e-9 for i in range(len(timings) - 1))
    assert ends[-1] <= len(audio) / sr
    speech = np.concatenate([audio[int(t.start * sr):int(t.end * sr)] for t in timings])
    lead = audio[:int(timings[0].start * sr) - 160]                     # before the first word (pause)
    gap = audio[int(timings[7].end * sr) + 160:int(timings[8].start * sr) - 160]   # pause between sentences
    assert gap.size > 800                                               # flite pauses ~0.1 s at a full stop
    assert _rms(lead) < 0.05 * _rms(speech)
    assert _rms(gap) < 0.05 * _rms(speech)


def test_flite_refuses_numbers():
    with pytest.raises(SynthesisError, match="words"):
        synthesize("He paid 125 dollars.")   # one hundred twenty five


def test_generator_script_and_loader(tmp_path):
    out = write_calibration_set(tmp_path / "calib", clips=2)
    items = load_calibration_dir(str(out))
    assert len(items) == 2 and all(it.timed for it in items)
    for it in items:
        info = sf.info(it.audio_path)
        assert info.samplerate == 16000 and info.channels == 1
        assert [t.word for t in it.timings] == it.transcript.split()
        assert it.timings[-1].end <= it.duration
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthesizer"] == "flite" and len(manifest["clips"]) == 2


def _write_clip(d, stem, text, seconds=1.0, sr=8000, words=None):
    sf.write(d / f"{stem}.wav", np.zeros(int(seconds * sr), dtype=np.float32), sr)
    if text is not None:
        (d / f"{stem}.txt").write_text(text)
    if words is not None:
        (d / f"{stem}.words.json").write_text(json.dumps({"words": words}))


def test_loader_uniform_fallback_and_errors(tmp_path):
    _write_clip(tmp_path, "a", "hello big world", seconds=2.0)
    items = load_calibration_dir(str(tmp_path))
    assert not items[0].timed
    assert items[0].timings[-1].end == pytest.approx(2.0)
    _write_clip(tmp_path, "b", "two words", words=[{"word": "two", "start": 0, "end": 0.5}])
    with pytest.raises(ValueError, match="do not match the transcript"):
        load_calibration_dir(str(tmp_path))
    (tmp_path / "b.words.json").write_text(json.dumps({"words": [{"word": "two", "start": 0, "end": 0.5},
                                                                  {"word": "words", "start": 0.5, "end": 3}]}))
    with pytest.raises(ValueError, match="after the audio"):
        load_calibration_dir(str(tmp_path))
    (tmp_path / "b.words.json").unlink()
    _write_clip(tmp_path, "c", None)
    with pytest.raises(ValueError, match="no transcript"):
        load_calibration_dir(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        load_calibration_dir(str(empty))


def test_reserved_evaluation_voices_are_never_calibrated_on():
    """flite awb and rms are reserved for evaluating the demo model: calibration speech refuses them."""
    from audiokv_edge.profiling.synthetic_speech import FLITE_VOICES, synthesize

    assert not {"awb", "rms"} & set(FLITE_VOICES)
    for voice in ("awb", "rms"):
        with pytest.raises(ValueError, match="reserved for evaluation"):
            synthesize("The birch canoe slid on the smooth planks.", voice=voice)
