"""plan(..., backend="c") equals plan(..., backend="numpy") token for token (docs/semantics.md).

Matrix: every method with its parameter variants x n_tokens {1, 31, 33, 100, 4096, 7500, 100000} x inputs (random,
runs of identical keys = ties, all-equal keys, large-magnitude and tiny keys/queries without NaN) x keeps, float32,
float64 and float16 inputs, and the committed golden plans. Tolerance: none, plans must be identical. The C plan
must also not depend on the thread count.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from audiokv_edge import HeadProfile, KeepPlan, plan
from audiokv_edge.native import audiokv as C
from audiokv_edge.native.plan import c_params, plan_c
from audiokv_edge.methods import METHODS
from tests.conftest import METHOD_CASES
from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native

DATA = Path(__file__).parent / "data"

CASES = METHOD_CASES
KEEPS = [0.03, 0.1, 0.4, 0.8, 1.0]


@pytest.fixture(scope="module", autouse=True)
def lib():
    return ensure_libaudiokv()


def test_libaudiokv_knows_every_method():
    """Method numbers come from libaudiokv (audiokv_method_from_name): it knows exactly the Python methods."""
    assert sorted(C.method_names()) == sorted(METHODS)
    assert [C.method_id(name) for name in C.method_names()] == list(range(len(METHODS)))
    with pytest.raises(ValueError, match="unknown method"):
        C.method_id("nosuch")


def snap_to_row_grid(x):
    """The 24-bit row grid applied after SSS (docs/semantics.md, "Smoothing"), written independently of the C code."""
    m = np.max(np.abs(x), axis=-1, keepdims=True)
    _, e = np.frexp(m)
    q = np.ldexp(1.0, e - 24)
    return np.where(m > 0, np.rint(x / q) * q, x)


def test_reference_rounds_sss_rows_to_the_grid():
    """Both sides apply the grid (C: akv_snap_to_row_grid); spiky rows would otherwise rank FFT noise."""
    from audiokv_edge.reference.scores import smoothed_window_scores

    q, k, _ = make_inputs("large", 1, 2, 1, 40, 8, 8, 7)
    s = smoothed_window_scores(q, k, sss_alpha=0.5, sss_gamma=0.95)
    assert np.array_equal(s, snap_to_row_grid(s))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_python_and_c_defaults_agree(method):
    """plan(backend="c") passes only non-default parameters: the C defaults must be the dataclass defaults."""
    p = c_params(method, {})
    pool = {v: k for k, v in C.POOL_TYPES.items()}
    gqa = {v: k for k, v in C.GQA_REDUCTIONS.items()}
    for key, value in dataclasses.asdict(METHODS[method]()).items():
        got = getattr(p, key)
        got = pool[got] if key == "pool_type" else gqa[got] if key == "gqa_reduce" else got
        assert got == value, (method, key)


def make_inputs(kind, n_layer, n_head, n_head_kv, n_tokens, w, d, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_layer, n_head, w, d))
    k = rng.standard_normal((n_layer, n_head_kv, n_tokens, d))
    if kind == "ties":
        k = np.repeat(k[:, :, ::3], 3, axis=2)[:, :, :n_tokens]
    elif kind == "all_equal":
        k = np.broadcast_to(k[:, :, :1], k.shape)
    elif kind == "large":
        q, k = q * 40.0, k * 40.0     # logits in the thousands: one-hot softmax rows, underflowing columns
    elif kind == "tiny":
        q, k = q * 1e-20, k * 1e-20   # all logits ~0: near-uniform attention
    profile = rng.random((n_layer, n_head_kv)) ** 3
    profile.flat[-1] += 3.0           # dominant head: budgets above N get redistributed at high keep
    return np.ascontiguousarray(q, dtype=dtype), np.ascontiguousarray(k, dtype=dtype), HeadProfile(profile)


def check_parity(method, params, q, k, keep, profile, window, threads=(1, 2), audio_mask=None):
    want = plan(method, q, k, keep, profile, window=window, audio_mask=audio_mask, **params)
    extra = {} if audio_mask is None else {"audio_mask": audio_mask}
    for n_threads in threads:
        got = plan_c(method, q, k, keep, profile, dict(params, window=window, **extra), n_threads=n_threads)
        assert got == want, (method, params, keep, n_threads, got.budgets, want.budgets)
    assert plan(method, q, k, keep, profile, backend="c", window=window, audio_mask=audio_mask, **params) == want
    return want


def audio_masks(rng, n_tokens):
    """Audio masks of n_tokens positions: a prompt's layout (text, one audio span, text), two spans with text
    between (one of 1, 2 and 3 tokens of audio at the edges), random flags (many runs of 1), every position audio,
    none."""
    layout = np.zeros(n_tokens, bool)
    layout[n_tokens // 8: n_tokens - n_tokens // 5] = True
    two = np.zeros(n_tokens, bool)
    two[1:n_tokens // 3] = True
    two[n_tokens // 3 + 3: n_tokens // 3 + 5] = True
    two[n_tokens // 2:] = True
    two[0] = two[n_tokens // 2 + 1] = False
    return {"layout": layout, "two_spans": two, "random": rng.random(n_tokens) < 0.6,
            "all": np.ones(n_tokens, bool), "none": np.zeros(n_tokens, bool)}


@pytest.mark.parametrize("kind", ["random", "ties", "all_equal", "large", "tiny"])
@pytest.mark.parametrize("n_tokens,window", [(1, 32), (31, 32), (33, 32), (33, 8), (100, 32), (100, 16)])
def test_small(kind, n_tokens, window):
    w = min(window, n_tokens)
    q, k, profile = make_inputs(kind, 3, 6, 2, n_tokens, w, 16, n_tokens)
    for method, params in CASES:
        for keep in KEEPS:
            check_parity(method, params, q, k, keep, profile, window)


@pytest.mark.parametrize("kind", ["random", "ties", "large"])
@pytest.mark.parametrize("n_tokens,window", [(33, 8), (100, 16), (251, 32)])
def test_audio_mask(kind, n_tokens, window):
    """SSS restricted to the audio tokens (docs/semantics.md): every method (only audiokv reads the mask) x masks."""
    w = min(window, n_tokens)
    q, k, profile = make_inputs(kind, 3, 6, 2, n_tokens, w, 16, n_tokens + 1)
    masks = audio_masks(np.random.default_rng(n_tokens), n_tokens)
    for method, params in CASES:
        for keep in KEEPS:
            for name, mask in masks.items():
                check_parity(method, params, q, k, keep, profile, window, audio_mask=mask)


def test_audio_mask_extremes():
    """All audio: exactly today's SSS; no audio: the raw window scores (audiokv without SSS and pooling); both sides."""
    q, k, profile = make_inputs("random", 3, 6, 2, 160, 16, 16, 4)
    differ = []
    for params in ({}, {"sss_alpha": 1.0, "sss_gamma": 0.3}, {"sss_taper": 0.0}, {"redistribute_surplus": False}):
        for keep in (0.2, 0.4, 0.8):
            for backend in ("numpy", "c"):
                args = ("audiokv", q, k, keep, profile)
                plain = plan(*args, backend=backend, window=16, **params)
                assert plan(*args, backend=backend, window=16, audio_mask=np.ones(160, bool), **params) == plain
                raw = plan(*args, backend=backend, window=16, **dict(params, sss_alpha=0.0, pool_kernel=1))
                assert plan(*args, backend=backend, window=16, audio_mask=np.zeros(160, np.uint8), **params) == raw
                differ.append(raw != plain)
    assert sum(differ) >= len(differ) // 2      # the mask does matter


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_input_dtypes(dtype):
    q, k, profile = make_inputs("random", 2, 4, 2, 200, 32, 8, 5, dtype)
    for method, params in CASES:
        check_parity(method, params, q, k, 0.4, profile, 32)


def test_h2o_accumulated_scores():
    q, k, profile = make_inputs("random", 2, 4, 2, 150, 32, 8, 9)
    rng = np.random.default_rng(3)
    for rows in (4, 2):
        acc = np.floor(rng.random((2, rows, 150)) * 20)   # integer-valued: many ties
        for keep in KEEPS:
            for params in ({}, {"gqa_reduce": "max"}):
                want = plan("h2o", None, k, keep, accumulated_scores=acc, **params)
                assert plan("h2o", None, k, keep, accumulated_scores=acc, backend="c", **params) == want
                assert plan("h2o", q, k, keep, accumulated_scores=acc, backend="c", **params) == want


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "ties", "large"])
@pytest.mark.parametrize("n_tokens", [4096, 7500])
def test_long(kind, n_tokens):
    q, k, profile = make_inputs(kind, 2, 4, 2, n_tokens, 32, 16, n_tokens)
    for method, params in CASES:
        for keep in (0.1, 0.4, 0.8):
            check_parity(method, params, q, k, keep, profile, 32, threads=(2,))


@pytest.mark.slow
def test_hundred_thousand_tokens():
    q, k, profile = make_inputs("random", 1, 2, 1, 100000, 32, 8, 100000)
    for method, params in CASES:
        if method == "full":
            continue
        check_parity(method, params, q, k, 0.4, profile, 32, threads=(2,))


def golden_cases(path):
    with np.load(path) as z:
        data = {key: z[key] for key in z.files}
    cases = json.loads(str(data["cases"]))
    offsets = np.concatenate([[0], np.cumsum(data["counts"].reshape(len(cases), -1).sum(axis=1))])
    for i, case in enumerate(cases):
        yield data, case, KeepPlan.from_flat(data["counts"][i], data["indices"][offsets[i]:offsets[i + 1]],
                                             data["keys"].shape[2])


@pytest.mark.parametrize("path", sorted(DATA.glob("golden_*.npz")), ids=lambda p: p.stem)
def test_golden_plans(path):
    n = 0
    for data, case, expected in golden_cases(path):
        got = plan(case["method"], data["q_window"], data["keys"], case["keep"], HeadProfile(data["profile"]),
                   backend="c", **case["params"])
        assert got == expected, case
        n += 1
    assert n > 0
