"""AudioKV budgets (paper Eq. 1 / SparseMM, docs/semantics.md) on hand-computed cases."""

import numpy as np
import pytest

from audiokv_edge import HeadProfile, plan
from audiokv_edge.methods.audiokv import audiokv_real_budgets
from audiokv_edge.methods.base import PlanInputs
from audiokv_edge.methods import AudioKV


def budgets_of(profile_scores, n_tokens, budget, window, **params):
    s = np.asarray(profile_scores, dtype=float)
    keys = np.zeros((s.shape[0], s.shape[1], n_tokens, 1))
    inputs = PlanInputs(q_window=None, keys=keys, keep=budget / n_tokens, window=window, budget=budget,
                        profile=HeadProfile(s))
    return AudioKV(window=window, **params).budgets(inputs, None)


def test_formula_without_clipping():
    # C = 40, w = 8: base 32, m = 16, remain = 16 * 4 = 64; S_hat = 1/8, 1/8, 1/4, 1/2 -> 8, 8, 16, 32 on top of m + w
    np.testing.assert_allclose(audiokv_real_budgets(np.array([[1, 1, 2, 4]]), 40, 8, 100), [[32, 32, 40, 56]])
    assert budgets_of([[1, 1, 2, 4]], 100, 40, 8).tolist() == [[32, 32, 40, 56]]


def test_uniform_share_one_is_uniform_and_zero_is_proportional():
    assert budgets_of([[1, 1, 2, 4]], 100, 40, 8, uniform_share=1.0).tolist() == [[40, 40, 40, 40]]
    # m = 0, remain = 128: 16, 16, 32, 64 (+ w)
    assert budgets_of([[1, 1, 2, 4]], 100, 40, 8, uniform_share=0.0).tolist() == [[24, 24, 40, 72]]


def test_surplus_redistributed_by_score():
    # [28, 28, 32, 72] with N = 50: 22 surplus shared 1:1:2 -> 33.5, 33.5, 43, 50; largest remainder ->
    # one leftover token to the tie at .5 with the lower index.
    np.testing.assert_allclose(audiokv_real_budgets(np.array([[1, 1, 2, 12]]), 40, 8, 50), [[33.5, 33.5, 43, 50]])
    assert budgets_of([[1, 1, 2, 12]], 50, 40, 8).tolist() == [[34, 33, 43, 50]]


def test_surplus_redistribution_cascades():
    # [28, 28, 48, 56]: surplus 6 shared 1:1:6 -> 28.75, 28.75, 52.5, 50; head 2 now exceeds N: its 2.5 go 1:1.
    np.testing.assert_allclose(audiokv_real_budgets(np.array([[1, 1, 6, 8]]), 40, 8, 50), [[30, 30, 50, 50]])


def test_surplus_to_zero_score_heads_equally():
    # [24, 24, 24, 88]: 38 surplus, the other heads all score 0 -> 12.667 each -> 36.67 x3; 2 leftovers to 0, 1.
    np.testing.assert_allclose(audiokv_real_budgets(np.array([[0, 0, 0, 1]]), 40, 8, 50),
                               [[24 + 38 / 3] * 3 + [50]])
    assert budgets_of([[0, 0, 0, 1]], 50, 40, 8).tolist() == [[37, 37, 36, 50]]


def test_sparsemm_mode_drops_the_surplus():
    # [28, 28, 32, 72] clipped at N = 50: the 22 tokens above N are not given to anybody
    assert budgets_of([[1, 1, 2, 12]], 50, 40, 8, redistribute_surplus=False).tolist() == [[28, 28, 32, 50]]
    # 15.2, 18.4, 21.6, 24.8 rounded per head: 15, 18, 22, 25
    assert budgets_of([[1, 2], [3, 4]], 1000, 20, 4, redistribute_surplus=False).tolist() == [[15, 18], [22, 25]]
    with pytest.raises(ValueError, match="bool"):
        AudioKV(redistribute_surplus=1)


def test_two_layers_normalised_over_all_heads():
    # S_hat over all 4 heads: 0.1, 0.2, 0.3, 0.4; C = 20, w = 4: base 16, m = 8, remain = 32
    got = audiokv_real_budgets(np.array([[1, 2], [3, 4]]), 20, 4, 1000)
    np.testing.assert_allclose(got, [[3.2 + 12, 6.4 + 12], [9.6 + 12, 12.8 + 12]])
    assert budgets_of([[1, 2], [3, 4]], 1000, 20, 4).tolist() == [[15, 18], [22, 25]]


@pytest.mark.parametrize("seed", range(10))
def test_close_to_sparsemm_rounding_when_nothing_is_clipped(seed):
    rng = np.random.default_rng(seed)
    s = rng.random((4, 3))
    n_tokens, budget, window = 5000, 1000, 32
    base = budget - window
    m = base // 2
    sparsemm = np.round(s / s.sum() * (base - m) * s.size + m) + window
    ours = budgets_of(s, n_tokens, budget, window)
    assert ours.sum() == budget * s.size
    assert np.max(np.abs(ours - sparsemm)) <= 1


def test_plan_uses_the_profile_and_checks_its_shape():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 8, 16))
    k = rng.standard_normal((1, 4, 50, 16))
    p = plan("audiokv", q, k, 0.8, HeadProfile([[1, 1, 2, 12]]), window=8)
    assert p.budgets.tolist() == [[34, 33, 43, 50]]
    with pytest.raises(ValueError, match="shape"):
        plan("audiokv", q, k, 0.8, HeadProfile([[1, 1, 2]]), window=8)


def test_no_profile_uniform_with_one_warning(caplog):
    import audiokv_edge.methods.audiokv as mod

    mod._warned_no_profile = False
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 8, 16))
    k = rng.standard_normal((1, 2, 50, 16))
    with caplog.at_level("WARNING"):
        p1 = plan("audiokv", q, k, 0.5, window=8)
        plan("audiokv", q, k, 0.5, window=8)
    assert np.all(p1.budgets == 25)
    assert sum("head profile" in r.message for r in caplog.records) == 1
