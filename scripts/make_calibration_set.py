#!/usr/bin/env python3
"""Generate a calibration set for head profiling: synthetic speech with exact word timings (flite).

    python scripts/make_calibration_set.py --out DIR [--clips 24] [--sentences-per-clip 3] [--seed 0]

Writes DIR/clip_NNN.wav (16 kHz mono PCM16), DIR/clip_NNN.txt (transcript), DIR/clip_NNN.words.json (word
timings from the synthesizer, see audiokv_edge/profiling/synthetic_speech.py) and DIR/manifest.json. Sentences come from the
built-in list below (IEEE 1969 "Harvard" phonetically balanced sentences) or from --text-file (one per line).
Voices rotate over flite's slt, kal16 and kal (awb and rms are reserved for evaluation). About 0.3 s of compute per clip.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import sys

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiokv_edge import __version__  # noqa: E402
from audiokv_edge.runtime.audio import resample  # noqa: E402
from audiokv_edge.profiling.synthetic_speech import FLITE_VOICES, SynthesisError, synthesize  # noqa: E402

SAMPLE_RATE = 16000
VOICES = FLITE_VOICES
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--sentences-per-clip", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-file", help="sentences, one per line (default: built-in list)")
    ap.add_argument("--voices", default=",".join(VOICES), help="comma-separated flite voices")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("make_calibration_set")
    if args.clips < 1 or args.sentences_per_clip < 1:
        print("make_calibration_set: error: --clips and --sentences-per-clip must be >= 1", file=sys.stderr)
        return 2
    sentences = SENTENCES
    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            sentences = [ln.strip() for ln in f if ln.strip()]
    voices = [v for v in args.voices.split(",") if v]
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    clips = []
    total = 0.0
    for c in range(args.clips):
        voice = voices[c % len(voices)]
        text = " ".join(rng.sample(sentences, min(args.sentences_per_clip, len(sentences))))
        try:
            audio, sr, timings = synthesize(text, voice)
        except SynthesisError as exc:
            print(f"make_calibration_set: error: {exc}", file=sys.stderr)
            return 2
        if sr != SAMPLE_RATE:
            audio = resample(audio, sr, SAMPLE_RATE)
        stem = f"clip_{c:03d}"
        peak = float(np.max(np.abs(audio))) or 1.0
        sf.write(os.path.join(args.out, stem + ".wav"), audio / max(peak, 1.0), SAMPLE_RATE, subtype="PCM_16")
        with open(os.path.join(args.out, stem + ".txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        duration = len(audio) / SAMPLE_RATE
        with open(os.path.join(args.out, stem + ".words.json"), "w", encoding="utf-8") as f:
            json.dump({"duration": duration, "source": f"flite voice {voice}, phone end times (-psdur)",
                       "words": [{"word": t.word, "start": t.start, "end": t.end} for t in timings]}, f, indent=1)
        clips.append({"stem": stem, "voice": voice, "seconds": round(duration, 3), "words": len(timings)})
        total += duration
    manifest = {"generator": f"audiokv-edge {__version__} scripts/make_calibration_set.py",
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "command": " ".join(sys.argv), "synthesizer": "flite", "sample_rate": SAMPLE_RATE,
                "text": args.text_file or "built-in Harvard sentences", "seed": args.seed,
                "total_seconds": round(total, 2), "clips": clips}
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    log.info("%s: %d clips, %.1f s of speech", args.out, len(clips), total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
