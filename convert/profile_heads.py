#!/usr/bin/env python3
"""Measure an AudioKV head profile: which heads follow the audio of the word being transcribed.

    python convert/profile_heads.py MODEL.gguf --mmproj MMPROJ.gguf --calib DIR -o PROFILE.json [--gguf-out OUT.gguf]

DIR holds audio files with same-named .txt transcripts and, ideally, .words.json word timings
(scripts/make_calibration_set.py makes such a set with exact timings; clips without timings use the uniform
time-to-word fallback). Every clip is run through the patched llama.cpp with the transcript teacher-forced after the
prompt; at each decode step, every head's top-K attention positions are checked against the audio tokens of the word
being emitted (hit ratio, AudioKV paper Sec. 3). The profile is written as JSON (and NPZ with --npz), and with
--gguf-out into a copy of the model (audiokv.* keys, docs/gguf-keys.md). Errors: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiokv_edge import __version__  # noqa: E402
from audiokv_edge.profiling.hit_ratio import DEFAULT_TOP_K, HitRatioAccumulator, profile_from_hits  # noqa: E402
from audiokv_edge.profile.defaults import ProfileDefaults  # noqa: E402

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_heads", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="text model GGUF")
    p.add_argument("--mmproj", help="audio projector GGUF (default: the mmproj*.gguf beside the model)")
    p.add_argument("--lora", help="LoRA adapter GGUF applied to the text model (as llama.cpp's --lora)")
    p.add_argument("--calib", required=True, help="calibration directory (audio + .txt [+ .words.json])")
    p.add_argument("-o", "--output", required=True, help="profile JSON (or .npz)")
    p.add_argument("--npz", action="store_true", help="also write the profile as NPZ beside the JSON")
    p.add_argument("--gguf-out", help="also write a copy of MODEL with the profile stored in it")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="K of the hit ratio (default 24)")
    p.add_argument("--max-clips", type=int, default=0, help="use only the first N clips (0: all)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (prompt + transcript)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--window", type=int, help="default observation window to store with the profile")
    p.add_argument("--keep", type=float, help="default keep ratio to store with the profile")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args) -> int:
    from audiokv_edge.profiling.attention_capture import TeacherForcedAttention
    from audiokv_edge.profiling.calibration_set import load_calibration_dir
    from audiokv_edge.profile.gguf_keys import write_profile
    from audiokv_edge.profile.side_file import save_profile_file

    if args.top_k < 1:
        raise ValueError("--top-k must be >= 1")
    if not args.output.endswith((".json", ".npz")):
        raise ValueError(f"{args.output}: the profile file name must end in .json or .npz")
    defaults = None
    if args.window is not None or args.keep is not None:
        defaults = ProfileDefaults(window=args.window, keep=args.keep)
    items = load_calibration_dir(args.calib)
    if args.max_clips > 0:
        items = items[:args.max_clips]
    t0 = time.perf_counter()
    clips = []
    with TeacherForcedAttention(args.model, args.mmproj, n_ctx=args.ctx, n_batch=args.batch,
                                n_threads=args.threads, lora=args.lora) as cap:
        acc = HitRatioAccumulator(cap.n_layer, cap.n_head, args.top_k)
        bar = None
        if not args.no_progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), unit="clip", desc="profiling", file=sys.stderr, leave=False)
        try:
            for it in items:
                c = cap.score_clip(it, acc)
                clips.append({"audio": os.path.basename(it.audio_path), "seconds": round(it.duration, 3),
                              "timed": it.timed, "steps": c.steps, "audio_tokens": c.audio_tokens,
                              "audio_start": c.audio_start, "audio_seconds_covered": c.audio_seconds_covered})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        shape = (cap.n_layer, cap.n_head, cap.n_head_kv)
        kv_source, attention_layers = cap.kv_source, cap.attention_layers
        proj_type = cap.proj_type
        mmproj_name = os.path.basename(str(cap.mmproj_path))
    n_timed = sum(c["timed"] for c in clips)
    seconds = sum(c["seconds"] for c in clips)
    source = {
        "calibration": (f"{os.path.basename(os.path.normpath(args.calib))}: {len(clips)} clips, {seconds:.1f} s; "
                        f"word timings: {n_timed} from .words.json, {len(clips) - n_timed} uniform"),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool_version": f"audiokv-edge {__version__} convert/profile_heads.py",
        "method": (f"hit ratio, top-{args.top_k}, mean over {acc.n_steps} decode steps, GQA sum"
                   + (f", {len(kv_source)} shared-KV layers folded into their source layers" if kv_source else "")
                   + ", normalised"),
        "model": os.path.basename(args.model),
        "mmproj": f"{mmproj_name} ({proj_type})",
    }
    if args.lora:
        source["lora"] = os.path.basename(args.lora)
    profile = profile_from_hits(acc, shape[2], source, kv_source, attention_layers)
    details = {"query_head_scores": acc.head_scores().tolist(), "n_steps": acc.n_steps, "top_k": args.top_k,
               "n_layer": shape[0], "n_head": shape[1], "n_head_kv": shape[2],
               "seconds": round(time.perf_counter() - t0, 2), "clips": clips}
    save_profile_file(args.output, profile, defaults, details)
    if args.npz and args.output.endswith(".json"):
        save_profile_file(args.output[:-len(".json")] + ".npz", profile, defaults, details)
    logging.getLogger("profile_heads").info("%s: %d x %d profile from %d steps on %d clips (%.1f s)", args.output,
                                            shape[0], shape[2], acc.n_steps, len(clips), details["seconds"])
    if args.gguf_out:
        write_profile(args.model, profile, args.gguf_out, defaults)
        logging.getLogger("profile_heads").info("%s: model copy with the profile stored", args.gguf_out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return run(args)
    except KeyboardInterrupt:
        print("profile_heads: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"profile_heads: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
