#!/usr/bin/env python3
"""Time the NumPy reference plan() on a realistic shape and write a JSON result.

Default shape: Qwen2.5-Omni-7B (28 layers, 28 query / 4 KV heads, head_dim 128) with 7,500 cached tokens (five
minutes of audio at 25 tokens/s), window 32, keep 0.4, random float32 queries and keys. Example:
  .venv/bin/python scripts/bench_plan.py --out out/bench_plan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ALL_METHODS = ["full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv"]


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count()}
    try:
        info["loadavg_1min_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    return info


def versions() -> dict:
    import scipy

    import audiokv_edge

    out = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "audiokv_edge": audiokv_edge.__version__}
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001  (best effort: the config layout varies across numpy versions)
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=28)
    parser.add_argument("--n-head", type=int, default=28)
    parser.add_argument("--n-head-kv", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--n-tokens", type=int, default=7500)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_plan.json")
    args = parser.parse_args()

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from audiokv_edge import HeadProfile, plan
    from audiokv_edge.scoring import window_scores

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
        "benchmark": "bench_plan",
        "what": "wall time of audiokv_edge.plan(backend='numpy') per method, random float32 inputs",
        "command": " ".join([sys.executable] + sys.argv),
        "shape": {"n_layer": args.n_layer, "n_head": args.n_head, "n_head_kv": args.n_head_kv,
                  "head_dim": args.head_dim, "n_tokens": args.n_tokens, "window": args.window, "keep": args.keep},
        "repeats": args.repeats,
        "results": results,
        "window_scores_s": window_scores_s,
        "machine": machine_info(),
        "versions": versions(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                        if k in os.environ},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
