"""The quality evaluation set: long passages (60-300 s) spoken by the RESERVED voices (flite awb and rms, never
used for training or calibration) from held-out sentences, each with questions whose answers the transcript
determines (:func:`.tasks.evaluation_questions`, each with where its answer lies in the passage), plus the human
speech clips shipped or vendored with known transcripts.

``DIR/evalset.json`` lists the items; passages are ``DIR/<id>.flac`` with ``DIR/<id>.json`` (sentences, their
spans in seconds, duration). Built once, deterministically (seed): the audio is kept between builds, the questions
are derived again from the sentences and spans at every build, so a set built by an older version gets the current
questions (each item records their version, ``question_set``).

The passages' sentences (and the distractor sentences their questions draw from) are pinned in
``audiokv_edge/data/evalset_text.json``: the held-out pool of :func:`corpus.collect` depends on the man pages a
machine has installed, so sentences drawn from it would differ from one machine to the next. An item the file does
not list (another duration) is drawn from the pool, as are all items when ``sentences`` is given.
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
PINNED_TEXT = _DATA / "evalset_text.json"


def build(out_dir: str | pathlib.Path, durations_s=(60, 120, 300), voices=EVAL_VOICES, seed: int = 7,
          sentences: list[str] | None = None, progress=None) -> list[dict]:
    """Write the passages that are missing and ``evalset.json``; returns the items. ``sentences``: draw every
    passage from this pool instead of the pinned texts."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pinned = pinned_texts() if sentences is None else {}
    pool = sentences

    def drawn_pool() -> list[str]:
        nonlocal pool
        if pool is None:
            logger.warning("drawing evaluation sentences from this machine's corpus (not pinned in %s)", PINNED_TEXT)
            pool = corpus.collect()["heldout"]
        return pool

    items = []
    for voice_name in voices:
        for duration in durations_s:
            item_id = f"{voice_name}-{duration}s"
            rng = random.Random(f"{seed}-{item_id}-passage")
            entry = pinned.get(item_id)
            spec = dataset.RecordingSpec(item_id, "long", speech.Voice("flite", voice_name), rng.randrange(2**31))
            path = out / f"{item_id}.flac"
            meta_path = out / f"{item_id}.json"
            meta = _read_meta(meta_path) if path.is_file() else None
            if meta is not None and entry is not None and meta["sentences"] != entry["sentences"]:
                meta = None                     # made from other sentences (before they were pinned)
            if meta is None:
                if entry is not None:
                    audio, said, spans = _passage(spec, duration, texts=entry["sentences"])
                else:
                    audio, said, spans = _passage(spec, duration, pool=drawn_pool())
                sf.write(path, audio, speech.SAMPLE_RATE)
                meta = {"sentences": said, "spans": spans, "seconds": round(audio.size / speech.SAMPLE_RATE, 2)}
                meta_path.write_text(json.dumps(meta))
            distractors = entry["distractors"] if entry is not None else rng.sample(drawn_pool(), 20)
            qrng = random.Random(f"{seed}-{item_id}")
            qs = tasks.evaluation_questions(meta["sentences"], meta["spans"], qrng, distractors)
            items.append({"id": item_id, "audio": str(path), "voice": f"flite:{voice_name}", "seconds": meta["seconds"],
                          "transcript": " ".join(meta["sentences"]), "question_set": tasks.EVAL_QUESTION_SET,
                          "questions": qs, "distractors": distractors})
            if progress is not None:
                progress(items[-1])
    for name, transcript in HUMAN_CLIPS.items():
        items.append({"id": name, "audio": str(_DATA / name), "voice": "human", "transcript": transcript,
                      "seconds": round(sf.info(_DATA / name).duration, 2), "question_set": tasks.EVAL_QUESTION_SET,
                      "questions": []})
    (out / "evalset.json").write_text(json.dumps(items, indent=1))
    return items


def pinned_texts(path: pathlib.Path | None = None) -> dict[str, dict]:
    """``{item id: {"sentences": [...], "distractors": [...]}}`` from the pinned file ({} when it is absent)."""
    path = PINNED_TEXT if path is None else pathlib.Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, dict) or not all(
            isinstance(v, dict) and v.get("sentences") and len(v.get("distractors", ())) >= 2 for v in items.values()):
        raise ValueError(f"{path}: not an evaluation text file (items with sentences and distractors)")
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


def _passage(spec: dataset.RecordingSpec, duration_s: float, texts: list[str] | None = None,
             pool: list[str] | None = None):
    """Speak ``texts`` in order, or sentences drawn from ``pool`` until ``duration_s``, with pauses of 0.2-0.6 s."""
    rng = random.Random(spec.seed)
    parts, said, spans, total = [], [], [], 0
    queue = list(texts) if texts is not None else None
    while queue if queue is not None else total < duration_s * speech.SAMPLE_RATE:
        text = queue.pop(0) if queue is not None else rng.choice(pool)
        audio = speech.synthesize(text, spec.voice, for_evaluation=True)
        spans.append((round(total / speech.SAMPLE_RATE, 3), round((total + audio.size) / speech.SAMPLE_RATE, 3)))
        gap = np.zeros(int(rng.uniform(0.2, 0.6) * speech.SAMPLE_RATE), np.float32)
        parts += [audio, gap]
        said.append(text)
        total += audio.size + gap.size
    return np.concatenate(parts), said, spans
