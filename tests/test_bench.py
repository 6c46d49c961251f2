"""python -m audiokv_edge.bench: the synthetic KV cache (the same bytes llama.cpp saves), random-weight models of real
shapes (Q4_0, a real vocabulary size, tied output), and the sweep end to end on a tiny model (--smoke, resumed)."""

import json

import numpy as np
import pytest

from audiokv_edge.bench import kv_fill
from audiokv_edge.testing import tiny_models as tm

native = pytest.mark.native


def test_real_shapes_have_the_published_sizes():
    omni7 = tm.REAL_SHAPES["qwen2.5-omni-7b"].text
    # KV cache per token, f16: layers x KV heads x head_dim x (K, V) x 2 bytes
    assert omni7.n_layer * omni7.n_head_kv * omni7.head_dim * 2 * 2 == 57344
    assert (omni7.n_embd, omni7.n_ff, omni7.n_vocab) == (3584, 18944, 152064)
    layout = kv_fill.CacheLayout(omni7.n_layer, 512, 512, 8, 8, False)  # q8_0: 34 bytes per 32 elements
    assert layout.bytes_per_token() == 28 * 2 * 16 * 34
    for name, pair in tm.REAL_SHAPES.items():
        assert pair.text.weights == "q4_0", name
        if pair.audio.projector != "gemma4a":  # the Whisper-large towers
            assert pair.audio.weights == "f16" and pair.audio.n_layer == 32 and pair.audio.n_embd == 1280, name


def test_gemma4_e2b_shape_has_the_published_sizes():
    """gemma-4-E2B's text config: 35 layers of width 1536, 8 heads over 1 KV head, head size 256 (SWA) / 512 (full),
    4 SWA layers then a full one, window 512, 20 layers sharing KV with FFNs 2 x 6144 wide, 256-wide per-layer
    embeddings, 262,144 tokens, tied output. Owning K/V: layers 0-14, of them 4, 9, 14 full attention; a cached
    token takes 3 x (512 + 512) x 2 = 6,144 bytes (f16) in the full-attention layers, the 12 SWA layers hold 512
    positions."""
    e2b = tm.REAL_SHAPES["gemma-4-e2b"].text
    assert (e2b.arch, e2b.n_layer, e2b.n_embd, e2b.n_head, e2b.n_head_kv) == ("gemma4", 35, 1536, 8, 1)
    assert (e2b.head_dim, e2b.head_dim_swa, e2b.sliding_window, e2b.swa_period) == (512, 256, 512, 5)
    assert (e2b.n_kv_shared, e2b.n_embd_per_layer, e2b.n_vocab, e2b.tied_output) == (20, 256, 262144, True)
    assert [il for il in range(35) if not e2b.is_swa(il)] == [4, 9, 14, 19, 24, 29, 34]
    assert [il for il in range(35) if e2b.has_kv(il)] == list(range(15))
    assert {e2b.layer_n_ff(il) for il in range(15)} == {6144} and {e2b.layer_n_ff(il) for il in range(15, 35)} \
        == {12288}
    full = [il for il in range(15) if not e2b.is_swa(il)]
    assert sum(e2b.n_head_kv * 2 * e2b.layer_head_dim(il) * 2 for il in full) == 6144


def test_random_q4_0_blocks_dequantize_to_the_intended_spread():
    import gguf

    fan_in = 256
    blocks = tm._random_q4_0(np.random.default_rng(0), 64, fan_in // 32, fan_in)
    w = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)
    assert w.shape == (64, fan_in)
    assert abs(w.std() * np.sqrt(fan_in) - 1.0) < 0.05
    with pytest.raises(ValueError, match="q4_0 weights need"):
        tm.TextModelSpec("llama", tm.LLAMA3, n_embd=48, n_head=4, n_head_kv=2, head_dim=12, weights="q4_0")


@native
@pytest.mark.parametrize("arch, family, head_dim, tied", [("qwen2", tm.CHATML, 16, False),
                                                           ("llama", tm.LLAMA3, 32, True)])
def test_a_q4_0_model_with_a_padded_vocabulary_loads_and_decodes(tmp_path, arch, family, head_dim, tied):
    """Also a llama whose queries are wider than the model (4 x 32 > 64), as Voxtral's text model."""
    import gguf

    from audiokv_edge.runtime.llama import ContextParams, LlamaModel

    spec = tm.TextModelSpec(arch, family, n_embd=64, n_head=4, n_head_kv=2, head_dim=head_dim, n_ff=128,
                            n_vocab=1000, weights="q4_0", tied_output=tied)
    path = tmp_path / "m.gguf"
    tm.write_text_model(path, spec)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert ("output.weight" in types) is not tied
    with LlamaModel(path) as model:
        assert model.n_vocab == 1000
        ctx = model.new_context(ContextParams(n_ctx=128, n_batch=64))
        model.decode_tokens(ctx, list(range(10, 60)), 0, 64)
        logits = np.ctypeslib.as_array(model.lc.llama_get_logits_ith(ctx, -1), shape=(1000,))
        assert np.isfinite(logits).all() and logits.std() > 0


@native
@pytest.mark.parametrize("name, flash_attn, kv_type", [("qwen2-qwen2a", True, 1), ("qwen2-qwen2a", False, 1),
                                                       ("qwen3-qwen2a", True, 8), ("llama-ultravox", False, 0),
                                                       ("gemma4-gemma4a", True, 1), ("gemma4-gemma4a", False, 1)])
def test_the_synthetic_state_is_what_llama_cpp_saves(tmp_path, name, flash_attn, kv_type):
    """Same size and the same header and cells as the state llama.cpp saves after a real prefill of as many tokens;
    loaded, the sequence holds those positions and saves back byte for byte (V transposed without flash
    attention). gemma4 (iSWA, head sizes 64 / 32, 4 of 8 layers sharing KV): the full-attention layers' cache with
    every position, then the SWA layers' with the window's."""
    from audiokv_edge.runtime.llama import ContextParams, LlamaModel

    model_path, _ = tm.write_tiny_pair(tmp_path, name)
    spec = tm.TINY_PAIRS[name].text
    n = 200
    with LlamaModel(model_path) as model:
        params = ContextParams(n_ctx=256, n_batch=128, flash_attn=flash_attn, type_k=kv_type, type_v=kv_type)
        real_ctx = model.new_context(params)
        model.decode_tokens(real_ctx, list(range(20, 20 + n)), 0, 128)
        real = kv_fill.saved_state(model.lc, real_ctx)
        layout = kv_fill.context_layout(model_path, kv_type, not flash_attn)
        blob = kv_fill.synthetic_state(layout, n)
        assert blob.size == real.size
        if spec.arch == "gemma4":
            full, window = layout
            assert (full.n_layer, window.n_layer, window.held(n)) == (2, 2, spec.sliding_window)
            assert full.widths_k == (2 * 64,) * 2 and window.widths_k == (2 * 32,) * 2
        else:
            assert layout.n_layer == spec.n_layer and layout.n_embd_k == spec.n_head_kv * spec.head_dim
        head = 16 + 12 * n + 8  # magic, sequence, streams, cells, per-cell records, v_trans and layer count
        assert np.array_equal(blob[:head], real[:head])
        ctx = model.new_context(params)
        kv_fill.load_state(model.lc, ctx, blob)
        assert model.lc.llama_memory_seq_pos_max(model.lc.llama_get_memory(ctx), 0) == n - 1
        assert np.array_equal(kv_fill.saved_state(model.lc, ctx), blob)
        with pytest.raises(RuntimeError, match="refused"):
            kv_fill.load_state(model.lc, ctx, blob[:-1])


@native
def test_bench_smoke_writes_json_table_plot_and_resumes(tmp_path):
    from audiokv_edge.bench.__main__ import main

    args = ["--smoke", "--out-dir", str(tmp_path), "--machine", "ci", "--no-progress"]
    assert main(args) == 0
    (json_path,) = (tmp_path / "ci").glob("*-tiny-qwen2-qwen2a.json")
    result = json.loads(json_path.read_text())
    assert {"machine", "versions", "command", "config", "seeds"} <= set(result)
    cells = {(c["n_cached"], c["method"], c["keep"]): c for c in result["cells"]}
    assert set(cells) == {(n, m, k) for n in (256, 512) for m, k in
                          (("full", 1.0), ("audiokv", 0.4), ("snapkv", 0.4))}
    for (n, method, keep), c in cells.items():
        assert c["kv_bytes_full"] == n * c["kv_bytes_per_token"]
        if method != "full":
            # kept entries: keep x the positions, to within one entry per (layer, KV head) (2 x 4 here)
            assert abs(c["kept_entries"] - keep * c["entries_full"]) <= 8
            assert c["kv_bytes_kept"] < 0.45 * c["kv_bytes_full"]
            assert c["kv_bytes_before"] == c["kv_bytes_full"]
            assert c["decode_tokens_per_s"] > 0 and c["evict_seconds"] > 0
            assert c["same_tokens_full"]["n_tokens"] == round(0.4 * n)
    rows = result["memory_table"]["rows"]
    assert [r["minutes"] for r in rows] == [1.0, 5.0]
    assert all(r["total_bytes_stream"] < r["total_bytes_full"] for r in rows[1:])
    assert json_path.with_name(json_path.name[:-5] + ".png").stat().st_size > 0
    table = json_path.with_name(json_path.name[:-5] + ".md").read_text()
    assert "| 512 | audiokv | 0.4 |" in table and "| 512 | full | 1 |" in table

    before = json_path.read_text()
    assert main(args) == 0  # everything measured: nothing runs again
    assert json.loads(json_path.read_text())["cells"] == json.loads(before)["cells"]
    assert main(args + ["--report-only", "--memory-minutes", "60"]) == 0
    again = json.loads(json_path.read_text())
    assert again["command"] == result["command"] and "report_command" in again  # the measuring run's header
    assert [r["minutes"] for r in again["memory_table"]["rows"]] == [60.0]


def test_bench_refuses_bad_arguments_with_one_line(tmp_path, capsys):
    from audiokv_edge.bench.__main__ import main

    assert main([str(tmp_path / "missing.gguf"), "--out-dir", str(tmp_path)]) == 1
    assert main(["--smoke", "--methods", "nosuch", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"audiokv-bench: error: {tmp_path / 'missing.gguf'}: no such model file"
    assert err[1].startswith("audiokv-bench: error: unknown evicting method 'nosuch'")


@native
def test_bench_smoke_with_a_synthetic_cache_projects_the_prefill(tmp_path):
    from audiokv_edge.bench.__main__ import main

    assert main(["--smoke", "--fill", "synthetic", "--out-dir", str(tmp_path), "--machine", "ci",
                 "--no-progress", "--same-tokens-keep", "none", "--name", "tiny-2.5-synthetic"]) == 0
    (json_path,) = (tmp_path / "ci").glob("*-tiny-2.5-synthetic.json")  # a dot in the name stays
    assert {p.name[len(json_path.name) - 5:] for p in (tmp_path / "ci").iterdir()} == {".json", ".md", ".png"}
    result = json.loads(json_path.read_text())
    assert result["config"]["fill"] == "synthetic" and "synthetic sequence state" in result["synthetic_fill_note"]
    for c in result["cells"]:
        assert c["prefill_source"].startswith("projected") and c["prefill_seconds"] > 0
        assert "same_tokens_full" not in c
        if c["method"] != "full":
            assert c["kv_bytes_kept"] < 0.45 * c["kv_bytes_full"]
