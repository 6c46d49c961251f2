"""The header block every benchmark's JSON result carries: machine, versions, command, time; and writing it.

Used by ``python -m audiokv_edge.bench`` and, through ``scripts/bench_common.py``, by the scripts in ``scripts/``.
Nothing runs at import time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

#: The checkout this package runs from (git commit, patch series); a pip-installed package has neither.
REPO = Path(__file__).resolve().parent.parent.parent
LLAMA_CPP_SOURCE = "llama-cpp-python 0.3.36 sdist (vendor/llama.cpp 0c1e570)"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


SIMD_FLAGS = ("sse2", "avx", "avx2", "fma", "avx512f")


def cpuinfo_lines() -> list[str]:
    """The lines of /proc/cpuinfo, or an empty list where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def cpu_model(lines: list[str]) -> str | None:
    """The first ``model name`` in /proc/cpuinfo ``lines``, or None."""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def simd_flags(lines: list[str]) -> list[str]:
    """Which of the SIMD extensions in ``SIMD_FLAGS`` the first CPU in /proc/cpuinfo ``lines`` reports."""
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [flag for flag in SIMD_FLAGS if flag in flags]


def machine_info() -> dict:
    """Platform, CPU model, count and SIMD extensions, RAM, and the 1-minute load average when the benchmark
    starts."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count()}
    try:
        info["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["loadavg_1min_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    lines = cpuinfo_lines()
    if lines:
        model = cpu_model(lines)
        if model:
            info["cpu_model"] = model
        info["simd"] = simd_flags(lines)
    return info


def git_commit() -> str | None:
    """HEAD of the repository, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_modified() -> list[str]:
    """Tracked files that differ from HEAD when the benchmark runs (the result then is not HEAD's alone)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def versions(*, native_lib_dir: Path | None = None, modules: tuple[str, ...] = ()) -> dict:
    """Python, NumPy, audiokv_edge and git versions, plus ``modules``' versions and, with ``native_lib_dir``, the
    llama.cpp source and patch series the libraries there were built from.

    Parameters
    ----------
    native_lib_dir : Path, optional
        Directory of the libllama / libaudiokv used.
    modules : tuple of str
        Further importable modules whose ``__version__`` is recorded (missing ones are skipped).
    """
    import importlib

    import numpy as np

    import audiokv_edge

    out = {"python": platform.python_version(), "numpy": np.__version__, "audiokv_edge": audiokv_edge.__version__}
    for name in modules:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            pass
    commit = git_commit()
    if commit:
        out["git_commit"] = commit
        out["git_modified"] = git_modified()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001  (best effort: the config layout varies across numpy versions)
        pass
    if native_lib_dir is not None:
        out["llama_cpp_source"] = LLAMA_CPP_SOURCE
        out["libllama"] = str(native_lib_dir)
        series = REPO / "patches" / "series"
        if series.is_file():
            out["patches"] = [ln.strip() for ln in series.read_text().splitlines()
                              if ln.strip() and not ln.startswith("#")]
    return out


def command_line() -> str:
    """The command that ran the benchmark."""
    return " ".join([sys.executable] + sys.argv)


def header(benchmark: str, *, native_lib_dir: Path | None = None, modules: tuple[str, ...] = ()) -> dict:
    """The common fields of a result: benchmark name, command, machine, versions, thread variables."""
    return {
        "benchmark": benchmark,
        "command": command_line(),
        "machine": machine_info(),
        "versions": versions(native_lib_dir=native_lib_dir, modules=modules),
        "threads_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }


def write_result(path: Path, report: dict) -> None:
    """Write ``report`` (with ``finished_utc`` added) as indented JSON, creating the parent directory; through a
    temporary file renamed when complete (a resumed benchmark never reads half a result)."""
    report = {**report, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)
