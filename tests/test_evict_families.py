"""Per-head eviction on the text architectures of the audio model families (docs/model-families.md).

Supported families must give, in COMPACT mode, the logits of the MASK-mode oracle over 32 greedy tokens (a second
eviction in the middle, pools growing past a 4-row headroom; tests/test_evict_compact.py's ``run_pair``) with and
without flash attention, f16 and q8_0 caches (q8_0 V needs flash attention in llama.cpp), and use exactly the
plan's budgets + headroom + one main-cache cell of memory. Refused families must be refused at
``llama_kv_evict_init`` with LLAMA_KV_EVICT_ERR_UNSUPPORTED and a logged reason, leaving the context usable.

- gemma4 (tiny, E2B layout: ``tiny_models.GEMMA4_E2B_LIKE`` with head size 64 so that a q8_0 K cache is
  Hadamard-rotated): the last layers share the KV of the last full-attention layer before them. A shared layer
  attends the entries its source layer keeps (its mask in MASK mode, its pools in COMPACT mode), so the two modes
  agree (bitwise with flash attention; measured once against the earlier MASK mode, which left the shared layers
  unmasked: 1.29 max abs logit difference over the same 32 tokens, docs/model-families.md);
- gemma3n (tiny, ``tiny_models.GEMMA3N_LIKE``: AltUp, LAuReL, per-layer embeddings; llama.cpp gives the first 20
  layers their own K/V and makes the others read layer 18 (SWA) or 19 (full)): the same shared-KV eviction;
- qwen3moe, granite, granitemoe (llama.cpp's random test models from test-llama-archs): plain KV caches;
- mimo2 (MiMo-V2, the text model of MiMo audio; test-llama-archs, MoE, iSWA): attention sinks in the
  full-attention layers, one logit per query head joining the softmax of the per-head pools too;
- lfm2, granitehybrid (test-llama-archs): hybrid memory, whose attention layers are evicted, the recurrent / conv
  state left alone (tests/test_lfm2_hybrid.py runs the runner on LFM2);
- lfm2-audio, granite-speech: the text models of the tiny pairs ``lfm2-lfm2a`` (LFM2 as published: short-convolution
  layers first, so layer 0 has no KV) and ``granite-granite_speech`` (Granite 3.3's multipliers);
- granite4-hybrid (``tiny_models.GRANITE4_HYBRID_LIKE``: Granite 4.0 H's layout, Mamba2 layers first, attention at 2
  and 5, Granite's multipliers): only the attention layers are evicted, the Mamba2 state left alone;
- nemotron_h (test-llama-archs; Nemotron Nano VL's text model, fed by the parakeet projector): hybrid memory, Mamba2
  and attention layers, the attention ones evicted;
- refused: gemma2 (attention logit soft-capping, COMPACT only: MASK works), mamba (recurrent memory, no KV cache),
  dots3note (test-llama-archs; dots3-note, fed by dots3note_a: its llama_kv_cache_dsa_iswa, DeepSeek sparse attention
  with iSWA, is none of the memories the eviction takes, so it is refused with the "needs a KV cache" reason).
The C-level refusal checks run in a child process so that their log callback cannot leak into other tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from evict_fixtures import (  # the shared harness of the eviction tests (tests/evict_fixtures.py)
    GGML_TYPE_F16,
    GGML_TYPE_Q8_0,
    INIT_PROBE_PREAMBLE,
    run_python,
)
from test_evict_compact import compact_400_tokens, run_pair
from test_lfm2_hybrid import without_sliding_window

pytestmark = pytest.mark.native

MASK, COMPACT = 0, 1

#: Caches of the oracle matrix: (flash attention, K/V type); llama.cpp needs flash attention for a quantized V.
CACHES = [(True, GGML_TYPE_F16), (False, GGML_TYPE_F16), (True, GGML_TYPE_Q8_0)]
CACHE_IDS = ["fa-f16", "nofa-f16", "fa-q8_0"]

#: Architectures written by llama.cpp's test-llama-archs: file name -> architecture.
LLAMA_TEST_MODELS = {"qwen3moe": "qwen3moe-moe.gguf", "granite": "granite-dense.gguf",
                     "granitemoe": "granite-moe.gguf", "granitehybrid": "granitehybrid-dense.gguf",
                     "lfm2": "lfm2-dense.gguf", "mamba": "mamba-dense.gguf", "mimo2": "mimo2-moe.gguf",
                     "nemotron_h": "nemotron_h-dense.gguf", "dots3note": "dots3note-moe.gguf"}


def gemma4_spec():
    from dataclasses import replace

    from audiokv_edge.testing import tiny_models as tm

    return replace(tm.GEMMA4_E2B_LIKE, head_dim=64)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """Paths of every model of this module, by name."""
    from test_llama_cpp_own_tests import run_program

    from audiokv_edge.testing import tiny_models as tm

    directory = tmp_path_factory.mktemp("family_models")
    paths = {"gemma4": directory / "gemma4.gguf", "gemma2": directory / "gemma2.gguf",
             "gemma3n": directory / "gemma3n.gguf"}
    tm.write_text_model(paths["gemma4"], gemma4_spec(), seed=3)
    tm.write_text_model(paths["gemma3n"], tm.GEMMA3N_LIKE, seed=3)
    tm.write_text_model(paths["gemma2"], tm.TINY_PAIRS["gemma2-meralion"].text, seed=3)
    # the text models of the tiny LFM2-Audio and Granite Speech pairs (published layouts: LFM2's first layers are
    # short convolutions, Granite's embedding / residual / attention / logit multipliers)
    for name, pair in (("lfm2-audio", "lfm2-lfm2a"), ("granite-speech", "granite-granite_speech")):
        paths[name] = directory / f"{name}.gguf"
        tm.write_text_model(paths[name], tm.TINY_PAIRS[pair].text, seed=3)
    paths["granite4-hybrid"] = directory / "granite4-hybrid.gguf"
    tm.write_text_model(paths["granite4-hybrid"], tm.GRANITE4_HYBRID_LIKE, seed=3)
    for arch in ("qwen3moe", "granite", "granitehybrid", "lfm2", "mamba", "mimo2", "nemotron_h", "dots3note"):
        run_program("test-llama-archs", "-a", f"^{arch}$", "-s", "1", "-o", str(directory))
    for name, file in LLAMA_TEST_MODELS.items():
        paths[name] = directory / file
        assert paths[name].is_file(), sorted(p.name for p in directory.iterdir())
    # LFM2 as published (full-attention layers: llama_memory_hybrid) and with sliding-window attention layers
    # (llama_memory_hybrid_iswa, test-llama-archs' default): the latter has no full-attention layer to evict
    paths["lfm2-swa"] = paths["lfm2"]
    paths["lfm2"] = without_sliding_window(paths["lfm2-swa"], directory / "lfm2-full-attention.gguf")
    return paths


#: Tolerances without flash attention above the default 5e-3 (test_compact_equals_mask_oracle).
NOFA_TOLERANCE = {"gemma3n": 2e-2}

SUPPORTED = ["gemma4", "gemma3n", "qwen3moe", "granite", "granitemoe", "lfm2", "granitehybrid", "mimo2", "lfm2-audio",
             "granite-speech", "granite4-hybrid", "nemotron_h"]


@pytest.mark.parametrize(("flash_attn", "type_kv"), CACHES, ids=CACHE_IDS)
@pytest.mark.parametrize("arch", SUPPORTED)
def test_compact_equals_mask_oracle(family_models, arch, flash_attn, type_kv):
    """COMPACT == MASK oracle over 32 greedy tokens (plans keeping every token in some head, so that the oracle's
    cells stay in position order: tests/test_evict_compact.py, docs/per-head-eviction.md section 6): the same
    tokens, logits within 1e-3 with flash attention (measured: bitwise equal) and 5e-3 without it. Without flash
    attention the pools' softmax and V products sum the kept entries without the oracle's masked cells between
    them, so the float sums group differently: measured 2e-6 (llama, f32) to 3.5e-4 (llama, f16) on the archs of
    test_evict_compact.py, and up to 4e-4 (f32) / 4e-3 (f16) on gemma4 with or without shared layers (its attention
    scale is 1 on RMS-normed q and k, sharp softmaxes); a layer attending the wrong entries differs by 1 - 5.
    gemma3n (the same attention, 25 layers of AltUp): measured 1.1e-3 (f32) and 1.4e-2 (f16) without flash
    attention, bitwise equal with it, so it is held to 2e-2 there (a difference that grows 13-fold from an f32 to an
    f16 cache is the rounding of the sums, not attention to other entries, which flash attention would show too)."""
    toks, yc, ym = run_pair(family_models[arch], 0, flash_attn, type_kv=type_kv, hold_all=True)
    diff = float(np.max(np.abs(yc - ym)))
    print(f"{arch} fa={flash_attn} type={type_kv}: max abs logit diff over 32 tokens {diff:.2e}")
    assert diff < (1e-3 if flash_attn else NOFA_TOLERANCE.get(arch, 5e-3))
    np.testing.assert_array_equal(np.argmax(yc, axis=1), np.argmax(ym, axis=1))


@pytest.mark.parametrize("arch", ["gemma4", "gemma3n"])
def test_shared_kv_memory_is_the_sum_of_budgets(family_models, arch):
    """Only the layers owning K/V have pools: bytes in use after compaction == their budgets + headroom + the one
    main-cache cell (the layers sharing the KV add nothing)."""
    from audiokv_edge.testing import tiny_models as tm

    spec = gemma4_spec() if arch == "gemma4" else tm.GEMMA3N_LIKE
    headroom = 16
    record, before, after = compact_400_tokens(family_models[arch], headroom)
    own_full = [il for il in range(spec.n_layer) if spec.has_kv(il) and not spec.is_swa(il)]
    assert len(record["budgets"][0]) == len(own_full) * spec.n_head_kv  # the callback sees the owning layers only
    row = 2 * spec.head_dim * 2  # one K row + one V row of one head, f16
    budget_rows = sum(record["budgets"][0])
    n_heads = len(own_full) * spec.n_head_kv
    print(f"full {before.bytes_used} B, plan {budget_rows * row} B, in use {after.bytes_used} B")
    assert before.bytes_used == 400 * n_heads * row
    assert after.bytes_kept == budget_rows * row
    assert after.bytes_used == budget_rows * row + n_heads * headroom * row + n_heads * row


# Child: load the model, try both eviction modes, then check that the context still decodes.
INIT_PROBE = INIT_PROBE_PREAMBLE + r"""
callback = E.make_callback(lambda seq_id, layers, uniform: 0)
for name, ctx, rc in init_each_mode(callback):
    out[name] = {"rc": rc, "errors": errors(), "decode_rc": decode(ctx, list(range(1, 9)))}
print(json.dumps(out))
"""

REFUSED = {  # model -> (modes refused, reason in the logged error)
    "gemma2": ({"compact"}, "attention logit soft-capping"),
    "mamba": ({"mask", "compact"}, "memory is recurrent"),
    "lfm2-swa": ({"mask", "compact"}, "has no layer"),  # only SWA attention layers: each keeps its window
    # DeepSeek sparse attention + iSWA (llama_kv_cache_dsa_iswa, llama-model.cpp): not a memory the eviction takes
    "dots3note": ({"mask", "compact"}, "per-head eviction needs a KV cache"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_one_logged_reason(family_models, name):
    from audiokv_edge.native import llama_kv_evict as E

    proc = run_python("-c", INIT_PROBE, str(family_models[name]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    modes, reason = REFUSED[name]
    for mode, result in out.items():
        if mode in modes:
            assert result["rc"] == E.LLAMA_KV_EVICT_ERR_UNSUPPORTED, (mode, result)
            errors = [t for t in result["errors"] if "llama_kv_evict_init" in t]
            assert len(errors) == 1 and reason in errors[0], (mode, result)
        else:
            assert result["rc"] == 0, (mode, result)
        assert result["decode_rc"] == 0  # the context stays usable
