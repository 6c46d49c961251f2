"""Hybrid memory (LFM2: short-convolution recurrent layers + attention layers) is refused by per-head eviction.

The model is a random-weight LFM2 written by llama.cpp's own test-llama-archs (``-o DIR`` saves its test models);
llama.cpp gives it a hybrid memory (llama_memory_hybrid), which llama_kv_evict_init refuses with
LLAMA_KV_EVICT_ERR_UNSUPPORTED and a logged reason (docs/per-head-eviction.md, section 9). The runner turns that
into one error line (exit 1, no traceback) naming the problem and ``--method full``, which runs the model.
The C-level check runs in a child process so that its log callback cannot leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiokv_edge.profile.gguf_header import GGUFHeader, GGUFValueType
from audiokv_edge.testing.tiny_models import AudioProjectorSpec, write_audio_projector

pytestmark = pytest.mark.native

REPO = Path(__file__).resolve().parent.parent
JFK = REPO / "audiokv_edge" / "data" / "jfk.wav"
REASON = "recurrent or hybrid"

# Child: load the LFM2 model, try both eviction modes, then check the context still decodes and evict_seq refuses.
INIT_PROBE = r"""
import ctypes, json, sys
from audiokv_edge.native import llama_kv_evict as E
from audiokv_edge.runtime.llama import ContextParams, LlamaError, LlamaModel, init_llama_cpp
llama = init_llama_cpp()
logged = []
log_cb = llama.llama_log_callback(lambda level, text, data: logged.append((int(level), (text or b"").decode())))
llama.llama_log_set(log_cb, ctypes.c_void_p())
try:
    llm = LlamaModel(sys.argv[1])
    ctx = llm.new_context(ContextParams(n_ctx=128, flash_attn=None))
except LlamaError:
    print(json.dumps({"loaded": False}))
    sys.exit()
lib = E.load_library()
out = {"loaded": True, "init": {}}
callback = E.make_callback(lambda seq_id, layers, uniform: 0)
for name, mode in (("mask", E.LLAMA_KV_EVICT_MODE_MASK), ("compact", E.LLAMA_KV_EVICT_MODE_COMPACT)):
    params = lib.llama_kv_evict_default_params()
    params.mode = mode
    params.callback = callback
    del logged[:]
    rc = lib.llama_kv_evict_init(ctx, params)
    out["init"][name] = {"rc": rc, "status": E.status_name(lib, rc), "errors": [t for lv, t in logged if lv == 4]}
tokens = (llama.llama_token * 8)(*range(1, 9))
out["decode_rc"] = llama.llama_decode(ctx, llama.llama_batch_get_one(tokens, 8))
out["evict_seq_rc"] = lib.llama_kv_evict_seq(ctx, 0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    """(model, mmproj): llama.cpp's random LFM2 test model and a random qwen2a projector of its width."""
    from test_llama_cpp_own_tests import run_program

    directory = tmp_path_factory.mktemp("lfm2")
    run_program("test-llama-archs", "-a", "^lfm2$", "-s", "1", "-o", str(directory))
    model = directory / "lfm2-dense.gguf"
    assert model.is_file(), sorted(p.name for p in directory.iterdir())
    header = GGUFHeader(model)
    assert header.scalar("general.architecture", (GGUFValueType.STRING,)) == "lfm2"
    width = header.scalar("lfm2.embedding_length", (GGUFValueType.UINT32,))
    mmproj = directory / "mmproj-qwen2a.gguf"
    write_audio_projector(mmproj, AudioProjectorSpec("qwen2a"), n_embd_text=int(width))
    return model, mmproj


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def test_evict_init_refuses_hybrid_memory_with_a_logged_reason(lfm2):
    from audiokv_edge.native import llama_kv_evict as E

    model, _ = lfm2
    proc = run("-c", INIT_PROBE, str(model))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"]
    for mode in ("mask", "compact"):
        result = out["init"][mode]
        assert result["rc"] == E.LLAMA_KV_EVICT_ERR_UNSUPPORTED, result
        assert result["status"] == "LLAMA_KV_EVICT_ERR_UNSUPPORTED"
        assert any("llama_kv_evict_init" in line and REASON in line for line in result["errors"]), result
    assert out["decode_rc"] == 0  # the refusal leaves the context usable
    assert out["evict_seq_rc"] == E.LLAMA_KV_EVICT_ERR_NOT_INIT


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_runner_gives_one_error_line(lfm2, stream):
    model, mmproj = lfm2
    extra = ["--stream"] if stream else []
    proc = run("-m", "audiokv_edge.run", str(model), str(JFK), "--mmproj", str(mmproj), "--method", "audiokv",
               "--ctx", "1024", "--max-tokens", "2", "--threads", "1", *extra)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and ": WARNING: " not in ln]
    assert len(lines) == 1 and lines[0].startswith("audiokv-run: error: "), proc.stderr
    for needle in ("per-head eviction cannot run", "LLAMA_KV_EVICT_ERR_UNSUPPORTED", REASON, "--method full"):
        assert needle in lines[0], (needle, lines[0])


def test_runner_full_cache_works(lfm2):
    model, mmproj = lfm2
    proc = run("-m", "audiokv_edge.run", str(model), str(JFK), "--mmproj", str(mmproj), "--method", "full",
               "--ctx", "1024", "--max-tokens", "2", "--threads", "1", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["audio_tokens"] == 750 and record["kv_bytes_kept"] == record["kv_bytes_full"] > 0
