"""Instructions the demo model is trained and evaluated on, derived from a recording's sentences: transcription
and questions whose answers the transcript determines (first / last sentence, word counts, yes/no, "what is said
about X").

:func:`questions` and :func:`sample_task` are what training draws. :func:`evaluation_questions` asks the same kinds
of question, more of them and placed so that a cache that lost part of the recording answers them wrong: "what is
said about X" for every sentence that has a word said once in the passage, counts only of words said 2+ times, as
many "No." as "Yes." questions; each records where in the recording its answer lies. :func:`answer_correct` and
:func:`answer_score` grade an answer.
"""

from __future__ import annotations

import random
import re

from audiokv_edge.demo_model.corpus import normalise

TRANSCRIBE = "Transcribe the audio."
#: Version of :func:`evaluation_questions`' output; bumped whenever the questions it asks change, so that results
#: answered on another question set are not mixed with new ones (scripts/eval_quality.py refuses to resume them).
EVAL_QUESTION_SET = 2
#: The question kinds, in the order tables list them.
KINDS = ("first", "last", "about", "count", "yesno")
#: Kinds whose reference answer is a sentence of the recording (graded by word error rate).
SENTENCE_KINDS = ("first", "last", "about")
#: The answer a model gives by rote to each short-answer kind: its accuracy is the baseline a method must beat.
ROTE_ANSWERS = {"yesno": "Yes.", "count": "1"}
#: Where in the recording an answer lies: the third of the spoken time holding the answered sentence's midpoint.
POSITIONS = ("early", "middle", "late")
_STOP = set("a an the and or but of to in on at for with by from as is are was were be been it its this that "
            "these those if then than so not no yes do does did can could will would should may might must you your "
            "we our they their he she his her i me my".split())


def _words(sentence: str) -> list[str]:
    return normalise(sentence).split()


def count_word(sentences: list[str], word: str) -> int:
    return sum(w == word for s in sentences for w in _words(s))


def transcribe(sentences: list[str]) -> tuple[str, str]:
    return TRANSCRIBE, " ".join(sentences)


def _content_words(sentence: str) -> list[str]:
    return [w for w in _words(sentence) if w not in _STOP and len(w) > 3 and "'" not in w]


def questions(sentences: list[str], rng: random.Random, distractors: list[str]) -> list[tuple[str, str, str]]:
    """``(kind, question, answer)`` triples answerable from ``sentences`` alone."""
    out = [("first", "Repeat the first sentence of the audio.", sentences[0]),
           ("last", "Repeat the last sentence of the audio.", sentences[-1])]
    content = sorted({w for s in sentences for w in _content_words(s)})
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
    others = sorted({w for s in distractors for w in _content_words(s) if w not in spoken})
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


def position_of(span: tuple[float, float], speech_end_s: float) -> str:
    """The third of a recording (:data:`POSITIONS`) holding the midpoint of ``span`` (seconds)."""
    mid = (span[0] + span[1]) / 2
    return POSITIONS[min(2, max(0, int(3 * mid / speech_end_s)))] if speech_end_s > 0 else POSITIONS[0]


def evaluation_questions(sentences: list[str], spans: list[tuple[float, float]], rng: random.Random,
                         distractors: list[str], yes_per_third: int = 1, max_counts: int = 3) -> list[dict]:
    """The evaluation's questions on a recording of ``sentences``, sentence ``i`` spoken over ``spans[i]`` seconds.

    Asked: the first and the last sentence; "what is said about X" for every sentence holding a content word said
    exactly once in the recording (X drawn among them); "how many times" for up to ``max_counts`` content words said
    2+ times (none when no word repeats: a count of 1 is what the model answers by rote); "is X said" for up to
    ``yes_per_third`` words said once in each third of the recording, and as many words of ``distractors`` that are
    not said (answer "No.").

    Returns
    -------
    list of dict
        ``kind``, ``question``, ``answer``, ``sentences`` (indices of the sentences the answer depends on, in order;
        empty for a "No."), ``start_s`` / ``end_s`` (from the first one's start to the last one's end; None for a
        "No."), ``position`` (:data:`POSITIONS` when all of them lie in one third, ``"spread"`` when not, None for a
        "No."), in the order first, last, about (by sentence), count, yes/no.
    """
    if not sentences or len(spans) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences with {len(spans)} spans: one span per sentence needed")
    end = spans[-1][1]
    words = [_words(s) for s in sentences]
    counts: dict[str, int] = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    where = {w: [i for i, ws in enumerate(words) if w in ws] for w in counts}

    def ask(kind, question, answer, idx):
        idx = sorted(idx)
        thirds = {position_of(spans[i], end) for i in idx}
        return {"kind": kind, "question": question, "answer": answer, "sentences": idx,
                "start_s": spans[idx[0]][0] if idx else None, "end_s": spans[idx[-1]][1] if idx else None,
                "position": (thirds.pop() if len(thirds) == 1 else "spread") if idx else None}

    out = [ask("first", "Repeat the first sentence of the audio.", sentences[0], [0]),
           ask("last", "Repeat the last sentence of the audio.", sentences[-1], [len(sentences) - 1])]
    unique_in = [sorted({w for w in _content_words(s) if counts[w] == 1}) for s in sentences]
    for i, unique in enumerate(unique_in):
        if unique:
            out.append(ask("about", f'What is said about "{rng.choice(unique)}"?', sentences[i], [i]))
    repeated = sorted({w for s in sentences for w in _content_words(s) if counts[w] >= 2})
    for w in sorted(rng.sample(repeated, min(max_counts, len(repeated)))):
        out.append(ask("count", f'How many times is the word "{w}" said?', str(counts[w]), where[w]))
    yes = []
    for third in POSITIONS:
        pool = sorted({w for i, u in enumerate(unique_in) if position_of(spans[i], end) == third for w in u})
        yes += rng.sample(pool, min(yes_per_third, len(pool)))
    others = sorted({w for s in distractors for w in _content_words(s) if w not in counts})
    no = rng.sample(others, min(len(yes), len(others)))
    yes = yes[:len(no)]
    question = 'Is the word "{}" said in the audio? Answer yes or no.'
    out += [ask("yesno", question.format(w), "Yes.", where[w]) for w in yes]
    out += [ask("yesno", question.format(w), "No.", []) for w in no]
    return out


def answer_correct(kind: str, answer: str, reference: str) -> bool:
    """Whether a model's answer matches the reference: yes/no and counts, the answer's first word (number) equal
    to the reference's; sentences, word error rate of the answer against the reference sentence <= 0.25 (both
    normalised as for WER)."""
    a, r = normalise(answer), normalise(reference)
    if kind in ("yesno", "count"):
        first = re.findall(r"[a-z0-9']+", a)
        return bool(first) and first[0] == r.split()[0]
    import jiwer

    return bool(r) and jiwer.wer(r, a or "-") <= 0.25


def answer_score(kind: str, answer: str, reference: str) -> float:
    """A grade in [0, 1] that is not all-or-nothing for sentences: ``1 - WER`` of the answer against the reference
    sentence, clipped to [0, 1] (a near miss scores close to 1, a run-on or a wrong sentence 0); 1 or 0 as
    :func:`answer_correct` for yes/no and counts."""
    if kind not in SENTENCE_KINDS:
        return float(answer_correct(kind, answer, reference))
    import jiwer

    r = normalise(reference)
    return max(0.0, 1.0 - jiwer.wer(r, normalise(answer) or "-")) if r else 0.0
