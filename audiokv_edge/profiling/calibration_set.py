"""A calibration directory for head profiling: audio files with same-named transcripts and optional word timings.

Layout of DIR::

    <stem>.wav (or .flac / .ogg / .mp3)   speech, any sample rate, mono or multi-channel
    <stem>.txt                            transcript (UTF-8; whitespace tokens are the words)
    <stem>.words.json                     optional: {"words": [{"word": w, "start": s, "end": s}, ...],
                                          "duration": s, "source": "..."}; one entry per transcript word

Without .words.json the words are timed by the uniform fallback (hit_ratio.uniform_word_timings).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import soundfile as sf

from audiokv_edge.profiling.hit_ratio import WordTiming, uniform_word_timings

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
WORDS_SUFFIX = ".words.json"


@dataclass(frozen=True)
class CalibrationItem:
    """One clip: where it is, what is said and when.

    Attributes
    ----------
    audio_path : str
    transcript : str
    timings : tuple of WordTiming, one per transcript word
    timed : bool
        True if the timings came from a .words.json file, False if from the uniform fallback.
    duration : float
        Seconds of audio.
    """

    audio_path: str
    transcript: str
    timings: tuple
    timed: bool
    duration: float


def _read_timings(path: str, words: list[str], duration: float) -> list[WordTiming]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["words"]
        timings = [WordTiming(str(e["word"]), float(e["start"]), float(e["end"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: invalid word timings ({exc})") from None
    if [t.word for t in timings] != words:
        raise ValueError(f"{path}: words {[t.word for t in timings][:8]}... do not match the transcript "
                         f"{words[:8]}...")
    if timings and timings[-1].end > duration + 0.05:
        raise ValueError(f"{path}: last word ends at {timings[-1].end} s, after the audio ({duration:.3f} s)")
    return timings


def load_calibration_dir(directory: str) -> list[CalibrationItem]:
    """All clips of a calibration directory, sorted by file name.

    Raises ValueError if the directory has no audio, a clip has no transcript, a transcript is empty, or
    word timings do not match their transcript.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    items = []
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in AUDIO_EXTENSIONS:
            continue
        audio_path = os.path.join(directory, name)
        txt = os.path.join(directory, stem + ".txt")
        if not os.path.isfile(txt):
            raise ValueError(f"{audio_path}: no transcript {stem}.txt next to it")
        with open(txt, encoding="utf-8") as f:
            transcript = " ".join(f.read().split())
        words = transcript.split()
        if not words:
            raise ValueError(f"{txt}: empty transcript")
        info = sf.info(audio_path)
        duration = info.frames / info.samplerate
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"{audio_path}: no audio")
        wpath = os.path.join(directory, stem + WORDS_SUFFIX)
        if os.path.isfile(wpath):
            timings, timed = _read_timings(wpath, words, duration), True
        else:
            timings, timed = uniform_word_timings(words, duration), False
        items.append(CalibrationItem(audio_path, transcript, tuple(timings), timed, duration))
    if not items:
        raise ValueError(f"{directory}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    n_untimed = sum(not it.timed for it in items)
    if n_untimed:
        logger.warning("%d of %d clips have no %s: uniform time-to-word mapping used for them",
                       n_untimed, len(items), WORDS_SUFFIX)
    return items
