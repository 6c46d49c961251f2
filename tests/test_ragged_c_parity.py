"""plan_ragged(..., backend="c") equals plan_ragged(..., backend="numpy") token for token on ragged caches
(docs/semantics.md, "Re-planning a ragged cache"); a ragged context holding every position plans like the dense one.

Matrix: every method and parameter variant of test_c_parity x random raggedness (heads holding only the window,
heads holding every position, anything between) x keeps x float32 / float16 / float64 keys, 1 and 2 threads, and a
long cache (~7500 positions). Tolerance: none, plans must be identical. Errors of the C ragged API map to
ValueError.
"""

import numpy as np
import pytest

from audiokv_edge import HeadProfile, plan
from audiokv_edge.native import audiokv as C
from audiokv_edge.native.plan import AudioKVContext, c_params, plan_ragged_c
from audiokv_edge.keep_plan import plan_ragged
from tests.libaudiokv_build import ensure_libaudiokv
from tests.test_c_parity import CASES, audio_masks, make_inputs

pytestmark = pytest.mark.native

KEEPS = [0.03, 0.1, 0.4, 0.8, 1.0]


@pytest.fixture(scope="module", autouse=True)
def lib():
    return ensure_libaudiokv()


def ragged_cache(rng, n_layer, n_head, n_head_kv, n_positions, window, d, dtype=np.float32, kind="random"):
    """Random per-head subsets of the positions (the window always; some heads only the window, some all)."""
    w = min(window, n_positions)
    q = rng.standard_normal((n_layer, n_head, w, d))
    all_keys = rng.standard_normal((n_layer, n_head_kv, n_positions, d))
    if kind == "ties":
        all_keys = np.repeat(all_keys[:, :, ::3], 3, axis=2)[:, :, :n_positions]
    keys, positions = [], []
    for layer in range(n_layer):
        k_row, p_row = [], []
        for head in range(n_head_kv):
            pick = rng.random()
            if pick < 0.15:
                n = w                                    # only the window
            elif pick < 0.3:
                n = n_positions                          # every position
            else:
                n = int(rng.integers(w, n_positions + 1))
            older = np.sort(rng.choice(n_positions - w, size=n - w, replace=False))
            pos = np.concatenate([older, np.arange(n_positions - w, n_positions)]).astype(np.int64)
            k_row.append(np.ascontiguousarray(all_keys[layer, head, pos], dtype=dtype))
            p_row.append(pos)
        keys.append(k_row)
        positions.append(p_row)
    profile = rng.random((n_layer, n_head_kv)) ** 3
    profile.flat[0] += 3.0
    return np.ascontiguousarray(q, dtype=dtype), keys, positions, HeadProfile(profile)


def check_ragged_parity(method, params, q, keys, keep, profile, window, n_positions, threads=(1, 2),
                        audio_mask=None, positions=None):
    extra = {} if audio_mask is None else {"audio_mask": audio_mask, "positions": positions}
    want = plan_ragged(method, q, keys, keep, profile, n_positions=n_positions, window=window, **extra, **params)
    for n_threads in threads:
        got = plan_ragged_c(method, q, keys, keep, profile, dict(params, window=window, **extra), n_positions,
                            n_threads=n_threads)
        assert got == want, (method, params, keep, n_threads, got.budgets, want.budgets)
    assert plan_ragged(method, q, keys, keep, profile, n_positions=n_positions, backend="c", window=window,
                       **extra, **params) == want
    return want


@pytest.mark.parametrize("shape", [(3, 6, 2, 100, 16), (2, 4, 4, 60, 8), (2, 8, 1, 45, 32), (1, 2, 2, 33, 32)],
                         ids=lambda s: "L{}H{}K{}P{}w{}".format(*s))
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_ragged_small(shape, kind):
    n_layer, n_head, n_head_kv, n_positions, window = shape
    rng = np.random.default_rng(n_positions * 7 + n_head_kv + (kind == "ties"))
    for trial in range(2):
        q, keys, _, profile = ragged_cache(rng, n_layer, n_head, n_head_kv, n_positions, window, 16, kind=kind)
        for method, params in CASES:
            for keep in KEEPS:
                check_ragged_parity(method, params, q, keys, keep, profile, window, n_positions)


@pytest.mark.parametrize("shape", [(3, 6, 2, 100, 16), (2, 8, 1, 45, 32), (2, 4, 4, 251, 16)],
                         ids=lambda s: "L{}H{}K{}P{}w{}".format(*s))
def test_ragged_audio_mask(shape):
    """SSS restricted to the audio tokens on ragged heads: runs are consecutive audio ENTRIES of a head (evicted
    positions between them do not split a run); every method x masks of the positions."""
    n_layer, n_head, n_head_kv, n_positions, window = shape
    rng = np.random.default_rng(n_positions + 3)
    q, keys, positions, profile = ragged_cache(rng, n_layer, n_head, n_head_kv, n_positions, window, 16)
    for name, mask in audio_masks(rng, n_positions).items():
        for method, params in CASES:
            for keep in KEEPS:
                check_ragged_parity(method, params, q, keys, keep, profile, window, n_positions,
                                    audio_mask=mask, positions=positions)


def test_ragged_audio_runs_follow_the_entry_order():
    """A head holding the audio positions 0, 2, 4, ... (text at the odd ones evicted) smooths them as ONE run: the
    plan equals the same head's plan with every entry marked audio, and differs from the raw scores."""
    rng = np.random.default_rng(12)
    q, keys, positions, profile = ragged_cache(rng, 1, 2, 1, 120, 8, 16)
    pos = np.concatenate([np.arange(0, 112, 2), np.arange(112, 120)])
    keys = [[rng.standard_normal((pos.size, 16)).astype(np.float32)]]
    mask = np.zeros(120, bool)
    mask[0:112:2] = True
    for backend in ("numpy", "c"):
        args = ("audiokv", q, keys, 0.3, None)
        spans = plan_ragged(*args, n_positions=120, positions=[[pos]], audio_mask=mask, window=8, backend=backend)
        every = plan_ragged(*args, n_positions=120, positions=[[pos]], audio_mask=np.ones(120, bool), window=8,
                            backend=backend)
        assert spans == every == plan_ragged(*args, n_positions=120, window=8, backend=backend)
        raw = plan_ragged(*args, n_positions=120, positions=[[pos]], audio_mask=~mask, window=8, backend=backend)
        assert raw == plan_ragged(*args, n_positions=120, window=8, sss_alpha=0.0, pool_kernel=1, backend=backend)
        assert raw != spans


def test_uniform_ragged_context_equals_the_dense_plan():
    q, k, profile = make_inputs("random", 3, 6, 2, 100, 16, 16, 11)
    keys = [[k[layer, head] for head in range(2)] for layer in range(3)]
    for method, params in CASES:
        for keep in KEEPS:
            want = plan(method, q, k, keep, profile, window=16, **params)
            got = plan_ragged_c(method, q, keys, keep, profile, dict(params, window=16), 100, n_threads=2)
            assert got == want, (method, params, keep)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_ragged_key_dtypes(dtype):
    rng = np.random.default_rng(5)
    q, keys, _, profile = ragged_cache(rng, 2, 4, 2, 200, 32, 8, dtype)
    for method, params in CASES:
        check_ragged_parity(method, params, q, keys, 0.4, profile, 32, 200)


def test_strided_keys():
    """Keys as views with a row stride (like llama.cpp's pools): the C side reads them in place."""
    rng = np.random.default_rng(8)
    q, keys, _, profile = ragged_cache(rng, 2, 4, 2, 90, 16, 8)
    wide = [[np.concatenate([k, np.ones_like(k)], axis=1)[:, :8] for k in row] for row in keys]
    assert not wide[0][0].flags.c_contiguous
    for method in ("snapkv", "audiokv", "adakv"):
        want = plan_ragged(method, q, keys, 0.3, profile, n_positions=90, window=16)
        assert plan_ragged(method, q, wide, 0.3, profile, n_positions=90, window=16, backend="c") == want


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ragged_long(dtype):
    rng = np.random.default_rng(7500)
    q, keys, _, profile = ragged_cache(rng, 2, 4, 2, 7500, 32, 16, dtype)
    for method, params in CASES:
        for keep in (0.1, 0.4):
            check_ragged_parity(method, params, q, keys, keep, profile, 32, 7500, threads=(2,))


def test_second_eviction_in_c():
    """Plan in C, keep those entries, add a chunk to every head, re-plan in C: equal to NumPy at every step."""
    rng = np.random.default_rng(21)
    all_keys = rng.standard_normal((2, 2, 700, 16)).astype(np.float32)
    for method, params in CASES:
        held = [[np.arange(300)] * 2 for _ in range(2)]
        for n_positions in (300, 400, 500, 700):
            keys = [[all_keys[layer, head, held[layer][head]] for head in range(2)] for layer in range(2)]
            q = rng.standard_normal((2, 4, 32, 16)).astype(np.float32)
            profile = HeadProfile(np.array([[1.0, 3.0], [0.5, 0.2]]))
            p = check_ragged_parity(method, params, q, keys, 0.3, profile, 32, n_positions, threads=(2,))
            held = [[held[layer][head][p.indices[layer][head]] for head in range(2)] for layer in range(2)]
            nxt = {300: 400, 400: 500, 500: 700, 700: 700}[n_positions]
            held = [[np.concatenate([h, np.arange(n_positions, nxt)]) for h in row] for row in held]


def test_ragged_errors(lib):
    p = c_params("snapkv", {"window": 8})
    with pytest.raises(ValueError, match="AUDIOKV_ERR_SIZE"):
        AudioKVContext(p, 1, 2, 2, 4, 20, np.array([[20, 21]]))      # more entries than positions
    with pytest.raises(ValueError, match="AUDIOKV_ERR_SIZE"):
        AudioKVContext(p, 1, 2, 2, 4, 20, np.array([[20, 0]]))       # a head without entries
    with pytest.raises(ValueError, match="n_entries"):
        AudioKVContext(p, 1, 2, 2, 4, 20, np.array([20, 12]))
    keys = [np.zeros((20, 4), np.float32), np.zeros((6, 4), np.float32)]
    q = np.zeros((2, 8, 4), np.float32)
    with AudioKVContext(p, 1, 2, 2, 4, 20, np.array([[20, 6]])) as ctx:
        assert ctx.window == 8 and lib.audiokv_plan_capacity(ctx._handle) == 26
        assert lib.audiokv_n_entries(ctx._handle, 0, 1) == 6 and lib.audiokv_n_positions(ctx._handle) == 20
        assert lib.audiokv_n_entries(ctx._handle, 1, 0) == -1
        ctx.add_layer_ragged(0, q, keys)
        with pytest.raises(ValueError, match="AUDIOKV_ERR_SIZE"):   # head 1 cannot hold the window of 8
            ctx.plan(0.5)
        counts, flat = ctx.plan(0.1)                                 # C = 2 <= w: the last 2 entries
        assert counts.tolist() == [[2, 2]] and flat.tolist() == [18, 19, 4, 5]
        with pytest.raises(C.LibAudioKVError, match="AUDIOKV_ERR_STATE"):   # no accumulated scores here
            ctx.set_layer_scores(0, np.zeros((2, 20)))
    with AudioKVContext(p, 1, 2, 2, 4, 20, np.array([[20, 12]])) as ctx:
        with pytest.raises(C.LibAudioKVError, match="AUDIOKV_ERR_STATE"):   # not scored yet
            ctx.plan(0.5)
        with pytest.raises(ValueError, match="1 key arrays given for 2 KV heads"):
            ctx.add_layer_ragged(0, q, keys[:1])
    with AudioKVContext(p, 1, 2, 2, 4, 20, np.array([[20, 20]])) as ctx:   # every position: accumulated scores ok
        ctx.set_layer_scores(0, np.zeros((2, 20)))
