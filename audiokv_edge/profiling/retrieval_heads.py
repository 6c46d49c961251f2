"""Offline retrieval-head score of a text model: how often each head's strongest attention falls on the context
token being copied (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality",
arXiv 2404.15574, Sec. 2).

A calibration document hides a needle sentence at some depth of a haystack text; the question asks the model to
repeat it, and the needle's own tokens are teacher-forced as the answer. The decode step that emits needle token j
copies it from the needle's position a + j: a head "copies" at that step when its top-1 attention (``top_k`` = 1,
the paper's argmax) falls on that position. This is the hit ratio of :mod:`audiokv_edge.profiling.hit_ratio` with
the copied token's position as the target span, so the profile is accumulated, GQA-summed, normalised and stored
exactly as the audio profile (``profile_from_hits``, audiokv.* GGUF keys). [Choice: the exact source position; the
paper also credits an argmax on another occurrence of the same token inside the needle.]

The haystack defaults to the docstrings of Python's standard library (English prose present on every machine, none
of it the pass-key filler or questions that scripts/eval_text_quality.py evaluates with); ``text`` replaces it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re

import numpy as np

from audiokv_edge.profiling.hit_ratio import HitRatioAccumulator

logger = logging.getLogger(__name__)

#: Standard-library modules whose docstrings make the default haystack.
HAYSTACK_MODULES = ("argparse", "collections", "difflib", "email.message", "fractions", "heapq", "json",
                    "logging", "pathlib", "shutil", "statistics", "string", "subprocess", "textwrap", "threading",
                    "unittest", "urllib.parse", "zipfile", "calendar", "csv", "decimal", "functools", "itertools")
_THINGS = ("harbour", "lantern", "orchard", "violin", "glacier", "compass", "meadow", "falcon", "quarry", "saddle",
           "beacon", "thimble")
_WORDS = ("amber", "cobalt", "maple", "granite", "saffron", "willow", "copper", "juniper", "indigo", "basalt")
QUESTION = ("What is the special magic {thing} code mentioned in the text above? Answer by repeating the sentence "
            "of the text that gives it.")


@dataclasses.dataclass(frozen=True)
class NeedleDocument:
    """One calibration item: a haystack with a needle sentence, and the question that asks for it.

    Attributes
    ----------
    content : str
        The user turn: document, blank line, question.
    needle_start, needle_stop : int
        Character offsets of the needle sentence in ``content``.
    depth : float
        Where the needle sits, as a fraction of the haystack.
    """

    content: str
    needle_start: int
    needle_stop: int
    depth: float

    @property
    def needle(self) -> str:
        return self.content[self.needle_start:self.needle_stop]


def default_haystack() -> str:
    """Prose paragraphs from the docstrings of :data:`HAYSTACK_MODULES` and their public members (no doctest or
    indented code lines), joined by blank lines."""
    paragraphs: list[str] = []
    for name in HAYSTACK_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and getattr(obj, "__module__", None) == module.__name__:
                docs.append(inspect.getdoc(obj))
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc or ""):
                lines = para.splitlines()
                if not lines or any(ln.startswith((" ", ">>>", "...")) or ln.strip().startswith(":") for ln in lines):
                    continue
                text = " ".join(ln.strip() for ln in lines)
                if len(text) >= 80 and text[-1] in ".!?" and text.count("(") <= 2:
                    paragraphs.append(text)
    if not paragraphs:
        raise ValueError("no docstring prose found for the default haystack")
    return "\n\n".join(dict.fromkeys(paragraphs))


def needle_documents(haystack: str, n_docs: int, n_chars: int, seed: int = 0) -> list[NeedleDocument]:
    """``n_docs`` documents of about ``n_chars`` characters cut from ``haystack`` at different offsets, each with a
    needle sentence ("The special magic <thing> code is <word>-<number>.") at a sentence boundary; the depths
    spread evenly over (0.05, 0.95) so that every part of a long context is calibrated.

    Raises
    ------
    ValueError
        Bad counts, or a haystack shorter than ``n_chars``.
    """
    if n_docs < 1 or n_chars < 200:
        raise ValueError(f"need at least 1 document of at least 200 characters, got {n_docs} x {n_chars}")
    if len(haystack) < n_chars:
        raise ValueError(f"the haystack has {len(haystack)} characters, fewer than the {n_chars} of a document")
    rng = np.random.default_rng(seed)
    depths = np.linspace(0.05, 0.95, n_docs) if n_docs > 1 else np.array([0.5])
    out = []
    for i, depth in enumerate(rng.permutation(depths)):
        start = int(rng.integers(0, len(haystack) - n_chars + 1))
        cut = haystack[start:start + n_chars]
        cut = cut[cut.find(" ") + 1:] if start else cut            # whole words at both ends
        cut = cut[:cut.rfind(" ")] if start + n_chars < len(haystack) else cut
        at = cut.find(". ", int(depth * len(cut)))
        at = len(cut) + 1 if at < 0 else at + 2
        cut += " "
        thing = _THINGS[i % len(_THINGS)]
        needle = f"The special magic {thing} code is {_WORDS[int(rng.integers(len(_WORDS)))]}-{rng.integers(1000, 10000)}."
        doc = f"{cut[:at]}{needle} {cut[at:].lstrip()}".rstrip()
        content = f"{doc}\n\n{QUESTION.format(thing=thing)}"
        out.append(NeedleDocument(content, at, at + len(needle), float(depth)))
    return out


@dataclasses.dataclass(frozen=True)
class DocumentScore:
    """What one document contributed: decode steps scored and where the needle was."""

    steps: int
    prompt_tokens: int
    needle_span: tuple[int, int]
    depth: float


def score_document(cap, doc: NeedleDocument, acc: HitRatioAccumulator) -> DocumentScore:
    """Force ``doc``'s needle tokens as the answer after its chat prompt and add every step to ``acc``: the step
    emitting needle token j targets the needle's position a + j (a span of one cell).

    Parameters
    ----------
    cap : TextTeacherForcedAttention
    doc : NeedleDocument
    acc : HitRatioAccumulator
        Shape [n_layer, n_head]; top-1 for the paper's retrieval score.
    """
    from audiokv_edge.profiling.attention_capture import CaptureError

    tokens, (a, b) = cap.chat_prompt(doc.content, (doc.needle_start, doc.needle_stop))
    if b - a < 2:
        raise CaptureError(f"the needle {doc.needle!r} was not found as tokens of the prompt")
    rows = cap.capture_answer(tokens, tokens[a:b])
    for j in range(rows.shape[0]):
        acc.add(rows[j], (a + j, a + j + 1))
    return DocumentScore(rows.shape[0], len(tokens), (a, b), doc.depth)
