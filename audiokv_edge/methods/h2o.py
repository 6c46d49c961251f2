"""H2O: heavy hitters by accumulated attention plus a recent window (Zhang et al., arXiv 2306.14048).

One-shot variant of KVCache-Factory: topk(C - w) heavy hitters over the prefix + the last w tokens, no pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import KeepMethod, PlanInputs, check_choice
from audiokv_edge.reference.scores import GQA_REDUCTIONS, ragged_window_scores, reduce_gqa, window_scores

__all__ = ["H2O"]


@dataclass(frozen=True)
class H2O(KeepMethod):
    """Heavy-hitter oracle; uniform budgets.

    Scores: the accumulated attention column sums over all prompt queries when given (plan(...,
    accumulated_scores=[n_layer, n_head or n_head_kv, n_tokens])), else the SUM over the window rows of the window
    attention; GQA-reduced, restricted to the prefix, no pooling.

    Parameters
    ----------
    window : int, default 32
        Recent window w (always kept).
    gqa_reduce : {"mean", "max"}, default "mean"
        [choice] reduction of the query heads of a KV head.
    """

    name = "h2o"
    takes_accumulated_scores = True

    gqa_reduce: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("gqa_reduce", self.gqa_reduce, GQA_REDUCTIONS)

    def score(self, inputs: PlanInputs):
        """Heavy-hitter scores, float64 [n_layer, n_head_kv, n_tokens - w] (ragged: window scores, rows
        [n_entries - w]; accumulated scores are not defined for an evicted cache)."""
        if inputs.ragged:
            return ragged_window_scores(inputs.q_window, inputs.keys, "sum", self.gqa_reduce)
        if inputs.accumulated_scores is not None:
            raw = inputs.accumulated_scores[..., : inputs.n_prefix]
        else:
            raw = window_scores(inputs.q_window, inputs.keys, row_reduce="sum")
        if raw.shape[1] == inputs.n_head_kv:
            return np.asarray(raw, dtype=np.float64).copy()
        return reduce_gqa(raw, inputs.n_head_kv, self.gqa_reduce)
