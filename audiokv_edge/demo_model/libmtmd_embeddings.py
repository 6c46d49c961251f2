"""Audio embeddings as the vendored libmtmd computes them (mel, encoder and projector in llama.cpp), for checking
the PyTorch training path against the inference path."""

from __future__ import annotations

import ctypes
import pathlib

import numpy as np

from audiokv_edge.native import libs as native_libs


def libmtmd_audio_embeddings(model_path: str | pathlib.Path, mmproj_path: str | pathlib.Path,
                             samples: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """Projected audio embeddings of ``samples`` (mono float32 at 16 kHz), float32 [n_audio_tokens, n_embd_text]:
    every audio chunk of the prompt ``<marker>`` encoded with ``mtmd_encode_chunk``."""
    lc, mt = native_libs.load_llama_cpp(), native_libs.load_mtmd_cpp()
    mparams = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        raise ValueError(f"llama.cpp cannot load {model_path}")
    ctx = chunks = None
    try:
        p = mt.mtmd_context_params_default()
        p.use_gpu = False
        p.print_timings = False
        p.n_threads = n_threads
        p.warmup = False
        ctx = mt.mtmd_init_from_file(str(mmproj_path).encode(), model, p)
        if not ctx:
            raise ValueError(f"libmtmd cannot load {mmproj_path} for {model_path}")
        x = np.ascontiguousarray(samples, dtype=np.float32)
        bitmap = mt.mtmd_bitmap_init_from_audio(x.shape[0], x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        chunks = mt.mtmd_input_chunks_init()
        raw = mt.mtmd_default_marker()
        text = mt.mtmd_input_text(raw, len(raw), False, True)
        rc = mt.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mt.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
        mt.mtmd_bitmap_free(bitmap)
        if rc != 0:
            raise ValueError(f"mtmd_tokenize failed ({rc})")
        n_embd = int(lc.llama_model_n_embd(model))
        out = []
        for i in range(int(mt.mtmd_input_chunks_size(chunks))):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(chunk) != mt.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                continue
            if mt.mtmd_encode_chunk(ctx, chunk) != 0:
                raise ValueError(f"mtmd_encode_chunk failed on chunk {i}")
            n = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
            ptr = mt.mtmd_get_output_embd(ctx)
            out.append(np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy())
        return np.concatenate(out)
    finally:
        if chunks:
            mt.mtmd_input_chunks_free(chunks)
        if ctx:
            mt.mtmd_free(ctx)
        lc.llama_model_free(model)
