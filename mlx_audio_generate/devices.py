"""Which MLX backend runs (the CUDA-only kernels and defaults ask this before taking their path), and what
those kernels' calls share."""

from __future__ import annotations

import struct

import mlx.core as mx


def on_cuda() -> bool:
    """Whether MLX runs on its CUDA backend's GPU (not the CPU, not Metal; a build without `mx.cuda` too)."""
    cuda = getattr(mx, "cuda", None)
    return mx.default_device().type == mx.gpu and cuda is not None and cuda.is_available()


def float_bits(x: float) -> int:
    """A float32's bits as an int: how a float reaches an `mx.fast.cuda_kernel` template (read back with
    `__int_as_float`)."""
    return struct.unpack("<i", struct.pack("<f", x))[0]
