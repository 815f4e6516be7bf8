"""Which MLX backend runs: the CUDA-only kernels and defaults ask this before taking their path."""

from __future__ import annotations

import mlx.core as mx


def on_cuda() -> bool:
    """Whether MLX runs on its CUDA backend's GPU (not the CPU, not Metal; a build without `mx.cuda` too)."""
    cuda = getattr(mx, "cuda", None)
    return mx.default_device().type == mx.gpu and cuda is not None and cuda.is_available()
