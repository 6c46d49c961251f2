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
#      unsanitized library fails;
#   5. runs the runner itself end to end the same way, in one process (audiokv_edge.run.main once per configuration,
#      with the same /proc/self/maps check at exit) on a tiny random-weight pair with whole 32-value q8_0 blocks per
#      head and 1 s audio chunks (qwen3-qwen3a, audiokv_edge/testing/tiny_models.py): audio (the first 3 s of
#      jfk.wav: --stream evicts after chunks 1 and 2, then after the question) with every
#      method x {one-shot, --stream} x {f16, q8_0 KV cache} x {flash attention off, on} (q8_0 only with flash
#      attention: the runner switches it on for a quantized V cache), --kv-budget with --stream, and a text document
#      (--text) for a subset; each must exit 0 and evict (--json: the kept cache bytes below the full ones; method full:
#      equal) and nothing may print a sanitizer report.
# Must-fail check: `--inject-bug` builds a copy of libaudiokv whose per-head counts array is one entry short
# (src/llama_evict_adapter.c: b.counts, which audiokv_plan fills for every (layer, KV head)) into
# build/check_c/adapter-sanitize-injected (from a copy of the sources, adapter-sanitize-injected.src) and runs step 5
# only: it passes only if AddressSanitizer reports the heap-buffer-overflow (the runner dies of it).
# Opt-in, not run by the test suite: `--full-llama` instruments the patched llama.cpp too. Step 1 then builds the
# combined build (this checkout's CMakeLists.txt on $AUDIOKV_CHECK_BUILD/llama.cpp-src: libllama, libggml*, libmtmd
# and libaudiokv; no tools, tests or unpatched libllama) with -fsanitize=address,undefined, Debug, into
# build/check_c/llama-sanitize, step 2 links all of its lib/, and the maps check also requires the sanitized
# libllama (not build/native/lib's). Expect a first build of about 160 compile steps.
# Usage: bash scripts/check_adapter_sanitized.sh [--inject-bug | --full-llama] [--runner-only] [pytest file or node id ...]
#        (--runner-only: steps 1, 2 and 5; with pytest arguments, those files instead of the default ones in step 3)
# Needs the combined build (bash scripts/setup.sh), cmake, and gcc with its sanitizer runtimes (libasan, libubsan:
# on Debian they come with gcc / build-essential). AUDIOKV_CHECK_JOBS sets the build's parallelism (default 2);
# AUDIOKV_CHECK_BUILD (default build/ of this checkout) is where the combined build and build/llama.cpp-src are,
# AUDIOKV_CHECK_PYTHON (default .venv/bin/python) the Python that runs the tests.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
combined="${AUDIOKV_CHECK_BUILD:-$repo/build}"
native_lib="$combined/native/lib"
llama_src="$combined/llama.cpp-src"
dir="$repo/build/check_c/adapter-sanitize"
python="${AUDIOKV_CHECK_PYTHON:-$repo/.venv/bin/python}"
jobs="${AUDIOKV_CHECK_JOBS:-2}"
inject=0
full_llama=0
pytest_stage=1
tests=()
for arg in "$@"; do
    case "$arg" in
        --inject-bug) inject=1; pytest_stage=0 ;;
        --runner-only) pytest_stage=0 ;;
        --full-llama) full_llama=1 ;;
        *) tests+=("$arg") ;;
    esac
done
[ ${#tests[@]} -eq 0 ] && tests=(tests/test_evict_callback_c.py tests/test_profile_defaults_runner.py)
[ "$inject" -eq 1 ] && dir="$dir-injected"
[ "$full_llama" -eq 1 ] && dir="$repo/build/check_c/llama-sanitize"
[ "$inject" -eq 1 ] && [ "$full_llama" -eq 1 ] && { echo "check_adapter_sanitized: --inject-bug and --full-llama exclude each other" >&2; exit 2; }

fail() { echo "check_adapter_sanitized: $*" >&2; exit 1; }

[ -f "$native_lib/libllama.so" ] && [ -f "$native_lib/libggml-base.so" ] \
    || fail "no combined build in $native_lib; run bash scripts/setup.sh"
[ -f "$llama_src/include/llama-kv-evict.h" ] || fail "no patched llama.cpp headers in $llama_src/include"
[ -x "$python" ] || fail "no Python at $python; run bash scripts/setup.sh"
command -v gcc >/dev/null || fail "gcc not found"
# gcc prints the bare name when it has no such file
asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
[ -f "$asan" ] || fail "gcc's libasan.so not found (Debian: libasan<N>, a dependency of gcc)"
[ -f "$ubsan" ] || fail "gcc's libubsan.so not found (Debian: libubsan<N>, a dependency of gcc)"

# -- 1. the sanitized build ------------------------------------------------------------------------------------------
echo "== check_adapter_sanitized: build =="
mkdir -p "$dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/audiokv-adapter-sanitize.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# instrumented(LIB): ASan and UBSan instrumentation in LIB, linked against libasan
instrumented() {
    local symbols needed
    # (whole outputs captured first: `nm | grep -q` under pipefail fails when grep stops reading early)
    symbols="$(nm "$1")"
    needed="$(readelf -d "$1")"
    grep -q "NEEDED.*libasan" <<<"$needed" || fail "$1 is not linked against libasan"
    grep -q "__asan_report_load" <<<"$symbols" || fail "$1 has no ASan instrumentation"
    grep -q "__ubsan_handle" <<<"$symbols" || fail "$1 has no UBSan instrumentation"
}
if [ "$full_llama" -eq 1 ]; then
    # the patched llama.cpp and libaudiokv (AUDIOKV_SANITIZE) in one sanitized combined build; Debug: -O0 compiles
    # fastest and keeps every access instrumented
    flags="-fsanitize=address,undefined -fno-omit-frame-pointer"
    cmake -S "$repo" -B "$dir" -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Debug \
        -DAUDIOKV_LLAMA_CPP_SOURCE_DIR="$llama_src" -DAUDIOKV_BUILD_LLAMA_TESTS=OFF \
        -DAUDIOKV_BUILD_UNPATCHED_LLAMA=OFF -DAUDIOKV_BUILD_LLAMA_TOOLS=OFF -DAUDIOKV_SANITIZE=ON \
        "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" \
        "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >"$dir.configure.log" 2>&1 || {
        cat "$dir.configure.log" >&2; fail "configure failed"; }
    start_s=$SECONDS
    if ! cmake --build "$dir" -j "$jobs" >"$dir.build.log" 2>&1; then
        tail -n 60 "$dir.build.log" >&2; fail "build failed (whole log: $dir.build.log)"
    fi
    echo "sanitized combined build: $((SECONDS - start_s)) s"
    lib_src="$dir/lib"
    lib="$lib_src/libaudiokv.so"
    for name in libllama.so libggml-base.so libggml-cpu.so libmtmd.so; do
        [ -f "$lib_src/$name" ] || fail "the sanitized build made no $lib_src/$name"
        instrumented "$lib_src/$name"
    done
else
    source_dir="$repo/libaudiokv"
    if [ "$inject" -eq 1 ]; then
        # the must-fail check: one (layer, KV head) short, so audiokv_plan writes 4 bytes past the array
        # (a copy at a fixed path, modification times kept: a second run recompiles only the changed file)
        source_dir="$dir.src"
        rm -rf "$source_dir"
        cp -pR "$repo/libaudiokv" "$source_dir"
        rm -rf "$source_dir/build"
        adapter="$source_dir/src/llama_evict_adapter.c"
        correct='b.counts = (int32_t *) malloc((size_t) L * (size_t) Hkv * sizeof(int32_t));'
        grep -qF "$correct" "$adapter" || fail "cannot inject the bug: $adapter has no line '$correct'"
        sed -i 's/b\.counts = (int32_t \*) malloc((size_t) L \* (size_t) Hkv \* sizeof(int32_t));/b.counts = (int32_t *) malloc(((size_t) L * (size_t) Hkv - 1) * sizeof(int32_t));/' "$adapter"
        ! grep -qF "$correct" "$adapter" || fail "injecting the bug into $adapter failed"
    fi
    # a build directory configured from another source directory is started afresh (CMake refuses to reuse it)
    if [ -f "$dir/CMakeCache.txt" ] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$source_dir" "$dir/CMakeCache.txt"; then
        rm -rf "$dir" && mkdir -p "$dir"
    fi
    # gcc explicitly: its sanitizer runtimes are the ones preloaded below
    cmake -S "$source_dir" -B "$dir" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Debug -DAUDIOKV_SANITIZE=ON \
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
    lib_src="$native_lib"
    lib="$dir/libaudiokv.so"
fi
exported="$(nm -D --defined-only "$lib")"
grep -qw audiokv_llama_evict_callback <<<"$exported" || fail "$lib lacks audiokv_llama_evict_callback"
instrumented "$lib"

# -- 2. a library directory with the sanitized libaudiokv -----------------------------------------------------------
mkdir "$tmp/lib" "$tmp/py"
for f in "$lib_src"/*; do
    name="$(basename "$f")"
    case "$name" in libaudiokv*) continue ;; esac
    [ -f "$f" ] && ln -s "$f" "$tmp/lib/$name"       # files only: not lib/unpatched/
done
# audiokv_edge/native/audiokv.py and native/libs.py load <AUDIOKV_EDGE_LIB_DIR>/libaudiokv.so
ln -s "$lib" "$tmp/lib/libaudiokv.so"

# -- 3./4. the tests, sanitized, with a probe of what the process mapped ---------------------------------------------
marker="$tmp/mapped.txt"
sanitized_llama=""
[ "$full_llama" -eq 0 ] || sanitized_llama="$lib_src/libllama.so"
cat >"$tmp/py/audiokv_sanitized_maps.py" <<'PY'
"""Which libaudiokv this process mapped (scripts/check_adapter_sanitized.sh): one line appended to the marker."""
import os
import pathlib


def record() -> bool:
    want = pathlib.Path(os.environ["AUDIOKV_SANITIZED_LIB"]).resolve()
    plain = pathlib.Path(os.environ["AUDIOKV_UNSANITIZED_LIB"]).resolve()
    mapped = set()
    for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            mapped.add(pathlib.Path(parts[5]))
    asan = any(p.name.startswith("libasan") for p in mapped)
    ok = want in mapped and plain not in mapped and asan
    line = f"sanitized={want in mapped} unsanitized={plain in mapped} asan={asan}"
    if os.environ.get("AUDIOKV_SANITIZED_LLAMA"):  # --full-llama: the sanitized libllama, not the plain one
        llama = pathlib.Path(os.environ["AUDIOKV_SANITIZED_LLAMA"]).resolve()
        plain_llama = pathlib.Path(os.environ["AUDIOKV_UNSANITIZED_LLAMA"]).resolve()
        ok = ok and llama in mapped and plain_llama not in mapped
        line += f" llama={llama in mapped} unsanitized_llama={plain_llama in mapped}"
    with open(os.environ["AUDIOKV_SANITIZED_MARKER"], "a") as f:
        f.write(f"{'ok' if ok else 'WRONG'} {line}\n")
    return ok
PY
cat >"$tmp/py/audiokv_sanitized_probe.py" <<'PY'
"""pytest plugin (scripts/check_adapter_sanitized.sh): at the end of the session, which libaudiokv did we map?"""
import audiokv_sanitized_maps


def pytest_sessionfinish(session, exitstatus):
    if not audiokv_sanitized_maps.record() and session.exitstatus == 0:
        session.exitstatus = 1
PY

# detect_leaks=0: CPython (and numpy, llama.cpp's globals) keep memory until exit by design; LeakSanitizer would
# report those, not libaudiokv. Every other ASan error, and every UBSan report, aborts the process.
sanitized() {
    env AUDIOKV_EDGE_LIB_DIR="$tmp/lib" \
        LLAMA_CPP_LIB_PATH="$tmp/lib" MTMD_CPP_LIB="$tmp/lib" \
        LD_PRELOAD="$asan $ubsan" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        PYTHONPATH="$tmp/py:$repo${PYTHONPATH:+:$PYTHONPATH}" \
        AUDIOKV_SANITIZED_LIB="$lib" AUDIOKV_UNSANITIZED_LIB="$native_lib/libaudiokv.so" \
        AUDIOKV_SANITIZED_MARKER="$marker" \
        AUDIOKV_SANITIZED_LLAMA="$sanitized_llama" AUDIOKV_UNSANITIZED_LLAMA="$native_lib/libllama.so" \
        "$@"
}
sanitizer_pattern="ERROR: AddressSanitizer|ERROR: UndefinedBehaviorSanitizer|runtime error:"
# a sanitizer report in the log $1 ($2: where) fails the check; with --inject-bug it is what the check waits for
reported() {
    grep -Eq "$sanitizer_pattern" "$1" || return 0
    if [ "$inject" -eq 1 ]; then
        grep -E -A 12 "$sanitizer_pattern" "$1" | head -n 14
        grep -q "heap-buffer-overflow" "$1" || fail "--inject-bug: a sanitizer report $2, but not the injected overflow"
        echo "check_adapter_sanitized: the injected bug was reported ($2; whole log: $1)"
        exit 0
    fi
    grep -E -A 40 "$sanitizer_pattern" "$1" >&2
    grep "SUMMARY:" "$1" >&2 || true
    fail "ASan/UBSan reported an error $2 (above; whole log: $1)"
}

if [ "$pytest_stage" -eq 1 ]; then
    echo "== check_adapter_sanitized: pytest ${tests[*]} =="
    # --capture=sys: pytest captures Python's output only, so what the sanitizers write to file descriptor 2 reaches
    # the log, build/check_c/adapter-sanitize.pytest.log (fd capture would swallow the report of a process that
    # aborts).
    log="$dir.pytest.log"
    : >"$marker"
    status=0
    (cd "$repo" && sanitized "$python" -m pytest -q -p no:cacheprovider --capture=sys -p audiokv_sanitized_probe \
        "${tests[@]}") >"$log" 2>&1 || status=$?
    cat "$marker"
    reported "$log" "in pytest (exit $status)"
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        fail "pytest failed (exit $status) under ASan/UBSan (whole log: $log)"
    fi
    tail -n 1 "$log"
    [ -s "$marker" ] || fail "the probe did not run: cannot tell which libaudiokv was loaded"
    grep -q "^ok " "$marker" || fail "the sanitized libaudiokv was not the one loaded"
fi

# -- 5. the runner, end to end ---------------------------------------------------------------------------------------
# One process runs the whole matrix (audiokv_edge.run.main once per configuration: the runner's own argument parsing,
# Session and --json record; a subprocess per configuration would pay Python + numpy + llama.cpp start-up under ASan
# every time): audio, every method x {one-shot, --stream} x {f16, q8_0} x {-fa off, on}, plus --kv-budget with
# --stream; a text document for a subset. Each run must exit 0 and evict (the kept cache smaller than the full one;
# full: equal), and the process must map the sanitized libaudiokv.
echo "== check_adapter_sanitized: python -m audiokv_edge.run (tiny pair; every method x one-shot/--stream x f16/q8_0 x -fa off/on, --kv-budget; audio, text) =="
pair="$(cd "$repo" && "$python" -c 'import sys
from audiokv_edge.testing.tiny_models import write_tiny_pair
print(*write_tiny_pair(sys.argv[1], "qwen3-qwen3a"))' "$tmp/pair")" || fail "cannot write the tiny pair"
read -r model mmproj <<<"$pair"
"$python" -c 'import sys
words = "the quick brown fox jumps over the lazy dog while the pass key is 4721 and the river runs".split()
open(sys.argv[1], "w").write(" ".join(words[i % len(words)] for i in range(120)) + "\n")' "$tmp/doc.txt"
# the first 3 s of jfk.wav: three 1 s chunks (several --stream evictions), a short prefill per configuration
"$python" -c 'import sys, wave
with wave.open(sys.argv[1], "rb") as src, wave.open(sys.argv[2], "wb") as dst:
    dst.setparams(src.getparams())
    dst.writeframes(src.readframes(3 * src.getframerate()))' "$repo/audiokv_edge/data/jfk.wav" "$tmp/jfk-3s.wav"
cat >"$tmp/py/audiokv_sanitized_matrix.py" <<'PY'
"""The runner's configuration matrix in one process (scripts/check_adapter_sanitized.sh, step 5).

Usage: python -m audiokv_sanitized_matrix MODEL MMPROJ AUDIO DOCUMENT. Calls ``audiokv_edge.run.main`` once per
configuration with --json and checks the record: exit 0, and the kept cache smaller than the full one (method full:
equal). One line per configuration; at exit the /proc/self/maps check. Exit status 1 when any configuration failed.
"""
import contextlib
import io
import json
import sys
import time

import audiokv_sanitized_maps
from audiokv_edge import run

METHODS = ("audiokv", "snapkv", "adakv", "pyramidkv", "h2o", "streamingllm", "full")
KV_BUDGET = 24


def configurations(model, mmproj, audio, document):
    """(what, method, stream, KV type, -fa, --kv-budget), runner input arguments. No q8_0 with -fa off: the runner
    switches flash attention on for a quantized V cache (a warning), which is the q8_0 -fa on run again."""
    audio_in = ["-m", model, "-mm", mmproj, "--audio", audio]
    text_in = ["-m", model, "--text", document, "-p", "What is the pass key?", "--text-block", "48"]
    for method in METHODS:
        for stream in (False, True):
            for kv, fa in (("f16", "off"), ("f16", "on"), ("q8_0", "on")):
                yield ("audio", method, stream, kv, fa, None), audio_in
    for method in METHODS[:-1]:
        yield ("audio", method, True, "f16", "off", KV_BUDGET), audio_in
    yield ("audio", "audiokv", True, "q8_0", "on", KV_BUDGET), audio_in
    for method in METHODS:
        yield ("text", method, True, "f16", "off", None), text_in
    yield ("text", "audiokv", False, "f16", "on", None), text_in
    yield ("text", "audiokv", True, "q8_0", "on", None), text_in
    yield ("text", "snapkv", True, "q8_0", "on", KV_BUDGET), text_in
    yield ("text", "adakv", True, "f16", "on", KV_BUDGET), text_in


def label(what, method, stream, kv, fa, budget):
    return (f"{what} {method}{' --stream' if stream else ''} -ctk/-ctv {kv} -fa {fa}"
            f"{f' --kv-budget {budget}' if budget else ''}")


def one(conf, inputs):
    what, method, stream, kv, fa, budget = conf
    argv = [*inputs, "--method", method, "-ctk", kv, "-ctv", kv, "-fa", fa, "-n", "4", "-c", "1024", "-t", "1",
            "--json"]
    if method != "full":
        argv += ["--keep", "0.4"]
    if stream:
        argv.append("--stream")
    if budget:
        argv += ["--kv-budget", str(budget)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = run.main(argv)
    if status != 0:
        return f"exit {status}"
    lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
    if not lines:
        return "no JSON record"
    record = json.loads(lines[-1])
    full, kept = record["kv_bytes_full"], record["kv_bytes_kept"]
    if not record["eviction_applied"]:
        return "eviction_applied false"
    if record["flash_attn"] != (fa == "on") or record["kv_type"] != kv or record["stream"] != stream:
        return f"the record's settings differ: flash_attn={record['flash_attn']} kv_type={record['kv_type']}"
    if method == "full":
        return None if kept == full else f"full kept {kept} of {full} bytes"
    if not 0 < kept < full:
        return f"no eviction: kept {kept} of {full} bytes"
    return None


def main(argv):
    model, mmproj, audio, document = argv
    failed = 0
    count = 0
    start = time.perf_counter()
    for conf, inputs in configurations(model, mmproj, audio, document):
        count += 1
        problem = one(conf, inputs)
        print(f"{'FAILED' if problem else 'ok'} {label(*conf)}{': ' + problem if problem else ''}", flush=True)
        failed += problem is not None
    print(f"configurations: {count}, failed: {failed}, {time.perf_counter() - start:.1f} s", flush=True)
    mapped = audiokv_sanitized_maps.record()
    return 1 if failed or not mapped else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
PY
log="$dir.run-matrix.log"
: >"$marker"
status=0
(cd "$repo" && sanitized "$python" -m audiokv_sanitized_matrix "$model" "$mmproj" \
    "$tmp/jfk-3s.wav" "$tmp/doc.txt") >"$log" 2>&1 || status=$?
reported "$log" "in the runner matrix (exit $status)"
grep -E "^(ok|FAILED) " "$log" || true
grep "^configurations: " "$log" || true
if [ "$status" -ne 0 ]; then
    grep -E -A 3 "^FAILED " "$log" >&2 || tail -n 40 "$log" >&2
    fail "the runner matrix failed (exit $status) under ASan/UBSan (whole log: $log)"
fi
[ -s "$marker" ] || fail "the runner matrix's probe did not run: cannot tell which libaudiokv was loaded"
echo "matrix: $(cat "$marker")"
grep -q "^ok " "$marker" || fail "the sanitized libaudiokv was not the one loaded in the runner matrix"
[ "$inject" -eq 0 ] || fail "--inject-bug: the injected overflow was NOT reported"
if [ "$pytest_stage" -eq 1 ]; then
    echo "check_adapter_sanitized: passed (${tests[*]}; the runner matrix: audio and text)"
else
    echo "check_adapter_sanitized: passed (the runner matrix: audio and text)"
fi
