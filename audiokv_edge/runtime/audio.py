"""Audio input: read any file libsndfile reads, mix to mono, resample to the projector's rate.

Every problem with the input is raised as :class:`AudioError` with a one-line message naming the file and the
problem, so that command-line tools can print it as is.
"""

from __future__ import annotations

import logging
import math
import pathlib
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Most channels accepted; speech recordings are mono or stereo, anything wider is refused rather than guessed at.
MAX_CHANNELS = 2
#: Highest sample rate accepted (Hz): twice the highest rate audio gear records (384 kHz). A corrupt header's rate of
#: gigahertz would otherwise make the polyphase resampler design a filter of gigabytes.
MAX_SAMPLE_RATE = 768000


class AudioError(ValueError):
    """The audio input cannot be used; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 audio at the rate the audio encoder expects.

    Parameters
    ----------
    samples : ndarray, float32, shape [n_samples]
        Mono samples in [-1, 1] (not clipped), C-contiguous.
    sample_rate : int
        Rate of ``samples`` (Hz).
    source_rate : int
        Rate of the file (Hz).
    source_channels : int
        Channels in the file (mixed to mono by averaging).
    path : str
        Where it was read from ("" when built from an array).
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    source_channels: int
    path: str = ""

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.samples.shape[0] / float(self.sample_rate)


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels.

    Parameters
    ----------
    data : ndarray, shape [n_samples] or [n_samples, n_channels]

    Returns
    -------
    ndarray, float64, shape [n_samples]
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise AudioError(f"audio array must be [n_samples] or [n_samples, n_channels], got shape {data.shape}")
    return data.mean(axis=1)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``, Kaiser window) from one integer rate to another.

    Parameters
    ----------
    samples : ndarray, shape [n_samples]
    source_rate, target_rate : int
        Rates in Hz, both > 0.

    Returns
    -------
    ndarray, float32, shape [round(n_samples * target_rate / source_rate)] (ceil for non-integer ratios)
    """
    if source_rate <= 0 or target_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {source_rate} Hz -> {target_rate} Hz")
    samples = np.asarray(samples)
    if source_rate == target_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(source_rate), int(target_rate))
    out = resample_poly(samples.astype(np.float64), int(target_rate) // g, int(source_rate) // g)
    return np.ascontiguousarray(out, dtype=np.float32)


def clip_from_array(
    samples: np.ndarray, sample_rate: int, target_rate: int, *, max_channels: int = MAX_CHANNELS, path: str = ""
) -> AudioClip:
    """Validate, mix and resample audio already in memory.

    Parameters
    ----------
    samples : ndarray, shape [n_samples] or [n_samples, n_channels]
        Any real dtype; integer PCM is not rescaled (pass floats in [-1, 1]).
    sample_rate : int
        Rate of ``samples`` (Hz).
    target_rate : int
        Rate the encoder expects (Hz).
    max_channels : int
        Refuse wider input.
    path : str
        Name used in error messages.

    Returns
    -------
    AudioClip

    Raises
    ------
    AudioError
        Zero rate or one above :data:`MAX_SAMPLE_RATE`, no samples, too many channels, NaN or infinite samples.
    """
    name = path or "audio array"
    samples = np.asarray(samples)
    if not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
        raise AudioError(f"{name}: samples must be real numbers, got dtype {samples.dtype}")
    _check_rate(name, sample_rate)
    channels = 1 if samples.ndim == 1 else (samples.shape[1] if samples.ndim == 2 else -1)
    if channels < 0:
        raise AudioError(f"{name}: audio must be [n_samples] or [n_samples, n_channels], got shape {samples.shape}")
    if channels == 0 or samples.shape[0] == 0:
        raise AudioError(f"{name}: audio has no samples (zero length)")
    if channels > max_channels:
        raise AudioError(
            f"{name}: audio has {channels} channels; only mono or stereo is supported "
            f"(mix it down first, e.g. `sox in.wav -c 1 out.wav`)"
        )
    mono = mix_to_mono(samples)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    out = resample(mono, int(sample_rate), int(target_rate))
    if out.shape[0] == 0:
        raise AudioError(f"{name}: audio is too short to resample to {target_rate} Hz")
    logger.debug("%s: %d ch %d Hz -> mono %d Hz, %d samples", name, channels, sample_rate, target_rate, out.shape[0])
    return AudioClip(out, int(target_rate), int(sample_rate), int(channels), path)


def probe_audio(path: str | pathlib.Path, *, max_channels: int = MAX_CHANNELS):
    """Check that ``path`` is a readable audio file without decoding it.

    Parameters
    ----------
    path : str or pathlib.Path
    max_channels : int
        Refuse wider input (default 2).

    Returns
    -------
    soundfile._SoundFileInfo
        ``samplerate``, ``channels``, ``frames``, ``format`` ... of the file.

    Raises
    ------
    AudioError
        Missing, not a file, empty, not audio, 0 Hz or above :data:`MAX_SAMPLE_RATE`, too many channels, no samples.
    """
    import soundfile

    p = pathlib.Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if not p.is_file():
        raise AudioError(f"audio path is not a file: {p}")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}")
    try:
        info = soundfile.info(str(p))
    except Exception as exc:  # libsndfile reports every unreadable file as a RuntimeError subclass
        if _wav_header_rate(p) == 0:
            raise AudioError(f"{p}: sample rate is 0 Hz; it must be positive") from None
        raise AudioError(f"cannot read audio from {p}: {_reason(exc)}") from None
    _check_rate(str(p), info.samplerate)
    if info.channels > max_channels:
        raise AudioError(
            f"{p}: audio has {info.channels} channels; only mono or stereo is supported "
            f"(mix it down first, e.g. `sox in.wav -c 1 out.wav`)"
        )
    if info.frames == 0:
        raise AudioError(f"{p}: audio has no samples (zero length)")
    return info


def load_audio(path: str | pathlib.Path, target_rate: int, *, max_channels: int = MAX_CHANNELS) -> AudioClip:
    """Read an audio file (any format libsndfile reads: wav, flac, ogg/vorbis/opus, mp3 with libsndfile >= 1.1).

    Parameters
    ----------
    path : str or pathlib.Path
    target_rate : int
        Rate the encoder expects (Hz), e.g. ``mtmd_get_audio_sample_rate``.
    max_channels : int
        Refuse wider input (default 2).

    Returns
    -------
    AudioClip

    Raises
    ------
    AudioError
        Missing, empty, unreadable or not an audio file, 0 Hz, no samples, too many channels, NaN samples.
    """
    import soundfile

    p = pathlib.Path(path)
    probe_audio(p, max_channels=max_channels)
    try:
        data, rate = soundfile.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"cannot read audio from {p}: {_reason(exc)}") from None
    return clip_from_array(data, rate, target_rate, max_channels=max_channels, path=str(p))


def _check_rate(name: str, rate) -> None:
    if rate is None or int(rate) <= 0:
        raise AudioError(f"{name}: sample rate is {rate} Hz; it must be positive")
    if int(rate) > MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate is {rate} Hz, above the {MAX_SAMPLE_RATE} Hz this loader accepts "
                         f"(a corrupt header?)")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    # soundfile prefixes the path ("Error opening 'x': Format not recognised."); keep only the reason
    if ": " in text:
        text = text.rsplit(": ", 1)[-1]
    return text.rstrip(".") or type(exc).__name__


def _wav_header_rate(p: pathlib.Path) -> int | None:
    """Sample rate in a RIFF/WAVE ``fmt `` chunk (libsndfile refuses 0 Hz with an obscure message), else None."""
    import struct

    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    endian = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack(endian + "I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 16 <= len(head):
            return struct.unpack(endian + "I", head[pos + 12 : pos + 16])[0]
        pos += 8 + size + (size & 1)
    return None
