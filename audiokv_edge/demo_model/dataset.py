"""The demo model's speech data set: recordings synthesised from corpus sentences, written incrementally.

Layout of a data directory::

    manifest.jsonl        one JSON object per recording: id, kind, voice, seconds, text, sentences, spans
                          (each sentence's start and end in seconds)
    audio/<id>.flac       mono 16 kHz

Kinds (libmtmd cuts audio into padded 30 s windows, so the kinds are defined by windows):
``short`` one sentence, padded in one window; ``packed`` sentences of one voice until just under 30 s (one dense
window); ``long`` 60-120 s of one voice (several windows). The sequence of recordings is a pure function of the
seed, the kind weights and the long-form range, so an interrupted build resumes where it stopped and gives the same
data. A second sequence (another seed, an id prefix, e.g. only ``long`` recordings of 60-180 s) can be added to the
same directory to give the model more long-form speech.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import pathlib
import random

import numpy as np
import soundfile as sf

from audiokv_edge.demo_model import corpus, speech

logger = logging.getLogger(__name__)

WINDOW_S = 30.0
PACKED_MAX_S = 29.5
KIND_WEIGHTS = {"short": 0.25, "packed": 0.63, "long": 0.12}
LONG_RANGE_S = (60.0, 120.0)


@dataclasses.dataclass(frozen=True)
class RecordingSpec:
    id: str
    kind: str
    voice: speech.Voice
    seed: int
    long_range_s: tuple[float, float] = LONG_RANGE_S


def recording_specs(n: int, seed: int = 0, *, kind_weights: dict[str, float] | None = None, id_prefix: str = "",
                    long_range_s: tuple[float, float] = LONG_RANGE_S) -> list[RecordingSpec]:
    """The first ``n`` recordings of the seed's sequence (ids ``<id_prefix>000000`` on)."""
    weights = dict(KIND_WEIGHTS if kind_weights is None else kind_weights)
    unknown = set(weights) - set(KIND_WEIGHTS)
    if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"kind weights must be non-negative weights of {sorted(KIND_WEIGHTS)}, got {weights}")
    lo, hi = long_range_s
    if not WINDOW_S <= lo <= hi:
        raise ValueError(f"long-form range must satisfy {WINDOW_S} <= low <= high seconds, got {long_range_s}")
    rng = random.Random(seed)
    kinds = list(weights)
    out = []
    for i in range(n):
        kind = rng.choices(kinds, list(weights.values()))[0]
        voice = speech.training_voices(rng, 1)[0]
        out.append(RecordingSpec(f"{id_prefix}{i:06d}", kind, voice, rng.randrange(2**31), (float(lo), float(hi))))
    return out


def _gap(rng: random.Random) -> np.ndarray:
    return np.zeros(int(rng.uniform(0.15, 0.7) * speech.SAMPLE_RATE), dtype=np.float32)


def synthesize_recording(spec: RecordingSpec, sentences: list[str], *, for_evaluation: bool = False
                         ) -> tuple[np.ndarray, list[str], list[tuple[float, float]]]:
    """Audio, the sentences it speaks and each sentence's (start, end) in seconds, for one recording spec
    (sentences drawn from ``sentences``)."""
    rng = random.Random(spec.seed)
    lead = np.zeros(int(rng.uniform(0.0, 0.6) * speech.SAMPLE_RATE), dtype=np.float32)
    parts, said, spans, total = [lead], [], [], lead.size
    target = {"short": 0.0, "packed": PACKED_MAX_S, "long": rng.uniform(*spec.long_range_s)}[spec.kind]
    limit = (PACKED_MAX_S if spec.kind == "packed" else 1e9) * speech.SAMPLE_RATE
    tries = 0
    while True:
        text = rng.choice(sentences)
        audio = speech.synthesize(text, spec.voice, seed=rng.randrange(2**31), for_evaluation=for_evaluation)
        gap = _gap(rng)
        if said and total + audio.size > limit:
            tries += 1
            if tries > 8:
                break
            continue
        if not said and spec.kind == "short" and audio.size > 12 * speech.SAMPLE_RATE:
            continue
        parts += [audio, gap]
        said.append(text)
        spans.append((round(total / speech.SAMPLE_RATE, 3), round((total + audio.size) / speech.SAMPLE_RATE, 3)))
        total += audio.size + gap.size
        if total >= target * speech.SAMPLE_RATE:
            break
    return np.concatenate(parts), said, spans


def _work(args):
    spec, sentences, audio_dir = args
    audio, said, spans = synthesize_recording(spec, sentences)
    sf.write(audio_dir / f"{spec.id}.flac", audio, speech.SAMPLE_RATE)
    return {"id": spec.id, "kind": spec.kind, "voice": spec.voice.label, "seconds": round(audio.size / speech.SAMPLE_RATE, 3),
            "text": " ".join(said), "sentences": said, "spans": spans}


def read_manifest(data_dir: str | pathlib.Path) -> list[dict]:
    """Recordings written so far (a torn last line of an interrupted build is ignored)."""
    path = pathlib.Path(data_dir) / "manifest.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def build(data_dir: str | pathlib.Path, n_recordings: int, *, seed: int = 0, workers: int = 2,
          sentences: list[str] | None = None, progress=None, kind_weights: dict[str, float] | None = None,
          id_prefix: str = "", long_range_s: tuple[float, float] = LONG_RANGE_S) -> int:
    """Synthesise recordings ``0..n_recordings-1`` of the seed's sequence that the manifest does not hold yet.

    Returns the number of recordings in the manifest afterwards.
    """
    data_dir = pathlib.Path(data_dir)
    audio_dir = data_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    if sentences is None:
        sentences = corpus.collect()["train"]
    done = {r["id"] for r in read_manifest(data_dir)}
    todo = [s for s in recording_specs(n_recordings, seed, kind_weights=kind_weights, id_prefix=id_prefix,
                                       long_range_s=long_range_s) if s.id not in done]
    with open(data_dir / "manifest.jsonl", "a") as manifest, multiprocessing.Pool(workers) as pool:
        for rec in pool.imap(_work, [(s, sentences, audio_dir) for s in todo]):
            manifest.write(json.dumps(rec) + "\n")
            manifest.flush()
            if progress is not None:
                progress(rec)
    return len(read_manifest(data_dir))
