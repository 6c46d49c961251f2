"""``python -m audiokv_edge.bench``: KV-cache eviction methods x keep ratios x cached lengths on one model.

Writes ``<out-dir>/<machine>/<date>-<model>.json`` (the machine, versions, command, configuration, seeds and one
record per cell), the same name ``.md`` (a table) and ``.png`` (decode speed and KV bytes against keep). A run
interrupted and started again with the same options resumes: the cells already in the JSON are kept.

Examples::

    python -m audiokv_edge.bench MODEL.gguf --lengths 2048,8192
    python -m audiokv_edge.bench --shape qwen2.5-omni-7b --methods audiokv,snapkv --keeps 1,0.4 \\
        --lengths 8192,32768 --kv-type q8_0 --memory-minutes 5,15,30,60
    python -m audiokv_edge.bench --smoke      # a tiny model, seconds: what CI runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time

logger = logging.getLogger("audiokv_edge.bench")

#: Audio tokens per second of the Qwen2.5-Omni / Qwen2-Audio projector (the memory table's default).
QWEN_AUDIO_TOKENS_PER_S = 25.0
#: Model-file bytes x cached tokens above which ``--fill auto`` loads a synthetic state instead of prefilling
#: (SmolLM2-135M at 8k tokens prefills; a 7B model at 2k does not).
AUTO_PREFILL_LIMIT = 2e12


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    from audiokv_edge.bench.sweep import FILLS, KV_TYPES

    p = argparse.ArgumentParser(prog="python -m audiokv_edge.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", type=pathlib.Path, help="a GGUF text model (or --shape, or --smoke)")
    p.add_argument("--shape", help="a real model's shape, written with random weights into --cache-dir: "
                   "qwen2.5-omni-7b, qwen2.5-omni-3b, voxtral-mini-3b, ultravox-v0.5-llama-3.2-1b, gemma-4-e2b")
    p.add_argument("--cache-dir", type=pathlib.Path, help="where --shape models are written "
                   "(default $AUDIOKV_EDGE_CACHE/shapes, ~/.cache/audiokv-edge/shapes)")
    p.add_argument("--methods", default="audiokv,snapkv", help="evicting methods, comma-separated")
    p.add_argument("--keeps", default="1,0.8,0.6,0.4,0.2", help="keep ratios, comma-separated (1: the full cache)")
    p.add_argument("--lengths", default="2048,8192", help="cached tokens, comma-separated")
    p.add_argument("--fill", choices=("auto",) + FILLS, default="auto",
                   help="prefill random tokens, or load a synthetic state of random keys and values (auto: "
                   "synthetic when a real prefill would take long)")
    p.add_argument("--n-decode", type=int, default=8, help="timed single-token decodes per context")
    p.add_argument("--probe", type=int, default=64, help="tokens decoded as one batch on top of the fill")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--no-flash-attn", action="store_true")
    p.add_argument("--kv-type", choices=tuple(KV_TYPES), default="f16")
    p.add_argument("--same-tokens-keep", default="0.4",
                   help="at this keep also decode a full cache of keep x N tokens side by side ('none': skip)")
    p.add_argument("--memory-minutes", default="", help="also project model + KV + buffers for recordings of "
                   "these lengths in minutes, full vs --stream (e.g. 5,15,30,60)")
    p.add_argument("--memory-keep", type=float, default=0.4)
    p.add_argument("--audio-tokens-per-s", type=float, default=QWEN_AUDIO_TOKENS_PER_S)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("results"))
    p.add_argument("--machine", help="the results folder's name (default: <os>-<arch>-<cpus>cpu)")
    p.add_argument("--name", help="the result files' model name (default: the model file's, or the shape's)")
    p.add_argument("--smoke", action="store_true", help="a tiny random model, two short lengths, two keeps")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: write the table, plot and memory projection of the cells measured so far")
    return p


def machine_name() -> str:
    return f"{platform.system().lower()}-{platform.machine().lower()}-{os.cpu_count()}cpu"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"audiokv-bench: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


def _model(args, work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None, str]:
    """The model file, its projector (None when not known) and the name results are filed under."""
    from audiokv_edge.testing import tiny_models

    if args.smoke:
        model, mmproj = tiny_models.write_tiny_pair(work, "qwen2-qwen2a")
        return model, mmproj, "tiny-qwen2-qwen2a"
    if args.shape:
        cache = args.cache_dir or pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE")
                                               or pathlib.Path.home() / ".cache" / "audiokv-edge") / "shapes"
        model, mmproj = tiny_models.real_shape_pair(cache, args.shape, audio=bool(args.memory_minutes))
        return model, mmproj, f"{args.shape}-shape-q4_0"
    if args.model is None:
        raise ValueError("give a GGUF model, --shape NAME or --smoke")
    if not args.model.is_file():
        raise ValueError(f"{args.model}: no such model file")
    return args.model, None, args.model.stem


def _measure(sweep, save, *, progress: bool) -> None:
    """Run ``sweep``, saving after each cell, with a progress bar on stderr."""
    total = len([c for c in sweep.plan() if c not in sweep.done()])
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="cell", file=sys.stderr)
        sweep.progress = lambda text: (bar.set_description(text), bar.update(0))
        sweep.on_cell = lambda cells_now: (save(cells_now), bar.update(1))
    try:
        sweep.run()
    finally:
        if bar is not None:
            bar.close()


def _run(args) -> int:
    from audiokv_edge.bench import header as bench_header
    from audiokv_edge.bench import report
    from audiokv_edge.bench.sweep import Sweep, SweepConfig

    if args.smoke:
        args.lengths, args.keeps, args.n_decode, args.probe, args.threads = "256,512", "1,0.4", 2, 32, 1
        args.memory_minutes = args.memory_minutes or "1,5"
    with tempfile.TemporaryDirectory(prefix="audiokv-bench-") as work:
        model, mmproj, name = _model(args, pathlib.Path(work))
        name = args.name or name
        lengths = _ints(args.lengths)
        fill = args.fill
        if fill == "auto":
            fill = "synthetic" if model.stat().st_size * max(lengths) > AUTO_PREFILL_LIMIT else "prefill"
        same = None if args.same_tokens_keep.lower() == "none" else float(args.same_tokens_keep)
        config = SweepConfig(methods=tuple(m for m in args.methods.split(",") if m), keeps=_floats(args.keeps),
                             lengths=lengths, fill=fill, n_decode=args.n_decode, probe=args.probe,
                             threads=args.threads, flash_attn=not args.no_flash_attn, kv_type=args.kv_type,
                             same_tokens_keep=same, seed=args.seed)
        stem = args.out_dir / (args.machine or machine_name()) / f"{time.strftime('%Y-%m-%d', time.gmtime())}-{name}"
        json_path, md_path, png_path = (stem.with_name(stem.name + ext) for ext in (".json", ".md", ".png"))
        cells, earlier = [], {}
        if json_path.is_file():
            earlier = json.loads(json_path.read_text())
            if earlier.get("config") == json.loads(json.dumps(config.as_dict())) and earlier.get("model") == name:
                cells = earlier["cells"]
                logger.warning("resuming %s: %d cells already measured", json_path, len(cells))
        from audiokv_edge.native import libs as native_libs

        result = {**bench_header.header("KV-cache eviction sweep (python -m audiokv_edge.bench)",
                                        native_lib_dir=native_libs.lib_dir()),
                  "model": name, "model_file": str(model), "model_bytes": model.stat().st_size,
                  "config": config.as_dict(), "seeds": {"tokens_and_synthetic_cache": config.seed},
                  "synthetic_fill_note": ("the cache was filled by loading a synthetic sequence state of random keys "
                                          "and values (llama_state_seq_set_data), not by a prefill: prefill "
                                          "times are projected from a measured batch at two depths")
                  if fill == "synthetic" else None,
                  "cells": cells}

        def save(cells_now) -> None:
            result["cells"] = cells_now
            bench_header.write_result(json_path, result)

        if args.report_only:
            if not cells:
                raise ValueError(f"--report-only: no measured cells in {json_path} for these options")
            result = {**earlier, "report_command": bench_header.command_line()}  # the measuring run's header
        else:
            _measure(Sweep(model, config, cells=list(cells), on_cell=save), save, progress=not args.no_progress)
        if args.memory_minutes:
            result["memory_table"] = report.memory_table(
                result, model_bytes=model.stat().st_size,
                projector_bytes=mmproj.stat().st_size if mmproj is not None and mmproj.is_file() else None,
                minutes=_floats(args.memory_minutes), tokens_per_second=args.audio_tokens_per_s,
                keep=args.memory_keep, chunk_tokens=int(30 * args.audio_tokens_per_s), answer_tokens=64,
                main_cells=1024)
        save(result["cells"])
        md_path.write_text(report.markdown(result))
        report.plot(result, png_path)
        print(json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
