"""The parity measure the tests share: relative error = max|ours - ref| / max|ref|, shapes checked first."""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def rel_err(ours, ref) -> float:
    """`ours` (an mx or numpy array) against a reference array, in float32 (bfloat16 goes through MLX)."""
    if isinstance(ours, mx.array):
        ours = ours.astype(mx.float32)
    o, r = np.array(ours, dtype=np.float32), np.asarray(ref)
    assert o.shape == r.shape, (o.shape, r.shape)
    return float(np.abs(o - r).max() / np.abs(r).max())
