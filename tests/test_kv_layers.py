"""runtime.kv_layers: which layers attend, which hold K/V of their own, which layers the shared ones read, and each
layer's SWA flag and head sizes, from the GGUF header; checked against tiny_models' specs (which follow llama.cpp's
loaders) and the Gemma 4 E2B shape."""

from __future__ import annotations

import dataclasses

import pytest

from audiokv_edge.runtime.kv_layers import kv_layers
from audiokv_edge.testing import tiny_models as tm


def _write(tmp_path, spec: tm.TextModelSpec):
    path = tmp_path / f"{spec.arch}.gguf"
    tm.write_text_model(path, spec)
    return path


@pytest.mark.parametrize("name", ["lfm2-lfm2a", "gemma4-gemma4a", "granite-granite_speech", "gemma3-qwen2a",
                                  "gemma2-meralion", "gemma3n", "granite4-hybrid"])
def test_layers_of_the_tiny_layouts(tmp_path, name):
    """LFM2: attention layers only; gemma4 (E2B layout, period 2, 4 of 8 shared): SWA readers -> the last SWA owning
    layer, full readers -> the last full one, as tiny_models' spec (and llama.cpp) say; gemma3n: 20 owning layers."""
    spec = {"gemma3n": tm.GEMMA3N_LIKE, "granite4-hybrid": tm.GRANITE4_HYBRID_LIKE}.get(name) \
        or tm.TINY_PAIRS[name].text
    got = kv_layers(_write(tmp_path, spec))
    owning = [il for il in range(spec.n_layer) if spec.has_kv(il)]
    assert got.n_layer == spec.n_layer and got.owning == owning
    assert list(got.swa) == [spec.is_swa(il) for il in range(spec.n_layer)]
    assert list(got.head_dim_k) == [spec.layer_head_dim(il) for il in range(spec.n_layer)] == list(got.head_dim_v)
    if spec.arch in ("lfm2", "granitehybrid"):
        assert got.attention == owning == list(spec.attn_layers) and got.sources == {}
    elif spec.arch in ("gemma4", "gemma3n"):
        assert got.attention == list(range(spec.n_layer))
        n_kv = len(owning)
        assert got.sources == {il: n_kv - (2 if spec.is_swa(il) else 1) for il in range(n_kv, spec.n_layer)}
        assert all(spec.is_swa(il) == spec.is_swa(src) for il, src in got.sources.items())
    else:
        assert got.attention == owning == list(range(spec.n_layer)) and got.sources == {}
    assert got.window == (spec.sliding_window if any(got.swa) else 0)
    assert got.full_cache_layers() + got.window_layers() == sorted(got.full_cache_layers() + got.window_layers())\
        or got.window_layers()  # both are subsets of the owning layers
    assert sorted(got.full_cache_layers() + got.window_layers()) == owning


def test_gemma4_e2b_shape_keeps_kv_in_15_layers(tmp_path):
    """The E2B layout at a small width (the same layer pattern, head counts and head-size split): 35 layers, every
    fifth full attention, 20 sharing KV -> 3 full-attention and 12 SWA layers own K/V; per token (f16) the
    full-attention layers take 3 x 1 x (512 + 512) x 2 = 6144 bytes."""
    e2b = tm.REAL_SHAPES["gemma-4-e2b"].text
    small = dataclasses.replace(e2b, n_embd=64, n_ff=64, n_embd_per_layer=32, n_vocab=0, weights="f32")
    got = kv_layers(_write(tmp_path, small))
    assert got.n_layer == 35 and len(got.owning) == 15 and len(got.sources) == 20
    assert got.full_cache_layers() == [4, 9, 14] and len(got.window_layers()) == 12
    assert set(got.sources.values()) == {13, 14} and got.window == 512
    assert got.cache_bytes_per_token(got.full_cache_layers(), 2.0) == 6144
    assert got.cache_bytes_per_token(got.window_layers(), 2.0) == 12 * 256 * 2 * 2
