"""A LoRA on the frozen text model's attention projections, trained with the audio projector.

For each layer and each target matrix W (``attn_q``, ``attn_v`` by default, or any of :data:`ALL_TARGETS`;
llama.cpp's GGUF layout [out, in]) the
adapted layer computes ``y W^T + (alpha / rank) (y A^T) B^T`` with A [rank, in] and B [out, rank]. B starts at zero,
so adding a LoRA to a trained projector changes nothing until it learns. The exported arrays carry llama.cpp's
adapter tensor names (``blk.N.attn_q.weight.lora_a`` / ``.lora_b``), written by :mod:`.lora_gguf`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

DEFAULT_TARGETS = ("attn_q", "attn_v")
ALL_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class LoraAdapters(nn.Module):
    """LoRA pairs for ``targets`` of every layer: ``shapes[target] = (n_out, n_in)``."""

    def __init__(self, n_layer: int, shapes: dict[str, tuple[int, int]], rank: int = 8, alpha: float = 16.0,
                 seed: int = 0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank, self.alpha, self.n_layer = rank, float(alpha), n_layer
        self.targets = tuple(shapes)
        g = torch.Generator().manual_seed(seed)
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for i in range(n_layer):
            for t, (n_out, n_in) in shapes.items():
                key = f"{i}_{t}"
                self.a[key] = nn.Parameter(torch.randn(rank, n_in, generator=g) / math.sqrt(n_in))
                self.b[key] = nn.Parameter(torch.zeros(n_out, rank))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, layer: int, target: str, y: torch.Tensor) -> torch.Tensor | None:
        """The LoRA term added to ``y W^T`` of ``target`` in ``layer`` (None when that matrix has no LoRA)."""
        key = f"{layer}_{target}"
        if key not in self.a:
            return None
        a, b = self.a[key].to(y.dtype), self.b[key].to(y.dtype)
        return (y @ a.t()) @ b.t() * self.scale

    def param_keys(self) -> list[str]:
        """Names of :meth:`parameters` in their order (``a.<layer>_<target>`` then ``b.<layer>_<target>``)."""
        return [name for name, _ in self.named_parameters()]

    def load_exported(self, arrays: dict[str, np.ndarray]) -> list[str]:
        """Load the pairs of :meth:`export`'s layout (e.g. a committed ``lora.npz``; an ``alpha`` entry is
        ignored). Pairs this adapter has but ``arrays`` lacks keep their initial values (B = 0: no change to the
        model); returns their keys. A pair in ``arrays`` that this adapter lacks, or of another shape, is an error."""
        names = {f"blk.{i}.{t}.weight.lora_{ab}": (ab, f"{i}_{t}")
                 for i in range(self.n_layer) for t in self.targets for ab in ("a", "b")}
        if "alpha" in arrays and float(arrays["alpha"]) != self.alpha:
            raise ValueError(f"LoRA arrays were trained with alpha {float(arrays['alpha'])}, this adapter has {self.alpha}")
        extra = sorted(k for k in arrays if k != "alpha" and k not in names)
        if extra:
            raise ValueError(f"LoRA arrays {extra[:4]} are not among this adapter's targets {self.targets}")
        with torch.no_grad():
            for name, (ab, key) in names.items():
                if name not in arrays:
                    continue
                param = (self.a if ab == "a" else self.b)[key]
                value = torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))
                if value.shape != param.shape:
                    raise ValueError(f"LoRA array {name} has shape {tuple(value.shape)}, the adapter "
                                     f"{tuple(param.shape)}")
                param.copy_(value)
        return sorted({key for name, (_, key) in names.items() if name not in arrays})

    def export(self) -> dict[str, np.ndarray]:
        """``{tensor name: float32 array}`` under llama.cpp's adapter names: lora_a [rank, in], lora_b [out, rank]."""
        out = {}
        for i in range(self.n_layer):
            for t in self.targets:
                key = f"{i}_{t}"
                out[f"blk.{i}.{t}.weight.lora_a"] = self.a[key].detach().float().cpu().numpy()
                out[f"blk.{i}.{t}.weight.lora_b"] = self.b[key].detach().float().cpu().numpy()
        return out
