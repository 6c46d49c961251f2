"""libaudiokv's real FFT against scipy.fft on every length 1..4096 and on large primes.

Tolerance: max |X_c - X_scipy| <= 1e-12 * max |X_scipy| (both double precision; measured worst about 1e-15).
"""

import ctypes

import numpy as np
import pytest
import scipy.fft

from tests.libaudiokv_build import ensure_libaudiokv

pytestmark = pytest.mark.native

DP = ctypes.POINTER(ctypes.c_double)


@pytest.fixture(scope="module")
def lib():
    return ensure_libaudiokv()


def c_rfft(lib, x):
    out = np.empty(2 * (x.size // 2 + 1))
    assert lib.audiokv_rfft(x.ctypes.data_as(DP), x.size, out.ctypes.data_as(DP)) == 0
    return out[0::2] + 1j * out[1::2]


def c_irfft(lib, spectrum, n):
    packed = np.empty(2 * spectrum.size)
    packed[0::2], packed[1::2] = spectrum.real, spectrum.imag
    out = np.empty(n)
    assert lib.audiokv_irfft(packed.ctypes.data_as(DP), n, out.ctypes.data_as(DP)) == 0
    return out


def relative_error(got, want):
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)


def test_rfft_every_length_up_to_4096(lib):
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in range(1, 4097):
        x = rng.standard_normal(n)
        err = relative_error(c_rfft(lib, x), scipy.fft.rfft(x))
        worst = max(worst, err)
        assert err <= 1e-12, n
    assert worst > 0.0  # the comparison is not vacuous


def test_irfft_every_length_up_to_4096(lib):
    rng = np.random.default_rng(1)
    for n in range(1, 4097):
        spectrum = scipy.fft.rfft(rng.standard_normal(n))
        want = scipy.fft.irfft(spectrum, n)
        assert relative_error(c_irfft(lib, spectrum, n), want) <= 1e-12, n


@pytest.mark.parametrize("n", [4099, 7919, 7468, 65521, 104729, 131072, 1000003])
def test_large_primes_and_composites(lib, n):
    x = np.random.default_rng(n).standard_normal(n)
    spectrum = scipy.fft.rfft(x)
    assert relative_error(c_rfft(lib, x), spectrum) <= 1e-12
    assert relative_error(c_irfft(lib, spectrum, n), x) <= 1e-12


def test_irfft_ignores_imaginary_dc_and_nyquist_like_scipy(lib):
    spectrum = np.array([1 + 5j, 2 - 1j, 3 + 0.5j, 4 + 7j])  # n = 6: bins 0..3, bin 3 is Nyquist
    np.testing.assert_allclose(c_irfft(lib, spectrum, 6), scipy.fft.irfft(spectrum, 6), rtol=0, atol=1e-14)
