"""The keep plan computed by libaudiokv (``audiokv_edge.plan(..., backend="c")``), equal to the NumPy reference.

:class:`AudioKVContext` owns one libaudiokv context (a context manager); :func:`plan_c` feeds it layer by layer the
way the llama.cpp eviction callback does and returns a :class:`~audiokv_edge.keep_plan.KeepPlan`;
:func:`plan_ragged_c` does the same for a ragged cache (``audiokv_edge.keep_plan.plan_ragged(..., backend="c")``).
Contract: docs/semantics.md.
"""

from __future__ import annotations

import ctypes

import numpy as np

from audiokv_edge.native import audiokv as C
from audiokv_edge.native import audiokv_ggml
from audiokv_edge.native.libs import HandleOwner
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.reference.plan import KeepPlan

__all__ = ["AudioKVContext", "plan_c", "plan_ragged_c", "c_params"]

_SCORING_METHODS = ("h2o", "snapkv", "pyramidkv", "adakv", "audiokv")
_DTYPES = {np.dtype(np.float32): C.AUDIOKV_TYPE_F32, np.dtype(np.float16): C.AUDIOKV_TYPE_F16,
           np.dtype(np.float64): C.AUDIOKV_TYPE_F64}


def c_params(method: str, params: dict, n_threads: int = 0) -> C.audiokv_params:
    """struct audiokv_params for a method name and its parameter dict (a method dataclass as a dict).

    Raises
    ------
    ValueError
        Unknown method or parameter, or a value the C struct cannot hold.
    """
    method_id = C.method_id(method)
    p = C.load_library().audiokv_default_params(method_id)
    for key, value in params.items():
        if key in ("pool_type", "gqa_reduce"):
            table = C.POOL_TYPES if key == "pool_type" else C.GQA_REDUCTIONS
            if value not in table:
                raise ValueError(f"{key} must be one of {sorted(table)}, got {value!r}")
            setattr(p, key, table[value])
        elif key in ("window", "pool_kernel", "n_sink"):
            setattr(p, key, int(value))
        elif key in ("beta", "safeguard", "sss_alpha", "sss_gamma", "sss_taper", "uniform_share"):
            setattr(p, key, float(value))
        elif key == "redistribute_surplus":
            setattr(p, key, bool(value))
        else:
            raise ValueError(f"parameter {key!r} is not known to libaudiokv (method {method})")
    if n_threads < 0:
        raise ValueError(f"n_threads must be >= 0 (0 = all cores), got {n_threads}")
    p.n_threads = int(n_threads)
    return p


def _ptr(a: np.ndarray, ctype):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


class AudioKVContext(HandleOwner):
    """One libaudiokv context for a sequence of n_tokens cached tokens, or for a ragged cache.

    Parameters
    ----------
    params : audiokv.audiokv_params
        From :func:`c_params`.
    n_layer, n_head, n_head_kv, head_dim, n_tokens : int
        Model shape and cache length (ragged cache: the positions the sequence has seen, n_positions).
    n_entries : ndarray, int, shape [n_layer, n_head_kv], optional
        Ragged cache: the entries each head holds (audiokv_init_ragged); None = every head holds n_tokens.
    """

    def __init__(self, params: C.audiokv_params, n_layer: int, n_head: int, n_head_kv: int, head_dim: int,
                 n_tokens: int, n_entries: np.ndarray | None = None) -> None:
        self._lib = C.load_library()
        self._handle = ctypes.c_void_p()
        what = f"n_layer={n_layer}, n_head={n_head}, n_head_kv={n_head_kv}, head_dim={head_dim}, n_tokens={n_tokens}"
        if n_entries is None:
            status = self._lib.audiokv_init(ctypes.byref(params), n_layer, n_head, n_head_kv, head_dim, n_tokens,
                                            ctypes.byref(self._handle))
            C.check("audiokv_init", status, what)
        else:
            entries = np.asarray(n_entries)
            if entries.shape != (n_layer, n_head_kv) or entries.dtype.kind not in "iu" \
                    or np.any(entries < 0) or np.any(entries > np.iinfo(np.int32).max):
                raise ValueError(f"n_entries must be [n_layer, n_head_kv] = [{n_layer}, {n_head_kv}] integers, "
                                 f"got shape {entries.shape}")
            entries = np.ascontiguousarray(entries, dtype=np.int32)
            status = self._lib.audiokv_init_ragged(ctypes.byref(params), n_layer, n_head, n_head_kv, head_dim,
                                                   _ptr(entries, ctypes.c_int32), n_tokens,
                                                   ctypes.byref(self._handle))
            C.check("audiokv_init_ragged", status, f"{what}, n_entries in [{entries.min()}, {entries.max()}]")
        self.shape = (n_layer, n_head, n_head_kv, head_dim, n_tokens)
        self.window = int(self._lib.audiokv_window(self._handle))

    def close(self) -> None:
        """Free the context (idempotent)."""
        if self._handle:
            self._lib.audiokv_free(self._handle)
            self._handle = ctypes.c_void_p()

    def add_layer(self, layer: int, q_layer: np.ndarray, k_layer: np.ndarray) -> None:
        """Score one layer from its window queries and keys.

        Parameters
        ----------
        layer : int
        q_layer : ndarray, float16/32/64, shape [n_head, w, head_dim]
        k_layer : ndarray, float16/32/64, shape [n_head_kv, n_tokens, head_dim]
            Any strides with a contiguous last axis (other float types are converted to float64).
        """
        q = _rows_contiguous(q_layer)
        k = _rows_contiguous(k_layer)
        status = self._lib.audiokv_add_layer(
            self._handle, layer, q.ctypes.data, _DTYPES[q.dtype], q.strides[0], q.strides[1],
            k.ctypes.data, _DTYPES[k.dtype], k.strides[1], k.strides[0], C.audiokv_to_float_fn(), None)
        C.check("audiokv_add_layer", status, f"layer {layer}")

    def add_layer_ggml(self, layer: int, q_layer: np.ndarray, k_rows: np.ndarray, ggml_type: int,
                       head_row_bytes: int) -> None:
        """Score one layer whose keys are stored like llama.cpp's K cache in any ggml type (quantized included).

        Parameters
        ----------
        layer : int
        q_layer : ndarray, float16/32/64, shape [n_head, w, head_dim]
        k_rows : ndarray, uint8, shape [n_tokens, row_bytes]
            One row per token holding all KV heads, head h at byte h * head_row_bytes.
        ggml_type : int
            enum ggml_type of the keys (e.g. 8 = Q8_0).
        head_row_bytes : int
            Bytes of head_dim elements of that type (ggml_row_size).

        Raises
        ------
        RuntimeError
            When libaudiokv was built without ggml (standalone build).
        """
        if not audiokv_ggml.has_ggml(self._lib):
            raise RuntimeError("this libaudiokv was built without ggml (standalone build); use the combined build")
        if not self._lib.audiokv_ggml_type_supported(ggml_type):
            raise ValueError(f"ggml type {ggml_type} cannot be converted to float")
        q = _rows_contiguous(q_layer)
        k = np.ascontiguousarray(k_rows, dtype=np.uint8)
        status = self._lib.audiokv_add_layer(
            self._handle, layer, q.ctypes.data, _DTYPES[q.dtype], q.strides[0], q.strides[1],
            k.ctypes.data, C.AUDIOKV_TYPE_OTHER, k.strides[0], head_row_bytes, audiokv_ggml.ggml_to_float(self._lib),
            ggml_type)
        C.check("audiokv_add_layer", status, f"layer {layer}, ggml type {ggml_type}")

    def add_layer_ragged(self, layer: int, q_layer: np.ndarray, k_heads) -> None:
        """Score one layer from its window queries and each KV head's own entries.

        Parameters
        ----------
        layer : int
        q_layer : ndarray, float16/32/64, shape [n_head, w, head_dim]
        k_heads : sequence of ndarray, float16/32/64, shape [n_entries[layer, h], head_dim]
            One array per KV head (any row stride with a contiguous last axis; one common dtype is used, other
            float types are converted to float64).
        """
        n_head_kv = self.shape[2]
        if len(k_heads) != n_head_kv:
            raise ValueError(f"{len(k_heads)} key arrays given for {n_head_kv} KV heads")
        q = _rows_contiguous(q_layer)
        heads = [_rows_contiguous(k) for k in k_heads]
        heads = [np.ascontiguousarray(k) if k.shape[0] > 1 and k.strides[0] < 1 else k for k in heads]
        if len({k.dtype for k in heads}) > 1:
            heads = [k.astype(np.float64) for k in heads]
        bases = (ctypes.c_void_p * n_head_kv)(*[k.ctypes.data for k in heads])
        strides = (ctypes.c_size_t * n_head_kv)(*[k.strides[0] if k.shape[0] > 1 else k.itemsize * k.shape[1]
                                                  for k in heads])
        status = self._lib.audiokv_add_layer_ragged(
            self._handle, layer, q.ctypes.data, _DTYPES[q.dtype], q.strides[0], q.strides[1], bases,
            _DTYPES[heads[0].dtype], strides, C.audiokv_to_float_fn(), None)
        C.check("audiokv_add_layer_ragged", status, f"layer {layer}")

    def set_layer_scores(self, layer: int, scores: np.ndarray) -> None:
        """Set one layer's scores directly (H2O accumulated attention), shape [n_head or n_head_kv, n_tokens]."""
        s = np.ascontiguousarray(scores, dtype=np.float64)
        status = self._lib.audiokv_set_layer_scores(self._handle, layer, _ptr(s, ctypes.c_double), s.shape[0],
                                                    s.shape[1])
        C.check("audiokv_set_layer_scores", status, f"layer {layer}, scores of shape {s.shape}")

    def set_audio_mask(self, mask, positions=None) -> None:
        """Restrict audiokv's SSS to the audio tokens (audiokv_set_audio_mask; docs/semantics.md).

        Parameters
        ----------
        mask : array_like, bool or integer, shape [n_positions]
            Non-zero where the position holds an audio token (the C side checks its length).
        positions : sequence of sequence of array_like, int, optional
            ``positions[l][h]``: the positions of head (l, h)'s entries; None when entry e of every head is
            position e.
        """
        m = np.asarray(mask)
        if m.ndim != 1:
            raise ValueError(f"the audio mask must be one flag per position (1-D), got shape {m.shape}")
        m = np.ascontiguousarray(m != 0, dtype=np.uint8)
        pointers, keep_alive = None, []
        if positions is not None:
            n_layer, _, n_head_kv, _, _ = self.shape
            if len(positions) != n_layer or any(len(row) != n_head_kv for row in positions):
                raise ValueError(f"positions must be a [n_layer][n_head_kv] = [{n_layer}][{n_head_kv}] nesting")
            keep_alive = [np.ascontiguousarray(pos, dtype=np.int32).reshape(-1) for row in positions for pos in row]
            for i, pos in enumerate(keep_alive):     # the C side reads n_entries positions per head
                n = int(self._lib.audiokv_n_entries(self._handle, i // n_head_kv, i % n_head_kv))
                if pos.size != n:
                    raise ValueError(f"positions[{i // n_head_kv}][{i % n_head_kv}] holds {pos.size} positions for "
                                     f"{n} entries")
            pointers = (ctypes.POINTER(ctypes.c_int32) * len(keep_alive))(
                *[_ptr(pos, ctypes.c_int32) for pos in keep_alive])
        status = self._lib.audiokv_set_audio_mask(self._handle, _ptr(m, ctypes.c_uint8), m.size, pointers)
        C.check("audiokv_set_audio_mask", status,
                f"mask of {m.size} positions ({int(m.sum())} audio), context of "
                f"{int(self._lib.audiokv_n_positions(self._handle))} positions"
                + ("" if positions is None else ", with entry positions"))

    def clear_audio_mask(self) -> None:
        """Remove the audio mask (audiokv_clear_audio_mask): SSS over every token again."""
        C.check("audiokv_clear_audio_mask", self._lib.audiokv_clear_audio_mask(self._handle))

    def plan(self, keep: float, profile: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Counts [n_layer, n_head_kv] (int32) and concatenated kept indices (int32) for keep ratio `keep`."""
        n_layer, _, n_head_kv, _, _ = self.shape
        capacity = int(self._lib.audiokv_plan_capacity(self._handle))
        counts = np.zeros((n_layer, n_head_kv), dtype=np.int32)
        indices = np.empty(capacity, dtype=np.int32)
        total = ctypes.c_int64(0)
        prof_ptr, prof_shape = None, (0, 0)
        if profile is not None:
            prof = np.ascontiguousarray(profile, dtype=np.float64)
            if prof.ndim != 2:
                raise ValueError(f"head profile must be 2-D [n_layer, n_head_kv], got shape {prof.shape}")
            prof_ptr, prof_shape = _ptr(prof, ctypes.c_double), prof.shape
        status = self._lib.audiokv_plan(self._handle, float(keep), prof_ptr, prof_shape[0], prof_shape[1],
                                        _ptr(counts, ctypes.c_int32), _ptr(indices, ctypes.c_int32), capacity,
                                        ctypes.byref(total))
        C.check("audiokv_plan", status, f"keep={keep}, profile shape {prof_shape}")
        return counts, indices[: total.value]


def _rows_contiguous(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in _DTYPES:
        a = a.astype(np.float64)
    if a.strides[-1] != a.itemsize or any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    return a


def plan_c(method: str, q_window: np.ndarray | None, keys: np.ndarray, keep: float,
           profile: HeadProfile | None, params: dict, n_threads: int = 0):
    """The keep plan of one sequence computed by libaudiokv.

    Parameters
    ----------
    method : str
        Registered method name.
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
    keys : ndarray, float, shape [n_layer, n_head_kv, n_tokens, head_dim]
    keep : float
        In (0, 1].
    profile : HeadProfile or None
    params : dict
        The method's parameters (``dataclasses.asdict`` of the method object), plus "accumulated_scores"
        ([n_layer, n_head or n_head_kv, n_tokens]) for h2o and "audio_mask" ([n_tokens] bool) when given.
    n_threads : int, default 0
        Worker threads (0 = all cores); the plan does not depend on it.

    Returns
    -------
    KeepPlan
    """
    params = dict(params)
    accumulated = params.pop("accumulated_scores", None)
    audio_mask = params.pop("audio_mask", None)
    keys = np.asarray(keys)
    if keys.ndim != 4:
        raise ValueError(f"keys must be [n_layer, n_head_kv, n_tokens, head_dim], got shape {keys.shape}")
    n_layer, n_head_kv, n_tokens, head_dim = keys.shape
    if q_window is not None:
        q_window = np.asarray(q_window)
        n_head = q_window.shape[1]
    elif accumulated is not None:
        n_head = np.shape(accumulated)[1]
    else:
        n_head = n_head_kv
    p = c_params(method, params, n_threads)
    with AudioKVContext(p, n_layer, n_head, n_head_kv, head_dim, n_tokens) as ctx:
        w = ctx.window
        if audio_mask is not None:
            ctx.set_audio_mask(audio_mask)
        valid_keep = 0.0 < keep <= 1.0   # the C call reports anything else as AUDIOKV_ERR_KEEP
        budget = max(1, int(np.floor(keep * n_tokens + 0.5))) if valid_keep else 0
        needs_scores = method in _SCORING_METHODS and valid_keep and w < budget < n_tokens and n_tokens > p.window
        if needs_scores:
            for layer in range(n_layer):
                if accumulated is not None:
                    ctx.set_layer_scores(layer, np.asarray(accumulated[layer], dtype=np.float64))
                elif q_window is not None:
                    if q_window.shape[2] != w:
                        raise ValueError(f"q_window holds {q_window.shape[2]} window queries, the context uses {w}")
                    ctx.add_layer(layer, q_window[layer], keys[layer])
                else:
                    raise ValueError(f"method {method} needs q_window (or accumulated_scores for h2o)")
        scores = profile.scores if isinstance(profile, HeadProfile) else profile
        counts, flat = ctx.plan(keep, scores if method == "audiokv" else None)
    return KeepPlan.from_flat(counts, flat, n_tokens, method)


def plan_ragged_c(method: str, q_window: np.ndarray | None, keys, keep: float, profile: HeadProfile | None,
                  params: dict, n_positions: int, n_threads: int = 0):
    """The keep plan of a ragged cache computed by libaudiokv (docs/semantics.md, "Re-planning a ragged cache").

    Parameters
    ----------
    method : str
        Registered method name.
    q_window : ndarray, float, shape [n_layer, n_head, w, head_dim], or None
    keys : sequence of sequence of ndarray, float
        ``keys[l][h]``: shape [n_entries[l, h], head_dim].
    keep : float
        In (0, 1].
    profile : HeadProfile or None
    params : dict
        The method's parameters (``dataclasses.asdict`` of the method object), plus "audio_mask" ([n_positions]
        bool) and "positions" (``positions[l][h]``, the positions of head (l, h)'s entries) when given.
    n_positions : int
        Positions the sequence has seen.
    n_threads : int, default 0
        Worker threads (0 = all cores); the plan does not depend on it.

    Returns
    -------
    KeepPlan
        Entry indices per head, n_tokens = n_positions, n_entries = the heads' entries.
    """
    n_entries = np.array([[np.shape(k)[0] for k in heads] for heads in keys], dtype=np.int64)
    n_layer, n_head_kv = n_entries.shape
    head_dim = np.shape(keys[0][0])[1]
    n_head = q_window.shape[1] if q_window is not None else n_head_kv
    params = dict(params)
    audio_mask = params.pop("audio_mask", None)
    positions = params.pop("positions", None)
    p = c_params(method, params, n_threads)
    with AudioKVContext(p, n_layer, n_head, n_head_kv, head_dim, n_positions, n_entries) as ctx:
        w = ctx.window
        if audio_mask is not None:
            ctx.set_audio_mask(audio_mask, positions)
        valid_keep = 0.0 < keep <= 1.0   # the C call reports anything else as AUDIOKV_ERR_KEEP
        budget = max(1, int(np.floor(keep * n_positions + 0.5))) if valid_keep else 0
        needs_scores = (method in _SCORING_METHODS and valid_keep and w < budget < n_positions
                        and n_positions > p.window and n_entries.min() >= w)
        if needs_scores:
            if q_window is None:
                raise ValueError(f"method {method} needs q_window")
            if q_window.shape[2] != w:
                raise ValueError(f"q_window holds {q_window.shape[2]} window queries, the context uses {w}")
            for layer in range(n_layer):
                ctx.add_layer_ragged(layer, q_window[layer], keys[layer])
        scores = profile.scores if isinstance(profile, HeadProfile) else profile
        counts, flat = ctx.plan(keep, scores if method == "audiokv" else None)
    return KeepPlan.from_flat(counts, flat, n_positions, method, n_entries)
