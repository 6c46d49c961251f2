"""llama.cpp's own tools with per-head KV eviction: llama-server (``python -m audiokv_edge.serve``) and llama-mtmd-cli,
built with --kv-evict, on a tiny qwen3 + qwen2a pair and real speech (jfk.wav).

- an OpenAI chat request with input_audio (the official ``openai`` client) answers, its ``timings.kv_evict`` reports
  ~40 % of the prompt's KV bytes kept with snapkv keep 0.4, and the greedy answer is the runner's
  (``python -m audiokv_edge.run --json``, same method, keep, prompt and max tokens), also with eviction after every
  audio chunk (the request's ``"stream": true``, the runner's ``--stream``);
- a request's ``"kv_evict"`` overrides the server's flags; malformed ones are HTTP 400 and the server stays up;
- two parallel slots (-np 2) each evict their own sequence;
- both tools keep the KV cache and attention in host memory (offload_kqv = false) with --kv-evict, and log it;
- llama-mtmd-cli with the same flags prints the runner's greedy answer.
(Malformed media, two hours of audio and a long run of parallel requests: tests/test_load_test_server.py.)
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.evict_fixtures import child_env, run_python

REPO = Path(__file__).resolve().parents[1]
JFK = REPO / "audiokv_edge" / "data" / "jfk.wav"
PAIR = "qwen3-qwen2a"
SEED = 1  # weights whose greedy answer changes with snapkv keep 0.4 (the comparison with the runner then tells)
PROMPT = "Transcribe the audio."
MAX_TOKENS = 8
KEEP = 0.4
# the same context and batches everywhere: the same ubatches, hence the same floats and the same greedy tokens
COMMON_FLAGS = ["-c", "4096", "-b", "512", "-ub", "512", "-t", "2", "-fa", "off"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("serve"), PAIR, seed=SEED)


@pytest.fixture(scope="module")
def server_run(pair, tmp_path_factory):
    """llama-server through ``python -m audiokv_edge.serve`` on loopback: snapkv, keep 0.4, two slots; (url, log)."""
    model, mmproj = pair
    port = _free_port()
    cmd = [sys.executable, "-m", "audiokv_edge.serve", str(model), "--mmproj", str(mmproj),
           "--kv-evict", "snapkv", "--kv-evict-keep", str(KEEP), "--host", "127.0.0.1", "--port", str(port),
           "-np", "2", *COMMON_FLAGS]
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"llama-server did not become ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    yield url, log
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(server_run):
    return server_run[0]


def _client(url: str):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=300, max_retries=0)


def _messages() -> list[dict]:
    audio = base64.b64encode(JFK.read_bytes()).decode()
    # the runner's user turn is the media marker, a newline, then the prompt; the server joins the parts as they are
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                         {"type": "text", "text": "\n" + PROMPT}]}]


def _chat(url: str, kv_evict: dict | None = None) -> dict:
    extra = {} if kv_evict is None else {"kv_evict": kv_evict}
    response = _client(url).chat.completions.create(
        model=PAIR, messages=_messages(), max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, top_logprobs=1,
        extra_body=extra)
    return response.to_dict()


def _answer_text(record: dict) -> str:
    """The generated text as the runner decodes it: every token's bytes, UTF-8 with replacement."""
    content = record["choices"][0]["logprobs"]["content"]
    return b"".join(bytes(entry["bytes"]) for entry in content).decode("utf-8", "replace")


def _runner(pair, *extra: str) -> dict:
    model, mmproj = pair
    proc = run_python("-m", "audiokv_edge.run", str(model), str(JFK), "--mmproj", str(mmproj), "--prompt", PROMPT,
                      "-n", str(MAX_TOKENS), "-c", "4096", "-t", "2", "--json", "--quiet", *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _kept_fraction(kv: dict) -> float:
    return kv["kv_bytes_kept"] / kv["kv_bytes_full"]


@pytest.mark.native
def test_chat_with_audio_evicts_and_answers_as_the_runner(server, pair):
    record = _chat(server)
    assert isinstance(record["choices"][0]["message"]["content"], str)
    kv = record["timings"]["kv_evict"]
    assert kv["method"] == "snapkv" and kv["keep"] == pytest.approx(KEEP) and kv["keep_source"] == "config"
    assert kv["n_evictions"] == 1 and not kv["stream"] and "error" not in kv
    assert kv["kv_bytes_full"] > 0 and _kept_fraction(kv) == pytest.approx(KEEP, abs=0.01)

    ran = _runner(pair, "--method", "snapkv", "--keep", str(KEEP))
    assert kv["n_past"] == ran["prompt_tokens"]
    assert kv["kv_bytes_full"] == ran["kv_bytes_full"] and kv["kv_bytes_kept"] == ran["kv_bytes_kept"]
    assert _answer_text(record) == ran["text"]
    assert _answer_text(_chat(server, {"method": "full"})) != ran["text"]  # the eviction changed this answer


@pytest.mark.native
def test_request_streams_the_eviction_as_the_runner(server, pair):
    """"stream": true evicts after the audio chunk too (it is not the prompt's last chunk), as --stream does."""
    record = _chat(server, {"stream": True})
    kv = record["timings"]["kv_evict"]
    assert kv["stream"] and kv["n_evictions"] == 2 and _kept_fraction(kv) == pytest.approx(KEEP, abs=0.02)
    ran = _runner(pair, "--method", "snapkv", "--keep", str(KEEP), "--stream")
    assert kv["kv_bytes_kept"] == ran["kv_bytes_kept"]
    assert _answer_text(record) == ran["text"]


@pytest.mark.native
def test_request_overrides_the_method(server):
    kv = _chat(server, {"method": "streamingllm", "keep": 0.5})["timings"]["kv_evict"]
    assert kv["method"] == "streamingllm" and kv["keep"] == pytest.approx(0.5)
    assert _kept_fraction(kv) == pytest.approx(0.5, abs=0.01)
    kv = _chat(server, {"method": "full"})["timings"]["kv_evict"]
    assert kv["method"] == "full" and kv["n_evictions"] == 0 and kv["kv_bytes_kept"] == kv["kv_bytes_full"]


@pytest.mark.native
@pytest.mark.parametrize("kv_evict, needle", [
    ({"method": "magic"}, "unknown KV eviction method 'magic'"),
    ({"keep": 0}, "kv_evict.keep"),
    ({"keep": 2}, "kv_evict.keep"),
    ({"keep": "half"}, "kv_evict.keep"),
    ({"stream": "yes"}, "kv_evict.stream"),
    ({"window": 8}, "kv_evict.window"),
    ("snapkv", "must be an object"),
])
def test_malformed_kv_evict_is_400_and_the_server_stays_up(server, kv_evict, needle):
    body = json.dumps({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2,
                       "kv_evict": kv_evict}).encode()
    request = urllib.request.Request(server + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 400
    assert needle in info.value.read().decode()
    with urllib.request.urlopen(server + "/health", timeout=10) as r:
        assert r.status == 200


HOST_KV_LOG = "the KV cache and attention stay in host memory (offload_kqv = false)"


@pytest.mark.native
def test_server_keeps_the_kv_cache_in_host_memory(server_run):
    """--kv-evict sets llama.cpp's offload_kqv = false before the context is made (on a GPU build the layers stay
    offloaded, the cache and attention stay where the eviction rewrites them) and logs it."""
    assert HOST_KV_LOG in server_run[1].read_text()


@pytest.mark.native
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_server_does_not_map_the_model_file(server, pair):
    """The server read the weights into memory (audiokv_edge.serve's LLAMA_ARG_LOAD_MODE=none): no mapping of the
    model file, so a file cut meanwhile cannot kill it with SIGBUS (tests/test_model_file_changed.py)."""
    model = str(pair[0])
    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).count(model)]
    assert pids, "no process with the model on its command line"
    for pid in pids:
        maps = (Path("/proc") / pid / "maps").read_text()
        assert model not in maps, [line for line in maps.splitlines() if model in line][:3]
    assert str(pair[1]) in " ".join(_cmdline(Path("/proc") / pids[0]))  # the server itself, with its projector


def _cmdline(proc_dir: Path) -> list[str]:
    try:
        return (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.native
def test_parallel_slots_evict_their_own_sequence(server):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_chat, server, {"keep": keep}) for keep in (0.3, 0.6)]
        records = [f.result() for f in futures]
    for record, keep in zip(records, (0.3, 0.6)):
        kv = record["timings"]["kv_evict"]
        assert kv["n_evictions"] == 1 and "error" not in kv
        assert _kept_fraction(kv) == pytest.approx(keep, abs=0.01)


@pytest.mark.native
def test_mtmd_cli_answers_as_the_runner(pair):
    from audiokv_edge.native.libs import library_path_env, tool_path

    model, mmproj = pair
    marker = "<<<ANSWER>>>"
    env = library_path_env(child_env())
    env["MTMD_TEST_RESPONSE_MARKER"] = marker
    proc = subprocess.run([str(tool_path("llama-mtmd-cli")), "-m", str(model), "--mmproj", str(mmproj),
                           "--audio", str(JFK), "-p", "\n" + PROMPT, "-n", str(MAX_TOKENS), "--temp", "0",
                           "--kv-evict", "snapkv", "--kv-evict-keep", str(KEEP), *COMMON_FLAGS],
                          env=env, capture_output=True, timeout=600)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr[-3000:]
    assert HOST_KV_LOG in stderr
    found = re.search(r"snapkv keep 0.4 \(config\): KV ([0-9.]+) of ([0-9.]+) KiB kept", stderr)
    assert found, stderr[-3000:]
    assert float(found[1]) / float(found[2]) == pytest.approx(KEEP, abs=0.01)
    out = proc.stdout.decode("utf-8", "replace")
    answer = out.split(marker + "\n", 1)[1].removeprefix("\n").rstrip("\n")
    assert answer == _runner(pair, "--method", "snapkv", "--keep", str(KEEP))["text"].rstrip("\n")


# --- the launcher itself (no native code) -------------------------------------------------------------------------


def test_serve_passes_the_model_as_dash_m(tmp_path, monkeypatch):
    from audiokv_edge import serve
    from audiokv_edge.native import libs

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(libs, "tool_path", lambda name: Path("/opt/bin") / name)
    assert serve.server_command([str(model), "--kv-evict", "audiokv", "--port", "9"]) == \
        ["/opt/bin/llama-server", "-m", str(model), "--kv-evict", "audiokv", "--port", "9"]
    assert serve.server_command(["-m", str(model)]) == ["/opt/bin/llama-server", "-m", str(model)]


def test_serve_errors(tmp_path, capsys):
    from audiokv_edge import serve

    assert serve.main([]) == 2
    assert "usage:" in capsys.readouterr().err
    assert serve.main([str(tmp_path / "nope.gguf")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_the_server_gets_a_fixed_mmap_threshold(pair, monkeypatch):
    """glibc: the server starts with allocations of >= 1 MiB mmap'd (freed audio buffers go back to the system; the
    load test's RSS check fails without it); a value the caller set is kept."""
    from audiokv_edge import serve

    model, mmproj = pair
    handed = []
    monkeypatch.setattr(serve.os, "execve", lambda path, args, env: handed.append(env))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert serve.main([str(model), "--mmproj", str(mmproj)]) == 1  # 1: execve returned (here: did not replace us)
    assert handed[-1]["MALLOC_MMAP_THRESHOLD_"] == "1048576"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    serve.main([str(model), "--mmproj", str(mmproj)])
    assert handed[-1]["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_the_server_reads_the_weights_into_memory(pair, monkeypatch):
    """The server loads the model without a mapping (a file truncated meanwhile would kill it with SIGBUS:
    tests/test_model_file_changed.py); a load mode the caller set is kept."""
    from audiokv_edge import serve

    model, mmproj = pair
    handed = []
    monkeypatch.setattr(serve.os, "execve", lambda path, args, env: handed.append(env))
    monkeypatch.delenv("LLAMA_ARG_LOAD_MODE", raising=False)
    monkeypatch.delenv("LLAMA_ARG_LAZY_MODE", raising=False)
    serve.main([str(model), "--mmproj", str(mmproj)])
    assert (handed[-1]["LLAMA_ARG_LOAD_MODE"], handed[-1]["LLAMA_ARG_LAZY_MODE"]) == ("none", "off")
    monkeypatch.setenv("LLAMA_ARG_LOAD_MODE", "mmap")
    serve.main([str(model), "--mmproj", str(mmproj)])
    assert handed[-1]["LLAMA_ARG_LOAD_MODE"] == "mmap"
