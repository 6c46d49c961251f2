"""A synthetic KV cache: a sequence state blob of random keys and values, loaded with ``llama_state_seq_set_data``.

Decode speed, memory and eviction cost depend on how many entries the cache holds, not on their values, so a long
cache can be filled without its prefill (32k tokens of a 7B model would take hours on two cores). The blob follows
llama.cpp's single-sequence state format (``llama_context::state_seq_get_data`` and ``llama_kv_cache::state_write``
of the vendored llama.cpp): a magic number and the sequence id, the stream count, the cell count, per cell its
position and sequence, then per layer the K rows, then the V rows (per layer, or per V dimension when V is stored
transposed, i.e. without flash attention). An iSWA model's state holds two such parts, the full-attention layers'
cache and then the sliding-window layers' (``llama_kv_cache_iswa::state_write``), the latter with the positions its
window still sees. Keys and values are normal random
numbers (quantized types through gguf-py), rows repeating every :data:`POOL_ROWS` tokens and shifted per layer.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

__all__ = ["CacheLayout", "POOL_ROWS", "context_layout", "load_state", "synthetic_state"]

#: Distinct random rows per layer; longer caches repeat them.
POOL_ROWS = 4096
#: First word of a sequence state (``io_magic`` in llama-context.cpp).
STATE_MAGIC = 0xAF143CD8


@dataclass(frozen=True)
class CacheLayout:
    """What one KV cache of a context stores per token.

    Parameters
    ----------
    n_layer : int
        Layers with storage in this cache.
    n_embd_k, n_embd_v : int
        K / V elements per token and layer (KV heads x head size).
    type_k, type_v : int
        ggml type ids (F32 0, F16 1, Q8_0 8, ...).
    v_trans : bool
        V stored transposed (llama.cpp does so without flash attention).
    widths_k, widths_v : tuple of int
        Per-layer K / V elements when the layers differ (Gemma 4's SWA and full-attention head sizes); empty: every
        layer ``n_embd_k`` / ``n_embd_v``.
    window : int
        A sliding-window cache: a saved state holds the last ``window`` positions only (0: every position).
    """

    n_layer: int
    n_embd_k: int
    n_embd_v: int
    type_k: int
    type_v: int
    v_trans: bool
    widths_k: tuple[int, ...] = ()
    widths_v: tuple[int, ...] = ()
    window: int = 0

    def __post_init__(self) -> None:
        for name in ("widths_k", "widths_v"):
            if getattr(self, name) and len(getattr(self, name)) != self.n_layer:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {self.n_layer} layers")

    def k_width(self, il: int) -> int:
        return self.widths_k[il] if self.widths_k else self.n_embd_k

    def v_width(self, il: int) -> int:
        return self.widths_v[il] if self.widths_v else self.n_embd_v

    def held(self, n_tokens: int) -> int:
        """Positions of a sequence of ``n_tokens`` this cache holds in a saved state."""
        return min(n_tokens, self.window) if self.window else n_tokens

    def row_bytes(self, ggml_type: int, n: int) -> int:
        """Bytes of ``n`` elements of ``ggml_type`` (ggml_row_size)."""
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        if n % block:
            raise ValueError(f"{n} elements are not a whole number of {gguf.GGMLQuantizationType(ggml_type).name} "
                             f"blocks of {block}")
        return n // block * size

    def bytes_per_token(self) -> int:
        """K + V bytes one token occupies over all layers of this cache."""
        return sum(self.row_bytes(self.type_k, self.k_width(il)) + self.row_bytes(self.type_v, self.v_width(il))
                   for il in range(self.n_layer))


def context_layout(model_path, kv_type: int, v_trans: bool,
                   n_layer: int | None = None) -> CacheLayout | tuple[CacheLayout, CacheLayout]:
    """The KV cache of a context of the GGUF text model at ``model_path``: its layers owning K/V
    (:mod:`audiokv_edge.runtime.kv_layers`), or for an iSWA model its two caches, the full-attention layers' (the
    evictable ones) and the sliding-window layers' (holding the window).

    Parameters
    ----------
    model_path : str or path
    kv_type : int
        ggml type id of K and V.
    v_trans : bool
        V stored transposed (no flash attention).
    n_layer : int, optional
        llama.cpp's layer count (default: the GGUF's block count).
    """
    from audiokv_edge.runtime.kv_layers import kv_layers

    layers = kv_layers(model_path, n_layer)

    def cache(ils: list[int], window: int = 0) -> CacheLayout:
        k = tuple(layers.head_count_kv[il] * layers.head_dim_k[il] for il in ils)
        v = tuple(layers.head_count_kv[il] * layers.head_dim_v[il] for il in ils)
        return CacheLayout(len(ils), k[0], v[0], kv_type, kv_type, v_trans, k, v, window)

    if layers.window_layers():
        return cache(layers.full_cache_layers()), cache(layers.window_layers(), layers.window)
    return cache(layers.owning)


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


def synthetic_state(layout: CacheLayout | tuple[CacheLayout, ...], n_tokens: int, seq_id: int = 0,
                    seed: int = 0) -> np.ndarray:
    """The state blob of one sequence holding positions ``0 .. n_tokens - 1`` with random keys and values.

    Parameters
    ----------
    layout : CacheLayout or tuple of CacheLayout
        The context's cache, or its caches in the order llama.cpp saves them (iSWA: the full-attention layers',
        then the sliding-window layers').
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
    caches = layout if isinstance(layout, tuple) else (layout,)
    blob = np.empty(8 + sum(_cache_state_bytes(c, n_tokens) for c in caches), dtype=np.uint8)
    at = 0
    for data in [np.array([STATE_MAGIC], dtype="<u4"), np.array([seq_id], dtype="<i4")] + \
            [a for c in caches for a in _cache_state(c, n_tokens, seq_id, rng)]:  # one layer's rows at a time
        flat = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        blob[at:at + flat.size] = flat
        at += flat.size
    assert at == blob.size, (at, blob.size)
    return blob


def _cache_state_bytes(layout: CacheLayout, n_tokens: int) -> int:
    """Size of :func:`_cache_state`'s part."""
    held = layout.held(n_tokens)
    size = 8 + 12 * held + 8
    for il in range(layout.n_layer):
        size += 12 + held * layout.row_bytes(layout.type_k, layout.k_width(il))
        size += 12 + held * layout.row_bytes(layout.type_v, layout.v_width(il))  # transposed: 4 + 4 + 4 + the same
    return size


def _cache_state(layout: CacheLayout, n_tokens: int, seq_id: int, rng: np.random.Generator):
    """One cache's part of a sequence state (``llama_kv_cache::state_write``: one stream, its cells, then per layer
    the K rows and the V rows), array by array (made as they are asked for)."""
    held = layout.held(n_tokens)
    if layout.v_trans:
        import gguf

        block, el = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(layout.type_v)]
        if block != 1:
            raise ValueError("a transposed V cache holds plain elements (F32 / F16), not quantized blocks")
    cells = np.zeros(held, dtype=[("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])
    cells["pos"] = np.arange(n_tokens - held, n_tokens)
    cells["n_seq"] = 1
    cells["seq"] = seq_id
    yield from (np.array([1, held], dtype="<u4"), cells, np.array([1 if layout.v_trans else 0, layout.n_layer], "<u4"))
    k_pools: dict[int, np.ndarray] = {}
    for il in range(layout.n_layer):
        w = layout.k_width(il)
        if w not in k_pools:
            k_pools[w] = _pool(rng, layout.type_k, w)
        yield np.array([layout.type_k], dtype="<i4")
        yield np.array([layout.row_bytes(layout.type_k, w)], dtype="<u8")
        yield _tiled(k_pools[w], held, il * 97)
    v_pools: dict[int, np.ndarray] = {}
    for il in range(layout.n_layer):
        w = layout.v_width(il)
        if w not in v_pools:
            v_pools[w] = _pool(rng, layout.type_v, w)
        yield np.array([layout.type_v], dtype="<i4")
        if layout.v_trans:
            yield np.array([el, w], dtype="<u4")
            yield _tiled(v_pools[w].view(np.float16 if el == 2 else np.float32), held, il * 89).T  # [dim][token]
        else:
            yield np.array([layout.row_bytes(layout.type_v, w)], dtype="<u8")
            yield _tiled(v_pools[w], held, il * 89)


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
