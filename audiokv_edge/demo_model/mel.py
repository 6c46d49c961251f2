"""libmtmd's Whisper log-mel spectrogram in NumPy (``tools/mtmd/mtmd-audio.cpp``: ``log_mel_spectrogram`` and
``mtmd_audio_preprocessor_whisper::preprocess`` of the vendored llama.cpp), so that the projector is trained on the
features libmtmd feeds the encoder at inference:

- 200 samples of reflection padding in front, 30 s + 200 samples of zeros behind;
- periodic Hann window of 400, hop 160, power spectrum, Slaney-scale mel filterbank with area normalisation
  (0-8 kHz), ``log10(max(mel, 1e-10))``;
- clamped to (max over the WHOLE recording) - 8, then ``(x + 4) / 4``;
- cut into 3000-frame (30 s) windows, the incomplete tail dropped.

tests/test_demo_mel.py compares it with libmtmd's own mel (captured through the clip graph's eval callback).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MEL = 80
WINDOW_FRAMES = 3000


def mel_filterbank(n_mel: int = N_MEL, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney mel filterbank with area normalisation, float32, shape [n_mel, n_fft // 2 + 1]."""
    min_log_hz, lin_slope = 1000.0, 3 / 200.0
    min_log_mel, log_step = min_log_hz * lin_slope, np.log(6.4) / 27.0

    def hz_to_mel(f):
        return f * lin_slope if f < min_log_hz else min_log_mel + np.log(f / min_log_hz) / log_step

    def mel_to_hz(m):
        return m / lin_slope if m < min_log_mel else min_log_hz * np.exp((m - min_log_mel) * log_step)

    m_lo, m_hi = hz_to_mel(0.0), hz_to_mel(0.5 * sample_rate)
    hz = np.array([mel_to_hz(m_lo + (m_hi - m_lo) * i / (n_mel + 1)) for i in range(n_mel + 2)])
    freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    out = np.zeros((n_mel, freqs.size), dtype=np.float64)
    for m in range(n_mel):
        left, centre, right = hz[m], hz[m + 1], hz[m + 2]
        rising = (freqs >= left) & (freqs <= centre)
        falling = (freqs > centre) & (freqs <= right)
        out[m, rising] = (freqs[rising] - left) / max(1e-30, centre - left)
        out[m, falling] = (right - freqs[falling]) / max(1e-30, right - centre)
        out[m] *= 2.0 / max(1e-30, right - left)
    return out.astype(np.float32)


def hann_periodic(n: int = N_FFT) -> np.ndarray:
    return (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(n) / n))).astype(np.float32)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """The whole recording's normalised log-mel, float32, shape [N_MEL, n_frames] (padding included)."""
    x = np.asarray(samples, dtype=np.float32)
    pad = N_FFT // 2
    if x.size < pad + 1:
        x = np.concatenate([x, np.zeros(pad + 1 - x.size, np.float32)])
    padded = np.concatenate([x[1:pad + 1][::-1], x, np.zeros(30 * SAMPLE_RATE + 2 * pad, np.float32)])
    n_frames = (padded.size - N_FFT) // HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    spectrum = np.fft.rfft(frames * hann_periodic(), axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    mel = power.astype(np.float64) @ mel_filterbank().T.astype(np.float64)
    logmel = np.log10(np.maximum(mel, 1e-10)).T
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).astype(np.float32)


def n_windows(n_samples: int) -> int:
    """Number of 30 s windows (audio chunks) libmtmd makes of a recording of ``n_samples`` samples."""
    n = max(n_samples, N_FFT // 2 + 1)
    return ((n + 30 * SAMPLE_RATE) // HOP + 1) // WINDOW_FRAMES


def windows(samples: np.ndarray) -> np.ndarray:
    """The recording's mel windows as libmtmd encodes them, float32, shape [n_windows, N_MEL, WINDOW_FRAMES]."""
    m = log_mel(samples)
    k = m.shape[1] // WINDOW_FRAMES
    return np.stack([m[:, i * WINDOW_FRAMES:(i + 1) * WINDOW_FRAMES] for i in range(k)])
