#!/usr/bin/env python3
"""atheris (libFuzzer for Python) harnesses of the parsers that read files from anywhere.

Targets (``python scripts/fuzz_python.py TARGET [libFuzzer options and corpus directories]``):

- ``gguf_profile``: any bytes as a GGUF: the header parser (``profile.gguf_header``), the stored head-profile
  reader (``gguf_keys.read_stored``, ``model_shape``) and, where the model shape reads, the profile writer
  (``write_profile``: a written copy must read back with the same profile; a refused one leaves no file).
- ``profile_file``: any bytes as a head-profile side file, ``.json`` or ``.npz`` (``side_file.load_profile_file``).
- ``audio``: any bytes as ``.wav`` / ``.flac`` / ``.ogg`` / ``.mp3`` (the first byte picks) through
  ``runtime.audio.load_audio``.
- ``demo_weights``: any bytes as the demo model's ``lora.npz`` (``write_lora_npz_gguf``: an adapter GGUF or a clear
  error and no file) and ``projector.npz`` (``check_projector``).

A finding is any exception but the target's documented error (``GGUFProfileError``, ``ValueError``, ``AudioError``)
or such an error whose message is not one line; atheris then stores the input as ``crash-*`` and exits non-zero.
``scripts/fuzz.sh`` runs every target for a bounded time; ``run_inputs`` replays inputs without atheris (the
regression tests in tests/test_fuzz_harnesses.py use it). ``--make-seeds`` (re)writes the committed seed corpora,
tests/data/fuzz/<target>/ and libaudiokv/fuzz/corpus/<target>/, from the project's own test files.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "tests" / "data" / "fuzz"
C_SEEDS = REPO / "libaudiokv" / "fuzz" / "corpus"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class Finding(AssertionError):
    """The target broke its contract on an input (not a clear one-line error)."""


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    if not text.strip() or "\n" in text.strip():
        raise Finding(f"{type(exc).__name__} without a one-line message: {text!r}") from exc


class Workdir:
    """A private directory reused by every input of one process."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="audiokv-fuzz-"))

    def file(self, name: str, data: bytes) -> Path:
        p = self.path / name
        p.write_bytes(data)
        return p

    def leftovers(self, keep: set[str]) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if n not in keep)

    def clear(self) -> None:
        for n in os.listdir(self.path):
            (self.path / n).unlink()


# ---------------------------------------------------------------------------------------------- targets
def target_gguf_profile(data: bytes, work: Workdir) -> None:
    from audiokv_edge.profile.gguf_keys import GGUFProfileError, model_shape, open_gguf, read_stored, write_profile
    from audiokv_edge.profile.head_profile import HeadProfile

    work.clear()
    src = work.file("model.gguf", data)
    try:
        read_stored(src)
    except GGUFProfileError as exc:
        _one_line(exc)
    try:
        shape = model_shape(open_gguf(src))
    except GGUFProfileError as exc:
        _one_line(exc)
        return
    if shape.n_layer * shape.n_head_kv > 4096:
        return
    profile = HeadProfile(np.linspace(1.0, 2.0, shape.n_layer * shape.n_head_kv).reshape(shape.n_layer,
                                                                                           shape.n_head_kv),
                          source={"calibration": "fuzz"})
    dst = work.path / "out.gguf"
    try:
        write_profile(src, profile, dst)
    except GGUFProfileError as exc:
        _one_line(exc)
        if work.leftovers({"model.gguf"}):
            raise Finding(f"a refused write left {work.leftovers({'model.gguf'})}") from exc
        return
    back, _ = read_stored(dst)
    if back is None or not np.array_equal(back.scores, profile.scores.astype(np.float32)):
        raise Finding("the written profile does not read back")
    if src.read_bytes() != data:
        raise Finding("write_profile changed its input")


def target_profile_file(data: bytes, work: Workdir) -> None:
    from audiokv_edge.profile.side_file import load_profile_file

    work.clear()
    suffix = ".npz" if data[:1] and data[0] & 1 else ".json"
    path = work.file("profile" + suffix, data[1:])
    try:
        load_profile_file(path)
    except ValueError as exc:
        _one_line(exc)


def target_audio(data: bytes, work: Workdir) -> None:
    from audiokv_edge.runtime.audio import AudioError, load_audio

    work.clear()
    suffix = AUDIO_SUFFIXES[data[0] % len(AUDIO_SUFFIXES)] if data else ".wav"
    path = work.file("audio" + suffix, data[1:])
    try:
        clip = load_audio(path, 16000)
    except AudioError as exc:
        _one_line(exc)
        return
    if clip.samples.dtype != np.float32 or clip.samples.ndim != 1 or clip.samples.size == 0 \
            or not np.all(np.isfinite(clip.samples)):
        raise Finding(f"load_audio returned {clip.samples.dtype} {clip.samples.shape} with non-finite samples")


def target_demo_weights(data: bytes, work: Workdir) -> None:
    from audiokv_edge.demo_model.lora_gguf import write_lora_npz_gguf
    from audiokv_edge.demo_model.mmproj import check_projector, read_projector_npz
    from audiokv_edge.profile.gguf_header import GGUFHeader

    work.clear()
    npz = work.file("weights.npz", data)
    out = work.path / "lora.gguf"
    try:
        write_lora_npz_gguf(npz, out)
    except ValueError as exc:
        _one_line(exc)
        if work.leftovers({"weights.npz"}):
            raise Finding(f"a refused LoRA left {work.leftovers({'weights.npz'})}") from exc
    else:
        GGUFHeader(out)  # a written adapter is a well-formed GGUF
    try:
        check_projector(read_projector_npz(npz), 8, 16, 2)
    except ValueError as exc:
        _one_line(exc)


TARGETS: dict[str, Callable[[bytes, Workdir], None]] = {
    "gguf_profile": target_gguf_profile,
    "profile_file": target_profile_file,
    "audio": target_audio,
    "demo_weights": target_demo_weights,
}


def run_inputs(target: str, inputs) -> int:
    """Run ``target`` on every bytes object of ``inputs`` without atheris; returns how many ran (a Finding or any
    unexpected exception propagates)."""
    work = Workdir()
    n = 0
    try:
        for data in inputs:
            TARGETS[target](data, work)
            n += 1
    finally:
        work.clear()
        os.rmdir(work.path)
    return n


def fuzz(target: str, argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        import audiokv_edge.demo_model.lora_gguf  # noqa: F401
        import audiokv_edge.demo_model.mmproj  # noqa: F401
        import audiokv_edge.profile.gguf_header  # noqa: F401
        import audiokv_edge.profile.gguf_keys  # noqa: F401
        import audiokv_edge.profile.side_file  # noqa: F401
        import audiokv_edge.runtime.audio  # noqa: F401
    work = Workdir()
    fn = TARGETS[target]
    atheris.Setup([sys.argv[0], *argv], lambda data: fn(data, work))
    atheris.Fuzz()


# ---------------------------------------------------------------------------------------------- seed corpora
def _write(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def gguf_head(path: Path, keep_data: int = 64) -> bytes:
    """A GGUF's header, metadata and tensor table with the first ``keep_data`` bytes of its tensor data (a small,
    truncated but parseable seed)."""
    from audiokv_edge.profile.gguf_header import GGUFHeader

    header = GGUFHeader(path)
    with open(path, "rb") as f:
        return f.read(header.data_offset + keep_data)


def make_seeds() -> None:
    """Seeds from the project's own files: a tiny test model with and without a stored profile, the demo profile,
    the shipped speech clips, the golden plan vectors."""
    import soundfile

    from audiokv_edge.profile.gguf_keys import write_profile
    from audiokv_edge.profile.head_profile import HeadProfile
    from audiokv_edge.profile.side_file import save_profile_file
    from audiokv_edge.testing.tiny_models import TINY_PAIRS, write_text_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # gguf_profile: a tiny text model's head (tensor data cut short: the writer must refuse it) and a complete
        # tiny model with a profile, the data shrunk to one tensor by the same writer.
        spec = TINY_PAIRS["qwen3-qwen2a"].text
        model = tmp / "model.gguf"
        write_text_model(model, spec)
        profile = HeadProfile(np.arange(1, spec.n_layer * spec.n_head_kv + 1, dtype=np.float64)
                              .reshape(spec.n_layer, spec.n_head_kv), source={"calibration": "seed"})
        with_profile = tmp / "with-profile.gguf"
        write_profile(model, profile, with_profile)
        seeds = SEEDS / "gguf_profile"
        _write(seeds, "tiny-model-head.gguf", gguf_head(model))
        _write(seeds, "tiny-model-profile-head.gguf", gguf_head(with_profile))
        # profile_file: the demo profile as JSON and NPZ
        from audiokv_edge.profile.side_file import load_profile_file

        demo_profile, demo_defaults = load_profile_file(REPO / "audiokv_edge" / "data" / "demo" / "profile.json")
        seeds = SEEDS / "profile_file"
        _write(seeds, "demo-profile.json", b"\0" + (REPO / "audiokv_edge/data/demo/profile.json").read_bytes())
        npz = tmp / "profile.npz"
        save_profile_file(npz, demo_profile, demo_defaults)
        _write(seeds, "demo-profile.npz", b"\1" + npz.read_bytes())
        # audio: half a second of jfk.wav in every container
        speech, rate = soundfile.read(REPO / "audiokv_edge" / "data" / "jfk.wav", frames=8000, start=16000)
        for i, (suffix, fmt, sub) in enumerate(((".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"),
                                                (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", "MPEG_LAYER_III"))):
            buf = io.BytesIO()
            try:
                soundfile.write(buf, speech[: 2000 if fmt == "WAV" else 8000], rate, format=fmt, subtype=sub)
            except Exception:  # noqa: BLE001  (libsndfile without MP3 support)
                continue
            _write(SEEDS / "audio", f"jfk-half-second{suffix}", bytes([i]) + buf.getvalue())
        # demo_weights: a small LoRA in the shape of the demo's, and a projector of the harness' shape
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        np.savez(buf, **{"blk.0.attn_q.weight.lora_a": rng.standard_normal((2, 8)).astype(np.float32),
                         "blk.0.attn_q.weight.lora_b": rng.standard_normal((8, 2)).astype(np.float32),
                         "alpha": np.float32(4.0)})
        _write(SEEDS / "demo_weights", "lora.npz", buf.getvalue())
        buf = io.BytesIO()
        np.savez(buf, **{"mm.a.norm_pre.weight": np.ones(16, np.float32),
                         "mm.a.mlp.1.weight": np.ones((8, 16), np.float32),
                         "mm.a.norm_mid.weight": np.ones(4, np.float32),
                         "mm.a.mlp.2.weight": np.ones((16, 4), np.float32)})
        _write(SEEDS / "demo_weights", "projector.npz", buf.getvalue())
    # C: profile_read -- the demo profile as the key=value text audiokv_profile_read sees through llama.cpp
    hex_scores = " ".join(float(v).hex() for v in demo_profile.scores.astype(np.float32).ravel())
    n_layer, n_head_kv = demo_profile.scores.shape
    lines = [f"audiokv.format_version=1", f"audiokv.head_scores.n_layer={n_layer}",
             f"audiokv.head_scores.n_head_kv={n_head_kv}", f"audiokv.head_scores.hex={hex_scores}"]
    for name, value in (demo_defaults.as_dict() if demo_defaults else {}).items():
        lines.append(f"audiokv.defaults.{name}={value}")
    _write(C_SEEDS / "profile_read", "demo-profile.txt", bytes([n_layer, n_head_kv]) + "\n".join(lines).encode())
    _write(C_SEEDS / "profile_read", "no-profile.txt", bytes([2, 1]) + b"general.architecture=llama")
    # C: plan -- every entry point once, values from the golden vectors of tests/data
    golden = np.load(REPO / "tests" / "data" / "golden_seed0.npz")
    values = np.concatenate([np.asarray(golden[k], np.float64).ravel() for k in golden.files
                             if np.issubdtype(golden[k].dtype, np.floating)])[:4096]
    body = b"".join(struct.pack("BB", 128 + int(np.clip(v * 64, -127, 127)), 0) for v in values)
    for mode in range(10):
        head = bytes([mode, 6 if mode < 4 else mode, 0, 2, 2, 2, 8, 40, mode & 1, 128 + 26, 0, 1, 1])
        _write(C_SEEDS / "plan", f"mode{mode}.bin", head + body)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--make-seeds"]:
        make_seeds()
        return 0
    if not argv or argv[0] not in TARGETS:
        print(f"usage: {sys.argv[0]} TARGET [libFuzzer options] [corpus dirs] | --make-seeds; TARGET one of "
              f"{', '.join(TARGETS)}", file=sys.stderr)
        return 2
    fuzz(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
