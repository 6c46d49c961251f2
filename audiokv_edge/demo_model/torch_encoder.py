"""PyTorch twins of libmtmd's Whisper encoder (``tools/mtmd/models/whisper-enc.cpp``) and Ultravox projector, for
training (torch is imported here only; the runtime never imports this module).

The encoder is frozen and its outputs cached; the projector is what is trained. Shapes follow libmtmd: a window is
[n_mel, 3000] mel frames -> [1500, d] encoder states -> [375, d * stack] stacked -> [375, n_embd_text].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class WhisperEncoder(nn.Module):
    """Conv stem (k3 s1, k3 s2, GELU erf), learned positions, pre-norm blocks, final LayerNorm."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.n_layer = int(weights["n_layer"])
        self.n_head = int(weights["n_head"])
        self.w = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items() if v.ndim > 0}

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mel, 3000] -> states [B, 1500, d]."""
        w = self.w
        x = F.gelu(F.conv1d(mel, w["conv1.weight"], w["conv1.bias"], padding=1))
        x = F.gelu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))
        x = x.transpose(1, 2) + w["pos"][: x.shape[2]]
        b, n, d = x.shape
        h, dh = self.n_head, d // self.n_head
        for i in range(self.n_layer):
            p = f"blk.{i}."
            y = F.layer_norm(x, (d,), w[p + "ln1.weight"], w[p + "ln1.bias"], 1e-5)
            q = F.linear(y, w[p + "attn_q.weight"], w[p + "attn_q.bias"]).view(b, n, h, dh).transpose(1, 2)
            k = F.linear(y, w[p + "attn_k.weight"]).view(b, n, h, dh).transpose(1, 2)
            v = F.linear(y, w[p + "attn_v.weight"], w[p + "attn_v.bias"]).view(b, n, h, dh).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            x = x + F.linear(a, w[p + "attn_out.weight"], w[p + "attn_out.bias"])
            y = F.layer_norm(x, (d,), w[p + "ln2.weight"], w[p + "ln2.bias"], 1e-5)
            y = F.gelu(F.linear(y, w[p + "ffn_up.weight"], w[p + "ffn_up.bias"]), approximate="tanh")  # ggml_gelu
            x = x + F.linear(y, w[p + "ffn_down.weight"], w[p + "ffn_down.bias"])
        return F.layer_norm(x, (d,), w["ln_post.weight"], w["ln_post.bias"], 1e-5)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class UltravoxProjector(nn.Module):
    """Stack ``stack`` frames -> RMSNorm -> Linear(2 * hidden) -> SwiGLU with the halves swapped (silu of the
    SECOND half times the first) -> RMSNorm -> Linear(n_out). No biases, RMSNorm eps 1e-6 (libmtmd's graph)."""

    def __init__(self, d_in: int, stack: int, hidden: int, n_out: int, seed: int = 0):
        super().__init__()
        self.stack = stack
        g = torch.Generator().manual_seed(seed)
        ds = d_in * stack
        self.norm_pre = nn.Parameter(torch.ones(ds))
        self.mlp1 = nn.Parameter(torch.randn(2 * hidden, ds, generator=g) / math.sqrt(ds))
        self.norm_mid = nn.Parameter(torch.ones(hidden))
        self.mlp2 = nn.Parameter(torch.randn(n_out, hidden, generator=g) / math.sqrt(hidden))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states [B, n, d] (n divisible by stack after zero padding) -> [B, ceil(n / stack), n_out]."""
        b, n, d = states.shape
        pad = (-n) % self.stack
        if pad:
            states = F.pad(states, (0, 0, 0, pad))
        x = states.reshape(b, (n + pad) // self.stack, d * self.stack)
        x = rms_norm(x, self.norm_pre)
        a, g = F.linear(x, self.mlp1).chunk(2, dim=-1)
        x = rms_norm(a * F.silu(g), self.norm_mid)
        return F.linear(x, self.mlp2)

    def export(self) -> dict[str, np.ndarray]:
        """Weights under the mmproj GGUF's tensor names, float32, numpy layout [out, in]."""
        t = {"mm.a.norm_pre.weight": self.norm_pre, "mm.a.mlp.1.weight": self.mlp1,
             "mm.a.norm_mid.weight": self.norm_mid, "mm.a.mlp.2.weight": self.mlp2}
        return {k: v.detach().float().cpu().numpy() for k, v in t.items()}

    def load_exported(self, arrays: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            self.norm_pre.copy_(torch.from_numpy(arrays["mm.a.norm_pre.weight"]))
            self.mlp1.copy_(torch.from_numpy(arrays["mm.a.mlp.1.weight"]))
            self.norm_mid.copy_(torch.from_numpy(arrays["mm.a.norm_mid.weight"]))
            self.mlp2.copy_(torch.from_numpy(arrays["mm.a.mlp.2.weight"]))
