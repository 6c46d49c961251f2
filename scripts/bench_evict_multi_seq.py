#!/usr/bin/env python3
"""Decode speed with two sequences in one context: neither, one or both evicted per head in COMPACT mode.

Two contexts of the real SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 query / 3 KV heads), each holding two
sequences (n_seq_max = 2, one stream per sequence, or ``--unified``): ``full`` never evicts; ``evict`` runs
COMPACT eviction (llama_cpp_ext/). Both sequences get ``--n-ctx-fill`` random tokens (prefilled once in
``full``, copied into ``evict``). Every decode step holds one token of each sequence (the batch of a two-stream
server). Three phases in ``evict``: ``none`` (no eviction yet), ``one`` (sequence 0 evicted at keep ``--keep``,
ragged by head: a batch mixing a compacted and an uncompacted sequence) and ``both`` (sequence 1 evicted too).
Each phase's steps alternate with steps of ``full``; tokens/s (two tokens per step) are 2 / median step time,
and the ratio to ``full``'s median over the same phase is reported. Result: JSON with the machine, versions,
command, per-phase tokens/s, ratios, step times and the KV bytes of each sequence. Example (a few minutes on 2
cores):

  .venv/bin/python scripts/bench_evict_multi_seq.py --n-ctx-fill 4000 --threads 1 --out out/bench_evict_multi_seq.json
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
    add_decode_arguments(parser, n_ctx_fill=4000, n_ctx_fill_help="tokens in each sequence before decoding",
                         n_decode=24, n_decode_help="decode steps per phase (one token per sequence)")
    parser.add_argument("--unified", action="store_true", help="one unified KV cache instead of a stream per sequence")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_evict_multi_seq.json")
    args = parser.parse_args()
    if args.n_ctx_fill < 64 or args.n_decode < 2 or not 0.0 < args.keep <= 1.0 or args.threads < 1:
        raise SystemExit("need --n-ctx-fill >= 64, --n-decode >= 2, 0 < --keep <= 1, --threads >= 1")

    from audiokv_edge.native import libs as native_libs

    n_seq = 2
    bench = open_eviction_bench(n_ctx=n_seq * (args.n_ctx_fill + 3 * args.n_decode + 64), n_seq=n_seq,
                                threads=args.threads, flash_attn=not args.no_flash_attn,
                                n_headroom=3 * args.n_decode + 8, keep=args.keep, kv_unified=args.unified, quiet=True)
    llama, batch, n_batch, n_vocab = bench.llama, bench.batch, bench.n_batch, bench.n_vocab
    full, ctx = bench.full, bench.ctx
    n_past = {}

    def decode(c, parts):
        """One llama_decode holding ``parts[s]`` tokens of sequence s (grouped by sequence)."""
        j = 0
        for s, tokens in parts.items():
            pos = n_past.get((id(c), s), 0)
            for i, t in enumerate(tokens):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = int(t), pos + i, 1
                batch.seq_id[j][0] = s
                batch.logits[j] = i == len(tokens) - 1
                j += 1
            n_past[(id(c), s)] = pos + len(tokens)
        batch.n_tokens = j
        if llama.llama_decode(c, batch) != 0:
            raise SystemExit("llama_decode failed")

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for s in range(n_seq):
        prompt = rng.integers(100, n_vocab - 100, size=args.n_ctx_fill)
        for i in range(0, len(prompt), n_batch):
            decode(full, {s: prompt[i:i + n_batch]})
    prefill_s = time.perf_counter() - t0
    for s in range(n_seq):
        bench.copy_sequence(s)
        n_past[(id(ctx), s)] = n_past[(id(full), s)]

    def phase(name):
        """``n_decode`` steps of one token per sequence, alternating with ``full``; returns the step times."""
        times = {"full": [], name: []}
        tokens = rng.integers(100, n_vocab - 100, size=(args.n_decode + 1, n_seq))
        for i in range(args.n_decode + 1):
            order = (("full", full), (name, ctx)) if i % 2 == 0 else ((name, ctx), ("full", full))
            for key, c in order:
                t0 = time.perf_counter()
                decode(c, {s: [tokens[i, s]] for s in range(n_seq)})
                if i > 0:  # the first step builds the new layout's graph
                    times[key].append(time.perf_counter() - t0)
        return times

    results = {}
    evict_s = {}
    for name, evict in (("none", None), ("one", 0), ("both", 1)):
        if evict is not None:
            t0 = time.perf_counter()
            bench.evict(evict)
            evict_s[f"seq{evict}"] = time.perf_counter() - t0
        times = phase(name)
        tps = n_seq / float(np.median(times[name]))
        tps_full = n_seq / float(np.median(times["full"]))
        results[name] = {"tokens_per_s": tps, "tokens_per_s_full": tps_full, "ratio_to_full": tps / tps_full,
                         "step_seconds": times[name], "step_seconds_full": times["full"],
                         "kv": {f"seq{s}": bench.kv_stats(s) for s in range(n_seq)}}

    report = {
        **header("decode tokens/s with two sequences per context: none, one or both evicted per head (COMPACT)",
                 native_lib_dir=native_libs.lib_dir()),
        "model": f"SmolLM2-135M-Instruct Q4_1 ({bench.model_path.name})",
        "n_ctx_fill_per_sequence": args.n_ctx_fill, "n_decode": args.n_decode, "keep": args.keep,
        "threads": args.threads, "flash_attn": not args.no_flash_attn, "kv_unified": args.unified,
        "prefill_seconds": prefill_s, "evict_seconds": evict_s, "phases": results,
    }
    write_result(args.out, report)
    print(json.dumps({name: {k: round(v, 3) for k, v in r.items() if k in ("tokens_per_s", "tokens_per_s_full",
                                                                            "ratio_to_full")}
                      for name, r in results.items()}, indent=2))

    bench.close()


if __name__ == "__main__":
    main()
