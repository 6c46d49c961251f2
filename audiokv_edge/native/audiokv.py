"""ctypes bindings of libaudiokv (libaudiokv/include/audiokv.h), one binding per C declaration.

The C declaration stands as a comment above each binding; constants mirror the header's enums. The library is
loaded on first use by :func:`load_library` (never at import time) from, in order: ``$AUDIOKV_EDGE_LIB_DIR``, the
combined build found by :func:`audiokv_edge.native.libs.audiokv_library_path`, and the standalone build
``build/libaudiokv`` of this checkout (``cmake -S libaudiokv -B build/libaudiokv``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib
import threading

from audiokv_edge.native.ctypes_binding import declare

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIOKV_OK", "AUDIOKV_ERR_NULL", "AUDIOKV_ERR_SIZE", "AUDIOKV_ERR_KEEP", "AUDIOKV_ERR_PROFILE",
    "AUDIOKV_ERR_PARAM", "AUDIOKV_ERR_TYPE", "AUDIOKV_ERR_CAPACITY", "AUDIOKV_ERR_NOMEM", "AUDIOKV_ERR_STATE",
    "AUDIOKV_ERR_THREAD", "AUDIOKV_ERR_NONFINITE", "POOL_TYPES", "GQA_REDUCTIONS",
    "AUDIOKV_TYPE_F32", "AUDIOKV_TYPE_F16", "AUDIOKV_TYPE_F64", "AUDIOKV_TYPE_OTHER",
    "audiokv_params", "audiokv_to_float_fn", "audiokv_log_fn", "LibAudioKVError", "LibAudioKVInputError",
    "library_path", "load_library", "method_id", "method_names",
    "check",
]

# enum audiokv_status
AUDIOKV_OK = 0
AUDIOKV_ERR_NULL = -1
AUDIOKV_ERR_SIZE = -2
AUDIOKV_ERR_KEEP = -3
AUDIOKV_ERR_PROFILE = -4
AUDIOKV_ERR_PARAM = -5
AUDIOKV_ERR_TYPE = -6
AUDIOKV_ERR_CAPACITY = -7
AUDIOKV_ERR_NOMEM = -8
AUDIOKV_ERR_STATE = -9
AUDIOKV_ERR_THREAD = -10
AUDIOKV_ERR_NONFINITE = -11

# enum audiokv_method (names as in audiokv_edge.methods.METHODS)
# enum audiokv_pool_type, enum audiokv_gqa_reduce
POOL_TYPES = {"avg": 0, "max": 1}
GQA_REDUCTIONS = {"mean": 0, "max": 1}
# enum audiokv_type
AUDIOKV_TYPE_F32 = 0
AUDIOKV_TYPE_F16 = 1
AUDIOKV_TYPE_F64 = 2
AUDIOKV_TYPE_OTHER = 3
# enum audiokv_log_level
AUDIOKV_LOG_DEBUG, AUDIOKV_LOG_INFO, AUDIOKV_LOG_WARN, AUDIOKV_LOG_ERROR = 0, 1, 2, 3


# struct audiokv_params {
#     int32_t method; int32_t window; int32_t pool_kernel; int32_t pool_type; int32_t gqa_reduce; int32_t n_sink;
#     int32_t n_threads; double beta; double safeguard; double sss_alpha; double sss_gamma; double sss_taper;
#     double uniform_share; bool redistribute_surplus;
# };
class audiokv_params(ctypes.Structure):
    _fields_ = [
        ("method", ctypes.c_int32),
        ("window", ctypes.c_int32),
        ("pool_kernel", ctypes.c_int32),
        ("pool_type", ctypes.c_int32),
        ("gqa_reduce", ctypes.c_int32),
        ("n_sink", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("beta", ctypes.c_double),
        ("safeguard", ctypes.c_double),
        ("sss_alpha", ctypes.c_double),
        ("sss_gamma", ctypes.c_double),
        ("sss_taper", ctypes.c_double),
        ("uniform_share", ctypes.c_double),
        ("redistribute_surplus", ctypes.c_bool),
    ]


# typedef void (*audiokv_to_float_fn)(const void * src, float * dst, int64_t n, void * user_data);
audiokv_to_float_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64,
                                       ctypes.c_void_p)
# typedef void (*audiokv_log_fn)(enum audiokv_log_level level, const char * text, void * user_data);
audiokv_log_fn = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_c_double_p = ctypes.POINTER(ctypes.c_double)
_c_int32_p = ctypes.POINTER(ctypes.c_int32)
_c_int64_p = ctypes.POINTER(ctypes.c_int64)

# (name, restype, argtypes): the declarations of audiokv.h
_DECLARATIONS = [
    # struct audiokv_params audiokv_default_params(int32_t method);
    ("audiokv_default_params", audiokv_params, [ctypes.c_int32]),
    # const char * audiokv_status_string(int status);
    ("audiokv_status_string", ctypes.c_char_p, [ctypes.c_int]),
    # const char * audiokv_method_name(int32_t method);
    ("audiokv_method_name", ctypes.c_char_p, [ctypes.c_int32]),
    # int32_t audiokv_method_from_name(const char * name);
    ("audiokv_method_from_name", ctypes.c_int32, [ctypes.c_char_p]),
    # void audiokv_log_set(audiokv_log_fn fn, void * user_data);
    ("audiokv_log_set", None, [audiokv_log_fn, ctypes.c_void_p]),
    # int audiokv_init(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
    #                  int32_t head_dim, int64_t n_tokens, struct audiokv_context ** out);
    ("audiokv_init", ctypes.c_int, [ctypes.POINTER(audiokv_params), ctypes.c_int32, ctypes.c_int32,
                                    ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                    ctypes.POINTER(ctypes.c_void_p)]),
    # void audiokv_free(struct audiokv_context * ctx);
    ("audiokv_free", None, [ctypes.c_void_p]),
    # int32_t audiokv_window(const struct audiokv_context * ctx);
    ("audiokv_window", ctypes.c_int32, [ctypes.c_void_p]),
    # int64_t audiokv_plan_capacity(const struct audiokv_context * ctx);
    ("audiokv_plan_capacity", ctypes.c_int64, [ctypes.c_void_p]),
    # int audiokv_add_layer(struct audiokv_context * ctx, int32_t il,
    #                       const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
    #                       const void * k, int32_t k_type, size_t k_nb_token, size_t k_nb_head,
    #                       audiokv_to_float_fn to_float, void * to_float_user_data);
    ("audiokv_add_layer", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int32,
                                         ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t, ctypes.c_size_t,
                                         ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t, ctypes.c_size_t,
                                         audiokv_to_float_fn, ctypes.c_void_p]),
    # int audiokv_set_layer_scores(struct audiokv_context * ctx, int32_t il, const double * scores,
    #                              int32_t n_rows, int64_t row_stride);
    ("audiokv_set_layer_scores", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int32, _c_double_p, ctypes.c_int32,
                                                ctypes.c_int64]),
    # int audiokv_plan(struct audiokv_context * ctx, double keep,
    #                  const double * profile, int32_t profile_n_layer, int32_t profile_n_head_kv,
    #                  int32_t * counts, int32_t * indices, int64_t capacity, int64_t * n_total);
    ("audiokv_plan", ctypes.c_int, [ctypes.c_void_p, ctypes.c_double, _c_double_p, ctypes.c_int32,
                                    ctypes.c_int32, _c_int32_p, _c_int32_p, ctypes.c_int64, _c_int64_p]),
    # int audiokv_rfft(const double * x, int64_t n, double * out);
    ("audiokv_rfft", ctypes.c_int, [_c_double_p, ctypes.c_int64, _c_double_p]),
    # int audiokv_irfft(const double * in, int64_t n, double * out);
    ("audiokv_irfft", ctypes.c_int, [_c_double_p, ctypes.c_int64, _c_double_p]),
    # int audiokv_sss(const double * x, int64_t n, double alpha, double gamma, double taper, double * out);
    ("audiokv_sss", ctypes.c_int, [_c_double_p, ctypes.c_int64, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                   _c_double_p]),
    # int audiokv_pool(const double * x, int64_t n, int32_t kernel, int32_t pool_type, double * out);
    ("audiokv_pool", ctypes.c_int, [_c_double_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, _c_double_p]),
    # int audiokv_select_top(const double * scores, int64_t n, int64_t k, int32_t * out);
    ("audiokv_select_top", ctypes.c_int, [_c_double_p, ctypes.c_int64, ctypes.c_int64, _c_int32_p]),
    # int audiokv_integerise(const double * r, int64_t n, int64_t total, int64_t lo, int64_t hi, int64_t * b);
    ("audiokv_integerise", ctypes.c_int, [_c_double_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                          ctypes.c_int64, _c_int64_p]),
]

_DECLARATIONS += [  # the ragged API: re-planning an evicted cache
    # int audiokv_init_ragged(const struct audiokv_params * params, int32_t n_layer, int32_t n_head,
    #                         int32_t n_head_kv, int32_t head_dim, const int32_t * n_entries, int64_t n_positions,
    #                         struct audiokv_context ** out);
    ("audiokv_init_ragged", ctypes.c_int, [ctypes.POINTER(audiokv_params), ctypes.c_int32, ctypes.c_int32,
                                           ctypes.c_int32, ctypes.c_int32, _c_int32_p, ctypes.c_int64,
                                           ctypes.POINTER(ctypes.c_void_p)]),
    # int audiokv_add_layer_ragged(struct audiokv_context * ctx, int32_t il,
    #                              const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
    #                              const void * const * k, int32_t k_type, const size_t * k_nb_entry,
    #                              audiokv_to_float_fn to_float, void * to_float_user_data);
    ("audiokv_add_layer_ragged", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int32,
                                                ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t, ctypes.c_size_t,
                                                ctypes.POINTER(ctypes.c_void_p), ctypes.c_int32,
                                                ctypes.POINTER(ctypes.c_size_t), audiokv_to_float_fn,
                                                ctypes.c_void_p]),
    # int64_t audiokv_n_entries(const struct audiokv_context * ctx, int32_t il, int32_t kv_head);
    ("audiokv_n_entries", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32]),
    # int64_t audiokv_n_positions(const struct audiokv_context * ctx);
    ("audiokv_n_positions", ctypes.c_int64, [ctypes.c_void_p]),
]

_DECLARATIONS += [  # SSS restricted to the audio tokens
    # int audiokv_set_audio_mask(struct audiokv_context * ctx, const uint8_t * mask, int64_t n_positions,
    #                            const int32_t * const * positions);
    ("audiokv_set_audio_mask", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int64,
                                              ctypes.POINTER(_c_int32_p)]),
    # int audiokv_clear_audio_mask(struct audiokv_context * ctx);
    ("audiokv_clear_audio_mask", ctypes.c_int, [ctypes.c_void_p]),
]

class LibAudioKVError(RuntimeError):
    """A libaudiokv call returned an error status; ``status`` holds the code, the message names it."""

    def __init__(self, function: str, status: int, what: str = "") -> None:
        self.status = status
        self.function = function
        name = _STATUS_NAMES.get(status, f"unknown status {status}")
        super().__init__(f"{function} failed with {name}" + (f": {what}" if what else ""))


class LibAudioKVInputError(LibAudioKVError, ValueError):
    """A libaudiokv call rejected its input (sizes, keep, profile, parameters, types, NaN)."""


_STATUS_NAMES = {v: k for k, v in globals().items() if k.startswith("AUDIOKV_ERR_") or k == "AUDIOKV_OK"}
_INPUT_ERRORS = {AUDIOKV_ERR_NULL, AUDIOKV_ERR_SIZE, AUDIOKV_ERR_KEEP, AUDIOKV_ERR_PROFILE, AUDIOKV_ERR_PARAM,
                 AUDIOKV_ERR_TYPE, AUDIOKV_ERR_NONFINITE}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _library_file_name() -> str:
    import sys

    return "libaudiokv.dylib" if sys.platform == "darwin" else "libaudiokv.so"


def library_path() -> pathlib.Path:
    """Where libaudiokv is loaded from (see the module docstring for the order).

    Raises
    ------
    FileNotFoundError
        When libaudiokv has been built nowhere; the message names the places searched and the build command.
    """
    name = _library_file_name()
    searched = []
    override = os.environ.get("AUDIOKV_EDGE_LIB_DIR")
    if override:
        candidate = pathlib.Path(override).expanduser() / name
        if candidate.is_file():
            return candidate.resolve()
        searched.append(str(candidate))
    try:
        from audiokv_edge.native.libs import audiokv_library_path

        return audiokv_library_path()
    except (ImportError, FileNotFoundError) as exc:
        searched.append(f"the combined build ({exc})")
    standalone = pathlib.Path(__file__).resolve().parents[2] / "build" / "libaudiokv" / name
    if standalone.is_file():
        return standalone
    searched.append(str(standalone))
    raise FileNotFoundError(
        f"{name} not found; searched: {'; '.join(searched)}. Build it with `bash scripts/setup.sh`, or standalone "
        "with `cmake -S libaudiokv -B build/libaudiokv && cmake --build build/libaudiokv -j2`")


def load_library() -> ctypes.CDLL:
    """Load libaudiokv once and declare every function's argument and result types.

    Returns
    -------
    ctypes.CDLL
    """
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            lib = ctypes.CDLL(str(path))
            from audiokv_edge.native import audiokv_ggml

            optional = [d for d in audiokv_ggml.DECLARATIONS if hasattr(lib, d[0])]
            declare(lib, _DECLARATIONS + optional)
            lib.audiokv_log_set(_log_callback, None)  # library messages go to Python logging
            logger.debug("loaded libaudiokv from %s", path)
            _lib = lib
        return _lib


def check(function: str, status: int, what: str = "") -> None:
    """Raise unless status is AUDIOKV_OK: :class:`LibAudioKVInputError` (a ValueError) for rejected input,
    :class:`LibAudioKVError` otherwise."""
    if status == AUDIOKV_OK:
        return
    if status in _INPUT_ERRORS:
        raise LibAudioKVInputError(function, status, what)
    raise LibAudioKVError(function, status, what)


def _forward_log(level: int, text: bytes, user_data) -> None:
    py_level = {AUDIOKV_LOG_DEBUG: logging.DEBUG, AUDIOKV_LOG_INFO: logging.INFO,
                AUDIOKV_LOG_WARN: logging.WARNING}.get(level, logging.ERROR)
    logger.log(py_level, "%s", text.decode("utf-8", "replace"))


_log_callback = audiokv_log_fn(_forward_log)  # kept alive for the process: the library holds the pointer


def method_names() -> list[str]:
    """The methods libaudiokv knows, in the order of their numbers (audiokv_method_name)."""
    lib = load_library()
    names = []
    while (name := lib.audiokv_method_name(len(names))) is not None:
        names.append(name.decode())
    return names


def method_id(name: str) -> int:
    """libaudiokv's number of method ``name`` (audiokv_method_from_name).

    Raises
    ------
    ValueError
        libaudiokv does not know the method.
    """
    method = load_library().audiokv_method_from_name(str(name).encode())
    if method < 0:
        raise ValueError(f"unknown method {name!r}; known: {sorted(method_names())}")
    return int(method)
