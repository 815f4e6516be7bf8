"""The self-attention of a MusicGen decode step as one CUDA kernel (MLX CUDA backend, fp16 / bf16), opt-in
(`model.ATTENTION_KERNEL`, with the fused kernels of decode_kernels.py).

`decode_attention` writes the step's key / value into the KV cache in place and attends over the filled
prefix: one kernel instead of the cache's slice update + SDPA (+ SDPA's second pass past 1024 keys) and the
view primitives around them. `reference_decode_attention` is the same maths as MLX ops (KVCache.update +
SDPA): the fallback and the tests' yardstick.
"""

from __future__ import annotations

import functools
from typing import Any

import mlx.core as mx

from .decode_kernels import _HEADER

# Self-attention of one decode step over the KV cache, with this step's key / value written into the cache
# in place (MLX sees the cache as an input only: the write is a side effect, see decode_attention).
# One block per (batch row, head): scores for keys 0..t in shared memory, softmax in fp32, then o.
_DECODE_ATTN = """
  constexpr int THREADS = 128;
  constexpr int WARPS = THREADS / 32;
  constexpr int G = THREADS / DH;  // key groups of the value pass
  __shared__ float qs[DH];
  __shared__ float sc[MAXL];
  __shared__ float red[WARPS];
  __shared__ float part[G][DH];
  const int bh = blockIdx.x;  // b * H + h
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int L = cache_shape[3];
  const int t = off[0];
  T* kc = const_cast<T*>(cache) + static_cast<size_t>(bh) * L * DH;
  T* vc = kc + static_cast<size_t>(NBH) * L * DH;
  const T* kn = kv + bh * DH;
  const T* vn = kv + NBH * DH + bh * DH;
  if (tid < DH) {
    kc[static_cast<size_t>(t) * DH + tid] = kn[tid];
    vc[static_cast<size_t>(t) * DH + tid] = vn[tid];
    qs[tid] = static_cast<float>(q[bh * DH + tid]) * scale[0];
  }
  __syncthreads();
  float m = -1e30f;
  for (int j = tid; j <= t; j += THREADS) {
    const T* kr = j == t ? kn : kc + static_cast<size_t>(j) * DH;
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < DH; c += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(kr + c);
      const T* k8 = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) s += qs[c + e] * static_cast<float>(k8[e]);
    }
    sc[j] = s;
    m = fmaxf(m, s);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) red[warp] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < WARPS; ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  float l = 0.f;
  for (int j = tid; j <= t; j += THREADS) {
    const float p = __expf(sc[j] - m);
    sc[j] = p;
    l += p;
  }
  l = warp_sum(l);
  if (lane == 0) red[warp] = l;
  __syncthreads();
  l = 0.f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) l += red[w];
  const int d = tid % DH, g = tid / DH;
  float acc = 0.f;
  for (int j = g; j <= t; j += G) {
    const T* vr = j == t ? vn : vc + static_cast<size_t>(j) * DH;
    acc += sc[j] * static_cast<float>(vr[d]);
  }
  part[g][d] = acc;
  __syncthreads();
  if (tid < DH) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < G; ++k) s += part[k][tid];
    o[bh * DH + tid] = T(s / l);
  }
"""

ATTN_MAX_LEN = 8192  # cache lengths the attention kernel takes (its scores live in shared memory)


@functools.cache
def _attn_kernel() -> object:
    return mx.fast.cuda_kernel(
        name="mag_decode_attn",
        input_names=["q", "kv", "cache", "off", "scale"],
        output_names=["o"],
        source=_DECODE_ATTN,
        header=_HEADER,
        ensure_row_contiguous=False,  # never copy the cache: the kernel writes into it
    )


def attention_supported(q: mx.array, cache: mx.array) -> bool:
    """Whether decode_attention takes this step: q (B, H, 1, Dh) from ln_qkv, a contiguous cache
    (2, B, H, L, Dh) as KVCache keeps it, Dh in 32 / 64 / 128, L <= ATTN_MAX_LEN."""
    return (
        mx.default_device() == mx.gpu
        and mx.cuda.is_available()
        and q.dtype in (mx.float16, mx.bfloat16)
        and cache.dtype == q.dtype
        and q.ndim == 4
        and q.shape[2] == 1
        and cache.ndim == 5
        and cache.shape[0] == 2
        and tuple(cache.shape[1:3]) == tuple(q.shape[:2])
        and cache.shape[4] == q.shape[3]
        and q.shape[3] in (32, 64, 128)
        and cache.shape[3] <= ATTN_MAX_LEN
    )


def decode_attention(
    q: mx.array, kv: mx.array, cache: mx.array, offset: mx.array, scale: float | mx.array
) -> mx.array:
    """SDPA of one decode step: q (B, H, 1, Dh) over keys / values 0..offset of `cache` (2, B, H, L, Dh),
    whose position `offset` gets kv (2, B, H, 1, Dh) written first, IN PLACE: one kernel instead of the
    cache's slice update + SDPA (+ its second pass past 1024 keys). The cache array must be the KVCache's
    own, evaluated or not, contiguous, and read only by later steps' kernels (MLX does not know it changed).
    offset: int32 (1,) array, scale: float or float32 (1,) array (one each per step, shared by the layers: no
    recompile per step). (kernel only)"""
    b, h, _, dh = q.shape
    if not isinstance(scale, mx.array):
        scale = mx.array([scale], dtype=mx.float32)
    (o,) = _attn_kernel()(
        inputs=[q, kv, cache, offset, scale],
        template=[("T", q.dtype), ("NBH", b * h), ("DH", dh), ("MAXL", ATTN_MAX_LEN)],
        grid=(b * h * 128, 1, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[q.shape],
        output_dtypes=[q.dtype],
    )
    return o


def reference_decode_attention(q: mx.array, kv: mx.array, cache: Any, offset: int, scale: float) -> mx.array:
    """The ops decode_attention replaces: the KVCache write, then SDPA over the filled prefix."""
    k, v = cache.update(kv, offset)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
