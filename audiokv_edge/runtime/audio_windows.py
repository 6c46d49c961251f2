"""A long recording as libmtmd's 30 s mel windows, one at a time (Whisper-family audio encoders).

libmtmd computes the log-mel spectrogram of the whole buffer it is given (the recording plus 30 s of silence),
clamps every value to (the maximum - 8), and cuts 3000-frame (30 s) windows, dropping the incomplete last one.
Frame ``f`` is the FFT of the samples ``[160 f - 200, 160 f + 200)`` (reflected before the first sample, zeros after
the last). So window ``k`` (frames ``[3000 k, 3000 k + 3000)``) needs only the samples
``[480000 k - 200, 480000 (k + 1) + 40)`` and the whole recording's maximum.

:func:`window_buffers` cuts a stream of sample blocks into one buffer per window: the samples from
``480000 k - 320`` (a multiple of the hop, so that the buffer's frames are the recording's frames, shifted by two)
to ``480000 (k + 1) + 200`` (or the end of the recording, where libmtmd's zero padding then equals the whole
recording's). libmtmd (patches/0009-mtmd-audio-window.patch) computes each buffer's mel the way it computes the
whole recording's, frame for frame, so:

- pass 1: the maximum of the frames of each window (the last one: to the end of its mel, the silence included, as in
  the whole recording) is ``mtmd_audio_log_mel_max``; the largest is the recording's maximum;
- pass 2: ``mtmd_audio_set_window(max, first_frame, 3000)`` then ``mtmd_tokenize`` of each buffer gives exactly the
  chunk the whole recording gives for that window.

At most two windows of samples (plus one block) are held at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

#: Samples per mel frame (Whisper's hop at 16 kHz).
HOP = 160
#: Half of Whisper's 400-sample FFT window: frame f reaches this far on either side of sample HOP * f.
HALF_WINDOW = 200
#: Mel frames per window (30 s), what libmtmd's encoder graph takes.
WINDOW_FRAMES = 3000
#: Samples per window.
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
#: Samples a buffer starts before its window: whole frames (so that frame indices stay aligned) covering the half
#: window its first frame reaches back.
LEAD = -(-HALF_WINDOW // HOP) * HOP
#: Frames a buffer (but the first) starts before its window.
LEAD_FRAMES = LEAD // HOP


def n_windows(n_samples: int) -> int:
    """Mel windows libmtmd cuts from ``n_samples`` samples: ``n // 160 + 3001`` frames (the appended 30 s of silence
    included) in whole windows of 3000."""
    return (max(int(n_samples), HALF_WINDOW + 1) // HOP + WINDOW_FRAMES + 1) // WINDOW_FRAMES


@dataclass(frozen=True)
class Window:
    """The samples libmtmd needs for one mel window.

    Attributes
    ----------
    index : int
        Window k of the recording (its frames ``[3000 k, 3000 k + 3000)``).
    samples : ndarray, float32
        The recording's samples ``[start, end)``.
    start : int
        Index of ``samples[0]`` in the recording.
    first_frame : int
        Where window k starts in the mel of ``samples`` (0 for the first window, else :data:`LEAD_FRAMES`).
    last : bool
        The recording's last window: its maximum counts every frame to the end of the mel (``n_frames = -1``).
    """

    index: int
    samples: np.ndarray
    start: int
    first_frame: int
    last: bool

    @property
    def max_frames(self) -> int:
        """``n_frames`` of ``mtmd_audio_log_mel_max`` for this window."""
        return -1 if self.last else WINDOW_FRAMES


def window_buffers(blocks: Iterable[np.ndarray]) -> Iterator[Window]:
    """One :class:`Window` per mel window of the recording given as a stream of mono float32 blocks.

    Holds at most the samples of two windows plus one block; the number of windows is known when the stream ends
    (:func:`n_windows` of the samples counted).
    """
    it = iter(blocks)
    held: list[np.ndarray] = []  # blocks from sample `base` on
    base = 0
    n_held = 0
    n_total = None  # known at the end of the stream
    k = 0
    while True:
        start = max(0, k * WINDOW_SAMPLES - LEAD)
        end = (k + 1) * WINDOW_SAMPLES + HALF_WINDOW
        while n_total is None and base + n_held < end:
            block = next(it, None)
            if block is None:
                n_total = base + n_held
                break
            block = np.asarray(block, dtype=np.float32)
            held.append(block)
            n_held += block.shape[0]
        if n_total is not None:
            if n_total == 0 or k >= n_windows(n_total):
                return
        joined = np.concatenate(held) if len(held) != 1 else held[0]
        stop = min(end, base + n_held)
        samples = np.ascontiguousarray(joined[start - base : stop - base])
        last = n_total is not None and k == n_windows(n_total) - 1
        yield Window(k, samples, start, 0 if start == 0 else LEAD_FRAMES, last)
        # keep what the next window starts from
        keep_from = (k + 1) * WINDOW_SAMPLES - LEAD
        drop = max(0, min(keep_from, base + n_held) - base)
        joined = joined[drop:]
        held = [joined] if joined.shape[0] else []
        base += drop
        n_held = joined.shape[0]
        k += 1
