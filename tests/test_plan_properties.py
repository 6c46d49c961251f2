"""Property-based check of the plan invariants (hypothesis): random shapes, windows, keeps, methods, profiles."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from audiokv_edge import METHODS, HeadProfile, plan
from audiokv_edge.reference.select import largest_remainder
from tests.test_methods_invariants import check_plan


@st.composite
def plan_case(draw):
    n_layer = draw(st.integers(1, 3))
    n_head_kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    n_tokens = draw(st.integers(1, 120))
    window = draw(st.integers(1, 40))
    keep = draw(st.floats(0.001, 1.0))
    method = draw(st.sampled_from(sorted(METHODS)))
    seed = draw(st.integers(0, 2**31))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    return n_layer, n_head_kv * group, n_head_kv, n_tokens, window, keep, method, seed, scale


@settings(max_examples=150, deadline=None)
@given(plan_case())
def test_plan_invariants_hold(case):
    n_layer, n_head, n_head_kv, n_tokens, window, keep, method, seed, scale = case
    rng = np.random.default_rng(seed)
    w = min(window, n_tokens)
    q = (scale * rng.standard_normal((n_layer, n_head, w, 8))).astype(np.float32)
    k = (scale * rng.standard_normal((n_layer, n_head_kv, n_tokens, 8))).astype(np.float32)
    profile = HeadProfile(rng.random((n_layer, n_head_kv)) ** 5 + (rng.random((n_layer, n_head_kv)) < 0.3))
    p = plan(method, q, k, keep, profile, window=window)
    check_plan(p, method, n_layer, n_head_kv, n_tokens, window, keep)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 50), min_size=1, max_size=30), st.integers(0, 5), st.data())
def test_largest_remainder_properties(values, lo, data):
    real = np.array(values) + lo
    hi = lo + 60
    total = data.draw(st.integers(lo * len(values), hi * len(values)))
    b = largest_remainder(real, total, lo, hi)
    assert b.sum() == total and b.min() >= lo and b.max() <= hi
    if abs(real.sum() - total) < 1e-9 and real.max() <= hi:  # a consistent split stays within one token
        assert np.all(np.abs(b - real) < 1 + 1e-9)
