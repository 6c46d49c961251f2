#!/usr/bin/env python3
"""Soak: resident memory over an hour of streamed speech with a fixed KV budget, and over 500 answers in one Session.

Two cases, each in its own child process (so that one case's peak does not hide the next one's):

- ``audio``: for every length in ``--minutes`` (default 5, 15, 60), that much real speech (the clips shipped in
  audiokv_edge/data/, tiled: ``bench_stream_memory.tiled_speech``) written as one 16 kHz WAV and answered by a Session
  with ``kv_budget=--kv-budget`` (default 2,048) and ``stream=True`` -- the runner's ``--kv-budget 2048 --stream`` --
  in a context that holds one 30 s chunk with its text and the answer. The resident set size (``VmRSS``) is sampled
  after every prompt chunk (the Session's ``progress`` callback), against the minutes of audio prefilled so far.
- ``answers``: one Session answering ``--answers`` (default 500) prompts in a row about a short clip (jfk.wav),
  every second one a follow-up of the answer before (questions cycled from a fixed list), ``kv_budget`` as above,
  VmRSS sampled after every answer.

Reported per run: every sample, the child's maximum resident set size (``os.wait4``: ``/usr/bin/time -v``'s number)
and the Session's own ``peak_rss_bytes``, the least-squares slope of RSS over the last half of the samples (MiB per
minute of audio; KiB per answer) with the RSS change that slope makes over that half, and the kept KV per (layer, KV
head). A picture of the curves goes beside the JSON (same stem, ``.png``). Model: the built-in demo model
(``build/demo``: Whisper tiny.en encoder + SmolLM2-135M-Instruct Q4_1 + LoRA, 12.5 audio tokens per second) unless
``--model`` / ``--mmproj`` are given; ``--smoke`` runs a tiny random-weight pair (``tiny_models``) over one minute
of speech and 4 answers in well under a minute (tests/test_soak_memory.py). Example (about 40 min on 2 busy cores):

  nice -n 19 .venv/bin/python scripts/soak_memory.py --out docs/results/soak_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import REPO, header, run_child, write_result
from bench_stream_memory import round_up, tiled_speech  # noqa: F401 - tiled_speech: tests use it

sys.path.insert(0, str(REPO))

ANSWER_CLIP = REPO / "audiokv_edge" / "data" / "jfk.wav"
QUESTIONS = ("Transcribe the audio.", "Who is speaking?", "What is the speaker asking for?",
             "Summarise the audio in one sentence.", "What is the mood of the speech?")
FOLLOW_UPS = ("Say that again, shorter.", "Why?", "Anything else?")
TINY_PAIR = "qwen2-qwen2a"
MIB = 1024.0 * 1024.0


def write_speech(path: Path, seconds: float) -> None:
    """``tiled_speech(seconds)`` written as a 16 kHz WAV by a child process: this process never holds the recording,
    so the workers it starts inherit no high-water mark from it (a child's ``ru_maxrss``, what ``os.wait4`` reports,
    starts at its parent's peak when it is exec'd)."""
    code = ("import sys, soundfile; from bench_stream_memory import tiled_speech; "
            "soundfile.write(sys.argv[1], tiled_speech(float(sys.argv[2])), 16000)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "scripts"), str(REPO), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", code, str(path), repr(float(seconds))], check=True, env=env, cwd=REPO)


def rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``; where there is no /proc, the peak so far)."""
    from audiokv_edge.runtime.stats import current_rss_bytes, maxrss_bytes

    rss = current_rss_bytes()
    return rss if rss is not None else maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))


def last_half_slope(x: list[float], y: list[float]) -> dict:
    """Least-squares line through the last half of the samples (x ascending): slope (y units per x unit), the change
    it makes over that half, the half's x range and its min / max y."""
    n = len(x)
    if n < 2:
        return {"slope": None, "change": None, "samples": n}
    lo = n // 2
    xs, ys = np.asarray(x[lo:], float), np.asarray(y[lo:], float)
    if xs.size < 2 or np.ptp(xs) == 0:
        return {"slope": None, "change": None, "samples": int(xs.size)}
    slope, _ = np.polyfit(xs, ys, 1)
    return {"slope": float(slope), "change": float(slope * np.ptp(xs)), "samples": int(xs.size),
            "x_from": float(xs[0]), "x_to": float(xs[-1]), "min": float(ys.min()), "max": float(ys.max())}


# ---------------------------------------------------------------------------------------------- child processes
def open_session(args: argparse.Namespace, ctx: int):
    from audiokv_edge.runtime.session import Session, SessionConfig

    config = SessionConfig(method=args.method, kv_budget=args.kv_budget, stream=True, ctx=ctx,
                           max_tokens=args.max_tokens, threads=args.threads)
    return Session(args.model, args.mmproj, config=config, lora=args.lora)


def child_audio(args: argparse.Namespace) -> dict:
    """One long recording, streamed: VmRSS after every prompt chunk."""
    samples: list[dict] = []
    with open_session(args, args.ctx) as session:
        rate = session.sample_rate
        t0 = time.perf_counter()
        loaded_rss = rss_bytes()

        def progress(done: int, total: int) -> None:
            samples.append({"t_s": round(time.perf_counter() - t0, 3), "done_positions": done,
                            "total_positions": total, "rss_bytes": rss_bytes()})

        answer = session.answer(args.audio, "Transcribe the audio.", progress=progress)
        seconds = answer.stats.audio_seconds
        for s in samples:   # positions -> minutes of audio (the text around the audio is a few dozen positions)
            s["audio_minutes"] = seconds / 60.0 * s["done_positions"] / max(1, s["total_positions"])
        return {"samples": samples, "rss_after_load_bytes": loaded_rss, "rss_after_answer_bytes": rss_bytes(),
                "session_peak_rss_bytes": answer.stats.peak_rss_bytes, "stats": answer.stats.to_dict(),
                "evictions": len(session.last_evictions), "sample_rate": rate,
                "heads": session.geometry.n_layer * session.geometry.n_head_kv,
                "eviction_records": [{k: r[k] for k in ("n_past", "keep", "entries_after", "bytes_used_after")}
                                     for r in session.last_evictions]}


def child_answers(args: argparse.Namespace) -> dict:
    """Many answers in one Session: VmRSS after every answer."""
    samples: list[dict] = []
    with open_session(args, args.ctx) as session:
        t0 = time.perf_counter()
        loaded_rss = rss_bytes()
        last = None
        for i in range(args.answers):
            if i % 2 == 1:
                kind, prompt = "follow_up", FOLLOW_UPS[(i // 2) % len(FOLLOW_UPS)]
                last = session.follow_up(prompt)
            else:
                kind, prompt = "audio", QUESTIONS[(i // 2) % len(QUESTIONS)]
                last = session.answer(args.audio, prompt)
            samples.append({"answer": i + 1, "kind": kind, "t_s": round(time.perf_counter() - t0, 3),
                            "rss_bytes": rss_bytes(), "generated_tokens": last.stats.generated_tokens})
        return {"samples": samples, "rss_after_load_bytes": loaded_rss,
                "session_peak_rss_bytes": last.stats.peak_rss_bytes if last else 0,
                "last_stats": last.stats.to_dict() if last else None}


def run_worker(args: argparse.Namespace) -> int:
    result = child_audio(args) if args.worker == "audio" else child_answers(args)
    args.worker_out.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------- parent
def chunk_tokens(model: Path, mmproj: Path) -> int:
    """Most audio tokens libmtmd gives one 30 s chunk of this projector (tokenization only)."""
    from audiokv_edge.runtime.session import Session, SessionConfig

    with Session(model, mmproj, config=SessionConfig(method="full", ctx=64, max_tokens=1)) as session:
        return session.audio_chunk_tokens()


def spawn(args: argparse.Namespace, worker: str, audio: Path, ctx: int, work: Path, tag: str) -> dict:
    out = work / f"worker-{tag}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--worker-out", str(out),
               "--model", str(args.model), "--mmproj", str(args.mmproj), "--audio", str(audio), "--ctx", str(ctx),
               "--method", args.method, "--kv-budget", str(args.kv_budget), "--max-tokens", str(args.max_tokens),
               "--threads", str(args.threads), "--answers", str(args.answers)]
    if args.lora:
        command += ["--lora", str(args.lora)]
    child = run_child(command, args.timeout)
    entry = {"exit_code": child["exit_code"], "timed_out": child["timed_out"], "wall_s": round(child["wall_s"], 2),
             "child_maxrss_bytes": child["child_maxrss_bytes"], "command": " ".join(command)}
    if child["exit_code"] != 0 or not out.is_file():
        entry["status"] = "failed"
        entry["error"] = " | ".join(child["stderr"].strip().splitlines()[-3:])
        return entry
    entry["status"] = "ok"
    entry.update(json.loads(out.read_text()))
    out.unlink()
    return entry


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for run in report["audio_runs"]:
        if run["status"] != "ok":
            continue
        xs = [s["audio_minutes"] for s in run["samples"]]
        ys = [s["rss_bytes"] / MIB for s in run["samples"]]
        left.plot(xs, ys, marker=".", markersize=3,
                  label=f"{run['minutes']:g} min (peak {run['child_maxrss_bytes'] / MIB:.0f} MiB)")
    left.set_xlabel("minutes of audio prefilled")
    left.set_ylabel("RSS after the chunk (MiB)")
    left.set_title(f"--stream --kv-budget {report['kv_budget']}: RSS per 30 s chunk")
    left.set_ylim(bottom=0)
    if left.get_legend_handles_labels()[0]:
        left.legend()
    run = report["answers_run"]
    if run and run["status"] == "ok":
        right.plot([s["answer"] for s in run["samples"]], [s["rss_bytes"] / MIB for s in run["samples"]], ".",
                   markersize=3)
        slope = run["slope_last_half"]["slope"]
        right.set_title(f"{len(run['samples'])} answers in one Session (last half: "
                        f"{(slope or 0) / 1024:+.2f} KiB / answer)")
    right.set_xlabel("answer")
    right.set_ylabel("RSS after the answer (MiB)")
    right.set_ylim(bottom=0)
    fig.suptitle(f"{report['model_name']}, {report['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[Path], out: Path) -> int:
    """One result (and picture) from several results of this script: every audio run, the first answers run."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for p, part in zip(paths, parts):
        for key in ("model_name", "kv_budget", "method", "ctx", "max_tokens", "threads"):
            if part[key] != first[key]:
                raise SystemExit(f"{p}: {key} {part[key]!r} differs from {paths[0]}'s {first[key]!r}")
    runs = sorted((r for part in parts for r in part["audio_runs"]), key=lambda r: r["minutes"])
    report = {**first, "command": first["command"], "merged_from": [{"path": str(p), "command": part["command"]}
                                                                   for p, part in zip(paths, parts)],
              "audio_runs": runs, "answers_run": next((part["answers_run"] for part in parts
                                                        if part.get("answers_run")), None),
              "peak_rss_by_minutes": {k: v for part in parts for k, v in part["peak_rss_by_minutes"].items()}}
    report.pop("finished_utc", None)
    write_result(out, report)
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="text model GGUF (default: the built-in demo model)")
    parser.add_argument("--mmproj", type=Path, help="audio projector GGUF (with --model)")
    parser.add_argument("--lora", type=Path, help="LoRA adapter GGUF (default: the demo model's, with no --model)")
    parser.add_argument("--minutes", type=float, nargs="*", default=[5.0, 15.0, 60.0],
                        help="lengths of speech, one child each (default 5 15 60; none: the answers case only)")
    parser.add_argument("--answers", type=int, default=500, help="answers in one Session (default 500; 0: none)")
    parser.add_argument("--kv-budget", type=int, default=2048)
    parser.add_argument("--method", default="audiokv")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: with more, llama.cpp's OpenMP workers spin-wait on a busy machine)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per child")
    parser.add_argument("--tiny", action="store_true", help=f"the tiny random-weight pair {TINY_PAIR} (tiny_models) "
                        "instead of the demo model")
    parser.add_argument("--smoke", action="store_true", help="--tiny, one minute of speech and 4 answers (unless "
                        "given)")
    parser.add_argument("--work-dir", type=Path, help="audio and tiny models go here (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "soak_memory.json")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="no runs: combine the results of "
                        "earlier runs of this script (same model and budget, e.g. cases run side by side) into --out "
                        "and its picture")
    # a child process
    parser.add_argument("--worker", choices=("audio", "answers"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--audio", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ctx", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kv_budget < 1 or args.answers < 0 or any(m <= 0 for m in args.minutes):
        parser.error("--kv-budget must be >= 1, --answers >= 0 and every --minutes > 0")
    if (args.model is None) != (args.mmproj is None):
        parser.error("--model and --mmproj go together")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.merge:
        return merge(args.merge, args.out)

    from audiokv_edge.native import libs as native_libs

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            args.tiny = True
            if args.minutes == [5.0, 15.0, 60.0]:
                args.minutes = [1.0]
            if args.answers == 500:
                args.answers = 4
        if args.tiny and args.model is None:
            from audiokv_edge.testing.tiny_models import write_tiny_pair

            args.model, args.mmproj = write_tiny_pair(work, TINY_PAIR)
            model_name = f"tiny random-weight pair {TINY_PAIR} (tiny_models)"
        elif args.model is None:
            from audiokv_edge.demo_model.export import demo_paths

            files = demo_paths()
            args.model, args.mmproj, args.lora = files.model, files.mmproj, args.lora or files.lora
            model_name = "demo model (Whisper tiny.en encoder + SmolLM2-135M-Instruct Q4_1 + LoRA)"
        else:
            model_name = args.model.name
        per_chunk = chunk_tokens(args.model, args.mmproj)
        ctx = round_up(per_chunk + 64 + args.max_tokens)
        print(f"{model_name}: {per_chunk} audio tokens per 30 s chunk, ctx {ctx}, kv budget {args.kv_budget}",
              flush=True)

        audio_runs = []
        for minutes in args.minutes:
            audio = work / f"speech-{minutes:g}min.wav"
            write_speech(audio, minutes * 60.0)
            run = {"minutes": minutes, **spawn(args, "audio", audio, ctx, work, f"{minutes:g}min")}
            audio.unlink()
            if run["status"] == "ok":
                run["slope_last_half"] = last_half_slope([s["audio_minutes"] for s in run["samples"]],
                                                         [s["rss_bytes"] for s in run["samples"]])
                kept = run["stats"].get("kv_bytes_kept")
                run["kv_kept_bytes"] = kept
                slope = run["slope_last_half"]["slope"] or 0.0
                print(f"{minutes:6g} min: {run['stats']['audio_tokens']} audio tokens, {run['evictions']} "
                      f"evictions, wall {run['wall_s']:.0f} s, peak RSS {run['child_maxrss_bytes'] / MIB:.1f} MiB "
                      f"(session {run['session_peak_rss_bytes'] / MIB:.1f}), RSS slope over the last half "
                      f"{slope / MIB:+.3f} MiB per audio minute, KV kept {kept / MIB:.2f} MiB", flush=True)
            else:
                print(f"{minutes:6g} min: FAILED: {run['error']}", flush=True)
            audio_runs.append(run)

        answers_run = None
        if args.answers:
            answers_run = spawn(args, "answers", ANSWER_CLIP, ctx, work, "answers")
            if answers_run["status"] == "ok":
                answers_run["slope_last_half"] = last_half_slope(
                    [s["answer"] for s in answers_run["samples"]], [s["rss_bytes"] for s in answers_run["samples"]])
                sl = answers_run["slope_last_half"]
                print(f"{args.answers} answers: wall {answers_run['wall_s']:.0f} s, peak RSS "
                      f"{answers_run['child_maxrss_bytes'] / MIB:.1f} MiB, RSS slope over the last half "
                      f"{(sl['slope'] or 0) / 1024:+.3f} KiB per answer ({(sl['change'] or 0) / MIB:+.2f} MiB over "
                      f"answers {sl.get('x_from', 0):.0f}-{sl.get('x_to', 0):.0f})", flush=True)
            else:
                print(f"{args.answers} answers: FAILED: {answers_run['error']}", flush=True)

    peaks = {f"{r['minutes']:g}": {"child_maxrss_bytes": r["child_maxrss_bytes"],
                                   "session_peak_rss_bytes": r.get("session_peak_rss_bytes")}
             for r in audio_runs if r["status"] == "ok"}
    report = {
        **header("soak_memory", native_lib_dir=native_libs.lib_dir(), modules=("gguf",)),
        "what": "resident memory: long speech streamed with a fixed KV budget; many answers in one Session",
        "model_name": model_name, "model": str(args.model), "mmproj": str(args.mmproj),
        "lora": None if args.lora is None else str(args.lora), "method": args.method, "kv_budget": args.kv_budget,
        "stream": True, "ctx": ctx, "chunk_tokens": per_chunk, "max_tokens": args.max_tokens,
        "threads": args.threads, "peak_rss_by_minutes": peaks, "audio_runs": audio_runs, "answers_run": answers_run,
    }
    write_result(args.out, report)
    png = args.out.with_suffix(".png")
    plot(report, png)
    print(f"wrote {args.out} and {png}")
    failed = [r for r in audio_runs if r["status"] != "ok"] + (
        [answers_run] if answers_run and answers_run["status"] != "ok" else [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
