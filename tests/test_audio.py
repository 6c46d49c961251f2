"""Audio loading: formats, mono mixing, resampling accuracy, and one-line errors for every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiokv_edge.runtime.audio import AudioClip, AudioError, clip_from_array, load_audio, mix_to_mono, resample
from tests.audio_cases import BAD_AUDIO_CASES

DATA = Path(__file__).resolve().parents[1] / "audiokv_edge" / "data"


def test_shipped_clips():
    jfk = load_audio(DATA / "jfk.wav", 16000)
    assert isinstance(jfk, AudioClip) and jfk.samples.dtype == np.float32 and jfk.samples.ndim == 1
    assert jfk.seconds == pytest.approx(11.0) and jfk.source_channels == 1 and jfk.source_rate == 16000
    mp3 = load_audio(DATA / "jfk.mp3", 16000)
    assert mp3.seconds == pytest.approx(11.0, abs=0.1)
    arctic = load_audio(DATA / "arctic_a0007.wav", 16000)
    assert arctic.seconds == pytest.approx(4.0)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_formats_stereo_and_resampling(tmp_path, fmt, ext):
    rate, seconds, freq = 44100, 1.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    stereo = np.stack([left, left], axis=1)  # identical channels: the mono mix is the same sine
    path = tmp_path / f"tone.{ext}"
    sf.write(path, stereo, rate, format=fmt)
    clip = load_audio(path, 16000)
    assert clip.source_channels == 2 and clip.source_rate == rate and clip.sample_rate == 16000
    assert abs(clip.samples.shape[0] - 16000) <= 1200  # lossy codecs add encoder delay / padding
    spectrum = np.abs(np.fft.rfft(clip.samples[2000:14000] * np.hanning(12000)))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - freq) < 3.0
    rms = np.sqrt(np.mean(clip.samples[2000:14000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_resample_exact_lengths_and_identity():
    x = np.random.default_rng(0).standard_normal(48000)
    assert resample(x, 48000, 16000).shape == (16000,)
    assert resample(x, 16000, 16000).dtype == np.float32
    np.testing.assert_array_equal(resample(x, 16000, 16000), x.astype(np.float32))
    assert resample(x[:22050], 22050, 16000).shape == (16000,)


def test_mix_to_mono_averages():
    data = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]])
    np.testing.assert_allclose(mix_to_mono(data), [0.5, 0.5, -0.5])


@pytest.mark.parametrize("make,needle", BAD_AUDIO_CASES)
def test_bad_files_raise_one_line(tmp_path, make, needle):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=re.escape(needle)) as info:
        load_audio(path, 16000)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path, 16000)


def test_bad_arrays():
    with pytest.raises(AudioError, match="NaN"):
        clip_from_array(np.array([0.0, np.nan, 0.1]), 16000, 16000)
    with pytest.raises(AudioError, match="0 Hz"):
        clip_from_array(np.zeros(10), 0, 16000)
    with pytest.raises(AudioError, match="zero length"):
        clip_from_array(np.zeros((0, 1)), 16000, 16000)
    with pytest.raises(AudioError, match="real numbers"):
        clip_from_array(np.array(["a", "b"]), 16000, 16000)
    clip = clip_from_array(np.ones((8000, 2), dtype=np.int16).astype(np.float32) * 0.25, 8000, 16000)
    assert clip.samples.shape == (16000,) and clip.seconds == pytest.approx(1.0)
