"""Invariants of every method over a parameter matrix (docs/semantics.md).

For every method, shape, GQA grouping and keep ratio: the window and the last token are kept; indices are sorted,
unique and in range; the total equals the uniform total C * L * Hkv exactly (head-aware methods included) and every
head keeps between w and N tokens; keep = 1 and N <= window keep everything.
"""

import itertools
import zlib

import numpy as np
import pytest

from audiokv_edge import METHODS, HeadProfile, plan
from audiokv_edge.keep_plan import uniform_budget
from tests.conftest import METHOD_PARAMS

PARAMS = METHOD_PARAMS
# (n_layer, n_head, n_head_kv, n_tokens, window)
SHAPES = [(1, 1, 1, 40, 8), (2, 4, 2, 64, 8), (3, 6, 2, 33, 32), (2, 4, 1, 100, 16), (2, 2, 2, 9, 8),
          (1, 2, 2, 8, 8), (2, 4, 4, 5, 8), (1, 1, 1, 1, 32)]
KEEPS = [0.01, 0.2, 0.5, 0.8, 0.99, 1.0]
CASES = [(m, i) for m in PARAMS for i in range(len(PARAMS[m]))]


def make_inputs(n_layer, n_head, n_head_kv, n_tokens, window, seed):
    rng = np.random.default_rng(seed)
    w = min(window, n_tokens)
    q = rng.standard_normal((n_layer, n_head, w, 16)).astype(np.float32)
    k = rng.standard_normal((n_layer, n_head_kv, n_tokens, 16)).astype(np.float32)
    # a skewed profile (one dominant head) exercises the redistribution above N
    scores = rng.random((n_layer, n_head_kv)) ** 4
    scores.flat[0] += 10
    return q, k, HeadProfile(scores)


def check_plan(p, method, n_layer, n_head_kv, n_tokens, window, keep, exact_total=True):
    w = min(window, n_tokens)
    c = uniform_budget(keep, n_tokens)
    assert p.budgets.shape == (n_layer, n_head_kv)
    window_idx = np.arange(n_tokens - min(w, c), n_tokens)
    for layer, head in itertools.product(range(n_layer), range(n_head_kv)):
        idx = p.indices[layer][head]
        assert idx.dtype == np.int64
        assert idx.size == p.budgets[layer, head]
        assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] == n_tokens - 1
        assert np.all(np.isin(window_idx, idx))
        if method != "full" and c < n_tokens:
            assert min(w, c) <= idx.size <= n_tokens
    if method == "full" or c >= n_tokens or n_tokens <= w:
        assert np.all(p.budgets == n_tokens)
    elif exact_total:
        assert p.kept_total == c * n_layer * n_head_kv
    else:  # SparseMM rounding: within half a token per head, minus what clipping at N dropped
        assert p.kept_total <= c * n_layer * n_head_kv + n_layer * n_head_kv / 2
    assert p.mask().sum() == p.kept_total


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}H{}K{}N{}w{}".format(*s))
@pytest.mark.parametrize("method,param_index", CASES, ids=lambda c: str(c))
def test_invariants(method, param_index, shape):
    n_layer, n_head, n_head_kv, n_tokens, window = shape
    params = dict(PARAMS[method][param_index], window=window)
    q, k, profile = make_inputs(*shape, seed=zlib.crc32(repr((method, param_index, shape)).encode()))
    for keep in KEEPS:
        p = plan(method, q, k, keep, profile, **params)
        check_plan(p, method, n_layer, n_head_kv, n_tokens, window, keep,
                   exact_total=params.get("redistribute_surplus", True))
        if keep == 1.0:
            assert np.all(p.budgets == n_tokens)


def test_head_aware_methods_really_vary_budgets():
    q, k, profile = make_inputs(4, 8, 2, 200, 8, seed=5)
    for method in ("pyramidkv", "adakv", "audiokv"):
        p = plan(method, q, k, 0.4, profile, window=8)
        assert len(np.unique(p.budgets)) > 1, method
        assert p.kept_total == uniform_budget(0.4, 200) * 8


def test_gqa_groups_share_one_plan_per_kv_head():
    # Duplicating every KV head's queries g times with mean reduction gives the plan of the ungrouped model.
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 3, 8, 16))
    k = rng.standard_normal((2, 3, 60, 16))
    for method in ("snapkv", "h2o", "adakv", "audiokv", "pyramidkv"):
        base = plan(method, q, k, 0.3, window=8)
        grouped = plan(method, np.repeat(q, 4, axis=1), k, 0.3, window=8)
        assert grouped == base, method


def test_all_methods_registered():
    assert set(METHODS) == set(METHOD_PARAMS)  # every method has its row in the matrix of tests/conftest.py
    for name, cls in METHODS.items():
        assert cls.name == name and cls().window == 32


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_keep_one_keeps_everything_and_short_cache(method):
    q, k, profile = make_inputs(2, 4, 2, 20, 32, seed=1)  # n_tokens <= window
    for keep in (0.05, 0.5, 1.0):
        p = plan(method, q, k, keep, profile)
        assert np.all(p.budgets == 20)


@pytest.mark.slow
def test_realistic_length_qwen25_omni_heads():
    # Qwen2.5-Omni-7B head layout (28 query / 4 KV heads, head_dim 128) over five minutes of audio, 2 layers.
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 28, 32, 128), dtype=np.float32)
    k = rng.standard_normal((2, 4, 7500, 128), dtype=np.float32)
    profile = HeadProfile(rng.random((2, 4)))
    for method in ("snapkv", "pyramidkv", "adakv", "audiokv", "h2o", "streamingllm"):
        for keep in (0.2, 0.4, 0.8):
            p = plan(method, q, k, keep, profile)
            check_plan(p, method, 2, 4, 7500, 32, keep)
