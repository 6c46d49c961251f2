#!/usr/bin/env python3
"""Several questions about one recording, with and without the encoded-audio cache (SessionConfig.audio_cache_mb).

One Session per setting answers the same questions about the same recording in turn; rounds alternate the order of
the two settings (the machine is shared: compare the medians of one run). Reported: wall seconds per round and
setting, their medians and ratio, the cache's hits / misses, and whether every answer is the same with and without
the cache (it must be). Default: the built-in demo model, a reserved-voice 60 s passage of the evaluation set
(built from the pinned text when missing), six questions, AudioKV at keep 0.4:

  .venv/bin/python scripts/bench_audio_cache.py --out results/linux-x86_64-2cpu/<date>-audio-cache.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_common import REPO, header, write_result

sys.path.insert(0, str(REPO))

QUESTIONS = ("Repeat the first sentence of the audio.", "Repeat the last sentence of the audio.",
             'Is the word "firewall" said in the audio? Answer yes or no.',
             'How many times is the word "instance" said?', 'What is said about "account"?',
             'Is the word "river" said in the audio? Answer yes or no.')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="text model GGUF (default: the built-in demo model)")
    ap.add_argument("--mmproj", type=Path, default=None)
    ap.add_argument("--lora", type=Path, default=None)
    ap.add_argument("--audio", type=Path, default=None, help="recording (default: the awb 60 s evaluation passage)")
    ap.add_argument("--questions", type=int, default=len(QUESTIONS), help="questions per round (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--method", default="audiokv")
    ap.add_argument("--keep", type=float, default=0.4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-mb", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default: printed only)")
    args = ap.parse_args(argv)
    if not 1 <= args.questions <= len(QUESTIONS) or args.rounds < 1 or args.cache_mb < 1:
        ap.error(f"--questions must be 1-{len(QUESTIONS)}, --rounds and --cache-mb >= 1")

    from audiokv_edge.runtime.session import Session, SessionConfig

    model, mmproj, lora = args.model, args.mmproj, args.lora
    if model is None:
        from audiokv_edge.demo_model import export

        demo = export.demo_paths()
        model, mmproj, lora = demo.model, demo.mmproj, demo.lora
    audio = args.audio
    if audio is None:
        from audiokv_edge.demo_model import evalset, export

        items = evalset.build(export.demo_dir().parent / "evalset", durations_s=(60,))
        audio = Path(next(it["audio"] for it in items if it["id"] == "awb-60s"))
    questions = QUESTIONS[: args.questions]
    runs = {0: [], args.cache_mb: []}
    answers, counters = {0: None, args.cache_mb: None}, {}
    for rnd in range(args.rounds):
        for mb in (0, args.cache_mb) if rnd % 2 == 0 else (args.cache_mb, 0):
            cfg = SessionConfig(method=args.method, keep=None if args.method == "full" else args.keep,
                                max_tokens=args.max_tokens, threads=args.threads, ctx=8192, audio_cache_mb=mb)
            with Session(model, mmproj=mmproj, lora=lora, config=cfg) as s:
                t0 = time.perf_counter()
                texts = [s.answer(audio, q).text for q in questions]
                runs[mb].append(round(time.perf_counter() - t0, 3))
                counters[mb] = {"hits": s._encoded_audio.hits, "misses": s._encoded_audio.misses}
            if answers[mb] is None:
                answers[mb] = texts
            elif answers[mb] != texts:
                answers[mb] = "differs between rounds"
    medians = {mb: statistics.median(v) for mb, v in runs.items()}
    report = {**header("bench_audio_cache"), "model": str(model), "mmproj": str(mmproj), "lora": str(lora),
              "audio": str(audio), "questions": list(questions), "method": args.method, "keep": args.keep,
              "threads": args.threads, "rounds_s": {str(k): v for k, v in runs.items()},
              "median_s": {str(k): v for k, v in medians.items()},
              "ratio_cached_to_uncached": round(medians[args.cache_mb] / medians[0], 4),
              "cache": counters[args.cache_mb], "same_answers": answers[0] == answers[args.cache_mb],
              "answers": answers[args.cache_mb]}
    if args.out is not None:
        write_result(args.out, report)
    print(json.dumps({k: report[k] for k in ("median_s", "ratio_cached_to_uncached", "cache", "same_answers")}))
    return 0 if report["same_answers"] else 1


if __name__ == "__main__":
    sys.exit(main())
