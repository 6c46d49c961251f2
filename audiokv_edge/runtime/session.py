"""Answer prompts about audio (llama.cpp text model + libmtmd audio projector) or about a text document: the Python
API for apps.

A :class:`Session` loads the model and its projector once and answers many audio prompts::

    from audiokv_edge.runtime.session import Session, SessionConfig

    with Session("model.gguf", config=SessionConfig(method="full", max_tokens=64)) as s:
        for piece in s.stream("talk.wav", "Transcribe the audio."):
            print(piece, end="", flush=True)
        print(s.last_answer.stats.audio_tokens)

Pipeline: audio file -> mono float32 at the projector's rate (:mod:`audiokv_edge.runtime.audio`) -> the model's own chat
template (from its GGUF, rendered with llama-cpp-python's Jinja support) with mtmd's media marker where the user
content starts -> ``mtmd_tokenize`` (text chunks + one chunk per 30 s audio window) -> each chunk encoded and
decoded into the KV cache -> greedy decoding. With a Whisper-family projector (qwen2a, ultravox, voxtral ...) the
audio is read block by block and tokenized one 30 s mel window at a time, when the prefill reaches it, with the same
chunks as the whole recording (:mod:`audiokv_edge.runtime.prompt_chunks`): memory does not grow with its length.

Text (:meth:`Session.answer_text`, no projector needed): the document and the question in one user turn
(:mod:`audiokv_edge.runtime.text_document`: document first, or the question first) -> the chat template -> one
tokenization -> decoded in blocks of ``text_block`` tokens -> the same eviction and decoding. :meth:`Session.follow_up`
asks the next question of a conversation against the cache the last answer left (evicted, not re-read).

KV-cache eviction: ``method="full"`` keeps everything. Any other method, with a libllama carrying the per-head
eviction API (the patched llama.cpp, docs/per-head-eviction.md), evicts in COMPACT mode once after the prompt, or with
``stream=True`` also after every audio chunk or ``text_block`` tokens of a document (the main cache then only ever
holds one chunk with its text, the kept entries live in per-head pools of keep x the positions seen + one chunk + the
answer). llama.cpp hands the captured window queries and the keys (f16 or q8_0) to libaudiokv's C callback
(``audiokv_llama_evict_callback``, Python only registers it), which plans with the method (the head profile stored
in the model's GGUF drives AudioKV's budgets), and llama.cpp frees the dropped entries:
:class:`~audiokv_edge.runtime.kv_eviction.KVEvictor`, called from :meth:`Session._evict`. ``kv_budget`` caps what an
eviction keeps at that many entries per (layer, KV head) on average, whatever the length of the audio or the document.

Interruption: :meth:`Session.interrupt` (or the ``stop`` flag given to the Session, which the runner's signal
handlers set; Ctrl-C too while C code runs) stops loading or an answer (audio, text document or follow-up) within a
graph node, a prompt chunk or a token: the Session raises :class:`~audiokv_edge.runtime.interrupt.Interrupted` and
answers the next prompt as usual (:mod:`audiokv_edge.runtime.interrupt`).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import ctypes
import logging
import os
import pathlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from audiokv_edge.native.libs import HandleOwner
from audiokv_edge.profile.gguf_header import GGUF_MAGIC
from audiokv_edge.runtime import encoded_audio
from audiokv_edge.runtime.audio import AudioClip, AudioError, clip_from_array, load_audio
from audiokv_edge.runtime.audio_stream import AudioFile, clip_blocks
from audiokv_edge.runtime.interrupt import Interrupted, StopFlag
from audiokv_edge.runtime.kv_eviction import (
    DEFAULT_KEEP,
    EVICT_WINDOW,
    KEEP_BUILTIN,
    KEEP_FULL,
    EvictionError,
    EvictionUnsupportedError,
    KVEvictor,
    check_kv_budget,
    check_method_and_keep,
    choose_keep,
)
from audiokv_edge.runtime.kv_layers import kv_layers
from audiokv_edge.runtime.llama import ContextParams, LlamaError, LlamaModel, render_follow_up, render_prompt
from audiokv_edge.runtime.stats import KV_TYPE_BYTES, AnswerStats, KVGeometry, ggml_type, peak_rss_bytes
from audiokv_edge.runtime.text_document import (
    DEFAULT_TEXT_BLOCK,
    DocumentError,
    DocumentPrompt,
    document_token_span,
    load_document,
    render_document_prompt,
    stream_boundaries,
)

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("audiokv_edge.native")

DEFAULT_PROMPT = "Transcribe the audio."
#: The question of :meth:`Session.answer_text` when none is given.
DEFAULT_TEXT_PROMPT = "Summarise the text."
#: Text tokens around one audio chunk that a streaming eviction's headroom reserves beside the chunk and the answer.
STREAM_TEXT_MARGIN = 64
KV_TYPES = ("f16", "q8_0")
#: Where AudioKV's Spectral Score Smoothing runs (``SessionConfig.sss_scope``): over every token, or within the audio
#: tokens only (each audio chunk's positions its own run, text tokens keep their raw scores; docs/semantics.md).
SSS_SCOPES = ("all", "audio")
#: llama.cpp's DRY penalty settings beside ``SessionConfig.dry_multiplier`` (llama-cli's defaults for the base; a
#: repeat of up to 4 tokens is free, so that a transcript's own short repeats are not penalised).
DRY_BASE = 1.75
DRY_ALLOWED_LENGTH = 4



class SessionError(RuntimeError):
    """A model, projector or context problem; the message is one line naming the file or the limit."""


class ContextTooSmallError(SessionError):
    """The prompt (mostly audio tokens) does not fit in the context."""


@dataclass(frozen=True)
class SessionConfig:
    """Options of a :class:`Session` (the runner's command-line options).

    Parameters
    ----------
    method : str
        Keep-plan method, a key of ``audiokv_edge.methods.METHODS`` (default ``"audiokv"``).
    keep : float or None
        Fraction of the prompt's KV entries kept, in (0, 1] (ignored by ``full``). None (default): the model's
        stored ``audiokv.defaults.keep`` (docs/gguf-keys.md) when the method is ``audiokv`` and the GGUF has one,
        else :data:`DEFAULT_KEEP`.
    kv_budget : int or None
        Most KV-cache entries per (layer, KV head), on average, that an eviction keeps (>= 1): an eviction of a
        cache that has seen P positions plans at keep ratio min(keep, kv_budget / P), which the method distributes
        as it does any keep ratio (AudioKV by its head profile). With ``stream`` every audio chunk / document block
        re-plans, so the kept cache never grows past it. None (default): the keep ratio alone. Needs an evicting
        method (not ``full``).
    stream : bool
        Evict after every audio chunk / every ``text_block`` tokens of a text document (bounded memory), not only
        once after the prompt.
    max_tokens : int
        Most tokens generated per answer (>= 1).
    threads : int
        CPU threads (0: min(4, CPU count)).
    ctx : int
        Context size in tokens (prompt + answer).
    batch : int
        Logical / physical batch size for prompt decoding.
    kv_type : str
        KV-cache type, ``"f16"`` or ``"q8_0"`` (quantized V needs flash attention, which is then switched on).
    flash_attn : bool
        Use flash attention.
    sss_scope : str
        Method ``audiokv`` only: ``"all"`` (default, the paper's SSS over every scored token) or ``"audio"`` (SSS
        within the positions where libmtmd put the audio chunks, each run of audio tokens smoothed on its own; text
        tokens keep their raw window scores, so that a short text needle is not blurred; docs/semantics.md, "SSS
        restricted to the audio tokens"). A text document has no audio token: with ``"audio"`` its scores are not
        smoothed at all (the raw window scores, as audiokv with ``sss_alpha = 0``).
    text_block : int
        With ``stream``: document tokens decoded between two evictions of a text prompt (>= 1, default 512).
    dry_multiplier : float
        llama.cpp's DRY ("don't repeat yourself") penalty before the greedy pick, as llama-cli's
        ``--dry-multiplier``: a token that would extend a sequence already generated longer than
        ``DRY_ALLOWED_LENGTH`` tokens loses ``dry_multiplier * 1.75 ** (length - DRY_ALLOWED_LENGTH)`` logits.
        0 (default): plain greedy decoding, llama.cpp's own output. It stops a small model from looping over a
        long transcript; it changes nothing else about eviction.
    mmap : bool
        Keep the text model's weights a memory mapping of its file (llama.cpp's default) instead of reading them
        into memory (default False). A mapping loads faster and shares the page cache, but the process then dies of
        SIGBUS when the file is truncated or overwritten in place while the session uses it; read into memory, the
        session keeps answering with the weights it loaded, whatever happens to the file. Resident memory is the
        same either way (every weight is read for every token).
    audio_cache_mb : int
        Most megabytes of the last recording's encoded audio (the projector's output embeddings) kept, so that
        another question about the same recording skips the audio encoder (answers are identical; default 64: 39
        minutes of audio for the built-in model's 576-wide embeddings at 12.5 tokens/s, 3 minutes for a 7B model's
        3,584-wide ones at 25 tokens/s; 0: none). :mod:`audiokv_edge.runtime.encoded_audio`.
    """

    method: str = "audiokv"
    keep: float | None = None
    kv_budget: int | None = None
    stream: bool = False
    max_tokens: int = 128
    threads: int = 0
    ctx: int = 8192
    batch: int = 512
    kv_type: str = "f16"
    flash_attn: bool = False
    sss_scope: str = "all"
    text_block: int = DEFAULT_TEXT_BLOCK
    dry_multiplier: float = 0.0
    mmap: bool = False
    audio_cache_mb: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.dry_multiplier, bool) or not isinstance(self.dry_multiplier, (int, float)) \
                or not 0.0 <= self.dry_multiplier <= 100.0:
            raise ValueError(f"dry_multiplier must be a number in [0, 100], got {self.dry_multiplier!r}")
        check_method_and_keep(self.method, self.keep)
        object.__setattr__(self, "kv_budget", check_kv_budget(self.kv_budget, self.method))
        for name, low in (("max_tokens", 1), ("threads", 0), ("ctx", 16), ("batch", 1), ("text_block", 1),
                          ("audio_cache_mb", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        if self.sss_scope not in SSS_SCOPES:
            raise ValueError(f"sss_scope must be one of {', '.join(SSS_SCOPES)}, got {self.sss_scope!r}")
        if self.sss_scope != "all" and self.method != "audiokv":
            raise ValueError(f"sss_scope {self.sss_scope!r} applies to method audiokv (its spectral smoothing) only, "
                             f"not to {self.method}")

    @property
    def n_threads(self) -> int:
        return self.threads or min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Answer:
    """Generated text and the statistics of producing it.

    Attributes
    ----------
    text : str
    stats : AnswerStats
    tokens : tuple of int
        The generated token ids (the end-of-generation token not included).
    """

    text: str
    stats: AnswerStats
    tokens: tuple = ()

    def to_dict(self) -> dict:
        """``{"text": ..., **stats}``: the runner's ``--json`` object."""
        return {"text": self.text, **self.stats.to_dict()}


@dataclass
class _PromptInfo:
    """A tokenized prompt as the prefill decodes it: chunks (audio: libmtmd's; text: the document's blocks)."""

    unit: str = "chunk"  # what one chunk is, for messages: "audio chunk", "document block"
    what: str = ""  # the prompt's content, for messages
    chunks: int = 0
    audio_tokens: int = 0
    document_tokens: int = 0
    prompt_tokens: int = 0
    n_pos: int = 0
    audio_seconds: float = 0.0
    audio_chunk_ids: list = field(default_factory=list)
    chunk_tokens: list = field(default_factory=list)  # tokens (= main-cache cells) of each chunk
    chunk_pos: list = field(default_factory=list)  # positions of each chunk
    evict_after: list = field(default_factory=list)  # the chunks a streaming prefill evicts after


@dataclass(frozen=True)
class _Prefilled:
    """The cache after a prefill: positions seen, main-cache cells held, eviction time and (layer, head, token)
    entries kept / without eviction."""

    n_past: int
    cells: int
    evict_ms: float
    kept_entries: int
    full_entries: int


@dataclass(frozen=True)
class _Conversation:
    """What a follow-up continues: the chat so far (its messages and the last reply) and the cache holding it."""

    messages: list
    reply: str
    n_past: int
    cells: int
    pending_token: int | None  # the reply's last token when it was sampled but not decoded (max_tokens reached)
    finish: str


def check_gguf(path: str | pathlib.Path, what: str) -> pathlib.Path:
    """Raise :class:`SessionError` unless ``path`` is an existing GGUF file.

    Parameters
    ----------
    path : str or pathlib.Path
    what : str
        ``"model"`` or ``"audio projector"``, used in the message.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise SessionError(f"{what} file not found: {p}")
    if not p.is_file():
        raise SessionError(f"{what} path is not a file: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise SessionError(f"{what} {p} is not a GGUF file")
    return p


def _projector_path(model_path: pathlib.Path, mmproj, audio: bool | None) -> pathlib.Path | None:
    """The projector a :class:`Session` loads (None: a text-only session); see its ``audio`` parameter."""
    if audio is False:
        if mmproj is not None:
            raise SessionError(f"an audio projector ({mmproj}) was given to a session without audio (audio=False)")
        return None
    if audio is None and mmproj is None and not any(pathlib.Path(model_path).parent.glob("mmproj*.gguf")):
        return None
    return find_mmproj(model_path, mmproj)


def find_mmproj(model_path: str | pathlib.Path, mmproj: str | pathlib.Path | None = None) -> pathlib.Path:
    """The audio projector of a model: ``mmproj`` if given, else the one ``mmproj*.gguf`` beside the model.

    Raises
    ------
    SessionError
        Missing, ambiguous, not a GGUF, or without an audio encoder.
    """
    if mmproj is not None:
        found = check_gguf(mmproj, "audio projector")
    else:
        model_path = pathlib.Path(model_path)
        beside = sorted(model_path.parent.glob("mmproj*.gguf"))
        if not beside:
            raise SessionError(
                f"no audio projector for {model_path}: pass --mmproj FILE or put an mmproj*.gguf beside the model"
            )
        if len(beside) > 1:
            names = ", ".join(b.name for b in beside)
            raise SessionError(f"several projectors beside {model_path} ({names}): choose one with --mmproj")
        found = check_gguf(beside[0], "audio projector")
    meta = _gguf_scalars(found, ("clip.has_audio_encoder", "clip.projector_type", "clip.audio.projector_type",
                                 "clip.audio.projector.stack_factor"))
    if not meta.get("clip.has_audio_encoder"):
        raise SessionError(f"{found} has no audio encoder (clip.has_audio_encoder is not set)")
    projector = meta.get("clip.projector_type") or meta.get("clip.audio.projector_type") or ""
    problem = (UNENCODABLE_PROJECTORS.get(projector, "")
               or stacked_projector_problem(projector, int(meta.get("clip.audio.projector.stack_factor") or 0)))
    if problem:
        raise SessionError(f"{found}: {problem}")
    return found


#: Audio projector types this llama.cpp's libmtmd names but cannot encode, with the reason (clip.cpp has no audio
#: graph for them; mtmd_init_from_file fails with "unexpected audio projector type").
UNENCODABLE_PROJECTORS = {
    "gemma3na": "gemma3na (Gemma 3n's audio encoder) has no audio graph in this llama.cpp's libmtmd; not supported",
}


def stacked_projector_problem(projector: str, stack_factor: int) -> str:
    """Why libmtmd (this llama.cpp) would abort on a frame-stacking Whisper projector, or "".

    clip.cpp announces ``align(3000, s) / s / 2`` tokens per 30 s chunk (``/ 2`` again for voxtral's average pool)
    but its graph stacks the 1500 (voxtral: 750) encoder frames padded up to a multiple of ``s``; when ``s`` does not
    divide them the counts differ by one and ``clip_image_batch_encode`` calls GGML_ABORT ("Invalid number of output
    tokens"), e.g. Ultravox v0.5 (s = 8: 187 announced, 188 produced) and Voxtral (s = 4).
    """
    if projector not in ("ultravox", "voxtral", "meralion") or stack_factor <= 0:
        return ""
    pool = 2 if projector == "voxtral" else 1
    frames = 1500 // pool
    produced = -(-frames // stack_factor)
    announced = (-(-3000 // stack_factor) * stack_factor) // stack_factor // 2 // pool
    if produced == announced:
        return ""
    return (f"{projector} projector with stack factor {stack_factor} makes libmtmd abort in this llama.cpp build "
            f"(it announces {announced} tokens per 30 s chunk but produces {produced}); not supported")


def _gguf_scalars(path: pathlib.Path, keys: tuple[str, ...]) -> dict:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise SessionError(f"cannot read GGUF metadata of {path}: {' '.join(str(exc).split())}") from None
    out = {}
    for key in keys:
        f = reader.fields.get(key)
        if f is None or not f.data:
            continue
        part = f.parts[f.data[0]]
        out[key] = bytes(part).decode("utf-8", "replace") if f.types[0] == gguf.GGUFValueType.STRING else part[0]
    return out


_LOG_CALLBACK = None
_GGML_LOG_LEVEL_ERROR = 4  # ggml.h enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
# The recent native error lines of each thread: llama.cpp and libmtmd log from the thread that made the call, so a
# Session answering in one thread never reads the errors of a Session working in another one (lines logged from
# the library's own worker threads are kept in theirs, and reach no Session).
_NATIVE_ERRORS = threading.local()


def _thread_native_errors() -> collections.deque:
    """This thread's recent native error lines (the last 8)."""
    lines = getattr(_NATIVE_ERRORS, "lines", None)
    if lines is None:
        lines = _NATIVE_ERRORS.lines = collections.deque(maxlen=8)
    return lines


def route_native_logs(llama_cpp, mtmd_cpp=None) -> None:
    """Send llama.cpp / libmtmd (when loaded) log lines to the ``audiokv_edge.native`` logger (DEBUG); remember
    errors, per thread."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:

        def _log(level, text, user_data):
            line = (text or b"").decode("utf-8", "replace").rstrip()
            if level == _GGML_LOG_LEVEL_ERROR and line:
                _thread_native_errors().append(line)
            if line:
                native_logger.debug("%s", line)

        _LOG_CALLBACK = llama_cpp.llama_log_callback(_log)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    if mtmd_cpp is None:
        return
    mtmd_cpp.mtmd_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _native_error(default: str) -> str:
    """The most telling recent native error line of this thread (without llama.cpp's ``function: `` prefixes), else
    ``default``."""
    import re

    for line in reversed(_thread_native_errors()):
        text = line
        while re.match(r"^[A-Za-z_][\w:~]*: ", text):
            text = text.split(": ", 1)[1]
        if text.startswith("error: "):
            text = text[len("error: "):]
        if text and "failed to load" not in text:
            return " ".join(text.split())
    return default


@contextlib.contextmanager
def _llama_errors(default: str | None = "see -v log", *, cancelled: Callable[[], None] | None = None) -> Iterator[None]:
    """Re-raise a :class:`LlamaError` of the block as a :class:`SessionError`: its message, then (unless ``default``
    is None) ``: `` and this thread's most telling native error line, else ``default``. ``cancelled``, called first,
    raises instead when the failure was a requested stop (a cancelled load)."""
    try:
        yield
    except LlamaError as exc:
        if cancelled is not None:
            cancelled()
        raise SessionError(str(exc) if default is None else f"{exc}: {_native_error(default)}") from None


class Session(HandleOwner):
    """A loaded text model (+ audio projector) answering audio prompts and text documents; a context manager freeing
    every handle.

    Parameters
    ----------
    model : str or pathlib.Path
        Text model GGUF.
    mmproj : str or pathlib.Path, optional
        Audio projector GGUF; default: the one ``mmproj*.gguf`` beside ``model``, if any.
    config : SessionConfig
        Options.
    lora : str or pathlib.Path, optional
        LoRA adapter GGUF that llama.cpp applies to the text model (as ``--lora``), e.g. the demo model's.
    audio : bool or None
        Whether the session answers audio: None (default) when a projector is given or lies beside the model, True
        requires one (an error here when there is none), False loads none (a text-only session; ``mmproj`` must
        then be None). A session without a projector answers text documents (:meth:`answer_text`) and refuses audio.
    stop : StopFlag, optional
        The flag :meth:`interrupt` sets; pass one to set it before the Session exists (a signal handler during
        loading). Default: a new one.

    Raises
    ------
    SessionError
        A file is missing, not a GGUF, not loadable, the projector has no audio encoder or does not fit the model.
    Interrupted
        :meth:`interrupt` (``stop``) while loading.
    """

    def __init__(self, model: str | pathlib.Path, mmproj: str | pathlib.Path | None = None,
                 config: SessionConfig | None = None, lora: str | pathlib.Path | None = None, *,
                 audio: bool | None = None, stop: StopFlag | None = None) -> None:
        self.config = config or SessionConfig()
        self.stop = stop if stop is not None else StopFlag()
        self._llm = self._model = self._ctx = self._mctx = self._sampler = self._evictor = None
        self._mtmd = None
        self._encoded_audio = encoded_audio.EncodedAudioCache(self.config.audio_cache_mb * 2**20)
        self._conversation: _Conversation | None = None
        self.last_answer: Answer | None = None
        #: One dict per eviction of the last answer: n_past (positions seen), ms, entries_before / _after,
        #: bytes_used_before / _after (K+V bytes the sequence occupies in the evictable layers: per-head pools incl.
        #: headroom + main-cache cells), bytes_kept_after, bytes_headroom_after (llama_kv_evict_stats), keep (the
        #: ratio planned at: the keep ratio, or lower under a kv_budget).
        self.last_evictions: list[dict] = []
        #: The model's stored per-model AudioKV defaults (``ProfileDefaults``) when they apply (method audiokv and
        #: the GGUF has ``audiokv.defaults.*`` keys), else None.
        self.profile_defaults = None
        #: Effective keep ratio (the config's, the model's stored default, or DEFAULT_KEEP) and where it came from
        #: (kv_eviction.KEEP_FROM_CONFIG, KEEP_FROM_PROFILE, KEEP_BUILTIN).
        self.keep: float = DEFAULT_KEEP
        self.keep_source: str = KEEP_BUILTIN
        self._keep_choice = None
        #: The evictor's settings once per-head eviction is on: method, keep, window (libaudiokv's observation
        #: window), n_window (queries llama.cpp captures), sss_alpha, sss_gamma, sss_scope.
        self.evict_settings: dict | None = None
        #: The llama_context settings the session made its context with (``ContextParams``); with eviction on,
        #: ``offload_kqv`` is False: the KV cache and attention stay in host memory, where the eviction rewrites it
        #: (on a GPU build the layers are still offloaded).
        self.context_params: ContextParams | None = None
        #: Positions [start, end) of the audio chunks of the last prompt, as libmtmd placed them in the sequence
        #: (with ``sss_scope="audio"`` the evictions restrict SSS to them; none for a text document).
        self.last_audio_spans: list[tuple[int, int]] = []
        #: Token positions [start, end) of the last text document in its prompt (None after an audio prompt).
        self.last_document_span: tuple[int, int] | None = None
        #: Projector's audio sample rate (Hz); None in a text-only session.
        self.sample_rate: int | None = None
        self.marker: str | None = None
        #: Whether the projector's audio is tokenized one 30 s mel window at a time (memory independent of its length).
        self._windowed_audio = False
        self.model_path = check_gguf(model, "model")
        self.mmproj_path = _projector_path(self.model_path, mmproj, audio)
        self.lora_path = None if lora is None else check_gguf(lora, "LoRA adapter")

        from audiokv_edge.native import libs as native_libs

        self._llama = native_libs.load_llama_cpp()
        self._lc = self._llama.llama_cpp
        if self.mmproj_path is not None:
            self._mtmd = native_libs.load_mtmd_cpp()
        route_native_logs(self._lc, self._mtmd)
        try:
            with self.stop.sigint_requests_stop():
                self._load()
            self.stop.raise_if_requested("loading")
        except BaseException:
            self.close()
            raise

    def interrupt(self) -> None:
        """Stop the load or the answer in progress, from another thread or a signal handler: it raises
        :class:`~audiokv_edge.runtime.interrupt.Interrupted` within a graph node, a prompt chunk or a token (the next
        answer, when none runs). The session stays usable."""
        self.stop.request()

    @property
    def supports_audio(self) -> bool:
        """Whether an audio projector is loaded (else only text documents are answered)."""
        return self.mmproj_path is not None

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        lc, mt, cfg, stop = self._lc, self._mtmd, self.config, self.stop
        _thread_native_errors().clear()
        logger.debug("loading %s", self.model_path)
        stop.raise_if_requested("loading")
        with _llama_errors("unsupported or corrupt", cancelled=lambda: stop.raise_if_requested("loading")):
            self._llm = LlamaModel(self.model_path, lora=self.lora_path, mmap=cfg.mmap,
                                   progress_callback=stop.progress_callback(lc.llama_progress_callback))
        self._model, self._vocab = self._llm.model, self._llm.vocab
        self._apply_profile_defaults()

        flash = cfg.flash_attn
        if cfg.kv_type != "f16" and not flash:
            logger.warning("kv_type %s quantizes the V cache, which needs flash attention: switching it on", cfg.kv_type)
            flash = True
        self.flash_attn = flash
        evicting = cfg.method != "full"
        if evicting:
            logger.info("per-head KV eviction: the KV cache and attention stay in host memory (offload_kqv = false); "
                        "offloaded layers stay on their device")
        self.context_params = ContextParams(
            n_ctx=cfg.ctx, n_batch=cfg.batch, n_threads=cfg.n_threads, flash_attn=flash,
            type_k=ggml_type(cfg.kv_type), type_v=ggml_type(cfg.kv_type), offload_kqv=not evicting, no_perf=True)
        with _llama_errors():
            self._ctx = self._llm.new_context(self.context_params)
        self.n_ctx = int(lc.llama_n_ctx(self._ctx))
        stop.raise_if_requested("loading")

        if self.mmproj_path is not None:
            logger.debug("loading %s", self.mmproj_path)
            with _llama_errors("libmtmd refused it", cancelled=lambda: stop.raise_if_requested("loading")):
                self._mctx = self._llm.new_projector(
                    self.mmproj_path, n_threads=cfg.n_threads, flash_attn=flash,
                    progress_callback=stop.progress_callback(mt.mtmd_progress_callback))
            if not mt.mtmd_support_audio(self._mctx):
                raise SessionError(f"{self.mmproj_path} has no audio encoder")
            self.sample_rate = int(mt.mtmd_get_audio_sample_rate(self._mctx))
            if self.sample_rate <= 0:
                raise SessionError(f"{self.mmproj_path} reports audio sample rate {self.sample_rate}")
            self.marker = mt.mtmd_default_marker().decode()
            from audiokv_edge.native import mtmd_window

            # a Whisper-family projector on our libmtmd: long audio is read and tokenized one 30 s window at a time
            self._windowed_audio = mtmd_window.supports_windows(self._mctx)
        self._sampler = self._new_sampler()
        self.geometry = self._kv_geometry()
        self._formatter = self._chat_formatter()
        if cfg.method != "full":
            self._init_eviction()

    def _new_sampler(self):
        """Greedy decoding, behind llama.cpp's DRY penalty when ``dry_multiplier`` > 0."""
        lc = self._lc
        if self.config.dry_multiplier <= 0.0:
            return lc.llama_sampler_init_greedy()
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        breakers = (ctypes.c_char_p * 1)(b"\n")
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dry(
            self._vocab, float(self.config.dry_multiplier), DRY_BASE, DRY_ALLOWED_LENGTH, self.config.ctx, breakers, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain

    def _apply_profile_defaults(self) -> None:
        """Read the model's stored AudioKV defaults (once, header and metadata only) and resolve the keep ratio.

        The defaults were calibrated for AudioKV: only method ``audiokv`` reads them; an explicit ``keep`` wins.
        A malformed stored value is a :class:`SessionError` naming the key, as libaudiokv reports a bad profile.
        """
        try:
            choice = choose_keep(self.model_path, self.config.method, self.config.keep)
        except EvictionError as exc:
            raise SessionError(str(exc)) from None
        self.profile_defaults = choice.defaults
        self.keep, self.keep_source = choice.keep, choice.source
        self._keep_choice = choice

    def _init_eviction(self) -> None:
        """Switch on llama.cpp's per-head eviction (COMPACT) with libaudiokv's C callback (:class:`KVEvictor`).

        Python only registers the callback: llama.cpp calls ``audiokv_llama_evict_callback`` (libaudiokv), which plans
        with the configured method on the captured queries and the keys of any cache type, with the head profile
        stored in the model's GGUF (uniform budgets and one warning without one); with a ``kv_budget`` a small Python
        callback picks each eviction's keep ratio first.
        """
        cfg = self.config
        # rows per (layer, KV head) reserved after each eviction for the tokens until the next: the answer, and when
        # streaming one 30 s audio chunk or one document block with its text (more are allocated on demand)
        headroom = cfg.max_tokens + 1
        if cfg.stream:
            chunk = self.audio_chunk_tokens() if self.supports_audio else 0
            headroom += max(chunk, cfg.text_block) + STREAM_TEXT_MARGIN
        try:
            self._evictor = KVEvictor(self._model, self._ctx, method=cfg.method, keep=self._keep_choice,
                                      n_threads=cfg.n_threads, n_ctx=self.n_ctx, n_headroom=headroom,
                                      label=str(self.model_path), kv_budget=cfg.kv_budget)
        except EvictionUnsupportedError as exc:
            raise SessionError(f"{exc} ({_native_error('see -v log')}); use --method full") from None
        except EvictionError as exc:
            raise SessionError(str(exc)) from None
        self.evict_settings = dict(self._evictor.settings, sss_scope=cfg.sss_scope)

    def _kv_geometry(self) -> KVGeometry:
        """The layers whose KV cache holds every position (:func:`kv_layers`: not LFM2's convolutions, not the layers
        reading another layer's K/V, not an iSWA model's SWA layers, a cache of their own holding the window)."""
        m = self._llm
        try:
            layers = kv_layers(self.model_path, m.n_layer)
        except ValueError as exc:  # GGUFFormatError included
            raise SessionError(str(exc)) from None
        evictable = layers.position_cache_layers()
        if not evictable:  # a recurrent model: no KV cache (an evicting method is refused)
            return KVGeometry(0, 1, 1, 1, self.config.kv_type)
        allocated = layers.cell_values(evictable, v_trans=not self.flash_attn)
        first = evictable[0]
        n_kv, dk, dv = layers.head_count_kv[first], layers.head_dim_k[first], layers.head_dim_v[first]
        other = allocated - len(evictable) * n_kv * (dk + dv)
        return KVGeometry(len(evictable), n_kv, dk, dv, self.config.kv_type, other)

    def _chat_formatter(self):
        formatter = self._llm.chat_formatter()
        if formatter is None:
            logger.warning("%s has no chat template: the prompt is sent as plain text", self.model_path)
        return formatter

    def _audio_content(self, prompt: str) -> str:
        return f"{self.marker}\n{prompt}"

    def render_prompt(self, prompt: str) -> str:
        """The chat-formatted prompt, with mtmd's media marker where the audio goes (start of the user turn)."""
        self._require_audio()
        return render_prompt(self._formatter, self.marker, prompt)

    def render_text_prompt(self, document, prompt: str = DEFAULT_TEXT_PROMPT, *,
                           question_first: bool = False) -> str:
        """The chat-formatted prompt of :meth:`answer_text` (the text that is tokenized and decoded)."""
        return render_document_prompt(self._formatter, load_document(document), prompt,
                                      question_first=question_first).text

    def _require_audio(self) -> None:
        if self.mmproj_path is None:
            raise SessionError(f"no audio projector for {self.model_path}: this session answers text only; pass "
                               f"--mmproj FILE (Session(..., mmproj=FILE)) or put an mmproj*.gguf beside the model")

    # ------------------------------------------------------------------ answering audio
    def _clip(self, audio, sample_rate: int | None) -> "AudioClip | AudioFile":
        """The audio of a prompt: a clip in memory, or a file read block by block (window by window tokenization),
        else read whole."""
        self._require_audio()
        if isinstance(audio, AudioClip):
            if audio.sample_rate != self.sample_rate:
                return clip_from_array(audio.samples, audio.sample_rate, self.sample_rate, path=audio.path)
            return audio
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ValueError("sample_rate is required with an audio array")
            return clip_from_array(audio, sample_rate, self.sample_rate)
        if self._windowed_audio:
            return AudioFile(audio, self.sample_rate)
        return load_audio(audio, self.sample_rate)

    def answer(self, audio, prompt: str = DEFAULT_PROMPT, *, sample_rate: int | None = None,
               on_token: Callable[[str], None] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Answer:
        """Answer ``prompt`` about ``audio``.

        Parameters
        ----------
        audio : str, pathlib.Path, AudioClip or ndarray
            A file, a loaded clip, or samples ([n] or [n, channels], with ``sample_rate``).
        prompt : str
            The question (default: transcribe).
        sample_rate : int, optional
            Rate of an array ``audio``.
        on_token : callable, optional
            Called with each piece of text as soon as it is generated.
        progress : callable, optional
            ``progress(done_positions, total_positions)`` after every prompt chunk (encoding + prefill).

        Returns
        -------
        Answer

        Raises
        ------
        Interrupted
            :meth:`interrupt` (or the ``stop`` flag) during the answer; the session stays usable.
        """
        return self._collect(self.stream(audio, prompt, sample_rate=sample_rate, progress=progress), on_token)

    def stream(self, audio, prompt: str = DEFAULT_PROMPT, *, sample_rate: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> Iterator[str]:
        """Like :meth:`answer`, yielding text pieces as they are generated; the :class:`Answer` is then in
        :attr:`last_answer`."""
        self._check_open()
        self.stop.raise_if_requested("audio")
        clip = self._clip(audio, sample_rate)
        self.stop.raise_if_requested("audio")
        return self._generate_audio(clip, prompt, progress)

    def _tokenize(self, clip: "AudioClip | AudioFile", prompt: str, *, mel: bool = True):
        """The prompt's chunks (:mod:`audiokv_edge.runtime.prompt_chunks`) and their :class:`_PromptInfo`.

        A Whisper-family projector tokenizes the audio one 30 s mel window at a time: the recording is read twice
        (its log-mel maximum, then each window as the prefill reaches it). ``mel=False``: only the token counts are
        wanted (the recording is read once, for its length).
        """
        from audiokv_edge.runtime import prompt_chunks

        mt = self._mtmd
        rendered = self.render_prompt(prompt)

        def tokenize(samples):
            with _llama_errors():
                return self._llm.tokenize_audio_prompt(self._mctx, rendered, samples)

        if self._windowed_audio:
            def blocks():
                return clip.blocks() if isinstance(clip, AudioFile) else clip_blocks(clip)

            try:
                if mel:
                    top, n_windows, n_samples = prompt_chunks.scan_windows(
                        self._mctx, blocks(), lambda: self.stop.raise_if_requested("audio"))
                else:
                    top = 0.0  # any clamp gives the same token counts
                    n_windows, n_samples = prompt_chunks.count_windows(blocks())
                if n_windows == 0:
                    raise AudioError(f"{getattr(clip, 'path', '') or 'audio'}: audio has no samples (zero length)")
                chunks = prompt_chunks.WindowedPrompt(mt, self._mctx, tokenize, blocks(), top, n_windows)
            except ValueError as exc:
                if isinstance(exc, AudioError):
                    raise
                raise SessionError(str(exc)) from None
            seconds = n_samples / float(self.sample_rate)
        else:
            chunks = prompt_chunks.WholePrompt(mt, tokenize(clip.samples))
            seconds = clip.seconds
        info = _PromptInfo(unit="audio chunk", audio_seconds=seconds)
        info.chunks = len(chunks.layout)
        for i, (is_audio, n, n_pos) in enumerate(chunks.layout):
            info.prompt_tokens += n
            info.chunk_tokens.append(n)
            info.chunk_pos.append(n_pos)
            if is_audio:
                info.audio_tokens += n
                info.audio_chunk_ids.append(i)
        info.n_pos = sum(info.chunk_pos)
        info.evict_after = [i for i in info.audio_chunk_ids if i != info.chunks - 1]
        info.what = f"{seconds:.1f} s of audio -> {info.audio_tokens} audio tokens"
        return chunks, info

    def count_audio_tokens(self, audio, *, sample_rate: int | None = None) -> int:
        """Audio tokens mtmd would place in the prompt for ``audio`` (tokenization only, nothing encoded)."""
        chunks, info = self._tokenize(self._clip(audio, sample_rate), DEFAULT_PROMPT, mel=False)
        chunks.free()
        return info.audio_tokens

    def audio_chunk_tokens(self) -> int:
        """Most tokens mtmd gives one audio chunk (30 s of audio; tokenization only, nothing encoded)."""
        self._require_audio()
        clip = clip_from_array(np.zeros(30 * self.sample_rate, np.float32), self.sample_rate, self.sample_rate)
        chunks, info = self._tokenize(clip, DEFAULT_PROMPT, mel=False)
        chunks.free()
        return max((info.chunk_tokens[i] for i in info.audio_chunk_ids), default=0)

    def _generate_audio(self, clip: "AudioClip | AudioFile", prompt: str, progress) -> Iterator[str]:
        mt = self._mtmd
        self._begin_answer()
        t0 = time.perf_counter()
        with self.stop.sigint_requests_stop():
            chunks, info = self._tokenize(clip, prompt)

        audio_index = {c: k for k, c in enumerate(info.audio_chunk_ids)}
        recording = encoded_audio.recording_key(clip) if self._encoded_audio.max_bytes else None

        def evaluate(i: int, n_past: int) -> int:
            try:
                chunk = chunks.get(i)  # a long recording's next mel window is tokenized here
            except ValueError as exc:
                raise SessionError(str(exc)) from None
            if i in audio_index and i != info.chunks - 1:
                rc, next_pos = encoded_audio.eval_audio_chunk(mt, self._lc, self._mctx, self._ctx, chunk, n_past,
                                                              self.config.batch, self._encoded_audio, recording,
                                                              audio_index[i])
            else:
                new_n_past = self._lc.llama_pos(n_past)  # in/out: text chunks add to it, media chunks set it
                rc = mt.mtmd_helper_eval_chunk_single(self._mctx, self._ctx, chunk, n_past, 0, self.config.batch,
                                                      i == info.chunks - 1, ctypes.byref(new_n_past))
                next_pos = int(new_n_past.value)
            if rc != 0:
                raise SessionError(f"evaluating prompt chunk {i + 1}/{info.chunks} failed (code {rc}): "
                                   f"{_native_error('see -v log')}")
            return next_pos

        try:
            self.stop.raise_if_requested("audio")
            prefilled = self._prefill(info, evaluate, progress)
        finally:
            chunks.free()
        yield from self._answer_after(prefilled, info, t0, [{"role": "user", "content": self._audio_content(prompt)}],
                                      audio_seconds=info.audio_seconds)

    # ------------------------------------------------------------------ answering text
    def answer_text(self, document, prompt: str = DEFAULT_TEXT_PROMPT, *, question_first: bool = False,
                    on_token: Callable[[str], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Answer:
        """Answer ``prompt`` about a text ``document``, evicted like audio: once after the prompt's prefill, or with
        ``stream`` after every ``text_block`` tokens of the document too.

        Parameters
        ----------
        document : str or os.PathLike
            The text itself (``str``), or a UTF-8 text file (``pathlib.Path``); surrounding whitespace is removed.
        prompt : str
            The question (default: summarise).
        question_first : bool
            Put the question before the document in the user turn (the eviction then cannot know the question:
            query-agnostic, the harder case) instead of after it.
        on_token : callable, optional
            Called with each piece of text as soon as it is generated.
        progress : callable, optional
            ``progress(done_positions, total_positions)`` after every block of the prompt (prefill).

        Returns
        -------
        Answer
            ``stats.document_tokens`` holds the document's tokens, ``stats.audio_tokens`` is 0.

        Raises
        ------
        DocumentError
            The document is empty, or its file is missing, unreadable or not UTF-8 text (a ``ValueError``).
        ContextTooSmallError
            The prompt does not fit the context (the message names both sizes).
        Interrupted
            :meth:`interrupt` (or the ``stop`` flag) during the answer; the session stays usable.
        """
        return self._collect(self.stream_text(document, prompt, question_first=question_first, progress=progress),
                             on_token)

    def stream_text(self, document, prompt: str = DEFAULT_TEXT_PROMPT, *, question_first: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> Iterator[str]:
        """Like :meth:`answer_text`, yielding text pieces as they are generated; the :class:`Answer` is then in
        :attr:`last_answer`."""
        self._check_open()
        text = load_document(document)
        return self._generate_text(text, prompt, question_first, progress)

    def text_prompt_tokens(self, document: str, prompt: str, *, question_first: bool = False
                           ) -> tuple[list[int], tuple[int, int], DocumentPrompt]:
        """The tokens :meth:`answer_text` decodes for ``document`` (the text or a file, as there) and ``prompt``, the
        document's token span in them and the rendered prompt (``render_document_prompt``)."""
        self._check_open()
        rendered = render_document_prompt(self._formatter, load_document(document), prompt,
                                          question_first=question_first)
        bos = self._llm.bos_text
        add_special = not (bos and rendered.text.startswith(bos))

        def tokenize(text: str) -> list[int]:
            with _llama_errors(None):
                return self._llm.tokenize(text, add_special=add_special)

        tokens = tokenize(rendered.text)
        return tokens, document_token_span(tokenize, rendered, tokens), rendered

    def _generate_text(self, document: str, prompt: str, question_first: bool, progress) -> Iterator[str]:
        self._begin_answer()
        t0 = time.perf_counter()
        tokens, span, rendered = self.text_prompt_tokens(document, prompt, question_first=question_first)
        self.last_document_span = span
        cuts = [0, *stream_boundaries(len(tokens), span, self.config.text_block), len(tokens)]
        info = _PromptInfo(unit="document block")
        info.chunks = len(cuts) - 1
        info.chunk_tokens = [b - a for a, b in zip(cuts, cuts[1:])]
        info.chunk_pos = list(info.chunk_tokens)
        info.prompt_tokens = info.n_pos = len(tokens)
        info.document_tokens = span[1] - span[0]
        info.evict_after = list(range(info.chunks - 1))
        info.what = (f"a document of {info.document_tokens} tokens + {len(tokens) - info.document_tokens} tokens of "
                     f"question and chat template")

        def evaluate(i: int, n_past: int) -> int:
            part = tokens[cuts[i]:cuts[i + 1]]
            with _llama_errors():
                self._llm.decode_tokens(self._ctx, part, n_past, self.config.batch)
            return n_past + len(part)

        prefilled = self._prefill(info, evaluate, progress)
        yield from self._answer_after(prefilled, info, t0, [{"role": "user", "content": rendered.content}])

    # ------------------------------------------------------------------ follow-up questions
    def follow_up(self, prompt: str, *, on_token: Callable[[str], None] | None = None) -> Answer:
        """Ask another question in the conversation of the last answer (audio or text), against the cache as that
        answer left it: the evicted prompt, then the answer. The follow-up's turn is decoded into the cache and not
        evicted (the realistic chat case: the document was evicted before the second question was known).

        Parameters
        ----------
        prompt : str
            The next question.
        on_token : callable, optional
            Called with each piece of text as soon as it is generated.

        Returns
        -------
        Answer
            ``stats.prompt_tokens`` counts the follow-up's new positions; ``kv_bytes_full`` / ``kv_bytes_kept`` the
            whole conversation's cache without eviction / as held when the follow-up's answer starts.

        Raises
        ------
        SessionError
            No completed answer to follow (none yet, its stream was not read to the end, or it filled the context),
            or the chat template cannot continue the conversation.
        ContextTooSmallError
            The follow-up does not fit the rest of the context.
        Interrupted
            :meth:`interrupt` (or the ``stop`` flag) during the answer; the session stays usable, but has no
            conversation to follow up any more.
        """
        return self._collect(self.stream_follow_up(prompt), on_token)

    def stream_follow_up(self, prompt: str) -> Iterator[str]:
        """Like :meth:`follow_up`, yielding text pieces as they are generated; the :class:`Answer` is then in
        :attr:`last_answer`."""
        self._check_open()
        conv = self._conversation
        if conv is None:
            raise SessionError("no answer to follow up: answer a prompt first, and read its stream to the end")
        if conv.finish == "context":
            raise ContextTooSmallError(f"the last answer filled the context ({self.n_ctx} positions): no room for a "
                                       f"follow-up; use a larger --ctx")
        try:
            text = render_follow_up(self._formatter, conv.messages, conv.reply, prompt)
        except ValueError as exc:
            raise SessionError(f"{self.model_path}: {exc}") from None
        with _llama_errors(None):
            tokens = self._llm.tokenize(text, add_special=False)
        if conv.pending_token is not None:  # sampled last but never decoded (the answer ended at max_tokens)
            tokens = [conv.pending_token, *tokens]
        return self._generate_follow_up(conv, tokens, prompt)

    def _generate_follow_up(self, conv: "_Conversation", tokens: list[int], prompt: str) -> Iterator[str]:
        self._conversation = None
        self.last_answer = None
        self.last_evictions = []
        t0 = time.perf_counter()
        info = _PromptInfo(unit="follow-up", chunks=1, prompt_tokens=len(tokens), n_pos=len(tokens),
                           chunk_tokens=[len(tokens)], chunk_pos=[len(tokens)])
        info.what = f"the follow-up's {len(tokens)} tokens"

        def evaluate(i: int, n_past: int) -> int:
            with _llama_errors():
                self._llm.decode_tokens(self._ctx, tokens, n_past, self.config.batch)
            return n_past + len(tokens)

        prefilled = self._prefill(info, evaluate, None, start=conv, evict=False)
        messages = [*conv.messages, {"role": "assistant", "content": conv.reply}, {"role": "user", "content": prompt}]
        yield from self._answer_after(prefilled, info, t0, messages)

    # ------------------------------------------------------------------ prefill, eviction, decoding
    def _check_open(self) -> None:
        if self._ctx is None:
            raise SessionError("session is closed")

    def _collect(self, pieces: Iterator[str], on_token) -> Answer:
        for piece in pieces:
            if on_token is not None:
                on_token(piece)
        if self.last_answer is None:
            raise SessionError("generation ended without an answer")
        return self.last_answer

    def _begin_answer(self) -> None:
        """An empty cache and sampler for a new prompt."""
        lc = self._lc
        self.last_answer = None
        self.last_evictions = []
        self.last_audio_spans = []
        self.last_document_span = None
        self._conversation = None
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        lc.llama_sampler_reset(self._sampler)

    def _needs_eviction(self) -> bool:
        return self.config.method != "full"

    def _evict(self, n_past: int) -> tuple[int, int, float]:
        """Apply the configured method to the cache holding ``n_past`` prompt positions.

        Returns
        -------
        kept_entries : int
            (layer, KV head, token) entries kept, over the evictable layers.
        full_entries : int
            The same without eviction: ``n_past`` positions in every evictable (layer, KV head).
        elapsed_ms : float
        """
        if not self._needs_eviction():
            full = self._full_entries(n_past)
            return full, full, 0.0
        logger.debug("evicting: %d positions seen", n_past)
        try:
            with self.stop.sigint_requests_stop():
                record = self._evictor.evict(n_past)
        except EvictionError as exc:
            raise SessionError(f"{exc} ({exc.detail or _native_error('see -v log')})") from None
        self.last_evictions.append(record.as_dict())
        self.stop.raise_if_requested("eviction")  # the plan itself cannot be stopped: right after it
        return record.kept_entries, record.full_entries, record.ms

    def _full_entries(self, n_past: int) -> int:
        g = self.geometry
        return g.n_layer * g.n_head_kv * n_past

    def _held_entries(self, n_past: int) -> tuple[int, int]:
        """(kept, full) entries of the cache as it is now, holding ``n_past`` positions (no eviction)."""
        if self._evictor is None or not self._needs_eviction():
            full = self._full_entries(n_past)
            return full, full
        try:
            stats = self._evictor.stats()
        except EvictionError as exc:
            raise SessionError(str(exc)) from None
        per_position = int(stats.n_entries_full) // max(1, int(stats.n_tokens))
        return int(stats.n_entries), per_position * n_past

    def _set_audio_spans(self, spans: list[tuple[int, int]]) -> None:
        """Hand the audio positions of sequence 0 to the evictor (``sss_scope="audio"``)."""
        try:
            self._evictor.set_audio_spans(spans)
        except EvictionError as exc:
            raise SessionError(str(exc)) from None

    def _streaming(self) -> bool:
        """Whether the prompt is evicted after every audio chunk / document block (``stream`` with eviction)."""
        return self.config.stream and self._evictor is not None

    def _cells_needed(self, info: "_PromptInfo", cells: int = 0) -> int:
        """Most cells of the main KV cache the prompt occupies at once, plus one for the first answer token.

        Without streaming: every prompt position (after the ``cells`` already held). Streaming: a COMPACT eviction
        leaves one cell of the main cache (the last position; the kept entries move to per-head pools), so the
        largest stretch between two evictions counts: an audio chunk or document block with the text before it, or
        the last one with the text after it.
        """
        if not self._streaming():
            return cells + info.n_pos + 1
        peak = cells
        for i, n in enumerate(info.chunk_tokens):
            cells += n
            peak = max(peak, cells)
            if i in info.evict_after:
                cells = 1
        return peak + 1

    def _prefill(self, info: "_PromptInfo", evaluate: Callable[[int, int], int], progress, *,
                 start: "_Conversation | None" = None, evict: bool = True) -> "_Prefilled":
        """Decode the prompt's chunks into the cache (``evaluate(i, n_past) -> n_past after chunk i``), evicting
        after the chunks of ``info.evict_after`` when streaming and after the last one (``evict``).

        ``start``: the conversation the prompt continues (its positions and main-cache cells); None: an empty cache.

        Interruption: llama.cpp polls the stop flag after every graph node while the chunks are decoded (one batch of
        audio embeddings or document tokens can take seconds), and the flag is checked after every chunk and
        eviction.
        """
        self._poll_stop_in_graphs(True)
        try:
            return self._prefill_chunks(info, evaluate, progress, start=start, evict=evict)
        finally:
            self._poll_stop_in_graphs(False)

    def _poll_stop_in_graphs(self, on: bool) -> None:
        """Let llama.cpp poll the stop flag after every graph node (prefill), or not (decoding: one token's graph is
        short, the flag is checked between tokens, and a Python call per graph node would cost a small model a few
        per cent of its speed)."""
        lc = self._lc
        lc.llama_set_abort_callback(self._ctx, self.stop.abort_callback(lc) if on else lc.ggml_abort_callback(), None)

    def _prefill_chunks(self, info: "_PromptInfo", evaluate: Callable[[int, int], int], progress, *,
                        start: "_Conversation | None", evict: bool) -> "_Prefilled":
        """:meth:`_prefill` while llama.cpp polls the stop flag."""
        cfg, stop = self.config, self.stop
        streaming = self._streaming() and evict
        n_past = start.n_past if start is not None else 0
        cells = start.cells if start is not None else 0  # main-cache cells the sequence holds
        spans_to_evictor = cfg.sss_scope == "audio" and self._evictor is not None and start is None
        if spans_to_evictor:
            self._set_audio_spans([])   # this prompt's spans only: none until its first audio chunk (text: none)
        need = self._cells_needed(info, cells) if streaming else cells + info.n_pos + 1
        if need > self.n_ctx:
            at_least = need - 1 + cfg.max_tokens
            if start is not None:
                raise ContextTooSmallError(
                    f"{info.what} need {need - 1} cells of the context ({cells} held by the conversation so far) but "
                    f"it holds {self.n_ctx}: use a larger --ctx (at least {at_least})")
            if streaming:
                hint = "a smaller --text-block or " if info.unit == "document block" else ""
                raise ContextTooSmallError(
                    f"with --stream the context must hold the largest {info.unit} with its text ({need - 1} "
                    f"tokens) but it holds {self.n_ctx}: use {hint}a larger --ctx (at least {at_least})")
            if cfg.method == "full":
                hint = f"use a larger --ctx (at least {at_least}), or --stream with an evicting --method"
            else:
                hint = f"use --stream or a larger --ctx (at least {at_least})"
            raise ContextTooSmallError(
                f"the prompt needs {info.n_pos} positions ({info.what}) but the context holds {self.n_ctx}: {hint}")
        done = 0
        evict_ms = 0.0
        if progress is not None:
            progress(0, info.n_pos)
        for i in range(info.chunks):
            stop.raise_if_requested("prefill")
            logger.debug("prompt chunk %d/%d: %s, %d tokens", i + 1, info.chunks,
                         "audio" if i in info.audio_chunk_ids else "text", info.chunk_tokens[i])
            try:
                with stop.sigint_requests_stop():
                    new_n_past = evaluate(i, n_past)
            except SessionError:
                stop.raise_if_requested("prefill")  # llama_decode stopped (code 2) by the abort callback
                raise
            stop.raise_if_requested("prefill")
            if i in info.audio_chunk_ids:   # where libmtmd put this chunk: before any eviction planning it
                self.last_audio_spans.append((n_past, new_n_past))
                if spans_to_evictor:
                    self._set_audio_spans(self.last_audio_spans)
            n_past = new_n_past
            cells += info.chunk_tokens[i]
            done += info.chunk_pos[i]
            if streaming and i in info.evict_after:
                evict_ms += self._evict(n_past)[2]
                cells = 1
            if progress is not None:
                progress(done, info.n_pos)
        if evict:
            kept_entries, full_entries, ms = self._evict(n_past)
            evict_ms += ms
            if self._evictor is not None and self._needs_eviction():
                cells = 1  # COMPACT: the main cache keeps the last position only
        else:
            kept_entries, full_entries = self._held_entries(n_past)
        return _Prefilled(n_past=n_past, cells=cells, evict_ms=evict_ms, kept_entries=kept_entries,
                          full_entries=full_entries)

    def _answer_after(self, prefilled: "_Prefilled", info: "_PromptInfo", t0: float, messages: list[dict], *,
                      audio_seconds: float = 0.0) -> Iterator[str]:
        """Greedy decoding after a prefill; sets :attr:`last_answer` and the conversation a follow-up continues."""
        lc, cfg, stop = self._lc, self.config, self.stop
        n_past, cells = prefilled.n_past, prefilled.cells
        prefill_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        tokens: list[int] = []
        pending = None  # the last sampled token when it was not decoded into the cache
        finish = "length"
        token_arr = (lc.llama_token * 1)()
        logger.debug("decoding: at most %d tokens", cfg.max_tokens)
        while len(tokens) < cfg.max_tokens:
            stop.raise_if_requested("decode")
            token = int(lc.llama_sampler_sample(self._sampler, self._ctx, -1))
            if lc.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            tokens.append(token)
            piece = decoder.decode(self._llm.piece_bytes(token))
            if piece:
                pieces.append(piece)
                yield piece
            if len(tokens) >= cfg.max_tokens:
                pending = token
                break
            if cells + 1 > self.n_ctx:
                finish = "context"
                break
            token_arr[0] = token
            with stop.sigint_requests_stop():
                rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(token_arr, 1))
            stop.raise_if_requested("decode")
            if rc != 0:
                raise SessionError(f"llama_decode failed at position {n_past} (code {rc})")
            n_past += 1
            cells += 1
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            yield tail
        decode_s = time.perf_counter() - t1
        generated = len(tokens)

        g = self.geometry
        stats = AnswerStats(
            audio_seconds=round(audio_seconds, 6),
            audio_tokens=info.audio_tokens,
            prompt_tokens=info.n_pos,
            generated_tokens=generated,
            method=cfg.method,
            keep=1.0 if cfg.method == "full" else float(self.keep),
            keep_source=KEEP_FULL if cfg.method == "full" else self.keep_source,
            kv_budget=cfg.kv_budget,
            keep_effective=1.0 if self._evictor is None else self._evictor.last_keep,
            eviction_applied=True,
            kv_bytes_full=g.full_bytes(prefilled.n_past),
            kv_bytes_kept=g.held_bytes(prefilled.kept_entries, prefilled.n_past),
            prefill_tokens_per_s=info.n_pos / prefill_s if prefill_s > 0 else 0.0,
            decode_tokens_per_s=generated / decode_s if decode_s > 0 and generated else 0.0,
            prefill_s=prefill_s,
            decode_s=decode_s,
            evict_ms=prefilled.evict_ms,
            peak_rss_bytes=peak_rss_bytes(),
            finish_reason=finish,
            document_tokens=info.document_tokens,
        )
        text = "".join(pieces)
        self.last_answer = Answer(text, stats, tuple(tokens))
        self._conversation = _Conversation(messages=messages, reply=text, n_past=n_past, cells=cells,
                                           pending_token=pending, finish=finish)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Free the sampler, projector, context, evictor and model (idempotent)."""
        lc = getattr(self, "_lc", None)
        llm = getattr(self, "_llm", None)
        if getattr(self, "_sampler", None) and lc is not None:
            lc.llama_sampler_free(self._sampler)
        self._sampler = None
        if llm is not None:
            llm.close_contexts()
        self._mctx = self._ctx = None
        self._conversation = None
        if getattr(self, "_encoded_audio", None) is not None:
            self._encoded_audio.clear()
        if getattr(self, "_evictor", None):  # after the context: no eviction can call it any more
            self._evictor.close()
        self._evictor = None
        if llm is not None:
            llm.close()
        self._llm = self._model = None


__all__ = ["Answer", "AnswerStats", "ContextTooSmallError", "DEFAULT_KEEP", "DEFAULT_PROMPT", "DEFAULT_TEXT_PROMPT",
           "DocumentError", "Interrupted", "KV_TYPE_BYTES", "SSS_SCOPES", "Session", "SessionConfig", "SessionError",
           "StopFlag", "find_mmproj", "check_gguf"]
