"""ExpoFourierFeatures' frequencies, shared by the number conditioner (seconds) and the DiT's timestep."""

from __future__ import annotations

import math

import numpy as np


def expo_frequencies(dim: int, min_freq: float = 0.5, max_freq: float = 10000.0) -> np.ndarray:
    """ExpoFourierFeatures' `exp(linspace(0, 1, dim // 2) * (log max - log min) + log min)`, float32.

    The features reach 2 pi x 1e4 rad, so one float32 ulp in a frequency moves a top feature by up to ~4e-3
    rad (x = 1): the ramp is torch's linspace (`step * i` for the first half, `1 - step * (n - 1 - i)` for the
    rest, each rounded once, i.e. fused, as torch's CPU kernel gives here), the multiply-add in float32 as
    torch does, the exponential correctly rounded (torch's float32 exp is within one ulp of it, not always
    equal: see the parity test)."""
    n, f32 = dim // 2, np.float32
    step = np.float64(f32(1.0) / f32(max(n - 1, 1)))
    i = np.arange(n, dtype=np.float64)
    ramp = np.where(i < n // 2, step * i, 1.0 - step * (n - 1 - i)).astype(f32)
    lo, hi = math.log(min_freq), math.log(max_freq)
    arg = (ramp * f32(hi - lo)).astype(f32) + f32(lo)
    return np.exp(arg.astype(np.float64)).astype(f32)
