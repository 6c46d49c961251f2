"""The fuzz harnesses (scripts/fuzz.sh, scripts/fuzz_python.py, libaudiokv/fuzz/) and what fuzzing found.

- Every input a fuzzer found (tests/data/fuzz/regressions/<target>-*) replays clean through its harness, and the
  error each one now gets is the clear one-line error named here (no traceback, no out-of-memory, no file left).
- The Python harnesses on their seeds and a few hundred mutations of them (no atheris needed), then under atheris
  itself for a few hundred runs each; the C targets built with clang -fsanitize=fuzzer,address,undefined and run for a
  few hundred inputs each. The long runs are scripts/fuzz.sh's job (docs/fuzzing.md).
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import fuzz_python  # noqa: E402

REGRESSIONS = REPO / "tests" / "data" / "fuzz" / "regressions"


def regression_inputs():
    return sorted(REGRESSIONS.iterdir())


@pytest.mark.parametrize("path", regression_inputs(), ids=lambda p: p.name)
def test_found_inputs_replay_clean(path):
    target = path.name.split("-", 1)[0]
    assert fuzz_python.run_inputs(target, [path.read_bytes()]) == 1


def test_wav_with_a_gigahertz_rate_is_one_error_line(tmp_path):
    from audiokv_edge.runtime.audio import AudioError, MAX_SAMPLE_RATE, clip_from_array, load_audio

    wav = tmp_path / "rate.wav"
    wav.write_bytes((REGRESSIONS / "audio-wav-rate-1.6ghz").read_bytes()[1:])  # byte 0 picks .wav in the harness
    with pytest.raises(AudioError, match=r"rate\.wav: sample rate is 1633943568 Hz, above the 768000 Hz") as info:
        load_audio(wav, 16000)
    assert "\n" not in str(info.value)
    with pytest.raises(AudioError, match="above the 768000 Hz"):
        clip_from_array(np.zeros(10, np.float32), MAX_SAMPLE_RATE + 1, 16000)
    assert clip_from_array(np.zeros(48, np.float32), MAX_SAMPLE_RATE, MAX_SAMPLE_RATE).samples.size == 48


def test_damaged_profile_npz_is_one_error_line(tmp_path):
    from audiokv_edge.profile.side_file import load_profile_file

    bad = tmp_path / "profile.npz"
    bad.write_bytes((REGRESSIONS / "profile_file-bad-zip-member").read_bytes()[1:])
    with pytest.raises(ValueError, match=r"profile\.npz: not a head profile NPZ \(") as info:
        load_profile_file(bad)
    assert "\n" not in str(info.value)
    member = tmp_path / "member.npz"   # a member's .npy header that NumPy's tokenizer chokes on
    member.write_bytes((REGRESSIONS / "profile_file-npy-header-tokenize").read_bytes()[1:])
    with pytest.raises(ValueError, match=r"member\.npz: not a head profile NPZ \(.*EOF in multi-line statement"):
        load_profile_file(member)
    encrypted = tmp_path / "encrypted.npz"   # a member flagged as encrypted
    encrypted.write_bytes((REGRESSIONS / "profile_file-encrypted-member").read_bytes()[1:])
    with pytest.raises(ValueError, match=r"encrypted\.npz: not a head profile NPZ \(File 'meta\.npy' is encrypted"):
        load_profile_file(encrypted)
    lone = tmp_path / "lone.npz"
    with open(lone, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(ValueError, match="not a head profile NPZ .a single array"):
        load_profile_file(lone)
    with pytest.raises(FileNotFoundError):
        load_profile_file(tmp_path / "missing.npz")


def test_bad_lora_and_projector_npz_are_one_error_line_and_leave_no_file(tmp_path):
    from audiokv_edge.demo_model.lora_gguf import write_lora_npz_gguf
    from audiokv_edge.demo_model.mmproj import check_projector, read_projector_npz

    out = tmp_path / "lora.gguf"
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz: not a LoRA weights NPZ"):
        write_lora_npz_gguf(empty, out)
    pair = {"blk.0.attn_q.weight.lora_a": np.ones((2, 8), np.float32),
            "blk.0.attn_q.weight.lora_b": np.ones((8, 2), np.float32)}
    for name, alpha, message in (("vector", np.ones(2), "'alpha' must be one finite number"),
                                 ("text", np.array("4"), "'alpha' must be one finite number"),
                                 ("nan", np.float32("nan"), "'alpha' must be one finite number")):
        npz = tmp_path / f"{name}.npz"
        np.savez(npz, alpha=alpha, **pair)
        with pytest.raises(ValueError, match=message):
            write_lora_npz_gguf(npz, out)
    strings = tmp_path / "strings.npz"
    np.savez(strings, alpha=np.float32(4), **{**pair, "blk.0.attn_q.weight.lora_a": np.array([["a"] * 8] * 2)})
    with pytest.raises(ValueError, match="expected real numbers"):
        write_lora_npz_gguf(strings, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "nan.npz", "strings.npz", "text.npz",
                                                          "vector.npz"]
    scalar = tmp_path / "projector.npz"
    np.savez(scalar, **{"mm.a.norm_pre.weight": np.ones(16), "mm.a.mlp.1.weight": np.ones((8, 16)),
                        "mm.a.norm_mid.weight": np.float32(1), "mm.a.mlp.2.weight": np.ones((16, 4))})
    with pytest.raises(ValueError, match=r"mm\.a\.norm_mid\.weight is float32 of shape \(\): expected a real vector"):
        check_projector(read_projector_npz(scalar), 8, 16, 2)


def mutations(seed: bytes, rng: np.random.Generator, n: int):
    """``n`` variants of ``seed``: truncations, flipped bytes, inserted and deleted runs (a fuzzer's first moves)."""
    for _ in range(n):
        data = bytearray(seed)
        for _ in range(int(rng.integers(1, 4))):
            op = int(rng.integers(0, 4))
            at = int(rng.integers(0, len(data) + 1))
            if op == 0:
                del data[at:]
            elif op == 1 and data:
                data[min(at, len(data) - 1)] = int(rng.integers(0, 256))
            elif op == 2:
                data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
            else:
                del data[at:at + int(rng.integers(1, 17))]
        yield bytes(data)


@pytest.mark.parametrize("target", sorted(fuzz_python.TARGETS))
def test_python_harness_on_seeds_and_mutations(target):
    seeds = sorted((fuzz_python.SEEDS / target).iterdir())
    assert seeds, f"no seed corpus for {target}"
    rng = np.random.default_rng(17)
    inputs = [p.read_bytes() for p in seeds]
    per_seed = 40 if target == "gguf_profile" else 60
    inputs += [m for p in seeds for m in mutations(p.read_bytes(), rng, per_seed)]
    assert fuzz_python.run_inputs(target, inputs) == len(inputs)


def test_harness_reports_a_broken_contract(monkeypatch):
    """A target that raises anything but its documented one-line error is a finding (the harness can fail)."""
    import audiokv_edge.runtime.audio as audio

    def explode(path, rate):
        raise IndexError("boom")

    monkeypatch.setattr(audio, "load_audio", explode)
    with pytest.raises(IndexError):
        fuzz_python.run_inputs("audio", [b"\0RIFF"])

    def two_lines(path, rate):
        raise audio.AudioError("first line\nsecond line")

    monkeypatch.setattr(audio, "load_audio", two_lines)
    with pytest.raises(fuzz_python.Finding, match="one-line"):
        fuzz_python.run_inputs("audio", [b"\0RIFF"])


def run_fuzz_sh(tmp_path, runs, targets):
    result = subprocess.run(["bash", str(REPO / "scripts" / "fuzz.sh"), "-r", str(runs), "-o", str(tmp_path),
                             *targets], capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs_per_target"] == runs
    rows = {r["target"]: r for r in summary["targets"]}
    assert sorted(rows) == sorted(targets)
    for row in rows.values():
        assert row["executions"] >= runs and row["crash_files"] == 0 and row["exit_code"] == 0, row


ATHERIS_EXPECTED = platform.system() == "Linux" and platform.machine() == "x86_64"


@pytest.mark.slow
def test_atheris_runs_every_python_target(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        if ATHERIS_EXPECTED:
            pytest.fail("atheris is not installed: scripts/setup.sh installs the [fuzz] extra on Linux x86-64")
        pytest.skip("atheris has no wheel for this platform (pip install atheris builds it with clang's libFuzzer)")
    run_fuzz_sh(tmp_path, 200, sorted(fuzz_python.TARGETS))


@pytest.mark.slow
def test_libfuzzer_runs_the_c_targets(tmp_path):
    run_fuzz_sh(tmp_path, 500, ["profile_read", "plan"])
