"""The audio encoder's outputs of the last recording, kept so that another question about it skips the encoder.

Every answer about a recording runs libmtmd's audio encoder over each of its chunks again, although the question
changes nothing before the text model (for a Whisper encoder, about a second per 30 s window on two cores: a
quarter of a short answer's time). :class:`EncodedAudioCache` keeps the projector's output embeddings of one
recording's audio chunks, keyed by what determines them (the recording's identity and the chunk's place in it); a
new recording replaces them. The text model then decodes the same embeddings it would have been given, so answers
are identical with and without the cache.

A recording's identity: a file's resolved path, size and modification time; samples in memory, a digest of their
bytes. The cache holds at most ``max_bytes`` (chunks past that are encoded each time).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib

import numpy as np


def recording_key(clip) -> tuple | None:
    """What identifies a recording's audio: ``("file", path, size, mtime_ns)`` for a clip read from a file,
    ``("samples", digest, rate)`` for samples in memory (an :class:`~audiokv_edge.runtime.audio.AudioClip`); None
    when the file it was read from is gone (nothing is then kept)."""
    path = getattr(clip, "path", None)
    if path:
        try:
            p = pathlib.Path(path).resolve()
            st = os.stat(p)
        except OSError:
            return None
        return ("file", str(p), st.st_size, st.st_mtime_ns)
    samples = np.ascontiguousarray(clip.samples)
    return ("samples", hashlib.blake2b(samples.view(np.uint8), digest_size=16).hexdigest(),
            int(getattr(clip, "sample_rate", 0)))


class EncodedAudioCache:
    """Output embeddings of the audio chunks of one recording.

    Parameters
    ----------
    max_bytes : int
        Most bytes held (0: nothing is kept).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._recording: tuple | None = None
        self._chunks: dict[tuple, np.ndarray] = {}
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._chunks.values())

    def clear(self) -> None:
        self._recording, self._chunks = None, {}

    def get(self, recording: tuple, chunk: tuple) -> np.ndarray | None:
        """The embeddings stored for ``chunk`` (any hashable, e.g. ``(index, n_tokens)``) of ``recording``."""
        found = self._chunks.get(chunk) if recording == self._recording else None
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, recording: tuple, chunk: tuple, embd: np.ndarray) -> None:
        """Store a copy of ``embd``; a new recording drops the previous one's chunks."""
        if recording != self._recording:
            self._recording, self._chunks = recording, {}
        if self.nbytes + embd.nbytes <= self.max_bytes:
            self._chunks[chunk] = np.array(embd, dtype=np.float32, copy=True)


def eval_audio_chunk(mt, lc, mctx, ctx, chunk, n_past: int, n_batch: int, cache: EncodedAudioCache | None,
                     recording: tuple | None, index: int) -> tuple[int, int]:
    """Encode (or take from ``cache``) one audio chunk and decode its embeddings into the text model's cache, as
    ``mtmd_helper_eval_chunk_single`` does.

    Returns
    -------
    (rc, new_n_past)
        libmtmd's return code (0: success) and the next position.
    """
    n_tokens = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
    key = (index, n_tokens)
    embd = cache.get(recording, key) if cache is not None and recording is not None else None
    if embd is None:
        rc = mt.mtmd_encode_chunk(mctx, chunk)
        if rc != 0:
            return int(rc), n_past
        n_embd = int(lc.llama_model_n_embd_inp(lc.llama_get_model(ctx)))
        out = mt.mtmd_get_output_embd(mctx)
        embd = np.ctypeslib.as_array(out, shape=(n_tokens * n_embd,))
        if cache is not None and recording is not None:
            cache.put(recording, key, embd)
    embd = np.ascontiguousarray(embd, dtype=np.float32)
    new_n_past = lc.llama_pos(n_past)
    no_callback = mt.mtmd_helper_post_decode_callback()
    rc = mt.mtmd_helper_decode_image_chunk(mctx, ctx, chunk, embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                           n_past, 0, n_batch, ctypes.byref(new_n_past), no_callback, None)
    return int(rc), int(new_n_past.value)
