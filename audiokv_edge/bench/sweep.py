"""The measurements of ``python -m audiokv_edge.bench``: per cached length, a full-cache context and, per method and
keep ratio, a context evicted per (layer, KV head) by libaudiokv's callback (COMPACT mode), decoded side by side.

Per cached length N:

1. the cache is filled with N - P tokens, P = ``probe`` (the prefill probe): by a real prefill of random tokens
   (``fill="prefill"``) or by loading a synthetic sequence state of random keys and values (``fill="synthetic"``,
   :mod:`audiokv_edge.bench.kv_fill`: what is measured does not depend on the cached values, and a 32k-token prefill
   of a 7B model takes hours on two cores); then P random tokens are decoded as one batch (the last 32 are the
   observation window the methods score with). Prefill time: measured (``prefill``), or projected from the probe's
   time at depth 0 and at depth N - P, linear in depth (``synthetic``);
2. the full-cache context decodes ``n_decode`` single tokens (its decode tokens/s);
3. per (method, keep): a new context gets the same N - P tokens (the full context's saved state) and the same
   probe, evicts (timed: eviction time / prefill time), then its single-token decodes alternate with the full
   context's (the ratio comes from the same moments of a shared machine). With ``same_tokens_keep`` a third
   context holding round(keep x N) tokens, never evicted, joins the alternation of the cells at that keep: a
   compacted cache vs a full cache of the same size (what the ragged per-head layout costs).

Tokens/s of decoding are 1 / median step time. Memory: KV bytes from llama.cpp's per-sequence statistics (in use,
with the pools' headroom and the main-cache cells, and kept), the process's resident set before and after each
context (Linux /proc; elsewhere only the peak) and its peak.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from audiokv_edge.bench.kv_fill import CacheLayout, load_state, saved_state, synthetic_state

logger = logging.getLogger(__name__)

__all__ = ["FILLS", "SweepConfig", "Sweep", "current_rss", "peak_rss"]

#: How the cache is filled: a real prefill, or a synthetic sequence state.
FILLS = ("prefill", "synthetic")
#: Tokens decoded per batch in a real prefill.
PREFILL_BATCH = 512
#: ggml type ids of the KV cache types the benchmark takes.
KV_TYPES = {"f16": 1, "q8_0": 8}


def current_rss() -> int | None:
    """Resident set size of this process in bytes (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


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
        rss0 = current_rss()
        self.model = LlamaModel(self.model_path)
        self.model_rss = None if rss0 is None else current_rss() - rss0
        try:
            for n in self.config.lengths:
                cells = [c for c in todo if c[0] == n]
                if cells:
                    self._length(n, cells)
        finally:
            self.model.close()
        return self.cells

    def _layout(self) -> CacheLayout:
        m = self.model
        arch = m.meta("general.architecture")
        head_k = int(m.meta(f"{arch}.attention.key_length") or m.n_embd // m.n_head)
        head_v = int(m.meta(f"{arch}.attention.value_length") or head_k)
        t = KV_TYPES[self.config.kv_type]
        return CacheLayout(m.n_layer, m.n_head_kv * head_k, m.n_head_kv * head_v, t, t, not self.config.flash_attn)

    def _params(self, n_ctx: int):
        from audiokv_edge.runtime.llama import ContextParams

        t = KV_TYPES[self.config.kv_type]
        return ContextParams(n_ctx=n_ctx, n_batch=min(PREFILL_BATCH, n_ctx), n_threads=self.config.threads,
                             flash_attn=self.config.flash_attn, type_k=t, type_v=t)

    def _tokens(self, n: int, salt: int) -> list[int]:
        rng = np.random.default_rng([self.config.seed, salt])
        return [int(t) for t in rng.integers(100, self.model.n_vocab - 100, size=n)]

    def _decode(self, ctx, tokens: list[int], pos0: int) -> float:
        """Decode ``tokens`` at ``pos0..`` (batches of :data:`PREFILL_BATCH`); returns the seconds it took."""
        t0 = time.perf_counter()
        self.model.decode_tokens(ctx, tokens, pos0, PREFILL_BATCH)
        return time.perf_counter() - t0

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
    def _tps(times: list[float]) -> float:
        return 1.0 / float(np.median(times))

    def _length(self, n: int, cells: list[tuple[int, str, float]]) -> None:
        cfg, llama = self.config, self.model.lc
        base = n - cfg.probe
        margin = cfg.probe + (cfg.n_decode + 1) * (1 + len(cfg.methods) * len(cfg.keeps)) + 16  # decoded after it
        layout = self._layout()
        probe_tokens = self._tokens(cfg.probe, 2)
        self._say(f"{n} cached: full cache")

        rss_before = current_rss()
        full = self.model.new_context(self._params(n + margin))
        if cfg.fill == "prefill":
            prefill_base_s = self._decode(full, self._tokens(base, 1), 0)
            blob = saved_state(llama, full)
        else:
            blob = synthetic_state(layout, base, seed=cfg.seed)
            load_state(llama, full, blob)
            prefill_base_s = None
        probe_s = self._decode(full, probe_tokens, base)
        if cfg.fill == "prefill":
            prefill_s, prefill_source = prefill_base_s + probe_s, "measured"
        else:
            probe0_s = self._probe_at_zero(probe_tokens)
            prefill_s = n / cfg.probe * (probe0_s + probe_s) / 2.0
            prefill_source = (f"projected: {n} / {cfg.probe} probes x the mean of a {cfg.probe}-token batch at depth "
                              f"0 ({probe0_s:.3f} s) and at depth {base} ({probe_s:.3f} s)")
        full_state = {"ctx": full, "pos": n, "times": []}
        self._alternate([full_state])
        full_rss = None if rss_before is None else current_rss() - rss_before
        kv_full = n * layout.bytes_per_token()
        common = {"n_cached": n, "fill": cfg.fill, "prefill_seconds": prefill_s, "prefill_source": prefill_source,
                  "prefill_tokens_per_s": n / prefill_s, "probe_seconds_at_depth": probe_s,
                  "kv_bytes_full": kv_full, "kv_bytes_per_token": layout.bytes_per_token(),
                  "model_rss_bytes": self.model_rss}
        if (n, "full", 1.0) in cells:
            self._add({**common, "method": "full", "keep": 1.0, "kv_bytes_used": kv_full, "kv_bytes_kept": kv_full,
                       "decode_tokens_per_s": self._tps(full_state["times"]), "context_rss_bytes": full_rss,
                       "evict_seconds": 0.0, "evict_share_of_prefill": 0.0, "peak_rss_bytes": peak_rss()})

        small = None
        for _, method, keep in cells:
            if method == "full":
                continue
            self._say(f"{n} cached: {method} keep {keep:g}")
            states = [full_state]
            if cfg.same_tokens_keep is not None and abs(keep - cfg.same_tokens_keep) < 1e-9:
                if small is None:
                    small = self._full_of(int(round(keep * n)), layout, probe_tokens)
                states.append(small)
            cell = self._evicted(n, method, keep, blob, probe_tokens, states, margin)
            self._add({**common, **cell})
        self.model.free_context(full)
        if small is not None:
            self.model.free_context(small["ctx"])

    def _say(self, text: str) -> None:
        logger.info("%s", text)
        if self.progress is not None:
            self.progress(text)

    def _probe_at_zero(self, probe_tokens: list[int]) -> float:
        """Seconds of the probe batch decoded into an empty context (the first prefill chunk)."""
        if not hasattr(self, "_probe0"):
            ctx = self.model.new_context(self._params(self.config.probe + 16))  # weights paged in by the fill
            self._probe0 = self._decode(ctx, probe_tokens, 0)
            self.model.free_context(ctx)
        return self._probe0

    def _full_of(self, n: int, layout: CacheLayout, probe_tokens: list[int]) -> dict:
        """A never-evicted context holding ``n`` tokens (filled as the full one), for the same-size comparison."""
        cfg = self.config
        ctx = self.model.new_context(self._params(n + cfg.probe + (cfg.n_decode + 1) * len(cfg.methods) + 16))
        base = n - cfg.probe
        if cfg.fill == "prefill":
            self._decode(ctx, self._tokens(base, 1), 0)
        else:
            load_state(self.model.lc, ctx, synthetic_state(layout, base, seed=cfg.seed))
        self._decode(ctx, probe_tokens, base)
        return {"ctx": ctx, "pos": n, "times": [], "n_tokens": n}

    def _evicted(self, n: int, method: str, keep: float, blob, probe_tokens, states: list[dict],
                 margin: int) -> dict:
        from audiokv_edge.runtime.kv_eviction import KEEP_FROM_CONFIG, KeepChoice, KVEvictor

        cfg, llama = self.config, self.model.lc
        rss_before = current_rss()
        ctx = self.model.new_context(self._params(n + margin))
        evictor = KVEvictor(self.model.model, ctx, method=method, keep=KeepChoice(keep, KEEP_FROM_CONFIG),
                            n_threads=cfg.threads, n_ctx=n + margin, n_headroom=cfg.n_decode + 16,
                            label=str(self.model_path))
        try:
            load_state(llama, ctx, blob)
            self._decode(ctx, probe_tokens, n - cfg.probe)
            record = evictor.evict(n_past=n)
            mine = {"ctx": ctx, "pos": n, "times": []}
            self._alternate([mine] + states)
            out = {
                "method": method, "keep": keep, "kv_bytes_used": record.bytes_used_after,
                "kv_bytes_kept": record.bytes_kept_after, "kv_bytes_headroom": record.bytes_headroom_after,
                "kv_bytes_before": record.bytes_used_before, "kept_entries": record.entries_after,
                "entries_full": record.entries_before,
                "decode_tokens_per_s": self._tps(mine["times"]),
                "decode_tokens_per_s_full_alongside": self._tps(states[0]["times"]),
                "evict_seconds": record.ms / 1e3, "context_rss_bytes": None if rss_before is None
                else current_rss() - rss_before, "peak_rss_bytes": peak_rss(),
            }
            if len(states) > 1:
                out["same_tokens_full"] = {"n_tokens": states[1]["n_tokens"],
                                           "decode_tokens_per_s": self._tps(states[1]["times"])}
            return out
        finally:
            self.model.free_context(ctx)
            evictor.close()

    def _add(self, cell: dict) -> None:
        cfg = self.config
        if cell["method"] != "full":
            cell["decode_speedup_vs_full"] = cell["decode_tokens_per_s"] / cell["decode_tokens_per_s_full_alongside"]
            cell["evict_share_of_prefill"] = cell["evict_seconds"] / cell["prefill_seconds"]
            if "same_tokens_full" in cell:
                cell["same_tokens_full"]["compacted_over_full"] = (
                    cell["decode_tokens_per_s"] / cell["same_tokens_full"]["decode_tokens_per_s"])
        cell["kv_ratio_used"] = cell["kv_bytes_used"] / cell["kv_bytes_full"]
        cell["kv_ratio_kept"] = cell["kv_bytes_kept"] / cell["kv_bytes_full"]
        cell["threads"] = cfg.threads
        self.cells.append(cell)
        if self.on_cell is not None:
            self.on_cell(self.cells)
