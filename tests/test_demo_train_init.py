"""A training phase started from exported weights (the committed ``projector.npz`` / ``lora.npz``) when the
training folder is gone: the trainer's model is exactly the exported one (LoRA pairs the arrays lack start at
B = 0), a second start resumes from the checkpoint instead, and mismatched arrays are refused. The encoder-output
augmentation for unseen speakers: off by default (the data path unchanged), one gain per channel for the whole
example, deterministic given the trainer's random state."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from audiokv_edge.demo_model.lora import ALL_TARGETS  # noqa: E402
from audiokv_edge.demo_model.train import TrainConfig  # noqa: E402
from test_demo_train_phase import take_steps, tiny_llm, trainer  # noqa: E402


def exported(tmp_path, llm, targets=("attn_q", "attn_v")):
    """A trained-looking trainer's exports: (projector.npz, lora.npz, the trainer)."""
    src = trainer(tmp_path / "src", llm, targets)
    src.state.update(stage="llm", step=5)
    src._make_opt()
    take_steps(src)
    return src.export(tmp_path / "projector.npz"), src.export_lora(tmp_path / "lora.npz"), src


def test_init_from_exports_gives_the_exported_model(tmp_path):
    llm = tiny_llm()
    proj, lora, src = exported(tmp_path, llm)
    new = trainer(tmp_path / "new", llm, ALL_TARGETS)
    new.init_from(proj, lora, step=40)
    assert new.state["stage"] == "llm" and new.state["step"] == 40 and new.ckpt_path.is_file()
    for k, v in src.projector.export().items():        # the exports are float16: equal to that rounding
        np.testing.assert_array_equal(new.projector.export()[k], v.astype(np.float16).astype(np.float32))
    for key in src.lora.a:
        np.testing.assert_array_equal(new.lora.b[key].detach().numpy(),
                                      src.lora.b[key].detach().numpy().astype(np.float16).astype(np.float32))
    added = [k for k in new.lora.b if k not in src.lora.b]
    assert len(added) == 2 * 5 and all(not new.lora.b[k].any() for k in added)
    assert not new.opt.state                             # fresh optimizer moments

    again = trainer(tmp_path / "new", llm, ALL_TARGETS)  # the checkpoint wins from now on
    assert again.state["step"] == 40
    assert all(torch.equal(again.lora.b[k], new.lora.b[k]) for k in new.lora.b)
    with pytest.raises(FileExistsError, match="resumes from it"):
        again.init_from(proj, lora, step=40)


def test_init_from_refuses_mismatched_arrays(tmp_path):
    llm = tiny_llm()
    proj, lora, _ = exported(tmp_path, llm, targets=ALL_TARGETS)
    narrow = trainer(tmp_path / "a", llm, ("attn_q", "attn_v"))
    with pytest.raises(ValueError, match="not among this adapter's targets"):
        narrow.init_from(proj, lora, step=1)
    arrays = dict(np.load(lora))
    arrays["alpha"] = np.float32(4.0)
    np.savez(tmp_path / "alpha.npz", **arrays)
    with pytest.raises(ValueError, match="alpha 4.0"):
        trainer(tmp_path / "b", llm, ALL_TARGETS).init_from(proj, tmp_path / "alpha.npz", step=1)
    arrays = dict(np.load(lora))
    arrays["blk.0.attn_q.weight.lora_b"] = arrays["blk.0.attn_q.weight.lora_b"][:, :2]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="shape"):
        trainer(tmp_path / "c", llm, ALL_TARGETS).init_from(proj, tmp_path / "shape.npz", step=1)
    with pytest.raises(ValueError, match="init step"):
        trainer(tmp_path / "d", llm, ALL_TARGETS).init_from(proj, lora, step=100)


def test_feature_augmentation(tmp_path):
    llm = tiny_llm()
    states = torch.randn(2, 30, 384, generator=torch.Generator().manual_seed(1))
    plain = trainer(tmp_path / "plain", llm, ("attn_q",))
    rng = random.Random(3)
    before = rng.getstate()
    assert plain._augment(states, rng) is states and rng.getstate() == before   # off: no change, no draw

    aug = trainer(tmp_path / "aug", llm, ("attn_q",), feature_gain_jitter=0.2, feature_dropout=0.25)
    out = aug._augment(states, random.Random(3))
    scale = out / states
    assert torch.allclose(scale, scale[:1, :1].expand_as(scale))         # one gain per channel, every frame
    dropped = (scale[0, 0] == 0).float().mean().item()
    assert 0.1 < dropped < 0.4
    kept = scale[0, 0][scale[0, 0] != 0] * 0.75
    assert 0.1 < kept.std().item() < 0.3 and abs(kept.mean().item() - 1) < 0.05
    assert torch.equal(aug._augment(states, random.Random(3)), out)      # resumable: same state, same draw
    assert not torch.equal(aug._augment(states, random.Random(4)), out)


@pytest.mark.parametrize("kw", [{"feature_dropout": 1.0}, {"feature_dropout": -0.1}, {"feature_gain_jitter": -1}])
def test_feature_augmentation_settings_checked(kw):
    with pytest.raises(ValueError, match="feature_"):
        TrainConfig(**kw)
