"""llama.cpp's own tests for the area our patches touch, run on the patched build (build/native/bin).

- test-backend-ops on the CPU backend for the ops of attention over the KV cache: flash attention, softmax with
  masks, get/set rows and copies (cache reads and writes), concat (joining per-head outputs).
- test-llama-archs writes random tiny models of our architectures; test-save-load-state saves and restores the
  sequence state (KV cache) of each; test-state-restore-fragmented restores state into a fragmented KV cache of a
  real model; test-batch-alloc checks batch splitting against the KV cells.
Each program's exit status is the verdict; its output is shown on failure.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import tempfile

import pytest

from audiokv_edge.native import libs as native_libs
from audiokv_edge.testing import real_models

REPO = pathlib.Path(__file__).resolve().parent.parent
# op -> params regex (None: every case). The full FLASH_ATTN_EXT matrix takes > 10 min on 2 cores; its cases with
# head size 64 (SmolLM2, Qwen2-Audio-size heads) and f16 K/V, masks, sinks and GQA ratios included, take ~15 s.
BACKEND_OPS = {
    "FLASH_ATTN_EXT": "hsk=64,hsv=64,nh=4.*type_K=f16",
    "SOFT_MAX": None,
    "GET_ROWS": None,
    "SET_ROWS": None,
    "CPY": None,
    "CONCAT": None,
}


def llama_test_program(name: str) -> pathlib.Path:
    """Path of a llama.cpp test program of the combined build (bin/ beside lib/)."""
    path = native_libs.lib_dir().parent / "bin" / name
    assert path.is_file(), f"{path} is not built: configure with -DAUDIOKV_BUILD_LLAMA_TESTS=ON and run setup"
    return path


def run_program(name: str, *args: str, timeout: int = 1200) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    with tempfile.TemporaryDirectory() as scratch:  # some programs write files (dump_state.bin) into their cwd
        result = subprocess.run([str(llama_test_program(name)), *args], capture_output=True, text=True,
                                timeout=timeout, env=env, cwd=scratch)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} {' '.join(args)}: exit {result.returncode}\n{output[-6000:]}"
    return output


@pytest.mark.native
@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(BACKEND_OPS))
def test_backend_ops_cpu(op):
    params = ("-p", BACKEND_OPS[op]) if BACKEND_OPS[op] else ()
    output = run_program("test-backend-ops", "test", "-b", "CPU", "-o", op, *params)
    passed = re.search(r"(\d+)/(\d+) tests passed", output)
    assert passed and passed.group(1) == passed.group(2) and int(passed.group(2)) > 0, output[-3000:]
    assert "1/1 backends passed" in output, output[-3000:]


# Architectures of the models this project runs (SmolLM2/ultravox: llama, Qwen2-Audio/Omni: qwen2, qwen3, Gemma 3
# iSWA, LFM2 hybrid). All 128 of llama.cpp take > 10 min on 2 cores.
STATE_TEST_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "lfm2")


@pytest.fixture(scope="module")
def tiny_arch_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama-archs")
    for arch in STATE_TEST_ARCHS:
        run_program("test-llama-archs", "-a", arch, "-o", str(directory))
    models = sorted(directory.glob("*.gguf"))
    assert models, "test-llama-archs wrote no models"
    return directory


@pytest.mark.native
@pytest.mark.slow
def test_save_load_state_on_every_architecture(tiny_arch_models):
    output = run_program("test-save-load-state", "--models", str(tiny_arch_models), "-t", "2")
    rows = [line for line in output.splitlines() if ".gguf" in line and "PASS" in line]
    assert len(rows) == len(list(tiny_arch_models.glob("*.gguf"))) and "FAIL" not in output, output[-3000:]


@pytest.mark.native
@pytest.mark.slow
def test_state_restore_into_fragmented_cache():
    run_program("test-state-restore-fragmented", "-m", str(real_models.smollm2_q4_1_path()), "-t", "2")


@pytest.mark.native
def test_batch_alloc():
    run_program("test-batch-alloc")
