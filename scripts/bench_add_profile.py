#!/usr/bin/env python3
"""Time and peak memory of writing a head profile into a GGUF with convert/add_profile.py.

    python scripts/bench_add_profile.py --model qwen2.5-coder-1.5b-q4_k_m.gguf --out-dir /tmp/bench -o result.json
    python scripts/bench_add_profile.py --synthetic-mib 1100 --out-dir /tmp/bench -o result.json

Each repeat runs the converter as a child process (random profile of the model's shape) and records its wall time
and peak resident memory (ru_maxrss of that child). The result JSON holds the machine, versions, commands and
numbers. The page cache is not dropped: after the first repeat the input is read from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench_common import REPO, header, run_child, write_result  # puts the checkout on sys.path

from audiokv_edge.profile.gguf_keys import model_shape, open_gguf
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.side_file import save_profile_file


def synthetic_model(path: str, mib: int) -> None:
    """A qwen2-shaped GGUF (28 layers, 2 KV heads) whose tensors total about ``mib`` MiB of random bytes."""
    from gguf import GGUFWriter
    w = GGUFWriter(path, "qwen2")
    w.add_block_count(28)
    w.add_head_count(12)
    w.add_head_count_kv(2)
    n_tensor = 28 * 4
    per = (mib << 20) // n_tensor // 4
    rng = np.random.default_rng(0)
    block = rng.standard_normal(per).astype(np.float32)
    for i in range(n_tensor):
        w.add_tensor_info(f"blk.{i // 4}.t{i % 4}.weight", (per,), np.dtype(np.float32), per * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i in range(n_tensor):
        w.write_tensor_data(block)
    w.close()


def run_once(cmd: list[str], timeout: float) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of the converter run as a child process."""
    child = run_child(cmd, timeout)
    if child["timed_out"]:
        raise SystemExit(f"converter killed after {timeout:g} s")
    if child["exit_code"] != 0:
        raise SystemExit(f"converter failed ({child['exit_code']}): {child['stderr'].strip()}")
    return child["wall_s"], child["child_maxrss_bytes"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="input GGUF")
    src.add_argument("--synthetic-mib", type=int, help="generate a synthetic qwen2-shaped GGUF of this size")
    ap.add_argument("--out-dir", required=True, help="where the profile and the output GGUF go (deleted after)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one converter run may take")
    ap.add_argument("-o", "--output", required=True, help="result JSON")
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    model = args.model
    if model is None:
        model = os.path.join(args.out_dir, "synthetic.gguf")
        synthetic_model(model, args.synthetic_mib)
    shape = model_shape(open_gguf(model))
    rng = np.random.default_rng(0)
    prof = HeadProfile(rng.random((shape.n_layer, shape.n_head_kv)) + 0.01,
                       source={"calibration": "benchmark: random scores"})
    pj = os.path.join(args.out_dir, "bench_profile.json")
    save_profile_file(pj, prof)
    out = os.path.join(args.out_dir, "bench_out.gguf")
    cmd = [sys.executable, str(REPO / "convert" / "add_profile.py"), model, pj, "-o", out, "--no-progress"]
    runs = []
    for _ in range(args.repeats):
        sec, rss = run_once(cmd, args.timeout)
        runs.append({"seconds": round(sec, 3), "peak_rss_bytes": rss})
        os.unlink(out)
    size = os.path.getsize(model)
    result = {
        **header("add_profile", modules=("gguf",)),
        "converter_command": " ".join(cmd),
        "input": {"path": model, "bytes": size, "synthetic": args.model is None, "arch": shape.arch,
                  "n_layer": shape.n_layer, "n_head_kv": shape.n_head_kv},
        "runs": runs,
        "median_seconds": float(np.median([r["seconds"] for r in runs])),
        "max_peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "median_throughput_mb_s": round(size / 1e6 / float(np.median([r["seconds"] for r in runs])), 1),
        "notes": "page cache not dropped; the converter reads the input once and re-reads the output to verify",
    }
    write_result(Path(args.output), result)
    print(json.dumps({k: result[k] for k in ("median_seconds", "max_peak_rss_bytes", "median_throughput_mb_s")}))
    if model.endswith("synthetic.gguf"):
        os.unlink(model)
    os.unlink(pj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
