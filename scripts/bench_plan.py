#!/usr/bin/env python3
"""Time the NumPy reference plan() on a realistic shape and write a JSON result.

Default shape: Qwen2.5-Omni-7B (28 layers, 28 query / 4 KV heads, head_dim 128) with 7,500 cached tokens (five
minutes of audio at 25 tokens/s), window 32, keep 0.4, random float32 queries and keys. Example:
  .venv/bin/python scripts/bench_plan.py --out out/bench_plan.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import REPO, add_plan_shape_arguments, header, plan_shape, write_result

ALL_METHODS = ["full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_plan_shape_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_plan.json")
    args = parser.parse_args()

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from audiokv_edge import HeadProfile, plan
    from audiokv_edge.reference.scores import window_scores

    rng = np.random.default_rng(args.seed)
    w = min(args.window, args.n_tokens)
    q = rng.standard_normal((args.n_layer, args.n_head, w, args.head_dim), dtype=np.float32)
    keys = rng.standard_normal((args.n_layer, args.n_head_kv, args.n_tokens, args.head_dim), dtype=np.float32)
    profile = HeadProfile(rng.random((args.n_layer, args.n_head_kv)))

    results = {}
    for method in args.methods:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            p = plan(method, q, keys, args.keep, profile, window=args.window)
            times.append(time.perf_counter() - t0)
        results[method] = {"seconds": times, "median_s": float(np.median(times)), "kept_total": p.kept_total}
        print(f"{method:13s} median {np.median(times):7.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})",
              flush=True)
    t0 = time.perf_counter()
    window_scores(q, keys)
    window_scores_s = time.perf_counter() - t0
    print(f"window scores alone (softmax of the window over all layers): {window_scores_s:.3f} s")

    report = {
        **header("bench_plan", modules=("scipy",)),
        "what": "wall time of audiokv_edge.plan(backend='numpy') per method, random float32 inputs",
        "shape": plan_shape(args),
        "repeats": args.repeats,
        "results": results,
        "window_scores_s": window_scores_s,
    }
    write_result(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
