"""The GPU fast path of a MusicGen decode step: its compiled parts and the per-layer weight lists they take.

A decode step feeds one position per row and is bound by host time on the GPU: these parts cut the Python-
built ops to one compiled call per layer around the eager cache write + SDPA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import layer_kernel
from .decode_kernels import ln_matvec, ln_qkv, matvec_add, supported


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
        if kernels and supported(x, w_qkv):
            # q (B, H, 1, Dh) and k/v (2, B, H, 1, Dh) straight from the kernel: no view ops, and q is
            # contiguous (SDPA copies a strided one)
            return ln_qkv(x, ln_w, ln_b, eps, w_qkv, heads)
        qkv = ln_matvec(x, ln_w, ln_b, eps, w_qkv, fused=False)
        qkv = qkv.reshape(b, 1, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        q, kv = mx.split(qkv, [1], axis=0)
        return q.squeeze(0), kv

    def rows_of(o: mx.array, w: mx.array) -> mx.array:
        """SDPA's (B, H, 1, Dh) output as the product's input: as it is for the kernel (same memory as
        (B, 1, D)), else as (B, 1, D) for the MLX ops."""
        if kernels and supported(o, w):
            return o
        return o.transpose(0, 2, 1, 3).reshape(o.shape[0], 1, -1)

    def post(x: mx.array, o: mx.array, w_out: mx.array, *rest: mx.array) -> mx.array:
        b, _, d = x.shape
        x = matvec_add(rows_of(o, w_out), w_out, x, fused=kernels)
        if cross:
            ln_w, ln_b, w_q, k, v, w_co, *rest = rest
            mask = rest.pop(0) if masked else None
            if kernels and supported(x, w_q):
                q = ln_matvec(x, ln_w, ln_b, eps, w_q, out_shape=(b, heads, 1, d // heads))
            else:
                q = ln_matvec(x, ln_w, ln_b, eps, w_q, fused=False)
                q = q.reshape(b, 1, heads, -1).transpose(0, 2, 1, 3)
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
            x = matvec_add(rows_of(o, w_co), w_co, x, fused=kernels)
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
    # layer_kernel.decoder_layer's weights per layer (from w_o on) and its consts per layer (eps, scale, the
    # layer's index); None: not dense, or a masked cross-attention (the kernel attends every position)
    layer: list[list[mx.array]] | None = None
    consts: list[mx.array] | None = None
    absorbed: bool = False  # the layer kernels' cross-attention absorbed (layer_kernel.absorb_cross)


def is_dense(layer: Any) -> bool:
    """No quantized linear in a decoder layer (the compiled decode parts read the dense weights)."""
    return not any(isinstance(m, nn.QuantizedLinear) for m in layer.modules())


def _pre_args(layer: Any) -> list[mx.array]:
    norm = layer.self_attn_layer_norm
    return [norm.weight, norm.bias, layer.self_attn.qkv_proj.weight]


def _post_args(layer: Any, cross_kv: tuple[mx.array, mx.array] | None, cross_mask: mx.array | None) -> list:
    args = [layer.self_attn.out_proj.weight]
    if cross_kv is not None:
        ca, cn = layer.encoder_attn, layer.encoder_attn_layer_norm
        args += [cn.weight, cn.bias, ca.q_proj.weight, *cross_kv, ca.out_proj.weight]
        if cross_mask is not None:
            args.append(cross_mask)
    fn = layer.final_layer_norm
    return [*args, fn.weight, fn.bias, layer.fc1.weight, layer.fc2.weight]


def fused_args(
    dec: Any, cross_kv: list[tuple[mx.array, mx.array]] | None, cross_mask: mx.array | None
) -> FusedArgs:
    """A decoder's per-layer weight lists for the compiled parts, kept on the decoder (`dec._fused`) and
    rebuilt when the conditioning or the weights change."""
    first = dec.layers[0].self_attn.qkv_proj.weight
    a = dec._fused
    if (
        a is None
        or a.cross_kv is not cross_kv
        or a.cross_mask is not cross_mask
        or a.first_weight is not first
    ):
        dense = all(is_dense(layer) for layer in dec.layers)
        pre = [_pre_args(layer) for layer in dec.layers] if dense else []
        post = (
            [_post_args(layer, None if cross_kv is None else cross_kv[i], cross_mask)
             for i, layer in enumerate(dec.layers)] if dense else []
        )  # fmt: skip
        layer, consts, absorbed = None, None, False
        if dense and cross_mask is None:
            if cross_kv is not None and layer_kernel.wanted(dec.layer_kernel):
                cfg, (k, _) = dec.config, cross_kv[0]
                (rows, heads, text), d = k.shape[:3], cfg.hidden_size
                absorbed = layer_kernel.supported(
                    mx.zeros((rows, 1, d), k.dtype), d, cfg.ffn_dim, heads
                ) and layer_kernel.absorbs(rows, text, heads, cfg.ffn_dim, k.dtype)
            layer = _layer_kernel_args(dec.layers, cross_kv, absorbed)
            if absorbed:  # kq / vo now, once: not in the first decode step's graph
                mx.eval([row[layer_kernel.WEIGHT[n]] for row in layer for n in ("w_cq", "w_co")])
            sa, norm = dec.layers[0].self_attn, dec.layers[0].self_attn_layer_norm
            consts = layer_kernel.layer_consts(norm.eps, sa.scale, len(dec.layers))
        a = dec._fused = FusedArgs(cross_kv, cross_mask, first, dense, pre, post, layer, consts, absorbed)
    return a


def _layer_kernel_args(
    layers: Any, cross_kv: list[tuple[mx.array, mx.array]] | None, absorbed: bool
) -> list[list[mx.array]]:
    """Per layer, layer_kernel.INPUTS from w_o on: the cross-attention's (any arrays without one: the kernel
    does not read them; `absorbed`: as `layer_kernel.absorbed_weights` makes them) and the next layer's
    LayerNorm + QKV (the last layer's: any arrays)."""
    out = []
    for i, layer in enumerate(layers):
        w_o = layer.self_attn.out_proj.weight
        if cross_kv is not None:
            ca, cn = layer.encoder_attn, layer.encoder_attn_layer_norm
            cross = [cn.weight, cn.bias, ca.q_proj.weight, *cross_kv[i], ca.out_proj.weight]
        else:
            cross = [w_o] * 6
        fn = layer.final_layer_norm
        if i + 1 < len(layers):
            nxt = layers[i + 1]
            nxt_args = [
                nxt.self_attn_layer_norm.weight,
                nxt.self_attn_layer_norm.bias,
                nxt.self_attn.qkv_proj.weight,
            ]
        else:
            nxt_args = [w_o] * 3
        row = [w_o, *cross, fn.weight, fn.bias, layer.fc1.weight, layer.fc2.weight, *nxt_args]
        out.append(layer_kernel.absorbed_weights(row) if absorbed else row)
    return out


def use_layer_kernel(dec: Any, x: mx.array, args: FusedArgs) -> bool:
    """Whether this decode step runs each layer as one CUDA kernel (layer_kernel.py)."""
    if args.layer is None or not layer_kernel.wanted(dec.layer_kernel):
        return False
    cfg = dec.config
    return layer_kernel.supported(x, cfg.hidden_size, cfg.ffn_dim, cfg.num_attention_heads)


def kernel_layers(dec: Any, x: mx.array, args: FusedArgs, cache: list, offset: int) -> mx.array:
    """All layers of a decode step as one CUDA kernel each (check `use_layer_kernel` first). Layer 0's
    LayerNorm + QKV is the fused kernel of decode_kernels.py and its k / v one cache write; every layer's
    kernel writes the next layer's k / v into that layer's cache itself (in place: one launch per layer)."""
    norm = dec.layers[0].self_attn_layer_norm
    q, kv = ln_qkv(
        x,
        norm.weight,
        norm.bias,
        norm.eps,
        dec.layers[0].self_attn.qkv_proj.weight,
        dec.config.num_attention_heads,
    )
    cross_len = 0 if args.cross_kv is None else args.cross_kv[0][0].shape[2]
    length = layer_kernel.step_length(offset + 1, len(dec.layers), cache[0].max_len, cross_len)
    n = len(dec.layers)
    buf = cache[0].write(kv, offset)
    for i in range(n):
        nxt = i + 1 < n
        x, q, written = layer_kernel.decoder_layer(
            x, q, buf, cache[i + 1].state[0] if nxt else buf, length, args.consts[i], args.layer[i],
            cross_len, nxt, args.absorbed,
        )  # fmt: skip
        if nxt:
            cache[i + 1].state[0] = buf = written
    return x


def fused_layers(dec: Any, x: mx.array, args: FusedArgs, cache: list, offset: int) -> mx.array:
    """All layers of a decode step (one position per row) through `decode_parts`: per layer one compiled
    call plus the eager cache write + SDPA (the fewest Python-built ops: a GPU decode step is bound by host
    time). Same ops as the decoder's eager layers with `matvec` (bit for bit without the fused kernels)."""
    sa, norm = dec.layers[0].self_attn, dec.layers[0].self_attn_layer_norm
    cross, masked = args.cross_kv is not None, args.cross_mask is not None
    kernels = dec.use_kernels()
    pre, mid, post = decode_parts(norm.eps, sa.heads, sa.scale, cross, masked, kernels)
    q, kv = pre(x, *args.pre[0])
    n = len(dec.layers)
    for i in range(n):
        k, v = cache[i].update(kv, offset)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=sa.scale)
        if i + 1 < n:
            x, q, kv = mid(x, o, *args.post[i], *args.pre[i + 1])
        else:
            x = post(x, o, *args.post[i])
    return x
