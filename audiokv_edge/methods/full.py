"""Full cache: every head keeps every token (the reference point of every comparison)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import KeepMethod, PlanInputs

__all__ = ["Full"]


@dataclass(frozen=True)
class Full(KeepMethod):
    """Keep all N tokens in every (layer, KV head); ignores keep (plan() short-cuts it before scoring)."""

    name = "full"
    needs_queries = False
    keeps_everything = True

    def score(self, inputs: PlanInputs):
        """All-zero prefix scores, float64 [n_layer, n_head_kv, n_tokens - w] (ragged: rows [n_entries - w]; never
        ranked)."""
        if inputs.ragged:
            return tuple(tuple(np.zeros(int(n) - inputs.window) for n in layer) for layer in inputs.caps)
        return np.zeros((inputs.n_layer, inputs.n_head_kv, inputs.n_prefix))

    def budgets(self, inputs: PlanInputs, scores) -> np.ndarray:
        """Every entry of every head, int64 [n_layer, n_head_kv] (n_tokens in a uniform cache)."""
        return inputs.caps.copy()
