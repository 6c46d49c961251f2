#!/usr/bin/env python3
"""Request fuzzing of ``python -m audiokv_edge.serve`` (llama-server with --kv-evict): random and malformed JSON
bodies and audio payloads, each of which must get an HTTP response while the server stays alive.

A seeded random mutator, not atheris: the code under test is llama-server's C++ (its HTTP and JSON handling, the
``kv_evict`` request field of llama_cpp_ext/, libmtmd's audio decoding), which a Python coverage-guided fuzzer cannot
see; a structured mutator that knows the request shapes reaches it faster than byte-level guesses. Every input is
drawn from ``random.Random(seed)``, so a run is reproduced by its seed and count; every run first sends the inputs
earlier runs found (:func:`regressions`).

Each request starts from a valid one (an OpenAI chat request with a short speech ``input_audio`` wav and a text
part, with and without ``"kv_evict"``; a ``/completion`` request; ``/tokenize``, ``/detokenize``,
``/apply-template``) and gets one to three mutations: a JSON value replaced by another type or an extreme (NaN,
1e308, -1, huge strings, deep nesting), keys dropped or added, the ``kv_evict`` fields given random values, the audio
bytes damaged (header fields such as the sample rate or the channel count overwritten, truncated, random bytes) or
the base64 broken, the format changed; or the serialized body damaged (bytes flipped, cut, invalid UTF-8), the
content type changed, an empty body.

A finding is: no HTTP response (connection reset, timeout of --timeout seconds), the server process gone, an HTTP
5xx other than 501 (a bad request must be a 4xx; 501 answers a feature the server was started without, such as
``/v1/embeddings``), or a 4xx to a JSON body without an error message (cpp-httplib itself refuses some bodies of
other types, e.g. multipart without a boundary, with an empty 400). Each finding is written as JSON (endpoint,
body in base64, status, response) to OUT/findings/; the summary (executions, seconds, statuses, findings) to
OUT/summary.json. Exit status 0 without findings, 1 with.

  .venv/bin/python scripts/fuzz_server.py --seconds 600 --out build/fuzz/server     # or: bash scripts/fuzz.sh server
  .venv/bin/python scripts/fuzz_server.py --seconds 20 --out /tmp/fs                 # the test suite's bounded run
"""

from __future__ import annotations

import argparse
import base64
import collections
import copy
import http.client
import json
import random
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO
from load_test_server import PROMPT, Server, chat_body, free_port, speech_wav, tiny_model

sys.path.insert(0, str(REPO))

#: Values a mutation puts in place of any JSON value.
EXTREMES = [None, True, False, 0, -1, 1, 2 ** 31, -2 ** 63, 2 ** 64, 1e308, -1e308, 0.5, 1e-320, "", "0", "-1",
            "NaN", "audiokv", "x" * 5000, [], {}, [None], {"": None}, "\u0000", "\ud7ff\ue000", "%s%n", "../../etc"]
METHODS = ["full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv"]
#: Marks a value that request() replaces by that many nested arrays (too deep for Python's json to write).
DEEP = "@@deep:"
ENDPOINTS = ["/v1/chat/completions", "/chat/completions", "/completion", "/v1/completions", "/tokenize",
             "/detokenize", "/apply-template", "/infill", "/v1/embeddings", "/slots", "/props"]


def regressions() -> list[tuple[str, bytes, str]]:
    """What fuzzing found, sent first in every run (docs/fuzzing.md, "Found and fixed"): (endpoint, body, type)."""
    deep = b"[" * 100000 + b"1" + b"]" * 100000
    return [
        # a kv_evict value nested 100,000 deep: its error message dumped it recursively, SIGSEGV (stack overflow)
        ("/v1/completions", b'{"prompt": "a", "n_predict": 2, "kv_evict": {"method": "adakv", "keep": ' + deep + b"}}",
         "application/json"),
        ("/v1/completions", b'{"prompt": "a", "n_predict": 2, "kv_evict": {"stream": {"x": ' + deep + b"}}}",
         "application/json"),
        ("/detokenize", b'{"tokens": [18446744073709551616, 2, 3]}', "application/json"),  # was HTTP 500
        ("/detokenize", b'{"tokens": "x"}', "application/json"),                            # was HTTP 500
        ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}', "application/json"),  # was HTTP 500
        ("/v1/chat/completions", b'{"messages": [', "application/json"),                    # was HTTP 500
    ]


class ServerFuzzer:
    """Draws requests from ``seed`` and sends them to the server at ``base``."""

    def __init__(self, seed: int, max_tokens: int) -> None:
        self.rng = random.Random(seed)
        self.max_tokens = max_tokens
        self.wav = speech_wav(0.5)
        self.wav_long = speech_wav(3.0)

    # ------------------------------------------------------------------ valid starting points
    def _audio_b64(self, data: bytes | None = None) -> str:
        return base64.b64encode(self.wav if data is None else data).decode()

    def seed_request(self) -> tuple[str, object]:
        r = self.rng
        kind = r.randrange(6)
        if kind <= 2:
            extra = {}
            if kind >= 1:
                extra["kv_evict"] = {"method": r.choice(METHODS), "keep": r.choice([0.1, 0.4, 1.0]),
                                     "stream": r.random() < 0.5}
            if kind == 2:
                extra.update(stream=True)
            body = chat_body(self._audio_b64(self.wav_long if r.random() < 0.2 else None), self.max_tokens, **extra)
            return r.choice(ENDPOINTS[:2]), body
        if kind == 3:
            return r.choice(["/completion", "/v1/completions"]), {
                "prompt": PROMPT, "n_predict": self.max_tokens, "max_tokens": self.max_tokens,
                "kv_evict": {"method": r.choice(METHODS), "keep": 0.4}}
        if kind == 4:
            return r.choice(["/tokenize", "/detokenize"]), {"content": PROMPT, "tokens": [1, 2, 3], "with_pieces": True}
        return "/apply-template", {"messages": [{"role": "user", "content": PROMPT}]}

    # ------------------------------------------------------------------ mutations
    def _paths(self, value, prefix=()) -> list[tuple]:
        """Every path (tuple of keys / indices) to a value inside ``value``."""
        out = [prefix]
        if isinstance(value, dict):
            for k, v in value.items():
                out += self._paths(v, prefix + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                out += self._paths(v, prefix + (i,))
        return out

    @staticmethod
    def _set(root, path, value):
        if not path:
            return value
        node = root
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return root

    def _random_value(self, depth: int = 0):
        r = self.rng
        choice = r.randrange(6)
        if choice == 0 and depth < 3:
            return [self._random_value(depth + 1) for _ in range(r.randrange(4))]
        if choice == 1 and depth < 3:
            return {r.choice(["method", "keep", "stream", "type", "data", "format", "role", "content", "x"]):
                    self._random_value(depth + 1) for _ in range(r.randrange(4))}
        if choice == 2:
            return r.uniform(-10, 10)
        if choice == 3:
            return "".join(chr(r.randrange(1, 0x2FF)) for _ in range(r.randrange(12)))
        return r.choice(EXTREMES)

    def _damaged_wav(self) -> bytes:
        r = self.rng
        data = bytearray(self.wav)
        op = r.randrange(5)
        if op == 0:  # a header field (channels, rate, byte rate, block align, bits, data size) set to an extreme
            offset, fmt = r.choice([(22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I"), (4, "<I"),
                                    (16, "<I"), (20, "<H")])
            extreme = r.choice([0, 1, 3, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 1633943568, 8, 7])
            struct.pack_into(fmt, data, offset, extreme & (0xFFFF if fmt == "<H" else 0xFFFFFFFF))
        elif op == 1:
            data = data[: r.randrange(len(data))]
        elif op == 2:
            for _ in range(r.randrange(1, 16)):
                data[r.randrange(len(data))] = r.randrange(256)
        elif op == 3:
            data = bytearray(r.randbytes(r.randrange(1, 4096)))
        else:  # another container's magic on wav data
            data[:4] = r.choice([b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb\x90\x00", b"RIFX"])
        return bytes(data)

    def mutate(self, body):
        r = self.rng
        body = copy.deepcopy(body)
        op = r.randrange(7)
        if op <= 1:  # one value replaced
            path = r.choice(self._paths(body))
            return self._set(body, path, self._random_value())
        if op == 2:  # one key dropped or added
            dicts = [p for p in self._paths(body) if isinstance(self._get(body, p), dict)]
            node = self._get(body, r.choice(dicts)) if dicts else None
            if isinstance(node, dict):
                if node and r.random() < 0.5:
                    node.pop(r.choice(list(node)))
                else:
                    node[r.choice(["kv_evict", "id_slot", "n_probs", "cache_prompt", "n_keep", "samplers", "grammar",
                                   "response_format", "logit_bias", "lora", "input_audio", "image_url", "x"])] = \
                        self._random_value()
            return body
        if op == 3:  # kv_evict with random fields
            if isinstance(body, dict):
                body["kv_evict"] = {k: self._random_value() if r.random() < 0.5 else v for k, v in
                                    {"method": r.choice(METHODS), "keep": 0.4, "stream": True}.items()}
            return body
        audio = [p for p in self._paths(body) if p and p[-1] == "data"]
        if op == 4 and audio:  # the audio bytes damaged
            return self._set(body, r.choice(audio), self._audio_b64(self._damaged_wav()))
        if op == 5 and audio:  # the base64 broken, or the format changed
            path = r.choice(audio)
            if r.random() < 0.5:
                text = self._get(body, path)
                text = text if isinstance(text, str) else json.dumps(text)
                cut = r.randrange(len(text) + 1)
                return self._set(body, path, text[:cut] + r.choice(["", "=", "@@", "\n", "\u00e9", "===="]) + text[cut:])
            return self._set(body, path[:-1] + ("format",), r.choice(["mp3", "flac", "ogg", "", "WAV", None, 7]))
        # a whole subtree replaced by deep nesting (spliced into the text by request())
        path = r.choice(self._paths(body))
        return self._set(body, path, f"{DEEP}{r.choice([10, 100, 1000, 100000])}")

    @staticmethod
    def _get(root, path):
        for key in path:
            root = root[key]
        return root

    def request(self) -> tuple[str, bytes, str]:
        """(endpoint, body bytes, content type) of the next input."""
        r = self.rng
        endpoint, body = self.seed_request()
        for _ in range(r.randrange(1, 4)):
            body = self.mutate(body)
        if r.random() < 0.1:
            endpoint = r.choice(ENDPOINTS)
        text = json.dumps(body, allow_nan=True)
        while DEEP in text:  # "<DEEP>N" -> N nested arrays
            start = text.index('"' + DEEP)
            end = text.index('"', start + 1)
            depth = int(text[start + 1 + len(DEEP):end])
            text = text[:start] + "[" * depth + "1" + "]" * depth + text[end + 1:]
        raw = text.encode("utf-8", "surrogatepass")
        content_type = "application/json"
        op = r.randrange(10)
        if op == 0:
            raw = raw[: r.randrange(len(raw) + 1)]
        elif op == 1:
            raw = bytearray(raw)
            for _ in range(r.randrange(1, 8)):
                raw[r.randrange(len(raw))] = r.randrange(256)
            raw = bytes(raw)
        elif op == 2:
            raw = r.choice([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"messages": "\xc3\x28"}', b"{}" * 1000])
        elif op == 3:
            content_type = r.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
        return endpoint, raw, content_type


def send(host: str, port: int, endpoint: str, raw: bytes, content_type: str, timeout: float) -> tuple[int | None, str]:
    """POST ``raw``; (HTTP status, body text) or (None, why there was no response)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request("POST", endpoint, body=raw, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException, socket.timeout) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def has_error_message(text: str) -> bool:
    try:
        answer = json.loads(text)
    except ValueError:
        return bool(text.strip())
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return isinstance(message, str) and bool(message.strip())


def fuzz(args, work: Path) -> dict:
    model, mmproj = tiny_model(work, args.seed)
    port = free_port()
    command = [sys.executable, "-m", "audiokv_edge.serve", str(model), "--mmproj", str(mmproj),
               "--kv-evict", "audiokv", "--kv-evict-keep", "0.4", "-np", "2", "-c", str(2 * args.ctx_per_slot),
               "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port)]
    out = Path(args.out)
    findings_dir = out / "findings"
    findings_dir.mkdir(parents=True, exist_ok=True)
    fuzzer = ServerFuzzer(args.seed, args.max_tokens)
    statuses: collections.Counter = collections.Counter()
    findings: list[dict] = []
    executions = 0
    with Server(command, port, out / "server.log") as server:
        t0 = time.monotonic()
        found_before = regressions()
        while time.monotonic() - t0 < args.seconds and (args.runs is None or executions < args.runs):
            endpoint, raw, content_type = found_before.pop(0) if found_before else fuzzer.request()
            status, text = send("127.0.0.1", port, endpoint, raw, content_type, args.timeout)
            executions += 1
            statuses[str(status)] += 1
            alive = server.proc.poll() is None
            problem = None
            if not alive:
                problem = f"server exited with status {server.proc.returncode}"
            elif status is None:
                problem = f"no HTTP response: {text}"
            elif status >= 500 and status != 501:  # 501: a feature this server was started without (--embeddings)
                problem = f"HTTP {status} (a bad request must be a 4xx)"
            elif 400 <= status < 500 and content_type == "application/json" and not has_error_message(text):
                # (a body of another type may be refused by cpp-httplib itself, e.g. multipart without a boundary:
                # a 400 with no body, before any handler runs)
                problem = f"HTTP {status} without an error message"
            if problem:
                finding = {"index": executions - 1, "problem": problem, "endpoint": endpoint,
                           "content_type": content_type, "body_b64": base64.b64encode(raw).decode(),
                           "status": status, "response": text[:2000]}
                findings.append(finding)
                (findings_dir / f"finding-{executions - 1:06d}.json").write_text(json.dumps(finding, indent=1))
                print(f"fuzz_server: finding at input {executions - 1}: {problem} ({endpoint})", file=sys.stderr)
                if not alive:
                    break
        wall = time.monotonic() - t0
        alive_at_end = server.proc.poll() is None
    summary = {"target": "server", "seed": args.seed, "executions": executions, "wall_s": round(wall, 1),
               "exec_per_s": round(executions / wall, 2) if wall else None, "statuses": dict(statuses),
               "findings": len(findings), "problems": sorted({f["problem"] for f in findings}),
               "server_alive_at_end": alive_at_end, "server_command": command}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="fuzzing time, server start not counted (default 60)")
    p.add_argument("--runs", type=int, default=None, help="stop after this many requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "build" / "fuzz" / "server"), help="findings and summary.json")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before it is a finding")
    p.add_argument("--max-tokens", type=int, default=4, help="max_tokens of the valid requests mutated")
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="audiokv-fuzz-server-") as work:
        summary = fuzz(args, Path(work))
    print(json.dumps({k: v for k, v in summary.items() if k != "server_command"}))
    return 1 if summary["findings"] or not summary["server_alive_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
