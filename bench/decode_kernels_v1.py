"""The fused decode kernels as they were before round 3 (issue 19), kept only as the baseline of
bench/kernel_probe.py (the library uses mlx_audio_generate/musicgen/decode_kernels.py)."""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn

_HEADER = """
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[b] = W row `wr` . x row b (x: B rows of D, global or shared memory), summed over the warp: each lane
// reads VEC = 8 elements of a 2-byte T per 16-byte load; compile-time trip counts so the loads unroll.
template <typename T, int B, int D>
__device__ __forceinline__ void warp_row_dots(const T* wr, const T* x, int lane, float* acc) {
  constexpr int VEC = 8;
  constexpr int ITERS = (D + 32 * VEC - 1) / (32 * VEC);
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.f;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int i = (it * 32 + lane) * VEC;
    if (i < D) {
      const uint4 wraw = *reinterpret_cast<const uint4*>(wr + i);
      const T* wv = reinterpret_cast<const T*>(&wraw);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const uint4 xraw = *reinterpret_cast<const uint4*>(x + b * D + i);
        const T* xv = reinterpret_cast<const T*>(&xraw);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[b] += static_cast<float>(wv[j]) * static_cast<float>(xv[j]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = warp_sum(acc[b]);
}
"""

# One block = 256 threads = 8 warps = 8 output rows. The LayerNorm of the B input rows is computed once per
# block by all threads (two-pass mean / variance in fp32, as MLX's) into shared memory, rounded to T; then
# each warp reads its weight row once for all B rows (warp_row_dots).
_LN_MATVEC = """
  constexpr int THREADS = 256;
  constexpr int WARPS = THREADS / 32;
  constexpr int PER = (D + THREADS - 1) / THREADS;
  __shared__ __align__(16) T hs[B * D];
  __shared__ float red[WARPS];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  for (int r = 0; r < B; ++r) {
    const T* xr = x + r * D;
    float xs[PER];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * THREADS;
      xs[k] = i < D ? static_cast<float>(xr[i]) : 0.f;
      s += xs[k];
    }
    s = warp_sum(s);
    if (lane == 0) red[warp] = s;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int k = 0; k < WARPS; ++k) total += red[k];
    const float mean = total / D;
    __syncthreads();
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * THREADS;
      if (i < D) {
        const float d = xs[k] - mean;
        v += d * d;
      }
    }
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float var = 0.f;
#pragma unroll
    for (int k = 0; k < WARPS; ++k) var += red[k];
    const float rstd = rsqrtf(var / D + eps[0]);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * THREADS;
      if (i < D) {
        hs[r * D + i] = T((xs[k] - mean) * rstd * static_cast<float>(g[i]) + static_cast<float>(beta[i]));
      }
    }
  }
  __syncthreads();
  const int n = blockIdx.x * WARPS + warp;
  if (n >= N) return;
  float acc[B];
  warp_row_dots<T, B, D>(w + static_cast<size_t>(n) * D, hs, lane, acc);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float v = static_cast<float>(T(acc[b]));
      if (GELU) v = 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
      y[b * N + n] = T(v);
    }
  }
"""

_MATVEC_ADD = """
  constexpr int WARPS = 8;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * WARPS + warp;
  if (n >= N) return;
  float acc[B];
  warp_row_dots<T, B, D>(w + static_cast<size_t>(n) * D, x, lane, acc);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      y[b * N + n] = T(static_cast<float>(res[b * N + n]) + static_cast<float>(T(acc[b])));
    }
  }
"""

MAX_ROWS = 16  # rows (2 x batch with CFG) the kernels take; more fall back to the MLX ops
MAX_LN_ELEMENTS = 16384  # rows x width the LayerNorm kernel stages in shared memory (32 KB of fp16)


@functools.cache
def _kernels() -> tuple[object, object]:
    ln = mx.fast.cuda_kernel(
        name="mag_v1_ln_matvec",
        input_names=["x", "g", "beta", "eps", "w"],
        output_names=["y"],
        source=_LN_MATVEC,
        header=_HEADER,
    )
    add = mx.fast.cuda_kernel(
        name="mag_v1_matvec_add",
        input_names=["x", "w", "res"],
        output_names=["y"],
        source=_MATVEC_ADD,
        header=_HEADER,
    )
    return ln, add


def supported(x: mx.array, w: mx.array) -> bool:
    """Whether the CUDA kernels take this product (else the caller uses the reference ops)."""
    b, s, d = x.shape
    return (
        mx.default_device() == mx.gpu
        and mx.cuda.is_available()
        and x.dtype in (mx.float16, mx.bfloat16)
        and w.dtype == x.dtype
        and s == 1
        and b <= MAX_ROWS
        and d % 8 == 0
        and w.shape[1] == d
    )


def _launch(kernel, inputs: list[mx.array], x: mx.array, n: int, **template) -> mx.array:
    b, _, d = x.shape
    (y,) = kernel(
        inputs=inputs,
        template=[("T", x.dtype), ("B", b), ("D", d), ("N", n), *template.items()],
        grid=(((n + 7) // 8) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(b, 1, n)],
        output_dtypes=[x.dtype],
    )
    return y


def reference_ln_matvec(
    x: mx.array, g: mx.array, b: mx.array, eps: float, w: mx.array, gelu: bool = False
) -> mx.array:
    """The unfused ops: layer_norm, then W @ x per row (MLX's batched GEMV), then the exact GELU."""
    h = mx.fast.layer_norm(x, g, b, eps)
    y = (w @ h.reshape(h.shape[0], -1, 1)).reshape(h.shape[0], 1, -1)
    return nn.gelu(y) if gelu else y


def reference_matvec_add(x: mx.array, w: mx.array, res: mx.array) -> mx.array:
    return res + (w @ x.reshape(x.shape[0], -1, 1)).reshape(x.shape[0], 1, -1)


def ln_matvec(
    x: mx.array, g: mx.array, b: mx.array, eps: float, w: mx.array, gelu: bool = False, fused: bool = True
) -> mx.array:
    """(B, 1, D) -> (B, 1, N): [gelu](layer_norm(x) @ W.T), one CUDA kernel when `fused` and supported."""
    if not (fused and supported(x, w) and x.shape[0] * x.shape[2] <= MAX_LN_ELEMENTS):
        return reference_ln_matvec(x, g, b, eps, w, gelu)
    ln, _ = _kernels()
    eps_arr = mx.array([eps], dtype=mx.float32)
    return _launch(ln, [x, g, b, eps_arr, w], x, w.shape[0], GELU=gelu)


def matvec_add(x: mx.array, w: mx.array, res: mx.array, fused: bool = True) -> mx.array:
    """(B, 1, D), (N, D), (B, 1, N) -> res + x @ W.T, one CUDA kernel when `fused` and supported."""
    if not (fused and supported(x, w)):
        return reference_matvec_add(x, w, res)
    _, add = _kernels()
    return _launch(add, [x, w, res], x, w.shape[0])
