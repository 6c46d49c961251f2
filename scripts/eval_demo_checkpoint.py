#!/usr/bin/env python3
"""WER of a demo-model checkpoint (an mmproj GGUF + LoRA adapter GGUF, e.g. the ones the trainer exports into its
work folder) through the patched llama.cpp at full cache: on the trainer's held-out recordings (held-out text in
the training voices; ``--set heldout``; its long-form recordings of 60-180 s, ``--set heldout-long``) or on the
reserved evaluation voices' 60 s passages and jfk.wav (``--set reserved``). Used to compare checkpoints before one
is committed: the held-out sets choose, the reserved voices only measure.

    .venv/bin/python scripts/eval_demo_checkpoint.py --mmproj W/mmproj.gguf --lora W/lora.gguf [--set heldout]
        [--dry-multiplier 0.8] [--max-tokens 600] [--set reserved --durations 60,120]

Prints one line per recording and a JSON summary (WER of the first / second half of the held-out set, all, and of
the multi-window recordings alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_WORK = pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE", pathlib.Path.home() / ".cache" / "audiokv-edge")) / "demo-train"


def recordings(which: str, work: pathlib.Path, evalset_dir: pathlib.Path,
               durations=(60,)) -> list[tuple[str, str, pathlib.Path, str]]:
    """``(id, kind, audio path, reference text)`` of the chosen set (the reserved passages of ``durations`` seconds,
    built from the pinned texts where missing)."""
    from audiokv_edge.demo_model import dataset, evalset

    if which in ("heldout", "heldout-long"):
        held = work / which
        return [(r["id"], r["kind"], held / "audio" / f"{r['id']}.flac", r["text"]) for r in dataset.read_manifest(held)]
    items = {it["id"]: it for it in evalset.build(evalset_dir, durations_s=durations)}
    out = [("jfk", "human", REPO / "audiokv_edge" / "data" / "jfk.wav", evalset.HUMAN_CLIPS["jfk.wav"])]
    for d in durations:
        for voice in evalset.EVAL_VOICES:
            it = items[f"{voice}-{d}s"]
            out.append((it["id"], "long", pathlib.Path(it["audio"]), it["transcript"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mmproj", type=pathlib.Path, required=True)
    ap.add_argument("--lora", type=pathlib.Path, default=None)
    ap.add_argument("--set", choices=("heldout", "heldout-long", "reserved"), default="heldout")
    ap.add_argument("--work", type=pathlib.Path, default=DEFAULT_WORK, help="the trainer's folder (held-out set)")
    ap.add_argument("--evalset", type=pathlib.Path, default=REPO / "build" / "evalset",
                    help="the reserved voices' passages (made here from the pinned texts where missing)")
    ap.add_argument("--durations", default="60", help="reserved passages' lengths in seconds, comma-separated")
    ap.add_argument("--dry-multiplier", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=8192,
                    help="context in tokens (default %(default)s: a 300 s passage is 3,750 audio tokens)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from audiokv_edge.demo_model import transcription_wer
    from audiokv_edge.runtime.session import SessionConfig
    from audiokv_edge.testing import real_models

    for path in (args.mmproj, args.lora):
        if path is not None and not path.is_file():
            ap.error(f"{path}: no such file")
    recs = recordings(args.set, args.work, args.evalset, tuple(int(d) for d in args.durations.split(",") if d))
    if not recs:
        ap.error(f"no recordings in the {args.set} set")
    t0 = time.time()
    cfg = SessionConfig(method="full", max_tokens=args.max_tokens, ctx=args.ctx, dry_multiplier=args.dry_multiplier,
                        threads=args.threads)
    done = transcription_wer.transcribe_set(
        real_models.smollm2_q4_1_path(), args.mmproj, args.lora, recs, cfg,
        on_transcript=lambda t: print(f"{t.id} {t.kind} WER {t.wer:.3f} | {t.hypothesis[:160]}", flush=True))
    half = len(done) // 2
    wer = transcription_wer.corpus_wer
    summary = {"set": args.set, "n": len(done), "wer": round(wer(done), 4),
               "wer_first_half": round(wer(done[:half]), 4) if half else None,
               "wer_second_half": round(wer(done[half:]), 4),
               "wer_long": (None if not any(t.kind == "long" for t in done)
                            else round(wer([t for t in done if t.kind == "long"]), 4)),
               "dry_multiplier": args.dry_multiplier, "max_tokens": args.max_tokens, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
