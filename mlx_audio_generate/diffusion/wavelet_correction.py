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

The transform is `pytorch_wavelets.DWT1DForward(J=1, mode="zero", wave=...)` and its `DWT1DInverse`: with
the analysis low-pass filter h (PyWavelets' dec_lo, L taps) and g[k] = (-1)^(k+1) h[L-1-k] (dec_hi), the
signal zero-padded by p // 2 on both sides (one more on the right when p = 2 (n_out - 1) - T + L is odd,
n_out = floor((T + L - 1) / 2)), low[k] = sum_j h[L-1-j] x[2k + j] (likewise high with g); the inverse is
the transposed convolution with the synthesis filters (h and g reversed), stride 2, L - 2 samples cut at
each end, then cut to T. The bases upstream's UI offers are here (their filter taps below, as PyWavelets
1.9 defines them): haar (upstream's default), db2, db4, sym4, sym8, coif2; `pytorch_wavelets` is not a
dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

DCW_MODES = ("low", "high", "double", "pix")
# PyWavelets' dec_lo of each basis (dec_hi, rec_lo, rec_hi follow from it by the quadrature-mirror relations)
WAVELETS: dict[str, tuple[float, ...]] = {
    "haar": (0.7071067811865476, 0.7071067811865476),
    "db2": (-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416),
    "db4": (
        -0.010597401785069032, 0.0328830116668852, 0.030841381835560764, -0.18703481171909309,
        -0.027983769416859854, 0.6308807679298589, 0.7148465705529157, 0.2303778133088965,
    ),
    "sym4": (
        -0.07576571478927333, -0.02963552764599851, 0.49761866763201545, 0.8037387518059161,
        0.29785779560527736, -0.09921954357684722, -0.012603967262037833, 0.0322231006040427,
    ),
    "sym8": (
        -0.0033824159510061256, -0.0005421323317911481, 0.03169508781149298, 0.007607487324917605,
        -0.1432942383508097, -0.061273359067658524, 0.4813596512583722, 0.7771857517005235,
        0.3644418948353314, -0.05194583810770904, -0.027219029917056003, 0.049137179673607506,
        0.003808752013890615, -0.01495225833704823, -0.0003029205147213668, 0.0018899503327594609,
    ),
    "coif2": (
        -0.000720549445520347, -0.0018232088709110323, 0.005611434819368834, 0.02368017194684777,
        -0.05943441864643109, -0.07648859907828076, 0.4170051844232391, 0.8127236354494135,
        0.3861100668227629, -0.0673725547237256, -0.04146493678687178, 0.01638733646320364,
    ),
}  # fmt: skip


def _filters(wavelet: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(dec_lo, dec_hi) of a basis; rec_lo / rec_hi are their reverses."""
    lo = WAVELETS[wavelet]
    n = len(lo)
    return lo, tuple((-1.0) ** (k + 1) * lo[n - 1 - k] for k in range(n))


def _pad_time(x: mx.array, before: int, after: int) -> mx.array:
    return mx.pad(x, [(0, 0), (before, after), (0, 0)]) if before or after else x


def dwt(x: mx.array, wavelet: str = "haar") -> tuple[mx.array, mx.array]:
    """(low, high) of x (B, T, C) along T, each (B, floor((T + L - 1) / 2), C)."""
    lo, hi = _filters(wavelet)
    taps, n = len(lo), x.shape[1]
    n_out = (n + taps - 1) // 2
    p = 2 * (n_out - 1) - n + taps
    x = _pad_time(x, p // 2, p // 2 + p % 2)
    span = 2 * n_out - 1
    frames = [x[:, j : j + span : 2] for j in range(taps)]
    low = sum(float(lo[taps - 1 - j]) * f for j, f in enumerate(frames))
    high = sum(float(hi[taps - 1 - j]) * f for j, f in enumerate(frames))
    return low, high


def idwt(low: mx.array, high: mx.array, length: int, wavelet: str = "haar") -> mx.array:
    """The inverse of `dwt`, cut to `length` frames."""
    lo, hi = _filters(wavelet)
    taps = len(lo)
    b, n, c = low.shape

    def upsample(a: mx.array) -> mx.array:  # a[k] at 2k, zeros between: 2n - 1 frames
        return mx.stack([a, mx.zeros_like(a)], axis=2).reshape(b, 2 * n, c)[:, : 2 * n - 1]

    ul, uh = upsample(low), upsample(high)
    # transposed convolution with rec = reversed dec filters: y[m] = sum_j rec[j] u[m - j]
    full = sum(
        float(lo[taps - 1 - j]) * _pad_time(ul, j, taps - 1 - j)
        + float(hi[taps - 1 - j]) * _pad_time(uh, j, taps - 1 - j)
        for j in range(taps)
    )
    cut = taps - 2
    return full[:, cut : full.shape[1] - cut][:, :length]


def haar_dwt(x: mx.array) -> tuple[mx.array, mx.array]:
    """The Haar `dwt` (upstream's default basis)."""
    return dwt(x, "haar")


def haar_idwt(low: mx.array, high: mx.array, length: int) -> mx.array:
    return idwt(low, high, length, "haar")


@dataclass(frozen=True)
class DCW:
    """One DCW configuration: `mode` one of DCW_MODES, `scaler` (the low band's, or the single one of "high"
    and "pix"), `high_scaler` (the high band's in "double"), `wavelet` one of WAVELETS."""

    mode: str = "double"
    scaler: float = 0.05
    high_scaler: float = 0.02
    wavelet: str = "haar"

    def __post_init__(self):
        if self.mode not in DCW_MODES:
            raise ValueError(f"dcw mode {self.mode!r} is not one of {DCW_MODES}")
        if self.wavelet not in WAVELETS:
            raise ValueError(f"dcw wavelet {self.wavelet!r} is not one of {tuple(WAVELETS)}")

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
        xl, xh = dwt(x_next.astype(mx.float32), self.wavelet)
        yl, yh = dwt(denoised.astype(mx.float32), self.wavelet)
        if low_s != 0.0:
            xl = xl + low_s * (xl - yl)
        if high_s != 0.0:
            xh = xh + high_s * (xh - yh)
        return idwt(xl, xh, x_next.shape[1], self.wavelet).astype(dtype)
