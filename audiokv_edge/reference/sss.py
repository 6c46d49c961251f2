"""Spectral Score Smoothing (SSS): low-pass filtering of per-token scores in the frequency domain.

AudioKV (He et al., 2026, arXiv 2604.06694), Alg. 1 and Eq. 13-20; the open details are fixed in docs/semantics.md.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["spectral_smooth", "spectral_mask", "taper_width", "check_sss_params", "snap_to_row_grid", "audio_runs",
           "smooth_audio_runs"]

GRID_BITS = 24


def check_sss_params(alpha: float, gamma: float, taper: float = 0.05) -> None:
    """Raise ValueError unless 0 <= alpha <= 1, 0 < gamma <= 1 and 0 <= taper <= 1."""
    if not isinstance(taper, (int, float)) or isinstance(taper, bool) or not 0.0 <= float(taper) <= 1.0:
        raise ValueError(f"SSS taper must be a number in [0, 1], got {taper!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"SSS alpha must be a number in [0, 1], got {alpha!r}")
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"SSS gamma must be a number in (0, 1], got {gamma!r}")


def _checked_rows(function: str, x: np.ndarray, alpha: float, gamma: float, taper: float) -> np.ndarray:
    """``x`` as float64 after the checks of every smoothing function (named ``function`` in the errors): the
    parameters (:func:`check_sss_params`), at least one axis, finite scores."""
    check_sss_params(alpha, gamma, taper)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"{function} needs an array with at least one axis (the token axis)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{function} got NaN or infinite scores")
    return x


def taper_width(n: int, taper: float = 0.05) -> int:
    """Cosine taper width D = max(2, ceil(taper * (n // 2 + 1))) for a row of length n; D = 1 (no taper, a hard
    cut after k*) when taper == 0. The paper gives no width: taper = 0.05 is this project's [choice]."""
    if taper == 0:
        return 1
    return max(2, math.ceil(taper * (n // 2 + 1)))


def spectral_mask(energy: np.ndarray, gamma: float, n: int, taper: float = 0.05) -> np.ndarray:
    """Low-pass mask from the power spectrum (Eq. 15-17 plus the cosine taper).

    Parameters
    ----------
    energy : ndarray, float64, shape [..., n // 2 + 1]
        |X|^2 of the real FFT of each row, DC bin included.
    gamma : float
        Fraction of the total energy the pass band must hold.
    n : int
        Length of the time-domain rows.
    taper : float
        Relative taper width (:func:`taper_width`).

    Returns
    -------
    ndarray, float64, shape [..., n // 2 + 1]
        m[i] = 1 for i <= k*, 0.5 (1 + cos(pi (i - k*) / D)) for k* < i < k* + D, 0 above, where k* is the
        smallest k with cumsum(energy)[k] >= gamma * sum(energy). Rows of zero total energy get an all-one mask.
    """
    c = np.cumsum(energy, axis=-1)  # sequential, as in the C twin
    total = c[..., -1:]
    k_star = np.argmax(c >= gamma * total, axis=-1)[..., None]  # first True; exists since c[-1] >= gamma c[-1]
    i = np.arange(energy.shape[-1])
    d = taper_width(n, taper)
    offset = (i - k_star).astype(np.float64)
    mask = np.where(offset <= 0, 1.0, 0.0)
    in_taper = (offset > 0) & (offset < d)
    mask = np.where(in_taper, 0.5 * (1.0 + np.cos(np.pi * offset / d)), mask)
    return np.where(total > 0, mask, 1.0)


def spectral_smooth(x: np.ndarray, alpha: float = 0.5, gamma: float = 0.7, taper: float = 0.05) -> np.ndarray:
    """Spectral Score Smoothing along the last axis.

    out = (1 - alpha) x + alpha irfft(rfft(x) * m, n), with the energy-quantile low-pass mask m of
    :func:`spectral_mask` (AudioKV, arXiv 2604.06694, Eq. 13-20).

    Parameters
    ----------
    x : array_like, float, shape [..., n]
        Score rows (any leading shape). Converted to float64.
    alpha : float, default 0.5
        Blend weight of the smoothed row, in [0, 1]; 0 returns x unchanged.
    gamma : float, default 0.7
        Energy fraction kept in the pass band, in (0, 1].
    taper : float, default 0.05
        [choice] cosine taper width as a fraction of the n // 2 + 1 bins (at least 2 bins); 0 = hard cut.

    Returns
    -------
    ndarray, float64, shape [..., n]
        Smoothed rows. Rows of length n <= 1 and all-zero rows are returned unchanged.

    Raises
    ------
    ValueError
        On alpha, gamma or taper out of range, a 0-d input, or non-finite values.
    """
    x = _checked_rows("spectral_smooth", x, alpha, gamma, taper)
    n = x.shape[-1]
    if alpha == 0 or n <= 1 or x.size == 0:
        return x.copy()
    spectrum = np.fft.rfft(x, axis=-1)
    energy = spectrum.real ** 2 + spectrum.imag ** 2
    smoothed = np.fft.irfft(spectrum * spectral_mask(energy, gamma, n, taper), n=n, axis=-1)
    return (1.0 - alpha) * x + alpha * smoothed


def snap_to_row_grid(x: np.ndarray) -> np.ndarray:
    """Round every row to its 24-bit absolute grid (docs/semantics.md, "Smoothing").

    With max|row| = f * 2^e, f in [0.5, 1): q = 2^(e - 24) and row = rint(row / q) * q (half to even; exact
    power-of-two scaling). FFT round-off (~1e-16 max|row| on every token) then cannot order tokens whose smoothed
    score is about 0 differently in two FFT implementations: they become exact ties. Rows of zeros are unchanged.

    Parameters
    ----------
    x : ndarray, float64, shape [..., n]

    Returns
    -------
    ndarray, float64, shape [..., n]
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    peak = np.max(np.abs(x), axis=-1, keepdims=True)
    _, exponent = np.frexp(peak)
    step = np.ldexp(1.0, exponent - GRID_BITS)
    return np.where(peak > 0, np.rint(x / step) * step, x)


def audio_runs(audio: np.ndarray) -> list[tuple[int, int]]:
    """The maximal runs of consecutive audio tokens of a mask.

    Parameters
    ----------
    audio : array_like, bool, shape [n]
        True (non-zero) where the token is an audio token.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` of every run, ``audio[start:stop]`` all True, ``audio[start - 1]`` and ``audio[stop]``
        False or outside; in ascending order.
    """
    a = np.asarray(audio).reshape(-1) != 0
    edges = np.diff(np.concatenate([[0], a.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def smooth_audio_runs(x: np.ndarray, audio: np.ndarray, alpha: float = 0.5, gamma: float = 0.7,
                      taper: float = 0.05) -> np.ndarray:
    """Spectral Score Smoothing restricted to the audio tokens (docs/semantics.md, "SSS restricted to the audio
    tokens").

    Every maximal run of consecutive audio tokens (:func:`audio_runs`) of length >= 2 is smoothed on its own by
    :func:`spectral_smooth` (its own FFT, taper width from its own length) and rounded to its own 24-bit grid
    (:func:`snap_to_row_grid`); every other token, and a run of one token, keeps x. With every token audio this is
    ``snap_to_row_grid(spectral_smooth(x))`` (rows longer than 1), bit for bit; with none it is x.

    Parameters
    ----------
    x : array_like, float, shape [..., n]
        Score rows (any leading shape): every row shares the mask.
    audio : array_like, bool, shape [n]
        True where the token is an audio token.
    alpha, gamma, taper : float
        As :func:`spectral_smooth`.

    Returns
    -------
    ndarray, float64, shape [..., n]

    Raises
    ------
    ValueError
        Parameters out of range, a 0-d input, non-finite scores, or a mask of another length than the rows.
    """
    x = _checked_rows("smooth_audio_runs", x, alpha, gamma, taper)
    audio = np.asarray(audio)
    if audio.shape != (x.shape[-1],):
        raise ValueError(f"the audio mask has shape {audio.shape}, the score rows {x.shape[-1]} tokens")
    out = x.copy()
    if alpha == 0:
        return out
    for start, stop in audio_runs(audio):
        if stop - start >= 2:
            out[..., start:stop] = snap_to_row_grid(spectral_smooth(x[..., start:stop], alpha, gamma, taper))
    return out
