"""scripts/check_adapter_sanitized.sh: libaudiokv WITH the llama.cpp eviction callback (llama_evict_adapter.c,
ggml_to_float.c, the C GGUF profile reader) built under AddressSanitizer + UBSan and driven through llama.cpp by
tests/test_evict_callback_c.py and tests/test_profile_defaults_runner.py; the script also checks that the sanitized
library was the one loaded. About 15 s on 2 cores (the llama.cpp libraries are reused, not rebuilt)."""

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


def test_adapter_under_asan_and_ubsan():
    missing = [n for n in ("libasan.so", "libubsan.so") if _gcc_runtime(n) is None]
    if missing:
        pytest.skip(f"gcc's sanitizer runtime {', '.join(missing)} not found (Debian: libasan8 / libubsan1, "
                    "installed with gcc)")
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_adapter_sanitized.sh")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    assert "ok sanitized=True unsanitized=False asan=True" in result.stdout
    assert "check_adapter_sanitized: passed" in result.stdout
