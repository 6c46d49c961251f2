"""PyramidKV: per-layer budgets decreasing linearly with depth (Cai et al., arXiv 2406.02069)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import PlanInputs
from audiokv_edge.methods.snapkv import SnapKV
from audiokv_edge.reference.select import capped_budgets

__all__ = ["PyramidKV", "pyramid_layer_caps"]


def pyramid_layer_caps(budget: int, window: int, n_tokens: int, n_layer: int, beta: float) -> np.ndarray:
    """Real prefix capacity of every layer (KVCache-Factory's pyramid).

    lo = (C - w) / beta, hi = 2 (C - w) - lo; if hi >= N - w then hi = N - w and lo = 2 (C - w) - hi;
    cap(l) = hi - l (hi - lo) / (L - 1) (cap = C - w when L = 1). The caps average C - w.

    Parameters
    ----------
    budget, window, n_tokens, n_layer : int
        C, w, N, L.
    beta : float
        Pyramid steepness (>= 1).

    Returns
    -------
    ndarray, float64, shape [n_layer]
    """
    base = float(budget - window)
    if n_layer == 1:
        return np.array([base])
    lo = base / beta
    hi = 2.0 * base - lo
    if hi >= n_tokens - window:
        hi = float(n_tokens - window)
        lo = 2.0 * base - hi
    step = (hi - lo) / (n_layer - 1)
    return hi - np.arange(n_layer, dtype=np.float64) * step


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """SnapKV scoring with pyramid-shaped per-layer budgets.

    Every KV head of layer l gets cap(l) + w (real), integerised by largest remainder over all heads to the
    uniform total. Unlike kvpress's PyramidKVPress, the window comes on top of the pyramid (as in KVCache-Factory).

    Parameters
    ----------
    window, pool_kernel, pool_type, gqa_reduce
        As SnapKV.
    beta : float, default 20
        Pyramid steepness, >= 1 (PyramidKV: 20).
    """

    name = "pyramidkv"

    beta: float = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta >= 1 \
                or not np.isfinite(self.beta):
            raise ValueError(f"beta must be a finite number >= 1, got {self.beta!r}")

    def budgets(self, inputs: PlanInputs, scores: np.ndarray) -> np.ndarray:
        """Pyramid budgets, int64 [n_layer, n_head_kv], summing to the uniform total (ragged: capped at each head's
        entries, the surplus shared equally)."""
        caps = pyramid_layer_caps(inputs.budget, inputs.window, inputs.n_tokens, inputs.n_layer, float(self.beta))
        real = np.repeat(caps[:, None] + inputs.window, inputs.n_head_kv, axis=1)
        return capped_budgets(real, inputs.uniform_total, inputs.window, inputs.caps)
