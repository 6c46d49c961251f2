"""Offline head score of AudioKV: how often each head's strongest attention falls on the audio of the word
being emitted (AudioKV, He et al. 2026, arXiv 2604.06694, Sec. 3; SparseMM's hit-ratio head score).

For each decode step that emits (a token of) word i, every query head's attention row is reduced to its top-K
positions (K = 24); the hit ratio is the fraction of them inside word i's audio-token span. The head score is the
mean hit ratio over all such steps; the g query heads of a KV head are summed (GQA); the profile is normalised
over all layers and KV heads. Word spans come from word timings through the uniform time-to-token mapping
a = a0 + floor(t / T * N_audio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audiokv_edge.profile.head_profile import HeadProfile

DEFAULT_TOP_K = 24


@dataclass(frozen=True)
class WordTiming:
    """One word of a transcript and where it is spoken, in seconds from the start of the clip."""

    word: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not isinstance(self.word, str) or not self.word:
            raise ValueError("word must be a non-empty string")
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError(f"word {self.word!r}: times must be finite, got {self.start}, {self.end}")
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"word {self.word!r}: need 0 <= start <= end, got {self.start}, {self.end}")


def uniform_word_timings(words: list[str], duration: float) -> list[WordTiming]:
    """Fallback timings when none are known: the clip split over the words in proportion to their length.

    Each word gets a share of ``duration`` proportional to len(word) + 1 (the +1 stands for the pause).
    """
    if not words:
        raise ValueError("no words to time")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * duration
    return [WordTiming(w, float(edges[i]), float(edges[i + 1])) for i, w in enumerate(words)]


def word_token_spans(timings: list[WordTiming], duration: float, n_audio: int, a0: int = 0) -> np.ndarray:
    """Audio-token span of every word under the uniform time-to-token mapping.

    start = a0 + floor(t_start / T * N_audio), end = a0 + ceil(t_end / T * N_audio) (exclusive), at least one token,
    clipped to the audio tokens [a0, a0 + N_audio). The ceiling at the end [choice, the paper gives only the
    mapping of a time] keeps the token that holds the end of the word.

    Parameters
    ----------
    timings : list of WordTiming, length n_words
    duration : float
        T, the clip length in seconds that the N_audio tokens cover.
    n_audio : int
        N_audio, number of audio tokens of the clip.
    a0 : int
        Sequence position of the first audio token.

    Returns
    -------
    ndarray, int64, shape [n_words, 2]
        [start, end) sequence positions per word.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if n_audio < 1 or a0 < 0:
        raise ValueError(f"need n_audio >= 1 and a0 >= 0, got {n_audio}, {a0}")
    spans = np.empty((len(timings), 2), dtype=np.int64)
    for i, t in enumerate(timings):
        if t.start > duration:
            raise ValueError(f"word {t.word!r} starts at {t.start} s, after the clip's end ({duration} s)")
        s = min(int(math.floor(t.start / duration * n_audio)), n_audio - 1)
        e = min(max(int(math.ceil(t.end / duration * n_audio)), s + 1), n_audio)
        spans[i] = (a0 + s, a0 + e)
    return spans


def top_k_hits(rows: np.ndarray, start: int, end: int, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Number of each row's top-K positions inside [start, end).

    Ties are broken towards the lower position (stable order), as in the keep-plan selection.

    Parameters
    ----------
    rows : ndarray, float, shape [..., n_kv]
        Attention rows (any non-negative weights; softmax rows in practice).
    start, end : int
        Span of positions, 0 <= start < end <= n_kv.
    top_k : int
        K; rows shorter than K use all their positions.

    Returns
    -------
    ndarray, int64, shape [...]
    """
    rows = np.asarray(rows)
    n_kv = rows.shape[-1]
    if not 0 <= start < end <= n_kv:
        raise ValueError(f"span [{start}, {end}) is not inside the row of length {n_kv}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not np.all(np.isfinite(rows)):
        raise ValueError("attention rows contain NaN or infinite values")
    k = min(top_k, n_kv)
    order = np.argsort(-rows.astype(np.float32), axis=-1, kind="stable")[..., :k]
    return np.count_nonzero((order >= start) & (order < end), axis=-1).astype(np.int64)


class HitRatioAccumulator:
    """Running mean hit ratio per (layer, query head) over decode steps.

    Parameters
    ----------
    n_layer, n_head : int
        Model shape (query heads).
    top_k : int
        K of the hit ratio (24 in the paper).
    """

    def __init__(self, n_layer: int, n_head: int, top_k: int = DEFAULT_TOP_K) -> None:
        if n_layer < 1 or n_head < 1 or top_k < 1:
            raise ValueError(f"need n_layer, n_head, top_k >= 1, got {n_layer}, {n_head}, {top_k}")
        self.n_layer, self.n_head, self.top_k = n_layer, n_head, top_k
        self._sum = np.zeros((n_layer, n_head), dtype=np.float64)
        self.n_steps = 0

    def add(self, rows: np.ndarray, span: tuple[int, int]) -> None:
        """Add one decode step.

        Parameters
        ----------
        rows : ndarray, float, shape [n_layer, n_head, n_kv]
            This step's attention row of every head (the query of the token being emitted).
        span : (int, int)
            [start, end) audio-token positions of the word this step emits.
        """
        rows = np.asarray(rows)
        if rows.ndim != 3 or rows.shape[:2] != (self.n_layer, self.n_head):
            raise ValueError(f"rows must have shape [{self.n_layer}, {self.n_head}, n_kv], got {rows.shape}")
        k = min(self.top_k, rows.shape[-1])
        self._sum += top_k_hits(rows, int(span[0]), int(span[1]), self.top_k) / k
        self.n_steps += 1

    def merge(self, other: "HitRatioAccumulator") -> None:
        """Add the steps of another accumulator of the same shape."""
        if (other.n_layer, other.n_head, other.top_k) != (self.n_layer, self.n_head, self.top_k):
            raise ValueError("cannot merge accumulators of different shape or top_k")
        self._sum += other._sum
        self.n_steps += other.n_steps

    def head_scores(self) -> np.ndarray:
        """Mean hit ratio per query head, float64 [n_layer, n_head], each in [0, 1]."""
        if self.n_steps == 0:
            raise ValueError("no decode steps recorded: nothing to score")
        return self._sum / self.n_steps


def reduce_gqa(scores: np.ndarray, n_head_kv: int) -> np.ndarray:
    """Sum the scores of the g = H / Hkv query heads of each KV head (SparseMM).

    Parameters
    ----------
    scores : ndarray, shape [n_layer, n_head]
    n_head_kv : int

    Returns
    -------
    ndarray, float64, shape [n_layer, n_head_kv]
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_layer, n_head = scores.shape
    if n_head_kv < 1 or n_head % n_head_kv:
        raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")
    return scores.reshape(n_layer, n_head_kv, n_head // n_head_kv).sum(axis=2)


def fold_shared_layers(scores: np.ndarray, kv_source: dict[int, int]) -> np.ndarray:
    """Per-layer scores with each layer that reads another layer's K/V added into that layer's row (its own row
    0): the eviction keeps one set of entries per K/V-owning layer, which its readers all attend."""
    out = np.array(scores, dtype=np.float64, copy=True)
    for il, src in sorted(kv_source.items()):
        out[src] += out[il]
        out[il] = 0.0
    return out


def profile_from_hits(acc: HitRatioAccumulator, n_head_kv: int, source: dict,
                      kv_source: dict[int, int] | None = None,
                      attention_layers: list[int] | None = None) -> HeadProfile:
    """HeadProfile S_hat = S / sum(S) from accumulated hit ratios (S summed per KV head; the layers of
    ``kv_source`` folded into the layer whose K/V they read, :func:`fold_shared_layers`; the layers not in
    ``attention_layers`` (default: all), which have no attention rows, scored 0).

    Raises ValueError if no head ever hit (all-zero scores carry no information).
    """
    scores = np.array(acc.head_scores(), dtype=np.float64)
    if attention_layers is not None:
        idle = np.ones(scores.shape[0], dtype=bool)
        idle[list(attention_layers)] = False
        scores[idle] = 0.0  # their all-zero rows would rank arbitrary cells into the top-k
    s = reduce_gqa(fold_shared_layers(scores, kv_source or {}), n_head_kv)
    total = s.sum()
    if not total > 0:
        raise ValueError(f"no head's top-{acc.top_k} ever fell inside the word spans ({acc.n_steps} steps)")
    return HeadProfile(s / total, source=source)
