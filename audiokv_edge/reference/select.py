"""The one top-k selection, the one capping rule and the one budget integerisation every method shares.

Ranking: scores are rounded to float32, ordered from the highest down, ties broken by the lower index.
Kept tokens of a head: the observation window [N - w, N) plus the top (b - w) prefix tokens; in a ragged cache
(docs/semantics.md, "Re-planning a ragged cache") the same per head over its own n_kv entries.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_descending", "kept_entries", "select_kept", "select_kept_ragged", "largest_remainder",
           "cap_and_share", "capped_budgets", "sequential_sum"]


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


def kept_entries(prefix_scores: np.ndarray, budget: int, n_entries: int, window: int) -> np.ndarray:
    """Kept entries of one head: the window plus the top (budget - window) prefix entries.

    Parameters
    ----------
    prefix_scores : ndarray, float, shape [n_entries - window]
        Scores of the head's prefix entries (higher = keep).
    budget : int
        Entries kept, window included; window <= budget <= n_entries.
    n_entries : int
        Entries the head holds (N in a uniform cache).
    window : int
        w, the last w entries (always kept).

    Returns
    -------
    ndarray, int64, shape [budget]
        Sorted entry indices.
    """
    top = np.sort(rank_descending(prefix_scores)[: int(budget) - window])
    return np.concatenate([top, np.arange(n_entries - window, n_entries, dtype=np.int64)])


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
    return tuple(tuple(kept_entries(prefix_scores[layer, head], budgets[layer, head], n_tokens, window)
                       for head in range(budgets.shape[1])) for layer in range(budgets.shape[0]))


def select_kept_ragged(prefix_rows, budgets: np.ndarray, n_entries: np.ndarray,
                       window: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Kept entry indices of every (layer, KV head) of a ragged cache (:func:`kept_entries` per head).

    Parameters
    ----------
    prefix_rows : sequence of sequence of ndarray, float
        ``prefix_rows[layer][kv_head]``: shape [n_entries[layer, kv_head] - window].
    budgets, n_entries : ndarray, int, shape [n_layer, n_head_kv]
        Entries kept (window <= budgets <= n_entries) and held per head.
    window : int

    Returns
    -------
    tuple of tuple of ndarray, int64
        ``indices[layer][kv_head]``: sorted entry indices, length ``budgets[layer, kv_head]``.
    """
    budgets = np.asarray(budgets)
    n_entries = np.asarray(n_entries)
    if budgets.shape != n_entries.shape or np.any(budgets < window) or np.any(budgets > n_entries):
        raise ValueError(f"budgets must lie in [{window}, n_entries] per head")
    out = []
    for layer in range(budgets.shape[0]):
        row = []
        for head in range(budgets.shape[1]):
            scores = np.asarray(prefix_rows[layer][head])
            if scores.shape != (n_entries[layer, head] - window,):
                raise ValueError(f"prefix scores of layer {layer}, KV head {head} have shape {scores.shape}, "
                                 f"expected ({n_entries[layer, head] - window},)")
            row.append(kept_entries(scores, budgets[layer, head], int(n_entries[layer, head]), window))
        out.append(tuple(row))
    return tuple(out)


def largest_remainder(real: np.ndarray, total: int, lo: int, hi) -> np.ndarray:
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
        Required sum of the result; lo * size <= total <= sum of hi.
    lo : int
        Lower bound of every entry.
    hi : int or ndarray, int, same shape as real
        Upper bound of every entry, or of each entry (the caps of a ragged cache).

    Returns
    -------
    ndarray, int64, same shape as real
    """
    r = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("real budgets contain NaN or infinite values")
    upper = np.broadcast_to(np.asarray(hi, dtype=np.int64), r.shape).ravel()
    if np.any(upper < lo) or not lo * r.size <= total <= int(upper.sum()):
        raise ValueError(f"total {total} cannot be split into {r.size} budgets within [{lo}, hi]")
    flat = r.ravel()
    floors = np.floor(flat)
    b = np.minimum(np.maximum(floors, lo), upper).astype(np.int64)
    frac = flat - floors
    order = np.argsort(-frac, kind="stable")  # largest fraction first, ties to the lower index
    left = int(total - b.sum())
    while left > 0:
        eligible = order[b[order] < upper[order]][:left]
        b[eligible] += 1
        left -= eligible.size
    reverse = order[::-1]  # smallest fraction first, ties to the higher index
    while left < 0:
        eligible = reverse[b[reverse] > lo][:-left]
        b[eligible] -= 1
        left += eligible.size
    return b.reshape(r.shape)


def cap_and_share(real: np.ndarray, caps, weights: np.ndarray | None = None) -> np.ndarray:
    """Cap real budgets and share the surplus among the heads never capped (docs/semantics.md, ragged "Caps").

    Repeat: the entries above their cap give their surplus (summed sequentially, row-major) and are set to it for
    good; the never-capped entries get surplus * weight / (sum of their weights), or equal shares without weights
    or when those weights sum to 0; until none exceeds its cap or every entry is capped.

    Parameters
    ----------
    real : ndarray, float, any shape
        Real budgets.
    caps : float or ndarray, same shape as real
        Upper bound of each entry (the entries a head holds; N in a uniform cache).
    weights : ndarray, float, same shape as real, optional
        Sharing weights (audiokv: S_hat); None = equal shares.

    Returns
    -------
    ndarray, float64, same shape as real
        A copy; equal to real when no entry exceeds its cap.
    """
    out = np.array(real, dtype=np.float64, copy=True)
    cap = np.broadcast_to(np.asarray(caps, dtype=np.float64), out.shape)
    clipped = np.zeros(out.shape, dtype=bool)
    while True:
        over = out > cap
        if not over.any():
            return out
        surplus = sequential_sum(out[over] - cap[over])
        out[over] = cap[over]
        clipped |= over
        free = ~clipped
        if not free.any():
            return out
        weight_total = sequential_sum(weights[free]) if weights is not None else 0.0
        if weight_total > 0:
            out[free] += surplus * (weights[free] / weight_total)
        else:
            out[free] += surplus / np.count_nonzero(free)


def capped_budgets(real: np.ndarray, total: int, window: int, caps, weights: np.ndarray | None = None) -> np.ndarray:
    """Integer budgets of a group of heads: :func:`cap_and_share`, then :func:`largest_remainder` to
    min(total, sum of caps) within [window, cap].

    Parameters
    ----------
    real : ndarray, float, shape [...]
        Real budgets of the group (window included).
    total : int
        The method's total for the group (C * heads).
    window : int
        w, the lower bound of every budget.
    caps : int or ndarray, int, same shape as real
        Entries each head holds (N in a uniform cache).
    weights : ndarray, float, same shape as real, optional
        Sharing weights of the surplus (None = equal).

    Returns
    -------
    ndarray, int64, same shape as real
    """
    upper = np.broadcast_to(np.asarray(caps, dtype=np.int64), np.shape(real))
    shared = cap_and_share(real, upper, weights)
    return largest_remainder(shared, min(int(total), int(upper.sum())), window, upper)
