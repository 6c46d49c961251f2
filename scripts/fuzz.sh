#!/usr/bin/env bash
# Fuzz the parsers and entry points that take hostile input, each for a bounded time:
#   C (libFuzzer, clang -fsanitize=fuzzer,address,undefined; sources in libaudiokv/fuzz/):
#     profile_read   audiokv_profile_read: the head profile a model's GGUF metadata carries (src/gguf_profile.c)
#     plan           libaudiokv's public entry points: any shape, parameters, NaN / Inf, sizes
#   Python (atheris, pip extra "fuzz"; harnesses in scripts/fuzz_python.py):
#     gguf_profile   the GGUF header parser, the stored-profile reader and the profile writer
#     profile_file   a head profile side file (.json / .npz)
#     audio          the audio loader, any bytes as .wav / .flac / .ogg / .mp3
#     demo_weights   the demo model's LoRA / projector weight checks (npz)
#   HTTP (a seeded request mutator, scripts/fuzz_server.py; only when named: it starts a llama-server):
#     server         python -m audiokv_edge.serve: random / malformed JSON bodies and audio payloads
# Usage: bash scripts/fuzz.sh [-t SECONDS_PER_TARGET | -r RUNS_PER_TARGET] [-o OUT_DIR] [TARGET ...]
#   (default: 60 s per target, every target; -r: that many inputs each instead, the smoke run of the tests)
# Corpora: libaudiokv/fuzz/corpus/<target> and tests/data/fuzz/<target> (committed seeds made from the project's
# own test files; new inputs found go to OUT_DIR/corpus/<target>, not into the committed ones). A crash leaves
# OUT_DIR/<target>/crash-* and makes the script exit 1; the summary (executions, seconds per target) is printed and
# written to OUT_DIR/summary.json. Needs clang with its compiler-rt (scripts/install_system_deps.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=60
runs=""
out="$repo/build/fuzz"
while getopts "t:r:o:" opt; do
    case "$opt" in
        t) seconds="$OPTARG" ;;
        r) runs="$OPTARG" ;;
        o) out="$OPTARG" ;;
        *) echo "usage: $0 [-t SECONDS | -r RUNS] [-o OUT_DIR] [TARGET ...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
c_targets=(profile_read plan)
py_targets=(gguf_profile profile_file audio demo_weights)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${c_targets[@]}" "${py_targets[@]}")
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
mkdir -p "$out"
budget=(-max_total_time="$seconds")
[ -n "$runs" ] && budget=(-runs="$runs")

lib="$repo/libaudiokv"
lib_sources=(budgets f16 fft integerise log params plan pool scores select sss threads)

build_c() {   # build_c TARGET -> $out/bin/fuzz_TARGET
    local target="$1" bin="$out/bin/fuzz_$1"
    command -v clang >/dev/null || { echo "fuzz: clang not found; run scripts/install_system_deps.sh" >&2; exit 1; }
    mkdir -p "$out/bin"
    local sources=()
    for s in "${lib_sources[@]}"; do sources+=("$lib/src/$s.c"); done
    [ "$target" = profile_read ] && sources+=("$lib/src/gguf_profile.c")
    # rebuilt only when a source or header changed
    if [ -x "$bin" ] && [ -z "$(find "$lib/src" "$lib/include" "$lib/fuzz" -newer "$bin" -name "*.[ch]" | head -1)" ]; then
        return 0
    fi
    clang -std=c11 -g -O1 -Wall -Wextra -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -DAUDIOKV_BUILD -D_POSIX_C_SOURCE=200809L -I "$lib/include" -I "$lib/src" \
        -I "$lib/fuzz/llama_stub" "$lib/fuzz/fuzz_$target.c" "${sources[@]}" -o "$bin" -lm -lpthread
}

summary="$out/summary.tsv"
: > "$summary"
failed=0
for target in "${targets[@]}"; do
    dir="$out/$target"
    corpus="$out/corpus/$target"
    mkdir -p "$dir" "$corpus"
    log="$dir/fuzz.log"
    if [[ " ${c_targets[*]} " == *" $target "* ]]; then
        build_c "$target"
        seeds="$lib/fuzz/corpus/$target"
        cmd=("$out/bin/fuzz_$target")
    elif [ "$target" = server ]; then
        start=$(date +%s.%N)
        rc=0
        server_budget=(--seconds "$seconds")
        [ -n "$runs" ] && server_budget=(--seconds 86400 --runs "$runs")
        "$python" "$repo/scripts/fuzz_server.py" "${server_budget[@]}" --out "$dir" >"$dir/fuzz.log" 2>&1 || rc=$?
        end=$(date +%s.%N)
        execs=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["executions"])' "$dir/summary.json" \
            2>/dev/null || echo 0)
        crashes=$(find "$dir/findings" -name "finding-*" 2>/dev/null | wc -l)
        wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
        printf "%s\t%s\t%s\t%s\t%s\n" "$target" "$execs" "$wall" "$crashes" "$rc" >> "$summary"
        printf "fuzz: %-13s %9s executions in %6s s, exit %s, %s findings (%s)\n" "$target" "$execs" "$wall" "$rc" \
            "$crashes" "$dir/fuzz.log"
        if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
            failed=1
            tail -n 30 "$dir/fuzz.log" >&2
        fi
        continue
    elif [[ " ${py_targets[*]} " == *" $target "* ]]; then
        seeds="$repo/tests/data/fuzz/$target"
        cmd=("$python" "$repo/scripts/fuzz_python.py" "$target")
    else
        echo "fuzz: unknown target $target (${c_targets[*]} ${py_targets[*]})" >&2; exit 2
    fi
    start=$(date +%s.%N)
    rc=0
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        "${cmd[@]}" "$corpus" "$seeds" "${budget[@]}" -max_len=65536 -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$dir/" >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    execs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" | tail -1 || true)
    crashes=$(find "$dir" -maxdepth 1 \( -name "crash-*" -o -name "leak-*" -o -name "timeout-*" -o -name "oom-*" \) | wc -l)
    wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    printf "%s\t%s\t%s\t%s\t%s\n" "$target" "${execs:-0}" "$wall" "$crashes" "$rc" >> "$summary"
    printf "fuzz: %-13s %9s executions in %6s s, exit %s, %s crash files (%s)\n" "$target" "${execs:-0}" "$wall" \
        "$rc" "$crashes" "$log"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        tail -n 30 "$log" >&2
    fi
done
"$python" - "$summary" "$out/summary.json" "${runs:-$seconds}" "${runs:+runs}" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
result = {("runs_per_target" if sys.argv[4] else "seconds_per_target"): float(sys.argv[3]),
          "targets": [{"target": t, "executions": int(e), "wall_s": float(w), "crash_files": int(c), "exit_code": int(r)}
                      for t, e, w, c, r in rows]}
open(sys.argv[2], "w").write(json.dumps(result, indent=2) + "\n")
EOF
exit $failed
