"""Re-planning a ragged cache with the NumPy reference (docs/semantics.md, "Re-planning a ragged cache").

- Uniform input through the ragged entry point (every head holds all N positions) gives exactly the dense plan,
  for all 7 methods over a parameter matrix, shapes and keep ratios.
- Invariants on random ragged caches: budgets within [w, n_entries], total min(T, sum of caps) (adakv per layer),
  the window kept, sorted unique entry indices.
- Hand-computed small cases of the cap and the redistribution of the surplus, and the refusals.
"""

import itertools
import zlib

import numpy as np
import pytest

from audiokv_edge import HeadProfile, plan
from audiokv_edge.keep_plan import KeepPlan, plan_ragged, uniform_budget
from audiokv_edge.methods import make_method
from audiokv_edge.methods.audiokv import audiokv_real_budgets
from audiokv_edge.reference.select import cap_and_share, capped_budgets, largest_remainder

from test_methods_invariants import CASES, PARAMS, make_inputs

# (n_layer, n_head, n_head_kv, n_tokens, window)
SHAPES = [(2, 4, 2, 64, 8), (3, 6, 2, 33, 32), (2, 4, 1, 100, 16), (2, 2, 2, 9, 8), (1, 1, 1, 40, 8),
          (2, 4, 4, 5, 8)]
KEEPS = [0.05, 0.3, 0.6, 0.95, 1.0]


def as_ragged(k):
    return [[k[layer, head] for head in range(k.shape[1])] for layer in range(k.shape[0])]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}H{}K{}N{}w{}".format(*s))
@pytest.mark.parametrize("method,param_index", CASES, ids=lambda c: str(c))
def test_uniform_input_gives_the_dense_plan(method, param_index, shape):
    n_layer, n_head, n_head_kv, n_tokens, window = shape
    params = dict(PARAMS[method][param_index], window=window)
    q, k, profile = make_inputs(*shape, seed=zlib.crc32(repr(("ragged", method, param_index, shape)).encode()))
    for keep in KEEPS:
        dense = plan(method, q, k, keep, profile, **params)
        ragged = plan_ragged(method, q, as_ragged(k), keep, profile, n_positions=n_tokens, **params)
        assert ragged == dense, (method, params, keep)
        assert np.array_equal(ragged.n_entries, np.full((n_layer, n_head_kv), n_tokens))


def random_ragged(rng, n_layer, n_head, n_head_kv, n_positions, window, d=16, min_entries=None):
    """Heads holding random subsets of the positions (the last w always), keys and queries as float32."""
    w = min(window, n_positions)
    lo = w if min_entries is None else min_entries
    keys, positions = [], []
    for _ in range(n_layer):
        k_row, p_row = [], []
        for _ in range(n_head_kv):
            n = int(rng.integers(lo, n_positions + 1))
            older = np.sort(rng.choice(n_positions - w, size=n - w, replace=False)) if n > w else np.array([], int)
            pos = np.concatenate([older, np.arange(n_positions - w, n_positions)]).astype(np.int64)
            p_row.append(pos)
            k_row.append(rng.standard_normal((n, d)).astype(np.float32))
        keys.append(k_row)
        positions.append(p_row)
    q = rng.standard_normal((n_layer, n_head, w, d)).astype(np.float32)
    return q, keys, positions


@pytest.mark.parametrize("shape", [(2, 4, 2, 80, 8), (3, 6, 3, 50, 16), (1, 2, 1, 30, 32)],
                         ids=lambda s: "L{}H{}K{}P{}w{}".format(*s))
@pytest.mark.parametrize("method,param_index", CASES, ids=lambda c: str(c))
def test_ragged_invariants(method, param_index, shape):
    n_layer, n_head, n_head_kv, n_positions, window = shape
    params = dict(PARAMS[method][param_index], window=window)
    rng = np.random.default_rng(zlib.crc32(repr((method, param_index, shape)).encode()))
    q, keys, positions = random_ragged(rng, *shape)
    n_entries = np.array([[k.shape[0] for k in row] for row in keys])
    profile = HeadProfile(rng.random((n_layer, n_head_kv)) ** 4 + np.eye(n_layer, n_head_kv) * 5)
    w = min(window, n_positions)
    for keep in [0.05, 0.2, 0.4, 0.7, 1.0]:
        p = plan_ragged(method, q, keys, keep, profile, n_positions=n_positions, positions=positions, **params)
        c = uniform_budget(keep, n_positions)
        assert p.n_tokens == n_positions and np.array_equal(p.n_entries, n_entries)
        keep_all = method == "full" or c >= n_positions or n_positions <= window
        for layer, head in itertools.product(range(n_layer), range(n_head_kv)):
            idx, n = p.indices[layer][head], n_entries[layer, head]
            assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] == n - 1
            if keep_all:
                assert idx.size == n
            elif c <= w:
                assert np.array_equal(idx, np.arange(max(0, n - c), n))
            else:
                assert w <= idx.size <= n
                assert np.all(np.isin(np.arange(n - w, n), idx))  # the window
        if keep_all or c <= w:
            continue
        if method == "adakv":
            totals = np.minimum(n_head_kv * c, n_entries.sum(axis=1))
            assert np.array_equal(p.budgets.sum(axis=1), totals)
        elif params.get("redistribute_surplus", True):
            assert p.kept_total == min(c * n_layer * n_head_kv, n_entries.sum())
        else:
            assert np.all(p.budgets <= n_entries)


def test_cap_and_share_by_hand():
    # equal shares: head 1 holds 5, its surplus of 5 goes 2.5 / 2.5 to heads 0 and 2
    np.testing.assert_array_equal(cap_and_share(np.array([10.0, 10.0, 10.0]), np.array([20, 5, 20])),
                                  [12.5, 5, 12.5])
    # a second round: head 2 is pushed over its cap of 12 by the first share and gives 0.5 to head 0
    np.testing.assert_array_equal(cap_and_share(np.array([10.0, 10.0, 10.0]), np.array([20, 5, 12])),
                                  [13.0, 5, 12])
    # weighted: head 0 (weight 3) gets 3/4 of the surplus 4, head 2 (weight 1) 1/4
    np.testing.assert_array_equal(cap_and_share(np.array([10.0, 10.0, 10.0]), np.array([20, 6, 20]),
                                                np.array([3.0, 5.0, 1.0])), [13.0, 6, 11.0])
    # weights of the free heads all zero: equal shares
    np.testing.assert_array_equal(cap_and_share(np.array([10.0, 10.0, 10.0]), np.array([20, 6, 20]),
                                                np.array([0.0, 5.0, 0.0])), [12.0, 6, 12.0])
    # every head capped: the surplus is dropped, nothing else changes
    np.testing.assert_array_equal(cap_and_share(np.array([10.0, 10.0]), np.array([4, 6])), [4, 6])
    # nothing above a cap: returned unchanged
    real = np.array([[1.25, 7.5]])
    np.testing.assert_array_equal(cap_and_share(real, 8), real)


def test_capped_budgets_by_hand():
    # uniform budgets C = 10 over 4 heads holding 20, 6, 20, 9: the surplus 4 + 1 = 5 goes to heads 0 and 2
    # (first round: 4 / 3 each to heads 0, 2, 3; head 3 then holds 10.33 > 9 and gives 1.33 to 0 and 2)
    b = capped_budgets(np.full(4, 10.0), 40, 2, np.array([20, 6, 20, 9]))
    assert b.tolist() == [13, 6, 12, 9]  # 12.5 / 12.5: the tie goes to the lower index
    # the total is the sum of the caps when the caps cannot hold it: everyone keeps everything
    assert capped_budgets(np.full(3, 10.0), 30, 2, np.array([9, 5, 8])).tolist() == [9, 5, 8]
    # per-entry hi in the largest remainder: the leftover skips the head at its cap
    assert largest_remainder(np.array([4.9, 3.1, 2.0]), 10, 1, np.array([4, 10, 10])).tolist() == [4, 4, 2]


def test_audiokv_caps_equal_the_uniform_rule_when_caps_are_n():
    s = np.array([[1.0, 1.0, 2.0, 12.0]])
    np.testing.assert_array_equal(audiokv_real_budgets(s, 40, 8, 50),
                                  audiokv_real_budgets(s, 40, 8, np.full((1, 4), 50)))
    # a head that holds only 30 entries: capped there, its surplus shared by S_hat among the others
    real = audiokv_real_budgets(s, 40, 8, np.array([[50, 50, 30, 50]]))
    assert real[0, 2] == 30 and real[0, 3] == 50 and np.isclose(real.sum(), 160)


def keys_of(n_entries, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((n, d)) for n in row] for row in n_entries]


def test_uniform_method_caps_by_hand():
    # streamingllm, P = 40, keep 0.5: C = 20; heads hold 40, 12, 40, 30 entries; w = 4
    n_entries = [[40, 12], [40, 30]]
    p = plan_ragged("streamingllm", None, keys_of(n_entries), 0.5, n_positions=40, window=4, n_sink=2)
    # head (0, 1) capped at 12, surplus 8 shared equally by the other three: 22.67 each -> 23, 23, 22
    assert p.budgets.tolist() == [[23, 12], [23, 22]]
    assert p.kept_total == 80
    # sinks are the first entries, then the most recent entries
    assert p.indices[0][0].tolist() == [0, 1] + list(range(19, 40))
    assert p.indices[0][1].tolist() == list(range(12))
    assert p.indices[1][1].tolist() == [0, 1] + list(range(10, 30))


def test_keep_last_and_keep_all_modes():
    n_entries = [[10, 7]]
    q = np.zeros((1, 2, 8, 4))
    # P = 40, keep 0.1: C = 4 <= w = 8: every head keeps its last 4 entries
    p = plan_ragged("snapkv", q, keys_of(n_entries), 0.1, n_positions=40, window=8)
    assert [a.tolist() for a in p.indices[0]] == [[6, 7, 8, 9], [3, 4, 5, 6]]
    # P <= window: everything, whatever keep
    p = plan_ragged("snapkv", q[:, :, :6], keys_of([[6, 6]]), 0.2, n_positions=6, window=8)
    assert p.budgets.tolist() == [[6, 6]]
    # keep 1: everything
    p = plan_ragged("audiokv", q, keys_of(n_entries), 1.0, n_positions=40, window=8)
    assert p.budgets.tolist() == [[10, 7]]


def test_head_with_only_the_window_and_heads_holding_everything():
    rng = np.random.default_rng(3)
    n_entries = [[8, 60, 9], [60, 8, 33]]
    keys = keys_of(n_entries, d=8, seed=4)
    q = rng.standard_normal((2, 6, 8, 8))
    for method in ("snapkv", "pyramidkv", "adakv", "audiokv", "h2o", "streamingllm"):
        p = plan_ragged(method, q, keys, 0.3, HeadProfile(rng.random((2, 3)) + 0.1), n_positions=60, window=8)
        assert p.indices[0][0].tolist() == list(range(8))  # only the window: kept as it is
        assert p.indices[1][1].tolist() == list(range(8))
        assert np.all(p.budgets >= 8) and np.all(p.budgets <= np.array(n_entries))


def test_refusals():
    q = np.zeros((1, 2, 8, 4))
    keys = keys_of([[20, 12]])
    with pytest.raises(ValueError, match="accumulated_scores"):
        plan_ragged("h2o", q, keys, 0.5, n_positions=20, window=8, accumulated_scores=np.zeros((1, 2, 20)))
    with pytest.raises(ValueError, match="fewer than the window"):
        plan_ragged("snapkv", q, keys_of([[20, 6]]), 0.5, n_positions=20, window=8)
    with pytest.raises(ValueError, match="more than n_positions"):
        plan_ragged("snapkv", q, keys, 0.5, n_positions=15, window=8)
    with pytest.raises(ValueError, match="n_positions"):
        plan_ragged("snapkv", q, keys, 0.5, n_positions=0, window=8)
    with pytest.raises(ValueError, match="keep"):
        plan_ragged("snapkv", q, keys, 0.0, n_positions=20, window=8)
    with pytest.raises(ValueError, match="window queries"):
        plan_ragged("snapkv", q[:, :, :4], keys, 0.5, n_positions=20, window=8)
    with pytest.raises(ValueError, match="head_dim"):
        plan_ragged("snapkv", q, [[np.zeros((20, 4)), np.zeros((12, 5))]], 0.5, n_positions=20, window=8)
    with pytest.raises(ValueError, match="NaN"):
        plan_ragged("snapkv", q, [[np.full((20, 4), np.nan), np.zeros((12, 4))]], 0.5, n_positions=20, window=8)
    with pytest.raises(ValueError, match="nesting"):
        plan_ragged("snapkv", q, np.zeros((1, 2, 20, 4)), 0.5, n_positions=20, window=8)
    with pytest.raises(ValueError, match="same number of KV heads"):
        plan_ragged("snapkv", q, [[np.zeros((20, 4))], [np.zeros((20, 4)), np.zeros((20, 4))]], 0.5,
                    n_positions=20, window=8)
    with pytest.raises(ValueError, match="needs q_window"):
        plan_ragged("snapkv", None, keys, 0.5, n_positions=20, window=8)
    # positions: the last w entries must be the same tokens in every head
    good = [[np.arange(20), np.concatenate([np.arange(4), np.arange(12, 20)])]]
    plan_ragged("snapkv", q, keys, 0.5, n_positions=20, window=8, positions=good)
    bad = [[np.arange(20), np.arange(12)]]
    with pytest.raises(ValueError, match="not the window"):
        plan_ragged("snapkv", q, keys, 0.5, n_positions=20, window=8, positions=bad)
    with pytest.raises(ValueError, match="ascending"):
        plan_ragged("snapkv", q, keys, 0.5, n_positions=20, window=8, positions=[[np.arange(20)[::-1], good[0][1]]])


def test_keep_plan_entries():
    p = KeepPlan([[np.array([0, 3]), np.array([1])]], 10, "x", n_entries=[[4, 2]])
    assert p.n_entries.tolist() == [[4, 2]] and p.mask().shape == (1, 2, 10)
    with pytest.raises(ValueError, match="within"):
        KeepPlan([[np.array([0, 3]), np.array([2])]], 10, "x", n_entries=[[4, 2]])
    with pytest.raises(ValueError, match="n_entries"):
        KeepPlan([[np.array([0]), np.array([1])]], 10, "x", n_entries=[[4, 11]])
    assert KeepPlan([[np.array([0])]], 4) == KeepPlan([[np.array([0])]], 4, n_entries=[[4]])
    assert KeepPlan([[np.array([0])]], 4) != KeepPlan([[np.array([0])]], 4, n_entries=[[3]])


def test_second_eviction_of_a_first_plan():
    """Streaming: plan, keep the entries, append a chunk to every head, plan again; every head still holds the
    window and the totals follow keep * P."""
    rng = np.random.default_rng(11)
    n_layer, n_head, n_head_kv, d, w = 2, 4, 2, 8, 8
    for method in ("snapkv", "pyramidkv", "adakv", "audiokv", "h2o", "streamingllm"):
        profile = HeadProfile(rng.random((n_layer, n_head_kv)) + 0.05)
        all_keys = rng.standard_normal((n_layer, n_head_kv, 400, d))
        held = [[np.arange(120) for _ in range(n_head_kv)] for _ in range(n_layer)]
        n_positions = 120
        first = True
        while n_positions <= 400:
            keys = [[all_keys[layer, head, held[layer][head]] for head in range(n_head_kv)]
                    for layer in range(n_layer)]
            q = rng.standard_normal((n_layer, n_head, w, d))
            if first:
                dense = plan(method, q, all_keys[:, :, :n_positions], 0.3, profile, window=w)
            p = plan_ragged(method, q, keys, 0.3, profile, n_positions=n_positions, positions=held, window=w)
            if first:
                assert p == dense
                first = False
            c = uniform_budget(0.3, n_positions)
            assert p.kept_total == c * n_layer * n_head_kv
            held = [[held[layer][head][p.indices[layer][head]] for head in range(n_head_kv)]
                    for layer in range(n_layer)]
            chunk = np.arange(n_positions, min(n_positions + 70, 400))
            held = [[np.concatenate([h, chunk]) for h in row] for row in held]
            n_positions += 70


def test_method_object_and_backend_checks():
    keys = keys_of([[20, 12]])
    q = np.zeros((1, 2, 8, 4))
    p = plan_ragged(make_method("snapkv", window=8), q, keys, 0.5, n_positions=20)
    assert p.method == "snapkv"
    with pytest.raises(ValueError, match="backend"):
        plan_ragged("snapkv", q, keys, 0.5, n_positions=20, window=8, backend="gpu")
