"""Spectral Score Smoothing against its definition (AudioKV Eq. 13-20, docs/semantics.md)."""

import math

import numpy as np
import pytest

from audiokv_edge.reference.sss import spectral_smooth, taper_width


def transcribed_sss(x, alpha, gamma, taper=0.05):
    """Eq. 13-20 written out for one row with an explicit DFT and loops (no FFT library)."""
    n = len(x)
    if alpha == 0 or n <= 1:
        return np.array(x, dtype=float)
    t = np.arange(n)
    half = n // 2 + 1
    spectrum = [sum(x[j] * complex(math.cos(2 * math.pi * k * j / n), -math.sin(2 * math.pi * k * j / n))
                    for j in range(n)) for k in range(half)]  # Eq. 13
    energy = [abs(v) ** 2 for v in spectrum]  # Eq. 14
    total = sum(energy)
    if total == 0:
        return np.array(x, dtype=float)
    acc, k_star = 0.0, half - 1
    for k in range(half):  # Eq. 15-16: smallest k holding gamma of the energy
        acc += energy[k]
        if acc >= gamma * total:
            k_star = k
            break
    d = max(2, math.ceil(taper * half)) if taper > 0 else 1
    mask = []
    for i in range(half):  # Eq. 17 plus the cosine taper
        if i <= k_star:
            mask.append(1.0)
        elif i < k_star + d:
            mask.append(0.5 * (1 + math.cos(math.pi * (i - k_star) / d)))
        else:
            mask.append(0.0)
    filtered = [spectrum[k] * mask[k] for k in range(half)]  # Eq. 18
    smooth = np.zeros(n)
    for k in range(half):  # Eq. 19: inverse real DFT (DC and Nyquist bins counted once)
        weight = 1.0 if k == 0 or (n % 2 == 0 and k == n // 2) else 2.0
        smooth += weight * (filtered[k].real * np.cos(2 * np.pi * k * t / n)
                            - filtered[k].imag * np.sin(2 * np.pi * k * t / n))
    smooth /= n
    return (1 - alpha) * np.asarray(x, dtype=float) + alpha * smooth  # Eq. 20


@pytest.mark.parametrize("n", [2, 3, 7, 16, 31, 64, 101])
@pytest.mark.parametrize("alpha,gamma", [(0.5, 0.7), (1.0, 0.2), (0.3, 0.8), (0.9, 1.0)])
def test_matches_transcription_of_the_equations(n, alpha, gamma):
    rng = np.random.default_rng(n)
    for kind in ("uniform", "spiky"):
        x = rng.random(n) if kind == "uniform" else rng.random(n) ** 8
        np.testing.assert_allclose(spectral_smooth(x, alpha, gamma), transcribed_sss(list(x), alpha, gamma),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("taper", [0.0, 0.2, 1.0])
def test_taper_parameter_matches_transcription(taper):
    x = np.random.default_rng(9).random(90) ** 4
    np.testing.assert_allclose(spectral_smooth(x, 0.7, 0.5, taper), transcribed_sss(list(x), 0.7, 0.5, taper),
                               rtol=1e-9, atol=1e-12)


def test_gamma_one_without_taper_is_identity():
    x = np.random.default_rng(4).random((3, 77))
    np.testing.assert_allclose(spectral_smooth(x, alpha=1.0, gamma=1.0, taper=0.0), x, rtol=1e-12, atol=1e-13)


def test_alpha_zero_is_identity():
    x = np.random.default_rng(1).random((3, 4, 50))
    assert np.array_equal(spectral_smooth(x, alpha=0.0), x)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 257])
def test_constant_input_unchanged(n):
    x = np.full((2, n), 0.37)
    np.testing.assert_allclose(spectral_smooth(x), x, rtol=1e-12)


def test_zero_rows_and_short_rows_unchanged():
    assert np.array_equal(spectral_smooth(np.zeros((2, 9))), np.zeros((2, 9)))
    assert np.array_equal(spectral_smooth(np.array([[3.0]])), np.array([[3.0]]))
    assert spectral_smooth(np.zeros((4, 0))).shape == (4, 0)


def test_any_leading_shape_row_by_row():
    x = np.random.default_rng(2).random((2, 3, 4, 40))
    out = spectral_smooth(x, 0.5, 0.7)
    assert out.shape == x.shape
    for idx in np.ndindex(x.shape[:-1]):
        np.testing.assert_allclose(out[idx], spectral_smooth(x[idx], 0.5, 0.7), rtol=1e-13)


def test_low_pass_keeps_a_slow_tone_and_damps_noise():
    n = 512
    t = np.arange(n)
    tone = np.cos(2 * np.pi * 2 * t / n)  # all energy in bin 2: it is the pass band
    np.testing.assert_allclose(spectral_smooth(tone, alpha=1.0, gamma=0.7), tone, atol=1e-12)
    noise = np.random.default_rng(3).standard_normal(n)
    smoothed = spectral_smooth(noise, alpha=1.0, gamma=0.7)
    # White noise spreads energy evenly: the pass band holds about 70% of it, the rest (high frequencies) goes.
    ratio = np.sum(smoothed ** 2) / np.sum(noise ** 2)
    assert 0.6 < ratio < 0.8
    assert np.mean(np.abs(np.diff(smoothed))) < 0.8 * np.mean(np.abs(np.diff(noise)))
    # A slow signal buried in noise comes out closer to the signal.
    noisy = tone + 0.3 * noise
    assert np.linalg.norm(spectral_smooth(noisy, 1.0, 0.7) - tone) < 0.8 * np.linalg.norm(noisy - tone)


def test_taper_width():
    assert taper_width(10) == 2
    assert taper_width(7468) == math.ceil(0.05 * 3735)
    assert taper_width(7468, 0.0) == 1


@pytest.mark.parametrize("alpha,gamma", [(-0.1, 0.7), (1.1, 0.7), (0.5, 0.0), (0.5, 1.5), (float("nan"), 0.7),
                                         (0.5, float("nan")), (True, 0.7)])
def test_bad_parameters(alpha, gamma):
    with pytest.raises(ValueError):
        spectral_smooth(np.ones(8), alpha, gamma)


@pytest.mark.parametrize("taper", [-0.1, 1.5, None])
def test_bad_taper(taper):
    with pytest.raises(ValueError, match="taper"):
        spectral_smooth(np.ones(8), 0.5, 0.7, taper)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        spectral_smooth(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="axis"):
        spectral_smooth(np.float64(1.0))


def test_row_grid_rounding():
    from audiokv_edge.reference.sss import snap_to_row_grid

    x = np.array([[0.75, 1e-17, -3e-9, 0.1], [0.0, 0.0, 0.0, 0.0]])
    out = snap_to_row_grid(x)
    step = 2.0 ** -24  # max 0.75 = 0.75 * 2^0
    assert out[0, 0] == 0.75 and out[0, 1] == 0.0 and out[0, 2] == -step * round(3e-9 / step)
    assert abs(out[0, 3] - 0.1) <= step / 2 and (out[0, 3] / step).is_integer()
    assert np.array_equal(out[1], x[1])
    # values on the grid are float32-representable and stay put
    assert np.array_equal(snap_to_row_grid(out), out)
    assert np.array_equal(out[0].astype(np.float32).astype(np.float64), out[0])


def test_smoothed_scores_are_on_the_grid_and_noise_ties():
    from audiokv_edge.reference.scores import smoothed_window_scores
    from audiokv_edge.reference.sss import snap_to_row_grid

    rng = np.random.default_rng(0)
    q = 40 * rng.standard_normal((1, 2, 4, 8))  # huge logits: one-hot attention, most scores exactly 0
    k = 40 * rng.standard_normal((1, 1, 64, 8))
    s = smoothed_window_scores(q, k, sss_alpha=0.5, sss_gamma=0.95)
    assert np.array_equal(s, snap_to_row_grid(s))
