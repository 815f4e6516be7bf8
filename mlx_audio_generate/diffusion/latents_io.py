"""Latents in and out of a diffusion family's `generate` (Python API only, as diffusers' pipelines offer):

- `latents=`: the initial noise, standard normal, in the shape the model would draw it (before any sampler
  scales it by its first sigma). Given the noise `seed` would draw, the result is the seeded result exactly
  (the seed still drives a stochastic sampler's per-step noise and a VAE encode's noise).
- `return_latents=True`: `(audio, latents)`, the final latents the VAE decoded into that audio (numpy
  float32, the layout the family's decoder takes).

The same two keywords in every diffusion family; they are not settings (no CLI flag, batch key or server
field): arrays do not travel through a command line.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import UserError


def given_latents(latents: Any, shape: tuple[int, ...]) -> mx.array:
    """`latents` as the float32 initial noise of `shape` (batch, ...), or a one-line UserError."""
    try:
        x = latents if isinstance(latents, mx.array) else mx.array(np.asarray(latents, dtype=np.float32))
    except (TypeError, ValueError):
        raise UserError(
            f"latents must be an array of shape {tuple(shape)}, got {type(latents).__name__}"
        ) from None
    if tuple(x.shape) != tuple(shape):
        raise UserError(
            f"latents must have shape {tuple(shape)} (batch, then this model's latent layout for the seconds "
            f"asked), got {tuple(x.shape)}"
        )
    x = x.astype(mx.float32)
    if not bool(mx.all(mx.isfinite(x)).item()):
        raise UserError("latents contain NaN or infinite values")
    return x


def with_latents(audio: np.ndarray, latents: mx.array, return_latents: bool) -> Any:
    """`audio`, or `(audio, latents as numpy float32)` when `return_latents`."""
    if not return_latents:
        return audio
    return audio, np.array(latents.astype(mx.float32))
