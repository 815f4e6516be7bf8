"""The Stable Audio DiT's transformer blocks (stable-audio-tools' ContinuousTransformer TransformerBlock):
self-attention with partial rotary embedding and optional QK norm, cross-attention to the conditioning tokens
(possibly fewer KV heads), a GLU feed-forward; pre-norm, the attentions' residual adds folded into their
output GEMMs. The DiT around them (embeddings, conditioning, CFG) is dit.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from .. import attention_kernel, gemm_kernel, qk_kernel, row_kernels
from ..diffusion.dit_parts import GLUFeedForward, partial_rope
from ..errors import UserError

if TYPE_CHECKING:
    from .dit import DiTConfig

Stream = mx.array | tuple[mx.array, mx.array]  # a block's residual stream: rows in one array or in two


class _LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.bias = mx.zeros((dim,))
        self.eps = eps

    def __call__(self, x: mx.array, tail: mx.array | None = None) -> mx.array:
        """The norm of x's rows then `tail`'s (CUDA: ours, reading both where they are; row_kernels)."""
        return row_kernels.layer_norm(x, self.weight, self.bias, self.eps, tail)

    def add(self, x: mx.array, r: mx.array, tail: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """([x; tail] + r, the norm of it): on CUDA one kernel (row_kernels.add_layer_norm)."""
        return row_kernels.add_layer_norm(x, r, self.weight, self.bias, self.eps, tail)


def _attend(q: mx.array, k: mx.array, v: mx.array, scale: float, impl: str) -> mx.array:
    """softmax(q k^T * scale) v over (B, H, N, D) queries and (B, Hk, S, D) keys/values, Hk dividing H
    (query head h reads KV head h // (H / Hk), repeat_interleave's grouping), returned heads-last
    (B, N, H, D): the output projection's layout (a view for "sdpa" / "matmul", the kernel writes it).

    impl "sdpa": MLX's fused kernel. "short": attention_kernel's one-launch kernel where it takes the shape
    (short key sequences on CUDA; MLX's fused kernel elsewhere). "matmul": two matmuls around a precise
    (fp32) softmax; with KV groups the G = H / Hk query heads of a group are stacked along the tokens so K/V
    are read once per group. The CPU's SDPA is this same decomposition."""
    if impl == "short":
        return attention_kernel.attend(q, k, v, scale)
    if impl == "sdpa":
        return attention_kernel.reference(q, k, v, scale)
    b, h, n, d = q.shape
    hk = k.shape[1]
    q = (q * scale).reshape(b, hk, (h // hk) * n, d)
    p = mx.softmax(q @ k.swapaxes(-1, -2), axis=-1, precise=True)
    return (p @ v).reshape(b, h, n, d).transpose(0, 2, 1, 3)


def _l2_normalize(x: mx.array) -> mx.array:
    # F.normalize: x / max(||x||, 1e-12)
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Attention(nn.Module):
    """Self-attention (fused `qkv`) or cross-attention (`q` + fused `kv`, possibly fewer KV heads)."""

    def __init__(self, dim: int, head_dim: int, qk_norm: str, context_dim: int | None = None):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.qk_norm = qk_norm
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        else:
            self.kv_heads = context_dim // head_dim
            if self.kv_heads == 0 or self.num_heads % self.kv_heads:
                raise UserError(
                    f"cross-attention context width {context_dim} does not fit head_dim {head_dim}"
                )
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(context_dim, 2 * context_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        if qk_norm == "ln":
            self.q_norm = _LayerNorm(head_dim, 1e-6)
            self.k_norm = _LayerNorm(head_dim, 1e-6)

    def _norm_q(self, q: mx.array) -> mx.array:
        return self.q_norm(q) if self.qk_norm == "ln" else _l2_normalize(q) if self.qk_norm == "l2" else q

    def _norm_k(self, k: mx.array) -> mx.array:
        return self.k_norm(k) if self.qk_norm == "ln" else _l2_normalize(k) if self.qk_norm == "l2" else k

    def context_kv(self, context: mx.array) -> tuple[mx.array, mx.array]:
        """Cross-attention keys/values (B, kv_heads, S, head_dim) of a context: reusable across steps."""
        b, s, _ = context.shape
        k, v = mx.split(self.kv(context).reshape(b, s, 2, self.kv_heads, self.head_dim), 2, axis=2)
        return self._norm_k(k[:, :, 0].transpose(0, 2, 1, 3)), v[:, :, 0].transpose(0, 2, 1, 3)

    def _out(self, o: mx.array, residual: mx.array | None) -> mx.array:
        """Output projection of heads-last (B, N, H, D) heads; `residual + out(o)` as one GEMM when given
        (gemm_kernel: ours for few rows on CUDA, MLX's addmm elsewhere, the sum for a quantized `out`)."""
        b, n, _, _ = o.shape
        return gemm_kernel.linear(self.out, o.reshape(b, n, -1), residual)

    def __call__(
        self,
        x: mx.array,
        rope_freqs: mx.array,
        rotary_dim: int,
        impl: str = "sdpa",
        residual: mx.array | None = None,
    ) -> mx.array:
        qkv = gemm_kernel.linear(self.qkv, x)
        norm = None
        if self.qk_norm == "ln":
            qn, kn = self.q_norm, self.k_norm
            norm = (qn.weight, qn.bias, kn.weight, kn.bias, qn.eps)
        if self.qk_norm != "l2" and qk_kernel.supported(qkv, self.num_heads, rotary_dim, norm):
            # CUDA: norm + rotary in one kernel, q / k heads-last underneath (see qk_kernel)
            q, k = qk_kernel.qk(qkv, self.num_heads, rotary_dim, rope_freqs, norm)
            v = qk_kernel.values(qkv, self.num_heads)
        else:
            q, k, v = qk_kernel.split(qkv, self.num_heads)
            q, k = self._norm_q(q), self._norm_k(k)
            # The reference rotates in float32 (half-split layout = MLX's non-traditional rope), casts back.
            q, k = partial_rope(q, rotary_dim, rope_freqs), partial_rope(k, rotary_dim, rope_freqs)
        o = _attend(q.astype(v.dtype), k.astype(v.dtype), v, self.scale, impl)
        return self._out(o, residual)

    def cross(
        self,
        x: mx.array,
        k: mx.array,
        v: mx.array,
        impl: str = "sdpa",
        residual: mx.array | None = None,
    ) -> mx.array:
        b, n, _ = x.shape
        q = gemm_kernel.linear(self.q, x)
        if self.qk_norm == "ln" and qk_kernel.q_norm_supported(
            q, self.num_heads, self.q_norm.weight, self.q_norm.bias
        ):
            # CUDA: the heads' LayerNorm in one kernel, q heads-last underneath (see qk_kernel)
            q = qk_kernel.q_norm(q, self.num_heads, self.q_norm.weight, self.q_norm.bias, self.q_norm.eps)
        else:
            q = self._norm_q(q.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3))
        # Query head h reads KV head h // (heads / kv_heads): repeat_interleave's grouping.
        o = _attend(q, k, v, self.scale, impl)
        return self._out(o, residual)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.pre_norm = _LayerNorm(d, 1e-5)
        self.self_attn = Attention(d, cfg.head_dim, cfg.qk_norm)
        self.has_cross = cfg.cond_token_dim > 0
        if self.has_cross:
            self.cross_norm = _LayerNorm(d, 1e-5)
            self.cross_attn = Attention(d, cfg.head_dim, cfg.qk_norm, context_dim=cfg.cond_embed_dim)
        self.ff_norm = _LayerNorm(d, 1e-5)
        self.ff = GLUFeedForward(d, int(d * cfg.ff_mult))

    def __call__(
        self,
        x: mx.array,
        kv: tuple[mx.array, mx.array] | None,
        rope_freqs: mx.array,
        rotary_dim: int,
        impl: str = "sdpa",
    ) -> mx.array:
        x, f = self.unsummed(x, None, kv, rope_freqs, rotary_dim, impl)
        return x + f

    def unsummed(
        self,
        x: Stream,
        pending: mx.array | None,
        kv: tuple[mx.array, mx.array] | None,
        rope_freqs: mx.array,
        rotary_dim: int,
        impl: str = "sdpa",
        cross_rows: int | None = None,
        twice: bool = False,
    ) -> tuple[Stream, mx.array]:
        """The block on x + pending (pending: the previous block's feed-forward output, or None), returning
        (x', f) whose sum is its output. The feed-forward's residual add is left to the next block's pre-norm
        so that the two are one kernel on CUDA (the add's own kernel was 6.6 µs a block at 1.0's shape); the
        sums are the same ops in the same order as `x + ff(...)` followed by the norm.

        `cross_rows`: only the stream's first rows take the cross-attention. A CFG pair's unconditional
        half attends to null context (zero tokens: with the context projection, `kv` and `out` all without
        bias its values are zero, so its cross-attention adds exactly 0), so that half is skipped: half the
        cross-attention's work. The stream is then (head, tail), the rows in two arrays, which the norms
        read where they are (`_LayerNorm`).

        `twice`: x is one half of a CFG pair whose halves are equal (the first block's input: both halves
        see the same x, t and global conditioning), so the self-attention runs on it once and its output is
        taken twice; the halves first differ at the cross-attention."""
        head, tail = x if isinstance(x, tuple) else (x, None)
        if twice and (pending is not None or tail is not None):
            raise ValueError("twice takes a block input in one array, with nothing pending")
        if pending is None:
            x = head if tail is None else mx.concatenate([head, tail], axis=0)
            h = self.pre_norm(x)
        else:
            x, h = self.pre_norm.add(head, pending, tail)
        # The residual adds of both attentions ride in their output GEMMs (addmm: fewer kernels per block).
        x = self.self_attn(h, rope_freqs, rotary_dim, impl, residual=x)
        if twice:
            x = mx.concatenate([x, x], axis=0)
        if kv is None:
            return x, self.ff(self.ff_norm(x))
        if cross_rows is None or cross_rows >= x.shape[0]:
            x = self.cross_attn.cross(self.cross_norm(x), *kv, impl=impl, residual=x)
            return x, self.ff(self.ff_norm(x))
        xc, rest = x[:cross_rows], x[cross_rows:]
        k, v = kv[0][:cross_rows], kv[1][:cross_rows]
        xc = self.cross_attn.cross(self.cross_norm(xc), k, v, impl=impl, residual=xc)
        return (xc, rest), self.ff(self.ff_norm(xc, rest))
