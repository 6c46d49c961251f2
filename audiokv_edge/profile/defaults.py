"""Per-model AudioKV defaults stored next to a head profile (window, SSS alpha and gamma, keep ratio).

See docs/gguf-keys.md. Every field is optional: None means "not stored, use the caller's own default".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# llama.cpp's model metadata API prints floating-point keys with "%f" (6 decimals). A value with at most 6
# decimal places survives that print and parses back to the same float64, so the C reader and the Python
# reader see the same number. The writer refuses values that would not.
FLOAT_DECIMALS = 6


def survives_fixed_point(value: float) -> bool:
    """True if ``float("%.6f" % value) == value`` (exactly what llama.cpp's "%f" round trip gives back)."""
    return float(f"{value:.{FLOAT_DECIMALS}f}") == value


@dataclass(frozen=True)
class ProfileDefaults:
    """Optional per-model AudioKV parameters.

    Parameters
    ----------
    window : int or None
        Observation window w in tokens, >= 1.
    sss_alpha : float or None
        Spectral Score Smoothing mix in [0, 1] (0 turns SSS off).
    sss_gamma : float or None
        SSS energy fraction in (0, 1].
    keep : float or None
        Keep ratio rho in (0, 1].

    Floats must have at most 6 decimal places (see ``survives_fixed_point``).
    """

    window: int | None = None
    sss_alpha: float | None = None
    sss_gamma: float | None = None
    keep: float | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            if isinstance(self.window, bool) or not isinstance(self.window, int):
                raise ValueError(f"defaults.window must be an int, got {type(self.window).__name__}")
            if not 1 <= self.window < 2**32:
                raise ValueError(f"defaults.window must be >= 1, got {self.window}")
        ranges = {
            "sss_alpha": (0.0, True, 1.0),
            "sss_gamma": (0.0, False, 1.0),
            "keep": (0.0, False, 1.0),
        }
        for name, (lo, lo_closed, hi) in ranges.items():
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"defaults.{name} must be a number, got {type(v).__name__}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"defaults.{name} must be finite, got {v}")
            if v > hi or v < lo or (v == lo and not lo_closed):
                bracket = "[" if lo_closed else "("
                raise ValueError(f"defaults.{name} must be in {bracket}{lo:g}, {hi:g}], got {v}")
            if not survives_fixed_point(v):
                raise ValueError(
                    f"defaults.{name} = {v!r} has more than {FLOAT_DECIMALS} decimal places; "
                    "llama.cpp's metadata API would round it")
            object.__setattr__(self, name, v)

    def is_empty(self) -> bool:
        """True if no field is set."""
        return all(getattr(self, n) is None for n in ("window", "sss_alpha", "sss_gamma", "keep"))

    def as_dict(self) -> dict:
        """The set fields only, as a plain dict."""
        return {n: getattr(self, n) for n in ("window", "sss_alpha", "sss_gamma", "keep")
                if getattr(self, n) is not None}
