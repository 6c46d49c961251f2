#!/usr/bin/env python3
"""Measure build times of the combined llama.cpp + libaudiokv build and write them as JSON.

Modes (any combination, run in this order):
  --incremental  touch one llama.cpp source file (src/llama-kv-cache.cpp) and rebuild build/native
  --noop         rebuild build/native with nothing changed
  --setup-rerun  time `bash scripts/setup.sh` in this checkout (everything already set up)
  --fresh-clone DIR  clone this repository into DIR (must not exist; ../shared is linked beside it when present)
                 and time the README's test command there: full set-up (llama.cpp build included) + test suite

Output: JSON (default build/bench_build.json) with machine, versions, the command and one entry per measurement
(seconds, exit status). Exit status 0 when every measured command succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / "build" / "native"
TOUCHED_SOURCE = REPO / "build" / "llama.cpp-src" / "src" / "llama-kv-cache.cpp"
README_TEST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest"


def timed(command: str, cwd: pathlib.Path, log: pathlib.Path) -> dict:
    """Run a shell command, its output into ``log``; return seconds and exit status."""
    started = time.monotonic()
    with open(log, "w") as handle:
        status = subprocess.run(command, shell=True, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).returncode
    return {"command": command, "cwd": str(cwd), "seconds": round(time.monotonic() - started, 1),
            "exit_status": status, "log": str(log)}


def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    for tool in ("cmake", "ninja", "cc"):
        try:
            info[tool] = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            info[tool] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    info["git_commit"] = commit
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incremental", action="store_true")
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("--setup-rerun", action="store_true")
    parser.add_argument("--fresh-clone", type=pathlib.Path, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "build" / "bench_build.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logs = args.out.parent
    result = {"benchmark": "build", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": shlex.join([sys.executable, *sys.argv]), "machine": machine(), "jobs": args.jobs,
              "measurements": {}}
    build = f"cmake --build {shlex.quote(str(BUILD_DIR))} -j{args.jobs}"
    if (args.incremental or args.noop) and not (BUILD_DIR / "CMakeCache.txt").is_file():
        print(f"bench_build: error: {BUILD_DIR} is not configured; run scripts/setup.sh first", file=sys.stderr)
        return 1
    if args.incremental:
        if not TOUCHED_SOURCE.is_file():
            print(f"bench_build: error: {TOUCHED_SOURCE} missing; run scripts/setup.sh first", file=sys.stderr)
            return 1
        TOUCHED_SOURCE.touch()
        entry = timed(build, REPO, logs / "bench_build-incremental.log")
        entry["touched"] = str(TOUCHED_SOURCE.relative_to(REPO))
        result["measurements"]["incremental"] = entry
    if args.noop:
        result["measurements"]["noop"] = timed(build, REPO, logs / "bench_build-noop.log")
    if args.setup_rerun:
        result["measurements"]["setup_rerun"] = timed("bash scripts/setup.sh", REPO, logs / "bench_build-setup.log")
    if args.fresh_clone is not None:
        clone = args.fresh_clone.resolve()
        if clone.exists():
            print(f"bench_build: error: {clone} exists", file=sys.stderr)
            return 1
        clone.parent.mkdir(parents=True, exist_ok=True)
        shared = REPO.parent / "shared"
        if shared.is_dir() and not (clone.parent / "shared").exists():
            (clone.parent / "shared").symlink_to(shared)
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        entry = timed(README_TEST_COMMAND, clone, logs / "bench_build-fresh-clone.log")
        setup_log = clone / "build" / "setup-build.log"
        entry["setup_build_log"] = str(setup_log)
        result["measurements"]["fresh_clone_readme_test_command"] = entry
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["measurements"], indent=2))
    return 0 if all(m["exit_status"] == 0 for m in result["measurements"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
