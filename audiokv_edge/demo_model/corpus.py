"""Speakable English sentences from offline text (Debian fortunes, the Python docs, man pages, wamerican).

A sentence is kept when every word is a plain alphabetic dictionary word (so a synthesizer reads it as written:
no digits, symbols or code) and it has 4-30 words. Each sentence belongs to the training or the held-out split by
a stable hash of its normalised text, so the evaluation passages never share a sentence with the training data.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import logging
import pathlib
import re
from collections.abc import Iterator

logger = logging.getLogger(__name__)

DICTIONARY = pathlib.Path("/usr/share/dict/american-english")
FORTUNES = pathlib.Path("/usr/share/games/fortunes")
PYTHON_DOCS_GLOB = "/usr/share/doc/python3*/html"
MAN_PAGES = pathlib.Path("/usr/share/man/man1")
HELD_OUT_PERCENT = 5
MIN_WORDS, MAX_WORDS = 4, 30

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z]+(?:'[a-z]+)?[,;:.!?]?$")
_TAG = re.compile(r"<[^>]+>")
_ROFF = re.compile(r"\\f[BIRP]|\\\(..|\\-|\\&|\\e")


def normalise(text: str) -> str:
    """Lower case, letters, digits and apostrophes kept, everything else a space, single spaces: the form WER is
    measured on."""
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def split_of(sentence: str) -> str:
    """``"train"`` or ``"heldout"``, fixed by a hash of the normalised sentence."""
    digest = hashlib.sha256(normalise(sentence).encode()).digest()
    return "heldout" if digest[0] * 100 // 256 < HELD_OUT_PERCENT else "train"


def load_dictionary(path: pathlib.Path = DICTIONARY) -> set[str]:
    """Lower-case words of the wamerican word list (without possessive forms)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the Debian package wamerican")
    return {w.strip().lower() for w in path.read_text(errors="replace").splitlines() if w.strip().isalpha()}


def speakable(sentence: str, words: set[str]) -> bool:
    """True when the sentence has MIN_WORDS..MAX_WORDS tokens, each a dictionary word (not an acronym) with
    optional trailing punctuation, and starts with a capital letter."""
    tokens = sentence.split()
    if not MIN_WORDS <= len(tokens) <= MAX_WORDS or not tokens[0][:1].isupper():
        return False
    for tok in tokens:
        if not _WORD.match(tok) or sum(c.isupper() for c in tok) > 1:  # acronyms are spelled out by synthesizers
            return False
        core = re.sub(r"[,;:.!?]$", "", tok).lower()
        if core not in words and core.split("'")[0] not in words:
            return False
    return True


def _sentences(text: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for s in _SENTENCE_END.split(flat):
            s = s.strip().strip('"').strip()
            if s.endswith((".", "!", "?")):
                yield s


def _read(path: pathlib.Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def _fortune_texts() -> Iterator[str]:
    if FORTUNES.is_dir():
        for p in sorted(FORTUNES.iterdir()):
            if p.is_file() and not p.suffix:
                yield _read(p).replace("\n%\n", "\n\n")


def _python_doc_texts() -> Iterator[str]:
    import glob

    for docs in sorted(glob.glob(PYTHON_DOCS_GLOB))[-1:]:
        for p in sorted(pathlib.Path(docs).rglob("*.html")):
            text = _read(p)
            text = re.sub(r"(?s)<(script|style|pre)[^>]*>.*?</\1>", " ", text)
            text = re.sub(r"</p>|<br\s*/?>", "\n\n", text)
            yield html.unescape(_TAG.sub(" ", text))


def _man_texts() -> Iterator[str]:
    if MAN_PAGES.is_dir():
        for p in sorted(MAN_PAGES.iterdir()):
            if p.suffix == ".gz":
                lines = [ln for ln in _read(p).splitlines() if not ln.startswith((".", "'"))]
                yield _ROFF.sub("", "\n".join(lines))


SOURCES = {"fortunes": _fortune_texts, "python-docs": _python_doc_texts, "man-pages": _man_texts}


def collect(words: set[str] | None = None) -> dict[str, list[str]]:
    """Unique speakable sentences of every source, in a stable order, split by :func:`split_of`.

    Returns
    -------
    dict
        ``{"train": [...], "heldout": [...]}``.
    """
    words = load_dictionary() if words is None else words
    seen: set[str] = set()
    out: dict[str, list[str]] = {"train": [], "heldout": []}
    for name, source in SOURCES.items():
        n0 = len(seen)
        for text in source():
            for s in _sentences(text):
                key = normalise(s)
                if key not in seen and speakable(s, words):
                    seen.add(key)
                    out[split_of(s)].append(s)
        logger.info("%s: %d sentences", name, len(seen) - n0)
    return out
