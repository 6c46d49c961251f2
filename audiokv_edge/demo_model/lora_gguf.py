"""Write a LoRA adapter GGUF that llama.cpp applies at load time (``llama_adapter_lora_init``, ``--lora``).

Keys: ``general.type = "adapter"``, ``general.architecture`` (must equal the base model's), ``adapter.type =
"lora"``, ``adapter.lora.alpha`` (llama.cpp scales by alpha / rank). Tensors ``blk.N.<target>.weight.lora_a``
(numpy [rank, in]) and ``.lora_b`` ([out, rank]), float32 or float16. Written to a temporary file beside the
target and renamed: an interrupted write never leaves a partial adapter.
"""

from __future__ import annotations

import pathlib

import numpy as np

from audiokv_edge.demo_model.gguf_out import atomic_gguf_writer


def _real(a: np.ndarray) -> bool:
    """A real-number array (integers or floats; not bool, complex, strings or objects)."""
    return np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)


def check_lora(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]] | None = None) -> int:
    """Validate pairs, ranks and (when ``shapes[target] = (out, in)`` is given) shapes; returns the rank."""
    names = sorted(arrays)
    if not names:
        raise ValueError("LoRA weights are empty")
    rank = None
    for name in names:
        if not name.endswith((".lora_a", ".lora_b")):
            raise ValueError(f"LoRA tensor {name!r} is neither a lora_a nor a lora_b")
        a_name, b_name = name[:-1] + "a", name[:-1] + "b"
        if a_name not in arrays or b_name not in arrays:
            raise ValueError(f"LoRA tensor {name!r} lacks its pair")
        a, b = arrays[a_name], arrays[b_name]
        if not (_real(a) and _real(b)):
            raise ValueError(f"LoRA pair {name[:-7]} is {a.dtype} / {b.dtype}: expected real numbers")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA pair {name[:-7]} has shapes {a.shape} / {b.shape}: expected [r, in] / [out, r]")
        if rank is None:
            rank = a.shape[0]
        elif a.shape[0] != rank:
            raise ValueError(f"LoRA pair {name[:-7]} has rank {a.shape[0]}, others {rank}")
        if shapes is not None:
            target = name.split(".")[2]
            if target not in shapes or (b.shape[0], a.shape[1]) != tuple(shapes[target]):
                raise ValueError(f"LoRA pair {name[:-7]} is [{b.shape[0]}, {a.shape[1]}], the model's "
                                 f"{target} is {shapes.get(target)}")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise ValueError(f"LoRA pair {name[:-7]} holds NaN or Inf")
    return int(rank)


def write_lora_gguf(path: str | pathlib.Path, arrays: dict[str, np.ndarray], alpha: float, *,
                    architecture: str = "llama", name: str = "audiokv-edge demo LoRA") -> pathlib.Path:
    """Write ``arrays`` (see :func:`check_lora`) as a llama.cpp LoRA adapter; returns the path."""
    import gguf

    check_lora(arrays)
    with atomic_gguf_writer(path, architecture) as w:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for key in sorted(arrays):
            a = arrays[key]
            w.add_tensor(key, np.ascontiguousarray(a if a.dtype == np.float16 else a.astype(np.float32)))
    return path


def write_lora_npz_gguf(npz: str | pathlib.Path, path: str | pathlib.Path, **kw) -> pathlib.Path:
    """Write the adapter GGUF of a trained LoRA saved as ``.npz`` (its tensors plus a scalar ``alpha``)."""
    from audiokv_edge.profile.side_file import read_npz

    arrays = read_npz(npz, "LoRA weights")
    alpha = arrays.pop("alpha", None)
    if alpha is None:
        raise ValueError(f"{npz}: no 'alpha' in the LoRA weights")
    if alpha.size != 1 or not _real(alpha) or not np.isfinite(alpha).all():
        raise ValueError(f"{npz}: 'alpha' must be one finite number, got {alpha.dtype} {alpha.shape}")
    return write_lora_gguf(path, arrays, float(alpha.reshape(())), **kw)
