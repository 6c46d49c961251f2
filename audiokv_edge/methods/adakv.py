"""AdaKV: per-layer budgets shared across heads by a global top-k (Feng et al., arXiv 2407.11550)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audiokv_edge.methods.base import PlanInputs
from audiokv_edge.methods.snapkv import SnapKV
from audiokv_edge.reference.select import capped_budgets, rank_descending

__all__ = ["AdaKV", "adaptive_head_caps"]


def adaptive_head_caps(layer_scores, base: int, safeguard: float) -> np.ndarray:
    """Real prefix capacity of every KV head of one layer.

    The Hkv prefix rows are concatenated (flat index = sum of the earlier rows' lengths + j, i.e. h * n + j when
    all rows have length n); the global top Hkv * B' (float32 ranking, ties to the lower flat index) gives n_h
    winners per head; cap_h = n_h (1 - a) + floor(a B').

    Parameters
    ----------
    layer_scores : ndarray, float, shape [n_head_kv, n]; or a sequence of n_head_kv rows of any lengths (ragged)
        Prefix scores of one layer.
    base : int
        B' = C - w.
    safeguard : float
        a in [0, 1].

    Returns
    -------
    ndarray, float64, shape [n_head_kv]
    """
    rows = [np.asarray(r, dtype=np.float64).reshape(-1) for r in layer_scores]
    n_head_kv = len(rows)
    ends = np.cumsum([r.size for r in rows])
    winners = rank_descending(np.concatenate(rows))[: n_head_kv * base]
    heads = np.searchsorted(ends, winners, side="right")
    counts = np.bincount(heads, minlength=n_head_kv).astype(np.float64)
    return counts * (1.0 - safeguard) + math.floor(safeguard * base)


@dataclass(frozen=True)
class AdaKV(SnapKV):
    """SnapKV scoring with adaptive per-head budgets within each layer.

    Per layer: cap_h from :func:`adaptive_head_caps`, b = cap_h + w integerised (largest remainder) so that the
    layer keeps n_head_kv * C tokens. kvpress's AdaKVPress protects the top int(a * C) tokens of each head (window
    included) before the global top-k instead; with safeguard = 0 both agree.

    Parameters
    ----------
    window, pool_kernel, pool_type, gqa_reduce
        As SnapKV (defaults 5 / "avg" as in kvpress; the AdaKV code pools with kernel 7, "max").
    safeguard : float, default 0.2
        Share a of the uniform prefix budget every head keeps at least (kvpress default 0.2; AdaKV code 0.5).
    """

    name = "adakv"

    safeguard: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.safeguard, bool) or not isinstance(self.safeguard, (int, float)) \
                or not 0.0 <= self.safeguard <= 1.0:
            raise ValueError(f"safeguard must be a number in [0, 1], got {self.safeguard!r}")

    def budgets(self, inputs: PlanInputs, scores: np.ndarray) -> np.ndarray:
        """Adaptive budgets, int64 [n_layer, n_head_kv]; every layer sums to n_head_kv * C (ragged: capped at each
        head's entries, the surplus shared equally within the layer, to min(n_head_kv * C, the layer's entries))."""
        base = inputs.budget - inputs.window
        caps = inputs.caps
        out = np.empty((inputs.n_layer, inputs.n_head_kv), dtype=np.int64)
        for layer in range(inputs.n_layer):
            real = adaptive_head_caps(scores[layer], base, float(self.safeguard)) + inputs.window
            out[layer] = capped_budgets(real, inputs.n_head_kv * inputs.budget, inputs.window, caps[layer])
        return out
