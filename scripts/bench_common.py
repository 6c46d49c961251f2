"""The header block every benchmark's JSON result carries (``audiokv_edge.bench.header``: machine, versions, command,
time; and writing it), the plan benchmarks' shape options, and a child process's wall time and peak memory
(:func:`run_child`).

Imported by the scripts beside it (``scripts/`` is on ``sys.path`` when one of them runs as a script). Nothing runs
at import time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audiokv_edge.bench.header import header, write_result  # noqa: E402,F401  (re-exported to the scripts)
from audiokv_edge.runtime.stats import maxrss_bytes  # noqa: E402


def add_plan_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the plan benchmarks' shape: model (layers, heads, head size), cached tokens, scoring
    window and keep ratio. The defaults are Qwen2.5-Omni-7B with five minutes of audio (7,500 tokens at 25/s)."""
    parser.add_argument("--n-layer", type=int, default=28)
    parser.add_argument("--n-head", type=int, default=28)
    parser.add_argument("--n-head-kv", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--n-tokens", type=int, default=7500)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--keep", type=float, default=0.4)


PLAN_SHAPE_KEYS = ("n_layer", "n_head", "n_head_kv", "head_dim", "n_tokens", "window", "keep")


def plan_shape(args: argparse.Namespace) -> dict:
    """The shape options of ``add_plan_shape_arguments`` as a result's ``shape`` field."""
    return {key: getattr(args, key) for key in PLAN_SHAPE_KEYS}


def run_child(command: list[str], timeout: float) -> dict:
    """Run ``command``; its exit code, stdout, stderr, wall time and maximum resident set size (bytes).

    The child is reaped with ``os.wait4``, which returns that child's own resource usage (``ru_maxrss``, KiB on
    Linux, bytes on macOS), unlike ``RUSAGE_CHILDREN``, the maximum over every child waited for so far.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, env=env)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    return {"exit_code": proc.returncode, "timed_out": killed.is_set(), "stdout": stdout, "stderr": stderr,
            "wall_s": wall, "child_maxrss_bytes": maxrss_bytes(usage)}
