"""Training of the demo model's audio projector (torch on the CPU, or CUDA when present), in two resumable stages:

1. ``ctc``: the projector's outputs are scored against the frozen LLM's token embeddings (plus a learned blank)
   with a CTC loss on single-window recordings: cheap (no LLM pass) and it teaches the projector to emit vectors
   that look like the transcript's tokens (warm start).
2. ``llm``: the projector feeds the frozen LLM exactly as libmtmd does (chat template, audio tokens at the media
   marker) and is trained with the LLM's next-token loss on the answer (transcription and questions, :mod:`.tasks`),
   on packed 30 s windows, padded short ones and multi-window recordings.

State lives in ``out_dir/checkpoint.pt`` (written atomically every ``checkpoint_every`` steps and at the end of a
stage); the log is ``out_dir/train_log.jsonl``. Re-running resumes from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from audiokv_edge.demo_model import dataset, features, mmproj, tasks
from audiokv_edge.demo_model.lora import ALL_TARGETS, DEFAULT_TARGETS, LoraAdapters
from audiokv_edge.demo_model.torch_encoder import UltravoxProjector
from audiokv_edge.demo_model.torch_llm import FrozenLlama

logger = logging.getLogger(__name__)

TOKENS_PER_WINDOW = 1500 // mmproj.STACK_FACTOR


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings (all steps count optimizer updates)."""

    ctc_steps: int = 1500
    ctc_batch: int = 6
    ctc_lr: float = 2e-3
    llm_steps: int = 4000
    llm_accum: int = 2
    llm_lr: float = 5e-4
    warmup: int = 50
    full_window_share: float = 0.3   # short recordings given their whole padded window (else cropped)
    crop_share: float = 0.6          # recordings with sentence spans cropped to 1-4 consecutive sentences
    checkpoint_every: int = 25
    lora_rank: int = 8               # LoRA on the text model's attention (0: projector only)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0
    # Long-form phase: from this share of the LLM steps on, whole recordings are transcribed more often, so that
    # the model keeps transcribing past its first window (cropped spans and short clips teach it to stop early).
    long_form_from: float = 0.45
    long_form_long_share: float = 0.35   # steps that pick a multi-window recording
    long_form_crop_share: float = 0.2
    long_form_transcribe_share: float = 0.75
    # Warm restart: from this LLM step on (0: never) the learning rate follows a new warm-up and cosine from
    # ``restart_lr`` down to zero at ``llm_steps`` (a new phase, e.g. with LoRA targets added to a trained model).
    restart_at: int = 0
    restart_lr: float = 2.5e-4
    # Speaker robustness (LLM stage): the cached encoder outputs of each example get a random per-channel gain
    # (normal, mean 1, this standard deviation; 0: none) and lose this share of their channels (rescaled, as in
    # dropout; 0: none). Time is never masked: every word of the answer stays audible.
    feature_gain_jitter: float = 0.0
    feature_dropout: float = 0.0

    def __post_init__(self) -> None:
        for f in ("ctc_steps", "llm_steps", "ctc_batch", "llm_accum", "checkpoint_every", "lora_rank", "restart_at"):
            if getattr(self, f) < 0 or (f not in ("ctc_steps", "llm_steps", "lora_rank", "restart_at")
                                        and getattr(self, f) == 0):
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        for f in ("full_window_share", "crop_share", "long_form_from", "long_form_long_share", "long_form_crop_share",
                  "long_form_transcribe_share"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"{f} must be in [0, 1], got {getattr(self, f)}")
        if not (0.0 <= self.feature_dropout < 1.0 and self.feature_gain_jitter >= 0.0):
            raise ValueError(f"feature_dropout must be in [0, 1) and feature_gain_jitter >= 0, got "
                             f"{self.feature_dropout} and {self.feature_gain_jitter}")
        if self.restart_at and self.restart_at >= self.llm_steps:
            raise ValueError(f"restart_at ({self.restart_at}) must be below llm_steps ({self.llm_steps})")
        unknown = [t for t in self.lora_targets if t not in ALL_TARGETS]
        if unknown or not self.lora_targets:
            raise ValueError(f"lora_targets must be a non-empty subset of {ALL_TARGETS}, got {self.lora_targets}")

    def llm_lr_at(self, step: int) -> float:
        """The LLM stage's learning rate at ``step`` (cosine from ``llm_lr``, or from ``restart_lr`` after a warm
        restart)."""
        if self.restart_at and step >= self.restart_at:
            return lr_at(step - self.restart_at, self.llm_steps - self.restart_at, self.restart_lr, self.warmup)
        return lr_at(step, self.llm_steps, self.llm_lr, self.warmup)


@dataclasses.dataclass
class PromptLayout:
    """Token ids around the audio for one instruction, as libmtmd lays them out (text, audio chunks, text)."""

    prefix: list[int]
    suffix: list[int]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _lora_keys(n_layer: int, targets) -> list[str]:
    """Parameter names of a :class:`LoraAdapters` over ``targets``, in its parameter order (for checkpoints that
    did not record them)."""
    keys = [f"{i}_{t}" for i in range(n_layer) for t in targets]
    return [f"a.{k}" for k in keys] + [f"b.{k}" for k in keys]


def _atomic_save(obj, path: pathlib.Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """Owns the projector, the CTC head, the optimizer state and the data; :meth:`run` does what is left."""

    def __init__(self, data_dir, out_dir, llm: FrozenLlama, tokenize, layouts, eos_id: int, config: TrainConfig,
                 evaluate=None):
        self.data_dir = pathlib.Path(data_dir)
        self.out = pathlib.Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.llm, self.tokenize, self.layouts, self.eos_id = llm, tokenize, layouts, eos_id
        self.cfg = config
        self.evaluate = evaluate
        d_text = llm.cfg.n_embd
        self.projector = UltravoxProjector(384, mmproj.STACK_FACTOR, mmproj.PROJECTOR_HIDDEN, d_text, seed=config.seed)
        self.blank = torch.nn.Parameter(torch.randn(d_text, generator=torch.Generator().manual_seed(config.seed)))
        self.ctc_scale = torch.nn.Parameter(torch.tensor(16.0))
        self.lora = (LoraAdapters(llm.cfg.n_layer, llm.shapes(config.lora_targets), config.lora_rank,
                                  config.lora_alpha, seed=config.seed) if config.lora_rank else None)
        self.state = {"stage": "ctc", "step": 0, "rng": random.Random(config.seed).getstate()}
        self.opt = None
        self._token_cache: dict[str, list[int]] = {}
        self._load()

    # -------------------------------------------------------------- state
    @property
    def ckpt_path(self) -> pathlib.Path:
        return self.out / "checkpoint.pt"

    def _make_opt(self) -> None:
        if self.state["stage"] == "ctc":
            params = [*self.projector.parameters(), self.blank, self.ctc_scale]
            lr = self.cfg.ctc_lr
        else:
            params, lr = [{"params": list(self.projector.parameters())}], self.cfg.llm_lr
            if self.lora is not None:
                params.append({"params": list(self.lora.parameters()), "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))

    def _load_opt(self, state: dict, old_lora_keys: list[str]) -> None:
        """Load optimizer state. When the LoRA was added or grew since the checkpoint (``old_lora_keys``: its
        parameters' names then, in order), every parameter that existed keeps its moments and the new ones start
        without any."""
        groups = state["param_groups"]
        if [len(g["params"]) for g in groups] == [len(g["params"]) for g in self.opt.param_groups]:
            self.opt.load_state_dict(state)
            return
        by_index = dict(zip(groups[0]["params"], self.projector.parameters()))
        if len(groups) > 1 and self.lora is not None:
            named = dict(self.lora.named_parameters())
            by_index.update((i, named[k]) for i, k in zip(groups[1]["params"], old_lora_keys))
        for i, st in state["state"].items():
            p = by_index.get(int(i))
            if p is not None:
                self.opt.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
        logger.info("LoRA added or grown since the checkpoint (%d -> %d parameter tensors): the new ones start at "
                    "zero, the others keep their optimizer state", len(old_lora_keys),
                    0 if self.lora is None else len(self.lora.param_keys()))

    def _load(self) -> None:
        if self.ckpt_path.exists():
            ck = torch.load(self.ckpt_path, weights_only=False)
            self.projector.load_state_dict(ck["projector"])
            self.blank.data.copy_(ck["blank"])
            self.ctc_scale.data.copy_(ck["ctc_scale"])
            old_lora_keys = []
            if self.lora is not None and ck.get("lora") is not None:
                missing, unexpected = self.lora.load_state_dict(ck["lora"], strict=False)
                if unexpected:
                    raise ValueError(f"{self.ckpt_path}: its LoRA covers {sorted(unexpected)[:4]}..., which "
                                     f"lora_targets {self.cfg.lora_targets} leave out")
                old_lora_keys = ck.get("lora_keys") or _lora_keys(self.lora.n_layer,
                                                                  ck["config"].get("lora_targets", DEFAULT_TARGETS))
            self.state = ck["state"]
            self._make_opt()
            if ck.get("opt") is not None and ck.get("opt_stage") == self.state["stage"]:
                self._load_opt(ck["opt"], old_lora_keys)
            logger.info("resumed from %s: stage %s step %d", self.ckpt_path, self.state["stage"], self.state["step"])
        else:
            self._make_opt()

    def init_from(self, projector_npz, lora_npz=None, step: int = 0) -> None:
        """Start the LLM stage at ``step`` from exported weights (``projector.npz`` and ``lora.npz`` as committed in
        ``audiokv_edge/data/demo``) instead of a checkpoint: a new phase on the built-in model when the training
        folder is gone. Optimizer moments start at zero; LoRA targets the arrays lack start at B = 0."""
        if self.ckpt_path.exists():
            raise FileExistsError(f"{self.ckpt_path} exists: training resumes from it, not from exported weights")
        if not 0 <= step < self.cfg.llm_steps:
            raise ValueError(f"init step {step} must be in [0, llm_steps={self.cfg.llm_steps})")
        with np.load(projector_npz) as z:
            self.projector.load_exported({k: z[k].astype(np.float32) for k in z.files})
        if lora_npz is not None:
            if self.lora is None:
                raise ValueError(f"{lora_npz}: a LoRA was given but lora_rank is 0")
            with np.load(lora_npz) as z:
                fresh = self.lora.load_exported({k: z[k] for k in z.files})
            if fresh:
                logger.info("%d LoRA pairs not in %s start at B = 0", len(fresh), lora_npz)
        self.state = {"stage": "llm", "step": step, "rng": random.Random(self.cfg.seed + step).getstate()}
        self._make_opt()
        self.save()
        self.log(init_from=str(projector_npz), lora=None if lora_npz is None else str(lora_npz))
        logger.info("LLM stage starts at step %d from %s", step, projector_npz)

    def save(self) -> None:
        _atomic_save({"projector": self.projector.state_dict(), "blank": self.blank.data, "ctc_scale": self.ctc_scale.data,
                      "lora": None if self.lora is None else self.lora.state_dict(),
                      "lora_keys": None if self.lora is None else self.lora.param_keys(),
                      "state": self.state, "opt": self.opt.state_dict(), "opt_stage": self.state["stage"],
                      "config": dataclasses.asdict(self.cfg)}, self.ckpt_path)

    def export(self, path: str | pathlib.Path) -> pathlib.Path:
        """The projector's weights rounded to float16 (what is committed and what the mmproj is built from)."""
        path = pathlib.Path(path)
        arrays = {k: v.astype(np.float16) for k, v in self.projector.export().items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    def export_lora(self, path: str | pathlib.Path) -> pathlib.Path | None:
        """The LoRA's weights rounded to float16 plus its ``alpha`` (None without a LoRA)."""
        if self.lora is None:
            return None
        path = pathlib.Path(path)
        arrays = {k: v.astype(np.float16) for k, v in self.lora.export().items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, alpha=np.float32(self.lora.alpha), **arrays)
        os.replace(tmp, path)
        return path

    def log(self, **rec) -> None:
        rec = {"time": round(time.time(), 1), "stage": self.state["stage"], "step": self.state["step"], **rec}
        with open(self.out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # -------------------------------------------------------------- data
    def _records(self, single_window: bool) -> list[dict]:
        """Encoded recordings (re-read only when the manifest or the encoder cache has grown: another process may
        still be adding data)."""
        manifest, feats = self.data_dir / "manifest.jsonl", self.data_dir / "feats"
        key = (manifest.stat().st_size if manifest.exists() else 0, len(os.listdir(feats)) if feats.is_dir() else 0)
        if getattr(self, "_records_key", None) != key:
            self._records_key = key
            self._all_records = [r for r in dataset.read_manifest(self.data_dir)
                                 if features.feature_path(self.data_dir, r["id"]).exists()]
            self._single_records = [r for r in self._all_records if r["kind"] != "long" and r["seconds"] < 29.9]
            self._vocab = None
        return self._single_records if single_window else self._all_records

    def _feats(self, rec) -> torch.Tensor:
        return torch.from_numpy(np.load(features.feature_path(self.data_dir, rec["id"])).astype(np.float32))

    def _ids(self, text: str) -> list[int]:
        if text not in self._token_cache:
            self._token_cache[text] = self.tokenize(text)
        return self._token_cache[text]

    # -------------------------------------------------------------- CTC stage
    def _ctc_vocab(self, recs) -> tuple[torch.Tensor, dict[int, int]]:
        """Token ids of the single-window transcripts (sorted) and their CTC class indices (1..V; 0 is blank),
        recomputed only when the records change."""
        if self._vocab is None:
            ids = sorted({i for r in recs for i in self._ids(r["text"])})
            self._vocab = (torch.tensor(ids, dtype=torch.long), {t: k + 1 for k, t in enumerate(ids)})
        return self._vocab

    def ctc_logits(self, out: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity of projector outputs [..., n_embd] with the blank and the vocabulary's token
        embeddings: [..., V + 1], blank first (a learned temperature, as in cosine-softmax classifiers)."""
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = F.normalize(torch.cat([self.blank[None], self.llm.embed[vocab].float()]), dim=-1)
            logits = F.normalize(out.float(), dim=-1) @ emb.T.to(out.dtype)
        return logits.float() * self.ctc_scale

    def ctc_step(self, rng: random.Random, recs: list[dict], vocab: torch.Tensor, index: dict[int, int]) -> float:
        batch = rng.sample(recs, min(self.cfg.ctc_batch, len(recs)))
        states = torch.cat([self._feats(r)[:1] for r in batch])                   # [B, 1500, d]
        logp = self.ctc_logits(self.projector(states), vocab).log_softmax(-1).transpose(0, 1)  # [T, B, V + 1]
        targets = [torch.tensor([index[i] for i in self._ids(r["text"])]) for r in batch]
        loss = F.ctc_loss(logp, torch.cat(targets), torch.full((len(batch),), logp.shape[0], dtype=torch.long),
                          torch.tensor([len(t) for t in targets]), blank=0, zero_infinity=True)
        loss.backward()
        return float(loss.detach())

    def ctc_decode(self, rec, vocab: torch.Tensor) -> list[int]:
        """Greedy CTC transcript (token ids) of a single-window recording."""
        with torch.no_grad():
            best = self.ctc_logits(self.projector(self._feats(rec)[:1])[0], vocab).argmax(-1).tolist()
        ids, prev = [], 0
        for b in best:
            if b != prev and b != 0:
                ids.append(int(vocab[b - 1]))
            prev = b
        return ids

    # -------------------------------------------------------------- LLM stage
    def in_long_form_phase(self) -> bool:
        return self.state["stage"] == "llm" and self.state["step"] >= self.cfg.long_form_from * self.cfg.llm_steps

    def _augment(self, states: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Per-channel gain jitter and channel dropout of one example's encoder outputs [W, T, d] (the same for
        all its windows and frames: a different "speaker" per example, not noise per frame)."""
        jitter, drop = self.cfg.feature_gain_jitter, self.cfg.feature_dropout
        if not jitter and not drop:
            return states
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        scale = torch.ones(states.shape[-1])
        if jitter:
            scale = scale + jitter * torch.randn(states.shape[-1], generator=g)
        if drop:
            scale = scale * (torch.rand(states.shape[-1], generator=g) >= drop) / (1.0 - drop)
        return states * scale

    def llm_step(self, rng: random.Random, recs: list[dict]) -> tuple[float, int]:
        late = self.in_long_form_phase()
        long_recs = [r for r in recs if r["kind"] == "long"] if late else []
        if long_recs and rng.random() < self.cfg.long_form_long_share:
            rec = rng.choice(long_recs)
        else:
            rec = rng.choice(recs)
        crop_share = self.cfg.long_form_crop_share if late else self.cfg.crop_share
        sentences, spans = rec["sentences"], rec.get("spans")
        states = self._augment(self._feats(rec), rng)                               # [W, 1500, d]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            audio = self.projector(states).reshape(-1, self.llm.cfg.n_embd)         # [W * 375, n_embd]
        per_s = TOKENS_PER_WINDOW / 30.0
        if rec["kind"] == "short" and rng.random() >= self.cfg.full_window_share:
            audio = audio[:min(audio.shape[0], int(math.ceil((rec["seconds"] + 1.0) * per_s)))]
        elif spans and len(spans) > 1 and rng.random() < crop_share:
            i = rng.randrange(len(spans))
            j = min(len(spans), i + rng.randint(1, 4))
            lo = max(0, int(spans[i][0] * per_s) - 2)
            hi = min(audio.shape[0], int(math.ceil(spans[j - 1][1] * per_s)) + 2)
            audio, sentences = audio[lo:hi], sentences[i:j]
        kind, prompt, answer = tasks.sample_task(sentences, rng, rng.choice(recs)["sentences"],
                                                 transcribe_share=self.cfg.long_form_transcribe_share if late else 0.55)
        layout = self.layouts(prompt)
        target = self._ids(answer) + [self.eos_id]
        dt = self.llm.embed.dtype
        ids_after = torch.tensor(layout.suffix + target[:-1])
        x = torch.cat([self.llm.embed_tokens(torch.tensor(layout.prefix)), audio.to(dt),
                       self.llm.embed_tokens(ids_after)])[None]
        hidden = self.llm(x, hidden_only=True, lora=self.lora)[0]
        start = len(layout.prefix) + audio.shape[0] + len(layout.suffix) - 1
        logits = F.linear(hidden[start:start + len(target)], self.llm.head).float()
        loss = F.cross_entropy(logits, torch.tensor(target))
        (loss / self.cfg.llm_accum).backward()
        return float(loss), x.shape[1]

    # -------------------------------------------------------------- driver
    def run(self, progress=None, stop_after_s: float | None = None, eval_every: int = 250) -> None:
        """Run what is left of both stages (or until ``stop_after_s`` seconds have passed); the held-out
        evaluation runs every ``eval_every`` steps of the LLM stage."""
        t_end = None if stop_after_s is None else time.time() + stop_after_s
        rng = random.Random()
        rng.setstate(self.state["rng"])
        while True:
            stage, step = self.state["stage"], self.state["step"]
            total = self.cfg.ctc_steps if stage == "ctc" else self.cfg.llm_steps
            if step >= total:
                if stage == "ctc":
                    self.state.update(stage="llm", step=0)
                    self._make_opt()
                    self.save()
                    continue
                self.save()
                return
            if t_end is not None and time.time() > t_end:
                self.save()
                return
            t0 = time.time()
            lr = lr_at(step, total, self.cfg.ctc_lr, self.cfg.warmup) if stage == "ctc" else self.cfg.llm_lr_at(step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            if stage == "ctc":
                recs = self._records(single_window=True)
                vocab, index = self._ctc_vocab(recs)
                loss, n_tok = self.ctc_step(rng, recs, vocab, index), 0
            else:
                recs = self._records(single_window=False)
                losses, n_tok = [], 0
                for _ in range(self.cfg.llm_accum):
                    l, n = self.llm_step(rng, recs)
                    losses.append(l)
                    n_tok += n
                loss = float(np.mean(losses))
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
            self.opt.step()
            self.state["step"] = step + 1
            self.state["rng"] = rng.getstate()
            self.log(loss=round(loss, 4), tokens=n_tok, seconds=round(time.time() - t0, 2), records=len(recs))
            if progress is not None:
                progress(self.state["stage"], self.state["step"], total, loss)
            if self.state["step"] % self.cfg.checkpoint_every == 0:
                self.save()
            if self.evaluate is not None and self.state["stage"] == "llm" and self.state["step"] % eval_every == 0:
                self.save()
                self.log(**self.evaluate(self))
