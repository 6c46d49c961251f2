"""The C reader (libaudiokv/src/gguf_profile.c on llama.cpp's model metadata API, run by the tool
libaudiokv/tools/print_profile) agrees bit for bit with the Python reader."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from audiokv_edge.profile import gguf_keys as gp
from audiokv_edge.profile.head_profile import HeadProfile
from audiokv_edge.profile.defaults import ProfileDefaults
from audiokv_edge.testing.tiny_models import write_tiny_pair
from tests.gguf_testfiles import patch_u32

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def reader_exe():
    """libaudiokv's tool print_profile, built with the library by the combined build (build/native/bin)."""
    from audiokv_edge.native import libs as native_libs

    exe = native_libs.lib_dir().parent / "bin" / "print_profile"
    assert exe.is_file(), f"{exe} not found: run scripts/setup.sh (the combined build builds it with libaudiokv)"
    return exe


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model, _ = write_tiny_pair(tmp_path_factory.mktemp("tiny"), "qwen2-qwen2a")
    return model


def _c_read(exe, path):
    res = subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout, res.stderr


def _parse(stdout):
    scores, vals = [], {}
    for line in stdout.splitlines():
        k, v = line.split(" ", 1)
        if k == "score":
            scores.append(float.fromhex(v))
        else:
            vals[k] = v
    return np.array(scores), vals


@pytest.mark.parametrize("defaults", [None, ProfileDefaults(window=8, sss_alpha=0.5, sss_gamma=0.7, keep=0.123456)])
@pytest.mark.parametrize("seed", [0, 1])
def test_c_reader_matches_python(reader_exe, tiny_model, tmp_path, defaults, seed):
    shape = gp.model_shape(gp.open_gguf(tiny_model))
    rng = np.random.default_rng(seed)
    scores = rng.random((shape.n_layer, shape.n_head_kv)) ** 3 / 7       # odd values, tiny and large exponents
    scores[0, 0] = 1e-30
    out = tmp_path / "p.gguf"
    gp.write_profile(tiny_model, HeadProfile(scores, source={"calibration": "c parity"}), out, defaults)
    py, py_d = gp.read_stored(out)
    rc, stdout, stderr = _c_read(reader_exe, out)
    assert rc == 0, stderr
    c_scores, vals = _parse(stdout)
    assert (int(vals["n_layer"]), int(vals["n_head_kv"])) == py.scores.shape
    np.testing.assert_array_equal(c_scores.astype(np.float32).view(np.uint32),
                                  py.scores.astype(np.float32).ravel().view(np.uint32))     # bit for bit
    want = py_d or ProfileDefaults()
    assert int(vals["window"]) == (want.window if want.window is not None else -1)
    for name in ("sss_alpha", "sss_gamma", "keep"):
        v = float(vals[name])
        assert (np.isnan(v) and getattr(want, name) is None) or v == getattr(want, name)


def test_c_reader_no_profile(reader_exe, tiny_model):
    rc, stdout, _ = _c_read(reader_exe, tiny_model)
    assert rc == 1 and stdout.strip() == "none"



@pytest.mark.parametrize("case, code, match", [
    ("version", -2, "format_version = 2"),
    ("shape", -5, "layers x"),
    ("nan", -6, "NaN, infinite or negative score at layer 0, KV head 0"),
])
def test_c_reader_errors_name_the_problem(reader_exe, tiny_model, tmp_path, case, code, match):
    shape = gp.model_shape(gp.open_gguf(tiny_model))
    out = tmp_path / "bad.gguf"
    gp.write_profile(tiny_model, HeadProfile(np.ones((shape.n_layer, shape.n_head_kv)), source={"calibration": "c"}),
                     out)
    if case == "version":
        patch_u32(out, gp.KEY_FORMAT_VERSION, 2)
    elif case == "shape":
        patch_u32(out, gp.KEY_N_LAYER, shape.n_layer + 1)
    else:
        data = out.read_bytes()
        tok = float(np.float32(1.0)).hex().encode()
        out.write_bytes(data.replace(tok, b"nan".ljust(len(tok)), 1))
    with pytest.raises(gp.GGUFProfileError):
        gp.read_stored(out)                                   # the Python reader refuses it too
    rc, _, stderr = _c_read(reader_exe, out)
    assert rc == 2 and f"error {code}:" in stderr and match in stderr, stderr
