"""Head profile: how strongly each (layer, KV head) follows the audio (AudioKV, arXiv 2604.06694, Sec. 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class HeadProfile:
    """Per-(layer, KV head) audio-tracking scores, GQA already reduced.

    Parameters
    ----------
    scores : ndarray, float, shape [n_layer, n_head_kv]
        Non-negative, finite, not all zero. Stored as a read-only float64 copy.
    source : dict
        Where the scores came from (calibration set, date, tool version, ...); free-form strings.
    """

    scores: np.ndarray
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = np.array(self.scores, dtype=np.float64, copy=True)
        if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
            raise ValueError(f"head profile must be 2-D [n_layer, n_head_kv], got shape {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("head profile contains NaN or infinite scores")
        if np.any(s < 0):
            raise ValueError("head profile contains negative scores")
        if not np.any(s > 0):
            raise ValueError("head profile scores are all zero")
        s.setflags(write=False)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "source", dict(self.source))

    @property
    def n_layer(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_head_kv(self) -> int:
        return int(self.scores.shape[1])

    def normalized(self) -> np.ndarray:
        """S_hat = S / sum(S) over all layers and KV heads, shape [n_layer, n_head_kv]."""
        return self.scores / self.scores.sum()

    def check_shape(self, n_layer: int, n_head_kv: int) -> None:
        """Raise ValueError naming both shapes if this profile does not fit a model."""
        if self.scores.shape != (n_layer, n_head_kv):
            raise ValueError(
                f"head profile has shape {self.scores.shape} but the model has "
                f"{n_layer} layers x {n_head_kv} KV heads")
