"""The set-up the eviction benchmarks share: one model, two llama.cpp contexts of the same parameters (``full``
never evicts, ``ctx`` runs per-head COMPACT eviction with a ragged keep plan), the vocabulary and one batch.

Imported by the scripts beside it (``scripts/`` is on ``sys.path`` when one of them runs as a script). Nothing runs
at import time.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench_common import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

N_BATCH = 512
PROTECTED_TAIL = 32


def ragged_keep(keep: float, protect: int):
    """Plan: every (layer, KV head) keeps about ``keep`` of its entries (0.75x..1.25x by head), spread evenly over
    the prefix, plus the last ``protect`` entries."""
    def fn(seq_id, layers, uniform):
        for li, lv in enumerate(layers):
            for h in range(lv.n_head_kv):
                n = len(lv.pos[h])
                prefix = max(n - protect, 0)
                share = keep * (0.75 + 0.25 * ((li + h) % 3))
                k = max(0, min(prefix, int(round(share * n)) - (n - prefix)))
                chosen = np.unique(np.linspace(0, prefix - 1, k).astype(np.int64)) if k else np.zeros(0, np.int64)
                lv.set_keep(h, np.concatenate([chosen, np.arange(prefix, n)]))
        return 0
    return fn


def add_decode_arguments(parser: argparse.ArgumentParser, *, n_ctx_fill: int, n_ctx_fill_help: str, n_decode: int,
                         n_decode_help: str) -> None:
    """Add the options of the eviction decode benchmarks: cache fill (``--n-ctx-fill``), decode steps
    (``--n-decode``), keep ratio, threads, and ``--no-flash-attn``; the defaults and help of the first two vary."""
    parser.add_argument("--n-ctx-fill", type=int, default=n_ctx_fill, help=n_ctx_fill_help)
    parser.add_argument("--n-decode", type=int, default=n_decode, help=n_decode_help)
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flash-attn", action="store_true")


@dataclass
class EvictionBench:
    """A model with a full-cache context (``full``) and a COMPACT-evicting one (``ctx``), plus what decoding needs.

    ``callback`` (and ``log_callback``) are the ctypes callbacks handed to the native side; they live as long as
    this object so that they are not garbage-collected while the contexts may call them.
    """

    llama: object
    lib: object
    E: object
    model_path: Path
    llm: object          # audiokv_edge.runtime.llama.LlamaModel owning the model and both contexts
    full: object
    ctx: object
    n_vocab: int
    batch: object
    n_batch: int
    callback: object
    log_callback: object = field(default=None)

    def kv_stats(self, seq_id: int) -> dict:
        """The evicting context's KV accounting of sequence ``seq_id`` (llama_kv_evict_get_stats)."""
        st = self.E.llama_kv_evict_stats()
        self.lib.llama_kv_evict_get_stats(self.ctx, seq_id, ctypes.byref(st))
        return {"n_tokens": st.n_tokens, "n_entries": st.n_entries, "n_entries_full": st.n_entries_full,
                "bytes_used": st.bytes_used, "bytes_kept": st.bytes_kept, "bytes_headroom": st.bytes_headroom}

    def copy_sequence(self, seq_id: int) -> None:
        """Copy sequence ``seq_id`` (its prefilled cache) from ``full`` into ``ctx``."""
        llama = self.llama
        size = llama.llama_state_seq_get_size(self.full, seq_id)
        blob = (ctypes.c_uint8 * size)()
        if llama.llama_state_seq_get_data(self.full, blob, size, seq_id) != size or \
                llama.llama_state_seq_set_data(self.ctx, blob, size, seq_id) != size:
            raise SystemExit(f"copying the prefilled sequence {seq_id} failed")

    def evict(self, seq_id: int) -> None:
        """Evict sequence ``seq_id`` in ``ctx`` now (llama_kv_evict_seq); exits on an error status."""
        rc = self.lib.llama_kv_evict_seq(self.ctx, seq_id)
        if rc != 0:
            raise SystemExit(f"llama_kv_evict_seq({seq_id}): {self.E.status_name(self.lib, rc)}")

    def close(self) -> None:
        """Free the batch, both contexts and the model."""
        self.llama.llama_batch_free(self.batch)
        self.llm.close()


def silence_llama_log(llama) -> object:
    """Route llama.cpp's log to nowhere (it would drown the result); returns the callback, to be kept alive."""
    quiet = llama.llama_log_callback(lambda level, text, data: None)
    llama.llama_log_set(quiet, ctypes.c_void_p())
    return quiet


def open_eviction_bench(*, n_ctx: int, n_seq: int, threads: int, flash_attn: bool, n_headroom: int, keep: float,
                        kv_unified: bool = False, quiet: bool = False) -> EvictionBench:
    """Load SmolLM2-135M-Instruct Q4_1 and create its two contexts (``n_ctx`` cells, ``n_seq`` sequences, batches of
    ``N_BATCH``), the second with COMPACT eviction keeping about ``keep`` of every head (``ragged_keep``, the last
    ``PROTECTED_TAIL`` tokens always) and ``n_headroom`` cells of headroom per head. ``quiet`` silences llama.cpp's
    log first."""
    from audiokv_edge.native import llama_kv_evict as E
    from audiokv_edge.native import libs as native_libs
    from audiokv_edge.runtime.llama import ContextParams, LlamaError, LlamaModel
    from audiokv_edge.testing import real_models

    llama = native_libs.load_llama_cpp().llama_cpp
    lib = E.load_library()
    log_callback = silence_llama_log(llama) if quiet else None

    model_path = real_models.smollm2_q4_1_path()
    cp = ContextParams(n_ctx=n_ctx, n_batch=N_BATCH, n_seq_max=n_seq, n_threads=threads, flash_attn=flash_attn,
                       kv_unified=kv_unified)
    try:
        llm = LlamaModel(model_path)
        full = llm.new_context(cp)  # never evicts: the full-cache baseline
        ctx = llm.new_context(cp)   # COMPACT eviction
    except LlamaError as exc:
        raise SystemExit(str(exc)) from None

    params = lib.llama_kv_evict_default_params()
    params.mode = E.LLAMA_KV_EVICT_MODE_COMPACT
    params.n_headroom = n_headroom
    callback = E.make_callback(ragged_keep(keep, protect=PROTECTED_TAIL))
    params.callback = callback
    rc = lib.llama_kv_evict_init(ctx, params)
    if rc != 0:
        raise SystemExit(f"llama_kv_evict_init: {E.status_name(lib, rc)}")

    return EvictionBench(llama=llama, lib=lib, E=E, model_path=model_path, llm=llm, full=full, ctx=ctx,
                         n_vocab=llm.n_vocab, batch=llama.llama_batch_init(N_BATCH, 0, n_seq),
                         n_batch=N_BATCH, callback=callback, log_callback=log_callback)
