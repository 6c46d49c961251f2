#!/usr/bin/env python3
"""Load test of llama-server with per-head KV eviction on loopback: parallel slots x many requests of long speech.

Starts ``python -m audiokv_edge.serve MODEL --mmproj MMPROJ --kv-evict audiokv --kv-evict-keep 0.4 -np SLOTS`` on
127.0.0.1 and sends SLOTS x REQUESTS-PER-SLOT chat requests of 30-120 s of real speech (the clips shipped in
audiokv_edge/data/, tiled; lengths drawn uniformly with a fixed seed) as an OpenAI ``input_audio`` wav part, in rounds
of one request per slot (each pinned to its slot with ``"id_slot"``, all of a round in flight together). It samples
the server's resident memory (VmRSS of /proc/PID/status) every --rss-interval seconds and after each round, when
every slot is idle (what the server keeps, without the buffers of the requests in flight, which swing the RSS by
100-200 MiB with their audio lengths), and, half-way, sends the malformed requests of :func:`malformed_requests`
(bad base64, not audio, two hours of audio, unknown method, keep 0 and 2) while a round is in flight, each of which
must be an HTTP 4xx with a message while the server stays up. Checked and written to one JSON result (with the
machine, versions and command) and a PNG of RSS over the requests:

- every request answered (HTTP 200, a message, ``timings.kv_evict`` without an error);
- each slot's KV at keep K: ``kv_bytes_kept / kv_bytes_full <= K + 0.02`` for every request (0.42 at 0.4);
- server RSS stable after warm-up: a least-squares line of the idle RSS (after each round) against the requests
  answered, over the last half of the requests; its rise over that half must stay within ``--rss-tolerance`` of the
  mean idle RSS there (the same fit over every sample is reported too);
- every malformed request answered with a 4xx naming the problem, the server healthy afterwards.

Default model: a tiny random-weight qwen2 + qwen2a pair (audiokv_edge/testing/tiny_models.py, 25 audio tokens per
second as Qwen2-Audio, 750 per 30 s chunk) with a random head profile in its GGUF, so that AudioKV plans per-head
budgets. The checked quantities (answers, KV ratios from libaudiokv's plans, the server's memory over time) do not
depend on the weights' quality, and a tiny model keeps 200 requests of up to 3,000 audio tokens to 25 minutes on two
busy cores (-t 1). Exit status 0 when every check passes, 1 otherwise.

  .venv/bin/python scripts/load_test_server.py --out docs/results/load_test_server.json     # 4 slots x 50 requests
  .venv/bin/python scripts/load_test_server.py --smoke --out /tmp/smoke.json                 # 2 slots x 2 requests
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np

from bench_common import REPO, header, write_result

sys.path.insert(0, str(REPO))

PAIR = "qwen2-qwen2a"
PROMPT = "Transcribe the audio."
RATE = 16000
#: seconds of the "two hours of audio" malformed request (8 kHz 8-bit wav: 58 MB, under llama-server's 100 MB body)
LONG_AUDIO_SECONDS = 7200.0


def speech_wav(seconds: float, rate: int = RATE, sample_width: int = 2) -> bytes:
    """``seconds`` of real speech (the shipped clips, tiled) as a mono wav file of ``sample_width`` bytes a sample."""
    from bench_stream_memory import tiled_speech

    samples = np.clip(tiled_speech(seconds, rate), -1.0, 1.0)
    if sample_width == 2:
        pcm = (samples * 32767.0).astype("<i2").tobytes()
    elif sample_width == 1:
        pcm = np.round(samples * 127.0 + 128.0).astype(np.uint8).tobytes()
    else:
        raise ValueError(f"sample_width must be 1 or 2, got {sample_width}")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(sample_width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def chat_body(audio_b64: str, max_tokens: int, **extra) -> dict:
    """An OpenAI chat request: one input_audio wav part and the prompt, greedy."""
    content = [{"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}},
               {"type": "text", "text": "\n" + PROMPT}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0.0,
            **extra}


def malformed_requests() -> list[tuple[str, dict, str]]:
    """The malformed requests a server with --kv-evict must answer with an HTTP 4xx: ``(name, body, needle)``, the
    needle a piece of the expected error message."""
    short = base64.b64encode(speech_wav(5.0)).decode()
    text = base64.b64encode((REPO / "README.md").read_bytes()[:20000]).decode()
    noise = base64.b64encode(np.random.default_rng(0).bytes(48000)).decode()
    long_audio = base64.b64encode(speech_wav(LONG_AUDIO_SECONDS, rate=8000, sample_width=1)).decode()
    return [
        ("bad base64", chat_body("@@@ this is not base64 @@@", 2), "base64"),
        ("not audio: a text file", chat_body(text, 2), "Failed to load image or audio file"),
        ("not audio: random bytes", chat_body(noise, 2), "Failed to load image or audio file"),
        ("two hours of audio", chat_body(long_audio, 2), "is too long for the context"),
        ("unknown method", chat_body(short, 2, kv_evict={"method": "magic"}), "unknown KV eviction method 'magic'"),
        ("keep 0", chat_body(short, 2, kv_evict={"keep": 0}), "kv_evict.keep"),
        ("keep 2", chat_body(short, 2, kv_evict={"keep": 2}), "kv_evict.keep"),
    ]


def post_json(url: str, body: dict, timeout: float) -> tuple[int, dict | str]:
    """POST ``body``; (HTTP status, the decoded JSON answer or the raw text)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    """VmRSS of process ``pid`` in bytes, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tiny_model(work: Path, seed: int) -> tuple[Path, Path]:
    """The default model: the tiny qwen2 + qwen2a pair with a random (seeded) head profile in its GGUF."""
    from audiokv_edge.profile import gguf_keys
    from audiokv_edge.profile.head_profile import HeadProfile
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model, mmproj = write_tiny_pair(work, PAIR, seed=seed)
    shape = gguf_keys.model_shape(gguf_keys.open_gguf(model))
    scores = np.random.default_rng(seed).random((shape.n_layer, shape.n_head_kv)) + 0.05
    profiled = model.with_name("model-profile.gguf")
    gguf_keys.write_profile(model, HeadProfile(scores, source={"calibration": "random (load test)"}), profiled)
    return profiled, mmproj


class Server:
    """``python -m audiokv_edge.serve`` on loopback, its log in a file; a context manager."""

    def __init__(self, command: list[str], port: int, log: Path, ready_timeout: float = 300.0):
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "w")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        # serve execs llama-server: this pid is the server's
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + ready_timeout
        while not healthy(self.base):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError(f"llama-server did not start (exit {self.proc.returncode}); log: {log}\n"
                                   + log.read_text()[-3000:])
            time.sleep(0.5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_request(base: str, index: int, slot: int, seconds: float, max_tokens: int, timeout: float) -> dict:
    """One chat request of ``seconds`` of speech on ``slot``; its record."""
    audio = base64.b64encode(speech_wav(seconds)).decode()
    t0 = time.time()
    status, answer = post_json(base + "/v1/chat/completions", chat_body(audio, max_tokens, id_slot=slot), timeout)
    record = {"index": index, "slot": slot, "audio_seconds": seconds, "status": status,
              "wall_s": round(time.time() - t0, 3), "finished_unix": time.time()}
    if status == 200 and isinstance(answer, dict):
        kv = answer.get("timings", {}).get("kv_evict", {})
        record.update({"prompt_tokens": answer.get("usage", {}).get("prompt_tokens"),
                       "content": answer["choices"][0]["message"].get("content"),
                       "finish_reason": answer["choices"][0].get("finish_reason"), "kv_evict": kv})
        if kv.get("kv_bytes_full"):
            record["kv_ratio"] = kv["kv_bytes_kept"] / kv["kv_bytes_full"]
    else:
        record["error"] = answer if isinstance(answer, str) else json.dumps(answer)[:500]
    return record


def answered(record: dict) -> bool:
    kv = record.get("kv_evict") or {}
    return (record["status"] == 200 and isinstance(record.get("content"), str) and "kv_ratio" in record
            and "error" not in kv and kv.get("n_evictions", 0) >= 1)


def check_malformed(base: str, timeout: float) -> list[dict]:
    """Send each malformed request; 4xx with its needle in the message, and the server healthy after it."""
    out = []
    for name, body, needle in malformed_requests():
        t0 = time.time()
        try:
            status, answer = post_json(base + "/v1/chat/completions", body, timeout)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            status, answer = None, f"{type(exc).__name__}: {exc}"
        message = answer.get("error", {}).get("message", "") if isinstance(answer, dict) else str(answer)
        ok = status is not None and 400 <= status < 500 and needle in message and healthy(base)
        out.append({"name": name, "status": status, "message": message[:300], "expected": needle,
                    "wall_s": round(time.time() - t0, 3), "ok": ok})
    return out


def rss_trend(samples: list[tuple[float, int, int]], n_requests: int) -> dict:
    """Least-squares line of RSS against requests answered over the samples of the last half of the requests.

    ``samples``: (unix time, RSS bytes, requests answered so far)."""
    half = n_requests // 2
    tail = [(done, rss) for _, rss, done in samples if done >= half]
    if len(tail) < 3 or len({d for d, _ in tail}) < 2:
        return {"samples_last_half": len(tail), "slope_bytes_per_request": None}
    x = np.array([d for d, _ in tail], dtype=np.float64)
    y = np.array([r for _, r in tail], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    rise = slope * (n_requests - half)
    return {"samples_last_half": len(tail), "from_request": half, "slope_bytes_per_request": float(slope),
            "intercept_bytes": float(intercept), "rise_over_last_half_bytes": float(rise),
            "mean_rss_last_half_bytes": float(y.mean()), "rise_relative": float(rise / y.mean()),
            "min_rss_last_half_bytes": int(y.min()), "max_rss_last_half_bytes": int(y.max())}


def idle_rss(pid: int, n: int = 3, pause: float = 0.2) -> int:
    """Median of ``n`` VmRSS readings ``pause`` s apart (0 once the process is gone)."""
    readings = []
    for i in range(n):
        readings.append(rss_bytes(pid) or 0)
        if i + 1 < n:
            time.sleep(pause)
    return int(np.median(readings))


def plot(samples: list[tuple[float, int, int]], idle: list[tuple[float, int, int]], trend: dict, n_requests: int,
         path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = np.array([d for _, _, d in samples])
    rss = np.array([r for _, r, _ in samples]) / 2**20
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(done, rss, ".", markersize=2, color="lightsteelblue", label="server VmRSS (sampled)")
    ax.plot([d for _, _, d in idle], [r / 2**20 for _, r, _ in idle], "o", markersize=3, color="navy",
            label="between rounds (every slot idle)")
    if trend.get("slope_bytes_per_request") is not None:
        x = np.array([trend["from_request"], n_requests])
        ax.plot(x, (trend["intercept_bytes"] + trend["slope_bytes_per_request"] * x) / 2**20, "r-",
                label=f"idle fit over the last half: {trend['slope_bytes_per_request'] / 1024:+.1f} KiB / request")
        ax.axvline(trend["from_request"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("requests answered")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="text model GGUF (default: the tiny qwen2 pair, see above)")
    parser.add_argument("--mmproj", type=Path, help="audio projector GGUF (needed with --model)")
    parser.add_argument("--slots", type=int, default=4, help="parallel slots, -np (default 4)")
    parser.add_argument("--requests-per-slot", type=int, default=50, help="requests each slot answers (default 50)")
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--ctx-per-slot", type=int, default=4096,
                        help="context of each slot (default 4096: 120 s + the 30 s of silence libmtmd appends = "
                             "4 whole 30 s chunks = 3,000 qwen2a tokens, + text and answer)")
    parser.add_argument("--method", default="audiokv")
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--kv-margin", type=float, default=0.02, help="allowed kept fraction above --keep")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama-server -t (default 1: on shared, busy cores two spinning threads are slower)")
    parser.add_argument("--rss-tolerance", type=float, default=0.02,
                        help="largest allowed RSS rise over the last half, relative to its mean (default 0.02)")
    parser.add_argument("--rss-interval", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--no-malformed", action="store_true", help="skip the malformed requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    parser.add_argument("--smoke", action="store_true",
                        help="2 slots x 2 requests of 5-15 s in 1,024-token slots (a quick check of the script)")
    parser.add_argument("--work-dir", type=Path, help="where the model and the server log go (default: temporary)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "load_test_server.json",
                        help="JSON result; the PNG goes beside it (.png)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.slots, args.requests_per_slot, args.min_seconds, args.max_seconds = 2, 2, 5.0, 15.0
        args.ctx_per_slot = 1024
    if (args.model is None) != (args.mmproj is None):
        parser.error("--model and --mmproj go together")
    if not 0.0 < args.keep <= 1.0 or args.slots < 1 or args.requests_per_slot < 1:
        parser.error("need 0 < --keep <= 1, --slots >= 1, --requests-per-slot >= 1")

    import tempfile

    with tempfile.TemporaryDirectory(prefix="load_test_server_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work)


def run(args, work: Path) -> int:
    from audiokv_edge.native.libs import lib_dir

    model, mmproj = (args.model, args.mmproj) if args.model else tiny_model(work, args.seed)
    n_requests = args.slots * args.requests_per_slot
    rng = np.random.default_rng(args.seed)
    seconds = [round(float(s), 1) for s in rng.uniform(args.min_seconds, args.max_seconds, n_requests)]
    port = free_port()
    command = [sys.executable, "-m", "audiokv_edge.serve", str(model), "--mmproj", str(mmproj),
               "--kv-evict", args.method, "--kv-evict-keep", str(args.keep), "-np", str(args.slots),
               "-c", str(args.slots * args.ctx_per_slot), "-t", str(args.threads), "--host", "127.0.0.1",
               "--port", str(port)]
    report = header("load_test_server", native_lib_dir=lib_dir(), modules=("matplotlib",))
    # the C allocator's settings shape what the server keeps between requests (glibc: MALLOC_*, GLIBC_TUNABLES):
    # those the server starts with (audiokv_edge.serve adds its fixed mmap threshold unless the caller set one)
    from audiokv_edge.serve import ALLOCATOR_ENV

    allocator_env = {**ALLOCATOR_ENV, **{k: v for k, v in os.environ.items()
                                         if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}}
    report.update({"server_command": command, "allocator_env": allocator_env, "slots": args.slots,
                   "requests": n_requests,
                   "audio_seconds": {"min": min(seconds), "max": max(seconds), "total": round(sum(seconds), 1)},
                   "method": args.method, "keep": args.keep, "max_tokens": args.max_tokens,
                   "ctx_per_slot": args.ctx_per_slot, "model": str(model), "mmproj": str(mmproj)})

    samples: list[tuple[float, int, int]] = []  # (unix time, RSS, requests answered), every --rss-interval
    idle: list[tuple[float, int, int]] = []  # the same after each round, every slot idle
    records: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()
    t_start = time.time()
    with Server(command, port, work / "server.log") as server:
        pid = server.proc.pid

        def sample() -> None:
            while not stop.is_set():
                rss = rss_bytes(pid)
                if rss is not None:
                    with lock:
                        samples.append((time.time(), rss, len(records)))
                stop.wait(args.rss_interval)

        def one(index: int) -> None:
            slot = index % args.slots
            record = run_request(server.base, index, slot, seconds[index], args.max_tokens, args.timeout)
            with lock:
                records.append(record)
                done = len(records)
            print(f"[{time.time() - t_start:7.1f} s] {done}/{n_requests} slot {slot} request {index} "
                  f"{seconds[index]:.1f} s audio: HTTP {record['status']} kv {record.get('kv_ratio', 0):.3f} "
                  f"rss {(rss_bytes(pid) or 0) / 2**20:.1f} MiB", flush=True)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        malformed: list[dict] = []
        with concurrent.futures.ThreadPoolExecutor(args.slots) as pool:
            # rounds of one request per slot; between rounds every slot is idle and the RSS is what the server keeps
            for first in range(0, n_requests, args.slots):
                futures = [pool.submit(one, index) for index in range(first, min(first + args.slots, n_requests))]
                if not args.no_malformed and first <= n_requests // 2 < first + args.slots:
                    malformed = check_malformed(server.base, args.timeout)  # while this round is in flight
                    print("malformed requests:", json.dumps([(m["name"], m["status"], m["ok"]) for m in malformed]),
                          flush=True)
                for f in futures:
                    f.result()
                idle.append((time.time(), idle_rss(pid), len(records)))
        stop.set()
        sampler.join()
        alive = server.proc.poll() is None and healthy(server.base)
    wall = time.time() - t_start

    records.sort(key=lambda r: r["index"])
    trend = rss_trend(idle, n_requests)
    trend_continuous = rss_trend(samples, n_requests)
    ratios = [r["kv_ratio"] for r in records if "kv_ratio" in r]
    per_slot = {str(s): max((r["kv_ratio"] for r in records if r["slot"] == s and "kv_ratio" in r), default=None)
                for s in range(args.slots)}
    limit = args.keep + args.kv_margin
    checks = {
        "all_answered": sum(answered(r) for r in records) == n_requests,
        "kv_ratio_within_limit": bool(ratios) and len(ratios) == n_requests and max(ratios) <= limit,
        # a smoke run is too short to have a warm-up and a last half: its RSS is reported, not judged
        "rss_stable": None if args.smoke else
        trend.get("rise_relative") is not None and trend["rise_relative"] <= args.rss_tolerance,
        "malformed_refused": all(m["ok"] for m in malformed),
        "server_alive_at_end": alive,
    }
    report.update({
        "wall_s": round(wall, 1),
        "summary": {"answered": sum(answered(r) for r in records), "requests": n_requests,
                    "kv_ratio_max": max(ratios) if ratios else None, "kv_ratio_min": min(ratios) if ratios else None,
                    "kv_ratio_mean": float(np.mean(ratios)) if ratios else None, "kv_ratio_limit": limit,
                    "kv_ratio_max_per_slot": per_slot,
                    "prompt_tokens_max": max((r.get("prompt_tokens") or 0 for r in records), default=0),
                    "request_wall_s_mean": float(np.mean([r["wall_s"] for r in records])),
                    "rss_bytes_first": samples[0][1] if samples else None,
                    "rss_bytes_peak": max((s[1] for s in samples), default=None),
                    "rss_trend_idle": trend, "rss_trend_all_samples": trend_continuous,
                    "rss_tolerance": args.rss_tolerance},
        "checks": checks, "passed": all(v is not False for v in checks.values()), "malformed": malformed,
        "rss_samples": [[round(t - t_start, 2), rss, done] for t, rss, done in samples],
        "rss_idle": [[round(t - t_start, 2), rss, done] for t, rss, done in idle],
        "requests_detail": records,
    })
    png = args.out.with_suffix(".png")
    plot(samples, idle, trend, n_requests, png,
         f"llama-server --kv-evict {args.method} --kv-evict-keep {args.keep} -np {args.slots}: "
         f"{n_requests} requests of {min(seconds):.0f}-{max(seconds):.0f} s speech")
    report["png"] = str(png)
    write_result(args.out, report)
    print(json.dumps({"out": str(args.out), "wall_s": report["wall_s"], "checks": checks,
                      "kv_ratio_max": report["summary"]["kv_ratio_max"],
                      "rss_idle_slope_bytes_per_request": trend.get("slope_bytes_per_request"),
                      "rss_idle_rise_relative": trend.get("rise_relative"),
                      "rss_all_samples_slope_bytes_per_request": trend_continuous.get("slope_bytes_per_request")},
                     indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
