"""The measurements of ``python -m audiokv_edge.bench``: per cached length, a full-cache context and, per method and
keep ratio, a context evicted per (layer, KV head) by libaudiokv's callback (COMPACT mode), decoded side by side.

Per cached length N:

1. the full-cache context is filled with N tokens: by a real prefill of random tokens (``fill="prefill"``) or by
   loading a synthetic sequence state of random keys and values (``fill="synthetic"``,
   :mod:`audiokv_edge.bench.kv_fill`: what is measured does not depend on the cached values, and a 32k-token
   prefill of a 7B model takes hours on two cores), and decodes ``n_decode`` single tokens (its decode tokens/s);
2. per (method, keep): a new context gets N - P of those tokens (P = ``probe``) and decodes P random tokens as one
   batch on top (the last 32 are the observation window the methods score with), evicts (timed: eviction time /
   prefill time), then its single-token decodes alternate with the full context's (the ratio comes from the same
   moments of a shared machine). With ``same_tokens_keep`` a third context holding round(keep x N) tokens, never
   evicted, joins the alternation of the cells at that keep: a compacted cache vs a full cache of the same size
   (what the ragged per-head layout costs).

Prefill time: measured (``prefill``), or projected from the probe batch's time at depth 0 and at depth N - P, linear
in depth (``synthetic``). Tokens/s of decoding are 1 / the median step, of wall-clock time and of the process's CPU
time (with one thread the compute's own; steady on a shared machine). Memory: KV bytes from llama.cpp's
per-sequence statistics (in use, with the pools' headroom and the main-cache cells, and kept), the process's
resident set before and after each context (Linux /proc; elsewhere only the peak) and its peak; the model's
resident memory after loading, all of it and the anonymous part (llama.cpp may repack the weights into its own
buffers while the file stays mapped: those file pages count in the resident set but are reclaimable).
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from audiokv_edge.bench.kv_fill import CacheLayout, context_layout, load_state, saved_state, synthetic_state
from audiokv_edge.runtime.stats import current_rss_bytes, maxrss_bytes, proc_status_bytes

logger = logging.getLogger(__name__)

__all__ = ["FILLS", "SweepConfig", "Sweep", "peak_rss"]

#: How the cache is filled: a real prefill, or a synthetic sequence state.
FILLS = ("prefill", "synthetic")
#: Tokens decoded per batch in a real prefill.
PREFILL_BATCH = 512
#: ggml type ids of the KV cache types the benchmark takes.
KV_TYPES = {"f16": 1, "q8_0": 8}


def anonymous_rss() -> int | None:
    """Resident anonymous memory of this process in bytes (Linux /proc RssAnon: what the kernel cannot drop, unlike
    the pages of a memory-mapped model file), None elsewhere."""
    return proc_status_bytes("RssAnon")


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))


@dataclass(frozen=True)
class SweepConfig:
    """What one benchmark run measures.

    Parameters
    ----------
    methods : tuple of str
        Evicting methods (keys of ``audiokv_edge.methods.METHODS`` other than ``full``).
    keeps : tuple of float
        Keep ratios in (0, 1]; 1.0 is the full-cache context itself (measured once per length).
    lengths : tuple of int
        Cached tokens N per measurement.
    fill : str
        One of :data:`FILLS`.
    n_decode : int
        Single-token decode steps per context (tokens/s is 1 / median step).
    probe : int
        Tokens decoded as one batch on top of the fill (>= 32, the observation window).
    threads : int
    flash_attn : bool
    kv_type : str
        ``"f16"`` or ``"q8_0"`` (K and V).
    same_tokens_keep : float or None
        Also decode a never-evicted cache of round(keep x N) tokens beside the cells at this keep.
    seed : int
        Seed of the random tokens and the synthetic cache.
    """

    methods: tuple[str, ...] = ("audiokv", "snapkv")
    keeps: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2)
    lengths: tuple[int, ...] = (2048, 8192)
    fill: str = "prefill"
    n_decode: int = 8
    probe: int = 64
    threads: int = 2
    flash_attn: bool = True
    kv_type: str = "f16"
    same_tokens_keep: float | None = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        from audiokv_edge.methods import METHODS

        for method in self.methods:
            if method not in METHODS or method == "full":
                raise ValueError(f"unknown evicting method {method!r}; choose from "
                                 f"{', '.join(m for m in METHODS if m != 'full')}")
        if not self.keeps or any(not 0.0 < k <= 1.0 for k in self.keeps):
            raise ValueError(f"keep ratios must lie in (0, 1], got {self.keeps}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        if self.kv_type != "f16" and not self.flash_attn:
            raise ValueError("a quantized KV cache needs flash attention (llama.cpp)")
        if self.probe < 32:
            raise ValueError(f"probe must be >= 32 tokens (the observation window), got {self.probe}")
        if not self.lengths or any(n <= self.probe for n in self.lengths):
            raise ValueError(f"every cached length must exceed the probe ({self.probe} tokens), got {self.lengths}")
        if self.n_decode < 1 or self.threads < 1:
            raise ValueError("n_decode and threads must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sweep:
    """One model's measurements (:meth:`run`), appended to ``cells`` as they are made.

    Parameters
    ----------
    model_path : pathlib.Path
    config : SweepConfig
    cells : list of dict
        Results so far (a resumed run starts with those of the earlier one; cells already there are skipped).
    on_cell : callable, optional
        Called with the cells after each new one (the caller writes the result file).
    progress : callable, optional
        ``progress(description)`` before each measurement (a progress bar's update).
    """

    model_path: object
    config: SweepConfig
    cells: list = field(default_factory=list)
    on_cell: object = None
    progress: object = None

    # ------------------------------------------------------------------ planning
    def plan(self) -> list[tuple[int, str, float]]:
        """Every cell as ``(length, method, keep)``; method ``"full"`` with keep 1.0 once per length."""
        out = []
        for n in self.config.lengths:
            out.append((n, "full", 1.0))
            out += [(n, m, k) for m in self.config.methods for k in self.config.keeps if k < 1.0]
        return out

    def done(self) -> set[tuple[int, str, float]]:
        return {(c["n_cached"], c["method"], c["keep"]) for c in self.cells}

    # ------------------------------------------------------------------ running
    def run(self) -> list[dict]:
        """Measure every cell not yet in ``cells``; returns ``cells``."""
        from audiokv_edge.runtime.llama import LlamaModel

        todo = [c for c in self.plan() if c not in self.done()]
        if not todo:
            return self.cells
        from audiokv_edge.runtime.llama import init_llama_cpp
        from audiokv_edge.runtime.session import route_native_logs

        route_native_logs(init_llama_cpp())  # llama.cpp's log to the audiokv_edge.native logger, not stderr
        rss0, anon0 = current_rss_bytes(), anonymous_rss()
        self.model = LlamaModel(self.model_path)
        self.model_rss = None if rss0 is None else current_rss_bytes() - rss0
        self.model_anon = None if anon0 is None else anonymous_rss() - anon0
        try:
            for n in self.config.lengths:
                cells = [c for c in todo if c[0] == n]
                if cells:
                    self._length(n, cells)
        finally:
            self.model.close()
        return self.cells

    def _layout(self) -> CacheLayout | tuple[CacheLayout, CacheLayout]:
        return context_layout(self.model_path, KV_TYPES[self.config.kv_type], not self.config.flash_attn,
                              self.model.n_layer)

    def _params(self, n_ctx: int):
        from audiokv_edge.runtime.llama import ContextParams

        t = KV_TYPES[self.config.kv_type]
        return ContextParams(n_ctx=n_ctx, n_batch=min(PREFILL_BATCH, n_ctx), n_threads=self.config.threads,
                             flash_attn=self.config.flash_attn, type_k=t, type_v=t)

    def _tokens(self, n: int, salt: int) -> list[int]:
        rng = np.random.default_rng([self.config.seed, salt])
        return [int(t) for t in rng.integers(100, self.model.n_vocab - 100, size=n)]

    def _decode(self, ctx, tokens: list[int], pos0: int) -> tuple[float, float]:
        """Decode ``tokens`` at ``pos0..`` (batches of :data:`PREFILL_BATCH`); returns the wall and the process CPU
        seconds it took (on a shared machine the CPU time is the steadier measure; with one thread it is the
        compute's own)."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.model.decode_tokens(ctx, tokens, pos0, PREFILL_BATCH)
        return time.perf_counter() - t0, time.process_time() - c0

    def _step(self, state: dict) -> None:
        """One single-token decode of a context in ``state`` (ctx, pos, times)."""
        tok = self._tokens(1, 1_000_000 + state["pos"])
        state["times"].append(self._decode(state["ctx"], tok, state["pos"]))
        state["pos"] += 1

    def _alternate(self, states: list[dict]) -> None:
        """One untimed step of each context not decoded since its fill (which builds its graph for the new layout
        and pages in what it reads), then ``n_decode`` rounds of one timed step per context, the order rotating
        each round."""
        for s in states:
            s["times"].clear()
            if not s.get("warm"):
                self._step(s)
                s["times"].clear()
                s["warm"] = True
        for i in range(self.config.n_decode):
            for s in states[i % len(states):] + states[:i % len(states)]:
                self._step(s)

    @staticmethod
    def _tps(times: list[tuple[float, float]]) -> dict:
        """Tokens/s as 1 / median step, of wall time and of CPU time."""
        return {"decode_tokens_per_s": 1.0 / float(np.median([w for w, _ in times])),
                "decode_tokens_per_cpu_s": 1.0 / float(np.median([c for _, c in times]))}

    def _fill(self, ctx, layout, n: int) -> None:
        """Fill sequence 0 of ``ctx`` with ``n`` tokens: random tokens prefilled, or a synthetic state."""
        if self.config.fill == "prefill":
            self._decode(ctx, self._tokens(n, 1), 0)
        else:
            load_state(self.model.lc, ctx, synthetic_state(layout, n, seed=self.config.seed))

    def _length(self, n: int, cells: list[tuple[int, str, float]]) -> None:
        cfg, llama = self.config, self.model.lc
        base = n - cfg.probe
        margin = cfg.probe + (cfg.n_decode + 1) * (1 + len(cfg.methods) * len(cfg.keeps)) + 16  # decoded after it
        layout = self._layout()
        probe_tokens = self._tokens(cfg.probe, 2)
        self._say(f"{n} cached: full cache")

        rss_before = current_rss_bytes()
        full = self.model.new_context(self._params(n + margin))
        # the evicting contexts get N - P tokens and decode the probe (their observation window) on top
        if cfg.fill == "prefill":
            wall, cpu = self._decode(full, self._tokens(base, 1), 0)
            blob = saved_state(llama, full)
            probe_wall, probe_cpu = self._decode(full, probe_tokens, base)
            prefill = {"prefill_seconds": wall + probe_wall, "prefill_cpu_seconds": cpu + probe_cpu,
                       "prefill_source": "measured"}
        else:
            blob = synthetic_state(layout, base, seed=cfg.seed)
            load_state(llama, full, synthetic_state(layout, n, seed=cfg.seed))
            prefill = None  # projected from the first evicting context's probe
        full_state = {"ctx": full, "pos": n, "times": []}
        self._alternate([full_state])
        # what the context added, without the copy of the state kept for the evicting contexts
        full_rss = None if rss_before is None else current_rss_bytes() - rss_before - blob.nbytes
        evictable = layout[0] if isinstance(layout, tuple) else layout
        kv_full = n * evictable.bytes_per_token()
        common = {"n_cached": n, "fill": cfg.fill, "kv_bytes_full": kv_full,
                  "kv_bytes_per_token": evictable.bytes_per_token(), "model_rss_bytes": self.model_rss,
                  "model_anonymous_rss_bytes": self.model_anon}
        if isinstance(layout, tuple):  # the sliding-window layers' cache: their window, in every context alike
            common["kv_bytes_window"] = layout[1].held(n) * layout[1].bytes_per_token()
        full_cell = {"method": "full", "keep": 1.0, "kv_bytes_used": kv_full, "kv_bytes_kept": kv_full,
                     **self._tps(full_state["times"]), "context_rss_bytes": full_rss, "evict_seconds": 0.0,
                     "evict_cpu_seconds": 0.0, "peak_rss_bytes": peak_rss()}

        small = None
        for _, method, keep in cells:
            if method == "full":
                continue
            self._say(f"{n} cached: {method} keep {keep:g}")
            states = [full_state]
            if cfg.same_tokens_keep is not None and abs(keep - cfg.same_tokens_keep) < 1e-9:
                if small is None:
                    small = self._full_of(int(round(keep * n)), layout)
                states.append(small)
            cell, probe = self._evicted(n, method, keep, blob, probe_tokens, states, margin)
            if prefill is None:
                prefill = self._projected_prefill(n, probe, probe_tokens)
            self._add({**common, **prefill, **cell})
        if (n, "full", 1.0) in cells:
            if prefill is None:  # no evicting cell measured a probe at this length
                _, evict_free = self._evicted_probe_only(n, blob, probe_tokens, margin)
                prefill = self._projected_prefill(n, evict_free, probe_tokens)
            self._add({**common, **prefill, **full_cell})
        self.model.free_context(full)
        if small is not None:
            self.model.free_context(small["ctx"])

    def _projected_prefill(self, n: int, probe: tuple[float, float], probe_tokens: list[int]) -> dict:
        """Prefill time of ``n`` tokens, projected from the probe batch's time at depth 0 and at depth N - P,
        linear in depth (wall and CPU)."""
        cfg = self.config
        if not hasattr(self, "_probe0"):
            ctx = self.model.new_context(self._params(cfg.probe + 16))  # weights paged in by now
            self._probe0 = self._decode(ctx, probe_tokens, 0)
            self.model.free_context(ctx)
        (w0, c0), (wn, cn) = self._probe0, probe
        chunks = n / cfg.probe
        return {"prefill_seconds": chunks * (w0 + wn) / 2.0, "prefill_cpu_seconds": chunks * (c0 + cn) / 2.0,
                "prefill_source": (f"projected: {n} / {cfg.probe} batches of {cfg.probe} tokens, each taking the "
                                   f"mean of the measured batch at depth 0 ({w0:.2f} s, {c0:.2f} CPU s) and at "
                                   f"depth {n - cfg.probe} ({wn:.2f} s, {cn:.2f} CPU s)")}

    def _evicted_probe_only(self, n: int, blob, probe_tokens, margin: int):
        """The probe at depth N - P in a context that never evicts (the full cell alone, resumed)."""
        ctx = self.model.new_context(self._params(n + margin))
        try:
            load_state(self.model.lc, ctx, blob)
            return None, self._decode(ctx, probe_tokens, n - self.config.probe)
        finally:
            self.model.free_context(ctx)

    def _say(self, text: str) -> None:
        logger.info("%s", text)
        if self.progress is not None:
            self.progress(text)

    def _full_of(self, n: int, layout) -> dict:
        """A never-evicted context holding ``n`` tokens (filled as the full one), for the same-size comparison."""
        cfg = self.config
        ctx = self.model.new_context(self._params(n + (cfg.n_decode + 1) * len(cfg.methods) + 16))
        self._fill(ctx, layout, n)
        return {"ctx": ctx, "pos": n, "times": [], "n_tokens": n}

    def _evicted(self, n: int, method: str, keep: float, blob, probe_tokens, states: list[dict],
                 margin: int) -> tuple[dict, tuple[float, float]]:
        """One (method, keep) cell; also returns the probe's (wall, CPU) seconds at depth N - P."""
        from audiokv_edge.runtime.kv_eviction import KEEP_FROM_CONFIG, KeepChoice, KVEvictor

        cfg, llama = self.config, self.model.lc
        rss_before = current_rss_bytes()
        ctx = self.model.new_context(self._params(n + margin))
        evictor = KVEvictor(self.model.model, ctx, method=method, keep=KeepChoice(keep, KEEP_FROM_CONFIG),
                            n_threads=cfg.threads, n_ctx=n + margin, n_headroom=cfg.n_decode + 16,
                            label=str(self.model_path))
        try:
            load_state(llama, ctx, blob)
            probe = self._decode(ctx, probe_tokens, n - cfg.probe)
            c0 = time.process_time()
            record = evictor.evict(n_past=n)
            evict_cpu = time.process_time() - c0
            mine = {"ctx": ctx, "pos": n, "times": []}
            self._alternate([mine] + states)
            full_tps = self._tps(states[0]["times"])
            out = {
                "method": method, "keep": keep, "kv_bytes_used": record.bytes_used_after,
                "kv_bytes_kept": record.bytes_kept_after, "kv_bytes_headroom": record.bytes_headroom_after,
                "kv_bytes_before": record.bytes_used_before, "kept_entries": record.entries_after,
                "entries_full": record.entries_before, **self._tps(mine["times"]),
                "decode_tokens_per_s_full_alongside": full_tps["decode_tokens_per_s"],
                "decode_tokens_per_cpu_s_full_alongside": full_tps["decode_tokens_per_cpu_s"],
                "decode_seconds": mine["times"], "decode_seconds_full_alongside": states[0]["times"],
                "evict_seconds": record.ms / 1e3, "evict_cpu_seconds": evict_cpu,
                "context_rss_bytes": None if rss_before is None else current_rss_bytes() - rss_before,
                "peak_rss_bytes": peak_rss(),
            }
            if len(states) > 1:
                out["same_tokens_full"] = {"n_tokens": states[1]["n_tokens"], **self._tps(states[1]["times"])}
            return out, probe
        finally:
            self.model.free_context(ctx)
            evictor.close()

    def _add(self, cell: dict) -> None:
        cfg = self.config
        cell["prefill_tokens_per_s"] = cell["n_cached"] / cell["prefill_seconds"]
        cell["evict_share_of_prefill"] = cell["evict_seconds"] / cell["prefill_seconds"]
        cell["evict_cpu_share_of_prefill"] = cell["evict_cpu_seconds"] / cell["prefill_cpu_seconds"]
        if cell["method"] != "full":
            cell["decode_speedup_vs_full"] = cell["decode_tokens_per_s"] / cell["decode_tokens_per_s_full_alongside"]
            cell["decode_cpu_speedup_vs_full"] = (cell["decode_tokens_per_cpu_s"]
                                                  / cell["decode_tokens_per_cpu_s_full_alongside"])
            if "same_tokens_full" in cell:
                same = cell["same_tokens_full"]
                same["compacted_over_full"] = cell["decode_tokens_per_s"] / same["decode_tokens_per_s"]
                same["compacted_over_full_cpu"] = cell["decode_tokens_per_cpu_s"] / same["decode_tokens_per_cpu_s"]
        cell["kv_ratio_used"] = cell["kv_bytes_used"] / cell["kv_bytes_full"]
        cell["kv_ratio_kept"] = cell["kv_bytes_kept"] / cell["kv_bytes_full"]
        cell["threads"] = cfg.threads
        self.cells.append(cell)
        if self.on_cell is not None:
            self.on_cell(self.cells)
