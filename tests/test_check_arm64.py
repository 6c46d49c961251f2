"""scripts/check_arm64.sh --smoke: libllama and ggml cross-built for aarch64 (NEON, dotprod, fp16, i8mm kernels), and
the COMPACT-vs-MASK eviction oracle (tests/native/kv_evict_oracle.cpp) run under qemu-user: qwen3 with a q8_0 cache
and flash attention, llama with an f16 cache without it on 16 KiB pages (qemu-aarch64 -p 16384).

The full check (test-backend-ops, libaudiokv's C tests, eight oracle runs, the runner's streamed audio path, 64 KiB
pages) is one command, documented in README.md ("ARM64"). Needs g++-aarch64-linux-gnu and qemu-user
(scripts/install_system_deps.sh installs them); skipped only where they are missing.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.native, pytest.mark.slow]


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="no aarch64 cross toolchain / qemu-user: run scripts/install_system_deps.sh")
def test_check_arm64_smoke():
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_arm64.sh"), "--smoke"], capture_output=True,
                            text=True, timeout=3000, env=env)
    output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, output
    assert "check_arm64: all passed (smoke)" in result.stdout, output
    oracle = [line for line in result.stdout.splitlines() if "max abs logit diff" in line]
    assert len(oracle) == 2 and all("tokens equal" in line for line in oracle), output
    assert "type q8_0 fa on page 4096" in oracle[0] and "type f16 fa off page 16384" in oracle[1], output
