"""A prompt's mtmd input chunks as the prefill reads them, in order: all tokenized at once (:class:`WholePrompt`), or
a long recording tokenized one 30 s mel window at a time (:class:`WindowedPrompt`), so that the mel of at most one
window is alive at a time.

:class:`WindowedPrompt` gives the chunks the whole recording gives (:mod:`audiokv_edge.runtime.audio_windows`): the
prompt tokenized with the first window gives the text before and after the audio; window k's audio chunk is
tokenized when the prefill reaches it (the same prompt with window k's samples; only its audio chunk is kept) and
freed when the prefill moves on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from audiokv_edge.native import mtmd_window
from audiokv_edge.runtime.audio_windows import WINDOW_FRAMES, Window, window_buffers

logger = logging.getLogger(__name__)


def chunk_layout(mt, chunks) -> list[tuple[bool, int, int]]:
    """``(is_audio, n_tokens, n_pos)`` of each chunk of an mtmd chunk list."""
    layout = []
    for i in range(int(mt.mtmd_input_chunks_size(chunks))):
        chunk = mt.mtmd_input_chunks_get(chunks, i)
        layout.append((mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_AUDIO,
                       int(mt.mtmd_input_chunk_get_n_tokens(chunk)), int(mt.mtmd_input_chunk_get_n_pos(chunk))))
    return layout


class WholePrompt:
    """The chunks of one ``mtmd_tokenize`` of the whole prompt (freed by :meth:`free`)."""

    def __init__(self, mt, chunks):
        self._mt, self._chunks = mt, chunks
        self.layout = chunk_layout(mt, chunks)

    def get(self, i: int):
        """Chunk ``i`` (an ``mtmd_input_chunk *``)."""
        return self._mt.mtmd_input_chunks_get(self._chunks, i)

    def free(self) -> None:
        if self._chunks is not None:
            self._mt.mtmd_input_chunks_free(self._chunks)
            self._chunks = None


def scan_windows(mctx, blocks: Iterable[np.ndarray], check: Callable[[], None] | None = None) -> tuple[float, int, int]:
    """Pass 1 over a recording: its log-mel maximum (what libmtmd clamps the whole recording's mel to, minus 8), its
    mel windows and its samples, window by window. ``check()`` runs after every window (e.g. an interrupt check)."""
    top, n_windows, n_samples = -np.inf, 0, 0
    for w in window_buffers(blocks):
        top = max(top, mtmd_window.log_mel_max(mctx, w.samples, w.first_frame, w.max_frames))
        n_windows, n_samples = w.index + 1, w.start + w.samples.shape[0]
        if check is not None:
            check()
    return float(top), n_windows, n_samples


def count_windows(blocks: Iterable[np.ndarray]) -> tuple[int, int]:
    """Mel windows and samples of a recording (no mel computed)."""
    n_windows, n_samples = 0, 0
    for w in window_buffers(blocks):
        n_windows, n_samples = w.index + 1, w.start + w.samples.shape[0]
    return n_windows, n_samples


class WindowedPrompt:
    """The chunks of a prompt whose audio is tokenized one mel window at a time, read in order by :meth:`get`.

    Parameters
    ----------
    mt : module
        ``llama_cpp.mtmd_cpp``.
    mctx : mtmd_context pointer
    tokenize : callable
        ``tokenize(samples) -> mtmd chunk list`` of the prompt with these samples as its audio.
    blocks : iterable of ndarray
        The recording (mono float32 at the projector's rate), read once more (pass 2).
    log_mel_max : float
        The recording's log-mel maximum (:func:`scan_windows`).
    n_windows : int
        Its mel windows.

    Raises
    ------
    ValueError
        libmtmd's layout of the first window is not text, one audio chunk, text.
    """

    def __init__(self, mt, mctx, tokenize: Callable[[np.ndarray], object], blocks: Iterable[np.ndarray],
                 log_mel_max: float, n_windows: int):
        self._mt, self._mctx, self._tokenize = mt, mctx, tokenize
        self._max = float(log_mel_max)
        self._windows = window_buffers(blocks)
        self.n_windows = int(n_windows)
        self._first = self._window_chunks(next(self._windows))
        first_layout = chunk_layout(mt, self._first)
        audio = [i for i, (is_audio, _, _) in enumerate(first_layout) if is_audio]
        if len(audio) != 1:
            self.free()
            raise ValueError(f"libmtmd gave {len(audio)} audio chunks for one mel window (expected 1)")
        self._audio_at = audio[0]
        self.layout = (first_layout[: self._audio_at] + [first_layout[self._audio_at]] * self.n_windows
                       + first_layout[self._audio_at + 1 :])
        self._current = None  # chunk list of the window the prefill is at (windows > 0)
        self._next_window = 1

    def _window_chunks(self, window: Window):
        """The prompt tokenized with one window's samples, libmtmd keeping that window's mel frames only."""
        rc = mtmd_window.set_window(self._mctx, self._max, window.first_frame, WINDOW_FRAMES)
        if rc != mtmd_window.MTMD_WINDOW_OK:
            raise ValueError(f"libmtmd refused mel window {window.index} (code {rc})")
        try:
            return self._tokenize(window.samples)
        finally:
            mtmd_window.set_window(self._mctx, 0.0, 0, 0)

    def get(self, i: int):
        """Chunk ``i``; an audio window's chunk is valid until the next window's is asked for."""
        k = i - self._audio_at
        if k < 0:
            return self._mt.mtmd_input_chunks_get(self._first, i)
        if k >= self.n_windows:
            return self._mt.mtmd_input_chunks_get(self._first, i - self.n_windows + 1)
        if k == 0:
            return self._mt.mtmd_input_chunks_get(self._first, self._audio_at)
        if k != self._next_window:
            raise ValueError(f"mel window {k} asked for after window {self._next_window - 1}: windows are read in "
                             "order, once")
        window = next(self._windows, None)
        if window is None or window.index != k:
            raise ValueError(f"the recording gave no mel window {k} on its second reading (changed on disk?)")
        self._free_current()
        self._current = self._window_chunks(window)
        self._next_window += 1
        layout = chunk_layout(self._mt, self._current)
        audio = [j for j, (is_audio, _, _) in enumerate(layout) if is_audio]
        if len(audio) != 1 or layout[audio[0]] != self.layout[i]:
            raise ValueError(f"libmtmd gave mel window {k} another layout than the first one")
        return self._mt.mtmd_input_chunks_get(self._current, audio[0])

    def _free_current(self) -> None:
        if self._current is not None:
            self._mt.mtmd_input_chunks_free(self._current)
            self._current = None

    def free(self) -> None:
        self._free_current()
        if self._first is not None:
            self._mt.mtmd_input_chunks_free(self._first)
            self._first = None
        self._windows.close()
