"""libaudiokv's building blocks against scipy and the NumPy reference, one step at a time.

Tolerances: SSS within 1e-10 relative (max abs difference / max |x|) of a scipy.fft transcription of the spec and of
audiokv_edge.reference.sss.spectral_smooth (the issue asks for 1e-5); pooling, selection and integerisation exactly equal.
"""

import ctypes

import numpy as np
import pytest
import scipy.fft

from audiokv_edge.reference.scores import pool1d
from audiokv_edge.reference.select import largest_remainder, rank_descending
from audiokv_edge.reference.sss import spectral_smooth
from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native

DP = ctypes.POINTER(ctypes.c_double)
I32P = ctypes.POINTER(ctypes.c_int32)
I64P = ctypes.POINTER(ctypes.c_int64)


@pytest.fixture(scope="module")
def lib():
    return ensure_libaudiokv()


def c_sss(lib, x, alpha, gamma, taper=0.05):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    assert lib.audiokv_sss(x.ctypes.data_as(DP), x.size, alpha, gamma, taper, out.ctypes.data_as(DP)) == 0
    return out


def scipy_sss(x, alpha, gamma, taper=0.05):
    """Direct transcription of the spec's steps 1-6 (docs/semantics.md) with scipy.fft."""
    n = x.size
    if n <= 1 or alpha == 0:
        return x.copy()
    spectrum = scipy.fft.rfft(x)
    energy = np.abs(spectrum) ** 2
    c = np.cumsum(energy)
    if c[-1] == 0:
        return x.copy()
    k_star = int(np.argmax(c >= gamma * c[-1]))
    d = 1 if taper == 0 else max(2, int(np.ceil(taper * (n // 2 + 1))))
    mask = np.zeros(n // 2 + 1)
    mask[: k_star + 1] = 1.0
    taper = np.arange(k_star + 1, min(k_star + d, n // 2 + 1))
    mask[taper] = 0.5 * (1 + np.cos(np.pi * (taper - k_star) / d))
    return (1 - alpha) * x + alpha * scipy.fft.irfft(spectrum * mask, n)


def rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


@pytest.mark.parametrize("n", [1, 2, 3, 31, 33, 100, 257, 1024, 4096, 7468, 7500, 100000])
@pytest.mark.parametrize("alpha,gamma,taper", [(0.5, 0.7, 0.05), (1.0, 0.3, 0.05), (0.0, 0.7, 0.05),
                                               (0.25, 1.0, 0.05), (0.5, 0.2, 0.05), (0.5, 0.7, 0.0),
                                               (0.5, 0.5, 0.3)])
def test_sss_matches_scipy_and_reference(lib, n, alpha, gamma, taper):
    rng = np.random.default_rng(n)
    x = rng.random(n) ** 4 + 0.1 * np.sin(np.arange(n) / 7.0)
    got = c_sss(lib, x, alpha, gamma, taper)
    assert rel(got, scipy_sss(x, alpha, gamma, taper)) <= 1e-10
    assert rel(got, spectral_smooth(x, alpha, gamma, taper)) <= 1e-10


def test_sss_invariants(lib):
    x = np.random.default_rng(0).random(500)
    assert np.array_equal(c_sss(lib, x, 0.0, 0.7), x)
    np.testing.assert_allclose(c_sss(lib, np.full(333, 0.25), 0.5, 0.7), 0.25, rtol=0, atol=1e-15)
    assert np.array_equal(c_sss(lib, np.zeros(64), 0.5, 0.7), np.zeros(64))


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 31])
@pytest.mark.parametrize("pool_type", ["avg", "max"])
@pytest.mark.parametrize("n", [1, 2, 5, 33, 1000])
def test_pool_equals_reference_bitwise(lib, kernel, pool_type, n):
    x = np.random.default_rng(kernel * n).standard_normal(n)
    out = np.empty(n)
    assert lib.audiokv_pool(x.ctypes.data_as(DP), n, kernel, {"avg": 0, "max": 1}[pool_type],
                            out.ctypes.data_as(DP)) == 0
    assert np.array_equal(out, pool1d(x, kernel, pool_type))


def c_select(lib, scores, k):
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    out = np.empty(max(k, 1), dtype=np.int32)
    assert lib.audiokv_select_top(scores.ctypes.data_as(DP), scores.size, k, out.ctypes.data_as(I32P)) == 0
    return out[:k]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("kind", ["random", "ties", "all_equal", "float32_ties", "extreme"])
@pytest.mark.parametrize("n", [1, 7, 100, 4096, 100000])
def test_select_equals_reference(lib, kind, n):
    rng = np.random.default_rng(n)
    x = {"random": lambda: rng.standard_normal(n),
         "ties": lambda: np.floor(rng.random(n) * 5),
         "all_equal": lambda: np.full(n, 0.3),
         "float32_ties": lambda: 1.0 + rng.integers(0, 3, n) * 1e-12,   # equal after rounding to float32
         "extreme": lambda: rng.choice([np.inf, -np.inf, 1e300, -1e300, 1e-300, 0.0, -0.0, 3e38, 4e38], n)}[kind]()
    order = rank_descending(x)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        if k < 0:
            continue
        assert np.array_equal(c_select(lib, x, k), np.sort(order[:k])), k


@pytest.mark.parametrize("seed", range(30))
def test_integerise_equals_reference(lib, seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 60))
    lo, hi = int(rng.integers(0, 5)), int(rng.integers(20, 40))
    real = rng.uniform(lo, hi, size)
    if seed % 3 == 0:
        real = np.round(real * 2) / 2  # exact ties of the fractional parts
    total = int(np.clip(round(real.sum()) + int(rng.integers(-2, 3)), lo * size, hi * size))
    got = np.empty(size, dtype=np.int64)
    assert lib.audiokv_integerise(real.ctypes.data_as(DP), size, total, lo, hi, got.ctypes.data_as(I64P)) == 0
    assert np.array_equal(got, largest_remainder(real, total, lo, hi))
