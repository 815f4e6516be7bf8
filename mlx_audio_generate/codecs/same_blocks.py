"""Transformer blocks of the SAME autoencoder (the reference's `models/transformer.py`, the subset SAME uses).

A block is pre-norm DyT (`gamma * tanh(alpha * x) + beta`) -> differential self-attention -> residual, then
DyT -> GLU feed-forward -> residual. The attention projects q, k, v, q2, k2 with one fused linear
(`to_qkv`, that order), normalises q/q2 and k/k2 with DyT over the head dim, applies rotate-half RoPE to the
first `head_dim // 2` features (base 10000, positions counted from 0 within the attended sequence) and
returns `SDPA(q, k, v) - SDPA(q2, k2, v)`. The GLU gate is SiLU, or `sin(pi * x)` in "sinusoidal" blocks.

Two attention spans, chosen by the caller:
- full attention within each row (the caller folds chunks into the batch: chunked attention);
- a band `-w_left <= j - i <= w_right` over the whole sequence (sliding window). The reference computes it
  exactly (chunked-halo masked SDPA on CPU, flash-attn windows on CUDA); here queries go in blocks of
  `BAND_BLOCK` with their key halo gathered, so memory grows with length x window, never length^2.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..weights import Checkpoint

ROPE_BASE = 10000.0  # RotaryEmbedding's default; the reference never overrides it for SAME
BAND_BLOCK = 128  # queries per block of the sliding-window attention (speed/memory only, not the maths)
SIN_PI = 3.14159265359  # the reference's Sin module constant


class DyT(nn.Module):
    """Dynamic tanh: `gamma * tanh(alpha * x) + beta`, alpha a scalar (shape (1,))."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = mx.ones((1,))
        self.gamma = mx.ones((dim,))
        self.beta = mx.zeros((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.gamma * mx.tanh(self.alpha * x) + self.beta


def band_attention(
    q: mx.array, k: mx.array, v: mx.array, w_left: int, w_right: int, block: int | None = None
) -> mx.array:
    """SDPA of (B, H, N, D) tensors where query i sees keys j with `-w_left <= j - i <= w_right`."""
    block = BAND_BLOCK if block is None else block
    B, H, N, D = q.shape
    nb = -(-N // block)
    width = block + w_left + w_right
    tail = nb * block - N
    qp = mx.pad(q, [(0, 0), (0, 0), (0, tail), (0, 0)])
    kv_pad = [(0, 0), (0, 0), (w_left, tail + w_right), (0, 0)]
    kp, vp = mx.pad(k, kv_pad), mx.pad(v, kv_pad)
    # block b's keys: padded positions b*block .. b*block + width - 1, i.e. global b*block - w_left + c
    idx = (mx.arange(nb)[:, None] * block + mx.arange(width)[None, :]).reshape(-1)

    def fold(t: mx.array, n: int) -> mx.array:  # (B, H, nb*n, D) -> (B*nb, H, n, D)
        return t.reshape(B, H, nb, n, D).transpose(0, 2, 1, 3, 4).reshape(B * nb, H, n, D)

    qb = fold(qp, block)
    kb, vb = fold(mx.take(kp, idx, axis=2), width), fold(mx.take(vp, idx, axis=2), width)
    a = mx.arange(block)[:, None]
    c = mx.arange(width)[None, :]
    band = (c >= a) & (c <= a + w_left + w_right)  # (block, width): the same for every block
    key_pos = mx.arange(nb)[:, None] * block - w_left + mx.arange(width)[None, :]  # (nb, width)
    query_pos = mx.arange(nb)[:, None] * block + mx.arange(block)[None, :]  # (nb, block)
    # padded query rows (cut off below) see everything, so no row is fully masked (no NaN)
    mask = (band[None] & ((key_pos >= 0) & (key_pos < N))[:, None, :]) | (query_pos >= N)[..., None]
    mask = mx.broadcast_to(mask[None], (B, nb, block, width)).reshape(B * nb, 1, block, width)
    out = mx.fast.scaled_dot_product_attention(qb, kb, vb, scale=1.0 / math.sqrt(D), mask=mask)
    out = out.reshape(B, nb, H, block, D).transpose(0, 2, 1, 3, 4).reshape(B, H, nb * block, D)
    return out[:, :, :N]


class DifferentialAttention(nn.Module):
    """Differential self-attention with DyT qk-norm and partial RoPE (no bias, no cross-attention)."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.rope_dims = head_dim // 2  # TransformerBlock builds RotaryEmbedding(dim_heads // 2)
        self.to_qkv = nn.Linear(dim, 5 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.q_norm = DyT(head_dim)
        self.k_norm = DyT(head_dim)

    def __call__(self, x: mx.array, window: tuple[int, int] | None = None) -> mx.array:
        B, N, _ = x.shape
        heads = (
            t.reshape(B, N, self.heads, self.head_dim).transpose(0, 2, 1, 3)
            for t in mx.split(self.to_qkv(x), 5, axis=-1)
        )
        q, k, v, q2, k2 = heads
        # one pass over both branches: the two queries (and keys) stacked along the head axis
        q = self.q_norm(mx.concatenate([q, q2], axis=1))
        k = self.k_norm(mx.concatenate([k, k2], axis=1))
        q = mx.fast.rope(q, self.rope_dims, traditional=False, base=ROPE_BASE, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.rope_dims, traditional=False, base=ROPE_BASE, scale=1.0, offset=0)
        v = mx.concatenate([v, v], axis=1)
        if window is None:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        else:
            out = band_attention(q, k, v, window[0], window[1])
        out = out[:, : self.heads] - out[:, self.heads :]
        return self.to_out(out.transpose(0, 2, 1, 3).reshape(B, N, -1))


class GLUFeedForward(nn.Module):
    """`proj_out(a * act(g))` with `a, g = proj_in(x).split(2)`; act = SiLU or sin(pi x)."""

    def __init__(self, dim: int, inner: int, sinusoidal: bool):
        super().__init__()
        self.sinusoidal = sinusoidal
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def __call__(self, x: mx.array) -> mx.array:
        a, gate = mx.split(self.proj_in(x), 2, axis=-1)
        gate = mx.sin(SIN_PI * gate) if self.sinusoidal else nn.silu(gate)
        return self.proj_out(a * gate)


class SAMEBlock(nn.Module):
    """Pre-norm DyT block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, dim: int, head_dim: int, ff_inner: int, sinusoidal: bool):
        super().__init__()
        self.pre_norm = DyT(dim)
        self.attn = DifferentialAttention(dim, head_dim)
        self.ff_norm = DyT(dim)
        self.ff = GLUFeedForward(dim, ff_inner, sinusoidal)

    def __call__(self, x: mx.array, window: tuple[int, int] | None = None) -> mx.array:
        x = x + self.attn(self.pre_norm(x), window)
        return x + self.ff(self.ff_norm(x))


def sanitize_block(ckpt: Checkpoint, ref: str, ours: str) -> dict[str, mx.array]:
    """Reference TransformerBlock tensors under `ref` -> ours under `ours`; checks the RoPE buffer."""
    out: dict[str, mx.array] = {}
    for name in ("pre_norm", "ff_norm", "self_attn.q_norm", "self_attn.k_norm"):
        dst = name.replace("self_attn.", "attn.")
        for p in ("alpha", "gamma", "beta"):
            out[f"{ours}.{dst}.{p}"] = ckpt.take(f"{ref}.{name}.{p}")
    out[f"{ours}.attn.to_qkv.weight"] = ckpt.take(f"{ref}.self_attn.to_qkv.weight")
    out[f"{ours}.attn.to_out.weight"] = ckpt.take(f"{ref}.self_attn.to_out.weight")
    for src, dst in (("ff.ff.0.proj", "ff.proj_in"), ("ff.ff.2", "ff.proj_out")):
        out[f"{ours}.{dst}.weight"] = ckpt.take(f"{ref}.{src}.weight")
        out[f"{ours}.{dst}.bias"] = ckpt.take(f"{ref}.{src}.bias")
    return out


def rope_inv_freq(head_dim: int) -> mx.array:
    """The reference's persisted `rope.inv_freq` for this head size (recomputed here by mx.fast.rope)."""
    dims = head_dim // 2
    return 1.0 / (ROPE_BASE ** (mx.arange(0, dims, 2).astype(mx.float32) / dims))
