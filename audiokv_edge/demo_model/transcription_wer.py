"""WER of the demo model's transcripts of a set of recordings through the patched llama.cpp: one Session, full
cache by default, texts normalised as the training data's (:func:`corpus.normalise`). Used by the trainer's
held-out evaluation and by ``scripts/eval_demo_checkpoint.py``."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One recording's normalised reference and hypothesis ("-" for an empty answer, so that WER counts it)."""

    id: str
    kind: str
    reference: str
    hypothesis: str

    @property
    def wer(self) -> float:
        import jiwer

        return jiwer.wer(self.reference, self.hypothesis)


def transcribe_set(model_path, mmproj, lora, recordings: Iterable[tuple[str, str, pathlib.Path, str]], config,
                   on_transcript: Callable[[Transcript], None] | None = None) -> list[Transcript]:
    """Transcribe ``recordings`` (``(id, kind, audio path, reference text)``) with one Session of ``config``
    (a :class:`SessionConfig`); ``on_transcript`` is called after each."""
    from audiokv_edge.demo_model import corpus
    from audiokv_edge.runtime.session import Session

    out = []
    with Session(model_path, mmproj=mmproj, lora=lora, config=config) as s:
        for rid, kind, path, text in recordings:
            hyp = corpus.normalise(s.answer(str(path)).text) or "-"
            out.append(Transcript(rid, kind, corpus.normalise(text), hyp))
            if on_transcript is not None:
                on_transcript(out[-1])
    return out


def corpus_wer(transcripts: list[Transcript]) -> float | None:
    """WER over the whole set (errors over reference words, as jiwer counts a list), None for an empty set."""
    import jiwer

    if not transcripts:
        return None
    return jiwer.wer([t.reference for t in transcripts], [t.hypothesis for t in transcripts])
