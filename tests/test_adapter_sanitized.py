"""scripts/check_adapter_sanitized.sh: libaudiokv WITH the llama.cpp eviction callback (llama_evict_adapter.c,
ggml_to_float.c, the C GGUF profile reader) built under AddressSanitizer + UBSan and driven through llama.cpp by
tests/test_evict_callback_c.py and tests/test_profile_defaults_runner.py, then by the runner itself
(``audiokv_edge.run`` on a tiny pair, one process: audio, every method x one-shot / --stream x f16 / q8_0 x flash
attention off / on, --kv-budget with --stream, and a text document for a subset; each must evict); the script also
checks that the sanitized library was the one loaded. Must fail: with ``--inject-bug`` it builds a copy of
libaudiokv with a one-entry heap overflow in the eviction callback and passes only when AddressSanitizer reports it
from the runner. (The llama.cpp libraries are reused, not rebuilt.)"""

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.native, pytest.mark.slow]


def _gcc_runtime(name: str) -> pathlib.Path | None:
    if shutil.which("gcc") is None:
        return None
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    path = pathlib.Path(out)
    return path if path.is_absolute() and path.exists() else None     # gcc echoes the bare name when it has none


def _check(*args: str) -> subprocess.CompletedProcess:
    missing = [n for n in ("libasan.so", "libubsan.so") if _gcc_runtime(n) is None]
    if missing:
        pytest.skip(f"gcc's sanitizer runtime {', '.join(missing)} not found (Debian: libasan8 / libubsan1, "
                    "installed with gcc)")
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_adapter_sanitized.sh"), *args],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def test_adapter_and_runner_under_asan_and_ubsan():
    out = _check().stdout
    assert "ok sanitized=True unsanitized=False asan=True" in out
    assert "matrix: ok sanitized=True unsanitized=False asan=True" in out
    for method in ("audiokv", "snapkv", "adakv", "pyramidkv", "h2o", "streamingllm", "full"):
        for stream in ("", " --stream"):
            for kv, fa in (("f16", "off"), ("f16", "on"), ("q8_0", "on")):
                assert f"ok audio {method}{stream} -ctk/-ctv {kv} -fa {fa}\n" in out
        assert f"ok text {method} --stream -ctk/-ctv f16 -fa off\n" in out
    assert "ok audio audiokv --stream -ctk/-ctv f16 -fa off --kv-budget 24\n" in out
    assert "\nFAILED " not in out and ", failed: 0," in out
    assert "check_adapter_sanitized: passed" in out


def test_an_injected_overflow_is_reported():
    out = _check("--inject-bug").stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out
    assert "check_adapter_sanitized: the injected bug was reported (in the runner matrix" in out
