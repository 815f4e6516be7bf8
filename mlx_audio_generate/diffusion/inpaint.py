"""Soft-mask inpainting of stable-audio-tools 0.0.16 (`mask_args`), in MLX and numpy.

Reference: stable-audio-tools 0.0.16 (PyPI, June 2024), the last release whose `generate_diffusion_cond`
takes `mask_args`; its masked sampling is unchanged since 0.0.13. 0.0.17 replaced it with
`generate_diffusion_cond_inpaint`, which needs a model trained with inpainting conditioning
(`inpaint_mask` / `inpaint_masked_input`); the Stable Audio Open checkpoints are not, so 0.0.16's
sampling-time inpainting is the one that applies to them. 0.0.19 still ships its `build_mask` and
`get_bmask` (unchanged).

How the reference works (`inference/generation.py` + `inference/sampling.py:sample_k`, k-diffusion 0.1.1):
- `build_mask` gives a soft mask over the latent frames: 1 inside [maskstart, maskend), Hann ramps
  (`softnessL` / `softnessR` frames) just inside both edges, 0 outside, all scaled by (1 - marination).
- Step i uses the binary mask `get_bmask(i, steps, mask) = mask <= (i + 1) / steps`: where it is 1 the
  state is replaced by the input latents re-noised to that step's sigma (fresh noise each step); where it is 0
  the sampler's own state is kept. Frames at 0 (outside the region) are therefore pinned to the input at
  every step, frames at 1 (inside) are free until the last step, and a soft value m frees a frame for the
  first ~m of the steps only (the crossfade; marination pins the region earlier).
- The start is `bmask_0 * (init + sigma_0 * noise) + (1 - bmask_0) * sigma_0 * noise`, and the replacement
  happens in k-diffusion's step callback, i.e. after the model call (and after Euler/Heun's derivative) and
  before the update: `samplers.py` runs `StepHook` at exactly that point.
- Only k-diffusion (v-objective) sampling has it; the reference's rectified-flow sampler ignores masks.

One addition beyond the reference: `keep_outside` sets the frames the mask leaves untouched (mask == 0) to the
input's latents after the last step. The reference returns its final denoised estimate there (a light
re-synthesis of the input at sigma_min); with the paste, the kept part decodes to the input up to the VAE's
round trip. Parity tests compare the sampler output before this step.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ..errors import UserError
from ..settings import named

if TYPE_CHECKING:  # samplers imports this module
    from .samplers import NoiseFn, StepHook

_F = np.float32


def hann_half(n: int, right: bool) -> np.ndarray:
    """`torch.hann_window(2n, periodic=False)[:n]` (rising, left) or `[n:]` (falling, right), float32."""
    if n <= 0:
        return np.zeros(0, _F)
    m = 2 * n
    k = np.arange(m, dtype=_F)
    # torch: arange * (2 pi / (m - 1)), cos, * -0.5, + 0.5 (hamming with alpha = beta = 0.5), in float32.
    w = (np.cos(k * _F(2 * math.pi / (m - 1))) * _F(-0.5) + _F(0.5)).astype(_F)
    return w[n:] if right else w[:n]


def build_mask(
    frames: int, start: int, end: int, soft_left: int = 0, soft_right: int = 0, marination: float = 0.0
) -> np.ndarray:
    """The reference's `build_mask` in latent frames (it takes percentages of the window), float32."""
    if not (0 <= start < end <= frames and soft_left >= 0 and soft_right >= 0):
        raise ValueError(f"mask [{start}, {end}) does not fit {frames} frames")
    if start + soft_left > frames or end - soft_right < 0:
        raise ValueError("mask softness runs past the window")
    mask = np.zeros(frames, _F)
    mask[start:end] = 1
    mask[start : start + soft_left] = hann_half(soft_left, right=False)
    mask[end - soft_right : end] = hann_half(soft_right, right=True)
    if marination > 0:
        mask = (mask * _F(1 - marination)).astype(_F)
    return mask


def binary_mask(i: int, steps: int, mask: np.ndarray) -> np.ndarray:
    """`get_bmask`: 1 where step i replaces the state by the re-noised input (mask <= (i + 1) / steps)."""
    # torch compares the float32 mask with the Python float cast to float32.
    return (mask <= _F((i + 1) / steps)).astype(_F)


def frame_bounds(
    start_s: float, end_s: float, soft_left_s: float, soft_right_s: float, sample_rate: int, ratio: int
) -> tuple[int, int, int, int]:
    """Seconds -> latent frames with the reference's rounding (floor start, ceil end, round softness), so
    every frame that overlaps [start, end) is regenerated. Positions are rounded to 1e-9 frame first: float
    error (0.1 + 0.2 style) must not add a frame."""

    def pos(s: float) -> float:
        return round(s * sample_rate / ratio, 9)

    return (
        math.floor(pos(start_s)),
        math.ceil(pos(end_s)),
        round(pos(soft_left_s)),
        round(pos(soft_right_s)),
    )


def _real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_mask_args(
    start: float | None,
    end: float | None,
    soft_left: float,
    soft_right: float,
    marination: float,
    clip_seconds: float,
) -> None:
    """UserError (one line) for a mask the request cannot use; `clip_seconds` is the input's usable length
    (math.inf checks all but the clip's end, e.g. in a CLI before anything is loaded)."""
    if start is None or end is None:
        raise UserError(
            f"inpainting needs {named('mask_start')} and {named('mask_end')} (seconds into the inpaint audio)"
        )
    for name, v in (("mask_start", start), ("mask_end", end)):
        if not _real(v):
            raise UserError(f"{named(name)} must be a number of seconds, got {v!r}")
    if start < 0 or end > clip_seconds + 1e-9:
        raise UserError(
            f"the mask [{start:g}, {end:g}] s ({named('mask_start', 'mask_end')}) lies outside the clip "
            f"being inpainted (0 to {clip_seconds:.3f} s)"
        )
    if end <= start:
        raise UserError(f"{named('mask_end')} = {end:g} s must be after {named('mask_start')} = {start:g} s")
    for name, v in (("mask_softness_left", soft_left), ("mask_softness_right", soft_right)):
        if not _real(v) or v < 0:
            raise UserError(f"{name} must be a number of seconds >= 0, got {v!r}")
    if soft_left + soft_right > end - start + 1e-9:
        raise UserError(
            f"mask softness ({soft_left:g} + {soft_right:g} s) is longer than the mask ({end - start:g} s)"
        )
    if not _real(marination) or not 0 <= marination <= 1:
        raise UserError(f"marination must be in [0, 1], got {marination!r}")


def masked_start(init: mx.array, scaled_noise: mx.array, mask: np.ndarray, steps: int) -> mx.array:
    """The reference's starting state: re-noised input where step 0's binary mask is 1, noise elsewhere."""
    keep = mx.array(binary_mask(0, steps, mask)) > 0
    return mx.where(keep, init + scaled_noise, scaled_noise)


def renoise_hook(init: mx.array, mask: np.ndarray, steps: int, noise_fn: NoiseFn) -> StepHook:
    """The reference's `inpainting_callback` as a samplers.StepHook: (i, sigma, x) -> x with the binary-mask
    frames replaced by `init + noise_i * sigma` (noise_i = noise_fn(i, init.shape), drawn every step)."""
    keeps = [mx.array(binary_mask(i, steps, mask)) > 0 for i in range(steps)]

    def hook(i: int, sigma: np.float32, x: mx.array) -> mx.array:
        noised = init + noise_fn(i, tuple(init.shape)).astype(init.dtype) * float(sigma)
        return mx.where(keeps[i], noised, x)

    return hook


def keep_outside(latents: mx.array, init: mx.array, mask: np.ndarray) -> mx.array:
    """Our final paste (not in the reference): frames with mask 0 take the input's latents."""
    return mx.where(mx.array(mask == 0), init, latents)
