"""Tiny GGUF pairs: layout checked against the vendored llama.cpp's expectations, determinism, speed, loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge.testing.tiny_models import TINY_PAIRS, AudioProjectorSpec, TextModelSpec, CHATML, train_bpe, write_tiny_pair
from tests.evict_fixtures import child_env, run_python

REPO = Path(__file__).resolve().parents[1]
REQUIRED_PAIRS = {"qwen2-qwen2a", "llama-ultravox", "qwen3-qwen2a", "gemma3-qwen2a", "gemma4-gemma4a",
                  "qwen2-qwen2.5o", "llama-voxtral", "llama-glma", "gemma2-meralion", "qwen2-musicflamingo",
                  "qwen3moe-qwen3a", "lfm2-lfm2a", "granite-granite_speech"}


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
    if arch != "lfm2":  # lfm2: a per-layer array, checked below
        assert _field(r, f"{arch}.attention.head_count_kv") == pair.text.n_head_kv
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert "{%" in _field(r, "tokenizer.chat_template")
    tensors = {t.name: t for t in r.tensors}
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    # ggml order (ne0 first) is the reverse of numpy's
    assert tuple(int(x) for x in tensors["token_embd.weight"].shape) == (pair.text.n_embd, n_vocab)
    il = next(il for il in range(pair.text.n_layer) if pair.text.has_kv(il))  # lfm2: not layer 0
    q_dim = pair.text.n_head * pair.text.layer_head_dim(il)
    assert tuple(int(x) for x in tensors[f"blk.{il}.attn_q.weight"].shape) == (pair.text.n_embd, q_dim)
    assert (f"blk.{il}.attn_q_norm.weight" in tensors) == (arch in ("qwen3", "qwen3moe", "gemma3", "gemma4", "lfm2"))
    assert ("blk.0.ffn_gate_exps.weight" in tensors) == (arch == "qwen3moe")
    assert ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2")
    assert ("output.weight" in tensors) == (arch not in ("gemma2", "lfm2"))  # tied to token_embd
    if arch == "lfm2":  # short-convolution layers: head_count_kv 0, no K/V
        kv = [int(v[0]) for v in _field(r, "lfm2.attention.head_count_kv")]
        assert kv == [pair.text.n_head_kv if pair.text.has_kv(il) else 0 for il in range(pair.text.n_layer)]
        assert 0 in kv and "token_embd_norm.weight" in tensors
        for il in range(pair.text.n_layer):
            assert (f"blk.{il}.shortconv.in_proj.weight" in tensors) == (not pair.text.has_kv(il))
            assert (f"blk.{il}.attn_k.weight" in tensors) == pair.text.has_kv(il)
    if arch == "granite":
        assert _field(r, "granite.logit_scale") == pytest.approx(8.0)
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
    elif pair.audio.projector == "lfm2a":  # conformer.cpp: relative positions enter linear_pos 512 wide
        assert tuple(int(x) for x in atensors["a.blk.0.linear_pos.weight"].shape) == (512, pair.audio.n_embd)
        assert atensors["a.blk.0.conv_dw.weight"].tensor_type.name == "F32"  # ggml_ssm_conv needs F32
        assert int(atensors["a.position_embd.weight"].shape[1]) >= 1500  # warmup: 3000 frames / 2
    elif pair.audio.projector == "granite_speech":
        assert int(_field(a, "clip.audio.projector.window_size")) == pair.audio.proj_window
        assert tuple(int(x) for x in atensors["a.input_projection.weight"].shape) == (pair.audio.n_mel,
                                                                                        pair.audio.n_embd)
        assert "a.proj_blk.1.cross_attn_k.weight" in atensors and "a.enc_ctc_out.weight" in atensors
    elif pair.audio.projector == "gemma4ua":  # encoder-free: 640-sample frames, one projection
        assert set(atensors) == {"mm.a.input_projection.weight"}
        assert int(atensors["mm.a.input_projection.weight"].shape[0]) == 640
    elif pair.audio.projector == "gemma4a":
        assert atensors["a.conv1d.0.weight"].tensor_type.name == "F16"
        assert "a.blk.0.conv_dw.weight" in atensors and "a.blk.0.attn_k_rel.weight" in atensors
    else:
        assert atensors["a.conv1d.1.weight"].tensor_type.name == "F16"
        assert tuple(int(x) for x in atensors["a.conv1d.1.bias"].shape) == (1, pair.audio.n_embd)
        assert int(atensors["a.position_embd.weight"].shape[1]) >= 1500
    # Whisper has no K bias (whisper-enc.cpp asserts it); conformer.cpp adds one
    assert ("a.blk.0.attn_k.bias" in atensors) == (pair.audio.projector == "lfm2a")
    out = atensors[{"qwen2a": "mm.a.fc.weight", "qwen2.5o": "mm.a.fc.weight", "meralion": "mm.a.mlp.3.weight",
                    "gemma4a": "mm.a.input_projection.weight", "gemma4ua": "mm.a.input_projection.weight",
                    "lfm2a": "mm.a.mlp.3.weight",
                    "granite_speech": "a.proj_linear.weight"}.get(pair.audio.projector, "mm.a.mlp.2.weight")]
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
    proc = run_python(str(REPO / "scripts" / "make_tiny_models.py"), "--out", str(tmp_path), timeout=None,
                      env=child_env({"PATH": "/usr/bin:/bin"}))
    assert proc.returncode == 0, proc.stderr
    for name in TINY_PAIRS:
        assert (tmp_path / name / "model.gguf").stat().st_size > 0
        assert (tmp_path / name / "mmproj.gguf").stat().st_size > 0
