"""Hybrid memory (LFM2: short-convolution recurrent layers + attention layers): per-head eviction evicts the
attention layers' KV and leaves the recurrent / conv state alone.

The model is a random-weight LFM2 written by llama.cpp's own test-llama-archs (``-o DIR`` saves its test models),
its attention layers made full-attention as in LFM2-Audio (``without_sliding_window``); llama.cpp gives it a hybrid
memory (llama_memory_hybrid), whose attention cache llama_kv_evict_init takes
(docs/model-families.md). The compacted cache equals the MASK-mode oracle over 32 greedy tokens
(tests/test_evict_families.py); here: both modes initialise on the hybrid context, which then decodes and evicts,
and the runner runs AudioKV on it (once and --stream) to the keep ratio.
The C-level check runs in a child process so that its log callback cannot leak into other tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiokv_edge.profile.gguf_header import GGUFHeader, GGUFValueType
from audiokv_edge.testing.tiny_models import AudioProjectorSpec, write_audio_projector
from evict_fixtures import INIT_PROBE_PREAMBLE, run_python  # the shared harness of the eviction tests

pytestmark = pytest.mark.native

REPO = Path(__file__).resolve().parent.parent
JFK = REPO / "audiokv_edge" / "data" / "jfk.wav"

# Child: load the LFM2 model, initialise both eviction modes (one context each), decode, evict.
INIT_PROBE = INIT_PROBE_PREAMBLE + r"""
seen = []
def plan(seq_id, layers, uniform):
    seen.append([lv.il for lv in layers])
    for lv in layers:
        for h in range(lv.n_head_kv):
            lv.set_keep(h, list(range(0, len(lv.pos[h]), 2)) + ([len(lv.pos[h]) - 1] if len(lv.pos[h]) % 2 == 0 else []))
    return 0
callback = E.make_callback(plan)
for name, ctx, rc in init_each_mode(callback):
    decode_rc = decode(ctx, list(range(1, 17)))
    evict_rc = lib.llama_kv_evict_seq(ctx, 0)
    st = E.llama_kv_evict_stats()
    lib.llama_kv_evict_get_stats(ctx, 0, ctypes.byref(st))
    out[name] = {"rc": rc, "decode_rc": decode_rc, "evict_rc": evict_rc, "layers": seen[-1] if seen else [],
                 "entries": st.n_entries, "entries_full": st.n_entries_full,
                 "next_rc": decode(ctx, [5]),
                 "errors": errors()}
print(json.dumps(out))
"""


def without_sliding_window(src: Path, dst: Path, arch: str = "lfm2") -> Path:
    """Copy of llama.cpp's test model ``src`` whose attention layers are full-attention, as in LFM2-1.2B and
    LFM2-Audio: test-llama-archs sets ``<arch>.attention.sliding_window`` for every architecture, which makes all of
    LFM2's attention layers SWA (src/models/lfm2.cpp); the key is renamed in place (same length: the file layout is
    unchanged) to one llama.cpp does not read."""
    name = f"{arch}.attention.sliding_window".encode()
    key = len(name).to_bytes(8, "little") + name  # a GGUF key: uint64 length, then the bytes (not ..._pattern)
    data = src.read_bytes()
    assert data.count(key) == 1, f"{src} has no single {name!r}"
    dst.write_bytes(data.replace(key, len(name).to_bytes(8, "little") + f"{arch}.attention.sliding_unused".encode()))
    return dst


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    """(model, mmproj): llama.cpp's random LFM2 test model and a random qwen2a projector of its width."""
    from test_llama_cpp_own_tests import run_program

    directory = tmp_path_factory.mktemp("lfm2")
    run_program("test-llama-archs", "-a", "^lfm2$", "-s", "1", "-o", str(directory))
    model = without_sliding_window(directory / "lfm2-dense.gguf", directory / "lfm2-full-attention.gguf")
    header = GGUFHeader(model)
    assert header.scalar("general.architecture", (GGUFValueType.STRING,)) == "lfm2"
    width = header.scalar("lfm2.embedding_length", (GGUFValueType.UINT32,))
    mmproj = directory / "mmproj-qwen2a.gguf"
    write_audio_projector(mmproj, AudioProjectorSpec("qwen2a"), n_embd_text=int(width))
    return model, mmproj


def test_evict_init_takes_the_attention_layers(lfm2):
    model, _ = lfm2
    proc = run_python("-c", INIT_PROBE, str(model))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("mask", "compact"):
        r = out[mode]
        assert r["rc"] == 0 and r["decode_rc"] == 0 and r["evict_rc"] == 0 and r["next_rc"] == 0, r
        assert r["errors"] == [], r
        # llama.cpp's test LFM2 has one attention layer of two (layer 1 is the short-convolution one)
        assert r["layers"] == [0], r
        # the plan keeps the same 9 of the 16 tokens in each of the 2 KV heads: the 7 others leave the sequence
        assert r["entries"] == 18 and r["entries_full"] == 18, r


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_runner_evicts_the_attention_layers(lfm2, stream):
    model, mmproj = lfm2
    extra = ["--stream"] if stream else []
    proc = run_python("-m", "audiokv_edge.run", str(model), str(JFK), "--mmproj", str(mmproj), "--method", "audiokv",
                      "--keep", "0.4", "--ctx", "1024", "--max-tokens", "2", "--threads", "1", "--json", "--quiet",
                      *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["audio_tokens"] == 750
    ratio = record["kv_bytes_kept"] / record["kv_bytes_full"]
    assert abs(ratio - 0.4) <= 0.05 * 0.4, ratio


def test_runner_full_cache_works(lfm2):
    model, mmproj = lfm2
    proc = run_python("-m", "audiokv_edge.run", str(model), str(JFK), "--mmproj", str(mmproj), "--method", "full",
                      "--ctx", "1024", "--max-tokens", "2", "--threads", "1", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["audio_tokens"] == 750 and record["kv_bytes_kept"] == record["kv_bytes_full"] > 0
