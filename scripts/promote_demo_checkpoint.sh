#!/usr/bin/env bash
# Make a trained checkpoint the built-in demo model: copy the trainer's float16 exports (projector.npz, lora.npz) from
# its work folder into audiokv_edge/data/demo, rebuild build/demo, re-measure the head profile on a calibration set of
# training voices (flite slt / kal16; never the reserved awb / rms) and record every file's sha256.
#
#     bash scripts/promote_demo_checkpoint.sh ~/.cache/audiokv-edge/demo-train
#
# Then run tests/test_demo_model*.py and re-measure the quality tables (docs/demo-model.md).
set -euo pipefail

work="${1:?usage: promote_demo_checkpoint.sh WORK_DIR (the --work folder of the trainer)}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${PYTHON:-$repo/.venv/bin/python}"
data=audiokv_edge/data/demo
say() { echo "[promote_demo_checkpoint $(date +%H:%M:%S)] $*"; }

for f in projector.npz lora.npz; do
    [ -f "$work/$f" ] || { echo "promote_demo_checkpoint: $work/$f not found (run scripts/train_demo_model.py)" >&2; exit 1; }
done
cp "$work/projector.npz" "$work/lora.npz" "$data/"
rm -f "$data/profile.json"          # measured on the previous weights: measured again below
say "build/demo from the new weights (no head profile yet)"
"$py" scripts/build_demo_model.py --record
calib="$repo/build/demo-calib"
if [ ! -f "$calib/manifest.json" ]; then
    say "calibration speech: 11 clips of 8 sentences, flite slt / kal16"
    "$py" scripts/make_calibration_set.py --out "$calib" --voices slt,kal16 --clips 11 --sentences-per-clip 8
fi
say "head profile (convert/profile_heads.py, keep 0.4)"
"$py" convert/profile_heads.py build/demo/model.gguf --mmproj build/demo/mmproj.gguf --lora build/demo/lora.gguf \
    --calib "$calib" --keep 0.4 -o "$data/profile.json"
say "build/demo with the profile stored; SHA256SUMS recorded"
"$py" scripts/build_demo_model.py --record
say "done: $data/{projector.npz,lora.npz,profile.json,SHA256SUMS}"
