"""ctypes bindings of the per-head KV eviction API of the patched llama.cpp (``include/llama-kv-evict.h``).

The functions live in the patched ``libllama`` (patches/, docs/per-head-eviction.md); they are bound on first use by
:func:`load_library` onto the library the ``llama_cpp`` package loaded (:func:`audiokv_edge.native.libs.load_llama_cpp`),
so that the ``llama_context *`` handles of ``llama_cpp`` can be passed directly. Nothing is loaded at import time.
The C declaration stands as a comment above each binding. Semantics: docs/per-head-eviction.md.

:func:`make_callback` wraps a Python function as a ``llama_kv_evict_callback`` that never lets an exception cross
into C (an exception becomes the status -1, i.e. ``LLAMA_KV_EVICT_ERR_CALLBACK``), and :class:`EvictLayerView`
exposes the callback's data as NumPy arrays.
libaudiokv's own C callback is bound by :mod:`audiokv_edge.native.audiokv_llama`.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from audiokv_edge.native.ctypes_binding import WITHOUT_PATCHES, LazyBinding

logger = logging.getLogger(__name__)

__all__ = [
    "LLAMA_KV_EVICT_OK", "LLAMA_KV_EVICT_DECLINED", "LLAMA_KV_EVICT_ERR_ARG", "LLAMA_KV_EVICT_ERR_NOT_INIT",
    "LLAMA_KV_EVICT_ERR_UNSUPPORTED", "LLAMA_KV_EVICT_ERR_SEQ", "LLAMA_KV_EVICT_ERR_WINDOW",
    "LLAMA_KV_EVICT_ERR_CALLBACK", "LLAMA_KV_EVICT_ERR_PLAN", "LLAMA_KV_EVICT_ERR_STATE",
    "LLAMA_KV_EVICT_MODE_MASK", "LLAMA_KV_EVICT_MODE_COMPACT",
    "llama_kv_evict_head", "llama_kv_evict_layer", "llama_kv_evict_info", "llama_kv_evict_params",
    "llama_kv_evict_stats", "llama_kv_evict_callback", "EvictApiMissingError", "load_library",
    "EvictLayerView", "layer_views", "make_callback",
]

# enum llama_kv_evict_status
LLAMA_KV_EVICT_OK = 0
LLAMA_KV_EVICT_DECLINED = 1
LLAMA_KV_EVICT_ERR_ARG = -1
LLAMA_KV_EVICT_ERR_NOT_INIT = -2
LLAMA_KV_EVICT_ERR_UNSUPPORTED = -3
LLAMA_KV_EVICT_ERR_SEQ = -4
LLAMA_KV_EVICT_ERR_WINDOW = -5
LLAMA_KV_EVICT_ERR_CALLBACK = -6
LLAMA_KV_EVICT_ERR_PLAN = -7
LLAMA_KV_EVICT_ERR_STATE = -8

# enum llama_kv_evict_mode
LLAMA_KV_EVICT_MODE_MASK = 0
LLAMA_KV_EVICT_MODE_COMPACT = 1

# ggml types the NumPy views can read directly (enum ggml_type, from gguf)
GGML_TYPE_F32 = int(GGMLQuantizationType.F32)
GGML_TYPE_F16 = int(GGMLQuantizationType.F16)
_NUMPY_KEY_TYPES = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16}

llama_pos = ctypes.c_int32
llama_seq_id = ctypes.c_int32


# struct llama_kv_evict_head {
#     int32_t n_kv; const llama_pos * pos; const void * k; size_t nb_entry; int32_t n_keep; int32_t * keep;
# };
class llama_kv_evict_head(ctypes.Structure):
    _fields_ = [
        ("n_kv", ctypes.c_int32),
        ("pos", ctypes.POINTER(llama_pos)),
        ("k", ctypes.c_void_p),
        ("nb_entry", ctypes.c_size_t),
        ("n_keep", ctypes.c_int32),
        ("keep", ctypes.POINTER(ctypes.c_int32)),
    ]


# struct llama_kv_evict_layer {
#     int32_t il; int32_t n_head; int32_t n_head_kv; int32_t n_embd_head_k; enum ggml_type type_k; float kq_scale;
#     int32_t n_window; const float * q; const llama_pos * q_pos; struct llama_kv_evict_head * heads;
# };
class llama_kv_evict_layer(ctypes.Structure):
    _fields_ = [
        ("il", ctypes.c_int32),
        ("n_head", ctypes.c_int32),
        ("n_head_kv", ctypes.c_int32),
        ("n_embd_head_k", ctypes.c_int32),
        ("type_k", ctypes.c_int),
        ("kq_scale", ctypes.c_float),
        ("n_window", ctypes.c_int32),
        ("q", ctypes.POINTER(ctypes.c_float)),
        ("q_pos", ctypes.POINTER(llama_pos)),
        ("heads", ctypes.POINTER(llama_kv_evict_head)),
    ]


# struct llama_kv_evict_info {
#     llama_seq_id seq_id; int32_t n_layer; struct llama_kv_evict_layer * layers; bool uniform;
# };
class llama_kv_evict_info(ctypes.Structure):
    _fields_ = [
        ("seq_id", llama_seq_id),
        ("n_layer", ctypes.c_int32),
        ("layers", ctypes.POINTER(llama_kv_evict_layer)),
        ("uniform", ctypes.c_bool),
    ]


# typedef int32_t (*llama_kv_evict_callback)(struct llama_kv_evict_info * info, void * user_data);
llama_kv_evict_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.POINTER(llama_kv_evict_info), ctypes.c_void_p)


# struct llama_kv_evict_params {
#     int32_t n_window; int32_t mode; llama_kv_evict_callback callback; void * user_data; int32_t n_headroom;
# };
class llama_kv_evict_params(ctypes.Structure):
    _fields_ = [
        ("n_window", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("callback", llama_kv_evict_callback),
        ("user_data", ctypes.c_void_p),
        ("n_headroom", ctypes.c_int32),
    ]


# struct llama_kv_evict_stats {
#     int64_t n_tokens; int64_t n_entries; int64_t n_entries_full; int64_t bytes_used; int64_t bytes_kept;
#     int64_t bytes_headroom;
# };
class llama_kv_evict_stats(ctypes.Structure):
    _fields_ = [
        ("n_tokens", ctypes.c_int64),
        ("n_entries", ctypes.c_int64),
        ("n_entries_full", ctypes.c_int64),
        ("bytes_used", ctypes.c_int64),
        ("bytes_kept", ctypes.c_int64),
        ("bytes_headroom", ctypes.c_int64),
    ]


class EvictApiMissingError(RuntimeError):
    """The loaded libllama lacks the eviction API (an unpatched build)."""


# (name, restype, argtypes): the declarations of include/llama-kv-evict.h
_DECLARATIONS = [
    # struct llama_kv_evict_params llama_kv_evict_default_params(void);
    ("llama_kv_evict_default_params", llama_kv_evict_params, []),
    # int32_t llama_kv_evict_init(struct llama_context * ctx, struct llama_kv_evict_params params);
    ("llama_kv_evict_init", ctypes.c_int32, [ctypes.c_void_p, llama_kv_evict_params]),
    # int32_t llama_kv_evict_seq(struct llama_context * ctx, llama_seq_id seq_id);
    ("llama_kv_evict_seq", ctypes.c_int32, [ctypes.c_void_p, llama_seq_id]),
    # int32_t llama_kv_evict_get_stats(struct llama_context * ctx, llama_seq_id seq_id,
    #                                  struct llama_kv_evict_stats * out);
    ("llama_kv_evict_get_stats", ctypes.c_int32, [ctypes.c_void_p, llama_seq_id,
                                                  ctypes.POINTER(llama_kv_evict_stats)]),
    # const char * llama_kv_evict_status_str(int32_t status);
    ("llama_kv_evict_status_str", ctypes.c_char_p, [ctypes.c_int32]),
]

_BINDING = LazyBinding(_DECLARATIONS, "llama_kv_evict_init", EvictApiMissingError, WITHOUT_PATCHES)


def load_library(lib: ctypes.CDLL | None = None) -> ctypes.CDLL:
    """Bind the eviction functions on a loaded libllama.

    Parameters
    ----------
    lib : ctypes.CDLL, optional
        The libllama to bind; default: the one ``llama_cpp`` loaded through
        :func:`audiokv_edge.native.libs.load_llama_cpp` (so that its ``llama_context`` pointers are valid here).

    Returns
    -------
    ctypes.CDLL
        The library, with ``llama_kv_evict_*`` argument and result types set.

    Raises
    ------
    EvictApiMissingError
        When the library has no ``llama_kv_evict_init`` (built without the patches of patches/).
    """
    if lib is None:
        from audiokv_edge.native import libs as native_libs

        lib = native_libs.load_llama_cpp().llama_cpp._lib
    return _BINDING.bind(lib)


def status_name(lib: ctypes.CDLL, status: int) -> str:
    """Name of a ``llama_kv_evict_*`` status code, from the library itself."""
    return lib.llama_kv_evict_status_str(status).decode()


@dataclass(frozen=True)
class EvictLayerView:
    """NumPy view of one layer of a ``llama_kv_evict_info`` (valid only during the callback).

    Attributes
    ----------
    il : int
        Model layer index.
    n_head, n_head_kv, head_dim : int
        Query heads, KV heads, elements per row.
    kq_scale : float
        Attention logit = kq_scale * (q . k).
    type_k : int
        ggml type of the keys.
    q : numpy.ndarray
        float32 [n_head, n_window, head_dim], a copy.
    q_pos : numpy.ndarray
        int32 [n_window].
    pos : list of numpy.ndarray
        Per KV head, int32 [n_kv_h] positions of its entries.
    """

    il: int
    n_head: int
    n_head_kv: int
    head_dim: int
    kq_scale: float
    type_k: int
    q: np.ndarray
    q_pos: np.ndarray
    pos: list
    _layer: llama_kv_evict_layer

    def keys(self, head: int) -> np.ndarray:
        """Keys of KV head ``head`` as float32 [n_kv_h, head_dim] (f32 and f16 caches only).

        Raises
        ------
        ValueError
            For quantized key types (read them in C with ggml's ``to_float``).
        """
        if self.type_k not in _NUMPY_KEY_TYPES:
            raise ValueError(f"keys of ggml type {self.type_k} cannot be read in NumPy; use an f32 or f16 cache")
        h = self._layer.heads[head]
        dtype = np.dtype(_NUMPY_KEY_TYPES[self.type_k])
        if h.n_kv == 0:
            return np.zeros((0, self.head_dim), np.float32)
        span = (h.n_kv - 1) * h.nb_entry + self.head_dim * dtype.itemsize
        raw = (ctypes.c_char * span).from_address(h.k)
        arr = np.ndarray((h.n_kv, self.head_dim), dtype=dtype, buffer=raw, strides=(h.nb_entry, dtype.itemsize))
        return arr.astype(np.float32)

    def set_keep(self, head: int, keep: Sequence[int] | np.ndarray) -> None:
        """Write the kept entry indices of KV head ``head`` (sorted, unique, in [0, n_kv_h)) into the plan."""
        h = self._layer.heads[head]
        idx = np.ascontiguousarray(np.asarray(keep).ravel(), dtype=np.int32)
        if idx.size > h.n_kv:
            raise ValueError(f"{idx.size} kept entries for a head holding {h.n_kv}")
        if idx.size:
            ctypes.memmove(h.keep, idx.ctypes.data, idx.nbytes)
        h.n_keep = int(idx.size)


def layer_views(info: llama_kv_evict_info) -> list[EvictLayerView]:
    """NumPy views of every layer of a callback's ``info`` (see :class:`EvictLayerView`)."""
    views = []
    for li in range(info.n_layer):
        layer = info.layers[li]
        n_win = layer.n_window
        d = layer.n_embd_head_k
        q = np.ctypeslib.as_array(layer.q, shape=(layer.n_head * n_win * d,)).reshape(layer.n_head, n_win, d).copy()
        q_pos = np.ctypeslib.as_array(layer.q_pos, shape=(n_win,)).copy()
        pos = []
        for h in range(layer.n_head_kv):
            head = layer.heads[h]
            pos.append(np.ctypeslib.as_array(head.pos, shape=(head.n_kv,)).copy() if head.n_kv else
                       np.zeros(0, np.int32))
        views.append(EvictLayerView(layer.il, layer.n_head, layer.n_head_kv, d, float(layer.kq_scale),
                                    int(layer.type_k), q, q_pos, pos, layer))
    return views


def make_callback(fn: Callable[[int, list[EvictLayerView], bool], int | None]) -> llama_kv_evict_callback:
    """Wrap ``fn(seq_id, layers, uniform)`` as a C eviction callback.

    ``fn`` fills the plan through :meth:`EvictLayerView.set_keep` and returns None or 0 (plan filled), 1 (keep
    everything) or another status. An exception is logged and reported to llama.cpp as -1 (the eviction then
    fails with ``LLAMA_KV_EVICT_ERR_CALLBACK`` and changes nothing). Keep the returned object alive as long as the
    context may call it.
    """

    def _trampoline(info_p, _user_data):
        try:
            info = info_p.contents
            rc = fn(int(info.seq_id), layer_views(info), bool(info.uniform))
            return 0 if rc is None else int(rc)
        except Exception:  # never let an exception unwind through C
            logger.exception("eviction callback failed")
            return -1

    return llama_kv_evict_callback(_trampoline)
