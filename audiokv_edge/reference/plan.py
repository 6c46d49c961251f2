"""The keep plan: kept token indices of every (layer, KV head); the output of libaudiokv's plan.c in NumPy form.

Contract: docs/semantics.md. Built by :func:`audiokv_edge.keep_plan.plan` and ``plan_ragged`` (both backends).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KeepPlan", "uniform_budget"]


@dataclass(frozen=True, eq=False)
class KeepPlan:
    """Kept token indices of every (layer, KV head).

    Parameters
    ----------
    indices : sequence of sequence of array_like, int
        ``indices[layer][kv_head]``: sorted, unique token indices in [0, n_tokens) (ragged cache: entry indices in
        [0, n_entries[layer, kv_head])). Stored as read-only int64 arrays in nested tuples.
    n_tokens : int
        N, tokens in the cache the plan applies to (ragged cache: the positions the sequence has seen).
    method : str
        Name of the method that made the plan (informational).
    n_entries : array_like, int, shape [n_layer, n_head_kv], optional
        Entries each head held when planned (a ragged cache, docs/semantics.md "Re-planning a ragged cache");
        None = every head held n_tokens. Stored as a read-only int64 array either way.

    Attributes
    ----------
    budgets : ndarray, int64, shape [n_layer, n_head_kv]
        Number of kept tokens per head.
    """

    indices: tuple
    n_tokens: int
    method: str = ""
    n_entries: np.ndarray | None = None
    budgets: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.n_tokens, bool) or not isinstance(self.n_tokens, (int, np.integer)) or self.n_tokens < 1:
            raise ValueError(f"n_tokens must be an integer >= 1, got {self.n_tokens!r}")
        rows = [tuple(np.array(idx, dtype=np.int64, copy=True).reshape(-1) for idx in row) for row in self.indices]
        if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError("plan indices must be a non-empty [n_layer][n_head_kv] nesting")
        shape = (len(rows), len(rows[0]))
        if self.n_entries is None:
            entries = np.full(shape, self.n_tokens, dtype=np.int64)
        else:
            entries = np.array(self.n_entries, dtype=np.int64, copy=True)
            if entries.shape != shape or np.any(entries < 1) or np.any(entries > self.n_tokens):
                raise ValueError(f"n_entries must be [n_layer, n_head_kv] = {list(shape)} values in "
                                 f"[1, n_tokens = {self.n_tokens}], got shape {entries.shape}")
        for layer, row in enumerate(rows):
            for head, a in enumerate(row):
                limit = int(entries[layer, head])
                if a.size and (a[0] < 0 or a[-1] >= limit or np.any(np.diff(a) <= 0)):
                    raise ValueError(f"plan indices of layer {layer}, KV head {head} are not sorted, unique "
                                     f"and within [0, {limit})")
                a.setflags(write=False)
        entries.setflags(write=False)
        object.__setattr__(self, "n_entries", entries)
        budgets = np.array([[a.size for a in r] for r in rows], dtype=np.int64)
        budgets.setflags(write=False)
        object.__setattr__(self, "indices", tuple(rows))
        object.__setattr__(self, "n_tokens", int(self.n_tokens))
        object.__setattr__(self, "budgets", budgets)

    @classmethod
    def from_flat(cls, counts: np.ndarray, flat_indices: np.ndarray, n_tokens: int, method: str = "",
                  n_entries: np.ndarray | None = None) -> "KeepPlan":
        """Build a plan from per-head counts and the concatenated indices (the C library's output layout).

        Parameters
        ----------
        counts : ndarray, int, shape [n_layer, n_head_kv]
        flat_indices : ndarray, int, shape [>= counts.sum()]
            Head (l, h)'s indices follow those of the heads before it in row-major order.
        n_tokens : int
        method : str
        n_entries : ndarray, int, shape [n_layer, n_head_kv], optional
            Ragged cache: entries each head held.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2 or np.any(counts < 0):
            raise ValueError(f"counts must be a non-negative [n_layer, n_head_kv] array, got shape {counts.shape}")
        flat = np.asarray(flat_indices, dtype=np.int64).reshape(-1)
        if flat.size < counts.sum():
            raise ValueError(f"{flat.size} indices given for {counts.sum()} counted tokens")
        ends = np.cumsum(counts.reshape(-1))
        starts = ends - counts.reshape(-1)
        heads = [flat[s:e] for s, e in zip(starts, ends)]
        n_head_kv = counts.shape[1]
        rows = [heads[i * n_head_kv:(i + 1) * n_head_kv] for i in range(counts.shape[0])]
        return cls(rows, n_tokens, method, n_entries)

    @property
    def n_layer(self) -> int:
        return int(self.budgets.shape[0])

    @property
    def n_head_kv(self) -> int:
        return int(self.budgets.shape[1])

    @property
    def kept_total(self) -> int:
        """Kept (layer, KV head, token) entries, sum of budgets."""
        return int(self.budgets.sum())

    def flat_indices(self) -> np.ndarray:
        """All indices concatenated in row-major (layer, KV head) order, int64 [kept_total]."""
        return np.concatenate([a for row in self.indices for a in row])

    def mask(self) -> np.ndarray:
        """Boolean keep mask, shape [n_layer, n_head_kv, n_tokens] (ragged cache: by entry index, False beyond a
        head's entries)."""
        out = np.zeros((self.n_layer, self.n_head_kv, self.n_tokens), dtype=bool)
        for layer, row in enumerate(self.indices):
            for head, idx in enumerate(row):
                out[layer, head, idx] = True
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeepPlan):
            return NotImplemented
        return (self.n_tokens == other.n_tokens and self.budgets.shape == other.budgets.shape
                and np.array_equal(self.budgets, other.budgets) and np.array_equal(self.n_entries, other.n_entries)
                and all(np.array_equal(a, b) for ra, rb in zip(self.indices, other.indices) for a, b in zip(ra, rb)))

    __hash__ = None  # type: ignore[assignment]


def uniform_budget(keep: float, n_tokens: int) -> int:
    """C = max(1, floor(keep * n_tokens + 0.5)), the per-head budget of a uniform plan."""
    return max(1, math.floor(keep * n_tokens + 0.5))
