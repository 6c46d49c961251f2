"""The one top-k selection and the one budget integerisation every method shares (docs/semantics.md).

Ranking: scores are rounded to float32, ordered from the highest down, ties broken by the lower index.
Kept tokens of a head: the observation window [N - w, N) plus the top (b - w) prefix tokens.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_descending", "select_kept", "largest_remainder", "sequential_sum"]


def sequential_sum(x: np.ndarray) -> float:
    """Sum of all entries in row-major order, added one by one (the C twin's order; numpy's sum is pairwise)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    return float(np.add.accumulate(flat)[-1]) if flat.size else 0.0


def rank_descending(scores: np.ndarray) -> np.ndarray:
    """Token order from the highest score down along the last axis.

    Parameters
    ----------
    scores : ndarray, float, shape [..., n]
        Scores; rounded to float32 before ranking. NaN is not allowed; +inf ranks first.

    Returns
    -------
    ndarray, int64, shape [..., n]
        Indices into the last axis; equal float32 scores keep their index order (lower index first).
    """
    s32 = np.asarray(scores, dtype=np.float64).astype(np.float32)
    if np.isnan(s32).any():
        raise ValueError("scores contain NaN; cannot rank tokens")
    return np.argsort(-s32, axis=-1, kind="stable").astype(np.int64)


def select_kept(prefix_scores: np.ndarray, budgets: np.ndarray, n_tokens: int,
                window: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Kept token indices of every (layer, KV head): the window plus the top prefix tokens.

    Parameters
    ----------
    prefix_scores : ndarray, float, shape [n_layer, n_head_kv, n_tokens - window]
        Scores of the prefix tokens (higher = keep).
    budgets : ndarray, int, shape [n_layer, n_head_kv]
        Tokens kept per head, window included; window <= budgets <= n_tokens.
    n_tokens : int
        N, tokens in the cache.
    window : int
        w, the observation window (the last w tokens, always kept).

    Returns
    -------
    tuple of tuple of ndarray, int64
        ``indices[layer][kv_head]``, sorted ascending, length ``budgets[layer, kv_head]``.
    """
    budgets = np.asarray(budgets)
    n_prefix = n_tokens - window
    if prefix_scores.shape != budgets.shape + (n_prefix,):
        raise ValueError(f"prefix scores of shape {prefix_scores.shape} do not fit budgets of shape "
                         f"{budgets.shape} and {n_prefix} prefix tokens")
    if np.any(budgets < window) or np.any(budgets > n_tokens):
        raise ValueError(f"budgets must lie in [{window}, {n_tokens}], got [{budgets.min()}, {budgets.max()}]")
    order = rank_descending(prefix_scores)
    window_idx = np.arange(n_prefix, n_tokens, dtype=np.int64)
    out = []
    for layer in range(budgets.shape[0]):
        row = []
        for head in range(budgets.shape[1]):
            top = np.sort(order[layer, head, :int(budgets[layer, head]) - window])
            row.append(np.concatenate([top, window_idx]))
        out.append(tuple(row))
    return tuple(out)


def largest_remainder(real: np.ndarray, total: int, lo: int, hi: int) -> np.ndarray:
    """Integer budgets close to real ones with an exact total (largest-remainder method).

    b = clip(floor(r), lo, hi); the total - sum(b) leftover tokens go one each to the entries with the largest
    fractional part r - floor(r) (ties: lower flat index, row-major), skipping entries at hi, in rounds until none
    is left. A negative leftover (possible only through float round-off) takes one each from the entries with the
    smallest fractional part (ties: higher flat index), skipping entries at lo.

    Parameters
    ----------
    real : ndarray, float, any shape
        Real budgets (finite).
    total : int
        Required sum of the result; lo * size <= total <= hi * size.
    lo, hi : int
        Bounds of every entry.

    Returns
    -------
    ndarray, int64, same shape as real
    """
    r = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("real budgets contain NaN or infinite values")
    if not lo * r.size <= total <= hi * r.size:
        raise ValueError(f"total {total} cannot be split into {r.size} budgets within [{lo}, {hi}]")
    flat = r.ravel()
    floors = np.floor(flat)
    b = np.clip(floors, lo, hi).astype(np.int64)
    frac = flat - floors
    order = np.argsort(-frac, kind="stable")  # largest fraction first, ties to the lower index
    left = int(total - b.sum())
    while left > 0:
        eligible = order[b[order] < hi][:left]
        b[eligible] += 1
        left -= eligible.size
    reverse = order[::-1]  # smallest fraction first, ties to the higher index
    while left < 0:
        eligible = reverse[b[reverse] > lo][:-left]
        b[eligible] -= 1
        left += eligible.size
    return b.reshape(r.shape)
