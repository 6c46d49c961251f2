#!/usr/bin/env python3
"""Write the golden keep plans tests/data/golden_*.npz from the NumPy reference (fixed seeds).

Each file holds one input set and the plans of a list of (method, keep, params) cases:
  q_window float32 [L, H, w, d], keys float32 [L, Hkv, N, d], profile float64 [L, Hkv],
  cases: JSON list of {"method", "keep", "params"} (n_case entries), counts int16 [n_case, L, Hkv] and
  indices int16 [counts.sum()]: the kept indices of case 0, (layer 0, KV head 0), (0, 1), ..., then case 1, ...
The C parity tests read the same files. Regenerate only on a deliberate change of docs/semantics.md:
  .venv/bin/python scripts/make_golden.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

CASES = [
    ("full", {}), ("streamingllm", {}), ("streamingllm", {"n_sink": 0}), ("h2o", {}), ("h2o", {"gqa_reduce": "max"}),
    ("snapkv", {}), ("snapkv", {"pool_kernel": 7, "pool_type": "max"}), ("snapkv", {"gqa_reduce": "max"}),
    ("pyramidkv", {}), ("pyramidkv", {"beta": 2}), ("adakv", {}), ("adakv", {"safeguard": 0.5}),
    ("audiokv", {}), ("audiokv", {"sss_alpha": 1.0, "sss_gamma": 0.3}), ("audiokv", {"sss_alpha": 0.0}),
    ("audiokv", {"uniform_share": 0.0}), ("audiokv", {"sss_taper": 0.0}), ("audiokv", {"redistribute_surplus": False}),
]
KEEPS = [0.1, 0.4, 0.75]
# name -> (n_layer, n_head, n_head_kv, n_tokens, window, head_dim, seed, kind)
INPUTS = {
    "golden_seed0": (2, 4, 2, 48, 8, 4, 0, "random"),
    "golden_gqa3": (3, 6, 2, 60, 8, 4, 1, "random"),
    "golden_ties": (2, 2, 2, 40, 4, 4, 2, "ties"),
}


def make_inputs(n_layer, n_head, n_head_kv, n_tokens, window, head_dim, seed, kind):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_layer, n_head, window, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_layer, n_head_kv, n_tokens, head_dim)).astype(np.float32)
    if kind == "ties":  # runs of identical keys: many exactly equal scores, ties broken by the lower index
        k = np.repeat(k[:, :, ::4], 4, axis=2)[:, :, :n_tokens].copy()
    profile = rng.random((n_layer, n_head_kv)) ** 3
    profile.flat[-1] += 4.0  # one dominant head: exercises the redistribution above N at high keep
    return q, k, profile


def build(name: str) -> dict:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from audiokv_edge import HeadProfile, plan

    spec = INPUTS[name]
    q, k, profile = make_inputs(*spec)
    window = spec[4]
    out = {"q_window": q, "keys": k, "profile": profile}
    cases, counts, indices = [], [], []
    for method, params in CASES:
        for keep in KEEPS:
            p = plan(method, q, k, keep, HeadProfile(profile), window=window, **params)
            cases.append({"method": method, "keep": keep, "params": dict(params, window=window)})
            counts.append(p.budgets)
            indices.append(p.flat_indices())
    out["cases"] = np.array(json.dumps(cases))
    out["counts"] = np.array(counts, dtype=np.int16)
    out["indices"] = np.concatenate(indices).astype(np.int16)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in INPUTS:
        path = args.out_dir / f"{name}.npz"
        np.savez_compressed(path, **build(name))
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
