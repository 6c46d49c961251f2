"""The encoded-audio cache (audiokv_edge/runtime/encoded_audio.py): a second question about the same recording
skips the audio encoder and gets the answer it gets without the cache, token for token and byte for byte of KV
cache, on the built-in demo model (Whisper encoder, mel windows) and on a tiny Qwen2-Audio pair (one chunk), for a
file and for samples in memory; a new recording replaces the kept one; the cache holds no more than its limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.runtime.audio import clip_from_array
from audiokv_edge.runtime.encoded_audio import EncodedAudioCache, recording_key
from audiokv_edge.runtime.session import SessionConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "audiokv_edge" / "data"


def test_cache_keeps_one_recording_within_its_limit():
    c = EncodedAudioCache(3 * 4 * 10)
    a, b = ("file", "a", 1, 1), ("file", "b", 1, 1)
    assert c.get(a, (0, 10)) is None and c.misses == 1
    embd = np.arange(10, dtype=np.float32)
    c.put(a, (0, 10), embd)
    embd[:] = -1  # a copy is kept, not the caller's buffer (libmtmd's output is overwritten by the next encode)
    assert np.array_equal(c.get(a, (0, 10)), np.arange(10)) and c.hits == 1
    c.put(a, (1, 10), np.zeros(10, np.float32))
    c.put(a, (2, 10), np.zeros(10, np.float32))
    c.put(a, (3, 10), np.zeros(10, np.float32))  # over the limit: not kept
    assert c.nbytes == 120 and c.get(a, (3, 10)) is None
    assert c.get(b, (0, 10)) is None
    c.put(b, (0, 10), np.ones(10, np.float32))  # a new recording replaces the old one
    assert c.get(a, (0, 10)) is None and c.nbytes == 40
    c.clear()
    assert c.nbytes == 0 and EncodedAudioCache(0).nbytes == 0
    off = EncodedAudioCache(0)
    off.put(a, (0, 10), np.ones(10, np.float32))
    assert off.get(a, (0, 10)) is None


def test_recording_key_follows_the_content(tmp_path):
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    k1 = recording_key(clip_from_array(x, 16000, 16000))
    assert k1 == recording_key(clip_from_array(x.copy(), 16000, 16000))
    y = x.copy()
    y[5] += 1e-3
    assert recording_key(clip_from_array(y, 16000, 16000)) != k1
    f = tmp_path / "a.wav"
    f.write_bytes(b"0" * 100)
    kf = recording_key(type("Clip", (), {"path": str(f)})())
    assert kf[0] == "file" and kf[1] == str(f.resolve())
    f.write_bytes(b"1" * 101)
    os.utime(f, ns=(1, 1))
    assert recording_key(type("Clip", (), {"path": str(f)})()) != kf
    f.unlink()  # a clip whose file is gone is not kept
    assert recording_key(type("Clip", (), {"path": str(f)})()) is None


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_cache_size_is_refused(bad):
    with pytest.raises(ValueError, match="audio_cache_mb"):
        SessionConfig(audio_cache_mb=bad)


PROBE = r"""
import json, sys
import numpy as np
from audiokv_edge.runtime.audio import load_audio
from audiokv_edge.runtime.session import Session, SessionConfig
model, mmproj, lora, jfk, methods = sys.argv[1:6]
mmproj, lora = mmproj or None, lora or None
clip = load_audio(jfk, 16000)
long_samples = np.concatenate([clip.samples] * 4)  # 44 s: two mel windows
out = {}
for mb in (0, 64):
    for method in methods.split(","):
        cfg = SessionConfig(method=method, keep=None if method == "full" else 0.4, max_tokens=12, threads=2,
                            ctx=2048, audio_cache_mb=mb)
        with Session(model, mmproj=mmproj, lora=lora, config=cfg) as s:
            rows = []
            for audio, q in ((jfk, "Transcribe the audio."), (jfk, "Who is speaking?"),
                             (long_samples, "Transcribe the audio."), (long_samples.copy(), "What is said?"),
                             (jfk, "What is said?")):
                a = s.answer(audio, q, sample_rate=16000 if not isinstance(audio, str) else None)
                rows.append([a.text, a.stats.kv_bytes_kept, a.stats.prompt_tokens, a.stats.audio_tokens])
            out[f"{mb}/{method}"] = {"rows": rows, "hits": s._encoded_audio.hits, "misses": s._encoded_audio.misses}
print(json.dumps(out))
"""


def _probe(model, mmproj, lora, methods):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), str(mmproj or ""), str(lora or ""),
                           str(DATA / "jfk.wav"), ",".join(methods)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(out, windows_long, methods):
    for method in methods:
        off, on = out[f"0/{method}"], out[f"64/{method}"]
        assert on["rows"] == off["rows"], method  # same text, same kept bytes, same prompt
        assert off["hits"] == 0
        # jfk encoded, then taken from the cache; the long clip's windows encoded, then taken (a copy of the same
        # samples is the same recording); jfk again encoded (the long clip replaced it)
        assert on["hits"] == 1 + windows_long, on
        assert on["misses"] == 1 + windows_long + 1, on


@pytest.mark.native
def test_cached_audio_gives_the_same_answers_demo_model():
    from audiokv_edge.demo_model import export

    demo = export.demo_paths()
    _check(_probe(demo.model, demo.mmproj, demo.lora, ["audiokv"]), windows_long=2, methods=["audiokv"])


@pytest.mark.native
def test_cached_audio_gives_the_same_answers_qwen2a(tmp_path):
    from audiokv_edge.testing.tiny_models import write_tiny_pair

    model, mmproj = write_tiny_pair(tmp_path, "qwen2-qwen2a")
    out = _probe(model, mmproj, None, ["full", "audiokv"])
    _check(out, windows_long=out["64/full"]["hits"] - 1, methods=["full", "audiokv"])
    assert out["64/full"]["hits"] >= 2
