"""The keep plan: which tokens every (layer, KV head) keeps, computed by any registered method.

Contract: docs/semantics.md (shared with the C routine libaudiokv, ``backend="c"``). This module dispatches to the
NumPy reference (methods/ + reference/) or to libaudiokv (native/); it is not named plan.py because
``audiokv_edge.plan`` is the function: a submodule of that name would shadow it once imported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audiokv_edge.methods import KeepMethod, PlanInputs, make_method
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.reference.plan import KeepPlan, uniform_budget
from audiokv_edge.reference.select import select_kept, select_kept_ragged

__all__ = ["KeepPlan", "plan", "plan_ragged", "uniform_budget"]

BACKENDS = ("numpy", "c")


def _check_keep(keep) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.floating, np.integer)):
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
    k = float(keep)
    if not 0.0 < k <= 1.0:  # NaN fails too
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    return k


def _float_array(name: str, x, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    for part in (a.reshape(a.shape[0], -1) if a.ndim > 1 else [a]):  # slice by slice: no full-size temporary
        if not np.all(np.isfinite(part)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _audio_mask(mask, n_positions: int) -> np.ndarray:
    """The audio mask as bool [n_positions] (True: audio token); ValueError unless a 1-D bool or integer array of
    that length."""
    a = np.asarray(mask)
    if a.dtype.kind not in "biu":
        raise ValueError(f"audio_mask must be a bool (or 0/1 integer) array, got dtype {a.dtype}")
    if a.shape != (n_positions,):
        raise ValueError(f"audio_mask must hold one flag per position, shape ({n_positions},), got shape {a.shape}")
    return a != 0


def _c_params(m: KeepMethod) -> dict:
    """The parameters libaudiokv is given for method ``m``: the window, and every field that differs from the
    method's default (the others keep libaudiokv's own defaults, audiokv_default_params)."""
    defaults = dataclasses.asdict(type(m)())
    return {key: value for key, value in dataclasses.asdict(m).items() if key == "window" or value != defaults[key]}


def _plan_inputs(m: KeepMethod, q_window, keys, keep, profile, accumulated_scores, audio_mask) -> PlanInputs:
    keys = _float_array("keys", keys, 4)
    n_layer, n_head_kv, n_tokens, head_dim = keys.shape
    window = min(m.window, n_tokens)
    if accumulated_scores is not None and not m.takes_accumulated_scores:
        raise ValueError(f"method {m.name} does not take accumulated_scores")
    if q_window is not None:
        q_window = _float_array("q_window", q_window, 4)
        if q_window.shape[0] != n_layer or q_window.shape[3] != head_dim:
            raise ValueError(f"q_window of shape {q_window.shape} does not fit keys of shape {keys.shape} "
                             "([n_layer, n_head, w, head_dim] vs [n_layer, n_head_kv, n_tokens, head_dim])")
        if q_window.shape[1] % n_head_kv:
            raise ValueError(f"{q_window.shape[1]} query heads cannot be grouped onto {n_head_kv} KV heads")
        if q_window.shape[2] != window:
            raise ValueError(f"q_window holds {q_window.shape[2]} window queries but the method uses a window of "
                             f"min(window={m.window}, n_tokens={n_tokens}) = {window}")
    elif m.needs_queries and accumulated_scores is None:
        raise ValueError(f"method {m.name} needs q_window (the post-RoPE queries of the last {window} tokens)")
    if accumulated_scores is not None:
        accumulated_scores = _float_array("accumulated_scores", accumulated_scores, 3).astype(np.float64)
        n_rows = accumulated_scores.shape[1]
        if (accumulated_scores.shape[0] != n_layer or accumulated_scores.shape[2] != n_tokens
                or n_rows % n_head_kv or (q_window is not None and n_rows not in (n_head_kv, q_window.shape[1]))):
            raise ValueError(f"accumulated_scores of shape {accumulated_scores.shape} must be [n_layer, n_head or "
                             f"n_head_kv, n_tokens] for keys of shape {keys.shape}")
    if profile is not None:
        if not isinstance(profile, HeadProfile):
            raise ValueError(f"profile must be a HeadProfile or None, got {type(profile).__name__}")
        profile.check_shape(n_layer, n_head_kv)
    if audio_mask is not None:
        audio_mask = _audio_mask(audio_mask, n_tokens)
    return PlanInputs(q_window=q_window, keys=keys, keep=keep, window=window,
                      budget=uniform_budget(keep, n_tokens), profile=profile,
                      accumulated_scores=accumulated_scores, audio_mask=audio_mask)


def plan(method: str | KeepMethod, q_window: np.ndarray | None, keys: np.ndarray, keep: float,
         profile: HeadProfile | None = None, *, accumulated_scores: np.ndarray | None = None,
         audio_mask: np.ndarray | None = None, backend: str = "numpy", **params) -> KeepPlan:
    """Compute the keep plan of one sequence's cache.

    Parameters
    ----------
    method : str or KeepMethod
        A name from audiokv_edge.methods.METHODS ("full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv",
        "audiokv"), configured by ``**params``, or a ready method object.
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
        Post-RoPE queries of the last w = min(window, n_tokens) tokens. May be None for full, streamingllm, and
        h2o given accumulated_scores.
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]
        Post-RoPE cached keys, the window's own keys last.
    keep : float
        Keep ratio in (0, 1]; the uniform per-head budget is C = max(1, floor(keep * n_tokens + 0.5)).
    profile : HeadProfile or None
        Head profile of shape [n_layer, n_head_kv] (audiokv; ignored by the other methods).
    accumulated_scores : ndarray, float, shape [n_layer, n_head or n_head_kv, n_tokens], optional
        Attention column sums over all prompt queries (h2o only).
    audio_mask : ndarray, bool (or 0/1 integers), shape [n_tokens], optional
        True where the cached token is an audio token: audiokv's SSS then smooths each run of consecutive audio
        tokens on its own and the other tokens keep their raw window scores (docs/semantics.md, "SSS restricted to
        the audio tokens"). None (default): SSS over every token. Checked for every method, read by audiokv with
        sss_alpha > 0 only.
    backend : {"numpy", "c"}
        "c" runs libaudiokv through audiokv_edge.native.plan.plan_c(method, q_window, keys, keep, profile,
        params), params holding "window" and every parameter that differs from the method's default (the C side
        starts from its own defaults, which mirror these), plus "accumulated_scores" and "audio_mask" when given.
    **params
        Method parameters (see each method class).

    Returns
    -------
    KeepPlan

    Raises
    ------
    ValueError
        Bad method, parameter, shape, dtype, non-finite value or keep outside (0, 1].
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(method, (str, KeepMethod)):
        raise ValueError(f"method must be a name or a KeepMethod, got {type(method).__name__}")
    m = make_method(method, **params)
    keep = _check_keep(keep)
    inputs = _plan_inputs(m, q_window, keys, keep, profile, accumulated_scores, audio_mask)
    if backend == "c":
        c_params = _c_params(m)
        if accumulated_scores is not None:
            c_params["accumulated_scores"] = accumulated_scores
        if inputs.audio_mask is not None:
            c_params["audio_mask"] = inputs.audio_mask
        from audiokv_edge.native.plan import plan_c

        return plan_c(m.name, q_window, keys, keep, profile, c_params)
    n_tokens, window, budget = inputs.n_tokens, inputs.window, inputs.budget
    shape = (inputs.n_layer, inputs.n_head_kv)
    if m.keeps_everything or budget >= n_tokens or n_tokens <= m.window:
        every = np.arange(n_tokens, dtype=np.int64)
        return KeepPlan([[every] * shape[1] for _ in range(shape[0])], n_tokens, m.name)
    if budget <= window:
        last = np.arange(n_tokens - budget, n_tokens, dtype=np.int64)
        return KeepPlan([[last] * shape[1] for _ in range(shape[0])], n_tokens, m.name)
    scores = m.score(inputs)
    budgets = m.budgets(inputs, scores)
    if budgets.shape != shape:
        raise RuntimeError(f"{m.name} sized budgets of shape {budgets.shape}, expected {shape}")
    return KeepPlan(select_kept(scores, budgets, n_tokens, window), n_tokens, m.name)


def _ragged_keys(keys) -> tuple[tuple[np.ndarray, ...], ...]:
    if isinstance(keys, np.ndarray) or not isinstance(keys, (list, tuple)) or not keys:
        raise ValueError("keys must be a non-empty [n_layer][n_head_kv] nesting of [n_entries, head_dim] arrays")
    rows = []
    for layer, heads in enumerate(keys):
        if isinstance(heads, np.ndarray) or not isinstance(heads, (list, tuple)) or not heads:
            raise ValueError(f"keys[{layer}] must be a non-empty sequence of [n_entries, head_dim] arrays")
        rows.append(tuple(_float_array(f"keys[{layer}][{head}]", k, 2) for head, k in enumerate(heads)))
    if any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"every layer must hold the same number of KV heads, got {[len(r) for r in rows]}")
    dims = {k.shape[1] for r in rows for k in r}
    if len(dims) != 1:
        raise ValueError(f"every key must have the same head_dim, got {sorted(dims)}")
    return tuple(rows)


def _check_positions(positions, n_entries: np.ndarray, window: int) -> None:
    """The window is the last w entries of every head: their positions must agree (docs/semantics.md)."""
    if len(positions) != n_entries.shape[0] or any(len(p) != n_entries.shape[1] for p in positions):
        raise ValueError(f"positions must be a [n_layer][n_head_kv] = {list(n_entries.shape)} nesting")
    reference = None
    for layer, heads in enumerate(positions):
        for head, pos in enumerate(heads):
            p = np.asarray(pos)
            if p.shape != (n_entries[layer, head],) or p.dtype.kind not in "iu":
                raise ValueError(f"positions[{layer}][{head}] must be {n_entries[layer, head]} integers, got "
                                 f"shape {p.shape} of {p.dtype}")
            if np.any(np.diff(p) < 0):
                raise ValueError(f"positions[{layer}][{head}] are not in ascending order")
            last = p[p.size - window:]
            if reference is None:
                reference = last
            elif not np.array_equal(last, reference):
                raise ValueError(f"the last {window} entries of layer {layer}, KV head {head} (positions "
                                 f"{last.tolist()[:4]}...) are not the window (positions {reference.tolist()[:4]}...): "
                                 "every head must hold the window tokens as its last entries")


def plan_ragged(method: str | KeepMethod, q_window: np.ndarray | None, keys, keep: float,
                profile: HeadProfile | None = None, *, n_positions: int, positions=None,
                audio_mask: np.ndarray | None = None, backend: str = "numpy", **params) -> KeepPlan:
    """Re-plan a ragged cache: every (layer, KV head) holds its own entries after an earlier eviction.

    Contract: docs/semantics.md, "Re-planning a ragged cache". When every head holds all n_positions tokens the
    result equals ``plan(method, q_window, keys_array, keep, profile, ...)`` exactly.

    Parameters
    ----------
    method : str or KeepMethod
        As :func:`plan`.
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
        Post-RoPE queries of the last w = min(window, n_positions) tokens of the sequence (None for full and
        streamingllm).
    keys : sequence of sequence of ndarray, float
        ``keys[l][h]``: shape [n_entries[l, h], head_dim], the post-RoPE keys head (l, h) holds in position order,
        the window's keys last; 1 <= n_entries <= n_positions.
    keep : float
        Keep ratio in (0, 1]; C = max(1, floor(keep * n_positions + 0.5)) per head on average, each head capped at
        its entries.
    profile : HeadProfile or None
        Head profile [n_layer, n_head_kv] (audiokv).
    n_positions : int
        P, the tokens the sequence has seen (the n_tokens it would hold without eviction).
    positions : sequence of sequence of ndarray, int, optional
        ``positions[l][h]``: shape [n_entries[l, h]], the entries' positions; when given, the last w of every head
        must agree (the window), else ValueError.
    audio_mask : ndarray, bool (or 0/1 integers), shape [n_positions], optional
        True where the position holds an audio token: entry e of head (l, h) is audio when
        ``audio_mask[positions[l][h][e]]``, and audiokv's SSS smooths each run of consecutive audio entries (in
        entry order) on its own, the other entries keeping their raw scores (docs/semantics.md, "SSS restricted to
        the audio tokens"). Needs ``positions`` (in [0, n_positions)) unless every head holds all n_positions.
    backend : {"numpy", "c"}
        "c" runs libaudiokv's ragged context (audiokv_edge.native.plan.plan_ragged_c).
    **params
        Method parameters. No accumulated_scores: h2o scores from the window.

    Returns
    -------
    KeepPlan
        ``indices[l][h]`` are entry indices of head (l, h); n_tokens = n_positions; n_entries = the heads' entries.

    Raises
    ------
    ValueError
        Bad method, parameter, shape, dtype, non-finite value, keep, n_positions, positions, or a head holding
        fewer entries than the window when the plan scores.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(method, (str, KeepMethod)):
        raise ValueError(f"method must be a name or a KeepMethod, got {type(method).__name__}")
    if "accumulated_scores" in params:
        raise ValueError("a ragged cache takes no accumulated_scores: column sums over the prompt are not defined "
                         "for entries that left some heads; h2o scores it from the window")
    m = make_method(method, **params)
    keep = _check_keep(keep)
    if isinstance(n_positions, bool) or not isinstance(n_positions, (int, np.integer)) or n_positions < 1:
        raise ValueError(f"n_positions must be an integer >= 1, got {n_positions!r}")
    n_positions = int(n_positions)
    keys = _ragged_keys(keys)
    n_entries = np.array([[k.shape[0] for k in heads] for heads in keys], dtype=np.int64)
    if n_entries.max() > n_positions:
        raise ValueError(f"a head holds {n_entries.max()} entries, more than n_positions = {n_positions}")
    n_layer, n_head_kv = n_entries.shape
    head_dim = keys[0][0].shape[1]
    window = min(m.window, n_positions)
    if q_window is not None:
        q_window = _float_array("q_window", q_window, 4)
        if q_window.shape[0] != n_layer or q_window.shape[3] != head_dim or q_window.shape[1] % n_head_kv:
            raise ValueError(f"q_window of shape {q_window.shape} does not fit {n_layer} layers of {n_head_kv} KV "
                             f"heads with head_dim {head_dim}")
        if q_window.shape[2] != window:
            raise ValueError(f"q_window holds {q_window.shape[2]} window queries but the method uses a window of "
                             f"min(window={m.window}, n_positions={n_positions}) = {window}")
    elif m.needs_queries:
        raise ValueError(f"method {m.name} needs q_window (the post-RoPE queries of the last {window} tokens)")
    if profile is not None:
        if not isinstance(profile, HeadProfile):
            raise ValueError(f"profile must be a HeadProfile or None, got {type(profile).__name__}")
        profile.check_shape(n_layer, n_head_kv)
    budget = uniform_budget(keep, n_positions)
    scoring = not (m.keeps_everything or budget >= n_positions or n_positions <= m.window) and budget > window
    if scoring and n_entries.min() < window:
        layer, head = np.argwhere(n_entries < window)[0]
        raise ValueError(f"layer {layer}, KV head {head} holds {n_entries[layer, head]} entries, fewer than the "
                         f"window of {window}: it cannot hold the window tokens")
    if positions is not None:
        _check_positions(positions, n_entries, min(window, int(n_entries.min())))
    entry_audio = None
    if audio_mask is not None:
        audio_mask = _audio_mask(audio_mask, n_positions)
        if positions is None:
            if np.any(n_entries != n_positions):
                raise ValueError("audio_mask of a ragged cache needs positions (the position of every entry): some "
                                 f"head holds fewer than n_positions = {n_positions} entries")
            positions = [[np.arange(n_positions, dtype=np.int64)] * n_head_kv for _ in range(n_layer)]
        for layer, heads in enumerate(positions):
            for head, pos in enumerate(heads):
                if np.size(pos) and (np.min(pos) < 0 or np.max(pos) >= n_positions):
                    raise ValueError(f"positions[{layer}][{head}] must lie in [0, n_positions = {n_positions}) "
                                     "to index audio_mask")
        entry_audio = tuple(tuple(audio_mask[np.asarray(pos)] for pos in heads) for heads in positions)
    if backend == "c":
        c_params = _c_params(m)
        if audio_mask is not None:
            c_params["audio_mask"] = audio_mask
            c_params["positions"] = positions
        from audiokv_edge.native.plan import plan_ragged_c

        return plan_ragged_c(m.name, q_window, keys, keep, profile, c_params, n_positions)
    if not scoring:
        keep_all = m.keeps_everything or budget >= n_positions or n_positions <= m.window
        kept = [[np.arange(0 if keep_all else max(0, int(n) - budget), int(n), dtype=np.int64) for n in layer]
                for layer in n_entries]
        return KeepPlan(kept, n_positions, m.name, n_entries)
    inputs = PlanInputs(q_window=q_window, keys=keys, keep=keep, window=window, budget=budget, profile=profile,
                        n_entries=n_entries, n_positions=n_positions, audio_mask=entry_audio)
    scores = m.score(inputs)
    budgets = m.budgets(inputs, scores)
    if budgets.shape != (n_layer, n_head_kv):
        raise RuntimeError(f"{m.name} sized budgets of shape {budgets.shape}, expected {(n_layer, n_head_kv)}")
    return KeepPlan(select_kept_ragged(scores, budgets, n_entries, window), n_positions, m.name, n_entries)
