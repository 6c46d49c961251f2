"""Instructions the demo model is trained and evaluated on, derived from a recording's sentences: transcription
and questions whose answers the transcript determines (first / last sentence, word counts, yes/no, "what is said
about X"). The same generators give the evaluation's question sets, so accuracy is measured on known answers.
"""

from __future__ import annotations

import random
import re

from audiokv_edge.demo_model.corpus import normalise

TRANSCRIBE = "Transcribe the audio."
_STOP = set("a an the and or but of to in on at for with by from as is are was were be been it its this that "
            "these those if then than so not no yes do does did can could will would should may might must you your "
            "we our they their he she his her i me my".split())


def _words(sentence: str) -> list[str]:
    return normalise(sentence).split()


def count_word(sentences: list[str], word: str) -> int:
    return sum(w == word for s in sentences for w in _words(s))


def transcribe(sentences: list[str]) -> tuple[str, str]:
    return TRANSCRIBE, " ".join(sentences)


def questions(sentences: list[str], rng: random.Random, distractors: list[str]) -> list[tuple[str, str, str]]:
    """``(kind, question, answer)`` triples answerable from ``sentences`` alone."""
    out = [("first", "Repeat the first sentence of the audio.", sentences[0]),
           ("last", "Repeat the last sentence of the audio.", sentences[-1])]
    content = sorted({w for s in sentences for w in _words(s) if w not in _STOP and len(w) > 3 and "'" not in w})
    if content:
        w = rng.choice(content)
        out.append(("count", f'How many times is the word "{w}" said?', str(count_word(sentences, w))))
        out.append(("yesno", f'Is the word "{w}" said in the audio? Answer yes or no.', "Yes."))
        unique = [w for w in content if count_word(sentences, w) == 1]
        if unique:
            u = rng.choice(unique)
            said = next(s for s in sentences if u in _words(s))
            out.append(("about", f'What is said about "{u}"?', said))
    spoken = {w for s in sentences for w in _words(s)}
    others = sorted({w for s in distractors for w in _words(s) if w not in spoken and w not in _STOP and len(w) > 3
                     and "'" not in w})
    if others:
        out.append(("yesno", f'Is the word "{rng.choice(others)}" said in the audio? Answer yes or no.', "No."))
    return out


def sample_task(sentences: list[str], rng: random.Random, distractors: list[str],
                transcribe_share: float = 0.55) -> tuple[str, str, str]:
    """One training instruction for a recording: transcription with probability ``transcribe_share``, else a
    random question."""
    if rng.random() < transcribe_share:
        return ("transcribe", *transcribe(sentences))
    return rng.choice(questions(sentences, rng, distractors))


def answer_correct(kind: str, answer: str, reference: str) -> bool:
    """Whether a model's answer matches the reference: exact normalised match for yes/no and counts (first
    word / number), word error rate <= 0.25 for sentences."""
    a, r = normalise(answer), normalise(reference)
    if kind in ("yesno", "count"):
        first = re.findall(r"[a-z0-9']+", a)
        return bool(first) and first[0] == r.split()[0]
    import jiwer

    return bool(r) and jiwer.wer(r, a or "-") <= 0.25
