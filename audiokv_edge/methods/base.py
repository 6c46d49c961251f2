"""What every keep-plan method shares: its inputs, its window parameter, and its two responsibilities.

A method only says how to SCORE the prefix tokens of every (layer, KV head) and how to SIZE the per-head budgets;
ranking, protecting the window and building the plan live in audiokv_edge.selection and audiokv_edge.plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from audiokv_edge.profile import HeadProfile

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
    """Validated inputs of one plan computation (built by audiokv_edge.plan.plan).

    Attributes
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
        Post-RoPE window queries (None only for methods that do not score with them).
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]
        Post-RoPE cached keys, the window's own keys last.
    keep : float
        Keep ratio in (0, 1].
    window : int
        w, the observation window actually used: min(method.window, n_tokens).
    budget : int
        C = max(1, floor(keep * n_tokens + 0.5)), the uniform per-head budget.
    profile : HeadProfile or None
        Head profile (AudioKV budgets), already checked against [n_layer, n_head_kv].
    accumulated_scores : ndarray, float64, shape [n_layer, n_head or n_head_kv, n_tokens], or None
        Attention column sums accumulated over all prompt queries (H2O).
    """

    q_window: np.ndarray | None
    keys: np.ndarray
    keep: float
    window: int
    budget: int
    profile: HeadProfile | None = None
    accumulated_scores: np.ndarray | None = None

    @property
    def n_layer(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_head_kv(self) -> int:
        return int(self.keys.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.keys.shape[2])

    @property
    def n_prefix(self) -> int:
        """n = N - w, the tokens outside the observation window."""
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

    def score(self, inputs: PlanInputs) -> np.ndarray:
        """Prefix scores, float64 [n_layer, n_head_kv, n_tokens - w]; higher = keep."""
        raise NotImplementedError

    def budgets(self, inputs: PlanInputs, scores: np.ndarray) -> np.ndarray:
        """Per-head budgets, int64 [n_layer, n_head_kv], window included, summing to inputs.uniform_total."""
        return np.full((inputs.n_layer, inputs.n_head_kv), inputs.budget, dtype=np.int64)
