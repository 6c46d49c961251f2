"""ctypes bindings of ``libaudiokv/include/audiokv_ggml.h``: keys of any ggml type (quantized K caches included).

Exported only by a libaudiokv built inside the combined build (it then links ggml); :func:`audiokv.load_library`
declares these functions when the loaded library has them. The C declaration stands as a comment above each binding.
"""

from __future__ import annotations

import ctypes

from audiokv_edge.native.audiokv import audiokv_to_float_fn

__all__ = ["DECLARATIONS", "has_ggml", "ggml_to_float"]

# (name, restype, argtypes)
DECLARATIONS = [
    # void audiokv_ggml_to_float(const void * src, float * dst, int64_t n, void * user_data);
    ("audiokv_ggml_to_float", None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64,
                                     ctypes.c_void_p]),
    # int audiokv_ggml_type_supported(int32_t ggml_type);
    ("audiokv_ggml_type_supported", ctypes.c_int, [ctypes.c_int32]),
]


def has_ggml(lib: ctypes.CDLL) -> bool:
    """True when the loaded libaudiokv exports the ggml to_float helper (built inside the combined build)."""
    return hasattr(lib, "audiokv_ggml_to_float")


def ggml_to_float(lib: ctypes.CDLL) -> audiokv_to_float_fn:
    """audiokv_ggml_to_float as a to_float callback for audiokv_add_layer (user_data: the ggml type number)."""
    address = ctypes.cast(lib.audiokv_ggml_to_float, ctypes.c_void_p).value
    return audiokv_to_float_fn(address)
