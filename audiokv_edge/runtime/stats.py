"""Statistics of one answered prompt (audio or a text document): KV-cache bytes, throughput, peak memory; text and
JSON forms."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType


def ggml_type(kv_type: str) -> int:
    """The ggml type id (enum ggml_type) of a KV-cache type name such as ``"q8_0"``."""
    return int(GGMLQuantizationType[kv_type.upper()])


def _bytes_per_value(kv_type: str) -> float:
    block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kv_type.upper()]]
    return block_bytes / block_values


#: Bytes per element of the KV-cache types the runner offers (gguf's ggml block sizes: q8_0 = 34 bytes per 32 values).
KV_TYPE_BYTES: dict[str, float] = {name: _bytes_per_value(name) for name in ("f32", "f16", "q8_0")}


@dataclass(frozen=True)
class KVGeometry:
    """What one cached token costs in the layers holding K/V.

    Parameters
    ----------
    n_layer : int
        Layers whose KV cache is evictable: every layer owning K/V but the sliding-window ones of an iSWA model
        (:mod:`audiokv_edge.runtime.kv_layers`); 0 for a recurrent model.
    n_head_kv : int
        KV heads per evictable layer.
    head_dim_k, head_dim_v : int
        Key and value head sizes of the evictable layers.
    kv_type : str
        Key of :data:`KV_TYPE_BYTES` (both K and V use it).
    other_values : int
        K + V values llama.cpp allocates per token in those layers beyond their heads' own: V rows padded to the
        widest layer's when V is transposed (:meth:`KVLayers.cell_values`; 0 unless an SWA layer's V is wider). An
        iSWA model's sliding-window layers are a cache of their own, holding their window, and not counted here.
    """

    n_layer: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    kv_type: str = "f16"
    other_values: int = 0

    def __post_init__(self) -> None:
        if self.n_layer < 0:  # 0: a recurrent model, no KV cache
            raise ValueError(f"n_layer must be >= 0, got {self.n_layer}")
        for name in ("n_head_kv", "head_dim_k", "head_dim_v"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_type not in KV_TYPE_BYTES:
            raise ValueError(f"unknown KV type {self.kv_type!r}; known: {sorted(KV_TYPE_BYTES)}")

    def bytes_per_head_token(self) -> float:
        """K + V bytes of one token in one KV head of one layer."""
        return (self.head_dim_k + self.head_dim_v) * KV_TYPE_BYTES[self.kv_type]

    def bytes_per_token(self) -> float:
        """K + V bytes of one token in those layers: what llama.cpp allocates per cell of that cache."""
        return (self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) + self.other_values) \
            * KV_TYPE_BYTES[self.kv_type]

    def full_bytes(self, n_tokens: int) -> int:
        """What llama.cpp holds for ``n_tokens`` positions without eviction in the evictable layers' cache."""
        return int(round(n_tokens * self.bytes_per_token()))

    def kept_bytes(self, kept_entries: int) -> int:
        """Bytes of ``kept_entries`` (evictable layer, KV head, token) cache entries."""
        return int(round(kept_entries * self.bytes_per_head_token()))

    def held_bytes(self, kept_entries: int, n_tokens: int) -> int:
        """What the cache holds for ``n_tokens`` positions of which ``kept_entries`` entries are kept: those entries
        plus the padding of every position (= :meth:`full_bytes` when nothing is evicted)."""
        return int(round(kept_entries * self.bytes_per_head_token()
                         + n_tokens * self.other_values * KV_TYPE_BYTES[self.kv_type]))


def current_rss_bytes() -> int | None:
    """Resident set size of this process now in bytes (Linux /proc/self/statm), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (``VmHWM``, ``RssAnon``, ...) in bytes; None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def maxrss_bytes(usage: resource.struct_rusage) -> int:
    """``ru_maxrss`` of a resource usage (``resource.getrusage``, ``os.wait4``) in bytes: it is in KiB on Linux, in
    bytes on macOS."""
    return int(usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (bytes).

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own memory. ``ru_maxrss`` is not:
    it carries over ``execve`` the high-water mark of the process image before it (a child started by a Python
    process that once held 500 MiB reports at least 500 MiB); it stays the fallback (KiB on Linux, bytes on macOS).
    """
    if sys.platform.startswith("linux"):
        hwm = proc_status_bytes("VmHWM")
        if hwm is not None:
            return hwm
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))


@dataclass(frozen=True)
class AnswerStats:
    """Numbers reported for one answer (the ``--json`` fields besides ``text``).

    Parameters
    ----------
    audio_seconds : float
        Duration of the audio after resampling (0 for a text prompt).
    audio_tokens : int
        Audio embeddings placed in the prompt (all audio chunks; 0 for a text prompt).
    prompt_tokens : int
        Every prompt position (text + audio; a follow-up: its new positions).
    generated_tokens : int
        Tokens decoded (the end-of-generation token not counted).
    method : str
        Keep-plan method.
    keep : float
        Keep ratio used (the caller's, the model's stored head-profile default, or the built-in 0.4; 1.0 for
        ``full``).
    eviction_applied : bool
        True: the cache holds ``kv_bytes_kept`` (every build evicts; the field stays in the JSON record).
    kv_bytes_full : int
        Cache bytes of the prompt without eviction.
    kv_bytes_kept : int
        Cache bytes of the prompt after eviction.
    prefill_tokens_per_s : float
        Prompt positions per second, audio encoding included.
    decode_tokens_per_s : float
        Generated tokens per second.
    prefill_s, decode_s : float
        Wall-clock seconds.
    evict_ms : float
        Time spent planning / evicting (ms).
    peak_rss_bytes : int
        Peak resident memory of the process.
    finish_reason : str
        ``"stop"`` (end-of-generation token), ``"length"`` (max tokens) or ``"context"`` (context full).
    keep_source : str
        Where ``keep`` came from: ``"config"`` (chosen by the caller, ``--keep``), ``"profile"`` (the model's
        ``audiokv.defaults.keep``), ``"default"`` (built-in) or ``"full"`` (method ``full`` keeps everything).
    document_tokens : int
        Tokens of the text document in the prompt (0 for an audio prompt or a follow-up).
    kv_budget : int or None
        Most cache entries per (layer, KV head), on average, an eviction keeps (``--kv-budget``); None: none.
    keep_effective : float or None
        Keep ratio the last eviction (the whole prompt; for a follow-up, the conversation's last) planned at:
        ``keep``, or ``kv_budget`` / positions seen when smaller (1.0 for ``full``). None: not recorded.
    """

    audio_seconds: float
    audio_tokens: int
    prompt_tokens: int
    generated_tokens: int
    method: str
    keep: float
    eviction_applied: bool
    kv_bytes_full: int
    kv_bytes_kept: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_s: float
    decode_s: float
    evict_ms: float
    peak_rss_bytes: int
    finish_reason: str
    keep_source: str = "config"
    document_tokens: int = 0
    kv_budget: int | None = None
    keep_effective: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """Human-readable lines for stderr."""
        mib = 1024.0 * 1024.0
        ratio = self.kv_bytes_kept / self.kv_bytes_full if self.kv_bytes_full else 1.0
        keep_note = " (model's head profile default)" if self.keep_source == "profile" else ""
        if self.kv_budget is not None:
            keep_note += f", budget {self.kv_budget} tokens per head"
            if self.keep_effective is not None and self.keep_effective < self.keep:
                keep_note += f" -> keep {self.keep_effective:.3g}"
        if self.audio_tokens or self.audio_seconds:
            prompt = (f"audio: {self.audio_seconds:.2f} s -> {self.audio_tokens} audio tokens, {self.prompt_tokens} "
                      f"prompt tokens")
        elif self.document_tokens:
            prompt = f"text: {self.document_tokens} document tokens, {self.prompt_tokens} prompt tokens"
        else:
            prompt = f"prompt: {self.prompt_tokens} tokens"
        return [
            prompt,
            f"kv cache ({self.method}, keep {self.keep:g}{keep_note}): full {self.kv_bytes_full / mib:.2f} MiB, "
            f"kept {self.kv_bytes_kept / mib:.2f} MiB ({ratio:.1%})",
            f"prefill: {self.prefill_tokens_per_s:.1f} tok/s ({self.prefill_s:.2f} s); decode: "
            f"{self.decode_tokens_per_s:.1f} tok/s ({self.generated_tokens} tokens, {self.finish_reason}); "
            f"eviction: {self.evict_ms:.1f} ms",
            f"peak RSS: {self.peak_rss_bytes / mib:.1f} MiB",
        ]
