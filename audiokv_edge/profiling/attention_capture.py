"""Record every head's attention rows while a llama.cpp model is teacher-forced to emit a known answer.

Used by convert/profile_heads.py to measure a head profile: :class:`TeacherForcedAttention` (text model + libmtmd
audio projector, the AudioKV profile, arXiv 2604.06694, Sec. 3) forces the transcript of a clip after the prompt
(chat template, audio, "Transcribe the audio.", evaluated as in :mod:`audiokv_edge.runtime.session`);
:class:`TextTeacherForcedAttention` (text model only, the retrieval-head profile of
:mod:`audiokv_edge.profiling.retrieval_heads`) forces any answer after a tokenized text prompt. The answer's tokens
are decoded in one teacher-forced batch [last prompt token, t_0, ..., t_{m-2}], whose row j is the decode step that
emits t_j. llama.cpp's eval callback
(``llama_context_params.cb_eval``) hands over the tensor "kq_soft_max-<il>" of every layer (flash attention off):
float32 [n_kv, n_tokens, n_head], column j = KV cell j = position j in a fresh single-sequence cache.

Audio tokens and time: Whisper-family encoders (qwen2a, qwen2.5o, ultravox, voxtral, glma, musicflamingo, meralion)
pad the clip with 30 s of silence and keep whole 30 s windows, so the audio tokens of K chunks cover K * 30 s, the
speech at the start. Other encoders are assumed to cover exactly the clip (logged once).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from audiokv_edge.profile.gguf_header import GGUFFormatError, GGUFHeader
from audiokv_edge.profiling.calibration_set import CalibrationItem
from audiokv_edge.profiling.hit_ratio import HitRatioAccumulator, word_token_spans
from audiokv_edge.runtime.audio import load_audio
from audiokv_edge.runtime.kv_layers import kv_layers
from audiokv_edge.runtime.llama import (ContextParams, LlamaError, LlamaModel, init_llama_cpp, render_prompt,
                                        render_user_turn)
from audiokv_edge.runtime.session import DEFAULT_PROMPT, check_gguf, find_mmproj

logger = logging.getLogger(__name__)

WHISPER_FAMILY = frozenset({"qwen2a", "qwen2.5o", "ultravox", "voxtral", "glma", "musicflamingo", "meralion"})
WHISPER_CHUNK_SECONDS = 30.0
_SOFTMAX_PREFIX = "kq_soft_max-"
_GGML_TYPE_F32 = int(GGMLQuantizationType.F32)
_CAUSAL_TOL = 1e-6
_ROW_SUM_TOL = 1e-3


class CaptureError(RuntimeError):
    """The model, projector or a clip cannot be profiled; the message names the file and the problem."""


class _GGMLTensor(ctypes.Structure):
    """Leading fields of ``struct ggml_tensor`` (ggml/include/ggml.h of the vendored llama.cpp), read-only use."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def projector_type(mmproj: str) -> str:
    """``clip.audio.projector_type`` (or ``clip.projector_type``) of an mmproj GGUF, "" if absent."""
    try:
        h = GGUFHeader(mmproj)
        for key in ("clip.audio.projector_type", "clip.projector_type"):
            v = h.scalar(key, (GGUFValueType.STRING,))
            if v:
                return v
    except GGUFFormatError as exc:
        raise CaptureError(str(exc)) from None
    return ""


def token_words(pieces: list[str], words: list[str]) -> np.ndarray:
    """Word index of every token, from the token texts and the transcript words.

    A token belongs to the word holding its first non-space character (punctuation stays with its word, as the
    transcript's words keep it); a token of spaces only belongs to the next word.

    Returns
    -------
    ndarray, int64, shape [n_tokens]

    Raises
    ------
    CaptureError
        The pieces do not spell the words in order.
    """
    text = "".join(pieces)
    starts, pos = [], 0
    for w in words:
        i = text.find(w, pos)
        if i < 0:
            raise CaptureError(f"the tokens of the transcript do not spell {w!r} (text {text[:60]!r}...)")
        starts.append(i)
        pos = i + len(w)
    out = np.empty(len(pieces), dtype=np.int64)
    c = 0
    for j, piece in enumerate(pieces):
        first = c + (len(piece) - len(piece.lstrip()))
        out[j] = min(max(int(np.searchsorted(starts, first, side="right")) - 1, 0), len(words) - 1)
        c += len(piece)
    return out


@dataclass(frozen=True)
class ClipCapture:
    """What one clip contributed: decode steps scored, audio-token geometry."""

    steps: int
    audio_tokens: int
    audio_start: int
    audio_seconds_covered: float
    prompt_positions: int


class _CapturingModel:
    """A loaded text model whose attention rows (every layer, every query head) are captured while forced tokens are
    decoded: the llama.cpp set-up, the eval callback, the capture of a forced batch and the teardown, shared by the
    audio and the text profilers.

    Parameters
    ----------
    model : path
        Text model GGUF.
    n_ctx, n_batch, n_threads : int
        Context size, tokens per llama_decode call, threads.
    lora : path, optional
        LoRA adapter GGUF applied to the text model (the attention measured is the adapted model's).
    """

    def __init__(self, model, n_ctx: int = 4096, n_batch: int = 512, n_threads: int = 2, lora=None) -> None:
        from audiokv_edge.native import libs as native_libs

        for name, value, low in (("n_ctx", n_ctx, 16), ("n_batch", n_batch, 1), ("n_threads", n_threads, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self._llm = self._model = self._ctx = self._mctx = None
        self.model_path = check_gguf(model, "model")
        self.lora_path = None if lora is None else check_gguf(lora, "LoRA adapter")
        self.n_batch = n_batch
        self._lc = init_llama_cpp()
        ggml_base = ctypes.CDLL(str(native_libs.lib_dir() / native_libs.shared_library_name("ggml-base")))
        self._tensor_get = ggml_base.ggml_backend_tensor_get
        self._tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self._tensor_get.restype = None
        self._capturing = False
        self._capture_failed = False
        self._captured: dict[int, list[np.ndarray]] = {}
        self._cb = self._lc.ggml_backend_sched_eval_callback(self._on_tensor)
        try:
            self._load(n_ctx, n_batch, n_threads)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ loading
    def _load(self, n_ctx: int, n_batch: int, n_threads: int) -> None:
        try:
            self._llm = m = LlamaModel(self.model_path, lora=self.lora_path)
            self._model, self._vocab = m.model, m.vocab
            self.n_layer, self.n_head, self.n_head_kv = m.n_layer, m.n_head, m.n_head_kv
            try:
                layout = kv_layers(self.model_path, self.n_layer)
            except ValueError as exc:  # GGUFFormatError included
                raise CaptureError(str(exc)) from None
            self.attention_layers, self.kv_source = layout.attention, layout.sources
            self._ctx = m.new_context(ContextParams(
                n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                flash_attn=False,                               # kq_soft_max exists only without it
                eval_callback=self._cb, no_perf=True))
            self.n_ctx = int(self._lc.llama_n_ctx(self._ctx))
        except LlamaError as exc:
            raise CaptureError(str(exc)) from None
        self._formatter = m.chat_formatter()

    def _piece(self, token: int) -> str:
        return self._llm.piece(token)

    def tokenize_text(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        arr = (self._lc.llama_token * (len(raw) + 8))()
        n = self._lc.llama_tokenize(self._vocab, raw, len(raw), arr, len(arr), False, False)
        if n < 0:
            raise CaptureError(f"cannot tokenize the transcript {text[:40]!r}")
        return list(arr[:n])

    # ------------------------------------------------------------------------------------------ callback
    def _on_tensor(self, tensor_p, ask, _user) -> bool:
        try:
            t = ctypes.cast(tensor_p, ctypes.POINTER(_GGMLTensor)).contents
            name = t.name.decode("utf-8", "replace")
            if not name.startswith(_SOFTMAX_PREFIX):
                return False if ask else True
            if ask:
                return self._capturing
            if t.type != _GGML_TYPE_F32:
                raise CaptureError(f"{name} has ggml type {t.type}, expected F32")
            ne = [int(t.ne[i]) for i in range(4)]
            if int(t.nb[0]) != 4 or int(t.nb[1]) != 4 * ne[0] or int(t.nb[2]) != 4 * ne[0] * ne[1]:
                raise CaptureError(f"{name} is not contiguous")
            out = np.empty((ne[3], ne[2], ne[1], ne[0]), dtype=np.float32)
            self._tensor_get(tensor_p, out.ctypes.data, 0, out.nbytes)
            il = int(name[len(_SOFTMAX_PREFIX):])
            self._captured.setdefault(il, []).append(out[0].transpose(1, 0, 2).copy())  # [n_tokens, n_head, n_kv]
            return True
        except Exception:                       # never let an exception cross into C
            logger.exception("attention capture failed")
            self._capture_failed = True
            return False if ask else True

    def _capture_forced(self, forced: list[int], n_past: int, step: int) -> np.ndarray:
        """Decode ``forced`` (its first token at position ``n_past - 1``: the prompt's last token, held back) with
        the capture on; every row checked (sums to 1, attends no later cell).

        Returns
        -------
        ndarray, float32, shape [len(forced), n_layer, n_head, n_kv]
            Row j is the attention of the query at position n_past - 1 + j; column = position (a fresh
            single-sequence cache); layers without attention are 0.
        """
        lc = self._lc
        self._captured = {}
        self._capture_failed = False
        self._capturing = True
        try:
            for s in range(0, len(forced), step):
                part = forced[s:s + step]
                arr = (lc.llama_token * len(part))(*part)
                rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(arr, len(part)))
                if rc != 0:
                    raise CaptureError(f"llama_decode failed on the forced answer (code {rc})")
        finally:
            self._capturing = False
        if self._capture_failed or sorted(self._captured) != self.attention_layers:
            raise CaptureError(f"attention rows were not captured for every layer (got {sorted(self._captured)}); "
                               "is flash attention forced on?")
        n_kv = max(a.shape[2] for parts in self._captured.values() for a in parts)
        rows = np.zeros((len(forced), self.n_layer, self.n_head, n_kv), dtype=np.float32)
        for il, parts in self._captured.items():
            r = 0
            for a in parts:
                rows[r:r + a.shape[0], il, :, :a.shape[2]] = a
                r += a.shape[0]
            if r != len(forced):
                raise CaptureError(f"layer {il}: captured {r} rows for {len(forced)} tokens")
        sums = rows[:, self.attention_layers].sum(axis=-1, dtype=np.float64)  # layers without attention: 0
        if not np.all(np.abs(sums - 1.0) < _ROW_SUM_TOL):
            raise CaptureError(f"captured attention rows do not sum to 1 (min {sums.min():.4f}, max {sums.max():.4f})")
        for j in range(len(forced)):
            pos = n_past - 1 + j
            leak = float(rows[j, :, :, pos + 1:].max(initial=0.0))
            if leak > _CAUSAL_TOL:
                raise CaptureError(f"attention row of position {pos} reaches later cells ({leak:.2e}): "
                                   "cells and positions differ")
        self._captured = {}
        return rows

    # ------------------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        if getattr(self, "_llm", None) is not None:
            self._llm.close()
        self._llm = self._model = self._ctx = self._mctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TeacherForcedAttention(_CapturingModel):
    """A loaded model + audio projector whose attention rows are captured at teacher-forced transcript tokens.

    Parameters
    ----------
    model, mmproj : path
        Text model GGUF and audio projector GGUF.
    n_ctx : int
        Context size (prompt + transcript).
    n_batch : int
        Batch size (prompt slices and transcript batches).
    n_threads : int
    prompt : str
        User instruction placed after the audio.
    lora : path, optional
        LoRA adapter GGUF applied to the text model (the attention measured is the adapted model's).
    """

    def __init__(self, model, mmproj, n_ctx: int = 4096, n_batch: int = 512, n_threads: int = 2,
                 prompt: str = DEFAULT_PROMPT, lora=None) -> None:
        from audiokv_edge.native import libs as native_libs

        self.mmproj_path = find_mmproj(check_gguf(model, "model"), mmproj)
        self.proj_type = projector_type(str(self.mmproj_path))
        self.prompt = prompt
        self._mt = native_libs.load_mtmd_cpp()
        super().__init__(model, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, lora=lora)

    def _load(self, n_ctx: int, n_batch: int, n_threads: int) -> None:
        super()._load(n_ctx, n_batch, n_threads)
        mt = self._mt
        try:
            self._mctx = self._llm.new_projector(self.mmproj_path, n_threads=n_threads, flash_attn=False)
        except LlamaError as exc:
            raise CaptureError(str(exc)) from None
        if not mt.mtmd_support_audio(self._mctx):
            raise CaptureError(f"audio projector {self.mmproj_path} does not fit model {self.model_path}")
        self.sample_rate = int(mt.mtmd_get_audio_sample_rate(self._mctx))
        self.marker = mt.mtmd_default_marker().decode()
        if self.proj_type not in WHISPER_FAMILY:
            logger.warning("projector type %r: assuming its audio tokens cover exactly the clip", self.proj_type)

    def render_prompt(self) -> str:
        return render_prompt(self._formatter, self.marker, self.prompt)

    # ------------------------------------------------------------------------------------------ running
    def _eval_prompt(self, samples: np.ndarray) -> tuple[int, int, int, int, int]:
        lc, mt = self._lc, self._mt
        try:
            chunks = self._llm.tokenize_audio_prompt(self._mctx, self.render_prompt(), samples)
        except LlamaError as exc:
            raise CaptureError(str(exc)) from None
        try:
            n_chunks = int(mt.mtmd_input_chunks_size(chunks))
            n_past, a0, n_audio, audio_chunks, last_token = 0, -1, 0, 0, -1
            for i in range(n_chunks):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                n_tok = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
                is_audio = mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_AUDIO
                if i == n_chunks - 1 and not is_audio:
                    # the last prompt token is held back: capture_rows decodes it first, so that its row (which
                    # emits the transcript's first token) is captured, without removing it from the cache
                    # afterwards (a recurrent or hybrid memory cannot drop its last position)
                    n = ctypes.c_size_t(0)
                    toks = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    if n.value:
                        last_token = int(toks[n.value - 1])
                    for s in range(0, int(n.value) - 1, self.n_batch):
                        part = [int(toks[j]) for j in range(s, min(s + self.n_batch, int(n.value) - 1))]
                        arr = (lc.llama_token * len(part))(*part)
                        if lc.llama_decode(self._ctx, lc.llama_batch_get_one(arr, len(part))) != 0:
                            raise CaptureError(f"evaluating prompt chunk {i + 1}/{n_chunks} failed")
                    n_past += int(n.value)  # including the held-back token
                    continue
                if is_audio:
                    if a0 < 0:
                        a0 = n_past
                    elif a0 + n_audio != n_past:
                        raise CaptureError("audio chunks are not contiguous in the prompt")
                    n_audio += n_tok
                    audio_chunks += 1
                else:
                    n = ctypes.c_size_t(0)
                    toks = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    if n.value:
                        last_token = int(toks[n.value - 1])
                new_n_past = lc.llama_pos(n_past)  # in/out: text chunks add to it, media chunks set it
                rc = mt.mtmd_helper_eval_chunk_single(self._mctx, self._ctx, chunk, n_past, 0, self.n_batch,
                                                      i == n_chunks - 1, ctypes.byref(new_n_past))
                if rc != 0:
                    raise CaptureError(f"evaluating prompt chunk {i + 1}/{n_chunks} failed (code {rc})")
                n_past = int(new_n_past.value)
                if is_audio and n_past != a0 + n_audio:
                    raise CaptureError("audio positions differ from audio tokens (M-RoPE projectors are "
                                       "not supported by the profiler)")
            if a0 < 0:
                raise CaptureError("the prompt has no audio chunk")
            if last_token < 0 or mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(
                    chunks, n_chunks - 1)) == mt.MTMD_INPUT_CHUNK_TYPE_AUDIO:
                raise CaptureError("the prompt does not end with text")
        finally:
            mt.mtmd_input_chunks_free(chunks)
        return n_past, a0, n_audio, audio_chunks, last_token

    def capture_rows(self, item: CalibrationItem, forced_batch: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, ClipCapture]:
        """Run one clip; return every decode step's attention rows and the audio span of the word it emits.

        Parameters
        ----------
        item : CalibrationItem
        forced_batch : int, optional
            Tokens per llama_decode call for the teacher-forced transcript (default: the batch size).

        Returns
        -------
        rows : ndarray, float32, shape [n_steps, n_layer, n_head, n_kv]
            Row j is the attention of the step that emits transcript token j; column = position.
        spans : ndarray, int64, shape [n_steps, 2]
            [start, end) audio-token positions of the word each step emits.
        info : ClipCapture
        """
        lc = self._lc
        step = min(forced_batch or self.n_batch, self.n_batch)
        clip = load_audio(item.audio_path, self.sample_rate)
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        n_past, a0, n_audio, audio_chunks, last_token = self._eval_prompt(clip.samples)
        covered = audio_chunks * WHISPER_CHUNK_SECONDS if self.proj_type in WHISPER_FAMILY else clip.seconds
        words = item.transcript.split()
        tokens = self.tokenize_text(item.transcript)
        if not tokens:
            raise CaptureError(f"{item.audio_path}: empty transcript after tokenization")
        owner = token_words([self._piece(t) for t in tokens], words)
        spans = word_token_spans(list(item.timings), covered, n_audio, a0)
        if n_past + len(tokens) > self.n_ctx:
            raise CaptureError(f"{item.audio_path}: prompt ({n_past}) + transcript ({len(tokens)}) exceed the "
                               f"context ({self.n_ctx}); use a larger --ctx")
        # the last prompt token (held back by _eval_prompt) is decoded first: its row emits t_0
        rows = self._capture_forced([last_token] + tokens[:-1], n_past, step)
        return rows, spans[owner], ClipCapture(len(tokens), n_audio, a0, covered, n_past)

    def score_clip(self, item: CalibrationItem, acc: HitRatioAccumulator) -> ClipCapture:
        """Run one clip and add its decode steps to ``acc`` (shape [n_layer, n_head])."""
        rows, spans, info = self.capture_rows(item)
        for j in range(rows.shape[0]):
            acc.add(rows[j], (int(spans[j, 0]), int(spans[j, 1])))
        return info


class TextTeacherForcedAttention(_CapturingModel):
    """A loaded text model (no projector) whose attention rows are captured at a teacher-forced answer after a
    text prompt (the retrieval-head profile, :mod:`audiokv_edge.profiling.retrieval_heads`).

    Parameters
    ----------
    model : path
        Text model GGUF.
    n_ctx, n_batch, n_threads : int
    lora : path, optional
    """

    def chat_prompt(self, content: str, chars: tuple[int, int]) -> tuple[list[int], tuple[int, int]]:
        """Tokens of one user turn holding ``content``, chat-formatted up to the assistant's reply (as the runner
        renders a text document and its question), and the token span ``[a, b)`` of ``content[chars[0]:chars[1]]``
        in them (a token merging its first or last character with the text around it counts outside)."""
        from audiokv_edge.runtime.text_document import DocumentPrompt, document_token_span

        text = render_user_turn(self._formatter, content)
        if text.count(content) != 1:
            raise CaptureError("the model's chat template does not place the user's content exactly once")
        base = text.index(content)
        bos = self._llm.bos_text
        add_special = not (bos and text.startswith(bos))

        def tokenize(part: str) -> list[int]:
            try:
                return self._llm.tokenize(part, add_special=add_special)
            except LlamaError as exc:
                raise CaptureError(str(exc)) from None

        tokens = tokenize(text)
        where = DocumentPrompt(text, content, base + chars[0], base + chars[1])
        return tokens, document_token_span(tokenize, where, tokens)

    def capture_answer(self, prompt: list[int], answer: list[int], forced_batch: int | None = None) -> np.ndarray:
        """Evaluate ``prompt`` in a fresh cache, then force ``answer`` after it.

        Parameters
        ----------
        prompt, answer : list of int
            Token ids; the prompt holds at least one token, the answer at least one.
        forced_batch : int, optional
            Tokens per llama_decode call for the forced answer (default: the batch size).

        Returns
        -------
        ndarray, float32, shape [len(answer), n_layer, n_head, n_kv]
            Row j is the attention of the decode step that emits answer[j]; column = position (prompt token i at
            position i).
        """
        if not prompt or not answer:
            raise CaptureError("the prompt and the forced answer need at least one token each")
        if len(prompt) + len(answer) > self.n_ctx:
            raise CaptureError(f"prompt ({len(prompt)}) + answer ({len(answer)}) tokens exceed the context "
                               f"({self.n_ctx}); use a larger --ctx")
        lc = self._lc
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        if len(prompt) > 1:   # the last prompt token is held back: its row emits answer[0]
            try:
                self._llm.decode_tokens(self._ctx, prompt[:-1], 0, self.n_batch)
            except LlamaError as exc:
                raise CaptureError(str(exc)) from None
        step = min(forced_batch or self.n_batch, self.n_batch)
        return self._capture_forced([prompt[-1]] + answer[:-1], len(prompt), step)
