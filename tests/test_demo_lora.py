"""The demo model's LoRA: PyTorch's adapted forward pass (what training optimises) equals llama.cpp running the
base GGUF with the exported adapter GGUF; a malformed adapter is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from audiokv_edge.demo_model import lora_gguf

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def smollm2():
    from audiokv_edge.testing import real_models

    return real_models.smollm2_q4_1_path()


def llama_cpp_logits(model_path, lora_path, tokens):
    """Logits of every position of ``tokens`` from llama.cpp (float32 [T, n_vocab])."""
    from audiokv_edge.runtime.llama import ContextParams, LlamaModel

    with LlamaModel(model_path, lora=lora_path) as m:
        lc = m.lc
        ctx = m.new_context(ContextParams(n_ctx=64, n_threads=2))
        batch = lc.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, True
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(tokens)
            assert lc.llama_decode(ctx, batch) == 0
            return np.array([np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(m.n_vocab,))
                             for i in range(len(tokens))], dtype=np.float32)
        finally:
            lc.llama_batch_free(batch)


@pytest.mark.native
@pytest.mark.parametrize("targets", [("attn_q", "attn_v"), "all"])
def test_torch_lora_equals_llama_cpp_adapter(tmp_path, smollm2, targets):
    """Teacher-forced next-token distributions of SmolLM2 + a random LoRA (rank 4 on q / v, or on every attention
    and FFN matrix; alpha 8, B not zero): PyTorch (float32) vs llama.cpp (Q4_1 base + F32 adapter): top-1 agreement
    >= 0.9 and the LoRA's effect on the logits reproduced (correlation of the logit changes >= 0.9), i.e. the same
    adapter layout and scale."""
    torch = pytest.importorskip("torch")
    from audiokv_edge.demo_model.lora import ALL_TARGETS, LoraAdapters
    from audiokv_edge.demo_model.torch_llm import FrozenLlama, load_gguf

    cfg, tensors = load_gguf(smollm2, dtype=torch.float32)
    llm = FrozenLlama(cfg, tensors)
    lora = LoraAdapters(cfg.n_layer, llm.shapes(ALL_TARGETS if targets == "all" else targets), rank=4, alpha=8.0,
                        seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora.b.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = lora_gguf.write_lora_gguf(tmp_path / "lora.gguf", lora.export(), lora.alpha)
    tokens = [1, 504, 3458, 314, 260, 1645, 28, 253, 2899, 2474, 30, 378, 314, 8813, 30, 2]
    with torch.no_grad():
        ids = torch.tensor(tokens)
        base_t = llm(llm.embed_tokens(ids)[None])[0].numpy()
        ours = llm(llm.embed_tokens(ids)[None], lora=lora)[0].numpy()
    ref = llama_cpp_logits(smollm2, path, tokens)
    base = llama_cpp_logits(smollm2, None, tokens)
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.9
    d_ours, d_ref = (ours - base_t).ravel(), (ref - base).ravel()
    assert np.linalg.norm(d_ref) > 1.0  # the adapter changes llama.cpp's logits
    assert np.corrcoef(d_ours, d_ref)[0, 1] >= 0.9


def test_lora_writer_refuses_bad_weights(tmp_path):
    a, b = np.zeros((4, 8), np.float32), np.zeros((6, 4), np.float32)
    with pytest.raises(ValueError, match="lacks its pair"):
        lora_gguf.write_lora_gguf(tmp_path / "x.gguf", {"blk.0.attn_q.weight.lora_a": a}, 8.0)
    with pytest.raises(ValueError, match="expected"):
        lora_gguf.check_lora({"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b.T.copy()})
    with pytest.raises(ValueError, match="the model's attn_q"):
        lora_gguf.check_lora({"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b},
                             {"attn_q": (576, 576)})
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.native
def test_adapter_of_another_shape_is_refused(tmp_path, smollm2):
    from audiokv_edge.runtime.llama import LlamaError, LlamaModel

    arrays = {"blk.0.attn_q.weight.lora_a": np.zeros((4, 100), np.float32),
              "blk.0.attn_q.weight.lora_b": np.zeros((100, 4), np.float32)}
    path = lora_gguf.write_lora_gguf(tmp_path / "lora.gguf", arrays, 8.0)
    with pytest.raises(LlamaError, match="cannot apply LoRA adapter .*lora.gguf"):
        LlamaModel(smollm2, lora=path)
