"""Text input: a document (a string, or a UTF-8 file) placed in the chat turn before the question or after it, its
token span in the tokenized prompt, and the blocks a streaming prefill evicts after.

The document and the question form one user turn, separated by a blank line: document first (the default: the
eviction sees the question, as a chat app asks about a pasted text) or question first (``question_first``: the
eviction cannot know the question, kvpress's query-agnostic setting). The rendered prompt is tokenized as a whole,
control-token text parsed, as llama.cpp's server tokenizes a chat prompt (:meth:`Session.answer_text
<audiokv_edge.runtime.session.Session.answer_text>`).

Every problem with the document is raised as :class:`DocumentError` with a one-line message naming the file and
the problem.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Callable

from audiokv_edge.runtime.llama import render_user_turn

__all__ = ["DEFAULT_TEXT_BLOCK", "DocumentError", "DocumentPrompt", "load_document", "render_document_prompt",
           "document_token_span", "stream_boundaries"]

#: Document tokens decoded between two evictions of a streaming prefill (``SessionConfig.text_block``): about what
#: one 30 s audio chunk brings (375 to 750 audio tokens), and llama.cpp's default batch.
DEFAULT_TEXT_BLOCK = 512
#: Between the document and the question in the user turn.
SEPARATOR = "\n\n"
#: Stands for the document while the chat template renders (private-use characters: no template changes them).
_PLACEHOLDER = "\ue000audiokv-document\ue000"


class DocumentError(ValueError):
    """The text document cannot be used; the message is one line naming the file (if any) and the problem."""


def load_document(source: str | os.PathLike) -> str:
    """The text of a document, surrounding whitespace removed.

    Parameters
    ----------
    source : str or os.PathLike
        The text itself (``str``), or a UTF-8 text file (``pathlib.Path`` or any other path-like object).

    Raises
    ------
    DocumentError
        The file is missing, unreadable or not UTF-8 text, or the document is empty (whitespace only).
    """
    if isinstance(source, str):
        text, where = source, "the text document"
    elif isinstance(source, os.PathLike):
        path = pathlib.Path(source)
        where = f"text document {path}"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DocumentError(f"text document not found: {path}") from None
        except IsADirectoryError:
            raise DocumentError(f"text document {path} is a directory, not a file") from None
        except OSError as exc:
            raise DocumentError(f"cannot read text document {path}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"{where} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") \
                from None
        if "\x00" in text:
            raise DocumentError(f"{where} holds NUL bytes: not a text file")
    else:
        raise TypeError(f"a text document is a str (the text) or a path, not {type(source).__name__}")
    text = text.strip()
    if not text:
        raise DocumentError(f"{where} is empty")
    return text


@dataclass(frozen=True)
class DocumentPrompt:
    """A chat-formatted prompt holding a document.

    Attributes
    ----------
    text : str
        The rendered prompt, up to the assistant's reply.
    content : str
        The user turn's content (document and question), as the chat template received it.
    doc_start, doc_stop : int
        Where the document is in ``text`` (character offsets, ``text[doc_start:doc_stop]`` is the document).
    """

    text: str
    content: str
    doc_start: int
    doc_stop: int


def render_document_prompt(formatter, document: str, question: str, *, question_first: bool = False) -> DocumentPrompt:
    """The user turn holding ``document`` and ``question`` (blank line between), chat-formatted.

    Parameters
    ----------
    formatter : llama_cpp Jinja2ChatFormatter or None
        The model's chat template (``LlamaModel.chat_formatter()``); None: plain text.
    document, question : str
    question_first : bool
        The question before the document (query-agnostic eviction) instead of after it.

    Raises
    ------
    DocumentError
        The chat template drops or repeats the user's content (the document could not be located).
    """
    question = question.strip()
    if question_first:
        content = f"{question}{SEPARATOR}{_PLACEHOLDER}" if question else _PLACEHOLDER
    else:
        content = f"{_PLACEHOLDER}{SEPARATOR}{question}" if question else _PLACEHOLDER
    rendered = render_user_turn(formatter, content)
    if rendered.count(_PLACEHOLDER) != 1:
        raise DocumentError("the model's chat template does not place the user's content exactly once")
    before, after = rendered.split(_PLACEHOLDER)
    return DocumentPrompt(text=before + document + after, content=content.replace(_PLACEHOLDER, document),
                          doc_start=len(before), doc_stop=len(before) + len(document))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def document_token_span(tokenize: Callable[[str], list[int]], prompt: DocumentPrompt,
                        tokens: list[int]) -> tuple[int, int]:
    """Token positions ``[start, stop)`` of the document in ``tokens`` (= ``tokenize(prompt.text)``).

    A token merging the document's first or last characters with the text around them counts outside the document;
    the span only places the streaming blocks.

    Parameters
    ----------
    tokenize : callable
        ``tokenize(text) -> token ids``, the tokenization that produced ``tokens``.
    prompt : DocumentPrompt
    tokens : list of int
    """
    start = _common_prefix(tokenize(prompt.text[:prompt.doc_start]), tokens)
    stop = _common_prefix(tokenize(prompt.text[:prompt.doc_stop]), tokens)
    return start, max(start, stop)


def stream_boundaries(n_tokens: int, span: tuple[int, int], block: int) -> list[int]:
    """Where a streaming prefill evicts: after every ``block`` tokens of the document.

    The first block also holds the text before the document, the last one the rest of the document and the text
    after it (the question, when it follows): the prompt is cut only inside the document, and the last eviction
    (after the whole prompt) is not among the boundaries.

    Parameters
    ----------
    n_tokens : int
        Tokens of the prompt.
    span : (int, int)
        The document's tokens (:func:`document_token_span`).
    block : int
        Document tokens per block (>= 1).

    Returns
    -------
    list of int
        Increasing token counts ``b`` in (0, n_tokens): an eviction follows the prefill of tokens ``[0, b)``.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    start, stop = span
    return [b for b in range(start + block, stop, block) if 0 < b < n_tokens]
