"""A new training phase of the demo model on a trained checkpoint: LoRA targets added later start at zero (the
adapted model is unchanged until they learn) and every parameter that existed keeps its values and optimizer
moments; a checkpoint whose LoRA covers matrices the configuration leaves out is refused; the warm restart's
learning-rate schedule."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from audiokv_edge.demo_model.lora import ALL_TARGETS  # noqa: E402
from audiokv_edge.demo_model.torch_llm import FrozenLlama, LlamaConfig  # noqa: E402
from audiokv_edge.demo_model.train import Trainer, TrainConfig  # noqa: E402


def tiny_llm(seed: int = 0) -> FrozenLlama:
    cfg = LlamaConfig(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=50, rms_eps=1e-5, rope_base=1e4)
    g = torch.Generator().manual_seed(seed)
    t = {"token_embd.weight": torch.randn(cfg.n_vocab, cfg.n_embd, generator=g),
         "output_norm.weight": torch.ones(cfg.n_embd)}
    kv = cfg.n_head_kv * cfg.head_dim
    for i in range(cfg.n_layer):
        shapes = {"attn_q": (cfg.n_embd, cfg.n_embd), "attn_k": (kv, cfg.n_embd), "attn_v": (kv, cfg.n_embd),
                  "attn_output": (cfg.n_embd, cfg.n_embd), "ffn_gate": (cfg.n_ff, cfg.n_embd),
                  "ffn_up": (cfg.n_ff, cfg.n_embd), "ffn_down": (cfg.n_embd, cfg.n_ff)}
        for name, shape in shapes.items():
            t[f"blk.{i}.{name}.weight"] = torch.randn(shape, generator=g) / shape[1] ** 0.5
        t[f"blk.{i}.attn_norm.weight"] = torch.ones(cfg.n_embd)
        t[f"blk.{i}.ffn_norm.weight"] = torch.ones(cfg.n_embd)
    return FrozenLlama(cfg, t)


def trainer(out, llm, targets, **kw) -> Trainer:
    config = TrainConfig(ctc_steps=0, llm_steps=100, lora_rank=4, lora_targets=targets, **kw)
    return Trainer(out / "data", out, llm, lambda s: [1, 2], None, 2, config)


def take_steps(tr: Trainer, n: int = 3) -> None:
    """Optimizer steps with random gradients on every parameter (so that B and the moments are not zero)."""
    g = torch.Generator().manual_seed(5)
    for _ in range(n):
        tr.opt.zero_grad()
        for group in tr.opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
        tr.opt.step()


def test_lora_grown_on_a_checkpoint_keeps_what_was_trained(tmp_path):
    llm = tiny_llm()
    old = trainer(tmp_path, llm, ("attn_q", "attn_v"))
    old.state.update(stage="llm", step=10)
    old._make_opt()
    take_steps(old)
    old.save()
    x = torch.randn(1, 7, llm.cfg.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = llm(x, lora=old.lora)

    new = trainer(tmp_path, llm, ALL_TARGETS)
    assert new.state["step"] == 10
    for key in old.lora.a:
        assert torch.equal(new.lora.a[key], old.lora.a[key]) and torch.equal(new.lora.b[key], old.lora.b[key])
        for d in ("a", "b"):
            p_old, p_new = getattr(old.lora, d)[key], getattr(new.lora, d)[key]
            assert torch.equal(new.opt.state[p_new]["exp_avg"], old.opt.state[p_old]["exp_avg"])
    added = [k for k in new.lora.b if k not in old.lora.b]
    assert len(added) == 2 * 5 and all(not new.lora.b[k].any() for k in added)
    assert all(new.lora.b[k] not in new.opt.state for k in added)
    for p_old, p_new in zip(old.projector.parameters(), new.projector.parameters()):
        assert torch.equal(new.opt.state[p_new]["exp_avg_sq"], old.opt.state[p_old]["exp_avg_sq"])
    with torch.no_grad():
        assert torch.equal(llm(x, lora=new.lora), before)
    take_steps(new, 1)                      # the grown optimizer steps, and saves with the new layout
    new.save()
    again = trainer(tmp_path, llm, ALL_TARGETS)
    assert all(torch.equal(again.lora.b[k], new.lora.b[k]) for k in new.lora.b)


def test_checkpoint_with_a_lora_the_config_leaves_out_is_refused(tmp_path):
    llm = tiny_llm()
    old = trainer(tmp_path, llm, ("attn_q", "attn_v"))
    old.save()
    with pytest.raises(ValueError, match="attn_v"):
        trainer(tmp_path, llm, ("attn_q",))


def test_warm_restart_schedule():
    cfg = TrainConfig(llm_steps=1000, llm_lr=5e-4, warmup=50, restart_at=600, restart_lr=2e-4)
    assert cfg.llm_lr_at(599) == pytest.approx(5e-4 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 549 / 950)).item()))
    assert cfg.llm_lr_at(600) == pytest.approx(2e-4 / 50)
    assert cfg.llm_lr_at(650) == pytest.approx(2e-4)
    assert cfg.llm_lr_at(999) < 1e-6
    assert TrainConfig(llm_steps=1000).llm_lr_at(700) == TrainConfig(llm_steps=1000, restart_at=0).llm_lr_at(700)
    with pytest.raises(ValueError, match="restart_at"):
        TrainConfig(llm_steps=100, restart_at=100)
    with pytest.raises(ValueError, match="lora_targets"):
        TrainConfig(lora_targets=("attn_q", "ffn_middle"))
