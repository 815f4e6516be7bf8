"""The transformer block of Stable Audio 3's DiT (`stable_audio_3/models/transformer.py` TransformerBlock with
adaLN, `Attention` plain or differential, SwiGLU `FeedForward`), in MLX.

- norms: RMSNorm (`gamma` only); the block norms run in float32 when `force_fp32` (the released configs), the
  per-head q/k norms (eps 1e-6) in the activations' dtype, as the reference;
- attention: fused projections in the reference's layouts (self `to_qkv` = [q, k, v] or, differential,
  [q, k, v, q2, k2]; cross `to_q` = [q] or [q, q2], `to_kv` = [k, v] or [k, k2, v]); differential attention is
  exactly `SDPA(q, k, v) - SDPA(q2, k2, v)` (no lambda, no group norm); rotary embedding on self-attention
  only, on the first `rotary_dim` dims of each head (rotate-half layout), in float32 after the q/k norm;
- a padding mask (True = valid) zeroes the padded values of self-attention (the padded keys stay in the
  softmax): the reference's behaviour without flash-attn varlen, i.e. on CPU / MPS (its README §2.4).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .. import gemm_kernel
from ..diffusion.dit_parts import MLP, partial_rope
from ..diffusion.dit_parts import GLUFeedForward as FeedForward


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, force_fp32: bool = False):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps
        self.force_fp32 = force_fp32

    def __call__(self, x: mx.array) -> mx.array:
        if not self.force_fp32:
            return mx.fast.rms_norm(x, self.weight, self.eps)
        y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
        return y.astype(x.dtype)


def _heads(a: mx.array, heads: int) -> mx.array:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, e = a.shape
    return a.reshape(b, n, heads, e // heads).transpose(0, 2, 1, 3)


def _merge(o: mx.array) -> mx.array:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, n, h * d)


class Attention(nn.Module):
    """Self-attention (`qkv`) or cross-attention (`q` + `kv`), plain or differential."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        differential: bool,
        qk_norm_eps: float,
        context_dim: int | None = None,
    ):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.differential = differential
        self.scale = head_dim**-0.5
        n = 2 if differential else 1  # query/key copies
        if context_dim is None:
            self.qkv = nn.Linear(dim, (2 * n + 1) * dim, bias=False)
        else:
            self.kv_heads = context_dim // head_dim
            self.q = nn.Linear(dim, n * dim, bias=False)
            self.kv = nn.Linear(context_dim, (n + 1) * context_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps)
        self.k_norm = RMSNorm(head_dim, qk_norm_eps)

    def _attend(self, qs: list[mx.array], ks: list[mx.array], v: mx.array) -> mx.array:
        o = mx.fast.scaled_dot_product_attention(qs[0], ks[0], v, scale=self.scale)
        if self.differential:
            o = o - mx.fast.scaled_dot_product_attention(qs[1], ks[1], v, scale=self.scale)
        return o

    def __call__(
        self, x: mx.array, rope_periods: mx.array, rotary_dim: int, padding_mask: mx.array | None
    ) -> mx.array:
        """Self-attention of x (B, N, E) with rotary positions 0..N-1; padding_mask (B, N) or None."""
        qkv = gemm_kernel.linear(self.qkv, x)  # CUDA, few rows: our kernel (gemm_kernel)
        parts = [_heads(a, self.heads) for a in mx.split(qkv, 5 if self.differential else 3, axis=-1)]
        qs, ks, v = [parts[0]], [parts[1]], parts[2]
        if self.differential:
            qs.append(parts[3])
            ks.append(parts[4])

        def rope(a: mx.array) -> mx.array:
            # the reference rotates in float32, then casts to v's dtype
            return partial_rope(a.astype(mx.float32), rotary_dim, rope_periods).astype(v.dtype)

        qs = [rope(self.q_norm(q)) for q in qs]
        ks = [rope(self.k_norm(k)) for k in ks]
        if padding_mask is not None:
            v = v * padding_mask[:, None, :, None].astype(v.dtype)
        return gemm_kernel.linear(self.out, _merge(self._attend(qs, ks, v)))

    def context_kv(self, context: mx.array) -> tuple[mx.array, ...]:
        """Cross-attention keys and value of a context (B, S, E_ctx): (k, v) or (k, k2, v), each
        (B, kv_heads, S, D), q/k-normed: computed once per generation."""
        parts = [
            _heads(a, self.kv_heads) for a in mx.split(self.kv(context), 3 if self.differential else 2, -1)
        ]
        return (*[self.k_norm(k) for k in parts[:-1]], parts[-1])

    def cross(self, x: mx.array, kv: tuple[mx.array, ...], residual: mx.array) -> mx.array:
        """`residual + cross_attn(x, context)` given `context_kv(context)`; kv heads may be fewer than the
        query heads (SDPA's grouping = the reference's repeat_interleave)."""
        q = gemm_kernel.linear(self.q, x)
        qs = [self.q_norm(_heads(a, self.heads)) for a in mx.split(q, 2 if self.differential else 1, -1)]
        o = self._attend(qs, list(kv[:-1]), kv[-1])
        return gemm_kernel.linear(self.out, _merge(o), residual)


class TransformerBlock(nn.Module):
    """adaLN block: self-attention and feed-forward modulated by (scale, shift, gate) from the global
    conditioning, gates as `sigmoid(1 - gate)`; unmodulated cross-attention; the local (inpainting)
    embedding added before the feed-forward, over the latent tokens only (zero over the memory tokens)."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        ff_inner: int,
        differential: bool,
        norm_eps: float,
        force_fp32: bool,
        qk_norm_eps: float,
        context_dim: int,
        local_dim: int,
    ):
        super().__init__()
        self.pre_norm = RMSNorm(dim, norm_eps, force_fp32)
        self.self_attn = Attention(dim, head_dim, differential, qk_norm_eps)
        self.cross_norm = RMSNorm(dim, norm_eps, force_fp32)
        self.cross_attn = Attention(dim, head_dim, differential, qk_norm_eps, context_dim=context_dim)
        self.ff_norm = RMSNorm(dim, norm_eps, force_fp32)
        self.ff = FeedForward(dim, ff_inner)
        self.scale_shift_gate = mx.zeros((6 * dim,))
        if local_dim:
            self.local_embed = MLP(local_dim, dim, dim, bias=True)

    def local_constant(self) -> mx.array:
        """`local_embed` of an all-zero local condition (what the reference feeds without inpainting): one
        (E,) vector, `fc1(0)` being exactly its bias."""
        # as a one-row matrix: MLX-CUDA's quantized matmul fails on a 1-D input ("SmallVector out of range")
        return self.local_embed.fc2(nn.silu(self.local_embed.fc1.bias)[None])[0]

    def __call__(
        self,
        x: mx.array,
        global_cond: mx.array,
        kv: tuple[mx.array, ...],
        local: mx.array,
        memory: int,
        rope_periods: mx.array,
        rotary_dim: int,
        padding_mask: mx.array | None,
        cross_rows: int | None = None,
        twice: bool = False,
    ) -> mx.array:
        """x (B, M + T, E); global_cond (B, 6E) (global_cond_embedder's output); local: (B, T, C_local) local
        condition, or (E,) = `local_constant()`, or None without local conditioning. `cross_rows`: only x's
        first rows take the cross-attention (a CFG pair's null half adds exactly 0: SA3Conditioning).
        `twice`: x is the first half of a CFG pair whose halves are equal (the first block's input), the
        other arguments the whole pair's: the self-attention runs on x once, its output taken twice."""
        mods = (self.scale_shift_gate + global_cond)[:, None, :]
        scale_sa, shift_sa, gate_sa, scale_ff, shift_ff, gate_ff = mx.split(mods, 6, axis=-1)
        pm = padding_mask
        if twice:
            b = x.shape[0]
            scale_sa, shift_sa, gate_sa = scale_sa[:b], shift_sa[:b], gate_sa[:b]
            pm = None if pm is None else pm[:b]
        h = self.pre_norm(x) * (1 + scale_sa) + shift_sa
        h = self.self_attn(h, rope_periods, rotary_dim, pm)
        x = h * mx.sigmoid(1 - gate_sa) + x
        if twice:
            x = mx.concatenate([x, x], axis=0)
        if cross_rows is None or cross_rows >= x.shape[0]:
            x = self.cross_attn.cross(self.cross_norm(x), kv, residual=x)
        else:
            xc, kc = x[:cross_rows], tuple(a[:cross_rows] for a in kv)
            xc = self.cross_attn.cross(self.cross_norm(xc), kc, residual=xc)
            x = mx.concatenate([xc, x[cross_rows:]], axis=0)
        if local is not None:
            emb = local if local.ndim == 1 else self.local_embed(local)
            x = mx.concatenate([x[:, :memory], x[:, memory:] + emb], axis=1)
        h = self.ff_norm(x) * (1 + scale_ff) + shift_ff
        return self.ff(h) * mx.sigmoid(1 - gate_ff) + x
