"""A long recording tokenized one 30 s mel window at a time (patches/0009-mtmd-audio-window.patch,
audiokv_edge/runtime/prompt_chunks.py) gives the chunks of the whole recording: the same layout and, encoded by the
projector, the same audio embeddings, bit for bit (tolerance 0: every mel frame is computed from the same samples
with the same clamp). Real speech (jfk.wav), its loudest copy in the second window, so that the first window's own
maximum is not the recording's (checked)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.native

DATA = Path(__file__).resolve().parents[1] / "audiokv_edge" / "data"
PROMPT = "<|im_start|>user\n{marker}Transcribe the audio.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def projector(tmp_path_factory):
    from audiokv_edge.native import mtmd_window
    from audiokv_edge.runtime.llama import LlamaModel
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model_path, mmproj = write_tiny_pair(tmp_path_factory.mktemp("pair"), "qwen2-qwen2a")
    llm = LlamaModel(model_path)
    mctx = llm.new_projector(mmproj, n_threads=2, flash_attn=False)
    if not mtmd_window.supports_windows(mctx):
        pytest.fail("libmtmd has no window API for a qwen2a projector (built without patches/0009?)")
    yield llm, mctx
    llm.close()


def _speech(tmp_path) -> Path:
    """44 s of speech at 44.1 kHz (two 30 s windows at 16 kHz), the louder copy of jfk.wav from 30 s on."""
    from audiokv_edge.runtime.audio import load_audio, resample

    x = load_audio(DATA / "jfk.wav", 16000).samples.astype(np.float64)
    y = np.concatenate([0.3 * x, 0.3 * x, 0.3 * x[: 8 * 16000], x, 0.3 * x[: 3 * 16000]])
    path = tmp_path / "speech.wav"
    sf.write(path, resample(y, 16000, 44100), 44100, subtype="FLOAT")
    return path


def _embeddings(llm, mctx, chunks_get, layout) -> list[np.ndarray]:
    mt, n_embd = llm.mtmd, int(llm.lc.llama_model_n_embd(llm.model))
    out = []
    for i, (is_audio, n, _) in enumerate(layout):
        if not is_audio:
            continue
        chunk = chunks_get(i)
        assert mt.mtmd_encode_chunk(mctx, chunk) == 0
        ptr = mt.mtmd_get_output_embd(mctx)
        out.append(np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy())
    return out


def _text_tokens(mt, chunk) -> list[int]:
    n = ctypes.c_size_t()
    ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    return [ptr[j] for j in range(n.value)]


def test_windows_give_the_whole_recordings_chunks(projector, tmp_path):
    from audiokv_edge.native import mtmd_window
    from audiokv_edge.runtime import prompt_chunks
    from audiokv_edge.runtime.audio import load_audio
    from audiokv_edge.runtime.audio_stream import AudioFile

    llm, mctx = projector
    mt = llm.mtmd
    text = PROMPT.format(marker=mt.mtmd_default_marker().decode())
    path = _speech(tmp_path)
    whole_clip = load_audio(path, 16000)
    whole = prompt_chunks.WholePrompt(mt, llm.tokenize_audio_prompt(mctx, text, whole_clip.samples))
    audio = AudioFile(path, 16000)
    top, n_windows, n_samples = prompt_chunks.scan_windows(mctx, audio.blocks())
    assert (n_windows, n_samples) == (2, whole_clip.samples.shape[0])
    windowed = prompt_chunks.WindowedPrompt(mt, mctx, lambda s: llm.tokenize_audio_prompt(mctx, text, s),
                                            audio.blocks(), top, n_windows)
    try:
        assert windowed.layout == whole.layout
        assert [a for a, _, _ in whole.layout].count(True) == 2
        for i, (is_audio, _, _) in enumerate(whole.layout):
            if not is_audio:
                assert _text_tokens(mt, windowed.get(i)) == _text_tokens(mt, whole.get(i))
        expected = _embeddings(llm, mctx, whole.get, whole.layout)
        got = _embeddings(llm, mctx, windowed.get, windowed.layout)
        for k, (e, g) in enumerate(zip(expected, got)):
            np.testing.assert_array_equal(g, e, err_msg=f"window {k}")
        with pytest.raises(ValueError, match="in order"):
            windowed.get(next(i for i, (a, _, _) in enumerate(windowed.layout) if a) + 1)
    finally:
        windowed.free()

    # the control: the first window's own maximum (what libmtmd clamps it to when given it alone) is not the
    # recording's, so a window tokenized without the recording's maximum would have another mel
    first_window = next(iter(prompt_chunks.window_buffers(audio.blocks())))
    own = mtmd_window.log_mel_max(mctx, first_window.samples, 0, 3000)
    assert top > own + 0.5
    whole.free()
