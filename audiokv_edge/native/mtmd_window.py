"""ctypes bindings of libmtmd's mel-window API (patches/0009-mtmd-audio-window.patch, ``tools/mtmd/mtmd.h``).

A long recording is tokenized one 30 s mel window at a time with the answer of the whole recording
(:mod:`audiokv_edge.runtime.audio_windows`). Bound on first use onto the libmtmd the ``llama_cpp.mtmd_cpp`` bindings
loaded (:func:`audiokv_edge.native.libs.load_mtmd_cpp`), so that their ``mtmd_context *`` handles can be passed.
Nothing is loaded at import time. The C declaration stands as a comment above each binding.
"""

from __future__ import annotations

import ctypes

from audiokv_edge.native.ctypes_binding import WITHOUT_PATCHES, LazyBinding

__all__ = ["MTMD_WINDOW_OK", "MTMD_WINDOW_UNSUPPORTED", "MTMD_WINDOW_BAD_ARGS", "MtmdWindowApiMissingError",
           "load_library", "supports_windows", "log_mel_max", "set_window"]

MTMD_WINDOW_OK = 0
#: the projector's audio preprocessor is not Whisper's (its mel is not cut into independent 30 s windows)
MTMD_WINDOW_UNSUPPORTED = 1
MTMD_WINDOW_BAD_ARGS = 2


class MtmdWindowApiMissingError(RuntimeError):
    """libmtmd was built without patches/0009-mtmd-audio-window.patch."""


# (name, restype, argtypes): the declarations of the window API in tools/mtmd/mtmd.h
_DECLARATIONS = [
    # int32_t mtmd_audio_set_window(mtmd_context * ctx, float log_mel_max, int64_t first_frame, int64_t n_frames);
    ("mtmd_audio_set_window", ctypes.c_int32, [ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int64]),
    # int32_t mtmd_audio_log_mel_max(mtmd_context * ctx, const float * samples, size_t n_samples,
    #                                int64_t first_frame, int64_t n_frames, float * out_max);
    ("mtmd_audio_log_mel_max", ctypes.c_int32, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                                ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_float)]),
]

_BINDING = LazyBinding(_DECLARATIONS, "mtmd_audio_set_window", MtmdWindowApiMissingError, WITHOUT_PATCHES)


def load_library(lib: ctypes.CDLL | None = None) -> ctypes.CDLL:
    """Bind the window functions on a loaded libmtmd (default: the one ``llama_cpp.mtmd_cpp`` loaded).

    Raises
    ------
    MtmdWindowApiMissingError
        The library has no ``mtmd_audio_set_window`` (built without the patches of patches/).
    """
    if lib is None:
        from audiokv_edge.native import libs as native_libs

        lib = native_libs.load_mtmd_cpp()._libmtmd
    return _BINDING.bind(lib)


def set_window(mctx, log_mel_max: float, first_frame: int, n_frames: int, lib: ctypes.CDLL | None = None) -> int:
    """``mtmd_audio_set_window``: the next tokenizations clamp to ``log_mel_max - 8`` and emit the mel frames
    ``[first_frame, first_frame + n_frames)`` as one chunk; ``n_frames = 0`` restores libmtmd's default. Returns the
    status (0, :data:`MTMD_WINDOW_UNSUPPORTED` or :data:`MTMD_WINDOW_BAD_ARGS`)."""
    lib = load_library(lib)
    return int(lib.mtmd_audio_set_window(mctx, float(log_mel_max), int(first_frame), int(n_frames)))


def supports_windows(mctx, lib: ctypes.CDLL | None = None) -> bool:
    """Whether the projector's audio can be tokenized window by window (a Whisper-family preprocessor and a libmtmd
    with the window API); leaves libmtmd's default (whole buffers) in place."""
    try:
        return set_window(mctx, 0.0, 0, 0, lib) == MTMD_WINDOW_OK
    except MtmdWindowApiMissingError:
        return False


def log_mel_max(mctx, samples, first_frame: int, n_frames: int, lib: ctypes.CDLL | None = None) -> float:
    """``mtmd_audio_log_mel_max``: the largest log-mel value (before the clamp) over frames
    ``[first_frame, first_frame + n_frames)`` of the mel libmtmd computes for ``samples`` (mono float32 at the
    projector's rate; ``n_frames = -1``: to the last frame).

    Raises
    ------
    ValueError
        libmtmd refused (not a Whisper-family projector, empty samples, frames outside the mel).
    """
    import numpy as np

    lib = load_library(lib)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    out = ctypes.c_float()
    rc = lib.mtmd_audio_log_mel_max(mctx, samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), samples.shape[0],
                                    int(first_frame), int(n_frames), ctypes.byref(out))
    if rc != MTMD_WINDOW_OK:
        raise ValueError(f"libmtmd could not compute the log-mel maximum of {samples.shape[0]} samples, frames "
                         f"[{first_frame}, {'end' if n_frames < 0 else first_frame + n_frames}) (code {rc})")
    return float(out.value)
