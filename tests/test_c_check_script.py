"""scripts/check_c.sh: the C tests with -Werror, under AddressSanitizer + UBSan, and cross-built for aarch64 under
qemu-user (needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user from scripts/install_system_deps.sh)."""

import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.native, pytest.mark.slow]


@pytest.mark.parametrize("variant", ["release", "sanitize", "aarch64"])
def test_check_c(variant):
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_c.sh"), variant], capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert f"check_c: all passed ({variant})" in result.stdout
