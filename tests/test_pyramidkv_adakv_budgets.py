"""PyramidKV and AdaKV budgets on hand-computed cases (docs/semantics.md)."""

import numpy as np
import pytest

from audiokv_edge.methods import AdaKV, PyramidKV
from audiokv_edge.methods.adakv import adaptive_head_caps
from audiokv_edge.methods.base import PlanInputs
from audiokv_edge.methods.pyramidkv import pyramid_layer_caps


def inputs_for(n_layer, n_head_kv, n_tokens, budget, window):
    return PlanInputs(q_window=None, keys=np.zeros((n_layer, n_head_kv, n_tokens, 1)), keep=budget / n_tokens,
                      window=window, budget=budget)


def test_pyramid_linear_caps():
    # C = 40, w = 8, beta = 4: base 32, lo = 8, hi = 56; three layers 56, 32, 8
    np.testing.assert_allclose(pyramid_layer_caps(40, 8, 100, 3, 4), [56, 32, 8])
    b = PyramidKV(window=8, beta=4).budgets(inputs_for(3, 2, 100, 40, 8), None)
    assert b.tolist() == [[64, 64], [40, 40], [16, 16]]


def test_pyramid_clipped_at_prefix_length():
    # C = 80, w = 8, beta = 20: base 72, hi = 140.4 >= N - w = 92 -> hi = 92, lo = 52
    np.testing.assert_allclose(pyramid_layer_caps(80, 8, 100, 3, 20), [92, 72, 52])
    b = PyramidKV(window=8).budgets(inputs_for(3, 1, 100, 80, 8), None)
    assert b.tolist() == [[100], [80], [60]]


def test_pyramid_fractional_caps_integerised():
    # C = 40, w = 8, beta = 20: lo = 1.6, hi = 62.4 -> 70.4 and 9.6 per head; floors 70, 70, 9, 9 = 158,
    # leftovers to the .6 fractions (layer 1), lower index first: both get one.
    b = PyramidKV(window=8).budgets(inputs_for(2, 2, 100, 40, 8), None)
    assert b.tolist() == [[70, 70], [10, 10]]
    assert PyramidKV(window=8).budgets(inputs_for(1, 3, 100, 40, 8), None).tolist() == [[40, 40, 40]]


def test_adakv_caps_hand_case():
    scores = np.array([[9.0, 8, 7, 6], [1, 2, 3, 0]])
    # B' = 3: global top 6 = 9, 8, 7, 6 (head 0) and 3, 2 (head 1) -> n = 4, 2
    np.testing.assert_allclose(adaptive_head_caps(scores, 3, 0.0), [4, 2])
    np.testing.assert_allclose(adaptive_head_caps(scores, 3, 0.5), [4 * 0.5 + 1, 2 * 0.5 + 1])
    np.testing.assert_allclose(adaptive_head_caps(scores, 3, 1.0), [3, 3])
    # w = 2, C = 5, a = 0.5: real 5, 4 (sum 9 < 10): the leftover goes to the lower index on the tie
    b = AdaKV(window=2, safeguard=0.5).budgets(inputs_for(1, 2, 6, 5, 2), scores[None])
    assert b.tolist() == [[6, 4]]


def test_adakv_global_ties_to_lower_flat_index():
    scores = np.ones((2, 4))
    np.testing.assert_allclose(adaptive_head_caps(scores, 2, 0.0), [4, 0])


@pytest.mark.parametrize("bad", [{"beta": 0.5}, {"beta": float("inf")}, {"pool_kernel": 4}])
def test_pyramid_bad_params(bad):
    with pytest.raises(ValueError):
        PyramidKV(**bad)


@pytest.mark.parametrize("bad", [{"safeguard": -0.1}, {"safeguard": 1.5}, {"gqa_reduce": "sum"}])
def test_adakv_bad_params(bad):
    with pytest.raises(ValueError):
        AdaKV(**bad)
