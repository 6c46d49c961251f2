"""With no patch behaviour switched on, the patched libllama computes what the unpatched one computes.

Both libraries are built by the same CMake build against the same ggml (build/native/lib and lib/unpatched), so the
same model, prompt and thread count must give bitwise equal logits: every prompt position and a greedy
continuation. (ggml is shared: this compares the libllama patches, not changes inside ggml.)
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from audiokv_edge.native import libs as native_libs
from audiokv_edge.testing import real_models

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_prompt_logits.py"
PROMPT = "Spoken language models listen to audio. The cache of keys and values grows with every token, so"


def logits_with(lib_dir: pathlib.Path, out: pathlib.Path) -> dict:
    command = [sys.executable, str(SCRIPT), "--model", str(real_models.smollm2_q4_1_path()), "--out", str(out),
               "--lib-dir", str(lib_dir), "--prompt", PROMPT, "--n-generate", "8"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.native
def test_patched_logits_equal_unpatched_bitwise(tmp_path):
    patched_dir = native_libs.lib_dir()
    unpatched_dir = patched_dir / "unpatched"
    assert (unpatched_dir / native_libs.shared_library_name("llama")).is_file(), \
        "the unpatched libllama is not built (AUDIOKV_BUILD_UNPATCHED_LLAMA=OFF?)"
    patched = logits_with(patched_dir, tmp_path / "patched.npz")
    unpatched = logits_with(unpatched_dir, tmp_path / "unpatched.npz")
    assert pathlib.Path(str(patched["libllama"])).parent == patched_dir
    assert pathlib.Path(str(unpatched["libllama"])).parent == unpatched_dir
    np.testing.assert_array_equal(patched["prompt_tokens"], unpatched["prompt_tokens"])
    np.testing.assert_array_equal(patched["prompt_logits"], unpatched["prompt_logits"])
    np.testing.assert_array_equal(patched["generated_tokens"], unpatched["generated_tokens"])
    np.testing.assert_array_equal(patched["generated_logits"], unpatched["generated_logits"])
