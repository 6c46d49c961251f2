"""SnapKV: the window's attention, pooled, picks the prefix tokens (Li et al., arXiv 2404.14469)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import KeepMethod, PlanInputs, check_choice, check_int
from audiokv_edge.reference.scores import GQA_REDUCTIONS, POOL_TYPES, ragged_smoothed_window_scores, smoothed_window_scores

__all__ = ["SnapKV"]


@dataclass(frozen=True)
class SnapKV(KeepMethod):
    """Window scores, GQA reduction, pooling; per KV head top (C - w) + window; uniform budgets.

    Parameters
    ----------
    window : int, default 32
        Observation window w.
    pool_kernel : int, default 5
        Odd pooling kernel (SnapKV: 5); 1 disables pooling.
    pool_type : {"avg", "max"}, default "avg"
        Pooling kind (SnapKV: avg).
    gqa_reduce : {"mean", "max"}, default "mean"
        [choice] reduction of the query heads of a KV head (SparseMM, kvpress: mean).
    """

    name = "snapkv"

    pool_kernel: int = 5
    pool_type: str = "avg"
    gqa_reduce: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("pool_kernel", self.pool_kernel, 1)
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd, got {self.pool_kernel}")
        check_choice("pool_type", self.pool_type, POOL_TYPES)
        check_choice("gqa_reduce", self.gqa_reduce, GQA_REDUCTIONS)

    def score(self, inputs: PlanInputs):
        """Pooled window scores, float64 [n_layer, n_head_kv, n_tokens - w] (ragged: rows [n_entries - w])."""
        if inputs.ragged:
            return ragged_smoothed_window_scores(inputs.q_window, inputs.keys, self.gqa_reduce, self.pool_kernel,
                                                 self.pool_type)
        return smoothed_window_scores(inputs.q_window, inputs.keys, self.gqa_reduce, self.pool_kernel,
                                      self.pool_type)
