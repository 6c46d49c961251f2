"""The Session API: one load answers many audio prompts; streaming iterator and callback agree with answer();
greedy decoding is deterministic; the chat template comes from the GGUF; a follow-up continues the last answer;
close() frees every handle (text documents: tests/test_text_input.py).

Each probe runs in a subprocess so that a native abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.runtime.session import SessionConfig
from audiokv_edge.testing.tiny_models import write_tiny_pair

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"

PROBE = r"""
import json, sys
import numpy as np
from audiokv_edge.runtime.session import Session, SessionConfig, SessionError
from audiokv_edge.runtime.audio import load_audio
model, jfk, arctic = sys.argv[1:4]
out = {}
with Session(model, config=SessionConfig(method="full", max_tokens=8, threads=2, ctx=2048)) as s:
    out["prompt"] = s.render_prompt("Transcribe the audio.")
    a = s.answer(jfk)
    pieces, calls = [], []
    for piece in s.stream(jfk):
        pieces.append(piece)
    streamed = s.last_answer
    b = s.answer(arctic, "What is said?", on_token=calls.append)
    clip = load_audio(jfk, 44100)  # a clip at another rate is resampled to the projector's
    c = s.answer(clip.samples, sample_rate=44100)
    f = s.follow_up("Who said it?")  # the next turn, on the cache of the last answer
    out.update(a=a.to_dict(), streamed_text="".join(pieces), streamed=streamed.to_dict(), b=b.to_dict(),
               callback_text="".join(calls), c=c.to_dict(), f=f.to_dict(), supports_audio=s.supports_audio)
    handles = [s._model, s._ctx, s._mctx]
out["freed"] = [s._model, s._ctx, s._mctx] == [None, None, None] and all(h for h in handles)
try:
    s.stream(jfk)
    out["closed_error"] = ""
except SessionError as exc:
    out["closed_error"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    model, _ = write_tiny_pair(tmp_path_factory.mktemp("tiny"), "qwen2-qwen2a")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), str(DATA / "jfk.wav"),
                           str(DATA / "arctic_a0007.wav")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.native
def test_chat_template_from_gguf_with_audio_marker(probe):
    prompt = probe["prompt"]
    assert prompt.startswith("<|im_start|>user\n<__media__>\nTranscribe the audio.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.native
def test_many_prompts_one_load_and_deterministic(probe):
    a, streamed, b = probe["a"], probe["streamed"], probe["b"]
    assert a["text"] == streamed["text"] == probe["streamed_text"]  # greedy: same audio, same answer
    assert a["audio_tokens"] == 750 and b["audio_tokens"] == 750  # one 30 s chunk each
    assert b["audio_seconds"] == pytest.approx(4.0) and probe["callback_text"] == b["text"]
    assert a["generated_tokens"] <= 8


@pytest.mark.native
def test_follow_up_after_an_audio_answer(probe):
    f, c = probe["f"], probe["c"]
    assert probe["supports_audio"] is True
    assert f["audio_tokens"] == 0 and 0 < f["prompt_tokens"] < 40 and f["generated_tokens"] <= 8
    assert f["kv_bytes_full"] > c["kv_bytes_full"]          # the whole conversation: the audio prompt, answer, turn


@pytest.mark.native
def test_array_input_is_resampled(probe):
    assert probe["c"]["audio_seconds"] == pytest.approx(11.0, abs=1e-3)
    assert probe["c"]["audio_tokens"] == probe["a"]["audio_tokens"]


@pytest.mark.native
def test_close_frees_handles(probe):
    assert probe["freed"] is True
    assert "closed" in probe["closed_error"]


@pytest.mark.parametrize("bad", [dict(keep=0), dict(keep=-1), dict(keep=1.5), dict(keep="abc"),
                                 dict(method="nope"), dict(max_tokens=0), dict(kv_type="q4_0"), dict(ctx=8)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SessionConfig(**bad)


PROBE_STREAM = r"""
import json, sys
import numpy as np, soundfile as sf
from audiokv_edge.runtime.session import Session, SessionConfig
model, jfk, long_path = sys.argv[1:4]
speech, rate = sf.read(jfk, dtype="float32")
sf.write(long_path, np.tile(speech, 10)[: 100 * rate], rate)
cfg = SessionConfig(method="snapkv", keep=0.4, stream=True, max_tokens=4, threads=2, ctx=1024)
with Session(model, config=cfg) as s:
    a = s.answer(long_path)
    g = s.geometry
    print(json.dumps({"answer": a.to_dict(), "evictions": s.last_evictions, "heads": g.n_layer * g.n_head_kv,
                      "chunk_tokens": s.audio_chunk_tokens()}))
"""


@pytest.mark.native
def test_stream_keeps_kv_memory_bounded(tmp_path):
    """--stream on 100 s of speech (four 30 s chunks) in a 1,024-token context: after every eviction the heads hold
    keep x the positions seen (within 5%), and the bytes in use never exceed keep x the whole prompt + about one
    chunk (its main-cache cells and the pools' headroom for it) + the answer."""
    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    proc = subprocess.run([sys.executable, "-c", PROBE_STREAM, str(model), str(DATA / "jfk.wav"),
                           str(tmp_path / "speech_100s.flac")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    answer, evictions, heads, chunk = out["answer"], out["evictions"], out["heads"], out["chunk_tokens"]
    assert answer["audio_tokens"] == 4 * chunk == 3000
    assert len(evictions) == 5                                      # after chunks 1-4, and after the question
    assert abs(answer["kv_bytes_kept"] / answer["kv_bytes_full"] - 0.4) <= 0.02
    entry_bytes = evictions[0]["bytes_kept_after"] / evictions[0]["entries_after"]   # K + V row of one head
    for e in evictions:
        assert abs(e["entries_after"] / (heads * e["n_past"]) - 0.4) <= 0.02, e
    full_bytes = heads * evictions[-1]["n_past"] * entry_bytes
    one_chunk = heads * (chunk + 64 + 4 + 1) * entry_bytes           # chunk + text margin + answer
    peak = max(e["bytes_used_before"] for e in evictions)
    assert peak <= 0.4 * full_bytes + 2 * one_chunk, (peak, full_bytes, one_chunk)
    for prev, e in zip(evictions, evictions[1:]):                    # growth between evictions: one chunk
        assert e["bytes_used_before"] - prev["bytes_used_after"] <= 2 * one_chunk


HOST_KV = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from audiokv_edge.runtime.session import Session, SessionConfig
out = {}
for method in ("snapkv", "full"):
    with Session(sys.argv[1], config=SessionConfig(method=method, keep=None if method == "full" else 0.4,
                                                   max_tokens=2, threads=1, ctx=1024)) as s:
        answer = s.answer(sys.argv[2])
        out[method] = {"offload_kqv": s.context_params.offload_kqv, "kept": answer.stats.kv_bytes_kept,
                       "full": answer.stats.kv_bytes_full}
print(json.dumps(out))
"""


@pytest.mark.native
def test_evicting_session_keeps_the_kv_cache_in_host_memory(tmp_path):
    """With eviction on, the session's context is made with offload_kqv = false (on a GPU build the layers stay
    offloaded, the KV cache and attention stay in host memory where the eviction rewrites them), logged; method full
    keeps llama.cpp's default."""
    model, _ = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    proc = subprocess.run([sys.executable, "-c", HOST_KV, str(model), str(DATA / "jfk.wav")], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["snapkv"]["offload_kqv"] is False and out["full"]["offload_kqv"] is True
    assert out["snapkv"]["kept"] < out["snapkv"]["full"]  # and the eviction ran on that context
    assert proc.stderr.count("the KV cache and attention stay in host memory (offload_kqv = false)") == 1
