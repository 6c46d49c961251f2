"""Audio input block by block: a file decoded in blocks, mixed to mono and resampled with the filter state carried
from block to block, so that reading a recording costs memory independent of its length.

:class:`StreamingResampler` computes the same samples as :func:`audiokv_edge.runtime.audio.resample`
(``scipy.signal.resample_poly``: the same Kaiser-window FIR filter, the same output positions and length), up to the
order of the float64 sums (the float32 results agree within 1e-6; tests/test_audio_stream.py).
:func:`file_blocks` and :func:`clip_blocks` yield mono float32 blocks at the encoder's rate, from a file or from a
clip already in memory.

The blocks are decoded with libsndfile's ``sf_readf_float`` called directly (:func:`_read_frames`):
``SoundFile.read`` seeks to the position it has just read to after every read (to keep soundfile's read and write
positions in step), and on an mp3 that seek is an ``mpg123_seek``, which restarts the decoder a few frames back;
where a frame's bit reservoir reaches further back than that restart, libmpg123 prints "part2_3_length (...) too
large for available bit count" notes to stderr (the samples stay within 1.2e-7 of the whole-file read's: those
frames only prime the decoder). Read without those seeks, after one seek to the start as ``soundfile.read`` does,
an mp3's blocks are the whole-file read's samples exactly, and libmpg123 says nothing (tests/test_audio_stream.py:
jfk.mp3 and llama.cpp's test-2.mp3, blocks of 1,000 to 65,536 frames).
"""

from __future__ import annotations

import logging
import math
import pathlib
from collections.abc import Iterator

import numpy as np

from audiokv_edge.runtime.audio import MAX_CHANNELS, AudioClip, AudioError, _reason, mix_to_mono, probe_audio

logger = logging.getLogger(__name__)

#: Frames libsndfile decodes per block (about 1.4 s at 48 kHz).
BLOCK_FRAMES = 1 << 16
#: Outputs the resampler computes per step (its temporaries: this many times the filter's taps, in float64).
_OUTPUTS_PER_STEP = 4096


def resampled_length(n_samples: int, source_rate: int, target_rate: int) -> int:
    """Samples :func:`~audiokv_edge.runtime.audio.resample` returns for ``n_samples`` (``ceil(n * up / down)``)."""
    g = math.gcd(int(source_rate), int(target_rate))
    up, down = int(target_rate) // g, int(source_rate) // g
    return -(-int(n_samples) * up // down)


class StreamingResampler:
    """Polyphase resampling of a signal given in blocks, equal to ``resample_poly`` on the whole signal.

    ``resample_poly(x, up, down)`` is ``y[m] = sum_p h[(m + R) * down - p * up] * x[p]`` over the input samples
    ``p`` the filter ``h`` reaches (zeros before the first and after the last), for ``m < ceil(n * up / down)``.
    :meth:`process` returns every output whose inputs have all arrived; it keeps the last ``taps`` inputs (the
    filter's reach) for the next block. :meth:`flush` returns the outputs that reach past the end (zeros there).

    Parameters
    ----------
    source_rate, target_rate : int
        Rates in Hz, both > 0.
    """

    def __init__(self, source_rate: int, target_rate: int):
        if source_rate <= 0 or target_rate <= 0:
            raise AudioError(f"sample rates must be positive, got {source_rate} Hz -> {target_rate} Hz")
        g = math.gcd(int(source_rate), int(target_rate))
        self.up, self.down = int(target_rate) // g, int(source_rate) // g
        self.n_in = 0  # inputs received
        self.n_out = 0  # outputs returned
        self._done = False
        if self.up == self.down == 1:
            return
        from scipy.signal import firwin

        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        n_pre_pad = self.down - half_len % self.down
        h = np.concatenate([np.zeros(n_pre_pad), h])
        self._shift = (half_len + n_pre_pad) // self.down  # resample_poly's n_pre_remove
        self.taps = -(-h.shape[0] // self.up)  # taps of one polyphase branch
        padded = np.zeros(self.taps * self.up)
        padded[: h.shape[0]] = h
        # branch[phase, j] = h[phase + j * up]: output m uses phase t % up and inputs t // up - j, t = (m + R) * down
        self._branch = np.ascontiguousarray(padded.reshape(self.taps, self.up).T)
        self._hist = np.zeros(self.taps)  # inputs from index self._hist_start on (zeros before the first)
        self._hist_start = -self.taps

    def _outputs(self, m_end: int) -> np.ndarray:
        """Outputs [n_out, m_end), all of whose inputs are in the history."""
        out = np.empty(m_end - self.n_out, np.float32)
        for start in range(self.n_out, m_end, _OUTPUTS_PER_STEP):  # bounded temporaries: [outputs, taps] float64
            m = np.arange(start, min(m_end, start + _OUTPUTS_PER_STEP), dtype=np.int64)
            t = (m + self._shift) * self.down
            p_hi = t // self.up - self._hist_start  # the newest input each output uses, as a history index
            idx = p_hi[:, None] - np.arange(self.taps)[None, :]
            out[start - self.n_out : start - self.n_out + m.shape[0]] = np.einsum(
                "ij,ij->i", self._hist[idx], self._branch[t % self.up])
        self.n_out = m_end
        return out

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block; returns float32 outputs (possibly none yet)."""
        if self._done:
            raise RuntimeError("StreamingResampler.process after flush")
        block = np.asarray(block, dtype=np.float64)
        self.n_in += block.shape[0]
        if self.up == self.down == 1:
            self.n_out += block.shape[0]
            return block.astype(np.float32)
        self._hist = np.concatenate([self._hist, block])
        # output m is complete once its newest input (m + R) * down // up has arrived
        m_end = max(self.n_out, (self.n_in * self.up - 1) // self.down - self._shift + 1)
        m_end = min(m_end, resampled_length(self.n_in, self.down, self.up))
        out = self._outputs(m_end) if m_end > self.n_out else np.zeros(0, np.float32)
        # keep the inputs the next output can reach
        next_hi = ((self.n_out + self._shift) * self.down) // self.up
        drop = max(0, next_hi - self.taps + 1 - self._hist_start)
        if drop:
            self._hist = self._hist[drop:]
            self._hist_start += drop
        return out

    def flush(self) -> np.ndarray:
        """The remaining outputs (inputs past the end are zeros); the resampler is then finished."""
        self._done = True
        total = resampled_length(self.n_in, self.down, self.up)
        if self.up == self.down == 1 or self.n_out >= total:
            return np.zeros(0, np.float32)
        last_hi = ((total - 1 + self._shift) * self.down) // self.up
        need = last_hi + 1 - (self._hist_start + self._hist.shape[0])
        if need > 0:
            self._hist = np.concatenate([self._hist, np.zeros(need)])
        return self._outputs(total)


def _read_frames(f, out: np.ndarray) -> int:
    """Decode up to ``len(out)`` frames of the open ``soundfile.SoundFile`` ``f`` into ``out`` (float32, C-ordered
    ``(frames, channels)``) with libsndfile's ``sf_readf_float``, without ``SoundFile.read``'s seek after the read;
    returns the frames read (0 at the end). ``SoundFile.read`` where soundfile's cffi handles are not there."""
    import soundfile

    snd, ffi, handle = getattr(soundfile, "_snd", None), getattr(soundfile, "_ffi", None), getattr(f, "_file", None)
    if snd is None or ffi is None or handle is None:
        return f.read(out.shape[0], dtype="float32", always_2d=True, out=out).shape[0]
    n = int(snd.sf_readf_float(handle, ffi.cast("float *", out.ctypes.data), out.shape[0]))
    err = int(snd.sf_error(handle))
    if err:
        raise RuntimeError(ffi.string(snd.sf_error_number(err)).decode("utf-8", "replace"))
    return max(n, 0)


def file_blocks(path: str | pathlib.Path, target_rate: int, *, max_channels: int = MAX_CHANNELS,
                block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an audio file at ``target_rate``, decoded and resampled block by block.

    The same checks as :func:`~audiokv_edge.runtime.audio.load_audio` (one-line :class:`AudioError`): missing,
    empty, unreadable, 0 Hz, no samples, too many channels, NaN or infinite samples (found in the block holding them).
    """
    import soundfile

    p = pathlib.Path(path)
    info = probe_audio(p, max_channels=max_channels)
    resampler = StreamingResampler(int(info.samplerate), int(target_rate))
    try:
        with soundfile.SoundFile(str(p)) as f:
            if f.seekable():
                f.seek(0)  # what soundfile.read does first: an mp3 then decodes as load_audio's read does
            while True:
                data = np.empty((block_frames, f.channels), dtype=np.float32)
                n = _read_frames(f, data)
                if n == 0:
                    break
                mono = mix_to_mono(data[:n])
                if not np.all(np.isfinite(mono)):
                    raise AudioError(f"{p}: audio contains NaN or infinite samples")
                out = resampler.process(mono)
                if out.shape[0]:
                    yield out
    except AudioError:
        raise
    except Exception as exc:  # libsndfile reports a decoding error as a RuntimeError subclass
        raise AudioError(f"cannot read audio from {p}: {_reason(exc)}") from None
    if resampler.n_in == 0:
        raise AudioError(f"{p}: audio has no samples (zero length)")
    tail = resampler.flush()
    if tail.shape[0]:
        yield tail
    if resampler.n_out == 0:
        raise AudioError(f"{p}: audio is too short to resample to {target_rate} Hz")


def clip_blocks(clip: AudioClip, block_samples: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Blocks (views) of a clip already in memory."""
    for start in range(0, clip.samples.shape[0], block_samples):
        yield clip.samples[start : start + block_samples]


class AudioFile:
    """An audio file read block by block (checked with :func:`~audiokv_edge.runtime.audio.probe_audio` when made).

    Parameters
    ----------
    path : str or pathlib.Path
    sample_rate : int
        Rate the blocks are resampled to (the projector's).
    """

    def __init__(self, path: str | pathlib.Path, sample_rate: int, *, max_channels: int = MAX_CHANNELS):
        self.path = pathlib.Path(path)
        self.sample_rate = int(sample_rate)
        self.max_channels = max_channels
        probe_audio(self.path, max_channels=max_channels)

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at :attr:`sample_rate` (:func:`file_blocks`), read anew on every call."""
        return file_blocks(self.path, self.sample_rate, max_channels=self.max_channels)
