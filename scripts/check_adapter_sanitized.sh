#!/usr/bin/env bash
# Runs libaudiokv's llama.cpp eviction callback under AddressSanitizer + UBSan.
#
# scripts/check_c.sh builds libaudiokv standalone (no llama.cpp), so the code compiled only inside the combined build
# (src/llama_evict_adapter.c, src/ggml_to_float.c, src/gguf_profile.c) never runs sanitized
# there. This script:
#   1. builds libaudiokv WITH the adapter, -fsanitize=address,undefined (-fno-sanitize-recover=undefined), Debug,
#      -Wall -Wextra -Wpedantic -Werror (and fails on any printed warning), into build/check_c/adapter-sanitize,
#      against the already-built patched libllama / libggml-base of build/native/lib (libaudiokv/CMakeLists.txt,
#      AUDIOKV_LLAMA_LIB_DIR: imported targets; llama.cpp itself is not rebuilt or instrumented);
#   2. makes a temporary library directory: symlinks to every library of build/native/lib except libaudiokv*, plus
#      the sanitized libaudiokv.so, and points AUDIOKV_EDGE_LIB_DIR at it (audiokv_edge/native/libs.py);
#   3. runs the pytest files that drive the callback through llama.cpp (default: tests/test_evict_callback_c.py, the
#      callback on f16 / q8_0 keys, plain and iSWA models, with and without a stored profile, wrong-shape profile;
#      tests/test_profile_defaults_runner.py, the runner and Session creating evictors from stored defaults) with
#      gcc's libasan + libubsan preloaded (ASan must come first in the process; subprocesses inherit it all) and every
#      sanitizer report fatal. (tests/test_profile_eviction.py plans in Python and never loads libaudiokv.);
#   4. checks from inside that pytest process (/proc/self/maps, a small plugin) that the sanitized libaudiokv was
#      the one mapped and the unsanitized build/native/lib/libaudiokv.so was not: a run that silently used the
#      unsanitized library fails.
# Usage: bash scripts/check_adapter_sanitized.sh [pytest file or node id ...]
# Needs the combined build (bash scripts/setup.sh), cmake, and gcc with its sanitizer runtimes (libasan, libubsan:
# on Debian they come with gcc / build-essential). AUDIOKV_CHECK_JOBS sets the build's parallelism (default 2).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
native_lib="$repo/build/native/lib"
llama_src="$repo/build/llama.cpp-src"
dir="$repo/build/check_c/adapter-sanitize"
python="$repo/.venv/bin/python"
jobs="${AUDIOKV_CHECK_JOBS:-2}"
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(tests/test_evict_callback_c.py tests/test_profile_defaults_runner.py)

fail() { echo "check_adapter_sanitized: $*" >&2; exit 1; }

[ -f "$native_lib/libllama.so" ] && [ -f "$native_lib/libggml-base.so" ] \
    || fail "no combined build in $native_lib; run bash scripts/setup.sh"
[ -f "$llama_src/include/llama-kv-evict.h" ] || fail "no patched llama.cpp headers in $llama_src/include"
[ -x "$python" ] || fail "no venv at $repo/.venv; run bash scripts/setup.sh"
command -v gcc >/dev/null || fail "gcc not found"
# gcc prints the bare name when it has no such file
asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
[ -f "$asan" ] || fail "gcc's libasan.so not found (Debian: libasan<N>, a dependency of gcc)"
[ -f "$ubsan" ] || fail "gcc's libubsan.so not found (Debian: libubsan<N>, a dependency of gcc)"

# -- 1. the sanitized build ------------------------------------------------------------------------------------------
echo "== check_adapter_sanitized: build =="
mkdir -p "$dir"
# gcc explicitly: its sanitizer runtimes are the ones preloaded below
cmake -S "$repo/libaudiokv" -B "$dir" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Debug -DAUDIOKV_SANITIZE=ON \
    -DAUDIOKV_WERROR=ON -DAUDIOKV_BUILD_TESTS=OFF -DAUDIOKV_LLAMA_LIB_DIR="$native_lib" \
    "-DAUDIOKV_LLAMA_INCLUDE_DIRS=$llama_src/include;$llama_src/ggml/include" >"$dir.configure.log" 2>&1 || {
    cat "$dir.configure.log" >&2; fail "configure failed"; }
grep -q "with the llama.cpp eviction callback" "$dir.configure.log" || {
    cat "$dir.configure.log" >&2; fail "configured without the llama.cpp adapter"; }
if ! cmake --build "$dir" -j "$jobs" >"$dir.build.log" 2>&1; then
    cat "$dir.build.log" >&2; fail "build failed"
fi
if grep -E "warning:|error:" "$dir.build.log" >&2; then
    fail "the build printed warnings"
fi
lib="$dir/libaudiokv.so"
# (whole outputs captured first: `nm | grep -q` under pipefail fails when grep stops reading early)
exported="$(nm -D --defined-only "$lib")"
symbols="$(nm "$lib")"
needed="$(readelf -d "$lib")"
grep -qw audiokv_llama_evict_callback <<<"$exported" || fail "$lib lacks audiokv_llama_evict_callback"
grep -q "NEEDED.*libasan" <<<"$needed" || fail "$lib is not linked against libasan"
grep -q "__asan_report_load" <<<"$symbols" || fail "$lib has no ASan instrumentation"
grep -q "__ubsan_handle" <<<"$symbols" || fail "$lib has no UBSan instrumentation"

# -- 2. a library directory with the sanitized libaudiokv -----------------------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/audiokv-adapter-sanitize.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/lib" "$tmp/py"
for f in "$native_lib"/*; do
    name="$(basename "$f")"
    case "$name" in libaudiokv*) continue ;; esac
    [ -f "$f" ] && ln -s "$f" "$tmp/lib/$name"       # files only: not lib/unpatched/
done
# audiokv_edge/native/audiokv.py and native/libs.py load <AUDIOKV_EDGE_LIB_DIR>/libaudiokv.so
ln -s "$lib" "$tmp/lib/libaudiokv.so"

# -- 3./4. the tests, sanitized, with a probe of what the process mapped ---------------------------------------------
marker="$tmp/mapped.txt"
cat >"$tmp/py/audiokv_sanitized_probe.py" <<'EOF'
"""pytest plugin (scripts/check_adapter_sanitized.sh): at the end of the session, which libaudiokv did we map?"""
import os
import pathlib


def pytest_sessionfinish(session, exitstatus):
    want = pathlib.Path(os.environ["AUDIOKV_SANITIZED_LIB"]).resolve()
    plain = pathlib.Path(os.environ["AUDIOKV_UNSANITIZED_LIB"]).resolve()
    mapped = set()
    for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            mapped.add(pathlib.Path(parts[5]))
    asan = any(p.name.startswith("libasan") for p in mapped)
    ok = want in mapped and plain not in mapped and asan
    pathlib.Path(os.environ["AUDIOKV_SANITIZED_MARKER"]).write_text(
        f"{'ok' if ok else 'WRONG'} sanitized={want in mapped} unsanitized={plain in mapped} asan={asan}\n")
    if not ok and session.exitstatus == 0:
        session.exitstatus = 1
EOF

echo "== check_adapter_sanitized: pytest ${tests[*]} =="
# detect_leaks=0: CPython (and numpy, llama.cpp's globals) keep memory until exit by design; LeakSanitizer would
# report those, not libaudiokv. Every other ASan error, and every UBSan report, aborts the process.
# --capture=sys: pytest captures Python's output only, so what the sanitizers write to file descriptor 2 reaches the
# log, build/check_c/adapter-sanitize.pytest.log (fd capture would swallow the report of a process that aborts).
log="$dir.pytest.log"
status=0
(cd "$repo" && env \
    AUDIOKV_EDGE_LIB_DIR="$tmp/lib" \
    LLAMA_CPP_LIB_PATH="$tmp/lib" MTMD_CPP_LIB="$tmp/lib" \
    LD_PRELOAD="$asan $ubsan" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    PYTHONPATH="$tmp/py${PYTHONPATH:+:$PYTHONPATH}" \
    AUDIOKV_SANITIZED_LIB="$lib" AUDIOKV_UNSANITIZED_LIB="$native_lib/libaudiokv.so" \
    AUDIOKV_SANITIZED_MARKER="$marker" \
    "$python" -m pytest -q -p no:cacheprovider --capture=sys -p audiokv_sanitized_probe "${tests[@]}") \
    >"$log" 2>&1 || status=$?
[ -f "$marker" ] && cat "$marker"
sanitizer_pattern="ERROR: AddressSanitizer|ERROR: UndefinedBehaviorSanitizer|runtime error:"
if grep -Eq "$sanitizer_pattern" "$log"; then
    grep -E -A 40 "$sanitizer_pattern" "$log" >&2
    grep "SUMMARY:" "$log" >&2 || true
    fail "ASan/UBSan reported an error (above; whole log: $log); pytest exit $status"
fi
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    fail "pytest failed (exit $status) under ASan/UBSan (whole log: $log)"
fi
tail -n 1 "$log"
[ -f "$marker" ] || fail "the probe did not run: cannot tell which libaudiokv was loaded"
grep -q "^ok " "$marker" || fail "the sanitized libaudiokv was not the one loaded"
echo "check_adapter_sanitized: passed (${tests[*]})"
