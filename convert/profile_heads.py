#!/usr/bin/env python3
"""Measure an AudioKV head profile: which heads follow the audio of the word being transcribed (or, with
--retrieval, which heads of a text model copy from the context: retrieval heads).

    python convert/profile_heads.py MODEL.gguf --mmproj MMPROJ.gguf --calib DIR -o PROFILE.json [--gguf-out OUT.gguf]
    python convert/profile_heads.py MODEL.gguf --retrieval [--calib TEXT.txt] -o PROFILE.json [--gguf-out OUT.gguf]

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
RETRIEVAL_TOP_K = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_heads", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="text model GGUF")
    p.add_argument("--mmproj", help="audio projector GGUF (default: the mmproj*.gguf beside the model)")
    p.add_argument("--lora", help="LoRA adapter GGUF applied to the text model (as llama.cpp's --lora)")
    p.add_argument("--calib", help="calibration directory (audio + .txt [+ .words.json]); with --retrieval a text "
                   "file, the haystack (default: the standard library's docstrings)")
    p.add_argument("--retrieval", action="store_true", help="text model: score retrieval heads on needle-copy "
                   "documents instead of audio transcription")
    p.add_argument("--docs", type=int, default=8, help="--retrieval: calibration documents (default 8)")
    p.add_argument("--doc-tokens", type=int, default=1024, help="--retrieval: tokens per document (about)")
    p.add_argument("--seed", type=int, default=0, help="--retrieval: cuts, needle depths and codes")
    p.add_argument("-o", "--output", required=True, help="profile JSON (or .npz)")
    p.add_argument("--npz", action="store_true", help="also write the profile as NPZ beside the JSON")
    p.add_argument("--gguf-out", help="also write a copy of MODEL with the profile stored in it")
    p.add_argument("--top-k", type=int, help=f"K of the hit ratio (default {DEFAULT_TOP_K}; --retrieval: "
                   f"{RETRIEVAL_TOP_K}, the top-1 of the retrieval score)")
    p.add_argument("--max-clips", type=int, default=0, help="use only the first N clips (0: all)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (prompt + transcript)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--window", type=int, help="default observation window to store with the profile")
    p.add_argument("--keep", type=float, help="default keep ratio to store with the profile")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _with_progress(args, items: list, unit: str):
    """``items`` one by one, with a progress bar on stderr unless --no-progress."""
    if args.no_progress:
        yield from items
        return
    from tqdm import tqdm
    with tqdm(total=len(items), unit=unit, desc="profiling", file=sys.stderr, leave=False) as bar:
        for item in items:
            yield item
            bar.update(1)


def _profile_audio(args):
    """Teacher-forced transcripts of the calibration clips: (accumulator, capture shape, per-clip records, source)."""
    from audiokv_edge.profiling.attention_capture import TeacherForcedAttention
    from audiokv_edge.profiling.calibration_set import load_calibration_dir

    if not args.calib:
        raise ValueError("--calib is required (a calibration directory of audio clips and transcripts)")
    items = load_calibration_dir(args.calib)
    if args.max_clips > 0:
        items = items[:args.max_clips]
    clips = []
    with TeacherForcedAttention(args.model, args.mmproj, n_ctx=args.ctx, n_batch=args.batch,
                                n_threads=args.threads, lora=args.lora) as cap:
        acc = HitRatioAccumulator(cap.n_layer, cap.n_head, args.top_k)
        for it in _with_progress(args, items, "clip"):
            c = cap.score_clip(it, acc)
            clips.append({"audio": os.path.basename(it.audio_path), "seconds": round(it.duration, 3),
                          "timed": it.timed, "steps": c.steps, "audio_tokens": c.audio_tokens,
                          "audio_start": c.audio_start, "audio_seconds_covered": c.audio_seconds_covered})
        layout = (cap.n_layer, cap.n_head, cap.n_head_kv, cap.kv_source, cap.attention_layers)
        mmproj = f"{os.path.basename(str(cap.mmproj_path))} ({cap.proj_type})"
    n_timed = sum(c["timed"] for c in clips)
    seconds = sum(c["seconds"] for c in clips)
    source = {"calibration": (f"{os.path.basename(os.path.normpath(args.calib))}: {len(clips)} clips, {seconds:.1f} s; "
                              f"word timings: {n_timed} from .words.json, {len(clips) - n_timed} uniform"),
              "mmproj": mmproj}
    return acc, layout, {"clips": clips}, source, "hit ratio"


def _profile_retrieval(args):
    """Teacher-forced needle copies in calibration documents: as :func:`_profile_audio`."""
    from audiokv_edge.profiling import retrieval_heads as rh
    from audiokv_edge.profiling.attention_capture import TextTeacherForcedAttention

    if args.mmproj:
        raise ValueError("--retrieval profiles a text model: no --mmproj")
    if args.docs < 1 or args.doc_tokens < 64:
        raise ValueError(f"--docs must be >= 1 and --doc-tokens >= 64, got {args.docs}, {args.doc_tokens}")
    if args.calib:
        try:
            with open(args.calib, encoding="utf-8") as f:
                haystack = f.read()
        except UnicodeDecodeError:
            raise ValueError(f"{args.calib}: not UTF-8 text") from None
        what = os.path.basename(args.calib)
    else:
        haystack, what = rh.default_haystack(), f"Python {sys.version_info[0]}.{sys.version_info[1]} docstrings"
    records = []
    ctx = max(args.ctx, args.doc_tokens + 256)
    with TextTeacherForcedAttention(args.model, n_ctx=ctx, n_batch=args.batch, n_threads=args.threads,
                                    lora=args.lora) as cap:
        probe = haystack[:20000]
        chars_per_token = len(probe) / max(1, len(cap.tokenize_text(probe)))
        docs = rh.needle_documents(haystack, args.docs, int(args.doc_tokens * chars_per_token), args.seed)
        acc = HitRatioAccumulator(cap.n_layer, cap.n_head, args.top_k)
        for doc in _with_progress(args, docs, "doc"):
            c = rh.score_document(cap, doc, acc)
            records.append({"needle": doc.needle, "depth": round(c.depth, 3), "steps": c.steps,
                            "prompt_tokens": c.prompt_tokens, "needle_span": list(c.needle_span)})
        layout = (cap.n_layer, cap.n_head, cap.n_head_kv, cap.kv_source, cap.attention_layers)
    tokens = [r["prompt_tokens"] for r in records]
    source = {"calibration": (f"needle copy: {len(records)} documents of {min(tokens)}-{max(tokens)} tokens cut from "
                              f"{what} (seed {args.seed}), a needle sentence at depths "
                              f"{min(r['depth'] for r in records):g}-{max(r['depth'] for r in records):g}"),
              "mmproj": "none (text)"}
    return acc, layout, {"documents": records}, source, "retrieval score (Wu et al. 2024)"


def run(args) -> int:
    from audiokv_edge.profile.gguf_keys import write_profile
    from audiokv_edge.profile.side_file import save_profile_file

    if args.top_k is None:
        args.top_k = RETRIEVAL_TOP_K if args.retrieval else DEFAULT_TOP_K
    if args.top_k < 1:
        raise ValueError("--top-k must be >= 1")
    if not args.output.endswith((".json", ".npz")):
        raise ValueError(f"{args.output}: the profile file name must end in .json or .npz")
    for out in (args.output, args.gguf_out):   # before the profiling run, not after it
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise ValueError(f"{out}: no folder {os.path.dirname(os.path.abspath(out))} to write it in")
    defaults = None
    if args.window is not None or args.keep is not None:
        defaults = ProfileDefaults(window=args.window, keep=args.keep)
    t0 = time.perf_counter()
    acc, layout, items, source, score_name = (_profile_retrieval if args.retrieval else _profile_audio)(args)
    n_layer, n_head, n_head_kv, kv_source, attention_layers = layout
    source = {
        "calibration": source["calibration"],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool_version": f"audiokv-edge {__version__} convert/profile_heads.py",
        "method": (f"{score_name}, top-{args.top_k}, mean over {acc.n_steps} decode steps, GQA sum"
                   + (f", {len(kv_source)} shared-KV layers folded into their source layers" if kv_source else "")
                   + ", normalised"),
        "model": os.path.basename(args.model),
        "mmproj": source["mmproj"],
    }
    if args.lora:
        source["lora"] = os.path.basename(args.lora)
    profile = profile_from_hits(acc, n_head_kv, source, kv_source, attention_layers)
    details = {"query_head_scores": acc.head_scores().tolist(), "n_steps": acc.n_steps, "top_k": args.top_k,
               "n_layer": n_layer, "n_head": n_head, "n_head_kv": n_head_kv,
               "seconds": round(time.perf_counter() - t0, 2), **items}
    save_profile_file(args.output, profile, defaults, details)
    if args.npz and args.output.endswith(".json"):
        save_profile_file(args.output[:-len(".json")] + ".npz", profile, defaults, details)
    logging.getLogger("profile_heads").info("%s: %d x %d profile from %d steps on %d %s (%.1f s)", args.output,
                                            n_layer, n_head_kv, acc.n_steps, len(next(iter(items.values()))),
                                            next(iter(items)), details["seconds"])
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
