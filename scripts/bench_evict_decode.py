#!/usr/bin/env python3
"""Decode speed with a long cache: full cache vs. per-head COMPACT eviction at keep 0.4, side by side.

A context of the real SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 query / 3 KV heads) is filled with
``--n-ctx-fill`` random tokens (prefilled once) and the sequence is copied into a second context, which evicts it
per (layer, KV head) in COMPACT mode (patches/0002) keeping about ``--keep`` of every head (ragged: 0.75x-1.25x of
``keep`` by head; the last 32 tokens are kept). Then ``--n-decode`` single-token decodes alternate between the
full-cache context and the evicted one; tokens/s are 1 / median step time (robust on a shared machine). Result: JSON with tokens/s of both phases, their ratio, the KV bytes in
use before and after, the machine, the versions and the command. Example (about 3-5 minutes on 2 cores):

  .venv/bin/python scripts/bench_evict_decode.py --out out/bench_evict_decode.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import REPO, header, write_result

sys.path.insert(0, str(REPO))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-ctx-fill", type=int, default=8000, help="tokens in the cache before decoding")
    parser.add_argument("--n-decode", type=int, default=32, help="tokens decoded per phase")
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flash-attn", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_evict_decode.json")
    args = parser.parse_args()

    from audiokv_edge import llama_evict_cpp as E
    from audiokv_edge import native_libs, real_models

    llama = native_libs.load_llama_cpp().llama_cpp
    lib = E.load_library()
    llama.llama_backend_init()

    model_path = real_models.smollm2_q4_1_path()
    model = llama.llama_model_load_from_file(str(model_path).encode(), llama.llama_model_default_params())
    cp = llama.llama_context_default_params()
    n_batch = 512
    cp.n_ctx = args.n_ctx_fill + 2 * args.n_decode + 64
    cp.n_batch = cp.n_ubatch = n_batch
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = args.threads
    cp.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED if args.no_flash_attn else llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
    full = llama.llama_init_from_model(model, cp)  # never evicts: the full-cache baseline
    ctx = llama.llama_init_from_model(model, cp)   # COMPACT eviction
    if not full or not ctx:
        raise SystemExit("could not create the contexts")

    params = lib.llama_kv_evict_default_params()
    params.mode = E.LLAMA_KV_EVICT_MODE_COMPACT
    params.n_headroom = args.n_decode + 8
    callback = E.make_callback(ragged_keep(args.keep, protect=32))
    params.callback = callback
    rc = lib.llama_kv_evict_init(ctx, params)
    if rc != 0:
        raise SystemExit(f"llama_kv_evict_init: {E.status_name(lib, rc)}")

    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    batch = llama.llama_batch_init(n_batch, 0, 1)
    n_past = {}

    def decode(c, tokens):
        pos = n_past.get(id(c), 0)
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = int(t), pos + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        if llama.llama_decode(c, batch) != 0:
            raise SystemExit("llama_decode failed")
        n_past[id(c)] = pos + len(tokens)
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(c, len(tokens) - 1), shape=(n_vocab,)).copy()

    def stats():
        st = E.llama_kv_evict_stats()
        lib.llama_kv_evict_get_stats(ctx, 0, ctypes.byref(st))
        return {"n_tokens": st.n_tokens, "n_entries": st.n_entries, "n_entries_full": st.n_entries_full,
                "bytes_used": st.bytes_used, "bytes_kept": st.bytes_kept, "bytes_headroom": st.bytes_headroom}

    # prefill once, then copy the sequence into the evicting context
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, n_vocab - 100, size=args.n_ctx_fill)
    t0 = time.perf_counter()
    for i in range(0, len(prompt), n_batch):
        last = decode(full, prompt[i:i + n_batch])
    prefill_s = time.perf_counter() - t0
    size = llama.llama_state_seq_get_size(full, 0)
    blob = (ctypes.c_uint8 * size)()
    if llama.llama_state_seq_get_data(full, blob, size, 0) != size or \
            llama.llama_state_seq_set_data(ctx, blob, size, 0) != size:
        raise SystemExit("copying the prefilled sequence failed")
    n_past[id(ctx)] = n_past[id(full)]
    del blob

    token = int(np.argmax(last))
    decode(full, [token])
    decode(ctx, [token])  # captures a window query (the plan here does not score, it only sizes)
    stats_full = stats()
    t0 = time.perf_counter()
    rc = lib.llama_kv_evict_seq(ctx, 0)
    evict_s = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"llama_kv_evict_seq: {E.status_name(lib, rc)}")
    stats_kept = stats()

    # alternate single-token decodes between the two contexts; medians resist the load of a shared machine
    times = {"full": [], "keep": []}
    tokens = rng.integers(100, n_vocab - 100, size=args.n_decode + 1)
    for i in range(args.n_decode + 1):
        order = (("full", full), ("keep", ctx)) if i % 2 == 0 else (("keep", ctx), ("full", full))
        for name, c in order:
            t0 = time.perf_counter()
            decode(c, [tokens[i]])
            if i > 0:  # the first step builds the new layout's graph
                times[name].append(time.perf_counter() - t0)
    tps_full = 1.0 / float(np.median(times["full"]))
    tps_kept = 1.0 / float(np.median(times["keep"]))

    report = {
        **header("decode tokens/s, full cache vs per-head COMPACT eviction", native_lib_dir=native_libs.lib_dir()),
        "model": f"SmolLM2-135M-Instruct Q4_1 ({model_path.name})",
        "n_ctx_fill": args.n_ctx_fill, "n_decode": args.n_decode, "keep": args.keep, "threads": args.threads,
        "flash_attn": not args.no_flash_attn, "prefill_seconds": prefill_s, "evict_seconds": evict_s,
        "decode_tokens_per_s_full": tps_full, "decode_tokens_per_s_keep": tps_kept,
        "speedup": tps_kept / tps_full, "decode_seconds_full": times["full"], "decode_seconds_keep": times["keep"],
        "kv_full": stats_full, "kv_after_eviction": stats_kept,
    }
    write_result(args.out, report)
    print(json.dumps({k: report[k] for k in ("decode_tokens_per_s_full", "decode_tokens_per_s_keep", "speedup",
                                             "prefill_seconds", "evict_seconds")}, indent=2))

    llama.llama_batch_free(batch)
    llama.llama_free(ctx)
    llama.llama_free(full)
    llama.llama_model_free(model)


if __name__ == "__main__":
    main()
