"""The layers of ACE-Step 1.5's DiT (`AceStepDiTLayer`, `AceStepAttention`, `Qwen3MLP`, `TimestepEmbedding`
of `acestep/models/*/modeling_acestep_v15_*.py`), in MLX.

- norms: Qwen3RMSNorm (weight only, eps from the config), also per head on q and k (self and cross);
- self-attention: Qwen3-style q/k/v/o projections (bias = `attention_bias`), GQA, RoPE (rotate-half, the whole
  head, theta from the config) after the q/k norm, bidirectional; a sliding layer sees |i - j| <= window
  tokens (the reference's SDPA mask); no key-padding mask anywhere (the reference resets it to None);
- cross-attention: q/k-normed, no RoPE, over the whole (padded) condition sequence; its K/V depend on the
  condition only and are computed once (`context_kv`), as the reference caches them across steps;
- adaLN: `scale_shift_table (1, 6, D) + timestep_proj` -> shift / scale / gate for self-attention and MLP,
  `x + f(norm(x) (1 + scale) + shift) * gate` (linear gate); the cross-attention residual is unmodulated.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np


class RMSNorm(nn.Module):
    """Qwen3RMSNorm: weight * x / sqrt(mean(x^2) + eps), computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class MLP(nn.Module):
    """Qwen3MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


def sinusoid_frequencies(dim: int, max_period: float = 10000.0) -> np.ndarray:
    """TimestepEmbedding.timestep_embedding's frequencies exp(-ln(max_period) * i / (dim // 2)) in float32.

    The argument is rounded as torch rounds it (a float32 product, then a float32 division); the exp is the
    correctly rounded one (torch's CPU exp is within 1 ulp of it)."""
    half = dim // 2
    arg = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    return np.exp(arg.astype(np.float64)).astype(np.float32)


class TimestepEmbedding(nn.Module):
    """cos || sin of (1000 t) * freqs -> Linear, SiLU, Linear (= temb); time_proj(SiLU(temb)) -> (B, 6, D)."""

    def __init__(self, in_channels: int, dim: int, scale: float = 1000.0):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.in_channels = in_channels
        self.scale = scale
        self._freqs = mx.array(sinusoid_frequencies(in_channels))  # underscored: a constant, not a weight

    def __call__(self, t: mx.array) -> tuple[mx.array, mx.array]:
        args = (t.astype(mx.float32) * self.scale)[:, None] * self._freqs[None]
        emb = mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)
        if self.in_channels % 2:
            emb = mx.concatenate([emb, mx.zeros_like(emb[:, :1])], axis=-1)
        dtype = self.linear_1.weight.dtype
        temb = self.linear_2(nn.silu(self.linear_1(emb.astype(dtype))))
        proj = self.time_proj(nn.silu(temb))
        return temb, proj.reshape(proj.shape[0], 6, -1)


def _heads(a: mx.array, head_dim: int) -> mx.array:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, _ = a.shape
    return a.reshape(b, n, -1, head_dim).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """AceStepAttention: self-attention with RoPE, or cross-attention over precomputed (k, v)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, eps: float, bias: bool):
        super().__init__()
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def _out(self, o: mx.array) -> mx.array:
        b, h, n, d = o.shape
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, n, h * d))

    def kv(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(k, v), each (B, kv_heads, N, D): k normed per head, before any RoPE."""
        return self.k_norm(_heads(self.k_proj(x), self.head_dim)), _heads(self.v_proj(x), self.head_dim)

    def self_attention(self, x: mx.array, rope_base: float, mask: mx.array | None) -> mx.array:
        q = self.q_norm(_heads(self.q_proj(x), self.head_dim))
        k, v = self.kv(x)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=rope_base, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=rope_base, scale=1.0, offset=0)
        return self._out(mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask))

    def cross_attention(self, x: mx.array, k: mx.array, v: mx.array) -> mx.array:
        q = self.q_norm(_heads(self.q_proj(x), self.head_dim))
        return self._out(mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale))


class DiTLayer(nn.Module):
    """AceStepDiTLayer: adaLN self-attention, plain cross-attention, adaLN MLP."""

    def __init__(
        self,
        dim: int,
        intermediate: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        eps: float,
        bias: bool,
        sliding: bool,
    ):
        super().__init__()
        self.sliding = sliding
        self.self_attn_norm = RMSNorm(dim, eps)
        self.self_attn = Attention(dim, heads, kv_heads, head_dim, eps, bias)
        self.cross_attn_norm = RMSNorm(dim, eps)
        self.cross_attn = Attention(dim, heads, kv_heads, head_dim, eps, bias)
        self.mlp_norm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, intermediate)
        self.scale_shift_table = mx.zeros((1, 6, dim))

    def __call__(
        self,
        x: mx.array,
        timestep_proj: mx.array,
        rope_base: float,
        mask: mx.array | None,
        cross_kv: tuple[mx.array, mx.array],
    ) -> mx.array:
        """x (B, N, D); timestep_proj (B, 6, D); mask: the sliding-window mask for a sliding layer."""
        mod = self.scale_shift_table.astype(timestep_proj.dtype) + timestep_proj
        shift, scale, gate, c_shift, c_scale, c_gate = mx.split(mod, 6, axis=1)
        h = (self.self_attn_norm(x) * (1 + scale) + shift).astype(x.dtype)
        x = (x + self.self_attn.self_attention(h, rope_base, mask if self.sliding else None) * gate).astype(
            x.dtype
        )
        x = x + self.cross_attn.cross_attention(self.cross_attn_norm(x), *cross_kv)
        h = (self.mlp_norm(x) * (1 + c_scale) + c_shift).astype(x.dtype)
        return (x + self.mlp(h) * c_gate).astype(x.dtype)
