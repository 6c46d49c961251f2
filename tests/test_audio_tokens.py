"""Audio lengths 1 s, 29.9 s, 30 s, 31 s and 300 s give the audio-token counts each projector's spec predicts.

The expected counts are derived here from the projectors' documented behaviour (llama.cpp's mtmd preprocessors),
not from our code:

- Whisper family (qwen2a, ultravox): 16 kHz, hop 160 -> floor(n / 160) mel frames; 30 s of silence are
  appended (+3000 frames) and the STFT adds one frame; the mel is cut into 3000-frame chunks and the incomplete tail
  dropped. Tokens per chunk: qwen2a 750 (conv stride 2, avg-pool 2), ultravox 3000 / stack / 2 (stack 4 -> 375;
  stack 8 -> 187, which this llama.cpp announces but cannot encode, see session.stacked_projector_problem).
  So exactly 30 s gives TWO chunks (the second one silent), 29.9 s one.
- qwen3a: floor(n / 160) + 1 frames, cut into 800-frame (8 s) windows, each padded to whole 100-frame (1 s) chunks,
  13 tokens per chunk.
- The other Whisper-family projectors, per 3000-frame chunk: qwen2.5o (Qwen2.5-Omni's legacy name, loaded as qwen2a)
  and musicflamingo 750 (conv stride 2, average pool 2); glma 3000 / 2 / stack + 2 (stacked frames between a
  begin and an end embedding); meralion align(3000, stack) / stack / 2.
- gemma4a: no padding to 30 s; the samples are cut into 30 s pieces, each giving (len + 160 - 321) // 160 + 1 mel
  frames (semicausal framing, window 320 + 1, hop 160), and two stride-2 / pad-1 convolutions keep
  ((frames - 1) // 2 + 1 - 1) // 2 + 1 tokens of them (750 per full 30 s piece, 25 per second).
- gemma4ua (Gemma 4 Unified's audio): no encoder and no mel; the raw 16 kHz samples in 640-sample frames (the last
  one zero-padded), one token each: ceil(n / 640), 25 per second.
- dots3note_a (dots3-note's audio): the samples are cut into 60 s chunks, each giving floor(len / 160) mel frames
  (its STFT frames past the valid ones are dropped), and three stride-2 conv2d keep ceil(frames / 8) tokens of
  them (12.5 per second, 750 per full chunk). Its text model (dots3note: MLA, iSWA, MoE) has no tiny writer: a qwen2
  text model of the same width stands in.
- lfm2a (LFM2-Audio's FastConformer): the whole clip is one mel (centre padding by n_fft / 2 = 256 on both
  sides: floor(n / 160) + 1 frames, no 30 s padding or chunks), and three stride-2 steps keep
  ceil(ceil(ceil(frames / 2) / 2) / 2) tokens of them (12.5 per second).
- parakeet (NVIDIA's Parakeet FastConformer, Nemotron Nano VL's audio): the whole clip is one mel (pre-emphasis,
  centre padding by n_fft / 2 = 256: floor(n / 160) + 1 frames, no chunks), subsampling factor 8:
  ceil(frames / 8) tokens (mtmd's count; the graph's three stride-2 / pad-1 steps give the same). Its text model
  (nemotron_h, hybrid Mamba2) has no tiny writer: a qwen2 text model of the same width stands in.
- granite_speech: one mel of the whole clip (reflect padding by 256: floor(n / 160) + 1 frames), cut to an even
  count and stacked in pairs; the Q-Former turns each 15-frame window (the last one padded) into 15 / 5 = 3
  queries (10 tokens per second).
- mimo_audio (MiMo-Audio's tokenizer, 24 kHz): one mel of the whole clip (reflect padding by n_fft / 2 = 480:
  floor(n / 240) + 1 frames at hop 240), a stride-2 conv ((f - 1) // 2 + 1), the stride-2 kernel-2 downsampling
  ((f - 2) // 2 + 1), groups of 4 frames (the last padded) -> one token each (6.25 per second). Its text model
  (mimo2, MoE + iSWA + sinks) has no tiny writer: a qwen2 text model of the same width stands in.
- voxtral (stack 4) is refused before anything is encoded: this libmtmd announces 187 tokens per chunk and its
  graph produces 188 (``session.stacked_projector_problem``); the probe must exit with that one-line reason.

Tokenization only (nothing is encoded), in a subprocess so that a native abort fails the test instead of pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import stacked_projector_problem
from audiokv_edge.testing.tiny_models import (TINY_PAIRS, AudioProjectorSpec, write_audio_projector, write_text_model,
                                              write_tiny_pair)

REPO = Path(__file__).resolve().parents[1]
SECONDS = (1.0, 29.9, 30.0, 31.0, 300.0)
RATE = 16000

PROBE = r"""
import json, sys
import numpy as np
from audiokv_edge.runtime.session import Session, SessionConfig
model, mmproj, *secs = sys.argv[1:]
counts = {}
with Session(model, mmproj, SessionConfig(method="full", ctx=256, threads=2)) as s:
    rate = s.sample_rate  # the projector's own rate: no resampling
    rng = np.random.default_rng(0)
    for sec in secs:
        n = int(round(float(sec) * rate))
        audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
        counts[sec] = s.count_audio_tokens(audio, sample_rate=rate)
print(json.dumps({"rate": rate, "counts": counts}))
"""


#: Sample rate of each projector's preprocessor (mtmd resamples nothing: the session does).
RATES = {"mimo_audio": 24000}


def expected_audio_tokens(projector: str, n_samples: int, stack_factor: int = 0) -> int:
    """Audio tokens for ``n_samples`` at the projector's rate (:data:`RATES`, else 16 kHz), from its spec."""
    if projector == "mimo_audio":
        frames = n_samples // 240 + 1
        frames = (frames - 1) // 2 + 1
        frames = (frames - 2) // 2 + 1
        return -(-frames // 4)
    if projector == "qwen3a":
        frames = n_samples // 160 + 1
        total = 0
        for offset in range(0, frames, 800):
            window = min(800, frames - offset)
            total += -(-window // 100) * 13
        return total
    if projector == "gemma4a":
        total = 0
        for offset in range(0, n_samples, 30 * RATE):
            frames = (min(30 * RATE, n_samples - offset) + 160 - 321) // 160 + 1
            total += ((frames - 1) // 2 + 1 - 1) // 2 + 1
        return total
    if projector == "dots3note_a":  # 60 s chunks, floor(len / 160) frames each, / 8 rounded up
        return sum(-(-(min(60 * RATE, n_samples - o) // 160) // 8) for o in range(0, n_samples, 60 * RATE))
    if projector == "gemma4ua":  # raw waveform, 640 samples per token, the last frame zero-padded
        return -(-n_samples // 640)
    if projector in ("lfm2a", "parakeet"):
        tokens = n_samples // 160 + 1
        for _ in range(3):
            tokens = (tokens + 1) // 2
        return tokens
    if projector == "granite_speech":
        stacked = (n_samples // 160 + 1) // 2
        return -(-stacked // 15) * (15 // 5)
    chunks = (n_samples // 160 + 3000 + 1) // 3000
    s = max(stack_factor, 1)
    per_chunk = {"qwen2a": 750, "qwen2.5o": 750, "musicflamingo": 750, "ultravox": 3000 // s // 2,
                 "glma": 3000 // 2 // s + 2, "meralion": -(-3000 // s) * s // s // 2}[projector]
    return chunks * per_chunk


def test_expected_table_matches_the_notes():
    # llama-cpp-notes.md: qwen2a 750 per 30 s chunk (25/s), ultravox stack 8 -> 187, qwen3a ~13 tokens/s
    assert [expected_audio_tokens("qwen2a", int(round(s * RATE))) for s in SECONDS] == [750, 750, 1500, 1500, 8250]
    assert [expected_audio_tokens("ultravox", int(round(s * RATE)), 8) for s in SECONDS] == [187, 187, 374, 374, 2057]
    assert [expected_audio_tokens("ultravox", int(round(s * RATE)), 4) for s in SECONDS] == [375, 375, 750, 750, 4125]
    assert [expected_audio_tokens("qwen3a", int(round(s * RATE))) for s in SECONDS] == [26, 390, 403, 416, 3913]
    assert [expected_audio_tokens("gemma4a", int(round(s * RATE))) for s in SECONDS] == [25, 748, 750, 775, 7500]
    assert [expected_audio_tokens("glma", int(round(s * RATE)), 4) for s in SECONDS] == [377, 377, 754, 754, 4147]
    assert [expected_audio_tokens("lfm2a", int(round(s * RATE))) for s in SECONDS] == [13, 374, 376, 388, 3751]
    assert [expected_audio_tokens("dots3note_a", int(round(s * RATE))) for s in SECONDS] == [13, 374, 375, 388,
                                                                                              3750]
    assert [expected_audio_tokens("gemma4ua", int(round(s * RATE))) for s in SECONDS] == [25, 748, 750, 775, 7500]
    assert [expected_audio_tokens("parakeet", int(round(s * RATE))) for s in SECONDS] == [13, 374, 376, 388, 3751]
    assert [expected_audio_tokens("mimo_audio", int(round(s * 24000))) for s in SECONDS] == [7, 187, 188, 194, 1875]
    assert [expected_audio_tokens("granite_speech", int(round(s * RATE))) for s in SECONDS] == [12, 300, 300, 312,
                                                                                                 3000]


def _projector_pairs() -> list[str]:
    seen, names = set(), []
    for name, pair in TINY_PAIRS.items():
        key = (pair.audio.projector, pair.audio.stack_factor)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


#: Projectors without a tiny pair, each with the tiny pair whose text model stands in for its own.
STANDALONE_PROJECTORS = {"mimo_audio": (AudioProjectorSpec("mimo_audio", n_layer=3), "qwen2-qwen2a"),
                         "parakeet": (AudioProjectorSpec("parakeet", n_conv=8, conv_kernel=9), "qwen2-qwen2a"),
                         "dots3note_a": (AudioProjectorSpec("dots3note_a", n_conv=8), "qwen2-qwen2a")}


def _write_case(directory: Path, name: str):
    """(model, mmproj, audio spec) of a tiny pair or a standalone projector with its stand-in text model."""
    if name not in STANDALONE_PROJECTORS:
        return (*write_tiny_pair(directory, name), TINY_PAIRS[name].audio)
    audio, stand_in = STANDALONE_PROJECTORS[name]
    model, mmproj = directory / "model.gguf", directory / "mmproj.gguf"
    write_text_model(model, TINY_PAIRS[stand_in].text)
    write_audio_projector(mmproj, audio, TINY_PAIRS[stand_in].text.n_embd)
    return model, mmproj, audio


@pytest.mark.native
@pytest.mark.parametrize("name", _projector_pairs() + sorted(STANDALONE_PROJECTORS))
def test_audio_token_counts(tmp_path, name):
    model, mmproj, audio = _write_case(tmp_path, name)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), str(mmproj), *map(str, SECONDS)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    problem = stacked_projector_problem(audio.projector, audio.stack_factor)
    if problem:  # refused with its reason before libmtmd could abort
        assert proc.returncode == 1 and problem in proc.stderr and "Aborted" not in proc.stderr, proc.stderr[-3000:]
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rate, counts = out["rate"], out["counts"]
    assert rate == RATES.get(audio.projector, RATE)
    for sec in SECONDS:
        n = int(round(sec * rate))
        assert counts[str(sec)] == expected_audio_tokens(audio.projector, n, audio.stack_factor), (name, sec, counts)
