"""A frozen llama-architecture text model in PyTorch, read from its GGUF (quantized tensors dequantized with
gguf-py, so the weights are exactly the ones llama.cpp multiplies), for training the audio projector through it.

Only what SmolLM2 needs: RMSNorm, grouped-query attention with llama.cpp's "normal" RoPE (adjacent pairs, the
layout convert_hf_to_gguf permutes Q/K into), SwiGLU FFN, tied or untied output head.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_base: float

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return v.tobytes().decode() if v.dtype == np.uint8 else v.item()


def load_gguf(path: str | pathlib.Path, dtype=torch.bfloat16) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Config and dequantized tensors (``dtype``; norms float32) of a llama-architecture GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, this trainer supports llama (SmolLM2)")
    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        keep = torch.float32 if a.ndim == 1 else dtype
        tensors[t.name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(keep)
    cfg = LlamaConfig(
        n_layer=_field(reader, "llama.block_count"), n_embd=_field(reader, "llama.embedding_length"),
        n_head=_field(reader, "llama.attention.head_count"), n_head_kv=_field(reader, "llama.attention.head_count_kv"),
        n_ff=_field(reader, "llama.feed_forward_length"), n_vocab=tensors["token_embd.weight"].shape[0],
        rms_eps=_field(reader, "llama.attention.layer_norm_rms_epsilon"),
        rope_base=float(_field(reader, "llama.rope.freq_base")) if "llama.rope.freq_base" in reader.fields else 10000.0)
    return cfg, tensors


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama.cpp NORM rope: rotate (x[2i], x[2i+1]). x [B, H, T, D]; cos/sin [T, D/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class FrozenLlama(nn.Module):
    """Forward pass from input embeddings to logits; weights are buffers (never trained)."""

    def __init__(self, cfg: LlamaConfig, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.t = tensors
        self.embed = tensors["token_embd.weight"]
        self.head = tensors.get("output.weight", self.embed)

    def shapes(self, targets) -> dict[str, tuple[int, int]]:
        """``{target: (n_out, n_in)}`` of the named matrices (e.g. ``attn_q``), as a LoRA on them needs."""
        return {tg: tuple(self.t[f"blk.0.{tg}.weight"].shape) for tg in targets}

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, hidden_only: bool = False,
                lora=None) -> torch.Tensor:
        """x [B, T, n_embd] (embeddings) -> logits [B, T, n_vocab] (or final hidden states). ``lora``: a
        :class:`audiokv_edge.demo_model.lora.LoraAdapters` added to the matrices it covers, as llama.cpp applies
        a LoRA adapter."""
        c, t = self.cfg, self.t

        def linear(y, i, name):
            out = F.linear(y, t[f"blk.{i}.{name}.weight"])
            d = None if lora is None else lora.delta(i, name, y)
            return out if d is None else out + d

        b, n, _ = x.shape
        dh, h, hkv = c.head_dim, c.n_head, c.n_head_kv
        pos = torch.arange(n, dtype=torch.float32) if positions is None else positions.float()
        inv = c.rope_base ** (-torch.arange(0, dh, 2, dtype=torch.float32) / dh)
        ang = pos[:, None] * inv[None, :]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        for i in range(c.n_layer):
            p = f"blk.{i}."
            y = F.rms_norm(x, (c.n_embd,), t[p + "attn_norm.weight"].to(x.dtype), c.rms_eps)
            q = linear(y, i, "attn_q").view(b, n, h, dh).transpose(1, 2)
            k = linear(y, i, "attn_k").view(b, n, hkv, dh).transpose(1, 2)
            v = linear(y, i, "attn_v").view(b, n, hkv, dh).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + linear(a.transpose(1, 2).reshape(b, n, h * dh), i, "attn_output")
            y = F.rms_norm(x, (c.n_embd,), t[p + "ffn_norm.weight"].to(x.dtype), c.rms_eps)
            y = F.silu(linear(y, i, "ffn_gate")) * linear(y, i, "ffn_up")
            x = x + linear(y, i, "ffn_down")
        x = F.rms_norm(x, (c.n_embd,), t["output_norm.weight"].to(x.dtype), c.rms_eps)
        return x if hidden_only else F.linear(x, self.head)
