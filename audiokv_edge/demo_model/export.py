"""Assembly of the built-in demo model from its parts: the pip packages' pretrained weights plus the committed
trained projector and LoRA (and head profile), checked by sha256 at every step.

    audiokv_edge/data/demo/projector.npz     trained projector, float16 (committed)
    audiokv_edge/data/demo/lora.npz          trained LoRA on the text model's attention, float16 (committed, optional)
    audiokv_edge/data/demo/profile.json      AudioKV head profile of the demo model (committed, optional)
    audiokv_edge/data/demo/SHA256SUMS        sha256 of the inputs and of the assembled files

Output (``build/demo`` of the checkout, or ``$AUDIOKV_EDGE_DEMO_DIR``): ``mmproj.gguf`` (Whisper tiny.en encoder +
projector, libmtmd ultravox), ``model.gguf`` (SmolLM2-135M-Instruct Q4_1 with the head profile stored, or the
model file itself when no profile is committed yet) and ``lora.gguf`` (a llama.cpp LoRA adapter, applied at load
time as ``--lora``; kept separate because re-quantizing the merged weights to Q4_1 would erase the small update).
"""

from __future__ import annotations

import hashlib
import dataclasses
import logging
import os
import pathlib

import numpy as np

from audiokv_edge.demo_model import ct2, mmproj

logger = logging.getLogger(__name__)

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo"
PROJECTOR = DATA / "projector.npz"
LORA = DATA / "lora.npz"
PROFILE = DATA / "profile.json"
SUMS = DATA / "SHA256SUMS"
REPO_DEMO_DIR = pathlib.Path(__file__).resolve().parents[2] / "build" / "demo"


class DemoModelError(RuntimeError):
    """The demo model's parts are missing or do not match their recorded sha256."""


@dataclasses.dataclass(frozen=True)
class DemoFiles:
    """The assembled demo model: text model, audio projector, and LoRA adapter (None when none is committed)."""

    model: pathlib.Path
    mmproj: pathlib.Path
    lora: pathlib.Path | None = None


def sha256(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sums(path: pathlib.Path | None = None) -> dict[str, str]:
    """``{name: sha256}`` from a ``sha256sum``-style file (default: SHA256SUMS)."""
    path = SUMS if path is None else path
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                digest, name = line.split(maxsplit=1)
                out[name.strip().lstrip("*")] = digest
    return out


def demo_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AUDIOKV_EDGE_DEMO_DIR", REPO_DEMO_DIR))


def demo_paths() -> DemoFiles:
    """The assembled demo model's files; DemoModelError when set-up has not built them."""
    d = demo_dir()
    files = DemoFiles(d / "model.gguf", d / "mmproj.gguf", d / "lora.gguf" if LORA.is_file() else None)
    if not all(p.is_file() for p in (files.model, files.mmproj, files.lora) if p is not None):
        raise DemoModelError(f"the demo model is not assembled in {d}: run `bash scripts/setup.sh`")
    return files


def _check(name: str, path: pathlib.Path, sums: dict[str, str]) -> str:
    digest = sha256(path)
    if name in sums and sums[name] != digest:
        raise DemoModelError(f"{path}: sha256 {digest} differs from the recorded {sums[name]} ({name} in {SUMS})")
    return digest


def assemble(out_dir: str | pathlib.Path | None = None, *, text_model: str | pathlib.Path | None = None,
             record: bool = False) -> DemoFiles:
    """Build ``model.gguf``, ``mmproj.gguf`` (and ``lora.gguf``) in ``out_dir`` (default :func:`demo_dir`), checking every input and
    output against SHA256SUMS (``record=True`` rewrites SHA256SUMS instead, after training). Files already there
    with the recorded sha256 are kept."""
    from audiokv_edge.testing import real_models

    out = pathlib.Path(out_dir) if out_dir is not None else demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    sums = {} if record else read_sums()
    if not PROJECTOR.is_file():
        raise DemoModelError(f"{PROJECTOR} is missing (trained by scripts/train_demo_model.py)")
    text_model = pathlib.Path(text_model) if text_model else real_models.smollm2_q4_1_path()
    whisper = ct2.whisper_tiny_en_path()
    digests = {"projector.npz": _check("projector.npz", PROJECTOR, sums),
               "whisper-tiny.en/model.bin": _check("whisper-tiny.en/model.bin", whisper, sums),
               "SmolLM2-135M-Instruct.Q4_1.gguf": _check("SmolLM2-135M-Instruct.Q4_1.gguf", text_model, sums)}
    proj_path, model_path = out / "mmproj.gguf", out / "model.gguf"
    if not (proj_path.is_file() and sums.get("mmproj.gguf") == sha256(proj_path)):
        arrays = mmproj.read_projector_npz(PROJECTOR)
        mmproj.write_mmproj(proj_path, ct2.whisper_encoder(whisper), arrays, n_embd_text=576)
    digests["mmproj.gguf"] = _check("mmproj.gguf", proj_path, sums)
    lora_path = None
    if LORA.is_file():
        from audiokv_edge.demo_model.lora_gguf import write_lora_npz_gguf

        digests["lora.npz"] = _check("lora.npz", LORA, sums)
        lora_path = out / "lora.gguf"
        if not (lora_path.is_file() and sums.get("lora.gguf") == sha256(lora_path)):
            write_lora_npz_gguf(LORA, lora_path)
        digests["lora.gguf"] = _check("lora.gguf", lora_path, sums)
    if PROFILE.is_file():
        digests["profile.json"] = _check("profile.json", PROFILE, sums)
        if not (model_path.is_file() and sums.get("model.gguf") == sha256(model_path)):
            from audiokv_edge.profile.gguf_keys import write_profile
            from audiokv_edge.profile.side_file import load_profile_file

            profile, defaults = load_profile_file(PROFILE)
            if model_path.is_symlink():  # assembled before a profile existed: a link to the pip package's file
                model_path.unlink()
            write_profile(text_model, profile, model_path, defaults)
    elif not (model_path.is_symlink() and model_path.resolve() == text_model.resolve()):
        tmp = model_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(text_model.resolve())  # no profile yet: the pip package's file itself
        os.replace(tmp, model_path)
    digests["model.gguf"] = _check("model.gguf", model_path, sums)
    if record:
        SUMS.write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    logger.info("demo model assembled in %s", out)
    return DemoFiles(model_path, proj_path, lora_path)
