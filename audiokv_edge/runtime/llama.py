"""One wrapper of the llama.cpp set-up: a loaded model, its contexts and audio projectors, and their teardown.

Used by :class:`~audiokv_edge.runtime.session.Session`, the profiler's
:class:`~audiokv_edge.profiling.attention_capture.TeacherForcedAttention`, the eviction tests' runner
(tests/evict_fixtures.py) and the benchmarks (scripts/bench_llama.py). The handles are the raw pointers of the
llama_cpp / mtmd_cpp low-level bindings (loaded against our build by :mod:`audiokv_edge.native.libs`), so callers
keep driving llama.cpp directly; this class only owns them and frees them in the right order.

Example::

    with LlamaModel("model.gguf") as m:
        ctx = m.new_context(ContextParams(n_ctx=4096, n_batch=512, n_threads=4))
        ...
"""

from __future__ import annotations

import ctypes
import pathlib
import threading
from dataclasses import dataclass

__all__ = ["LlamaError", "ContextParams", "LlamaModel", "init_llama_cpp", "render_prompt", "render_user_turn",
           "render_follow_up"]

_INIT_LOCK = threading.Lock()
_BACKEND_READY = False


class LlamaError(RuntimeError):
    """llama.cpp or libmtmd refused a model, a context or a projector; the message names the file."""


def init_llama_cpp():
    """The ``llama_cpp`` low-level bindings against our build, with ``llama_backend_init`` called once."""
    global _BACKEND_READY
    from audiokv_edge.native import libs as native_libs

    lc = native_libs.load_llama_cpp().llama_cpp
    with _INIT_LOCK:
        if not _BACKEND_READY:
            lc.llama_backend_init()
            _BACKEND_READY = True
    return lc


@dataclass(frozen=True)
class ContextParams:
    """The llama_context settings the package uses; everything else keeps llama.cpp's defaults.

    Parameters
    ----------
    n_ctx : int
        Context size in tokens (cells).
    n_batch : int or None
        Logical and physical batch size (n_batch = n_ubatch); None = n_ctx.
    n_seq_max : int
        Sequences the context holds.
    n_threads : int
        Threads for decoding and batches.
    flash_attn : bool or None
        Flash attention on (ENABLED) or off (DISABLED); None = llama.cpp's default (AUTO).
    type_k, type_v : int or None
        ggml type ids of the K and V caches; None = llama.cpp's default (F16).
    kv_unified : bool
        One KV buffer shared by all sequences.
    offload_kqv : bool
        llama.cpp's ``offload_kqv``: the KV cache and attention on the device of the offloaded layers (GPU builds);
        False keeps them in host memory, which per-head eviction needs (the layers may still be offloaded).
    eval_callback : ggml_backend_sched_eval_callback or None
        Called for every graph tensor (attention capture); the caller keeps it alive.
    no_perf : bool
        Skip llama.cpp's performance counters.
    """

    n_ctx: int
    n_batch: int | None = None
    n_seq_max: int = 1
    n_threads: int = 1
    flash_attn: bool | None = True
    type_k: int | None = None
    type_v: int | None = None
    kv_unified: bool = False
    offload_kqv: bool = True
    eval_callback: object = None
    no_perf: bool = False

    def __post_init__(self) -> None:
        for name in ("n_ctx", "n_seq_max", "n_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_batch is not None and (isinstance(self.n_batch, bool) or not isinstance(self.n_batch, int)
                                         or self.n_batch < 1):
            raise ValueError(f"n_batch must be an integer >= 1 or None, got {self.n_batch!r}")


class LlamaModel:
    """A GGUF text model loaded by llama.cpp, owning the contexts and audio projectors made from it.

    Parameters
    ----------
    path : str or pathlib.Path
        Text model GGUF.
    lora : str or pathlib.Path, optional
        LoRA adapter GGUF applied (scale 1) to every context made from the model, as llama.cpp's ``--lora``.
    progress_callback : llama_progress_callback, optional
        Called by the model loader; returning false cancels the load (a :class:`LlamaError`). The caller keeps it
        alive.
    mmap : bool
        Map the file (llama.cpp's default load mode, True): the weights stay a mapping of the file (fast load, page cache
        shared between processes and reclaimable), and a file truncated while the model is in use ends the process
        with SIGBUS at the next weight read beyond the new end. False reads them into memory: the loaded model no
        longer depends on the file.

    Raises
    ------
    LlamaError
        llama.cpp cannot load the file (or the load was cancelled), or the adapter does not fit the model.
    """

    def __init__(self, path: str | pathlib.Path, lora: str | pathlib.Path | None = None, *,
                 progress_callback=None, mmap: bool = True) -> None:
        self.path = pathlib.Path(path)
        self.lora_path = None if lora is None else pathlib.Path(lora)
        self.adapter = None
        self._mt = None
        self._contexts: list = []
        self._projectors: list = []
        self.model = None
        self.lc = lc = init_llama_cpp()
        mp = lc.llama_model_default_params()
        if not mmap:  # the weights read into memory, none read from the file later (no lazy tensors)
            mp.load_mode = lc.LLAMA_LOAD_MODE_NONE
            mp.lazy_mode = lc.LLAMA_LAZY_MODE_OFF
        if progress_callback is not None:
            mp.progress_callback = progress_callback
            mp.progress_callback_user_data = None
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise LlamaError(f"llama.cpp cannot load model {self.path}")
        if self.lora_path is not None:
            self.adapter = lc.llama_adapter_lora_init(self.model, str(self.lora_path).encode())
            if not self.adapter:  # freed with the model otherwise
                raise LlamaError(f"llama.cpp cannot apply LoRA adapter {self.lora_path} to model {self.path} "
                                 "(not an adapter GGUF, another architecture, or tensors of other shapes)")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_layer = int(lc.llama_model_n_layer(self.model))
        self.n_head = int(lc.llama_model_n_head(self.model))
        # llama_model_n_head_kv is layer 0's count: 0 when that layer has no attention (LFM2's short-convolution
        # layers come first), then the attention layers' count from the per-layer array
        self.n_head_kv = int(lc.llama_model_n_head_kv(self.model)) or self._attention_head_count_kv()
        self.n_embd = int(lc.llama_model_n_embd(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))

    # ------------------------------------------------------------------ handles
    def new_context(self, params: ContextParams):
        """A new ``llama_context *`` of this model, freed by :meth:`close` (or :meth:`free_context`).

        Raises
        ------
        LlamaError
            llama.cpp cannot create it (e.g. out of memory, an unsupported cache type).
        """
        lc = self.lc
        cp = lc.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = cp.n_ubatch = params.n_batch if params.n_batch is not None else params.n_ctx
        cp.n_seq_max = params.n_seq_max
        cp.n_threads = cp.n_threads_batch = params.n_threads
        if params.flash_attn is not None:
            cp.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if params.flash_attn
                                  else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if params.type_k is not None:
            cp.type_k = params.type_k
        if params.type_v is not None:
            cp.type_v = params.type_v
        cp.kv_unified = params.kv_unified
        cp.offload_kqv = params.offload_kqv
        if params.eval_callback is not None:
            cp.cb_eval = params.eval_callback
            cp.cb_eval_user_data = None
        cp.no_perf = params.no_perf
        ctx = lc.llama_init_from_model(self.model, cp)
        if not ctx:
            raise LlamaError(f"cannot create a llama.cpp context for {self.path}")
        self._contexts.append(ctx)
        if self.adapter is not None:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            if lc.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)) != 0:
                raise LlamaError(f"llama.cpp cannot apply LoRA adapter {self.lora_path} to a context")
        return ctx

    def free_context(self, ctx) -> None:
        """Free a context made by :meth:`new_context` before the model."""
        self._contexts = [c for c in self._contexts if c is not ctx]
        self.lc.llama_free(ctx)

    @property
    def mtmd(self):
        """The ``mtmd_cpp`` bindings against our build (loaded on first use)."""
        if self._mt is None:
            from audiokv_edge.native import libs as native_libs

            self._mt = native_libs.load_mtmd_cpp()
        return self._mt

    def new_projector(self, mmproj: str | pathlib.Path, *, n_threads: int, flash_attn: bool | None,
                      progress_callback=None):
        """A new ``mtmd_context *`` (the audio projector ``mmproj`` on this model, CPU, no warm-up), freed by
        :meth:`close`. ``flash_attn``: the encoder's flash attention on or off; None = libmtmd's default (AUTO: on
        where the backend supports it, decided at the first encode). ``progress_callback`` (an
        ``mtmd_progress_callback`` the caller keeps alive): false cancels the load.

        Raises
        ------
        LlamaError
            libmtmd refuses the projector for this model.
        """
        mt, lc = self.mtmd, self.lc
        mp = mt.mtmd_context_params_default()
        mp.use_gpu = False
        mp.print_timings = False
        mp.n_threads = n_threads
        mp.warmup = False
        if flash_attn is not None:
            mp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if progress_callback is not None:
            mp.progress_callback = progress_callback
            mp.progress_callback_user_data = None
        mctx = mt.mtmd_init_from_file(str(mmproj).encode(), self.model, mp)
        if not mctx:
            raise LlamaError(f"audio projector {mmproj} does not fit model {self.path}")
        self._projectors.append(mctx)
        return mctx

    # ------------------------------------------------------------------ vocabulary and prompt
    def _attention_head_count_kv(self) -> int:
        """The attention layers' KV-head count of the per-layer ``<arch>.attention.head_count_kv`` array (llama.cpp
        exposes no array metadata; read from the GGUF header), 0 when it cannot be read."""
        from audiokv_edge.profile.gguf_keys import GGUFProfileError, model_shape, open_gguf

        try:
            return model_shape(open_gguf(self.path)).n_head_kv
        except GGUFProfileError:
            return 0

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value of the model as text, None when absent."""
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def token_text(self, token: int) -> str:
        """The vocabulary text of ``token`` ("" for a negative id)."""
        if token < 0:
            return ""
        raw = self.lc.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def piece(self, token: int) -> str:
        """The detokenized text of ``token`` (llama_token_to_piece, special tokens not rendered)."""
        return self.piece_bytes(token).decode("utf-8", "replace")

    def piece_bytes(self, token: int) -> bytes:
        """The raw bytes of :meth:`piece` (a UTF-8 character may span several tokens)."""
        lc = self.lc
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    @property
    def bos_text(self) -> str:
        return self.token_text(self.lc.llama_vocab_bos(self.vocab))

    def chat_formatter(self):
        """The model's chat template as a llama_cpp ``Jinja2ChatFormatter``, None when the GGUF has none."""
        template = self.lc.llama_model_chat_template(self.model, None)
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos_text = self.token_text(self.lc.llama_vocab_eos(self.vocab))
        return Jinja2ChatFormatter(template.decode("utf-8", "replace"), eos_token=eos_text, bos_token=self.bos_text)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` (llama_tokenize): ``add_special`` adds the BOS token where the vocabulary asks for
        it, ``parse_special`` reads control-token text such as ``<|im_end|>`` as that token (as llama.cpp's server
        tokenizes a rendered chat prompt).

        Raises
        ------
        LlamaError
            llama.cpp cannot tokenize it.
        """
        lc = self.lc
        raw = text.encode("utf-8")
        capacity = len(raw) + 8  # a token covers at least one byte; room for BOS / EOS
        arr = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), arr, capacity, add_special, parse_special)
        if n < 0:
            raise LlamaError(f"llama.cpp cannot tokenize {len(raw)} bytes of text for {self.path} (code {n})")
        return list(arr[:n])

    def decode_tokens(self, ctx, tokens: list[int], pos0: int, n_batch: int) -> None:
        """Decode ``tokens`` into sequence 0 of ``ctx`` at positions ``pos0, pos0 + 1, ...``, ``n_batch`` tokens per
        ``llama_decode``; only the last token's logits are computed (what the next token is sampled from).

        Raises
        ------
        LlamaError
            llama_decode fails (the message names the position and llama.cpp's code).
        """
        lc = self.lc
        n_batch = max(1, min(n_batch, len(tokens)))
        batch = lc.llama_batch_init(n_batch, 0, 1)
        try:
            for start in range(0, len(tokens), n_batch):
                part = tokens[start:start + n_batch]
                batch.n_tokens = len(part)
                for i, token in enumerate(part):
                    batch.token[i] = int(token)
                    batch.pos[i] = pos0 + start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i == len(tokens) - 1
                rc = lc.llama_decode(ctx, batch)
                if rc != 0:
                    raise LlamaError(f"llama_decode failed at position {pos0 + start} (code {rc})")
        finally:
            lc.llama_batch_free(batch)

    def tokenize_audio_prompt(self, mctx, text: str, samples):
        """mtmd input chunks of a rendered prompt ``text`` (holding mtmd's media marker) and the mono float32
        ``samples`` at the projector's rate; the caller frees them with ``mtmd_input_chunks_free``. The BOS token is
        added unless ``text`` already starts with it (a chat template that writes it).

        Raises
        ------
        LlamaError
            libmtmd refuses the samples or the prompt.
        """
        import numpy as np

        mt = self.mtmd
        bos = self.bos_text
        add_special = not (bos and text.startswith(bos))
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        bitmap = mt.mtmd_bitmap_init_from_audio(samples.shape[0], samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if not bitmap:
            raise LlamaError("libmtmd could not take the audio samples")
        chunks = mt.mtmd_input_chunks_init()
        try:
            raw = text.encode("utf-8")
            inp = mt.mtmd_input_text(raw, len(raw), add_special, True)
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mt.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), bitmaps, 1)
        finally:
            mt.mtmd_bitmap_free(bitmap)
        if rc != 0:
            mt.mtmd_input_chunks_free(chunks)
            raise LlamaError(f"libmtmd could not tokenize the prompt (code {rc})")
        return chunks

    # ------------------------------------------------------------------ teardown
    def close_contexts(self) -> None:
        """Free the projectors, then the contexts, keeping the model (idempotent)."""
        lc = getattr(self, "lc", None)
        if lc is None:
            return
        for mctx in reversed(self._projectors):
            self._mt.mtmd_free(mctx)
        self._projectors = []
        for ctx in reversed(self._contexts):
            lc.llama_free(ctx)
        self._contexts = []

    def close(self) -> None:
        """Free the projectors, then the contexts, then the model (idempotent)."""
        lc = getattr(self, "lc", None)
        if lc is None:
            return
        self.close_contexts()
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
        self.model = None

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_prompt(formatter, marker: str, prompt: str) -> str:
    """The chat-formatted user turn: the media ``marker`` (where the audio goes), a newline, then ``prompt``; plain
    text with a trailing newline when the model has no chat template (``formatter`` None)."""
    return render_user_turn(formatter, f"{marker}\n{prompt}")


def render_user_turn(formatter, content: str) -> str:
    """A conversation of one user turn holding ``content``, chat-formatted up to the assistant's reply (the model's
    template from its GGUF); ``content`` with a trailing newline when the model has no chat template (``formatter``
    None)."""
    return _render_chat(formatter, [{"role": "user", "content": content}])


def render_follow_up(formatter, messages: list[dict], reply: str, question: str) -> str:
    """The text that continues a rendered conversation with a new user turn: ``messages`` (``{"role", "content"}``
    dicts, rendered up to the assistant's reply) were answered with ``reply``; the result follows the prompt of
    ``messages`` + ``reply`` (the end of the assistant's turn, the user turn with ``question``, the assistant's
    header).

    Raises
    ------
    ValueError
        The template does not render the longer conversation as an extension of the shorter one (it rewrites
        earlier turns), so a cache holding the earlier turns cannot be continued.
    """
    before = _render_chat(formatter, messages) + reply
    after = _render_chat(formatter, [*messages, {"role": "assistant", "content": reply},
                                     {"role": "user", "content": question}])
    if not after.startswith(before):
        raise ValueError("the chat template renders the follow-up conversation with different earlier turns, so "
                         "the cached turns cannot be continued")
    return after[len(before):]


def _render_chat(formatter, messages: list[dict]) -> str:
    """``messages`` chat-formatted up to the assistant's reply; without a template (``formatter`` None) each
    message's content and a newline."""
    if formatter is None:
        return "".join(m["content"] + "\n" for m in messages)
    return formatter(messages=messages).prompt
