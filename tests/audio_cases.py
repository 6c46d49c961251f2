"""Shared test data: the bad audio files every audio entry point must refuse with a one-line error (the loader in
tests/test_audio.py, the runner in tests/test_run_cli.py). Import it as
``from tests.audio_cases import BAD_AUDIO_CASES``."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf


def wav_bytes(rate: int, channels: int, frames: int) -> bytes:
    """A 16-bit PCM WAV file of silence, its header written by hand (so that a 0 Hz rate can be written)."""
    data = np.zeros(frames * channels, dtype="<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", len(data)) + data


#: (make, needle): ``make(path)`` leaves a bad file at ``path`` (or none); the one-line error contains ``needle``
#: (a plain substring, not a pattern).
BAD_AUDIO_CASES = [
    pytest.param(lambda p: None, "not found", id="missing"),
    pytest.param(lambda p: p.write_bytes(b""), "empty", id="empty"),
    pytest.param(lambda p: p.write_text("this is not audio\n" * 20), "cannot read audio", id="not-audio"),
    pytest.param(lambda p: p.write_bytes(wav_bytes(16000, 1, 0)), "no samples (zero length)", id="zero-length"),
    pytest.param(lambda p: p.write_bytes(wav_bytes(0, 1, 1600)), "0 Hz", id="0Hz"),
    pytest.param(lambda p: sf.write(p, np.zeros((1600, 8)), 16000, format="WAV"), "8 channels", id="8-channels"),
]
