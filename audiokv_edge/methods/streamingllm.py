"""StreamingLLM: attention sinks plus the most recent tokens (Xiao et al., arXiv 2309.17453)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import KeepMethod, PlanInputs, check_int

__all__ = ["StreamingLLM"]


@dataclass(frozen=True)
class StreamingLLM(KeepMethod):
    """Keep the first n_sink tokens and the most recent ones; uniform budgets.

    Score of prefix token j: +inf for j < n_sink, else j (recency). With the window always kept, a head of budget b
    keeps min(n_sink, b - w) sinks and the most recent b - min(n_sink, b - w) tokens.

    Parameters
    ----------
    window : int, default 32
        Observation window w (always kept).
    n_sink : int, default 4
        Attention-sink tokens at the start (StreamingLLM default 4).
    """

    name = "streamingllm"
    needs_queries = False

    n_sink: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_sink", self.n_sink, 0)

    def score(self, inputs: PlanInputs):
        """Recency scores with +inf sinks, float64 [n_layer, n_head_kv, n_tokens - w] (ragged: rows
        [n_entries - w] by entry index, the first n_sink entries of a head being its sinks)."""
        if inputs.ragged:
            return tuple(tuple(self._row(int(n) - inputs.window) for n in layer) for layer in inputs.caps)
        row = self._row(inputs.n_prefix)
        return np.broadcast_to(row, (inputs.n_layer, inputs.n_head_kv, inputs.n_prefix)).copy()

    def _row(self, n_prefix: int) -> np.ndarray:
        row = np.arange(n_prefix, dtype=np.float64)
        row[: self.n_sink] = np.inf
        return row
