"""libaudiokv's per-head KV-cache eviction on one llama.cpp context: switched on and applied in one place.

:class:`KVEvictor` registers libaudiokv's C callback (``audiokv_llama_evict_callback``) with llama.cpp's per-head
eviction API (``llama_kv_evict_init``, COMPACT mode; docs/per-head-eviction.md) and applies it to a sequence
(``llama_kv_evict_seq``): llama.cpp hands the captured window queries and the keys to libaudiokv, which plans with the
method (AudioKV's budgets from the head profile stored in the model's GGUF), and llama.cpp frees the dropped
entries. Python only registers the callback. :func:`choose_keep` resolves the keep ratio the way the runner does
(the caller's, the model's stored ``audiokv.defaults.keep`` for method audiokv, else :data:`DEFAULT_KEEP`).

A fixed KV budget B (``kv_budget``: the most cache entries per (layer, KV head), on average, that an eviction keeps)
makes every eviction plan at keep ``min(keep, B / P)`` (:func:`budget_keep`), P being the positions the sequence has
seen, counted as the C callback counts them (:func:`positions_seen`: the last captured query position + 1, at least
the most entries a head holds). The method distributes B x layers x KV heads exactly as it distributes any keep
ratio (AudioKV by its head profile), so after every eviction the heads hold at most B entries on average however
long the input (streaming re-plans after each chunk). libaudiokv fixes an evictor's keep ratio at creation
(``audiokv_llama_evictor_new``), so with a budget a small Python callback hands each eviction to the C callback with
an evictor made for that eviction's ratio; the planning itself stays in C. Without a budget llama.cpp calls the C
callback directly, with no Python in the eviction path.

Users: :class:`~audiokv_edge.runtime.session.Session` (audio prompts) and
:func:`~audiokv_edge.runtime.llama_hook.enable` (a ``llama_cpp.Llama``).
"""

from __future__ import annotations

import ctypes
import logging
import pathlib
import time
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_KEEP", "EVICT_WINDOW", "KEEP_FROM_CONFIG", "KEEP_FROM_PROFILE", "KEEP_BUILTIN", "KEEP_FULL",
           "EvictionError", "EvictionUnsupportedError", "KeepChoice", "EvictionRecord", "KVEvictor", "budget_keep",
           "check_kv_budget", "check_method_and_keep", "choose_keep", "positions_seen"]

#: Window queries captured for eviction (the methods' default observation window, docs/semantics.md).
EVICT_WINDOW = 32
#: Keep ratio when neither the caller nor (for method audiokv) the model's head profile defaults choose one.
DEFAULT_KEEP = 0.4
#: Where the effective keep ratio came from (``AnswerStats.keep_source``).
KEEP_FROM_CONFIG, KEEP_FROM_PROFILE, KEEP_BUILTIN, KEEP_FULL = "config", "profile", "default", "full"


class EvictionError(RuntimeError):
    """Per-head eviction cannot be switched on or applied; the message is one line naming the file or the status.

    Attributes
    ----------
    status : int or None
        The ``llama_kv_evict_*`` status llama.cpp returned, when it refused.
    detail : str
        libaudiokv's reason for a failed plan, "" when it gave none.
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class EvictionUnsupportedError(EvictionError):
    """llama.cpp refuses per-head eviction on this context: its memory (recurrent), backend or mode
    (llama.cpp logs the reason)."""


@dataclass(frozen=True)
class KeepChoice:
    """The effective keep ratio and where it came from.

    Attributes
    ----------
    keep : float
        Fraction of the prompt's KV entries kept, in (0, 1].
    source : str
        :data:`KEEP_FROM_CONFIG`, :data:`KEEP_FROM_PROFILE` or :data:`KEEP_BUILTIN`.
    defaults : ProfileDefaults or None
        The model's stored AudioKV defaults (``audiokv.defaults.*``) when the method is ``audiokv`` and the GGUF
        has them; they also set the observation window and the SSS alpha / gamma.
    """

    keep: float
    source: str
    defaults: object = None


def choose_keep(model_path: str | pathlib.Path, method: str, keep: float | None) -> KeepChoice:
    """Resolve the keep ratio: an explicit ``keep`` wins, then (method ``audiokv`` only) the model's stored
    ``audiokv.defaults.keep``, then :data:`DEFAULT_KEEP`. Reads the GGUF header and metadata once for ``audiokv``.

    Raises
    ------
    EvictionError
        The stored defaults are malformed (the message names the key), or the metadata cannot be read.
    """
    defaults = None
    if method == "audiokv":
        from audiokv_edge.profile import gguf_keys as gp

        try:
            _, defaults = gp.read_stored(model_path)
        except gp.GGUFProfileError as exc:
            detail = " ".join(str(exc).split())
            prefix = f"{model_path}: "
            if detail.startswith(prefix):
                detail = detail[len(prefix):]
            raise EvictionError(f"cannot plan evictions for {model_path}: head profile in the model's "
                                f"GGUF is unusable: {detail}") from None
        except OSError as exc:
            raise EvictionError(f"cannot read GGUF metadata of {model_path}: {exc}") from None
        if defaults is not None:
            logger.debug("%s: stored AudioKV defaults %s", model_path, defaults.as_dict())
    if keep is not None:
        return KeepChoice(float(keep), KEEP_FROM_CONFIG, defaults)
    if defaults is not None and defaults.keep is not None:
        logger.info("keep %g (model's head profile default)", defaults.keep)
        return KeepChoice(float(defaults.keep), KEEP_FROM_PROFILE, defaults)
    return KeepChoice(DEFAULT_KEEP, KEEP_BUILTIN, defaults)


def check_method_and_keep(method: str, keep) -> None:
    """Validate a method name and a keep ratio as a caller gives them (``SessionConfig``, ``enable()``).

    Raises
    ------
    ValueError
        An unknown method (the message lists the known ones), or a keep that is not a number in (0, 1].
    """
    import math

    from audiokv_edge.methods import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float))
                             or not math.isfinite(keep) or not 0 < keep <= 1):
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")


def check_kv_budget(kv_budget, method: str) -> int | None:
    """Validate a KV budget (``SessionConfig.kv_budget``, ``enable(kv_budget=...)``) and return it as an ``int``.

    Parameters
    ----------
    kv_budget : int or None
        Most cache entries per (layer, KV head), on average, that an eviction keeps (>= 1); None: no budget.
    method : str
        The keep-plan method; ``"full"`` evicts nothing, so it takes no budget.

    Raises
    ------
    ValueError
        Not a positive integer, or a budget with method ``full``.
    """
    if kv_budget is None:
        return None
    import numbers

    if isinstance(kv_budget, bool) or not isinstance(kv_budget, numbers.Integral) or kv_budget < 1:
        raise ValueError(f"kv_budget must be a positive integer (cache entries per layer and KV head), "
                         f"got {kv_budget!r}")
    if method == "full":
        raise ValueError("kv_budget needs an evicting method: method 'full' keeps every cache entry")
    return int(kv_budget)


def budget_keep(keep: float, kv_budget: int | None, n_positions: int) -> float:
    """The keep ratio an eviction plans at: ``min(keep, kv_budget / n_positions)`` (``keep`` without a budget).

    Parameters
    ----------
    keep : float
        Keep ratio in (0, 1].
    kv_budget : int or None
        Most entries per (layer, KV head) on average, >= 1.
    n_positions : int
        Positions the sequence has seen, >= 1.
    """
    if kv_budget is None:
        return keep
    return min(keep, kv_budget / max(1, n_positions))


def positions_seen(info) -> int:
    """Positions a ``llama_kv_evict_info`` stands for, as ``audiokv_llama_evict_callback`` counts them: the last
    captured query position + 1, at least the most entries a head holds."""
    n = 0
    for li in range(info.n_layer):
        layer = info.layers[li]
        for h in range(layer.n_head_kv):
            n = max(n, int(layer.heads[h].n_kv))
    layer0 = info.layers[0]
    if layer0.n_window > 0:
        n = max(n, int(layer0.q_pos[layer0.n_window - 1]) + 1)
    return n


@dataclass(frozen=True)
class EvictionRecord:
    """One eviction of one sequence (``llama_kv_evict_stats`` before and after it).

    Attributes
    ----------
    n_past : int
        Positions the sequence had seen.
    ms : float
        Wall-clock time of the eviction (planning included).
    entries_before, entries_after : int
        (layer, KV head, token) entries attended, over the evictable layers.
    bytes_used_before, bytes_used_after : int
        K + V bytes the sequence occupies in the evictable layers (per-head pools incl. headroom + main-cache cells).
    bytes_kept_after : int
        K + V bytes of the attended entries.
    bytes_headroom_after : int
        Part of ``bytes_used_after`` reserved for the tokens still to come.
    full_entries : int
        Entries without any eviction: one per evictable (layer, KV head) and position seen.
    keep : float
        Keep ratio the eviction planned at: the evictor's, or lower under a KV budget.
    """

    n_past: int
    ms: float
    entries_before: int
    entries_after: int
    bytes_used_before: int
    bytes_used_after: int
    bytes_kept_after: int
    bytes_headroom_after: int
    full_entries: int
    keep: float

    @property
    def kept_entries(self) -> int:
        return self.entries_after

    def as_dict(self) -> dict:
        """The fields except ``full_entries`` (``Session.last_evictions``)."""
        out = asdict(self)
        del out["full_entries"]
        return out


class KVEvictor:
    """libaudiokv's evictor registered on one llama.cpp context (COMPACT mode).

    Parameters
    ----------
    model : llama_model pointer
        The model of ``ctx`` (libaudiokv reads its head profile and sizes).
    ctx : llama_context pointer
        A context of ``model`` holding no evicted sequence yet; ``llama_kv_evict_init`` is called on it (once per
        context).
    method : str
        A key of ``audiokv_edge.methods.METHODS`` other than ``"full"``.
    keep : KeepChoice
        From :func:`choose_keep`.
    n_threads : int
        Threads libaudiokv plans with.
    n_ctx : int
        Cells of the context (the captured window never exceeds it).
    n_headroom : int
        Rows per (layer, KV head) reserved after each eviction for the tokens until the next one (more are
        allocated on demand).
    label : str
        What the error messages name (the model file).
    kv_budget : int or None
        Most cache entries per (layer, KV head), on average, that an eviction keeps (module docstring; validated by
        :func:`check_kv_budget`); None: the keep ratio alone.

    Raises
    ------
    EvictionUnsupportedError
        llama.cpp refuses eviction on the context (e.g. a recurrent memory); the message names the status.
    EvictionError
        This libllama or libaudiokv lacks the eviction API, or libaudiokv cannot plan for the model.

    Notes
    -----
    llama.cpp keeps calling the evictor for as long as the context lives: free the context first, then
    :meth:`close` (or free the context and never evict again).
    """

    def __init__(self, model, ctx, *, method: str, keep: KeepChoice, n_threads: int, n_ctx: int, n_headroom: int,
                 label: str, kv_budget: int | None = None) -> None:
        from audiokv_edge.native import audiokv
        from audiokv_edge.native import audiokv_llama
        from audiokv_edge.native import llama_kv_evict as E

        self._handles: dict[float, int] = {}  # keep ratio -> libaudiokv evictor
        self._active = None  # the evictor of the last eviction (its last error explains a failure)
        self._ctx, self._model = ctx, model
        self._spans: dict[int, list[tuple[int, int]]] = {}  # seq_id -> audio spans, set on every evictor
        self._callback_error: BaseException | None = None
        self.label = label
        self.keep = float(keep.keep)
        self.kv_budget = check_kv_budget(kv_budget, method)
        self._last_keep = self.keep
        try:
            lib = E.load_library()
            akv = audiokv_llama.load_adapter()
        except (E.EvictApiMissingError, audiokv_llama.AdapterMissingError, FileNotFoundError) as exc:
            raise EvictionError(f"per-head eviction needs libaudiokv's llama.cpp callback: {exc}") from None
        self._lib, self._akv = lib, akv
        params = akv.audiokv_default_params(audiokv.method_id(method))
        params.window = EVICT_WINDOW
        params.n_threads = n_threads
        stored = keep.defaults  # only set for method audiokv, whose defaults they are
        if stored is not None:
            if stored.window is not None:
                params.window = min(stored.window, 2**31 - 1)  # UINT32 key, int32 field
            if stored.sss_alpha is not None:
                params.sss_alpha = stored.sss_alpha
            if stored.sss_gamma is not None:
                params.sss_gamma = stored.sss_gamma
        self._params = params  # libaudiokv copies it; kept for the evictors a budget makes later
        # llama.cpp must capture the whole observation window (no more rows than the context can ever hold)
        n_window = max(EVICT_WINDOW, min(int(params.window), n_ctx))
        self._active = self._handle(self.keep)
        eparams = lib.llama_kv_evict_default_params()
        eparams.n_window = n_window
        eparams.mode = E.LLAMA_KV_EVICT_MODE_COMPACT
        eparams.n_headroom = n_headroom
        if self.kv_budget is None:  # the C callback itself: no Python in the eviction path
            self._callback = audiokv_llama.c_callback(akv)
            eparams.user_data = self._active
        else:
            self._callback = E.llama_kv_evict_callback(self._plan_within_budget)
            eparams.user_data = None
        eparams.callback = self._callback
        rc = lib.llama_kv_evict_init(ctx, eparams)
        if rc != 0:
            self.close()
            raise EvictionUnsupportedError(f"per-head eviction cannot run on {label}: {E.status_name(lib, rc)}",
                                           status=rc)
        #: method, keep, keep_source, window (libaudiokv's observation window), n_window (queries llama.cpp
        #: captures), n_headroom (rows per (layer, KV head) reserved after an eviction), sss_alpha, sss_gamma
        self.settings = {"method": method, "keep": keep.keep, "keep_source": keep.source,
                         "window": int(params.window), "n_window": n_window, "n_headroom": int(n_headroom),
                         "sss_alpha": float(params.sss_alpha), "sss_gamma": float(params.sss_gamma)}

    def _handle(self, keep: float) -> int:
        """The libaudiokv evictor planning at ``keep``, made on first use with the audio spans set so far; besides
        the one of the configured ratio only the latest is kept (a budget's ratio changes at every eviction).

        Raises
        ------
        EvictionError
            libaudiokv refuses the parameters, the model's stored head profile or the spans.
        """
        if keep not in self._handles:
            status = ctypes.c_int(0)
            err = ctypes.create_string_buffer(512)
            handle = self._akv.audiokv_llama_evictor_new(self._model, ctypes.byref(self._params), keep,
                                                         ctypes.byref(status), err, len(err))
            if not handle:
                raise EvictionError(f"cannot plan evictions for {self.label}: {err.value.decode('utf-8', 'replace')}")
            for old in [k for k in self._handles if k != self.keep]:
                self._akv.audiokv_llama_evictor_free(self._handles.pop(old))
            self._handles[keep] = handle
            for seq_id, spans in self._spans.items():
                self._apply_spans(handle, seq_id, spans)
        return self._handles[keep]

    def _plan_within_budget(self, info_p, _user_data) -> int:
        """The eviction callback under a budget: the C callback with an evictor made for min(keep, budget / P)."""
        try:
            keep = budget_keep(self.keep, self.kv_budget, positions_seen(info_p.contents))
            self._active = self._handle(keep)
            rc = int(self._akv.audiokv_llama_evict_callback(info_p, self._active))
            if rc == 0:
                self._last_keep = keep
            return rc
        except BaseException as exc:  # never unwind through C (llama.cpp then changes nothing); evict() re-raises
            self._callback_error = exc
            return -1

    @property
    def last_keep(self) -> float:
        """The keep ratio of the last successful eviction (the configured one before the first, and always without
        a budget)."""
        return self._last_keep

    def stats(self, seq_id: int = 0):
        """``llama_kv_evict_stats`` of sequence ``seq_id`` (tokens, entries and bytes it holds).

        Raises
        ------
        EvictionError
            llama.cpp has no statistics for it.
        """
        from audiokv_edge.native import llama_kv_evict as E

        stats = E.llama_kv_evict_stats()
        if self._lib.llama_kv_evict_get_stats(self._ctx, seq_id, ctypes.byref(stats)) != 0:
            raise EvictionError("per-head eviction statistics are unavailable")
        return stats

    def evict(self, n_past: int, seq_id: int = 0) -> EvictionRecord:
        """Plan with the method and drop the evicted entries of sequence ``seq_id``, which has seen ``n_past``
        positions.

        Raises
        ------
        EvictionError
            llama.cpp or libaudiokv refused (the cache is then unchanged); the message names the status,
            ``detail`` holds libaudiokv's reason.
        KeyboardInterrupt
            Raised while the budget's Python callback ran (Ctrl-C under a handler that raises): re-raised once
            llama.cpp has returned, the cache unchanged.
        """
        from audiokv_edge.native import llama_kv_evict as E

        start = time.perf_counter()
        before = self.stats(seq_id)
        self._callback_error = None
        rc = self._lib.llama_kv_evict_seq(self._ctx, seq_id)
        elapsed = (time.perf_counter() - start) * 1e3
        error, self._callback_error = self._callback_error, None
        if isinstance(error, KeyboardInterrupt):
            raise error
        if rc not in (E.LLAMA_KV_EVICT_OK, E.LLAMA_KV_EVICT_DECLINED):
            detail = ""
            if error is not None:
                logger.debug("eviction callback failed", exc_info=error)
                detail = " ".join(str(error).split()) or type(error).__name__
            elif rc == E.LLAMA_KV_EVICT_ERR_CALLBACK and self._active:
                detail = self._akv.audiokv_llama_evictor_last_error(self._active).decode("utf-8", "replace")
            raise EvictionError(f"per-head eviction failed: {E.status_name(self._lib, rc)}", status=rc,
                                detail=detail)
        after = self.stats(seq_id)
        # entries over the evictable layers (iSWA models: the full-attention ones); the entries of one position in
        # every evictable head, times the positions seen (after an earlier eviction llama.cpp counts only the
        # positions some head still holds)
        per_position = int(before.n_entries_full) // max(1, int(before.n_tokens))
        return EvictionRecord(
            n_past=n_past, ms=elapsed, entries_before=int(before.n_entries), entries_after=int(after.n_entries),
            bytes_used_before=int(before.bytes_used), bytes_used_after=int(after.bytes_used),
            bytes_kept_after=int(after.bytes_kept), bytes_headroom_after=int(after.bytes_headroom),
            full_entries=per_position * n_past, keep=self._last_keep)

    def set_audio_spans(self, spans: list[tuple[int, int]], seq_id: int = 0) -> None:
        """Hand the audio positions ``[begin, end)`` of sequence ``seq_id`` to the evictor: with SSS scope "audio"
        its later evictions smooth within them only (audiokv_llama_evictor_set_audio_spans); ``[]``: no audio.

        Raises
        ------
        EvictionError
            libaudiokv refuses the spans (negative, reversed or overlapping).
        """
        spans = [(int(a), int(b)) for a, b in spans]
        for handle in self._handles.values():
            self._apply_spans(handle, seq_id, spans)
        self._spans[seq_id] = spans

    def _apply_spans(self, handle, seq_id: int, spans: list[tuple[int, int]]) -> None:
        flat = [p for span in spans for p in span]
        arr = (ctypes.c_int32 * max(1, len(flat)))(*flat)
        rc = self._akv.audiokv_llama_evictor_set_audio_spans(handle, seq_id, arr, len(spans))
        if rc != 0:
            status = self._akv.audiokv_status_string(rc).decode()
            raise EvictionError(f"audiokv_llama_evictor_set_audio_spans failed with {status} for the audio "
                                f"positions {spans[:4]}", status=rc)

    def close(self) -> None:
        """Free the evictors (idempotent); see the class notes for when."""
        handles = getattr(self, "_handles", {})
        while handles:
            self._akv.audiokv_llama_evictor_free(handles.popitem()[1])
        self._active = None
