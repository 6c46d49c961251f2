"""What every keep-plan method shares: its inputs, its window parameter, and its two responsibilities.

A method only says how to SCORE the prefix tokens of every (layer, KV head) and how to SIZE the per-head budgets;
ranking, protecting the window and building the plan live in audiokv_edge.reference.select and audiokv_edge.plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.reference.select import capped_budgets

__all__ = ["PlanInputs", "KeepMethod", "check_int", "check_choice"]


def check_int(name: str, value, minimum: int) -> None:
    """Raise ValueError unless value is an int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class PlanInputs:
    """Validated inputs of one plan computation (built by audiokv_edge.plan / audiokv_edge.plan_ragged).

    Attributes
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
        Post-RoPE window queries (None only for methods that do not score with them).
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]; or, ragged, a tuple of tuples of
        ndarray, float, shape [n_entries[l, h], head_dim]
        Post-RoPE cached keys (each head's entries in position order), the window's own keys last.
    keep : float
        Keep ratio in (0, 1].
    window : int
        w, the observation window actually used: min(method.window, n_tokens).
    budget : int
        C = max(1, floor(keep * n_tokens + 0.5)), the uniform per-head budget.
    profile : HeadProfile or None
        Head profile (AudioKV budgets), already checked against [n_layer, n_head_kv].
    accumulated_scores : ndarray, float64, shape [n_layer, n_head or n_head_kv, n_tokens], or None
        Attention column sums accumulated over all prompt queries (H2O; never for a ragged cache).
    n_entries : ndarray, int64, shape [n_layer, n_head_kv], or None
        Ragged cache: the entries each head holds (None: a uniform cache, every head holds n_tokens).
    n_positions : int or None
        Ragged cache: the positions the sequence has seen (n_tokens of the budgets).
    audio_mask : ndarray, bool, shape [n_tokens]; or, ragged, a tuple of tuples of ndarray, bool, shape
        [n_entries[l, h]]; or None
        True where the token (ragged: head (l, h)'s entry) is an audio token: AudioKV's SSS then smooths only the
        runs of audio tokens (docs/semantics.md, "SSS restricted to the audio tokens"). None: every token.
    """

    q_window: np.ndarray | None
    keys: np.ndarray | tuple
    keep: float
    window: int
    budget: int
    profile: HeadProfile | None = None
    accumulated_scores: np.ndarray | None = None
    n_entries: np.ndarray | None = None
    n_positions: int | None = None
    audio_mask: np.ndarray | tuple | None = None

    @property
    def ragged(self) -> bool:
        """True for a ragged cache (docs/semantics.md, "Re-planning a ragged cache")."""
        return self.n_entries is not None

    @property
    def n_layer(self) -> int:
        return int(self.n_entries.shape[0] if self.ragged else self.keys.shape[0])

    @property
    def n_head_kv(self) -> int:
        return int(self.n_entries.shape[1] if self.ragged else self.keys.shape[1])

    @property
    def n_tokens(self) -> int:
        """N of the budgets: tokens in a uniform cache, n_positions of a ragged one."""
        return int(self.n_positions if self.ragged else self.keys.shape[2])

    @property
    def caps(self) -> np.ndarray:
        """Entries each head holds, int64 [n_layer, n_head_kv] (n_tokens everywhere in a uniform cache)."""
        if self.ragged:
            return np.asarray(self.n_entries, dtype=np.int64)
        return np.full((self.n_layer, self.n_head_kv), self.n_tokens, dtype=np.int64)

    @property
    def n_prefix(self) -> int:
        """n = N - w, the tokens outside the observation window (uniform cache)."""
        return self.n_tokens - self.window

    @property
    def uniform_total(self) -> int:
        """T = C * n_layer * n_head_kv."""
        return self.budget * self.n_layer * self.n_head_kv


@dataclass(frozen=True)
class KeepMethod:
    """Base of every method: a frozen dataclass of its parameters.

    Parameters
    ----------
    window : int, default 32
        Observation window w (AudioKV paper: 32): the last w tokens are always kept and their queries score the
        rest. The window used is min(window, n_tokens).
    """

    name: ClassVar[str] = ""
    needs_queries: ClassVar[bool] = True  # False: score() never reads q_window
    takes_accumulated_scores: ClassVar[bool] = False  # True: accumulated scores may replace q_window
    keeps_everything: ClassVar[bool] = False  # True: every head keeps all tokens whatever keep is

    window: int = 32

    def __post_init__(self) -> None:
        check_int("window", self.window, 1)

    def score(self, inputs: PlanInputs):
        """Prefix scores, float64 [n_layer, n_head_kv, n_tokens - w]; higher = keep. Ragged cache: a tuple of
        tuples of float64 rows [n_entries[l, h] - w]."""
        raise NotImplementedError

    def budgets(self, inputs: PlanInputs, scores) -> np.ndarray:
        """Per-head budgets, int64 [n_layer, n_head_kv], window included, summing to inputs.uniform_total (ragged:
        C per head capped at its entries, the surplus shared equally, to min(T, sum of caps))."""
        real = np.full((inputs.n_layer, inputs.n_head_kv), float(inputs.budget))
        return capped_budgets(real, inputs.uniform_total, inputs.window, inputs.caps)
