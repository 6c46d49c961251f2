"""Test helper: the libaudiokv shared library, built standalone into build/libaudiokv when no build has it yet."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def ensure_libaudiokv():
    """Load libaudiokv (audiokv_edge.native.audiokv.load_library), building it standalone (-j2) if it is missing."""
    from audiokv_edge.native import audiokv

    try:
        audiokv.library_path()
    except FileNotFoundError:
        build = REPO / "build" / "libaudiokv"
        for cmd in (["cmake", "-S", str(REPO / "libaudiokv"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                    ["cmake", "--build", str(build), "-j2", "--target", "audiokv"]):
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.fail(f"building libaudiokv failed: {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return audiokv.load_library()
