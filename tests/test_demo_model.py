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


# ---------------------------------------------------------------------------------------------------------------
# Native: the training path against libmtmd's inference path, the chat layout, the assembled demo model.

@pytest.fixture(scope="module")
def smollm2():
    from audiokv_edge.testing import real_models

    return real_models.smollm2_q4_1_path()


@pytest.fixture(scope="module")
def random_mmproj(tmp_path_factory, encoder_weights):
    torch = pytest.importorskip("torch")  # installed by set-up (peer extra); a failure to import fails below
    from audiokv_edge.demo_model.torch_encoder import UltravoxProjector

    del torch
    proj = UltravoxProjector(384, mmproj.STACK_FACTOR, 256, 576, seed=3)
    path = tmp_path_factory.mktemp("demo") / "mmproj.gguf"
    mmproj.write_mmproj(path, encoder_weights, proj.export(), 576)
    return path, proj


@pytest.mark.native
@pytest.mark.parametrize("seconds", [4.0, 37.0])
def test_torch_training_path_equals_libmtmd(seconds, smollm2, random_mmproj, encoder_weights):
    """Mel (NumPy) + encoder + projector (PyTorch) give libmtmd's audio embeddings: relative L2 error <= 2e-2 over
    the clip (measured 2.6e-3 / 3.0e-3: libmtmd's F16 conv kernels and float32 sums), same token count."""
    import torch

    from audiokv_edge.demo_model.libmtmd_embeddings import libmtmd_audio_embeddings
    from audiokv_edge.demo_model.torch_encoder import WhisperEncoder

    path, proj = random_mmproj
    one = speech.synthesize("Long recordings are cut into windows of thirty seconds each.", speech.Voice("flite", "kal"))
    x = np.concatenate([one] * int(np.ceil(seconds * 16000 / one.size)))[: int(seconds * 16000)]
    ref = libmtmd_audio_embeddings(smollm2, path, x)
    with torch.no_grad():
        ours = proj(WhisperEncoder(encoder_weights)(torch.from_numpy(mel.windows(x)))).reshape(-1, 576).numpy()
    assert ours.shape == ref.shape == (mel.n_windows(x.size) * 375, 576)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 2e-2


@pytest.mark.native
def test_training_layout_equals_mtmd_tokenization(smollm2, random_mmproj):
    """The token ids the trainer puts around the audio are the text chunks libmtmd makes of the runner's prompt."""
    import ctypes

    from audiokv_edge.demo_model.llama_text import LlamaText
    from audiokv_edge.runtime.session import Session, SessionConfig

    text = LlamaText(smollm2)
    layout = text.layout(tasks.TRANSCRIBE)
    with Session(smollm2, mmproj=random_mmproj[0], config=SessionConfig(method="full", ctx=1024)) as s:
        prompt, info = s._tokenize(s._clip(np.zeros(16000, np.float32), 16000), tasks.TRANSCRIBE)
        mt = s._mtmd
        pieces = []
        for i in range(info.chunks):
            c = prompt.get(i)
            if mt.mtmd_input_chunk_get_type(c) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ids = mt.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                pieces.append([ids[j] for j in range(n.value)])
        prompt.free()
    text.close()
    assert info.audio_tokens == 375
    assert pieces == [layout.prefix, layout.suffix]


@pytest.mark.native
def test_demo_export_checks_sha256(tmp_path, monkeypatch, random_mmproj):
    """The assembled files match SHA256SUMS; a changed projector or LoRA is refused with an error naming the file."""
    from audiokv_edge.demo_model import export

    proj = random_mmproj[1]
    data = tmp_path / "data"
    data.mkdir()
    arrays = {k: v.astype(np.float16) for k, v in proj.export().items()}
    np.savez(data / "projector.npz", **arrays)
    monkeypatch.setattr(export, "PROJECTOR", data / "projector.npz")
    monkeypatch.setattr(export, "PROFILE", data / "profile.json")
    monkeypatch.setattr(export, "LORA", data / "lora.npz")
    monkeypatch.setattr(export, "SUMS", data / "SHA256SUMS")
    rng = np.random.default_rng(0)
    lora = {"blk.0.attn_v.weight.lora_a": rng.standard_normal((2, 576)).astype(np.float16),
            "blk.0.attn_v.weight.lora_b": rng.standard_normal((192, 2)).astype(np.float16)}
    np.savez(data / "lora.npz", alpha=np.float32(4.0), **lora)
    files = export.assemble(tmp_path / "out", record=True)
    model, proj_path = files.model, files.mmproj
    sums = export.read_sums(data / "SHA256SUMS")
    assert sums["mmproj.gguf"] == export.sha256(proj_path) and sums["model.gguf"] == export.sha256(model)
    assert files.lora is not None and sums["lora.gguf"] == export.sha256(files.lora)
    export.assemble(tmp_path / "out2")  # a fresh build reproduces the recorded bytes
    assert export.sha256(tmp_path / "out2" / "mmproj.gguf") == sums["mmproj.gguf"]
    assert export.sha256(tmp_path / "out2" / "lora.gguf") == sums["lora.gguf"]
    lora["blk.0.attn_v.weight.lora_b"][0, 0] += 1
    np.savez(data / "lora.npz", alpha=np.float32(4.0), **lora)
    with pytest.raises(export.DemoModelError, match="lora.npz"):
        export.assemble(tmp_path / "out4")
    lora["blk.0.attn_v.weight.lora_b"][0, 0] -= 1
    np.savez(data / "lora.npz", alpha=np.float32(4.0), **lora)
    arrays["mm.a.mlp.2.weight"][0, 0] += 1
    np.savez(data / "projector.npz", **arrays)
    with pytest.raises(export.DemoModelError, match="projector.npz"):
        export.assemble(tmp_path / "out3")
