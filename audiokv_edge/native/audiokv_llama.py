"""ctypes bindings of ``libaudiokv/include/audiokv_llama.h``: libaudiokv's own llama.cpp eviction callback.

Exported by the libaudiokv of the combined build; it plans in C with no Python in the eviction path:
:func:`load_adapter` binds it, :func:`c_callback` returns it as a ``llama_kv_evict_callback`` to put in
:class:`~audiokv_edge.native.llama_kv_evict.llama_kv_evict_params` with an evictor as ``user_data``. The C declaration
stands as a comment above each binding.
"""

from __future__ import annotations

import ctypes

from audiokv_edge.native import audiokv
from audiokv_edge.native.ctypes_binding import LazyBinding
from audiokv_edge.native.llama_kv_evict import llama_kv_evict_callback, llama_kv_evict_info

__all__ = ["AdapterMissingError", "load_adapter", "c_callback"]


class AdapterMissingError(RuntimeError):
    """The loaded libaudiokv lacks the llama.cpp eviction callback (not built inside the combined build)."""


# (name, restype, argtypes): the declarations of libaudiokv/include/audiokv_llama.h
_ADAPTER_DECLARATIONS = [
    # struct audiokv_llama_evictor * audiokv_llama_evictor_new(const struct llama_model * model,
    #     const struct audiokv_params * params, double keep, int * status, char * err, size_t err_size);
    ("audiokv_llama_evictor_new", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
                                                   ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_size_t]),
    # void audiokv_llama_evictor_free(struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_free", None, [ctypes.c_void_p]),
    # int32_t audiokv_llama_evict_callback(struct llama_kv_evict_info * info, void * user_data);
    ("audiokv_llama_evict_callback", ctypes.c_int32, [ctypes.POINTER(llama_kv_evict_info), ctypes.c_void_p]),
    # int audiokv_llama_evictor_has_profile(const struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_has_profile", ctypes.c_int, [ctypes.c_void_p]),
    # int audiokv_llama_evictor_last_status(const struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_last_status", ctypes.c_int, [ctypes.c_void_p]),
    # const char * audiokv_llama_evictor_last_error(const struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_last_error", ctypes.c_char_p, [ctypes.c_void_p]),
    # int64_t audiokv_llama_evictor_n_plans(const struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_n_plans", ctypes.c_int64, [ctypes.c_void_p]),
    # int64_t audiokv_llama_evictor_last_kept(const struct audiokv_llama_evictor * evictor);
    ("audiokv_llama_evictor_last_kept", ctypes.c_int64, [ctypes.c_void_p]),
    # int audiokv_llama_evictor_set_audio_spans(struct audiokv_llama_evictor * evictor, int32_t seq_id,
    #                                           const int32_t * spans, int32_t n_spans);
    ("audiokv_llama_evictor_set_audio_spans", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int32,
                                                             ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
    # int audiokv_llama_evictor_clear_audio_spans(struct audiokv_llama_evictor * evictor, int32_t seq_id);
    ("audiokv_llama_evictor_clear_audio_spans", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int32]),
]


_BINDING = LazyBinding(_ADAPTER_DECLARATIONS, "audiokv_llama_evictor_new", AdapterMissingError,
                       "it was built without llama.cpp; build the combined build (bash scripts/setup.sh)")


def load_adapter() -> ctypes.CDLL:
    """libaudiokv (:func:`audiokv_edge.native.audiokv.load_library`) with the ``audiokv_llama_*`` functions bound.

    Raises
    ------
    AdapterMissingError
        When libaudiokv was built without llama.cpp (standalone build): rebuild the combined build.
    """
    return _BINDING.bind(audiokv.load_library())


def c_callback(lib: ctypes.CDLL) -> llama_kv_evict_callback:
    """``audiokv_llama_evict_callback`` of a :func:`load_adapter` library as a ``llama_kv_evict_callback`` value.

    The value points at the C function itself: llama.cpp calls it without entering Python.
    """
    address = ctypes.cast(lib.audiokv_llama_evict_callback, ctypes.c_void_p).value
    return llama_kv_evict_callback(address)

