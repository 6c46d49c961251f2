"""Speech synthesis for the demo model's training and evaluation data (Debian packages flite, festival +
festvox voices, espeak-ng; sox for speed, pitch and reverb).

A :class:`Voice` names an engine, a voice of that engine and a sox effect chain; :func:`synthesize` returns mono
float32 samples at 16 kHz. The flite voices ``awb`` and ``rms`` (and festival's voices of the same speakers) are
RESERVED for evaluation: :func:`training_voices` never returns them, and :func:`synthesize` refuses them unless the
caller says the audio is for evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
RESERVED_SPEAKERS = ("awb", "rms")
_TIMEOUT_S = 120

FLITE_TRAIN = ("kal", "kal16", "slt")
FESTIVAL_TRAIN = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
ESPEAK_TRAIN = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                "en-us-nyc")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt4", "Alex", "Andy", "belinda", "david", "edward", "john", "linda", "max", "michel", "paul")


class SynthesisError(RuntimeError):
    """A synthesizer is missing, failed, or a reserved evaluation voice was asked for training data."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Attributes
    ----------
    engine : str
        ``"flite"``, ``"festival"`` or ``"espeak-ng"``.
    name : str
        Voice of that engine (flite ``-voice``, festival ``voice_<name>``, espeak-ng ``-v`` with ``+variant``).
    speed : float
        sox ``tempo`` factor (1.0: unchanged).
    pitch_cents : int
        sox ``pitch`` shift in cents (0: unchanged).
    reverb : int
        sox ``reverb`` reverberance in percent (0: none).
    noise_snr_db : float
        White noise added at this signal-to-noise ratio in dB (0: none).
    """

    engine: str
    name: str
    speed: float = 1.0
    pitch_cents: int = 0
    reverb: int = 0
    noise_snr_db: float = 0.0

    def __post_init__(self) -> None:
        if self.engine not in ("flite", "festival", "espeak-ng"):
            raise ValueError(f"unknown speech engine {self.engine!r}")
        if not 0.5 <= self.speed <= 2.0:
            raise ValueError(f"speed must be in [0.5, 2], got {self.speed}")

    @property
    def reserved(self) -> bool:
        """True for the evaluation-only speakers (awb, rms) in any engine."""
        return any(s in self.name for s in RESERVED_SPEAKERS)

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}:s{self.speed:.2f}:p{self.pitch_cents}:r{self.reverb}:n{self.noise_snr_db:g}"


def training_voices(rng: random.Random, n: int) -> list[Voice]:
    """``n`` random training voices: an engine's voice with random speed, pitch, reverb and noise (never awb/rms)."""
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.35:
            engine, name = "flite", rng.choice(FLITE_TRAIN)
        elif u < 0.6:
            engine, name = "festival", rng.choice(FESTIVAL_TRAIN)
        else:
            variant = rng.choice(ESPEAK_VARIANTS)
            engine, name = "espeak-ng", rng.choice(ESPEAK_TRAIN) + (f"+{variant}" if variant else "")
        out.append(Voice(engine, name,
                         speed=round(rng.uniform(0.85, 1.2), 2),
                         pitch_cents=rng.choice([0, 0, rng.randint(-300, 300)]),
                         reverb=rng.choice([0, 0, 0, rng.randint(10, 50)]),
                         noise_snr_db=rng.choice([0.0, 0.0, round(rng.uniform(15, 40), 1)])))
    return out


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SynthesisError(f"{binary} is not installed (run scripts/install_system_deps.sh --demo-model)")
    return path


def _run(cmd: list[str], stdin: str | None = None) -> None:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_S)
    if res.returncode != 0:
        raise SynthesisError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.strip()[:300]}")


def _raw_wav(voice: Voice, text: str, path: str) -> None:
    if voice.engine == "flite":
        _run([_require("flite"), "-voice", voice.name, "-t", text, "-o", path])
    elif voice.engine == "festival":
        _run([_require("text2wave"), "-eval", f"(voice_{voice.name})", "-o", path], stdin=text)
    else:
        _run([_require("espeak-ng"), "-v", voice.name, "-w", path, text])


def synthesize(text: str, voice: Voice, *, seed: int = 0, for_evaluation: bool = False) -> np.ndarray:
    """Speak ``text`` with ``voice``.

    Returns
    -------
    ndarray, float32, shape [n_samples]
        Mono samples at 16 kHz, peak-normalised to 0.5 before noise.
    """
    if voice.reserved and not for_evaluation:
        raise SynthesisError(f"voice {voice.name!r} is reserved for evaluation; it never makes training data")
    with tempfile.TemporaryDirectory(prefix="akv-tts-") as tmp:
        raw, out = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "out.wav")
        _raw_wav(voice, text, raw)
        effects = ["rate", "-v", str(SAMPLE_RATE), "channels", "1"]
        if voice.speed != 1.0:
            effects += ["tempo", "-s", f"{voice.speed:.3f}"]
        if voice.pitch_cents:
            effects += ["pitch", str(voice.pitch_cents)]
        if voice.reverb:
            effects += ["reverb", str(voice.reverb)]
        _run([_require("sox"), raw, "-b", "16", out, *effects])
        samples, rate = sf.read(out, dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE or samples.size == 0:
        raise SynthesisError(f"synthesis of {text[:40]!r} with {voice.label} gave {samples.size} samples at {rate} Hz")
    peak = float(np.abs(samples).max())
    samples = samples * (0.5 / peak) if peak > 0 else samples
    if voice.noise_snr_db:
        rng = np.random.default_rng(seed)
        power = float(np.mean(samples ** 2)) / (10 ** (voice.noise_snr_db / 10))
        samples = samples + rng.normal(0.0, np.sqrt(power), samples.size).astype(np.float32)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)
