"""Shared set-up of the head-profiling tests (tests/test_profile_heads.py, tests/test_profile_families.py,
tests/test_calibration_set.py): a synthesized calibration set (scripts/make_calibration_set.py), written once per
test module by :func:`calibration_set_fixture`, and convert/profile_heads.py run in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILE_HEADS = REPO / "convert" / "profile_heads.py"
MAKE_CALIB = REPO / "scripts" / "make_calibration_set.py"


def write_calibration_set(out: Path, clips: int) -> Path:
    """``clips`` synthesized clips of two sentences each in ``out`` (the script must succeed)."""
    res = subprocess.run([sys.executable, str(MAKE_CALIB), "--out", str(out), "--clips", str(clips),
                          "--sentences-per-clip", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def calibration_set_fixture(clips: int):
    """A module-scoped fixture: the folder of a calibration set of ``clips`` clips (:func:`write_calibration_set`).
    Use it as ``calib = calibration_set_fixture(clips=2)``."""

    @pytest.fixture(scope="module")
    def calib(tmp_path_factory) -> Path:
        return write_calibration_set(tmp_path_factory.mktemp("calib"), clips)

    return calib


def run_profile_heads(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    """``convert/profile_heads.py *args --no-progress`` in a child process at the repository root."""
    return subprocess.run([sys.executable, str(PROFILE_HEADS), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
