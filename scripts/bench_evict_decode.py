#!/usr/bin/env python3
"""Decode speed with a long cache: full cache vs. per-head COMPACT eviction at keep 0.4, side by side.

A context of the real SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 query / 3 KV heads) is filled with
``--n-ctx-fill`` random tokens (prefilled once) and the sequence is copied into a second context, which evicts it
per (layer, KV head) in COMPACT mode (llama_cpp_ext/) keeping about ``--keep`` of every head (ragged: 0.75x-1.25x of
``keep`` by head; the last 32 tokens are kept). Then ``--n-decode`` single-token decodes alternate between the
full-cache context and the evicted one; tokens/s are 1 / median step time (robust on a shared machine). Result: JSON with tokens/s of both phases, their ratio, the KV bytes in
use before and after, the machine, the versions and the command. Example (about 3-5 minutes on 2 cores):

  .venv/bin/python scripts/bench_evict_decode.py --out out/bench_evict_decode.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_common import REPO, header, write_result
from bench_llama import add_decode_arguments, open_eviction_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decode_arguments(parser, n_ctx_fill=8000, n_ctx_fill_help="tokens in the cache before decoding",
                         n_decode=32, n_decode_help="tokens decoded per phase")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_evict_decode.json")
    args = parser.parse_args()

    from audiokv_edge.native import libs as native_libs

    bench = open_eviction_bench(n_ctx=args.n_ctx_fill + 2 * args.n_decode + 64, n_seq=1, threads=args.threads,
                                flash_attn=not args.no_flash_attn, n_headroom=args.n_decode + 8, keep=args.keep)
    llama, batch, n_batch, n_vocab = bench.llama, bench.batch, bench.n_batch, bench.n_vocab
    full, ctx = bench.full, bench.ctx
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

    # prefill once, then copy the sequence into the evicting context
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, n_vocab - 100, size=args.n_ctx_fill)
    t0 = time.perf_counter()
    for i in range(0, len(prompt), n_batch):
        last = decode(full, prompt[i:i + n_batch])
    prefill_s = time.perf_counter() - t0
    bench.copy_sequence(0)
    n_past[id(ctx)] = n_past[id(full)]

    token = int(np.argmax(last))
    decode(full, [token])
    decode(ctx, [token])  # captures a window query (the plan here does not score, it only sizes)
    stats_full = bench.kv_stats(0)
    t0 = time.perf_counter()
    bench.evict(0)
    evict_s = time.perf_counter() - t0
    stats_kept = bench.kv_stats(0)

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
        "model": f"SmolLM2-135M-Instruct Q4_1 ({bench.model_path.name})",
        "n_ctx_fill": args.n_ctx_fill, "n_decode": args.n_decode, "keep": args.keep, "threads": args.threads,
        "flash_attn": not args.no_flash_attn, "prefill_seconds": prefill_s, "evict_seconds": evict_s,
        "decode_tokens_per_s_full": tps_full, "decode_tokens_per_s_keep": tps_kept,
        "speedup": tps_kept / tps_full, "decode_seconds_full": times["full"], "decode_seconds_keep": times["keep"],
        "kv_full": stats_full, "kv_after_eviction": stats_kept,
    }
    write_result(args.out, report)
    print(json.dumps({k: report[k] for k in ("decode_tokens_per_s_full", "decode_tokens_per_s_keep", "speedup",
                                             "prefill_seconds", "evict_seconds")}, indent=2))

    bench.close()


if __name__ == "__main__":
    main()
