"""Synthetic calibration speech with exact word timings from the flite synthesizer (Debian package `flite`).

Why flite: it reports the end time of every phone it synthesises (`-psdur`), so word boundaries come from the
synthesizer itself, not from a recogniser. espeak-ng's command line gives no timings (only its C API's word events)
and sounds robotic; festival is ~3x slower. flite prints no word-to-phone mapping, so the words' phones are
recovered by aligning the sentence's phone string with the concatenated phone strings of its words synthesised
alone (`-ps`); the two differ only where flite's post-lexical rules change a phone (e.g. "the" -> dh iy before a
vowel), which the alignment absorbs. A word then spans [end of the phone before its first phone, end of its last
phone].
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache

import numpy as np
import soundfile as sf

from audiokv_edge.profiling.hit_ratio import WordTiming

logger = logging.getLogger(__name__)

#: flite voices for calibration speech; awb and rms are reserved for evaluating the demo model (never calibrated on)
FLITE_VOICES = ("slt", "kal16", "kal")
RESERVED_VOICES = ("awb", "rms")
PAUSE = "pau"
_TIMEOUT_S = 60


class SynthesisError(RuntimeError):
    """flite is missing, failed, or its words/phones could not be matched to the transcript."""


def flite_path() -> str:
    """Path of the flite binary; SynthesisError if it is not installed (scripts/install_system_deps.sh)."""
    path = shutil.which("flite")
    if path is None:
        raise SynthesisError("flite is not installed (run scripts/install_system_deps.sh)")
    return path


def _flite(args: list[str]) -> str:
    res = subprocess.run([flite_path(), *args], capture_output=True, text=True, timeout=_TIMEOUT_S)
    if res.returncode != 0:
        raise SynthesisError(f"flite {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def transcript_words(text: str) -> list[str]:
    """Whitespace tokens of a transcript (punctuation kept: these are what a model writes)."""
    return text.split()


def _clean(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


@lru_cache(maxsize=4096)
def word_phones(word: str, voice: str) -> tuple[str, ...]:
    """Phones flite uses for ``word`` said alone, pauses removed."""
    out = _flite(["-voice", voice, "-ps", "-t", word, "none"])
    return tuple(p for p in out.split() if p != PAUSE)


def _parse_psdur(out: str) -> list[tuple[str, float]]:
    segs = []
    for tok in out.split():
        name, _, end = tok.rpartition(":")
        try:
            segs.append((name, float(end)))
        except ValueError:
            raise SynthesisError(f"unexpected flite segment output {tok!r}") from None
    if not segs:
        raise SynthesisError("flite printed no segments")
    return segs


def align_words(segments: list[tuple[str, float]], words_phones: list[tuple[str, ...]],
                words: list[str]) -> list[WordTiming]:
    """Word timings from the sentence's timed phones and each word's phones said alone.

    Parameters
    ----------
    segments : list of (phone, end time in s), length n_seg
        flite -psdur output of the whole sentence, pauses included.
    words_phones : list of tuple of str, length n_words
    words : list of str, length n_words
        The transcript words the timings are reported for.
    """
    if len(words_phones) != len(words) or not words:
        raise SynthesisError("need one phone list per word")
    if any(len(p) == 0 for p in words_phones):
        raise SynthesisError(f"flite gives no phones for a word of {' '.join(words)!r}")
    speech = [(i, name) for i, (name, _) in enumerate(segments) if name != PAUSE]
    ref = [(w, p) for w, phones in enumerate(words_phones) for p in phones]
    owner = [-1] * len(speech)                               # word of each speech phone
    sm = difflib.SequenceMatcher(a=[p for _, p in ref], b=[p for _, p in speech], autojunk=False)
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        for k in range(b0, b1):
            if tag in ("equal", "replace") and a1 > a0:
                owner[k] = ref[min(a0 + (k - b0), a1 - 1)][0]
    for k in range(len(owner)):                              # inserted phones belong to the previous word
        if owner[k] < 0:
            owner[k] = owner[k - 1] if k > 0 else 0
    for k in range(1, len(owner)):                           # keep words in order
        owner[k] = max(owner[k], owner[k - 1])
    timings = []
    for w, word in enumerate(words):
        idx = [speech[k][0] for k in range(len(speech)) if owner[k] == w]
        if not idx:
            raise SynthesisError(f"could not locate word {word!r} in flite's phones")
        first, last = idx[0], idx[-1]
        start = segments[first - 1][1] if first > 0 else 0.0
        timings.append(WordTiming(word, float(start), float(segments[last][1])))
    return timings


def synthesize(text: str, voice: str = "slt") -> tuple[np.ndarray, int, list[WordTiming]]:
    """Speak ``text`` with flite; return the audio, its sample rate and one timing per transcript word.

    Returns
    -------
    audio : ndarray, float32, shape [n_samples]
        Mono, in [-1, 1].
    sample_rate : int
    timings : list of WordTiming, one per whitespace token of ``text``

    Raises
    ------
    SynthesisError
        flite missing or failing, or flite's word count differs from the transcript's (numbers, abbreviations).
    """
    if voice in RESERVED_VOICES:
        raise ValueError(f"voice {voice!r} is reserved for evaluation; calibrate with one of {FLITE_VOICES}")
    if voice not in FLITE_VOICES:
        raise ValueError(f"voice must be one of {FLITE_VOICES}, got {voice!r}")
    words = transcript_words(text)
    if not words:
        raise ValueError("empty text")
    flite_words = _flite(["-voice", voice, "-pw", "-t", text, "none"]).split()
    if len(flite_words) != len(words):
        raise SynthesisError(f"flite reads {len(flite_words)} words in {text!r}, the transcript has {len(words)} "
                             "(numbers or abbreviations?): write them out")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "s.wav")
        segments = _parse_psdur(_flite(["-voice", voice, "-psdur", "-t", text, "-o", wav]))
        audio, sr = sf.read(wav, dtype="float32", always_2d=False)
    phones = [word_phones(_clean(w) or w, voice) for w in flite_words]
    timings = align_words(segments, phones, words)
    duration = len(audio) / sr
    if timings[-1].end > duration + 0.05:
        raise SynthesisError(f"flite timings end at {timings[-1].end:.3f} s after the audio ({duration:.3f} s)")
    return audio, int(sr), timings
