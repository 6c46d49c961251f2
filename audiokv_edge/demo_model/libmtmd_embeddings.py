"""Audio embeddings as the vendored libmtmd computes them (mel, encoder and projector in llama.cpp), for checking
the PyTorch training path against the inference path."""

from __future__ import annotations

import pathlib

import numpy as np

from audiokv_edge.runtime.llama import LlamaError, LlamaModel


def libmtmd_audio_embeddings(model_path: str | pathlib.Path, mmproj_path: str | pathlib.Path,
                             samples: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """Projected audio embeddings of ``samples`` (mono float32 at 16 kHz), float32 [n_audio_tokens, n_embd_text]:
    every audio chunk of the prompt ``<marker>`` encoded with ``mtmd_encode_chunk`` (the projector loaded as the
    runner loads it, with libmtmd's default flash-attention choice).

    Raises
    ------
    LlamaError
        llama.cpp or libmtmd refuses the model, the projector or the samples, or an encode fails.
    """
    with LlamaModel(model_path) as llm:
        mt = llm.mtmd
        ctx = llm.new_projector(mmproj_path, n_threads=n_threads, flash_attn=None)
        chunks = llm.tokenize_audio_prompt(ctx, mt.mtmd_default_marker().decode(), samples)
        try:
            out = []
            for i in range(int(mt.mtmd_input_chunks_size(chunks))):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) != mt.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                    continue
                if mt.mtmd_encode_chunk(ctx, chunk) != 0:
                    raise LlamaError(f"mtmd_encode_chunk failed on chunk {i} of {mmproj_path}")
                n = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
                ptr = mt.mtmd_get_output_embd(ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(n * llm.n_embd,)).reshape(n, llm.n_embd).copy())
            return np.concatenate(out)
        finally:
            mt.mtmd_input_chunks_free(chunks)
