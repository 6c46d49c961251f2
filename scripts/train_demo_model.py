#!/usr/bin/env python3
"""Train the built-in demo audio-language model: Whisper tiny.en encoder + Ultravox projector + SmolLM2-135M.

One command, resumable (re-run it to continue from the last checkpoint):

    .venv/bin/python scripts/train_demo_model.py [--work DIR] [--recordings N] [--hours H]

Stages, each skipping what is done: synthesise training speech (``DIR/data``) and held-out monitoring speech
(``DIR/heldout``, held-out sentences, training voices; the reserved voices awb / rms are never used here), cache
the frozen encoder's outputs, CTC warm start, LLM-in-the-loop training, export of the projector
(``DIR/projector.npz``, float16) and of the mmproj GGUF (``DIR/mmproj.gguf``). Progress: a bar on stderr,
``DIR/train_log.jsonl`` (loss per step, held-out WER through llama.cpp every ``--eval-every`` LLM steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from audiokv_edge.demo_model import ct2, corpus, dataset, features, lora_gguf, mmproj  # noqa: E402

logger = logging.getLogger("train_demo_model")
EXTRA_LONG_PREFIX = "L"
DEFAULT_WORK = pathlib.Path(os.environ.get("AUDIOKV_EDGE_CACHE", pathlib.Path.home() / ".cache" / "audiokv-edge")) / "demo-train"


def held_out_wer(trainer, model_path, heldout_dir, n: int = 12, max_tokens: int = 320) -> dict:
    """Export the current projector, transcribe ``n`` held-out recordings through the patched llama.cpp (full
    cache, greedy) and return their WER."""
    import numpy as np

    from audiokv_edge.demo_model import transcription_wer
    from audiokv_edge.runtime.session import SessionConfig

    npz = trainer.export(trainer.out / "projector.npz")
    proj = dict(np.load(npz))
    path = mmproj.write_mmproj(trainer.out / "mmproj.gguf", ct2.whisper_encoder(ct2.whisper_tiny_en_path()),
                               {k: v.astype(np.float32) for k, v in proj.items()}, trainer.llm.cfg.n_embd)
    lora = trainer.export_lora(trainer.out / "lora.npz")
    if lora is not None:
        lora = lora_gguf.write_lora_npz_gguf(lora, trainer.out / "lora.gguf")
    recs = [(r["id"], r["kind"], pathlib.Path(heldout_dir) / "audio" / f"{r['id']}.flac", r["text"])
            for r in dataset.read_manifest(heldout_dir)[:n]]
    t0 = time.time()
    done = transcription_wer.transcribe_set(model_path, path, lora, recs,
                                            SessionConfig(method="full", max_tokens=max_tokens, ctx=4096))
    wer = transcription_wer.corpus_wer(done)
    logger.info("held-out WER %.3f (%d recordings, %.0f s); e.g. ref %r hyp %r", wer, len(done), time.time() - t0,
                done[0].reference[:80], done[0].hypothesis[:80])
    return {"heldout_wer": round(wer, 4), "heldout_n": len(done), "example": done[0].hypothesis[:200]}


def main(argv=None) -> int:
    from audiokv_edge.demo_model.lora import ALL_TARGETS, DEFAULT_TARGETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=pathlib.Path, default=DEFAULT_WORK, help="data, cache and checkpoints (default %(default)s)")
    ap.add_argument("--recordings", type=int, default=1500, help="training recordings to synthesise (default %(default)s)")
    ap.add_argument("--extra-long", type=int, default=0,
                    help="long-form recordings added to the training set beyond --recordings (another seed, ids "
                         "L000000...; default %(default)s): more multi-window speech for long transcripts")
    ap.add_argument("--extra-long-range", default="60,180",
                    help="length range of the --extra-long recordings in seconds (default %(default)s)")
    ap.add_argument("--heldout-long", type=int, default=0,
                    help="held-out long-form recordings (DIR/heldout-long, held-out text, training voices, the "
                         "--extra-long-range lengths; default %(default)s) for choosing among checkpoints by their "
                         "long transcripts (scripts/eval_demo_checkpoint.py --set heldout-long)")
    ap.add_argument("--heldout", type=int, default=24, help="held-out monitoring recordings (default %(default)s)")
    ap.add_argument("--ctc-steps", type=int, default=1500)
    ap.add_argument("--llm-steps", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--lora-rank", type=int, default=8,
                    help="LoRA rank on the text model's attention q / v (0: train the projector only; default 8)")
    ap.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS),
                    help=f"LoRA matrices, comma-separated, of {','.join(ALL_TARGETS)} (default %(default)s); targets "
                         "added to a checkpoint start at zero")
    ap.add_argument("--restart-at", type=int, default=0,
                    help="LLM step of a warm restart of the learning rate (0: none; default %(default)s)")
    ap.add_argument("--restart-lr", type=float, default=2.5e-4, help="peak learning rate after --restart-at")
    ap.add_argument("--init-from", type=pathlib.Path, default=None,
                    help="a folder with projector.npz (and lora.npz), e.g. audiokv_edge/data/demo: when the work "
                         "folder has no checkpoint, the LLM stage starts from these weights at --init-step (a new "
                         "phase on the built-in model); with a checkpoint, training resumes from it")
    ap.add_argument("--init-step", type=int, default=None, help="LLM step that --init-from starts at (default: --restart-at)")
    ap.add_argument("--feature-gain-jitter", type=float, default=0.0,
                    help="per-example, per-channel gain of the encoder outputs ~ N(1, this) (default 0: none)")
    ap.add_argument("--feature-dropout", type=float, default=0.0,
                    help="share of the encoder output channels dropped per example (default 0: none)")
    ap.add_argument("--hours", type=float, default=None, help="stop (resumably) after this many hours")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-data", action="store_true",
                    help="train on the recordings already synthesised and encoded (another process may add more)")
    args = ap.parse_args(argv)
    try:
        long_range = tuple(float(x) for x in args.extra_long_range.split(","))
        if len(long_range) != 2:
            raise ValueError
    except ValueError:
        ap.error(f"--extra-long-range must be two numbers LOW,HIGH, got {args.extra_long_range!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch
    from tqdm import tqdm

    from audiokv_edge.testing import real_models
    from audiokv_edge.demo_model import llama_text, torch_encoder, torch_llm
    from audiokv_edge.demo_model.train import Trainer, TrainConfig

    torch.set_num_threads(args.threads)
    work = args.work
    data_dir, heldout_dir = work / "data", work / "heldout"
    if not args.skip_data:
        corpus_file = work / "corpus.json"
        if corpus_file.is_file():
            sentences = json.loads(corpus_file.read_text())
        else:
            sentences = corpus.collect()
            work.mkdir(parents=True, exist_ok=True)
            corpus_file.write_text(json.dumps(sentences))
        with tqdm(desc="held-out speech", total=args.heldout, unit="rec") as bar:
            dataset.build(heldout_dir, args.heldout, seed=10_000, sentences=sentences["heldout"],
                          progress=lambda r: bar.update())
        if args.heldout_long:
            with tqdm(desc="held-out long-form speech", total=args.heldout_long, unit="rec") as bar:
                dataset.build(work / "heldout-long", args.heldout_long, seed=30_000, sentences=sentences["heldout"],
                              kind_weights={"long": 1.0}, id_prefix="HL", long_range_s=long_range,
                              progress=lambda r: bar.update())
        with tqdm(desc="training speech", total=args.recordings, unit="rec") as bar:
            bar.update(len(dataset.read_manifest(data_dir)))
            dataset.build(data_dir, args.recordings, seed=0, sentences=sentences["train"],
                          progress=lambda r: bar.update())
        if args.extra_long:
            done = sum(r["id"].startswith(EXTRA_LONG_PREFIX) for r in dataset.read_manifest(data_dir))
            with tqdm(desc="long-form speech", total=args.extra_long, initial=done, unit="rec") as bar:
                dataset.build(data_dir, args.extra_long, seed=20_000, sentences=sentences["train"],
                              kind_weights={"long": 1.0}, id_prefix=EXTRA_LONG_PREFIX,
                              long_range_s=long_range, progress=lambda r: bar.update())
    if not args.skip_data:
        encoder = torch_encoder.WhisperEncoder(ct2.whisper_encoder(ct2.whisper_tiny_en_path()))
        with tqdm(desc="encoder cache", unit="rec") as bar:
            features.build(data_dir, encoder, progress=lambda r, s: bar.update())
    model_path = real_models.smollm2_q4_1_path()
    text = llama_text.LlamaText(model_path)
    cfg_llm, tensors = torch_llm.load_gguf(model_path)
    llm = torch_llm.FrozenLlama(cfg_llm, tensors)
    config = TrainConfig(ctc_steps=args.ctc_steps, llm_steps=args.llm_steps, lora_rank=args.lora_rank,
                         lora_targets=tuple(t for t in args.lora_targets.split(",") if t),
                         restart_at=args.restart_at, restart_lr=args.restart_lr,
                         feature_gain_jitter=args.feature_gain_jitter, feature_dropout=args.feature_dropout)
    trainer = Trainer(data_dir, work, llm, text.tokenize, text.layout, text.eos_id, config,
                      evaluate=lambda tr: held_out_wer(tr, model_path, heldout_dir))
    if args.init_from is not None and not trainer.ckpt_path.exists():
        lora_npz = args.init_from / "lora.npz"
        trainer.init_from(args.init_from / "projector.npz", lora_npz if lora_npz.is_file() else None,
                          step=args.restart_at if args.init_step is None else args.init_step)
    bar = tqdm(desc="training", unit="step")

    def progress(stage, step, total, loss):
        bar.set_description(f"{stage}")
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.refresh()

    trainer.run(progress=progress, stop_after_s=None if args.hours is None else args.hours * 3600,
                eval_every=args.eval_every)
    bar.close()
    result = held_out_wer(trainer, model_path, heldout_dir)
    trainer.log(final=True, **result)
    print(json.dumps({"work": str(work), **trainer.state, "rng": None, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
