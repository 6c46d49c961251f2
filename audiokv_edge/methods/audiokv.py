"""AudioKV: head-profile budgets and spectrally smoothed window scores (He et al., arXiv 2604.06694)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import KeepMethod, PlanInputs, check_choice, check_int
from audiokv_edge.reference.scores import GQA_REDUCTIONS, POOL_TYPES, ragged_smoothed_window_scores, smoothed_window_scores
from audiokv_edge.reference.select import cap_and_share, capped_budgets, sequential_sum
from audiokv_edge.reference.sss import check_sss_params

__all__ = ["AudioKV", "audiokv_real_budgets"]

logger = logging.getLogger(__name__)
_warned_no_profile = False


def audiokv_real_budgets(scores: np.ndarray, budget: int, window: int, caps,
                         uniform_share: float = 0.5, redistribute_surplus: bool = True) -> np.ndarray:
    """Real per-head budgets from a head profile (paper Eq. 1, SparseMM), surplus above the caps redistributed.

    S_hat = S / sum(S); base = C - w; m = floor(uniform_share * base); remain = (base - m) * L * Hkv;
    b = S_hat * remain + m + w. Heads above their cap (N, or in a ragged cache the entries they hold) are set to it
    and their surplus is shared by the other heads in proportion to S_hat (equally when those heads all have
    S_hat = 0), repeated until no head exceeds its cap (audiokv_edge.reference.select.cap_and_share).
    Sums run sequentially in row-major order.

    Parameters
    ----------
    scores : ndarray, float, shape [n_layer, n_head_kv]
        Head profile S (non-negative, not all zero).
    budget, window : int
        C, w with w < C.
    caps : int or ndarray, int, shape [n_layer, n_head_kv]
        N (uniform cache), or the entries each head holds (ragged cache).
    uniform_share : float
        r_frac, the share of base every head gets regardless of its score.
    redistribute_surplus : bool
        False: clip at the caps and drop the surplus (SparseMM); the sum is then below C * L * Hkv.

    Returns
    -------
    ndarray, float64, shape [n_layer, n_head_kv]
        Sums to min(C * L * Hkv, sum of caps) up to round-off (when redistributing); every entry in [w, cap].
    """
    s = np.asarray(scores, dtype=np.float64)
    s_hat = s / sequential_sum(s)
    base = budget - window
    m = math.floor(uniform_share * base)
    remain = float((base - m) * s.size)
    real = s_hat * remain + m + window
    if not redistribute_surplus:
        return np.minimum(real, caps)
    return cap_and_share(real, caps, s_hat)


@dataclass(frozen=True)
class AudioKV(KeepMethod):
    """Per-head budgets from an offline head profile; window scores smoothed by SSS.

    Without a profile the budgets are uniform (one warning per process).

    Parameters
    ----------
    window : int, default 32
        Observation window w (paper: 32).
    sss_alpha : float, default 0.5
        SSS blend weight (paper: 0.5); 0 turns SSS off and pooling applies instead.
    sss_gamma : float, default 0.7
        SSS energy fraction (paper: "k = 0.7").
    uniform_share : float, default 0.5
        r_frac, share of the prefix budget given uniformly to every head (SparseMM: 0.5).
    sss_taper : float, default 0.05
        [choice] SSS cosine taper width as a fraction of the spectrum (audiokv_edge.reference.sss.taper_width).
    redistribute_surplus : bool, default True
        [choice] give the budget of heads clipped at N to the other heads (sum stays C * L * Hkv, integerised by
        largest remainder). False: SparseMM's rule b = min(N, floor(S_hat remain + m + w + 0.5)), surplus dropped
        (the plan then keeps fewer than C * L * Hkv tokens).
    gqa_reduce : {"mean", "max"}, default "mean"
        [choice] reduction of the query heads of a KV head.
    pool_kernel : int, default 5
        [choice] pooling kernel used only when sss_alpha == 0.
    pool_type : {"avg", "max"}, default "avg"
        [choice] pooling kind used only when sss_alpha == 0.
    """

    name = "audiokv"

    sss_alpha: float = 0.5
    sss_gamma: float = 0.7
    uniform_share: float = 0.5
    sss_taper: float = 0.05
    redistribute_surplus: bool = True
    gqa_reduce: str = "mean"
    pool_kernel: int = 5
    pool_type: str = "avg"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sss_params(self.sss_alpha, self.sss_gamma, self.sss_taper)
        if not isinstance(self.redistribute_surplus, (bool, np.bool_)):
            raise ValueError(f"redistribute_surplus must be a bool, got {self.redistribute_surplus!r}")
        if isinstance(self.uniform_share, bool) or not isinstance(self.uniform_share, (int, float)) \
                or not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be a number in [0, 1], got {self.uniform_share!r}")
        check_choice("gqa_reduce", self.gqa_reduce, GQA_REDUCTIONS)
        check_int("pool_kernel", self.pool_kernel, 1)
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd, got {self.pool_kernel}")
        check_choice("pool_type", self.pool_type, POOL_TYPES)

    def score(self, inputs: PlanInputs):
        """SSS-smoothed window scores, float64 [n_layer, n_head_kv, n_tokens - w] (ragged: rows [n_entries - w]);
        with an audio mask SSS smooths the runs of audio tokens only, the other tokens keep their raw scores."""
        scorer = ragged_smoothed_window_scores if inputs.ragged else smoothed_window_scores
        return scorer(inputs.q_window, inputs.keys, self.gqa_reduce, self.pool_kernel, self.pool_type,
                      float(self.sss_alpha), float(self.sss_gamma), float(self.sss_taper), inputs.audio_mask)

    def budgets(self, inputs: PlanInputs, scores: np.ndarray) -> np.ndarray:
        """Profile budgets, int64 [n_layer, n_head_kv], summing to the uniform total (when redistributing)."""
        global _warned_no_profile
        if inputs.profile is None:
            if not _warned_no_profile:
                logger.warning("audiokv without a head profile: falling back to uniform budgets")
                _warned_no_profile = True
            return super().budgets(inputs, scores)
        caps = inputs.caps
        real = audiokv_real_budgets(inputs.profile.scores, inputs.budget, inputs.window, caps,
                                    float(self.uniform_share), bool(self.redistribute_surplus))
        if not self.redistribute_surplus:  # SparseMM: round each head, clip at its cap (done), drop the surplus
            return np.minimum(np.floor(real + 0.5), caps).astype(np.int64)
        return capped_budgets(real, inputs.uniform_total, inputs.window, caps)
