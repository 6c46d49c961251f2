"""Answer prompts about audio with a llama.cpp text model + libmtmd audio projector: the Python API for apps.

A :class:`Session` loads the model and its projector once and answers many audio prompts::

    from audiokv_edge.runtime.session import Session, SessionConfig

    with Session("model.gguf", config=SessionConfig(method="full", max_tokens=64)) as s:
        for piece in s.stream("talk.wav", "Transcribe the audio."):
            print(piece, end="", flush=True)
        print(s.last_answer.stats.audio_tokens)

Pipeline: audio file -> mono float32 at the projector's rate (:mod:`audiokv_edge.runtime.audio`) -> the model's own chat
template (from its GGUF, rendered with llama-cpp-python's Jinja support) with mtmd's media marker where the user
content starts -> ``mtmd_tokenize`` (text chunks + one chunk per 30 s audio window) -> each chunk encoded and
decoded into the KV cache -> greedy decoding.

KV-cache eviction: ``method="full"`` keeps everything. Any other method, with a libllama carrying the per-head
eviction API (the patched llama.cpp, docs/per-head-eviction.md), evicts in COMPACT mode once after the prompt, or with
``stream=True`` also after every audio chunk (the main cache then only ever holds one chunk with its text, the kept
entries live in per-head pools of keep x the positions seen + one chunk + the answer). llama.cpp hands the captured
window queries and the keys (f16 or q8_0) to libaudiokv's C callback (``audiokv_llama_evict_callback``, Python only
registers it), which plans with the method (the head profile stored in the model's GGUF drives AudioKV's budgets),
and llama.cpp frees the dropped entries: :class:`~audiokv_edge.runtime.kv_eviction.KVEvictor`, called from
:meth:`Session._evict`.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import logging
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from audiokv_edge.native.libs import HandleOwner
from audiokv_edge.profile.gguf_header import GGUF_MAGIC
from audiokv_edge.runtime.audio import AudioClip, clip_from_array, load_audio
from audiokv_edge.runtime.kv_eviction import (
    DEFAULT_KEEP,
    EVICT_WINDOW,
    KEEP_BUILTIN,
    KEEP_FULL,
    EvictionError,
    EvictionUnsupportedError,
    KVEvictor,
    choose_keep,
)
from audiokv_edge.runtime.llama import ContextParams, LlamaError, LlamaModel, render_prompt
from audiokv_edge.runtime.stats import KV_TYPE_BYTES, AnswerStats, KVGeometry, ggml_type, peak_rss_bytes

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("audiokv_edge.native")

DEFAULT_PROMPT = "Transcribe the audio."
#: Text tokens around one audio chunk that a streaming eviction's headroom reserves beside the chunk and the answer.
STREAM_TEXT_MARGIN = 64
KV_TYPES = ("f16", "q8_0")
#: Where AudioKV's Spectral Score Smoothing runs (``SessionConfig.sss_scope``): over every token, or within the audio
#: tokens only (each audio chunk's positions its own run, text tokens keep their raw scores; docs/semantics.md).
SSS_SCOPES = ("all", "audio")



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
    stream : bool
        Evict after every audio chunk (bounded memory) instead of once after the prompt.
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
        restricted to the audio tokens").
    """

    method: str = "audiokv"
    keep: float | None = None
    stream: bool = False
    max_tokens: int = 128
    threads: int = 0
    ctx: int = 8192
    batch: int = 512
    kv_type: str = "f16"
    flash_attn: bool = False
    sss_scope: str = "all"

    def __post_init__(self) -> None:
        from audiokv_edge.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        keep = self.keep
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float))
                                 or not np.isfinite(keep) or not 0 < keep <= 1):
            raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
        for name, low in (("max_tokens", 1), ("threads", 0), ("ctx", 16), ("batch", 1)):
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
    """Generated text and the statistics of producing it."""

    text: str
    stats: AnswerStats

    def to_dict(self) -> dict:
        """``{"text": ..., **stats}``: the runner's ``--json`` object."""
        return {"text": self.text, **self.stats.to_dict()}


@dataclass
class _PromptInfo:
    chunks: int = 0
    audio_tokens: int = 0
    prompt_tokens: int = 0
    n_pos: int = 0
    audio_chunk_ids: list = field(default_factory=list)
    chunk_tokens: list = field(default_factory=list)  # tokens (= main-cache cells) of each chunk


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
    problem = stacked_projector_problem(projector, int(meta.get("clip.audio.projector.stack_factor") or 0))
    if problem:
        raise SessionError(f"{found}: {problem}")
    return found


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
_LAST_NATIVE_ERRORS: collections.deque = collections.deque(maxlen=8)


def _route_native_logs(llama_cpp, mtmd_cpp) -> None:
    """Send llama.cpp / libmtmd log lines to the ``audiokv_edge.native`` logger (DEBUG); remember errors."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:

        def _log(level, text, user_data):
            line = (text or b"").decode("utf-8", "replace").rstrip()
            if level == _GGML_LOG_LEVEL_ERROR and line:
                _LAST_NATIVE_ERRORS.append(line)
            if line:
                native_logger.debug("%s", line)

        _LOG_CALLBACK = llama_cpp.llama_log_callback(_log)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _native_error(default: str) -> str:
    """The most telling recent native error line (without llama.cpp's ``function: `` prefixes), else ``default``."""
    import re

    for line in reversed(_LAST_NATIVE_ERRORS):
        text = line
        while re.match(r"^[A-Za-z_][\w:~]*: ", text):
            text = text.split(": ", 1)[1]
        if text.startswith("error: "):
            text = text[len("error: "):]
        if text and "failed to load" not in text:
            return " ".join(text.split())
    return default


class Session(HandleOwner):
    """A loaded text model + audio projector answering audio prompts; a context manager freeing every handle.

    Parameters
    ----------
    model : str or pathlib.Path
        Text model GGUF.
    mmproj : str or pathlib.Path, optional
        Audio projector GGUF; default: the one ``mmproj*.gguf`` beside ``model``.
    config : SessionConfig
        Options.
    lora : str or pathlib.Path, optional
        LoRA adapter GGUF that llama.cpp applies to the text model (as ``--lora``), e.g. the demo model's.

    Raises
    ------
    SessionError
        A file is missing, not a GGUF, not loadable, the projector has no audio encoder or does not fit the model.
    """

    def __init__(self, model: str | pathlib.Path, mmproj: str | pathlib.Path | None = None,
                 config: SessionConfig | None = None, lora: str | pathlib.Path | None = None) -> None:
        self.config = config or SessionConfig()
        self._llm = self._model = self._ctx = self._mctx = self._sampler = self._evictor = None
        self.last_answer: Answer | None = None
        #: One dict per eviction of the last answer: n_past (positions seen), ms, entries_before / _after,
        #: bytes_used_before / _after (K+V bytes the sequence occupies in the evictable layers: per-head pools incl.
        #: headroom + main-cache cells), bytes_kept_after, bytes_headroom_after (llama_kv_evict_stats).
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
        #: Positions [start, end) of the audio chunks of the last prompt, as libmtmd placed them in the sequence
        #: (with ``sss_scope="audio"`` the evictions restrict SSS to them).
        self.last_audio_spans: list[tuple[int, int]] = []
        self.model_path = check_gguf(model, "model")
        self.mmproj_path = find_mmproj(self.model_path, mmproj)
        self.lora_path = None if lora is None else check_gguf(lora, "LoRA adapter")

        from audiokv_edge.native import libs as native_libs

        self._llama = native_libs.load_llama_cpp()
        self._lc = self._llama.llama_cpp
        self._mtmd = native_libs.load_mtmd_cpp()
        _route_native_logs(self._lc, self._mtmd)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        lc, mt, cfg = self._lc, self._mtmd, self.config
        _LAST_NATIVE_ERRORS.clear()
        try:
            self._llm = LlamaModel(self.model_path, lora=self.lora_path)
        except LlamaError as exc:
            raise SessionError(f"{exc}: {_native_error('unsupported or corrupt')}") from None
        self._model, self._vocab = self._llm.model, self._llm.vocab
        self._apply_profile_defaults()

        flash = cfg.flash_attn
        if cfg.kv_type != "f16" and not flash:
            logger.warning("kv_type %s quantizes the V cache, which needs flash attention: switching it on", cfg.kv_type)
            flash = True
        self.flash_attn = flash
        try:
            self._ctx = self._llm.new_context(ContextParams(
                n_ctx=cfg.ctx, n_batch=cfg.batch, n_threads=cfg.n_threads, flash_attn=flash,
                type_k=ggml_type(cfg.kv_type), type_v=ggml_type(cfg.kv_type), no_perf=True))
        except LlamaError as exc:
            raise SessionError(f"{exc}: {_native_error('see -v log')}") from None
        self.n_ctx = int(lc.llama_n_ctx(self._ctx))

        try:
            self._mctx = self._llm.new_projector(self.mmproj_path, n_threads=cfg.n_threads, flash_attn=flash)
        except LlamaError as exc:
            raise SessionError(f"{exc}: {_native_error('libmtmd refused it')}") from None
        if not mt.mtmd_support_audio(self._mctx):
            raise SessionError(f"{self.mmproj_path} has no audio encoder")
        self.sample_rate = int(mt.mtmd_get_audio_sample_rate(self._mctx))
        if self.sample_rate <= 0:
            raise SessionError(f"{self.mmproj_path} reports audio sample rate {self.sample_rate}")
        self._sampler = lc.llama_sampler_init_greedy()
        self.geometry = self._kv_geometry()
        self._formatter = self._chat_formatter()
        self.marker = mt.mtmd_default_marker().decode()
        if cfg.method != "full":
            self._init_eviction()

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
        stored in the model's GGUF (uniform budgets and one warning without one).
        """
        cfg = self.config
        # rows per (layer, KV head) reserved after each eviction for the tokens until the next: the answer, and when
        # streaming one 30 s audio chunk with its text (more are allocated on demand)
        headroom = cfg.max_tokens + 1
        if cfg.stream:
            headroom += self.audio_chunk_tokens() + STREAM_TEXT_MARGIN
        try:
            self._evictor = KVEvictor(self._model, self._ctx, method=cfg.method, keep=self._keep_choice,
                                      n_threads=cfg.n_threads, n_ctx=self.n_ctx, n_headroom=headroom,
                                      label=str(self.model_path))
        except EvictionUnsupportedError as exc:
            raise SessionError(f"{exc} ({_native_error('see -v log')}); use --method full") from None
        except EvictionError as exc:
            raise SessionError(str(exc)) from None
        self.evict_settings = dict(self._evictor.settings, sss_scope=cfg.sss_scope)

    def _kv_geometry(self) -> KVGeometry:
        m = self._llm
        arch = m.meta("general.architecture") or ""
        dk = m.meta(f"{arch}.attention.key_length")
        dv = m.meta(f"{arch}.attention.value_length")
        head_dim_k = int(dk) if dk else m.n_embd // max(1, m.n_head)
        head_dim_v = int(dv) if dv else head_dim_k
        return KVGeometry(m.n_layer, m.n_head_kv, head_dim_k, head_dim_v, self.config.kv_type)

    def _chat_formatter(self):
        formatter = self._llm.chat_formatter()
        if formatter is None:
            logger.warning("%s has no chat template: the prompt is sent as plain text", self.model_path)
        return formatter

    def render_prompt(self, prompt: str) -> str:
        """The chat-formatted prompt, with mtmd's media marker where the audio goes (start of the user turn)."""
        return render_prompt(self._formatter, self.marker, prompt)

    # ------------------------------------------------------------------ answering
    def _clip(self, audio, sample_rate: int | None) -> AudioClip:
        if isinstance(audio, AudioClip):
            if audio.sample_rate != self.sample_rate:
                return clip_from_array(audio.samples, audio.sample_rate, self.sample_rate, path=audio.path)
            return audio
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ValueError("sample_rate is required with an audio array")
            return clip_from_array(audio, sample_rate, self.sample_rate)
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
        """
        pieces = []
        for piece in self.stream(audio, prompt, sample_rate=sample_rate, progress=progress):
            pieces.append(piece)
            if on_token is not None:
                on_token(piece)
        if self.last_answer is None:
            raise SessionError("generation ended without an answer")
        return self.last_answer

    def stream(self, audio, prompt: str = DEFAULT_PROMPT, *, sample_rate: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> Iterator[str]:
        """Like :meth:`answer`, yielding text pieces as they are generated; the :class:`Answer` is then in
        :attr:`last_answer`."""
        if self._ctx is None:
            raise SessionError("session is closed")
        clip = self._clip(audio, sample_rate)
        return self._generate(clip, prompt, progress)

    def _tokenize(self, clip: AudioClip, prompt: str):
        mt = self._mtmd
        try:
            chunks = self._llm.tokenize_audio_prompt(self._mctx, self.render_prompt(prompt), clip.samples)
        except LlamaError as exc:
            raise SessionError(f"{exc}: {_native_error('see -v log')}") from None
        info = _PromptInfo()
        info.chunks = int(mt.mtmd_input_chunks_size(chunks))
        for i in range(info.chunks):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            n = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
            info.prompt_tokens += n
            info.chunk_tokens.append(n)
            info.n_pos += int(mt.mtmd_input_chunk_get_n_pos(chunk))
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                info.audio_tokens += n
                info.audio_chunk_ids.append(i)
        return chunks, info

    def count_audio_tokens(self, audio, *, sample_rate: int | None = None) -> int:
        """Audio tokens mtmd would place in the prompt for ``audio`` (tokenization only, nothing encoded)."""
        chunks, info = self._tokenize(self._clip(audio, sample_rate), DEFAULT_PROMPT)
        self._mtmd.mtmd_input_chunks_free(chunks)
        return info.audio_tokens

    def audio_chunk_tokens(self) -> int:
        """Most tokens mtmd gives one audio chunk (30 s of audio; tokenization only, nothing encoded)."""
        clip = clip_from_array(np.zeros(30 * self.sample_rate, np.float32), self.sample_rate, self.sample_rate)
        chunks, info = self._tokenize(clip, DEFAULT_PROMPT)
        self._mtmd.mtmd_input_chunks_free(chunks)
        return max((info.chunk_tokens[i] for i in info.audio_chunk_ids), default=0)

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
            g = self.geometry
            full = g.n_layer * g.n_head_kv * n_past
            return full, full, 0.0
        try:
            record = self._evictor.evict(n_past)
        except EvictionError as exc:
            raise SessionError(f"{exc} ({exc.detail or _native_error('see -v log')})") from None
        self.last_evictions.append(record.as_dict())
        return record.kept_entries, record.full_entries, record.ms

    def _set_audio_spans(self, spans: list[tuple[int, int]]) -> None:
        """Hand the audio positions of sequence 0 to the evictor (``sss_scope="audio"``)."""
        try:
            self._evictor.set_audio_spans(spans)
        except EvictionError as exc:
            raise SessionError(str(exc)) from None

    def _streaming(self) -> bool:
        """Whether the prompt is evicted after every audio chunk (``stream`` with eviction available)."""
        return self.config.stream and self._evictor is not None

    def _cells_needed(self, info: "_PromptInfo") -> int:
        """Most cells of the main KV cache the prompt occupies at once, plus one for the first answer token.

        Without streaming: every prompt position. Streaming: a COMPACT eviction leaves one cell of the main cache
        (the last position; the kept entries move to per-head pools), so the largest stretch between two evictions
        counts: an audio chunk with the text before it, or the last chunk with the text after it.
        """
        if not self._streaming():
            return info.n_pos + 1
        cells = peak = 0
        last = info.chunks - 1
        for i, n in enumerate(info.chunk_tokens):
            cells += n
            peak = max(peak, cells)
            if i in info.audio_chunk_ids and i != last:
                cells = 1
        return peak + 1

    def _generate(self, clip: AudioClip, prompt: str, progress) -> Iterator[str]:
        lc, mt, cfg = self._lc, self._mtmd, self.config
        self.last_answer = None
        self.last_evictions = []
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        lc.llama_sampler_reset(self._sampler)
        t0 = time.perf_counter()
        chunks, info = self._tokenize(clip, prompt)
        evict_ms = 0.0
        streaming = self._streaming()
        self.last_audio_spans = []
        spans_to_evictor = cfg.sss_scope == "audio" and self._evictor is not None
        try:
            if spans_to_evictor:
                self._set_audio_spans([])   # this prompt's spans only: none until its first audio chunk
            need = self._cells_needed(info)
            if need > self.n_ctx:
                at_least = need - 1 + cfg.max_tokens
                if streaming:
                    raise ContextTooSmallError(
                        f"with --stream the context must hold the largest audio chunk with its text ({need - 1} "
                        f"tokens) but it holds {self.n_ctx}: use a larger --ctx (at least {at_least})")
                if cfg.method == "full":
                    hint = f"use a larger --ctx (at least {at_least}), or --stream with an evicting --method"
                else:
                    hint = f"use --stream or a larger --ctx (at least {at_least})"
                raise ContextTooSmallError(
                    f"the prompt needs {info.n_pos} positions ({clip.seconds:.1f} s of audio -> {info.audio_tokens} "
                    f"audio tokens) but the context holds {self.n_ctx}: {hint}"
                )
            n_past = 0
            done = 0
            cells = 0  # main-cache cells the sequence holds
            if progress is not None:
                progress(0, info.n_pos)
            for i in range(info.chunks):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                new_n_past = lc.llama_pos(n_past)  # in/out: text chunks add to it, media chunks set it
                rc = mt.mtmd_helper_eval_chunk_single(self._mctx, self._ctx, chunk, n_past, 0, cfg.batch,
                                                      i == info.chunks - 1, ctypes.byref(new_n_past))
                if rc != 0:
                    raise SessionError(f"evaluating prompt chunk {i + 1}/{info.chunks} failed (code {rc}): "
                                       f"{_native_error('see -v log')}")
                if i in info.audio_chunk_ids:   # where libmtmd put this chunk: before any eviction planning it
                    self.last_audio_spans.append((n_past, int(new_n_past.value)))
                    if spans_to_evictor:
                        self._set_audio_spans(self.last_audio_spans)
                n_past = int(new_n_past.value)
                cells += info.chunk_tokens[i]
                done += int(mt.mtmd_input_chunk_get_n_pos(chunk))
                if streaming and i in info.audio_chunk_ids and i != info.chunks - 1:
                    evict_ms += self._evict(n_past)[2]
                    cells = 1
                if progress is not None:
                    progress(done, info.n_pos)
        finally:
            mt.mtmd_input_chunks_free(chunks)
        kept_entries, full_entries, ms = self._evict(n_past)
        evict_ms += ms
        if self._evictor is not None and self._needs_eviction():
            cells = 1  # COMPACT: the main cache keeps the last position only
        prefill_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        generated = 0
        finish = "length"
        token_arr = (lc.llama_token * 1)()
        while generated < cfg.max_tokens:
            token = int(lc.llama_sampler_sample(self._sampler, self._ctx, -1))
            if lc.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            generated += 1
            piece = decoder.decode(self._llm.piece_bytes(token))
            if piece:
                pieces.append(piece)
                yield piece
            if generated >= cfg.max_tokens:
                break
            if cells + 1 > self.n_ctx:
                finish = "context"
                break
            token_arr[0] = token
            rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(token_arr, 1))
            if rc != 0:
                raise SessionError(f"llama_decode failed at position {n_past} (code {rc})")
            n_past += 1
            cells += 1
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            yield tail
        decode_s = time.perf_counter() - t1

        g = self.geometry
        stats = AnswerStats(
            audio_seconds=round(clip.seconds, 6),
            audio_tokens=info.audio_tokens,
            prompt_tokens=info.n_pos,
            generated_tokens=generated,
            method=cfg.method,
            keep=1.0 if cfg.method == "full" else float(self.keep),
            keep_source=KEEP_FULL if cfg.method == "full" else self.keep_source,
            eviction_applied=True,
            kv_bytes_full=g.kept_bytes(full_entries),
            kv_bytes_kept=g.kept_bytes(kept_entries),
            prefill_tokens_per_s=info.n_pos / prefill_s if prefill_s > 0 else 0.0,
            decode_tokens_per_s=generated / decode_s if decode_s > 0 and generated else 0.0,
            prefill_s=prefill_s,
            decode_s=decode_s,
            evict_ms=evict_ms,
            peak_rss_bytes=peak_rss_bytes(),
            finish_reason=finish,
        )
        self.last_answer = Answer("".join(pieces), stats)

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
        if getattr(self, "_evictor", None):  # after the context: no eviction can call it any more
            self._evictor.close()
        self._evictor = None
        if llm is not None:
            llm.close()
        self._llm = self._model = None


__all__ = ["Answer", "AnswerStats", "ContextTooSmallError", "DEFAULT_KEEP", "DEFAULT_PROMPT", "KV_TYPE_BYTES",
           "SSS_SCOPES", "Session", "SessionConfig", "SessionError", "find_mmproj", "check_gguf"]
