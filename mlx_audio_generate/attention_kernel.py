"""Attention over a short key sequence as one CUDA kernel (MLX CUDA backend).

Why: a DiT call at batch 1 is bound by host time per kernel, not by the GPU (docs/benchmarks.md). MLX-CUDA
runs `mx.fast.scaled_dot_product_attention` through cuDNN, which it records by CUDA stream capture into a
child graph: on the H200 that took 13-26 µs of host time a call at Stable Audio's shapes, whatever its size
(bench/sdpa_probe.py). An `mx.fast.cuda_kernel` is one plain graph node, cheaper to record.

`attend(q, k, v, scale, mask)`: softmax(scale * q k^T + mask) v for q (B, H, N, D) and k / v (B, Hk, S, D),
Hk dividing H (query head h reads KV head h // (H / Hk), repeat_interleave's grouping), any strides (the
split views of a fused QKV product are read in place), an optional additive mask broadcastable to
(B, H, N, S). The result is **heads-last**, (B, N, H, D): the layout the output projection reads, so the
transpose after attention is a view. fp16 / bf16 on tensor cores, scores, softmax and sums accumulated in
fp32 (attention_kernel_cuda.py says how; float32 takes MLX's attention). `reference` is the same maths
as MLX ops (the CPU path and the tests' yardstick); `supported` says where the kernel runs.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from . import attention_kernel_cuda as src
from .devices import float_bits, on_cuda

MAX_KEYS = 4096
# B*H*N*S*D multiply-adds per product: past this cuDNN's kernels are faster on the GPU (bench/sdpa_probe.py:
# Stable Audio small's self-attention is 6.8e7, 1.0's CFG pair 3.2e9).
MAX_WORK = 1 << 28
WARPS = 4  # warps per block (bench/sdpa_probe.py --sweep)
KEYS = 32  # keys per staged chunk


def kernel_source(masked: bool) -> str:
    return src.SOURCE.replace("ADD_MASK", src.ADD_MASK if masked else "")


@functools.cache
def _kernel(masked: bool) -> object:
    names = ["q", "k", "v"] + (["mask"] if masked else [])
    return mx.fast.cuda_kernel(
        name="mag_attention_masked" if masked else "mag_attention",
        input_names=names,
        output_names=["out"],
        source=kernel_source(masked),
        header=src.HEADER,
        ensure_row_contiguous=False,
    )


def _additive(mask: mx.array, shape: tuple[int, ...]) -> bool:
    """Whether `mask` is an additive mask (a boolean one selects: MLX's attention takes that) broadcastable
    to `shape`."""
    if mask.dtype not in (mx.float16, mx.bfloat16, mx.float32) or mask.ndim > 4:
        return False
    ms = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    return all(m in (1, s) for m, s in zip(ms, shape, strict=True))


def supported(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None, force: bool = False
) -> bool:
    """Whether the kernel runs this attention: on CUDA, for what `takes` accepts."""
    return on_cuda() and takes(q, k, v, mask, force)


def takes(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None, force: bool = False) -> bool:
    """Whether the kernel computes attention of these shapes and dtypes (`force`: past MAX_WORK too, for
    the probe)."""
    if q.ndim != 4 or k.ndim != 4 or tuple(v.shape) != tuple(k.shape):
        return False
    b, h, n, d = q.shape
    _, hk, s, dk = k.shape
    return (
        q.dtype in (mx.float16, mx.bfloat16)
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and k.shape[0] == b
        and dk == d
        and d in (64, 128)
        and 0 < hk <= h
        and h % hk == 0
        and 0 < s <= MAX_KEYS
        and n > 0
        and (force or b * h * n * s * d <= MAX_WORK)
        and (mask is None or _additive(mask, (b, h, n, s)))
    )


def reference(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """MLX's fused attention, made heads-last: (B, N, H, D)."""
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask).transpose(0, 2, 1, 3)


def attend(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    scale: float,
    mask: mx.array | None = None,
    force: bool = False,
) -> mx.array:
    """softmax(scale * q k^T + mask) v as (B, N, H, D): the kernel where `supported`, else `reference`."""
    if not supported(q, k, v, mask, force):
        return reference(q, k, v, scale, mask)
    b, h, n, d = q.shape
    hk, s = k.shape[1], k.shape[2]
    inputs = [q, k, v]
    if mask is not None:
        inputs.append(mx.broadcast_to(mask, (b, h, n, s)))  # a view: broadcast dims read with stride 0
    blocks = -(-n // (16 * WARPS))
    (out,) = _kernel(mask is not None)(
        inputs=inputs,
        template=[
            ("T", q.dtype),
            ("D", d),
            ("H", h),
            ("HK", hk),
            ("N", n),
            ("S", s),
            ("WARPS", WARPS),
            ("KEYS", KEYS),
            ("SCALE_BITS", float_bits(scale)),
        ],
        grid=(blocks * WARPS * 32, b * h, 1),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[(b, n, h, d)],
        output_dtypes=[q.dtype],
    )
    return out
