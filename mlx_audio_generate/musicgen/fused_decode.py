"""The compiled parts of a MusicGen decode step on the GPU (see MusicgenDecoder._fused_layers in model.py).

A decode step feeds one position per row and is bound by host time on the GPU: these parts cut the Python-
built ops to one compiled call per layer around the eager cache write + SDPA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from .decode_kernels import ln_matvec, matvec_add


@functools.cache
def decode_parts(
    eps: float, heads: int, scale: float, cross: bool, masked: bool, kernels: bool
) -> tuple[Any, Any, Any]:
    """Compiled parts of a dense decoder's decode step (one position per row) around each layer's
    self-attention cache write + SDPA, which stay eager (their shapes grow with the cache): `pre` (LayerNorm
    + QKV of layer 0), `mid` (the rest of layer i, then LayerNorm + QKV of layer i + 1: one call per layer)
    and `post` (the rest of the last layer).

    Every layer and step has the same shapes, so each part is traced once and replayed from C++; the
    weights are explicit inputs (not captured), so all layers share the trace. With `kernels` (CUDA, fp16 /
    bf16) LayerNorm + product (+ GELU) and product + residual add are one fused kernel each
    (decode_kernels.py); without, the same maths as MLX ops (the eager `matvec` layer, bit for bit)."""

    def pre(x: mx.array, ln_w: mx.array, ln_b: mx.array, w_qkv: mx.array) -> tuple[mx.array, mx.array]:
        b = x.shape[0]
        qkv = ln_matvec(x, ln_w, ln_b, eps, w_qkv, fused=kernels)
        qkv = qkv.reshape(b, 1, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        q, kv = mx.split(qkv, [1], axis=0)
        return q.squeeze(0), kv

    def post(x: mx.array, o: mx.array, w_out: mx.array, *rest: mx.array) -> mx.array:
        b, _, d = x.shape
        x = matvec_add(o.transpose(0, 2, 1, 3).reshape(b, 1, d), w_out, x, fused=kernels)
        if cross:
            ln_w, ln_b, w_q, k, v, w_co, *rest = rest
            mask = rest.pop(0) if masked else None
            q = ln_matvec(x, ln_w, ln_b, eps, w_q, fused=kernels)
            q = q.reshape(b, 1, heads, -1).transpose(0, 2, 1, 3)
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
            x = matvec_add(o.transpose(0, 2, 1, 3).reshape(b, 1, d), w_co, x, fused=kernels)
        ln_w, ln_b, w1, w2 = rest
        h = ln_matvec(x, ln_w, ln_b, eps, w1, gelu=True, fused=kernels)
        return matvec_add(h, w2, x, fused=kernels)

    def mid(x: mx.array, o: mx.array, *args: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        *post_args, ln_w, ln_b, w_qkv = args
        x = post(x, o, *post_args)
        return (x, *pre(x, ln_w, ln_b, w_qkv))

    return mx.compile(pre), mx.compile(mid), mx.compile(post)


@dataclass
class FusedArgs:
    """The per-layer weight lists of the compiled decode parts, built once per generation (a plain object,
    not a list attribute, so nn.Module does not take its arrays for parameters)."""

    cross_kv: Any
    cross_mask: Any
    first_weight: Any
    dense: bool
    pre: list[list[mx.array]]
    post: list[list[mx.array]]
