"""Token scores from the observation window: attention of the last w queries, GQA reduction, pooling.

Shared by SnapKV (arXiv 2404.14469), PyramidKV (arXiv 2406.02069), AdaKV (arXiv 2407.11550), AudioKV
(arXiv 2604.06694) and one-shot H2O (arXiv 2306.14048); exact definitions in docs/semantics.md.
"""

from __future__ import annotations

import math

import numpy as np

from audiokv_edge.reference.sss import smooth_audio_runs, snap_to_row_grid, spectral_smooth

__all__ = ["window_attention_head", "window_attention_layer", "window_scores", "reduce_gqa", "pool1d",
           "smoothed_window_scores", "ragged_window_scores", "smooth_row", "ragged_smoothed_window_scores",
           "GQA_REDUCTIONS", "POOL_TYPES"]

GQA_REDUCTIONS = ("mean", "max")
POOL_TYPES = ("avg", "max")


def window_attention_head(q_group: np.ndarray, k_head: np.ndarray, row_reduce: str = "mean") -> np.ndarray:
    """Attention of the window queries of one KV head's query heads over that head's prefix.

    A = softmax(Q K^T / sqrt(d)) over all n_kv keys, query i seeing keys j <= n_kv - w + i (causal inside the window,
    the window's keys last); then mean (or sum) over the w rows, restricted to the n_kv - w prefix columns.

    Parameters
    ----------
    q_group : ndarray, float, shape [g, w, head_dim]
        Post-RoPE window queries of the g query heads reading this KV head.
    k_head : ndarray, float, shape [n_kv, head_dim]
        The head's keys (its entries in position order), n_kv >= w.
    row_reduce : {"mean", "sum"}

    Returns
    -------
    ndarray, float64, shape [g, n_kv - w]

    Raises
    ------
    ValueError
        If a logit overflows float64.
    """
    g, w, d = q_group.shape
    n_tokens = k_head.shape[0]
    n_prefix = n_tokens - w
    future = np.triu(np.ones((w, w), dtype=bool), k=1)  # key N - w + j is in the future of query i when j > i
    q = np.asarray(q_group, dtype=np.float64).reshape(g * w, d)
    k = np.asarray(k_head, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.matmul(q, k.T).reshape(g, w, n_tokens)
        z /= math.sqrt(d)
    if not np.all(np.isfinite(z)):
        raise ValueError("attention logits overflow float64: queries or keys are too large")
    z[..., n_prefix:][..., future] = -np.inf
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    prefix = z[..., :n_prefix]
    return prefix.sum(axis=1) if row_reduce == "sum" else prefix.mean(axis=1)


def window_attention_layer(q_layer: np.ndarray, k_layer: np.ndarray, row_reduce: str = "mean") -> np.ndarray:
    """Attention of the window queries over the prefix of one layer, reduced over the window rows.

    A = softmax(Q K^T / sqrt(d)) with a causal mask inside the window (query i at position N - w + i sees keys
    j <= N - w + i), over all N keys; then mean (or sum) over the w rows, restricted to the N - w prefix columns.

    Parameters
    ----------
    q_layer : ndarray, float, shape [n_head, w, head_dim]
        Post-RoPE queries of the window.
    k_layer : ndarray, float, shape [n_head_kv, n_tokens, head_dim]
        Post-RoPE keys, the window's own keys last; query head q reads KV head q // (n_head / n_head_kv).
    row_reduce : {"mean", "sum"}
        Reduction over the window rows.

    Returns
    -------
    ndarray, float64, shape [n_head, n_tokens - w]

    Raises
    ------
    ValueError
        If a logit overflows float64.
    """
    n_head, w, d = q_layer.shape
    n_head_kv, n_tokens, _ = k_layer.shape
    g = n_head // n_head_kv
    n_prefix = n_tokens - w
    out = np.empty((n_head_kv, g, n_prefix), dtype=np.float64)
    for h in range(n_head_kv):  # one KV head at a time: the logits of a whole layer can take GiBs at 100k tokens
        out[h] = window_attention_head(q_layer[h * g:(h + 1) * g], k_layer[h], row_reduce)
    return out.reshape(n_head, n_prefix)


def window_scores(q_window: np.ndarray, keys: np.ndarray, row_reduce: str = "mean") -> np.ndarray:
    """Per-query-head prefix scores of every layer (layer by layer, float64).

    Parameters
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim]
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]
    row_reduce : {"mean", "sum"}

    Returns
    -------
    ndarray, float64, shape [n_layer, n_head, n_tokens - w]
    """
    n_layer, n_head, w, _ = q_window.shape
    out = np.empty((n_layer, n_head, keys.shape[2] - w), dtype=np.float64)
    for layer in range(n_layer):
        out[layer] = window_attention_layer(q_window[layer], keys[layer], row_reduce)
    return out


def reduce_gqa(scores: np.ndarray, n_head_kv: int, how: str = "mean") -> np.ndarray:
    """Reduce the g = n_head / n_head_kv query heads of each KV head to one score row.

    Parameters
    ----------
    scores : ndarray, float, shape [n_layer, n_head, n]
    n_head_kv : int
    how : {"mean", "max"}

    Returns
    -------
    ndarray, float64, shape [n_layer, n_head_kv, n]
    """
    if how not in GQA_REDUCTIONS:
        raise ValueError(f"gqa_reduce must be one of {GQA_REDUCTIONS}, got {how!r}")
    n_layer, n_head, n = scores.shape
    if n_head % n_head_kv:
        raise ValueError(f"{n_head} query heads cannot be grouped onto {n_head_kv} KV heads")
    grouped = np.asarray(scores, dtype=np.float64).reshape(n_layer, n_head_kv, n_head // n_head_kv, n)
    return grouped.mean(axis=2) if how == "mean" else grouped.max(axis=2)


def pool1d(x: np.ndarray, kernel: int, pool_type: str = "avg") -> np.ndarray:
    """1-D pooling along the last axis, stride 1, padding kernel // 2, same length out.

    "avg" pads with zeros and divides by kernel (torch avg_pool1d, count_include_pad); "max" pads with -inf.
    The window terms are added from left to right.

    Parameters
    ----------
    x : ndarray, float, shape [..., n]
    kernel : int
        Odd, >= 1; 1 is the identity.
    pool_type : {"avg", "max"}

    Returns
    -------
    ndarray, float64, shape [..., n]
    """
    if pool_type not in POOL_TYPES:
        raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {pool_type!r}")
    if not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pool_kernel must be an odd integer >= 1, got {kernel!r}")
    x = np.asarray(x, dtype=np.float64)
    if kernel == 1:
        return x.copy()
    half = kernel // 2
    n = x.shape[-1]
    fill = 0.0 if pool_type == "avg" else -np.inf
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], constant_values=fill)
    out = padded[..., 0:n].copy()
    for offset in range(1, kernel):
        if pool_type == "avg":
            out += padded[..., offset:offset + n]
        else:
            np.maximum(out, padded[..., offset:offset + n], out=out)
    return out / kernel if pool_type == "avg" else out


def smoothed_window_scores(q_window: np.ndarray, keys: np.ndarray, gqa_reduce: str = "mean",
                           pool_kernel: int = 5, pool_type: str = "avg", sss_alpha: float = 0.0,
                           sss_gamma: float = 0.7, sss_taper: float = 0.05,
                           audio: np.ndarray | None = None) -> np.ndarray:
    """Window scores, GQA-reduced, then smoothed: SSS when sss_alpha > 0, else pooling.

    SSS rows (of length n > 1) are then rounded to their 24-bit grid (audiokv_edge.reference.sss.snap_to_row_grid), so
    that FFT round-off cannot reorder tokens scored about 0. With an audio mask SSS smooths each run of audio tokens
    on its own and every other token keeps its raw score (audiokv_edge.reference.sss.smooth_audio_runs).

    Parameters
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim]
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]
    gqa_reduce : {"mean", "max"}
    pool_kernel : int
        Odd >= 1 (used when sss_alpha == 0).
    pool_type : {"avg", "max"}
    sss_alpha, sss_gamma, sss_taper : float
        Spectral Score Smoothing parameters (audiokv_edge.reference.sss.spectral_smooth).
    audio : ndarray, bool, shape [n_tokens], optional
        True where the cached token is an audio token (only its prefix part is read); None: SSS over every token.

    Returns
    -------
    ndarray, float64, shape [n_layer, n_head_kv, n_tokens - w]
    """
    reduced = reduce_gqa(window_scores(q_window, keys), keys.shape[1], gqa_reduce)
    prefix_audio = None if audio is None else np.asarray(audio)[:reduced.shape[-1]]
    return smooth_row(reduced, pool_kernel, pool_type, sss_alpha, sss_gamma, sss_taper, prefix_audio)


def smooth_row(x: np.ndarray, pool_kernel: int = 5, pool_type: str = "avg", sss_alpha: float = 0.0,
               sss_gamma: float = 0.7, sss_taper: float = 0.05, audio: np.ndarray | None = None) -> np.ndarray:
    """The smoothing of docs/semantics.md along the last axis: SSS (then the 24-bit row grid when the rows are
    longer than 1) when sss_alpha > 0, else pooling.

    Parameters
    ----------
    x : ndarray, float, shape [..., n]
        GQA-reduced prefix scores (n may be 0).
    pool_kernel, pool_type, sss_alpha, sss_gamma, sss_taper
        As :func:`smoothed_window_scores`.
    audio : ndarray, bool, shape [n], optional
        True where the token is an audio token: SSS then smooths each run of audio tokens on its own and the other
        tokens keep x (audiokv_edge.reference.sss.smooth_audio_runs). Pooling ignores it.

    Returns
    -------
    ndarray, float64, shape [..., n]
    """
    if sss_alpha > 0:
        if audio is not None:
            return smooth_audio_runs(x, audio, sss_alpha, sss_gamma, sss_taper)
        smoothed = spectral_smooth(x, sss_alpha, sss_gamma, sss_taper)
        return snap_to_row_grid(smoothed) if x.shape[-1] > 1 else smoothed
    return pool1d(x, pool_kernel, pool_type)


def ragged_window_scores(q_window: np.ndarray, keys, row_reduce: str = "mean",
                         gqa_reduce: str = "mean") -> tuple[tuple[np.ndarray, ...], ...]:
    """GQA-reduced window scores of every head of a ragged cache, each over its own entries.

    Parameters
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim]
    keys : sequence of sequence of ndarray, float
        ``keys[l][h]``: shape [n_entries[l, h], head_dim], n_entries >= w, the window's keys last.
    row_reduce : {"mean", "sum"}
        Reduction over the window rows (h2o: "sum").
    gqa_reduce : {"mean", "max"}

    Returns
    -------
    tuple of tuple of ndarray, float64
        ``rows[l][h]``: shape [n_entries[l, h] - w].
    """
    n_head = q_window.shape[1]
    out = []
    for layer, heads in enumerate(keys):
        g = n_head // len(heads)
        row = []
        for h, k_head in enumerate(heads):
            per_query = window_attention_head(q_window[layer, h * g:(h + 1) * g], k_head, row_reduce)
            row.append(reduce_gqa(per_query[None], 1, gqa_reduce)[0, 0])
        out.append(tuple(row))
    return tuple(out)


def ragged_smoothed_window_scores(q_window: np.ndarray, keys, gqa_reduce: str = "mean", pool_kernel: int = 5,
                                  pool_type: str = "avg", sss_alpha: float = 0.0, sss_gamma: float = 0.7,
                                  sss_taper: float = 0.05, audio=None) -> tuple[tuple[np.ndarray, ...], ...]:
    """:func:`smoothed_window_scores` of a ragged cache: each head scored and smoothed over its own entries.

    Parameters
    ----------
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim]
    keys : sequence of sequence of ndarray, float
        ``keys[l][h]``: shape [n_entries[l, h], head_dim].
    gqa_reduce, pool_kernel, pool_type, sss_alpha, sss_gamma, sss_taper
        As :func:`smoothed_window_scores`.
    audio : sequence of sequence of ndarray, bool, optional
        ``audio[l][h]``: shape [n_entries[l, h]], True where the entry is an audio token (only the prefix entries
        are read): SSS smooths the runs of consecutive audio entries, in entry order. None: every entry.

    Returns
    -------
    tuple of tuple of ndarray, float64
        ``rows[l][h]``: shape [n_entries[l, h] - w].
    """
    rows = ragged_window_scores(q_window, keys, "mean", gqa_reduce)
    return tuple(tuple(smooth_row(r, pool_kernel, pool_type, sss_alpha, sss_gamma, sss_taper,
                                  None if audio is None else np.asarray(audio[layer][head])[:r.shape[-1]])
                       for head, r in enumerate(heads))
                 for layer, heads in enumerate(rows))
