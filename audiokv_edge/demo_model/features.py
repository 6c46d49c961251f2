"""Cache of the frozen Whisper encoder's outputs for every recording of a data directory.

``feats/<id>.npy``: float16, shape [n_windows, 1500, d]: libmtmd's mel windows (:mod:`.mel`) through the encoder
(:class:`.torch_encoder.WhisperEncoder`, float32). Written to a temporary name and renamed, so a file that exists is
complete; a re-run computes only what is missing.
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import soundfile as sf

from audiokv_edge.demo_model import dataset, mel

logger = logging.getLogger(__name__)


def feature_path(data_dir: str | pathlib.Path, rec_id: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / "feats" / f"{rec_id}.npy"


def encode_samples(encoder, samples: np.ndarray, batch: int = 2) -> np.ndarray:
    """Encoder states of a recording, float16 [n_windows, 1500, d]."""
    import torch

    windows = mel.windows(samples)
    out = []
    for i in range(0, len(windows), batch):
        with torch.no_grad():
            out.append(encoder(torch.from_numpy(windows[i:i + batch])).numpy().astype(np.float16))
    return np.concatenate(out)


def build(data_dir: str | pathlib.Path, encoder, progress=None) -> int:
    """Encode every manifest recording that has no feature file yet; returns how many were encoded."""
    data_dir = pathlib.Path(data_dir)
    (data_dir / "feats").mkdir(exist_ok=True)
    n = 0
    for rec in dataset.read_manifest(data_dir):
        path = feature_path(data_dir, rec["id"])
        if path.exists():
            continue
        samples, rate = sf.read(data_dir / "audio" / f"{rec['id']}.flac", dtype="float32")
        if rate != mel.SAMPLE_RATE:
            raise ValueError(f"{rec['id']}: {rate} Hz, expected {mel.SAMPLE_RATE}")
        states = encode_samples(encoder, samples)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, states)
        os.replace(tmp, path)
        n += 1
        if progress is not None:
            progress(rec, states)
    return n
