"""A synthetic KV cache: a sequence state blob of random keys and values, loaded with ``llama_state_seq_set_data``.

Decode speed, memory and eviction cost depend on how many entries the cache holds, not on their values, so a long
cache can be filled without its prefill (32k tokens of a 7B model would take hours on two cores). The blob follows
llama.cpp's single-sequence state format (``llama_context::state_seq_get_data`` and ``llama_kv_cache::state_write``
of the vendored llama.cpp): a magic number and the sequence id, the stream count, the cell count, per cell its
position and sequence, then per layer the K rows, then the V rows (per layer, or per V dimension when V is stored
transposed, i.e. without flash attention). Keys and values are normal random
numbers (quantized types through gguf-py), rows repeating every :data:`POOL_ROWS` tokens and shifted per layer.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

__all__ = ["CacheLayout", "POOL_ROWS", "load_state", "synthetic_state"]

#: Distinct random rows per layer; longer caches repeat them.
POOL_ROWS = 4096
#: First word of a sequence state (``io_magic`` in llama-context.cpp).
STATE_MAGIC = 0xAF143CD8


@dataclass(frozen=True)
class CacheLayout:
    """What a context's KV cache stores per token.

    Parameters
    ----------
    n_layer : int
        Layers with a KV cache.
    n_embd_k, n_embd_v : int
        K / V elements per token and layer (KV heads x head size).
    type_k, type_v : int
        ggml type ids (F32 0, F16 1, Q8_0 8, ...).
    v_trans : bool
        V stored transposed (llama.cpp does so without flash attention).
    """

    n_layer: int
    n_embd_k: int
    n_embd_v: int
    type_k: int
    type_v: int
    v_trans: bool

    def row_bytes(self, ggml_type: int, n: int) -> int:
        """Bytes of ``n`` elements of ``ggml_type`` (ggml_row_size)."""
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        if n % block:
            raise ValueError(f"{n} elements are not a whole number of {gguf.GGMLQuantizationType(ggml_type).name} "
                             f"blocks of {block}")
        return n // block * size

    def bytes_per_token(self) -> int:
        """K + V bytes one token occupies over all layers."""
        return self.n_layer * (self.row_bytes(self.type_k, self.n_embd_k) + self.row_bytes(self.type_v, self.n_embd_v))


def _pool(rng: np.random.Generator, ggml_type: int, n: int) -> np.ndarray:
    """:data:`POOL_ROWS` random rows of ``n`` elements, as ``ggml_type`` bytes: uint8 ``[POOL_ROWS, row bytes]``."""
    import gguf

    values = rng.standard_normal((POOL_ROWS, n), dtype=np.float32)
    qtype = gguf.GGMLQuantizationType(ggml_type)
    if qtype == gguf.GGMLQuantizationType.F32:
        return values.view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(values, qtype)


def _tiled(pool: np.ndarray, n_tokens: int, shift: int) -> np.ndarray:
    """``n_tokens`` rows of ``pool``, starting at row ``shift`` and wrapping."""
    idx = (np.arange(n_tokens) + shift) % pool.shape[0]
    return pool[idx]


def synthetic_state(layout: CacheLayout, n_tokens: int, seq_id: int = 0, seed: int = 0) -> np.ndarray:
    """The state blob of one sequence holding positions ``0 .. n_tokens - 1`` with random keys and values.

    Parameters
    ----------
    layout : CacheLayout
    n_tokens : int
        Cached tokens, >= 1.
    seq_id : int
        Sequence id written into the cells (``llama_state_seq_set_data`` loads them into its destination
        sequence).
    seed : int
        Seed of the random rows.

    Returns
    -------
    ndarray, uint8
        The blob, for :func:`load_state`.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    rng = np.random.default_rng(seed)
    k_row = layout.row_bytes(layout.type_k, layout.n_embd_k)
    if layout.v_trans:
        import gguf

        block, el = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(layout.type_v)]
        if block != 1:
            raise ValueError("a transposed V cache holds plain elements (F32 / F16), not quantized blocks")
        v_part = 12 + layout.n_embd_v * n_tokens * el
    else:
        v_row = layout.row_bytes(layout.type_v, layout.n_embd_v)
        v_part = 12 + n_tokens * v_row
    cells = np.zeros(n_tokens, dtype=[("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])
    cells["pos"] = np.arange(n_tokens)
    cells["n_seq"] = 1
    cells["seq"] = seq_id
    size = 16 + cells.nbytes + 8 + layout.n_layer * ((12 + n_tokens * k_row) + v_part)
    blob = np.empty(size, dtype=np.uint8)
    at = 0

    def put(data: np.ndarray) -> None:
        nonlocal at
        flat = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        blob[at:at + flat.size] = flat
        at += flat.size

    put(np.array([STATE_MAGIC], dtype="<u4"))
    put(np.array([seq_id], dtype="<i4"))
    put(np.array([1, n_tokens], dtype="<u4"))  # one stream, its cell count
    put(cells)
    put(np.array([1 if layout.v_trans else 0, layout.n_layer], dtype="<u4"))
    k_pool = _pool(rng, layout.type_k, layout.n_embd_k)
    for il in range(layout.n_layer):
        put(np.array([layout.type_k], dtype="<i4"))
        put(np.array([k_row], dtype="<u8"))
        put(_tiled(k_pool, n_tokens, il * 97))
    if layout.v_trans:
        v_pool = _pool(rng, layout.type_v, layout.n_embd_v).view(np.float16 if el == 2 else np.float32)
        for il in range(layout.n_layer):
            put(np.array([layout.type_v], dtype="<i4"))
            put(np.array([el, layout.n_embd_v], dtype="<u4"))
            put(_tiled(v_pool, n_tokens, il * 89).T)  # [dimension][token]
    else:
        v_pool = _pool(rng, layout.type_v, layout.n_embd_v)
        for il in range(layout.n_layer):
            put(np.array([layout.type_v], dtype="<i4"))
            put(np.array([v_row], dtype="<u8"))
            put(_tiled(v_pool, n_tokens, il * 89))
    assert at == size, (at, size)
    return blob


def load_state(llama, ctx, blob: np.ndarray, seq_id: int = 0) -> None:
    """Load a state blob into sequence ``seq_id`` of ``ctx`` (``llama_state_seq_set_data``; zero copy).

    Raises
    ------
    RuntimeError
        llama.cpp refused it (a layout that does not match the context, or too few cells); its log says why.
    """
    ptr = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    if llama.llama_state_seq_set_data(ctx, ptr, blob.size, seq_id) != blob.size:
        raise RuntimeError(f"llama.cpp refused a {blob.size}-byte sequence state (the cache layout or size differs)")


def saved_state(llama, ctx, seq_id: int = 0) -> np.ndarray:
    """Sequence ``seq_id`` of ``ctx`` as a state blob (``llama_state_seq_get_data``)."""
    size = llama.llama_state_seq_get_size(ctx, seq_id)
    blob = np.empty(size, dtype=np.uint8)
    if llama.llama_state_seq_get_data(ctx, blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size,
                                      seq_id) != size:
        raise RuntimeError(f"llama.cpp could not save sequence {seq_id}")
    return blob
