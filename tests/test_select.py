"""The shared selection and integerisation (docs/semantics.md, "Selection" and "Integerisation")."""

import numpy as np
import pytest

from audiokv_edge.reference.select import largest_remainder, rank_descending, select_kept, sequential_sum


def test_rank_ties_go_to_lower_index():
    assert rank_descending(np.array([1.0, 3.0, 3.0, 2.0, 3.0])).tolist() == [1, 2, 4, 3, 0]


def test_rank_rounds_to_float32_first():
    # 1 + 1e-12 and 1 are equal in float32: the lower index wins although float64 says otherwise.
    assert rank_descending(np.array([1.0, 1.0 + 1e-12])).tolist() == [0, 1]
    assert rank_descending(np.array([1.0, 1.0 + 1e-6])).tolist() == [1, 0]


def test_rank_inf_first_nan_rejected():
    assert rank_descending(np.array([5.0, np.inf, -np.inf]))[0] == 1
    with pytest.raises(ValueError, match="NaN"):
        rank_descending(np.array([1.0, np.nan]))


def test_select_keeps_window_and_top_prefix():
    scores = np.array([[[0.1, 0.9, 0.5, 0.9, 0.0, 0.2]]])  # one layer, one head, prefix of 6
    kept = select_kept(scores, np.array([[5]]), n_tokens=8, window=2)
    assert kept[0][0].tolist() == [1, 2, 3, 6, 7]
    assert kept[0][0].dtype == np.int64
    kept = select_kept(scores, np.array([[3]]), n_tokens=8, window=2)
    assert kept[0][0].tolist() == [1, 6, 7]  # tie between 1 and 3: lower index
    kept = select_kept(scores, np.array([[2]]), n_tokens=8, window=2)
    assert kept[0][0].tolist() == [6, 7]


def test_select_rejects_budgets_out_of_range():
    with pytest.raises(ValueError):
        select_kept(np.zeros((1, 1, 6)), np.array([[1]]), n_tokens=8, window=2)
    with pytest.raises(ValueError):
        select_kept(np.zeros((1, 1, 6)), np.array([[9]]), n_tokens=8, window=2)
    with pytest.raises(ValueError):
        select_kept(np.zeros((1, 2, 6)), np.array([[4]]), n_tokens=8, window=2)


def test_largest_remainder_hand_case():
    # floors 2, 3, 1 (sum 6); 2 leftovers go to the largest fractions .7 (index 0) and .5 (index 2).
    assert largest_remainder(np.array([2.7, 3.2, 1.5]), 8, 0, 10).tolist() == [3, 3, 2]


def test_largest_remainder_ties_to_lower_flat_index():
    real = np.array([[1.5, 1.5], [1.5, 1.5]])
    assert largest_remainder(real, 6, 0, 10).tolist() == [[2, 2], [1, 1]]


def test_largest_remainder_respects_hi_and_runs_rounds():
    # sum of floors 3 + 3 + 0 = 6, total 10: entry 0 and 1 are capped at 4, entry 2 takes the rest.
    assert largest_remainder(np.array([3.9, 3.8, 0.1]), 10, 0, 4).tolist() == [4, 4, 2]


def test_largest_remainder_negative_leftover_takes_smallest_fraction_higher_index():
    # round-off case: floors sum above the total
    assert largest_remainder(np.array([2.0, 2.0, 2.5]), 5, 0, 10).tolist() == [2, 1, 2]


def test_largest_remainder_exact_integers_unchanged_and_infeasible_raises():
    assert largest_remainder(np.array([3.0, 4.0]), 7, 0, 10).tolist() == [3, 4]
    with pytest.raises(ValueError):
        largest_remainder(np.array([3.0, 4.0]), 30, 0, 10)
    with pytest.raises(ValueError):
        largest_remainder(np.array([np.nan, 4.0]), 4, 0, 10)


@pytest.mark.parametrize("seed", range(20))
def test_largest_remainder_random_total_and_bounds(seed):
    rng = np.random.default_rng(seed)
    real = rng.uniform(2, 9, size=(3, 4))
    total = int(round(real.sum()))
    b = largest_remainder(real, total, 2, 9)
    assert b.sum() == total and b.min() >= 2 and b.max() <= 9
    assert np.all(np.abs(b - real) < 1 + 1e-9)


def test_sequential_sum_is_left_to_right():
    x = np.array([1e16, 1.0, -1e16, 1.0])
    assert sequential_sum(x) == ((1e16 + 1.0) - 1e16) + 1.0
