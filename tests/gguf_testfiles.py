"""Small GGUF files written with gguf-py for the head-profile tests (no weights downloaded)."""

from __future__ import annotations

import struct

import numpy as np
from gguf import GGUFWriter


def write_tiny_gguf(path, n_layer: int = 3, n_head: int = 4, n_head_kv: int = 2, n_embd: int = 16,
                    seed: int = 0, extra_kv: dict | None = None, alignment: int | None = None,
                    head_count_kv_array: list[int] | None = None) -> dict:
    """Write a qwen2-like GGUF with random f32/f16 tensors; return {tensor name: array} written.

    Only metadata and tensor bytes matter here: the file is parsed, not run.
    """
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "qwen2")
    if alignment is not None:
        w.data_alignment = alignment
        w.add_custom_alignment(alignment)
    w.add_name("tiny-test")
    w.add_block_count(n_layer)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(2 * n_embd)
    w.add_head_count(n_head)
    if head_count_kv_array is not None:
        w.add_head_count_kv(head_count_kv_array)
    else:
        w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("test")
    w.add_token_list([f"t{i}" for i in range(7)])
    for k, v in (extra_kv or {}).items():
        w.add_string(k, v)
    tensors = {"token_embd.weight": rng.standard_normal((7, n_embd)).astype(np.float32)}
    for il in range(n_layer):
        tensors[f"blk.{il}.attn_q.weight"] = rng.standard_normal((n_embd, n_embd)).astype(np.float16)
        tensors[f"blk.{il}.attn_norm.weight"] = rng.standard_normal(n_embd).astype(np.float32)
    tensors["output_norm.weight"] = rng.standard_normal(n_embd + 3).astype(np.float32)  # odd size: padding
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def patch_u32(path, key: str, value: int) -> None:
    """Overwrite the UINT32 value of metadata key ``key`` of the GGUF file at ``path`` in place."""
    data = bytearray(path.read_bytes())
    kb = key.encode()
    i = data.index(struct.pack("<Q", len(kb)) + kb)
    off = i + 8 + len(kb) + 4
    data[off:off + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))
