"""Pieces both Stable Audio DiTs share (stable-audio-tools' and Stable Audio 3's `DiffusionTransformer` /
`ContinuousTransformer` have the same embedders, rotary embedding, 1x1 convs and compile plumbing).

- `MLP`: the reference's `nn.Sequential(Linear, SiLU, Linear)` (timestep / cond / global embedders);
- `GLUFeedForward`: `FeedForward(glu=True)`: `proj_in` gives [x, gate], out = proj_out(x * silu(gate));
- `DiTWidths`: the config properties derived from embed_dim / num_heads / the projection flags;
- rotary: `rope_inv_freq` (RotaryEmbedding's float32 buffer) and `partial_rope` (half-split layout);
- `Compiled` / `on_gpu`: the compiled-function cache and the "compile on the GPU only" default;
- weights: `uncond_tokens` (batch-CFG's unconditional rows), `take_linears`, `take_conv1x1`,
  `check_inv_freq` (the pieces of both `sanitize`s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import gemm_kernel, row_kernels
from ..errors import UserError
from ..weights import Checkpoint


class MLP(nn.Module):
    """Linear -> SiLU -> Linear (`nn.Sequential(Linear, SiLU, Linear)` of the reference)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden, bias=bias)
        self.fc2 = nn.Linear(d_hidden, d_out, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.silu(self.fc1(x)))


class GLUFeedForward(nn.Module):
    """GLU with SiLU (SwiGLU): `proj_in` gives [x, gate]; out = proj_out(x * silu(gate))."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def __call__(self, x: mx.array) -> mx.array:
        # CUDA: the gate is one kernel (row_kernels); few rows: the products too (gemm_kernel)
        return gemm_kernel.linear(self.proj_out, row_kernels.glu(gemm_kernel.linear(self.proj_in, x)))


class DiTWidths:
    """Derived widths of a DiT config (a mixin of the frozen config dataclasses)."""

    embed_dim: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: int
    project_cond_tokens: bool
    project_global_cond: bool

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return max(self.head_dim // 2, 32)  # ContinuousTransformer: RotaryEmbedding(max(dim_heads // 2, 32))

    @property
    def cond_embed_dim(self) -> int:
        return self.embed_dim if self.project_cond_tokens else self.cond_token_dim

    @property
    def global_embed_dim(self) -> int:
        return self.embed_dim if self.project_global_cond else self.global_cond_dim


def rope_inv_freq(dim: int) -> np.ndarray:
    """RotaryEmbedding.inv_freq = 1 / 10000^(arange(0, dim, 2) / dim), float32 as torch. MLX's rope takes its
    reciprocal ("periods"): passing them (instead of base=10000) reproduces the reference's angles to ~1e-7
    rather than ~2e-5."""
    return (1.0 / (np.float32(10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )


def partial_rope(a: mx.array, rotary_dim: int, periods: mx.array) -> mx.array:
    """Rotary embedding of the first `rotary_dim` dims of each head, positions 0..N-1 (the reference's
    rotate-half layout = MLX's non-traditional rope)."""
    return mx.fast.rope(a, rotary_dim, traditional=False, base=None, scale=1.0, offset=0, freqs=periods)


class Compiled:
    """Compiled-function cache (a plain object, so nn.Module does not take it for part of the tree)."""

    def __init__(self) -> None:
        self.fns: dict[tuple, Any] = {}


def on_gpu() -> bool:
    """Whether MLX runs on the GPU: the DiTs compile there only (compiled CPU kernels need a C++ compiler at
    run time)."""
    return mx.default_device().type == mx.DeviceType.gpu


def uncond_tokens(
    cross_attn_cond: mx.array,
    negative: mx.array | None,
    negative_mask: mx.array | None,
    mismatch: str,
) -> mx.array:
    """Batch-CFG's unconditional cross tokens: zeros, or the negative prompt's with the tokens where its mask
    is False zeroed; shapes that differ: a UserError `mismatch.format(negative shape, conditional shape)`."""
    if negative is None:
        return mx.zeros_like(cross_attn_cond)
    if negative.shape != cross_attn_cond.shape:
        raise UserError(mismatch.format(negative.shape, cross_attn_cond.shape))
    uncond = negative.astype(cross_attn_cond.dtype)
    if negative_mask is not None:
        keep = negative_mask.astype(mx.bool_)[..., None]
        uncond = mx.where(keep, uncond, mx.zeros_like(uncond))
    return uncond


def take_linears(
    ckpt: Checkpoint, prefix: str, out: dict[str, mx.array]
) -> tuple[Callable[..., None], Callable[[str, str, bool], None]]:
    """`lin(ref, ours, bias=False)` and `mlp(ref, ours, bias)`: move a reference Linear / Sequential(Linear,
    SiLU, Linear) under `prefix` of `ckpt` into `out` under our names."""

    def lin(ref: str, ours: str, bias: bool = False) -> None:
        out[f"{ours}.weight"] = ckpt.take(f"{prefix}{ref}.weight")
        if bias:
            out[f"{ours}.bias"] = ckpt.take(f"{prefix}{ref}.bias")

    def mlp(ref: str, ours: str, bias: bool) -> None:
        lin(f"{ref}.0", f"{ours}.fc1", bias)
        lin(f"{ref}.2", f"{ours}.fc2", bias)

    return lin, mlp


def take_conv1x1(ckpt: Checkpoint, key: str) -> mx.array:
    """A Conv1d (out, in, 1) weight as the (out, in) matrix of the Linear that computes it."""
    w = ckpt.take(key)
    if w.ndim != 3 or w.shape[-1] != 1:
        raise UserError(f"{ckpt.name}: {key} has shape {w.shape}, expected a 1x1 conv")
    return w[..., 0]


def check_inv_freq(ckpt: Checkpoint, key: str, ours: np.ndarray, rtol: float, what: str) -> None:
    """A saved `rotary_pos_emb.inv_freq` buffer (the reference uses the saved values; ours are computed) must
    be our numbers: a UserError naming `what` otherwise. Taken (dropped) when present."""
    if key not in ckpt:
        return
    saved = np.array(ckpt.take(key).astype(mx.float32))
    if saved.shape != ours.shape or not np.allclose(saved, ours, rtol=rtol, atol=0):
        raise UserError(f"{ckpt.name}: {key} does not match {what}")
