"""convert/profile_heads.py on the audio families beyond Whisper + a plain KV cache (docs/model-families.md), then
convert/add_profile.py storing the profile in the text model's GGUF.

- lfm2-lfm2a (LFM2-Audio): the short-convolution layers have no attention rows; their profile rows are 0 and the
  attention layers hold the whole profile (the last prompt token is held back, not removed from the cache
  afterwards: a hybrid memory cannot drop its last position);
- granite-granite_speech (Granite Speech): a plain KV cache, every layer scored;
- gemma4-gemma4a (Gemma 4): the layers reading another layer's K/V are folded into that layer (llama.cpp's reuse
  rule, ``runtime.kv_layers``, tested in test_kv_layers.py); their rows are 0, the sliding-window layers see no audio (0 too).
The profile has the model's [block_count, head_count_kv] shape, sums to 1, and reads back bit-exactly from the
GGUF add_profile writes. One calibration clip each, to stay fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profiling.hit_ratio import fold_shared_layers
from audiokv_edge.testing.tiny_models import TINY_PAIRS, write_tiny_pair
from tests.profile_fixtures import REPO, calibration_set_fixture, run_profile_heads

pytestmark = pytest.mark.native

ADD_PROFILE = REPO / "convert" / "add_profile.py"


calib = calibration_set_fixture(clips=1)


def test_fold_adds_readers_into_their_source():
    scores = np.arange(12, dtype=np.float64).reshape(6, 2)
    folded = fold_shared_layers(scores, {4: 2, 5: 3})
    np.testing.assert_array_equal(folded[2], scores[2] + scores[4])
    np.testing.assert_array_equal(folded[3], scores[3] + scores[5])
    assert not folded[4:].any() and folded.sum() == scores.sum()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lfm2-lfm2a", "granite-granite_speech", "gemma4-gemma4a"])
def test_profile_and_add_profile(tmp_path, calib, name):
    spec = TINY_PAIRS[name].text
    model, mmproj = write_tiny_pair(tmp_path, name)
    pj, out = tmp_path / "profile.json", tmp_path / "model-profiled.gguf"
    res = run_profile_heads(model, "--mmproj", mmproj, "--calib", calib, "-o", pj, "--threads", "2", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(pj.read_text())
    shape = gp.model_shape(gp.open_gguf(model))
    assert (meta["n_layer"], meta["n_head_kv"]) == (shape.n_layer, shape.n_head_kv) == (spec.n_layer, spec.n_head_kv)
    scores = np.array(meta["scores"])
    assert scores.shape == (spec.n_layer, spec.n_head_kv)
    assert scores.sum() == pytest.approx(1.0) and np.all(scores >= 0)
    evictable = [il for il in range(spec.n_layer) if spec.has_kv(il) and not spec.is_swa(il)]
    assert scores[evictable].sum() == pytest.approx(1.0)   # no share outside the layers the eviction sees
    if spec.arch == "gemma4":
        assert "4 shared-KV layers folded" in meta["source"]["method"]

    res = subprocess.run([sys.executable, str(ADD_PROFILE), str(model), str(pj), "-o", str(out), "--no-progress",
                          "-q"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    stored, _ = gp.read_stored(out)
    np.testing.assert_array_equal(stored.scores, scores.astype(np.float32).astype(np.float64))
