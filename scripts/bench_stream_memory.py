#!/usr/bin/env python3
"""Peak process memory of five minutes of streamed speech: no eviction vs per-head eviction after every chunk.

Five minutes of real speech (the clips shipped in audiokv_edge/data/, tiled) go through the runner
(``python -m audiokv_edge.run --json``) with a real GGUF LLM (default: SmolLM2-135M-Instruct Q4_1, installed by
scripts/setup.sh; 30 layers x 3 KV heads x 64 dims, so the f16 KV cache of 7,500 audio tokens is 165 MiB next to a
98 MB model) and a random-weight qwen2a audio projector of the model's width written into the work directory
(25 audio tokens per second, 750 per 30 s chunk, as Qwen2-Audio). Each run is a separate child process:

- ``full``: no eviction, the context sized for the whole prompt (audio + text + answer);
- ``METHOD+stream`` (default ``audiokv+stream``; ``snapkv+stream`` on request): evict after every 30 s audio chunk.
  A COMPACT eviction moves the kept entries into per-head pools sized for ``keep`` x the positions seen + one chunk +
  the answer (about 3,000 + 830 rows per head for five minutes) and frees the main cache but for the last position,
  so the context (the main cache) only has to hold one chunk with its text and the answer (1,024 positions);
- ``METHOD`` (no ``+stream``): evict once after the prompt, in the full-size context.

Reported per run: the runner's ``peak_rss_bytes`` (its own ru_maxrss) and the child's maximum resident set size as
the parent sees it (``os.wait4``: what ``/usr/bin/time -v`` prints), KV bytes of the prompt without eviction and
kept, the main KV cache the context allocates (ctx x bytes per position), audio tokens, wall time; then every run's
ratios to ``full``. A run the runner refuses (e.g. ``--stream`` with a method it cannot stream yet) is reported with
the runner's one-line error as ``"status": "refused"``; the benchmark goes on. Example (about 15 min on 2 busy cores):

  .venv/bin/python scripts/bench_stream_memory.py --out docs/results/bench_stream_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_common import REPO, header, run_child, write_result

sys.path.insert(0, str(REPO))

DATA = REPO / "audiokv_edge" / "data"
SPEECH_CLIPS = ("jfk.wav", "arctic_a0007.wav")
ERROR_PREFIX = "audiokv-run: error: "
#: Fields of the runner's JSON record not copied into the result (the rest is, whatever the runner adds).
RUNNER_SKIPPED = ("text", "model", "mmproj", "audio", "prompt")


def tiled_speech(seconds: float, rate: int = 16000) -> np.ndarray:
    """``seconds`` of speech: the shipped clips in turn, repeated.

    Returns
    -------
    ndarray, float32, shape [round(seconds * rate)]
    """
    from audiokv_edge.runtime.audio import load_audio

    clips = [load_audio(DATA / name, rate).samples for name in SPEECH_CLIPS]
    total = int(round(seconds * rate))
    parts, have, i = [], 0, 0
    while have < total:
        parts.append(clips[i % len(clips)])
        have += parts[-1].shape[0]
        i += 1
    return np.concatenate(parts)[:total].astype(np.float32)


def model_width(model: Path) -> int:
    """``<arch>.embedding_length`` of a GGUF text model (the width the audio projector must output)."""
    from audiokv_edge.profile.gguf_header import GGUFHeader, GGUFValueType

    head = GGUFHeader(model)
    arch = head.scalar("general.architecture", (GGUFValueType.STRING,))
    width = head.scalar(f"{arch}.embedding_length", (GGUFValueType.UINT32, GGUFValueType.UINT64,
                                                     GGUFValueType.INT32))
    if not width:
        raise SystemExit(f"{model}: no {arch}.embedding_length")
    return int(width)


def count_audio_tokens(model: Path, mmproj: Path, audio: Path) -> tuple[int, int]:
    """Audio tokens libmtmd places in the prompt for ``audio``, and for one second of it (= one chunk's worth: the
    Whisper-style projectors pad every chunk to 30 s). Tokenization only: nothing is encoded."""
    import soundfile

    from audiokv_edge.runtime.session import Session, SessionConfig

    second, rate = soundfile.read(audio, frames=16000, dtype="float32")
    with Session(model, mmproj, config=SessionConfig(method="full", ctx=64, max_tokens=1)) as session:
        return session.count_audio_tokens(audio), session.count_audio_tokens(second, sample_rate=rate)


def round_up(n: float, multiple: int = 256) -> int:
    return int(math.ceil(n / multiple) * multiple)


def parse_run(name: str) -> tuple[str, bool]:
    """``"audiokv+stream"`` -> ("audiokv", True); ``"full"`` -> ("full", False)."""
    from audiokv_edge.methods import METHODS

    method, _, suffix = name.partition("+")
    if method not in METHODS or suffix not in ("", "stream"):
        raise argparse.ArgumentTypeError(f"run {name!r}: expected METHOD or METHOD+stream, METHOD one of "
                                         f"{', '.join(METHODS)}")
    return method, suffix == "stream"


def classify(child: dict) -> tuple[str, str | None, dict | None]:
    """(status, error line, runner record): ``ok``, ``refused`` (the runner's one-line error), ``failed``."""
    errors = [ln[len(ERROR_PREFIX):] for ln in child["stderr"].splitlines() if ln.startswith(ERROR_PREFIX)]
    if child["timed_out"]:
        return "failed", "timed out", None
    if child["exit_code"] == 0:
        lines = [ln for ln in child["stdout"].splitlines() if ln.startswith("{")]
        try:
            return "ok", None, json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return "failed", "exit 0 without a JSON record", None
    if child["exit_code"] in (1, 2) and errors:
        return "refused", errors[-1], None
    tail = " | ".join(child["stderr"].strip().splitlines()[-3:])
    return "failed", f"exit {child['exit_code']}: {tail}", None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="text model GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--mmproj", type=Path, help="audio projector GGUF (default: a random qwen2a of the model's "
                        "width, written into --work-dir)")
    parser.add_argument("--audio-seconds", type=float, default=299.5, help="seconds of speech (default 299.5: "
                        "libmtmd cuts 30 s windows of mel frames, and 300.0 s opens an 11th, almost empty one)")
    parser.add_argument("--runs", nargs="+", default=["full", "audiokv+stream"],
                        help="runs in order: METHOD or METHOD+stream (default: full audiokv+stream)")
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--max-tokens", type=int, default=16, help="answer tokens (default 16)")
    parser.add_argument("--text-margin", type=int, default=64, help="prompt positions besides the audio (default 64)")
    parser.add_argument("--full-ctx", type=int, default=0, help="context of unstreamed runs (default: audio + "
                        "text + answer, rounded up to 256)")
    parser.add_argument("--stream-ctx", type=int, default=0, help="context (main KV cache) of +stream runs "
                        "(default: one chunk + text + answer, rounded up to 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flash-attn", action="store_true", help="pass --flash-attn to every run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--work-dir", type=Path, help="where the audio and projector go (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_stream_memory.json")
    args = parser.parse_args()
    try:
        runs = [(name, *parse_run(name)) for name in args.runs]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not 0 < args.keep <= 1:
        parser.error("--keep must be in (0, 1]")

    import soundfile

    from audiokv_edge.native import libs as native_libs
    from audiokv_edge.testing import real_models
    from audiokv_edge.testing.tiny_models import AudioProjectorSpec, write_audio_projector

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or real_models.smollm2_q4_1_path()
        mmproj = args.mmproj
        if mmproj is None:
            mmproj = work / "mmproj-random-qwen2a.gguf"
            write_audio_projector(mmproj, AudioProjectorSpec("qwen2a"), n_embd_text=model_width(model))
        audio = work / f"speech-{args.audio_seconds:g}s.wav"
        soundfile.write(audio, tiled_speech(args.audio_seconds), 16000)

        audio_tokens, chunk_tokens = count_audio_tokens(model, mmproj, audio)
        n_chunks = math.ceil(audio_tokens / chunk_tokens)
        full_ctx = args.full_ctx or round_up(audio_tokens + args.text_margin + args.max_tokens)
        stream_ctx = args.stream_ctx or round_up(chunk_tokens + args.text_margin + args.max_tokens)
        print(f"{args.audio_seconds:g} s of speech -> {audio_tokens} audio tokens in {n_chunks} chunks; "
              f"ctx {full_ctx} (full) / {stream_ctx} (stream)", flush=True)

        results = []
        for name, method, stream in runs:
            ctx = stream_ctx if stream else full_ctx
            command = [sys.executable, "-m", "audiokv_edge.run", str(model), str(audio), "--mmproj", str(mmproj),
                       "--method", method, "--keep", str(args.keep), "--ctx", str(ctx), "--max-tokens",
                       str(args.max_tokens), "--threads", str(args.threads), "--json", "--quiet"]
            if stream:
                command.append("--stream")
            if args.flash_attn:
                command.append("--flash-attn")
            child = run_child(command, args.timeout)
            status, error, record = classify(child)
            entry = {"run": name, "method": method, "stream": stream, "keep": 1.0 if method == "full" else args.keep,
                     "ctx": ctx, "status": status, "error": error, "exit_code": child["exit_code"],
                     "wall_s": round(child["wall_s"], 3), "child_maxrss_bytes": child["child_maxrss_bytes"],
                     "command": " ".join(command)}
            if record is not None:
                entry["runner"] = {k: v for k, v in record.items() if k not in RUNNER_SKIPPED}
                if record.get("prompt_tokens"):
                    per_position = record["kv_bytes_full"] / record["prompt_tokens"]
                    entry["kv_bytes_main_cache"] = int(round(per_position * record.get("ctx", ctx)))
            results.append(entry)
            mib = 1024.0 * 1024.0
            line = f"{name:18s} ctx {ctx:6d}  {status:8s}  wall {child['wall_s']:7.1f} s  " \
                   f"maxrss {child['child_maxrss_bytes'] / mib:7.1f} MiB"
            if record is not None:
                line += f"  kv full {record['kv_bytes_full'] / mib:6.1f} MiB kept {record['kv_bytes_kept'] / mib:6.1f}" \
                        f" MiB  runner peak {record['peak_rss_bytes'] / mib:7.1f} MiB"
            else:
                line += f"  error: {error}"
            print(line, flush=True)

    comparisons = compare(results)
    for c in comparisons:
        print(f"{c['run']} vs full: peak RSS x{c['peak_rss_ratio']:.3f} (child maxrss x{c['child_maxrss_ratio']:.3f},"
              f" {c['peak_rss_saved_bytes'] / 1048576:.1f} MiB saved); KV kept / full {c['kv_kept_ratio']:.3f}")
    report = {
        **header("bench_stream_memory", native_lib_dir=native_libs.lib_dir(), modules=("gguf",)),
        "what": "peak process memory, five minutes of streamed speech: no eviction vs eviction after every chunk",
        "model": str(model), "mmproj": "random-weight qwen2a projector (tiny_models)" if args.mmproj is None
        else str(args.mmproj),
        "audio": {"seconds": args.audio_seconds, "clips": list(SPEECH_CLIPS), "audio_tokens": audio_tokens,
                  "chunks": n_chunks, "chunk_tokens": chunk_tokens},
        "keep": args.keep, "max_tokens": args.max_tokens, "threads": args.threads, "flash_attn": args.flash_attn,
        "ctx": {"full": full_ctx, "stream": stream_ctx},
        "runs": results,
        "comparisons": comparisons,
    }
    write_result(args.out, report)
    print(f"wrote {args.out}")
    failed = [r["run"] for r in results if r["status"] == "failed"]
    if failed:
        print(f"runs that failed (not a clear refusal): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def compare(results: list[dict]) -> list[dict]:
    """Every successful run against the first successful ``full`` run: peak-memory and KV ratios."""
    base = next((r for r in results if r["method"] == "full" and r["status"] == "ok"), None)
    if base is None:
        return []
    out = []
    for r in results:
        if r is base or r["status"] != "ok":
            continue
        peak, base_peak = r["runner"]["peak_rss_bytes"], base["runner"]["peak_rss_bytes"]
        out.append({
            "run": r["run"],
            "peak_rss_ratio": peak / base_peak,
            "peak_rss_saved_bytes": base_peak - peak,
            "child_maxrss_ratio": r["child_maxrss_bytes"] / base["child_maxrss_bytes"],
            "kv_kept_ratio": r["runner"]["kv_bytes_kept"] / r["runner"]["kv_bytes_full"],
            "kv_main_cache_ratio": (r["kv_bytes_main_cache"] / base["kv_bytes_main_cache"]
                                    if r.get("kv_bytes_main_cache") and base.get("kv_bytes_main_cache") else None),
            "eviction_applied": r["runner"].get("eviction_applied"),
        })
    return out


if __name__ == "__main__":
    sys.exit(main())
