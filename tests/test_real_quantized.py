"""A real quantized GGUF (SmolLM2-135M-Instruct Q4_1) runs with our build through the llama_cpp bindings.

Guards the x86 AMX hazard: a -march=native build on CPUs with AMX_INT8 segfaults on the first decode of every real
quantized model (tiny f32 models do not show it). Each run is a subprocess, so a crash fails the test instead of
killing pytest.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from audiokv_edge.testing import real_models

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama_prompt_logits.py"


def run_prompt(out: pathlib.Path, *extra: str) -> dict:
    command = [sys.executable, str(SCRIPT), "--model", str(real_models.smollm2_q4_1_path()), "--out", str(out),
               "--n-generate", "6", *extra]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode} (negative: killed by signal)\n{result.stderr[-3000:]}"
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("smollm2")
    return run_prompt(directory / "a.npz"), run_prompt(directory / "b.npz")


@pytest.mark.native
def test_quantized_model_decodes_sensibly(two_runs):
    run, _ = two_runs
    assert np.isfinite(run["prompt_logits"]).all() and np.isfinite(run["generated_logits"]).all()
    assert run["generated_tokens"].shape == (6,)
    assert "Paris" in str(run["generated_text"]), str(run["generated_text"])


@pytest.mark.native
def test_greedy_decoding_is_deterministic(two_runs):
    first, second = two_runs
    np.testing.assert_array_equal(first["generated_tokens"], second["generated_tokens"])
    np.testing.assert_array_equal(first["prompt_logits"], second["prompt_logits"])
    np.testing.assert_array_equal(first["generated_logits"], second["generated_logits"])
