#!/usr/bin/env bash
# System packages the build, the tests and the calibration-speech generator need (Debian/Ubuntu; macOS: Homebrew
# equivalents are listed in README.md). Idempotent: installs only what is missing.
set -euo pipefail

packages=(
    build-essential   # C/C++ compilers for llama.cpp and libaudiokv
    cmake             # fallback; pip's cmake is used when newer
    patch             # applies patches/ to the vendored llama.cpp
    libsndfile1       # soundfile's native library
    sox               # resampling and mixing of test audio
    flite             # synthetic calibration speech with exact word timings
    espeak-ng         # second synthetic voice
    gcc-aarch64-linux-gnu   # ARM64 cross-build of libaudiokv (scripts/check_c.sh) and of ggml
    g++-aarch64-linux-gnu   # ARM64 cross-build of the patched llama.cpp (scripts/check_arm64.sh)
    libc6-dev-arm64-cross   # its C library headers and start files (only recommended by the compiler package)
    qemu-user         # runs the ARM64 tests (qemu-aarch64 -L /usr/aarch64-linux-gnu)
    file              # the ARM64 checks verify the architecture of what they built
    clang             # libFuzzer + ASan/UBSan builds of the C fuzz targets (scripts/fuzz.sh)
    # training data of the demo audio model (scripts/train_demo_model.py): more voices and offline English text
    festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
    wamerican fortunes-min python3-doc
)

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: no apt-get here; install these yourself: ${packages[*]}" >&2
    exit 0
fi

# clang's sanitizer and libFuzzer runtimes: a package of their own on Debian 12 and later (libclang-rt-dev), inside
# libclang-common-*-dev on older releases, where the name does not exist.
if command -v apt-cache >/dev/null 2>&1 && apt-cache show libclang-rt-dev >/dev/null 2>&1; then
    packages+=(libclang-rt-dev)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
