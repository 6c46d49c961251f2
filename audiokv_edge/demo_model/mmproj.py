"""Write the demo model's audio projector file: Whisper tiny.en's encoder (from CTranslate2 weights) and a trained
Ultravox projector as a libmtmd ``clip`` GGUF of projector type ``ultravox``.

Stack factor 4: 1500 encoder frames per 30 s window -> 375 audio tokens, 12.5 per second (Qwen2.5-Omni: 25; the
vendored libmtmd mis-sizes stack 8, see ``session.stacked_projector_problem``). The file is written to a temporary
file beside the target and renamed, so an interrupted export never leaves a partial GGUF.
"""

from __future__ import annotations

import pathlib

import numpy as np

from audiokv_edge.demo_model.gguf_out import atomic_gguf_writer

STACK_FACTOR = 4
PROJECTOR_HIDDEN = 1024
PROJECTOR_KEYS = ("mm.a.norm_pre.weight", "mm.a.mlp.1.weight", "mm.a.norm_mid.weight", "mm.a.mlp.2.weight")


def read_projector_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The projector arrays of a trained projector saved as ``.npz``, as float32; ValueError naming the problem."""
    from audiokv_edge.profile.side_file import read_npz

    arrays = read_npz(path, "projector weights")
    for k, a in arrays.items():
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise ValueError(f"{path}: projector tensor {k} is {a.dtype}: expected real numbers")
    return {k: a.astype(np.float32) for k, a in arrays.items()}


def check_projector(projector: dict[str, np.ndarray], d_encoder: int, n_embd_text: int,
                    stack: int = STACK_FACTOR) -> int:
    """Validate the projector arrays' names and shapes; returns the hidden width. ValueError naming the problem."""
    missing = [k for k in PROJECTOR_KEYS if k not in projector]
    if missing:
        raise ValueError(f"projector weights lack {', '.join(missing)}")
    for k in PROJECTOR_KEYS:
        a = projector[k]
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a) or a.ndim not in (1, 2):
            raise ValueError(f"projector tensor {k} is {a.dtype} of shape {tuple(a.shape)}: expected a real vector "
                             f"or matrix")
    ds = d_encoder * stack
    hidden = projector["mm.a.norm_mid.weight"].shape[0]
    want = {"mm.a.norm_pre.weight": (ds,), "mm.a.mlp.1.weight": (2 * hidden, ds),
            "mm.a.norm_mid.weight": (hidden,), "mm.a.mlp.2.weight": (n_embd_text, hidden)}
    for k, shape in want.items():
        if tuple(projector[k].shape) != shape:
            raise ValueError(f"projector tensor {k} has shape {tuple(projector[k].shape)}, expected {shape} "
                             f"(encoder width {d_encoder}, stack {stack}, text model width {n_embd_text})")
        if not np.all(np.isfinite(projector[k])):
            raise ValueError(f"projector tensor {k} holds NaN or Inf")
    return hidden


def write_mmproj(path: str | pathlib.Path, encoder: dict[str, np.ndarray], projector: dict[str, np.ndarray],
                 n_embd_text: int, *, stack: int = STACK_FACTOR, name: str = "audiokv-edge demo audio projector"
                 ) -> pathlib.Path:
    """Write ``path`` (atomically) from :func:`audiokv_edge.demo_model.ct2.whisper_encoder` arrays and projector
    arrays (numpy layout [out, in]).

    Conv kernels are F16 (libmtmd's conv path), everything else F32.
    """
    path = pathlib.Path(path)
    d = encoder["conv1.bias"].shape[0]
    n_mel = encoder["conv1.weight"].shape[1]
    n_layer, n_head = int(encoder["n_layer"]), int(encoder["n_head"])
    check_projector(projector, d, n_embd_text, stack)
    with atomic_gguf_writer(path, "clip") as w:
        w.add_name(name)
        w.add_description("Whisper tiny.en encoder (MIT) + Ultravox-style projector trained by audiokv-edge "
                          "for SmolLM2-135M-Instruct")
        w.add_file_type(1)
        w.add_bool("clip.has_audio_encoder", True)
        w.add_bool("clip.has_vision_encoder", False)
        w.add_bool("clip.use_gelu", True)
        w.add_string("clip.projector_type", "ultravox")
        w.add_uint32("clip.audio.embedding_length", d)
        w.add_uint32("clip.audio.feed_forward_length", encoder["blk.0.ffn_up.bias"].shape[0])
        w.add_uint32("clip.audio.block_count", n_layer)
        w.add_uint32("clip.audio.projection_dim", n_embd_text)
        w.add_uint32("clip.audio.attention.head_count", n_head)
        w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
        w.add_uint32("clip.audio.num_mel_bins", n_mel)
        w.add_uint32("clip.audio.projector.stack_factor", stack)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        w.add_tensor("a.conv1d.1.weight", np.ascontiguousarray(encoder["conv1.weight"], dtype=np.float16))
        w.add_tensor("a.conv1d.1.bias", f32(encoder["conv1.bias"]).reshape(d, 1))
        w.add_tensor("a.conv1d.2.weight", np.ascontiguousarray(encoder["conv2.weight"], dtype=np.float16))
        w.add_tensor("a.conv1d.2.bias", f32(encoder["conv2.bias"]).reshape(d, 1))
        w.add_tensor("a.position_embd.weight", f32(encoder["pos"]))
        for i in range(n_layer):
            for suffix in ("ln1.weight", "ln1.bias", "attn_q.weight", "attn_q.bias", "attn_k.weight",
                           "attn_v.weight", "attn_v.bias", "attn_out.weight", "attn_out.bias", "ln2.weight",
                           "ln2.bias", "ffn_up.weight", "ffn_up.bias", "ffn_down.weight", "ffn_down.bias"):
                w.add_tensor(f"a.blk.{i}.{suffix}", f32(encoder[f"blk.{i}.{suffix}"]))
        w.add_tensor("a.post_ln.weight", f32(encoder["ln_post.weight"]))
        w.add_tensor("a.post_ln.bias", f32(encoder["ln_post.bias"]))
        for k in PROJECTOR_KEYS:
            w.add_tensor(k, f32(projector[k]))
    return path
