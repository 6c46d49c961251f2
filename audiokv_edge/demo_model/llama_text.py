"""The text model's tokenizer and chat layout through llama.cpp itself (vocab-only load), so that training uses
exactly the token ids that inference uses."""

from __future__ import annotations

import ctypes
import pathlib

from audiokv_edge.native import libs as native_libs


class LlamaText:
    """Tokenizer, detokenizer and the chat layout of audio prompts for one GGUF text model."""

    def __init__(self, model_path: str | pathlib.Path):
        self._lc = lc = native_libs.load_llama_cpp()
        mt = native_libs.load_mtmd_cpp()
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self._model = lc.llama_model_load_from_file(str(model_path).encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp cannot load {model_path}")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.eos_id = int(lc.llama_vocab_eos(self._vocab))
        self.eot_id = int(lc.llama_vocab_eot(self._vocab))
        self.bos_text = self.piece(int(lc.llama_vocab_bos(self._vocab)), special=True)
        self.marker = mt.mtmd_default_marker().decode()
        template = lc.llama_model_chat_template(self._model, None)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(template.decode(), eos_token=self.piece(self.eos_id, special=True),
                                              bos_token=self.bos_text) if template else None

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        arr = (ctypes.c_int32 * (len(raw) + 8))()
        n = self._lc.llama_tokenize(self._vocab, raw, len(raw), arr, len(arr), add_special, parse_special)
        if n < 0:
            raise ValueError(f"tokenization of {len(raw)} bytes failed ({n})")
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self.piece(i).encode("utf-8", "surrogateescape") for i in ids).decode("utf-8", "replace")

    def render(self, prompt: str) -> str:
        """The chat prompt as the runner renders it (``Session.render_prompt``): marker, newline, instruction."""
        content = f"{self.marker}\n{prompt}"
        if self._formatter is None:
            return content + "\n"
        return self._formatter(messages=[{"role": "user", "content": content}]).prompt

    def layout(self, prompt: str):
        """Token ids before and after the audio, as mtmd_tokenize splits the rendered prompt at the marker."""
        from audiokv_edge.demo_model.train import PromptLayout

        before, after = self.render(prompt).split(self.marker, 1)
        add_special = not (self.bos_text and before.startswith(self.bos_text))
        return PromptLayout(self.tokenize(before, add_special, True), self.tokenize(after, False, True))

    def close(self) -> None:
        if self._model:
            self._lc.llama_model_free(self._model)
            self._model = None
