"""The quality evaluation set: long passages (60-300 s) spoken by the RESERVED voices (flite awb and rms, never
used for training or calibration) from held-out sentences, each with questions whose answers the transcript
determines (:func:`.tasks.evaluation_questions`, each with where its answer lies in the passage), plus the human
speech clips shipped or vendored with known transcripts.

``DIR/evalset.json`` lists the items; passages are ``DIR/<id>.flac`` with ``DIR/<id>.json`` (sentences, their
spans in seconds, duration). Built once, deterministically (seed): the audio is kept between builds, the questions
are derived again from the sentences and spans at every build, so a set built by an older version gets the current
questions (each item records their version, ``question_set``).
"""

from __future__ import annotations

import json
import logging
import pathlib
import random

import numpy as np
import soundfile as sf

from audiokv_edge.demo_model import corpus, dataset, speech, tasks

logger = logging.getLogger(__name__)
EVAL_VOICES = ("awb", "rms")
HUMAN_CLIPS = {
    # file under audiokv_edge/data: transcript
    "jfk.wav": "And so my fellow Americans, ask not what your country can do for you, ask what you can do for "
               "your country.",
    "arctic_a0007.wav": "And you always want to see it in the superlative degree.",
}
_DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def build(out_dir: str | pathlib.Path, durations_s=(60, 120, 300), voices=EVAL_VOICES, seed: int = 7,
          sentences: list[str] | None = None, progress=None) -> list[dict]:
    """Write the passages that are missing and ``evalset.json``; returns the items."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if sentences is None:
        sentences = corpus.collect()["heldout"]
    rng = random.Random(seed)
    items = []
    for voice_name in voices:
        for duration in durations_s:
            item_id = f"{voice_name}-{duration}s"
            voice = speech.Voice("flite", voice_name)
            spec = dataset.RecordingSpec(item_id, "long", voice, rng.randrange(2**31))
            path = out / f"{item_id}.flac"
            meta_path = out / f"{item_id}.json"
            meta = _read_meta(meta_path) if path.is_file() else None
            if meta is None:
                audio, said, spans = _passage(spec, sentences, duration)
                sf.write(path, audio, speech.SAMPLE_RATE)
                meta = {"sentences": said, "spans": spans, "seconds": round(audio.size / speech.SAMPLE_RATE, 2)}
                meta_path.write_text(json.dumps(meta))
            qrng = random.Random(f"{seed}-{item_id}")
            qs = tasks.evaluation_questions(meta["sentences"], meta["spans"], qrng, rng.sample(sentences, 20))
            items.append({"id": item_id, "audio": str(path), "voice": f"flite:{voice_name}", "seconds": meta["seconds"],
                          "transcript": " ".join(meta["sentences"]), "question_set": tasks.EVAL_QUESTION_SET,
                          "questions": qs})
            if progress is not None:
                progress(items[-1])
    for name, transcript in HUMAN_CLIPS.items():
        items.append({"id": name, "audio": str(_DATA / name), "voice": "human", "transcript": transcript,
                      "seconds": round(sf.info(_DATA / name).duration, 2), "question_set": tasks.EVAL_QUESTION_SET,
                      "questions": []})
    (out / "evalset.json").write_text(json.dumps(items, indent=1))
    return items


def _read_meta(path: pathlib.Path) -> dict | None:
    """A passage's stored sentences, spans and duration; None (the passage is made again) when the file is missing
    or lacks one of them."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not JSON: the passage is made again", path)
        return None
    if not isinstance(meta, dict) or not {"sentences", "spans", "seconds"} <= meta.keys() \
            or len(meta["sentences"]) != len(meta["spans"]) or not meta["sentences"]:
        logger.warning("%s lacks sentences, spans or seconds: the passage is made again", path)
        return None
    return meta


def _passage(spec: dataset.RecordingSpec, sentences: list[str], duration_s: float):
    rng = random.Random(spec.seed)
    parts, said, spans, total = [], [], [], 0
    while total < duration_s * speech.SAMPLE_RATE:
        text = rng.choice(sentences)
        audio = speech.synthesize(text, spec.voice, for_evaluation=True)
        spans.append((round(total / speech.SAMPLE_RATE, 3), round((total + audio.size) / speech.SAMPLE_RATE, 3)))
        gap = np.zeros(int(rng.uniform(0.2, 0.6) * speech.SAMPLE_RATE), np.float32)
        parts += [audio, gap]
        said.append(text)
        total += audio.size + gap.size
    return np.concatenate(parts), said, spans
