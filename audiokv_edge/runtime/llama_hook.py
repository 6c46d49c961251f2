"""Per-head KV-cache eviction for an existing llama-cpp-python app: :func:`enable` on a ``llama_cpp.Llama``.

::

    import llama_cpp
    import audiokv_edge

    llm = llama_cpp.Llama(model_path="model.gguf", n_ctx=4096)
    eviction = audiokv_edge.enable(llm, method="audiokv", keep=0.4)
    print(llm("Summarise the meeting notes above.", max_tokens=64)["choices"][0]["text"])
    print(eviction.last.kv_bytes_kept, "of", eviction.last.kv_bytes_full, "KV bytes kept")

After :func:`enable`, every prompt the Llama generates from (``__call__``, ``create_completion``,
``create_chat_completion``, ``generate``) is decoded into an empty cache (an evicted cache is no prefix to reuse), then
evicted once, right after the prompt is decoded (prefill) and before the first token is sampled: the same libaudiokv C
callback and llama.cpp per-head COMPACT eviction a :class:`~audiokv_edge.runtime.session.Session` applies
(:class:`~audiokv_edge.runtime.kv_eviction.KVEvictor`). ``method="full"`` changes nothing in the Llama's behaviour
and only reports the statistics.

``kv_budget`` caps what each eviction keeps at that many entries per (layer, KV head) on average: a prompt of P
tokens is planned at keep min(keep, kv_budget / P) (:mod:`audiokv_edge.runtime.kv_eviction`).

Interruption: :meth:`LlamaEviction.interrupt` (from another thread, a signal handler or a callback such as a
``stopping_criteria``) makes the Llama's generation raise :class:`~audiokv_edge.runtime.interrupt.Interrupted` (a
``KeyboardInterrupt``) within a graph node of the prompt, its eviction or a generated token; Ctrl-C under Python's
default handler becomes such a request while llama.cpp decodes or evicts, so that it is never swallowed inside a
ctypes callback. The next prompt is answered as usual.

The Llama must use the libllama of this project's build (``import llama_cpp`` after ``scripts/setup.sh``, or
:func:`audiokv_edge.native.libs.load_llama_cpp`). :func:`enable` routes the Llama's own ``generate`` and ``eval``
through the eviction (instance attributes; the class is untouched), sets the context's abort callback while a prompt
is decoded, and frees the evictor when the Llama is closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import logging
import pathlib
import sys
import weakref
from dataclasses import dataclass

from audiokv_edge.runtime.interrupt import Interrupted, StopFlag
from audiokv_edge.runtime.kv_eviction import (
    KEEP_FULL,
    EvictionError,
    EvictionUnsupportedError,
    KVEvictor,
    check_kv_budget,
    check_method_and_keep,
    choose_keep,
)

logger = logging.getLogger(__name__)

__all__ = ["enable", "LlamaEviction", "EvictionConfig", "PromptStats", "EvictionError", "EvictionUnsupportedError",
           "Interrupted"]

_GGML_LOG_LEVEL_ERROR = 4  # ggml.h enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5

#: The Llama objects eviction is enabled on (llama.cpp accepts llama_kv_evict_init once per context).
_ENABLED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: inspect.Signature of llama_cpp.Llama.generate (where its ``reset`` argument is), read on first use.
_GENERATE = None


@dataclass(frozen=True)
class EvictionConfig:
    """Options of :func:`enable`.

    Parameters
    ----------
    method : str
        Keep-plan method, a key of ``audiokv_edge.methods.METHODS``; ``"full"`` keeps everything.
    keep : float or None
        Fraction of each prompt's KV entries kept, in (0, 1]. None: the model's stored ``audiokv.defaults.keep`` for
        method ``audiokv`` when the GGUF has one, else 0.4 (as the runner).
    n_headroom : int or None
        Rows per (layer, KV head) reserved after the eviction for the answer's tokens (more are allocated on
        demand); None: llama.cpp's default (256).
    kv_budget : int or None
        Most KV-cache entries per (layer, KV head), on average, that an eviction keeps (>= 1): a prompt of P tokens
        is planned at keep min(keep, kv_budget / P). None: the keep ratio alone. Needs an evicting method.
    """

    method: str = "audiokv"
    keep: float | None = None
    n_headroom: int | None = None
    kv_budget: int | None = None

    def __post_init__(self) -> None:
        check_method_and_keep(self.method, self.keep)
        n = self.n_headroom
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n_headroom must be an integer >= 0 or None, got {n!r}")
        object.__setattr__(self, "kv_budget", check_kv_budget(self.kv_budget, self.method))


@dataclass(frozen=True)
class PromptStats:
    """The KV cache of one prompt, after its eviction.

    Attributes
    ----------
    prompt_tokens : int
        Positions of the prompt.
    kv_bytes_full : int
        K + V bytes the prompt holds without eviction, in the layers eviction applies to (as the runner counts them:
        on iSWA models such as Gemma 3 the full-attention layers; every layer for method ``full``).
    kv_bytes_kept : int
        K + V bytes it holds there after the eviction (= ``kv_bytes_full`` for method ``full``).
    evict_ms : float
        Time spent planning and evicting.
    keep_effective : float
        Keep ratio the eviction planned at: the keep ratio, or lower under a ``kv_budget`` (1.0 for ``full``).
    """

    prompt_tokens: int
    kv_bytes_full: int
    kv_bytes_kept: int
    evict_ms: float
    keep_effective: float = 1.0

    @property
    def kept_fraction(self) -> float:
        return self.kv_bytes_kept / self.kv_bytes_full if self.kv_bytes_full else 1.0


def _bytes_per_value(ggml_type_id: int) -> float:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block_values, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type_id)]
    return block_bytes / block_values


class LlamaEviction:
    """Eviction switched on for one ``llama_cpp.Llama`` (what :func:`enable` returns).

    Attributes
    ----------
    config : EvictionConfig
    keep : float
        Effective keep ratio (1.0 for ``full``).
    keep_source : str
        ``"config"``, ``"profile"`` (the model's stored default), ``"default"`` (0.4) or ``"full"``.
    settings : dict or None
        The evictor's settings (method, keep, window, n_window, sss_alpha, sss_gamma); None for ``full``.
    last : PromptStats or None
        The last prompt's KV cache.
    n_prompts : int
        Prompts evicted (or, for ``full``, counted) so far.
    stop : StopFlag
        The flag :meth:`interrupt` sets.
    """

    def __init__(self, llm, config: EvictionConfig, evictor: KVEvictor | None, keep: float, keep_source: str,
                 bytes_per_entry: float, entries_per_position: int, other_bytes_per_position: float = 0.0) -> None:
        self.config = config
        self.keep, self.keep_source = keep, keep_source
        self.settings = dict(evictor.settings) if evictor is not None else None
        self.last: PromptStats | None = None
        self.n_prompts = 0
        self.stop = StopFlag()
        self._llm = weakref.ref(llm)
        self._evictor = evictor
        self._bytes_per_entry = bytes_per_entry
        self._entries_per_position = entries_per_position
        self._other_bytes_per_position = other_bytes_per_position  # V rows padded to the widest layer's
        self._prompt_pending = False

    @property
    def evicting(self) -> bool:
        return self._evictor is not None

    def interrupt(self) -> None:
        """Stop the Llama's generation in progress, from another thread, a signal handler or a callback: it raises
        :class:`~audiokv_edge.runtime.interrupt.Interrupted` within a graph node of the prompt, its eviction or a
        generated token (the next prompt, when none runs). The Llama stays usable."""
        self.stop.request()

    # ------------------------------------------------------------------ what the Llama's own methods become
    def _generate(self, tokens, args, kwargs):
        llm = self._llm()
        if self.evicting:
            if getattr(llm, "cache", None) is not None:
                raise EvictionError("a Llama with a prompt cache (set_cache) cannot evict: a restored state would "
                                    "not hold the evicted cache; call llm.set_cache(None)")
            if _GENERATE.bind(llm, tokens, *args, **kwargs).arguments.get("reset", True):
                llm.n_tokens = 0  # an evicted cache is no prefix to reuse: the prompt is decoded from the start
        self._prompt_pending = True
        return (yield from type(llm).generate(llm, tokens, *args, **kwargs))

    def _eval(self, tokens) -> None:
        llm = self._llm()
        stop, prompt = self.stop, self._prompt_pending
        self._prompt_pending = False
        stage = "prefill" if prompt else "decode"
        stop.raise_if_requested(stage)
        lc = sys.modules["llama_cpp.llama_cpp"]
        if prompt:  # llama.cpp polls the flag after every graph node of the prompt (not per token: too costly)
            lc.llama_set_abort_callback(llm.ctx, stop.abort_callback(lc), None)
        try:
            with stop.sigint_requests_stop():
                type(llm).eval(llm, tokens)
        except RuntimeError:  # llama-cpp-python's "llama_decode returned 2": stopped by the abort callback
            stop.raise_if_requested(stage)
            raise
        finally:
            if prompt:
                lc.llama_set_abort_callback(llm.ctx, lc.ggml_abort_callback(), None)
        stop.raise_if_requested(stage)
        if prompt and llm.n_tokens > 0:
            with stop.sigint_requests_stop():
                self._after_prompt(llm.n_tokens)
            stop.raise_if_requested("eviction")

    def _after_prompt(self, n_past: int) -> None:
        if self._evictor is None:
            full = self._entries_per_position * n_past
            self._record(PromptStats(n_past, self._bytes(full, n_past), self._bytes(full, n_past), 0.0))
            return
        record = self._evictor.evict(n_past)
        self._record(PromptStats(n_past, self._bytes(record.full_entries, n_past),
                                 self._bytes(record.kept_entries, n_past), record.ms, record.keep))

    def _bytes(self, entries: int, n_past: int) -> int:
        """Bytes of ``entries`` evictable (layer, KV head, token) entries and the V padding of ``n_past``
        positions."""
        return int(round(entries * self._bytes_per_entry + n_past * self._other_bytes_per_position))

    def _record(self, stats: PromptStats) -> None:
        self.last = stats
        self.n_prompts += 1
        logger.debug("prompt of %d tokens: KV %d of %d bytes kept (%.1f ms)", stats.prompt_tokens,
                     stats.kv_bytes_kept, stats.kv_bytes_full, stats.evict_ms)

    def _release(self) -> None:
        """Free the evictor: the Llama is closing (its context is freed next and evicts no more)."""
        if self._evictor is not None:
            self._evictor.close()


@contextlib.contextmanager
def _native_errors():
    """Collect llama.cpp's error lines while the block runs (the reason of a refusal), passing every line on to the
    log callback that was set (llama-cpp-python's), or to stderr when none was."""
    lc = sys.modules["llama_cpp.llama_cpp"]
    previous = lc.llama_log_callback()
    previous_data = ctypes.c_void_p()
    lc.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
    errors: list[str] = []

    def collect(level, text, user_data):
        if level == _GGML_LOG_LEVEL_ERROR and text:
            errors.append(text.decode("utf-8", "replace").strip())
        if previous:
            previous(level, text, previous_data)
        elif text:
            sys.stderr.write(text.decode("utf-8", "replace"))

    callback = lc.llama_log_callback(collect)
    lc.llama_log_set(callback, ctypes.c_void_p())
    try:
        yield errors
    finally:
        lc.llama_log_set(previous, previous_data)


def _reason(errors: list[str]) -> str:
    """The last logged error without llama.cpp's ``function: `` prefix."""
    for line in reversed(errors):
        text = line.split(": ", 1)[1] if line.startswith("llama_kv_evict") and ": " in line else line
        if text:
            return text
    return "see llama.cpp's log"


def enable(llm, method: str = "audiokv", keep: float | None = None, *, n_headroom: int | None = None,
           kv_budget: int | None = None) -> LlamaEviction:
    """Turn per-head KV-cache eviction on for a ``llama_cpp.Llama``: each prompt is evicted once decoded.

    Parameters
    ----------
    llm : llama_cpp.Llama
        A Llama of the llama_cpp package bound to this project's libllama; its context may have been created with
        any ``flash_attn``, ``type_k`` / ``type_v`` (f32, f16, q8_0, ...); with ``offload_kqv`` on (llama_cpp's
        default) and a method other than ``full`` the context is re-created with ``offload_kqv=False`` (the KV
        cache and attention in host memory, where the eviction rewrites it; offloaded layers stay on the GPU).
    method : str
        Keep-plan method (``audiokv``, ``snapkv``, ``h2o``, ...; ``full`` keeps everything and only reports).
    keep : float or None
        Fraction of each prompt's KV entries kept, in (0, 1]; None: the model's stored AudioKV default or 0.4.
    n_headroom, kv_budget : int or None
        See :class:`EvictionConfig`.

    Returns
    -------
    LlamaEviction
        The statistics of the prompts (``last``: :class:`PromptStats`, KV bytes kept vs full).

    Raises
    ------
    ValueError
        Bad options; eviction already enabled on this Llama; a draft model (speculative decoding rewinds the cache)
        or a prompt cache is set.
    EvictionUnsupportedError
        llama.cpp cannot evict on this Llama's context (a recurrent memory such as Mamba, attention soft-capping,
        ...); the message gives llama.cpp's reason.
    EvictionError
        The loaded libllama is not this project's (no per-head eviction API), or libaudiokv cannot plan for the model
        (e.g. a malformed stored head profile).
    """
    global _GENERATE
    config = EvictionConfig(method=method, keep=keep, n_headroom=n_headroom, kv_budget=kv_budget)
    if llm in _ENABLED:
        raise ValueError("eviction is already enabled on this Llama (llama.cpp enables it once per context)")
    if getattr(llm, "draft_model", None) is not None:
        raise ValueError("a Llama with a draft model (speculative decoding) cannot evict: it rewinds the cache")
    if config.method != "full" and getattr(llm, "cache", None) is not None:
        raise ValueError("a Llama with a prompt cache (set_cache) cannot evict: call llm.set_cache(None) first")
    if getattr(llm, "_ctx", None) is None or getattr(llm, "_stack", None) is None:
        raise ValueError(f"enable() takes a llama_cpp.Llama, got {type(llm).__name__}")
    lc = sys.modules["llama_cpp.llama_cpp"]
    if _GENERATE is None:
        _GENERATE = inspect.signature(type(llm).generate)

    label = str(pathlib.Path(llm.model_path))
    entry_bytes, per_position, other_bytes = _kv_entry_geometry(llm, lc)
    evictor = None
    if config.method == "full":
        keep_value, keep_source = 1.0, KEEP_FULL
    else:
        choice = choose_keep(llm.model_path, config.method, config.keep)
        keep_value, keep_source = choice.keep, choice.source
        if llm.context_params.offload_kqv:
            _keep_kv_in_host_memory(llm, lc)
        cp = llm.context_params
        n = config.n_headroom
        try:
            with _native_errors() as errors:
                evictor = KVEvictor(llm.model, llm.ctx, method=config.method, keep=choice,
                                    n_threads=max(1, int(cp.n_threads)), n_ctx=int(lc.llama_n_ctx(llm.ctx)),
                                    n_headroom=256 if n is None else n, label=label, kv_budget=config.kv_budget)
        except EvictionUnsupportedError as exc:
            reason = _reason(errors)
            raise EvictionUnsupportedError(f"{exc}: {reason}", status=exc.status) from None
        llm.reset()  # nothing decoded before enable() counts: the next prompt starts an empty sequence

    handle = LlamaEviction(llm, config, evictor, keep_value, keep_source, entry_bytes, per_position, other_bytes)

    def generate(tokens, *args, **kwargs):
        return handle._generate(tokens, args, kwargs)

    def eval(tokens):  # noqa: A001 - the Llama method it stands for
        handle._eval(tokens)

    generate.__doc__, eval.__doc__ = type(llm).generate.__doc__, type(llm).eval.__doc__
    llm.generate, llm.eval = generate, eval
    llm._stack.callback(handle._release)  # runs in Llama.close(), before the context is freed
    _ENABLED[llm] = handle
    logger.info("%s: per-head eviction %s, keep %g (%s)", label, config.method, keep_value, keep_source)
    return handle


def _keep_kv_in_host_memory(llm, lc) -> None:
    """Re-create the Llama's context with ``offload_kqv=False``: the KV cache and attention in host memory, where
    the eviction rewrites the cache (llama.cpp refuses an offloaded one); the model's layers stay on their device.
    Its LoRA adapter, if any, is set on the new context."""
    internals = sys.modules["llama_cpp._internals"]
    llm._ctx.close()  # frees the context now; Llama.close() closing it again does nothing
    llm.context_params.offload_kqv = False
    llm._ctx = llm._stack.enter_context(contextlib.closing(
        internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose)))
    adapter = getattr(llm, "_lora_adapter", None)
    if adapter is not None:
        adapters = (lc.llama_adapter_lora_p_ctypes * 1)(adapter)
        if lc.llama_set_adapters_lora(llm.ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
            raise EvictionError(f"cannot set the LoRA adapter {llm.lora_path} on the re-created context")
    logger.info("%s: per-head KV eviction: the KV cache and attention stay in host memory (offload_kqv = False); "
                "offloaded layers stay on their device", pathlib.Path(llm.model_path).name)


def _kv_entry_geometry(llm, lc) -> tuple[float, int, float]:
    """(K + V bytes of one token in one KV head of an evictable layer, (evictable layer, KV head) pairs per
    position, bytes per position of V rows padded to the widest layer's) of the Llama's model and cache types; the
    layers whose cache holds every position, from :func:`kv_layers` (LFM2's convolutions and the layers reading
    another layer's K/V hold none; an iSWA model's SWA layers are a cache of their own, holding the window)."""
    from audiokv_edge.runtime.kv_layers import kv_layers

    layers = kv_layers(llm.model_path, int(lc.llama_model_n_layer(llm.model)))
    cp = llm.context_params
    bk, bv = _bytes_per_value(int(cp.type_k)), _bytes_per_value(int(cp.type_v))

    def token_bytes(il: int) -> float:  # one KV head of layer il
        return layers.head_dim_k[il] * bk + layers.head_dim_v[il] * bv

    evictable = layers.position_cache_layers()
    if not evictable:  # a recurrent model: no KV cache (an evicting method is refused)
        return 0.0, 0, 0.0
    v_trans = int(cp.flash_attn_type) == int(lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    v_max = max(h * d for h, d in zip(layers.head_count_kv, layers.head_dim_v))  # a transposed V: the widest row
    allocated = sum(layers.head_count_kv[il] * layers.head_dim_k[il] * bk
                    + (v_max if v_trans else layers.head_count_kv[il] * layers.head_dim_v[il]) * bv
                    for il in evictable)
    per_position = sum(layers.head_count_kv[il] for il in evictable)
    entry = token_bytes(evictable[0])
    return entry, per_position, allocated - per_position * entry
