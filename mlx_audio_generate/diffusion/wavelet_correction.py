"""DCW (differential correction in the wavelet domain, Yu et al., CVPR 2026) for flow-matching samplers, as
ACE-Step 1.5 applies it after each sampler step (`acestep/models/common/dcw_correction.py`,
`dcw_primitives.py`), in MLX.

After a step gives x_next, with denoised = x - v t the clean sample predicted at that step, a one-level DWT
along the time axis of (B, T, C) latents splits both into a low and a high band, and x_next's bands are
pushed away from the denoised ones: xL <- xL + s (xL - yL) (and / or the same for xH), then the inverse DWT.
Modes and their per-step strengths (t = the step's current time): "low" t * scaler; "high" (1 - t) * scaler;
"double" t * scaler on the low band and (1 - t) * high_scaler on the high band; "pix" the raw scaler on
the latent itself, without a transform. A zero strength leaves x_next untouched (the reference skips the
transform then, so the round trip's rounding is skipped too).

The transform is the Haar filter bank of `pytorch_wavelets.DWT1DForward(J=1, mode="zero", wave="haar")` and
its inverse: low = c x[2k] + c x[2k+1], high = c x[2k] - c x[2k+1] with c = float32(1/sqrt 2), an odd T
padded with one zero on the right, the inverse cut back to T. Only the Haar basis (upstream's default) is
ported: the other bases upstream offers need PyWavelets' filter tables (`pytorch_wavelets` is not a
dependency here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

DCW_MODES = ("low", "high", "double", "pix")
_C = 1.0 / math.sqrt(2.0)


def haar_dwt(x: mx.array) -> tuple[mx.array, mx.array]:
    """(low, high) of x (B, T, C) along T, each (B, ceil(T / 2), C)."""
    if x.shape[1] % 2:
        x = mx.concatenate([x, mx.zeros((x.shape[0], 1, x.shape[2]), dtype=x.dtype)], axis=1)
    even, odd = x[:, 0::2], x[:, 1::2]
    return even * _C + odd * _C, even * _C - odd * _C


def haar_idwt(low: mx.array, high: mx.array, length: int) -> mx.array:
    """The inverse of `haar_dwt`, cut to `length` frames."""
    even = low * _C + high * _C
    odd = low * _C - high * _C
    b, n, c = low.shape
    return mx.stack([even, odd], axis=2).reshape(b, 2 * n, c)[:, :length]


@dataclass(frozen=True)
class DCW:
    """One DCW configuration: `mode` one of DCW_MODES, `scaler` (the low band's, or the single one of "high"
    and "pix"), `high_scaler` (the high band's in "double")."""

    mode: str = "double"
    scaler: float = 0.05
    high_scaler: float = 0.02

    def __post_init__(self):
        if self.mode not in DCW_MODES:
            raise ValueError(f"dcw mode {self.mode!r} is not one of {DCW_MODES}")

    def apply(self, x_next: mx.array, denoised: mx.array, t: float) -> mx.array:
        """x_next (B, T, C) corrected against `denoised` at the step's current time `t`."""
        t = float(t)
        if self.mode == "pix":
            return x_next if self.scaler == 0.0 else x_next + self.scaler * (x_next - denoised)
        low_s = t * self.scaler if self.mode in ("low", "double") else 0.0
        if self.mode == "high":
            high_s = (1.0 - t) * self.scaler
        else:
            high_s = (1.0 - t) * self.high_scaler if self.mode == "double" else 0.0
        if low_s == 0.0 and high_s == 0.0:
            return x_next
        dtype = x_next.dtype
        xl, xh = haar_dwt(x_next.astype(mx.float32))
        yl, yh = haar_dwt(denoised.astype(mx.float32))
        if low_s != 0.0:
            xl = xl + low_s * (xl - yl)
        if high_s != 0.0:
            xh = xh + high_s * (xh - yh)
        return haar_idwt(xl, xh, x_next.shape[1]).astype(dtype)
