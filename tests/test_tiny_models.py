"""Tiny GGUF pairs: layout checked against the vendored llama.cpp's expectations, determinism, speed, loading."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.testing.tiny_models import TINY_PAIRS, AudioProjectorSpec, TextModelSpec, CHATML, train_bpe, write_tiny_pair

REPO = Path(__file__).resolve().parents[1]
REQUIRED_PAIRS = {"qwen2-qwen2a", "llama-ultravox", "qwen3-qwen2a", "gemma3-qwen2a", "gemma4-gemma4a",
                  "qwen2-qwen2.5o", "llama-voxtral", "llama-glma", "gemma2-meralion", "qwen2-musicflamingo",
                  "qwen3moe-qwen3a"}


def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0].name == "STRING":
        return bytes(f.parts[f.data[0]]).decode()
    if f.types and f.types[0].name == "ARRAY":
        return [f.parts[i] for i in f.data]
    return f.parts[f.data[0]][0]


def test_required_architectures_present():
    assert REQUIRED_PAIRS <= set(TINY_PAIRS)


@pytest.mark.parametrize("name", sorted(TINY_PAIRS))
def test_pair_layout(tmp_path, name):
    pair = TINY_PAIRS[name]
    model, mmproj = write_tiny_pair(tmp_path, name)
    assert model == tmp_path / name / "model.gguf" and mmproj == tmp_path / name / "mmproj.gguf"
    assert not list((tmp_path / name).glob("*.partial"))

    r = _reader(model)
    arch = pair.text.arch
    assert _field(r, "general.architecture") == arch
    assert _field(r, f"{arch}.embedding_length") == pair.text.n_embd
    assert _field(r, f"{arch}.attention.head_count_kv") == pair.text.n_head_kv
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert "{%" in _field(r, "tokenizer.chat_template")
    tensors = {t.name: t for t in r.tensors}
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    # ggml order (ne0 first) is the reverse of numpy's
    assert tuple(int(x) for x in tensors["token_embd.weight"].shape) == (pair.text.n_embd, n_vocab)
    q_dim = pair.text.n_head * pair.text.layer_head_dim(0)
    assert tuple(int(x) for x in tensors["blk.0.attn_q.weight"].shape) == (pair.text.n_embd, q_dim)
    assert ("blk.0.attn_q_norm.weight" in tensors) == (arch in ("qwen3", "qwen3moe", "gemma3", "gemma4"))
    assert ("blk.0.ffn_gate_exps.weight" in tensors) == (arch == "qwen3moe")
    assert ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2")
    assert ("output.weight" in tensors) == (arch != "gemma2")  # gemma2 ties its head to token_embd
    if arch.startswith("gemma"):
        assert _field(r, f"{arch}.attention.sliding_window") == pair.text.sliding_window
    if arch == "gemma4":  # the last n_kv_shared layers read an earlier layer's KV: no K/V of their own
        shared = pair.text.n_kv_shared
        assert shared > 0 and _field(r, "gemma4.attention.shared_kv_layers") == shared
        for il in range(pair.text.n_layer):
            assert (f"blk.{il}.attn_k.weight" in tensors) == (il < pair.text.n_layer - shared)
            assert f"blk.{il}.inp_gate.weight" in tensors
    for t in r.tensors:
        assert np.all(np.isfinite(np.asarray(t.data, dtype=np.float32))), t.name

    a = _reader(mmproj)
    assert _field(a, "general.architecture") == "clip"
    assert _field(a, "clip.projector_type") == pair.audio.projector
    assert bool(_field(a, "clip.has_audio_encoder"))
    atensors = {t.name: t for t in a.tensors}
    if pair.audio.projector == "qwen3a":
        assert atensors["a.conv2d.1.weight"].tensor_type.name == "F16"
        assert int(atensors["a.conv_out.weight"].shape[0]) == pair.audio.n_mel // 8 * pair.audio.n_conv
    elif pair.audio.projector == "gemma4a":
        assert atensors["a.conv1d.0.weight"].tensor_type.name == "F16"
        assert "a.blk.0.conv_dw.weight" in atensors and "a.blk.0.attn_k_rel.weight" in atensors
    else:
        assert atensors["a.conv1d.1.weight"].tensor_type.name == "F16"
        assert tuple(int(x) for x in atensors["a.conv1d.1.bias"].shape) == (1, pair.audio.n_embd)
        assert int(atensors["a.position_embd.weight"].shape[1]) >= 1500
    assert "a.blk.0.attn_k.bias" not in atensors  # Whisper has no K bias; whisper-enc.cpp asserts it
    out = atensors[{"qwen2a": "mm.a.fc.weight", "qwen2.5o": "mm.a.fc.weight", "meralion": "mm.a.mlp.3.weight",
                    "gemma4a": "mm.a.input_projection.weight"}.get(pair.audio.projector, "mm.a.mlp.2.weight")]
    assert int(out.shape[1]) == pair.text.n_embd  # projector output feeds the LLM's embedding


def test_deterministic_and_seeded(tmp_path):
    def digest(d, seed):
        m, p = write_tiny_pair(d, "qwen2-qwen2a", seed=seed)
        return hashlib.sha256(m.read_bytes() + p.read_bytes()).hexdigest()

    assert digest(tmp_path / "a", 0) == digest(tmp_path / "b", 0)
    assert digest(tmp_path / "c", 1) != digest(tmp_path / "a", 0)


def test_bpe_vocab_is_consistent():
    tokens, merges = train_bpe("the cat and the hat and the bat", 10)
    assert len(tokens) == 256 + len(merges) and len(set(tokens)) == len(tokens)
    for m in merges:
        a, b = m.split(" ")
        assert a in tokens and b in tokens and a + b in tokens


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="unsupported"):
        TextModelSpec("gpt2", CHATML)
    with pytest.raises(ValueError, match="multiple"):
        TextModelSpec("qwen2", CHATML, n_head=4, n_head_kv=3)
    with pytest.raises(ValueError, match="stack_factor"):
        AudioProjectorSpec("ultravox")
    with pytest.raises(ValueError, match="unknown tiny pair"):
        write_tiny_pair("/nonexistent", "nope-nope")


def test_cli_writes_all_pairs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_models.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    for name in TINY_PAIRS:
        assert (tmp_path / name / "model.gguf").stat().st_size > 0
        assert (tmp_path / name / "mmproj.gguf").stat().st_size > 0
