#!/usr/bin/env bash
# Builds libaudiokv and runs its C tests three ways:
#   1. release build, -Wall -Wextra -Wpedantic -Werror
#   2. debug build with -fsanitize=address,undefined (-Werror too)
#   3. cross-compiled for aarch64 with aarch64-linux-gnu-gcc, run under qemu-aarch64 -L /usr/aarch64-linux-gnu
# Usage: bash scripts/check_c.sh [release|sanitize|aarch64 ...]   (default: all three)
# Build trees go to build/check_c/<variant> (incremental). Needs cmake, a C compiler, and for step 3 the Debian
# packages gcc-aarch64-linux-gnu and qemu-user (scripts/install_system_deps.sh installs them).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/libaudiokv"
out="$repo/build/check_c"
mkdir -p "$out"
jobs="${AUDIOKV_CHECK_JOBS:-2}"
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(release sanitize aarch64)

run_variant() {
    local name="$1"; shift
    local dir="$out/$name"
    echo "== check_c: $name =="
    cmake -S "$src" -B "$dir" -DAUDIOKV_BUILD_TESTS=ON -DAUDIOKV_WERROR=ON "$@" >"$dir.configure.log" 2>&1 || {
        cat "$dir.configure.log" >&2; echo "check_c: $name: configure failed" >&2; return 1; }
    if ! cmake --build "$dir" -j "$jobs" >"$dir.build.log" 2>&1; then
        cat "$dir.build.log" >&2; echo "check_c: $name: build failed" >&2; return 1
    fi
    if grep -E "warning:|error:" "$dir.build.log" >&2; then
        echo "check_c: $name: the build printed warnings" >&2; return 1
    fi
    (cd "$dir" && ctest --output-on-failure --timeout 600)
    echo "== check_c: $name passed =="
}

for v in "${variants[@]}"; do
    case "$v" in
        release)
            run_variant release -DCMAKE_BUILD_TYPE=Release ;;
        sanitize)
            ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
                run_variant sanitize -DCMAKE_BUILD_TYPE=Debug -DAUDIOKV_SANITIZE=ON ;;
        aarch64)
            for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
                command -v "$tool" >/dev/null || {
                    echo "check_c: $tool not found; run scripts/install_system_deps.sh" >&2; exit 1; }
            done
            run_variant aarch64 -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux \
                -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc \
                -DCMAKE_FIND_ROOT_PATH=/usr/aarch64-linux-gnu \
                "-DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64;-L;/usr/aarch64-linux-gnu"
            file "$out/aarch64/libaudiokv.so" | grep -q "ARM aarch64" || {
                echo "check_c: aarch64 build did not produce an ARM64 library" >&2; exit 1; } ;;
        *)
            echo "check_c: unknown variant $v (release, sanitize, aarch64)" >&2; exit 2 ;;
    esac
done
echo "check_c: all passed (${variants[*]})"
