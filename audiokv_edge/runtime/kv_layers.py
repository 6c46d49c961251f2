"""Which layers of a text model hold a KV cache of their own, read from its GGUF header.

llama.cpp gives K/V storage to the layers that attend (LFM2's and Granite 4's recurrent layers do not: their
``head_count_kv`` entry is 0) and do not read another layer's K/V (Gemma 3n / Gemma 4: the last layers reuse the
cache of the last full-attention or SWA layer before them, the ``reuse`` callback of ``src/llama-model.cpp``). In
an iSWA model the sliding-window layers' K/V live in a second cache holding only the window
(``llama_kv_cache_iswa``). The profiler, the runner's byte counts and the benchmark's synthetic cache all read the
layers from :func:`kv_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGUFValueType

from audiokv_edge.profile.gguf_header import GGUFHeader

__all__ = ["KVLayers", "SHARED_KV_ARCHS", "kv_layers"]

_INTS = (GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16, GGUFValueType.UINT32,
         GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64)

#: Architectures whose last layers read an earlier layer's K/V (llama.cpp ``src/llama-model.cpp``, the ``reuse``
#: callback for LLM_ARCH_GEMMA3N / LLM_ARCH_GEMMA4): layer il >= n_kv reads n_kv - 2 (SWA) or n_kv - 1 (full).
#: gemma3n: n_kv fixed at 20 and SWA period 5 (``src/models/gemma3n.cpp``); gemma4: n_kv = block_count -
#: shared_kv_layers, SWA per layer from ``sliding_window_pattern``.
SHARED_KV_ARCHS = ("gemma3n", "gemma4")
#: gemma3n's layers owning K/V (``src/models/gemma3n.cpp``).
GEMMA3N_KV_LAYERS = 20
#: Architectures whose ``sliding_window_pattern`` is a period (the last layer of each period attends fully;
#: llama.cpp ``hparams.set_swa_pattern``), with the period llama.cpp uses when the key is absent.
_SWA_PERIOD_ARCHS = {"gemma2": 2, "gemma3": 6, "gemma3n": 5}


@dataclass(frozen=True)
class KVLayers:
    """The attention layout of a text model.

    Parameters
    ----------
    arch : str
        ``general.architecture``.
    head_count_kv : tuple of int
        KV heads per layer (0: a layer without attention).
    head_dim_k, head_dim_v : tuple of int
        Key / value head size per layer (Gemma 4's SWA layers have their own).
    swa : tuple of bool
        Whether each layer is a sliding-window layer.
    window : int
        The SWA layers' window (tokens; 0: no SWA layer).
    sources : dict
        ``{layer reading another layer's K/V: that layer}``.
    """

    arch: str
    head_count_kv: tuple[int, ...]
    head_dim_k: tuple[int, ...]
    head_dim_v: tuple[int, ...]
    swa: tuple[bool, ...]
    window: int
    sources: dict

    @property
    def n_layer(self) -> int:
        return len(self.head_count_kv)

    @property
    def attention(self) -> list[int]:
        """The layers that attend (their own K/V or another layer's)."""
        return [il for il in range(self.n_layer) if self.head_count_kv[il] > 0]

    @property
    def owning(self) -> list[int]:
        """The layers that hold K/V storage of their own."""
        return [il for il in self.attention if il not in self.sources]

    def cache_bytes_per_token(self, layers: list[int], bytes_per_value: float) -> float:
        """K + V bytes one token takes in ``layers`` at ``bytes_per_value`` (q8_0: 34 / 32)."""
        return sum(self.head_count_kv[il] * (self.head_dim_k[il] + self.head_dim_v[il]) for il in layers) \
            * bytes_per_value

    def cell_values(self, layers: list[int], v_trans: bool) -> int:
        """K + V values llama.cpp allocates per cache cell in ``layers``. A transposed V (no flash attention) gets
        every layer's row as wide as the widest layer's (``n_embd_v_gqa_max``, ``llama_kv_cache``'s constructor):
        Gemma 4's SWA layers then store V at the full-attention width."""
        v_max = max(h * d for h, d in zip(self.head_count_kv, self.head_dim_v))
        return sum(self.head_count_kv[il] * self.head_dim_k[il]
                   + (v_max if v_trans else self.head_count_kv[il] * self.head_dim_v[il]) for il in layers)

    def position_cache_layers(self) -> list[int]:
        """The layers whose cache holds every position, what eviction works on: :meth:`full_cache_layers`, or in a
        model whose attention layers are all sliding-window (an iSWA-only LFM2) those."""
        return self.full_cache_layers() or self.owning

    def full_cache_layers(self) -> list[int]:
        """The owning layers whose cache holds every position: all of them, or in an iSWA model (a sliding-window
        layer present) the full-attention ones (the SWA layers' cache keeps the window)."""
        return [il for il in self.owning if not self.swa[il]]

    def window_layers(self) -> list[int]:
        """The owning sliding-window layers (their cache holds the last :attr:`window` positions)."""
        return [il for il in self.owning if self.swa[il]]


def _per_layer(h: GGUFHeader, key: str, n_layer: int, default: int | None = None) -> tuple[int, ...] | None:
    """An integer key given once for all layers or as a per-layer array; ``default`` when absent."""
    if key not in h.entries:
        return None if default is None else (default,) * n_layer
    if h.entries[key].type == GGUFValueType.ARRAY:
        values = [int(v) for v in h.array(key, _INTS)]
        if len(values) != n_layer:
            raise ValueError(f"{h.path}: {key} has {len(values)} entries for {n_layer} layers")
        return tuple(values)
    return (int(h.scalar(key, _INTS)),) * n_layer


def kv_layers(model: str, n_layer: int | None = None) -> KVLayers:
    """Read the attention layout of the GGUF text model at ``model``.

    Parameters
    ----------
    model : str or path
    n_layer : int, optional
        The layer count when known (llama.cpp's ``llama_model_n_layer``); default: ``<arch>.block_count``.

    Raises
    ------
    GGUFFormatError (a ValueError)
        Not a GGUF file, or a key of the wrong type or length; the message names it.
    """
    h = GGUFHeader(str(model))
    arch = h.scalar("general.architecture", (GGUFValueType.STRING,)) or ""
    if n_layer is None:
        n_layer = int(h.scalar(f"{arch}.block_count", _INTS) or 0)
    n_head = int(h.scalar(f"{arch}.attention.head_count", _INTS) or 0) if \
        h.entries.get(f"{arch}.attention.head_count") is None or \
        h.entries[f"{arch}.attention.head_count"].type != GGUFValueType.ARRAY else 0
    head_count_kv = _per_layer(h, f"{arch}.attention.head_count_kv", n_layer, default=max(n_head, 1))
    n_embd = int(h.scalar(f"{arch}.embedding_length", _INTS) or 0)
    default_dim = n_embd // n_head if n_head else 0
    key_len = int(h.scalar(f"{arch}.attention.key_length", _INTS) or default_dim)
    value_len = int(h.scalar(f"{arch}.attention.value_length", _INTS) or key_len)
    window = int(h.scalar(f"{arch}.attention.sliding_window", _INTS) or 0)

    pattern_key = f"{arch}.attention.sliding_window_pattern"
    if not window:  # no window, no SWA layer, whatever the pattern says
        swa = (False,) * n_layer
    elif arch == "lfm2":  # a window makes every attention layer SWA (src/models/lfm2.cpp)
        swa = tuple(h_kv > 0 for h_kv in head_count_kv)
    elif pattern_key in h.entries and h.entries[pattern_key].type == GGUFValueType.ARRAY:
        swa = tuple(bool(v) for v in h.array(pattern_key, (GGUFValueType.BOOL,)))
        if len(swa) != n_layer:
            raise ValueError(f"{h.path}: {pattern_key} has {len(swa)} entries for {n_layer} layers")
    elif arch in _SWA_PERIOD_ARCHS:
        period = int(h.scalar(pattern_key, _INTS) or _SWA_PERIOD_ARCHS[arch])
        swa = tuple(il % period < period - 1 for il in range(n_layer))
    else:
        swa = (False,) * n_layer
    if not any(swa):
        window = 0
    key_swa = int(h.scalar(f"{arch}.attention.key_length_swa", _INTS) or key_len)
    value_swa = int(h.scalar(f"{arch}.attention.value_length_swa", _INTS) or value_len)
    head_dim_k = tuple(key_swa if s else key_len for s in swa)
    head_dim_v = tuple(value_swa if s else value_len for s in swa)

    sources: dict[int, int] = {}
    if arch in SHARED_KV_ARCHS:
        if arch == "gemma3n":
            n_kv = GEMMA3N_KV_LAYERS
        else:
            n_kv = n_layer - int(h.scalar(f"{arch}.attention.shared_kv_layers", _INTS) or 0)
        sources = {il: n_kv - (2 if swa[il] else 1) for il in range(n_kv, n_layer)}
    return KVLayers(arch, head_count_kv, head_dim_k, head_dim_v, swa, window, sources)
