"""A DiT's linear layers as one CUDA kernel of ours where the call is host-bound (MLX CUDA backend).

Why (bench/host_probe.py, H200, docs/benchmarks.md "Stable Audio Open, round 11"): MLX-CUDA records each
cuBLAS matmul by stream capture into a child graph, ~20 µs of host time a GEMM, against ~5.5 µs for an
`mx.fast.cuda_kernel` (one plain graph node). Stable Audio small's DiT call is host-bound: ~87 GEMMs of
~6 µs GPU time each, 1.2 ms of GPU work against 5.2 ms of host time a call. For such calls (few rows: batch x
tokens up to `MAX_ROWS`) a plain tensor-core GEMM is slower on the GPU than cuBLAS's but frees the host;
past `MAX_ROWS` (Stable Audio 1.0's CFG pair, 2050 rows) cuBLAS stays: there the GPU is the limit.

`linear(layer, x, residual=None)`: `residual + layer(x)` (or `layer(x)`) for an `nn.Linear` (its bias in the
epilogue), fp16 / bf16 on CUDA where `supported`; elsewhere (the CPU, Metal, float32, quantized layers, other
shapes) MLX's ops, as before (`reference`). `MLX_AUDIO_GENERATE_GEMM_KERNEL=0` (or `ENABLED = False`)
turns it off.

The kernel: 64 x 64 output tiles, four warps of 32 x 32, mma.sync m16n8k16 with fp32 accumulators, K in
steps of 32 copied by cp.async into two shared buffers (the next step's while this one is used); the bias
and the residual are added to the fp32 sums, then one rounding, as cuBLAS's epilogue does (`mx.addmm`). On
the H200 its fp16 products were bit-identical to cuBLAS's: whole Stable Audio small and SA3 small guided DiT
calls gave the same outputs with and without it (bench/pair_ab.py --b gemm).
"""

from __future__ import annotations

import functools
import os

import mlx.core as mx
import mlx.nn as nn

from . import attention_kernel_cuda as src
from .devices import on_cuda
from .quantize import residual_linear

ENABLED = os.environ.get("MLX_AUDIO_GENERATE_GEMM_KERNEL", "1") != "0"
# Rows (batch x tokens) up to which ours runs. H200: faster at 257 (SA small's clip, 3.93 against 4.43 ms a
# step) and 344 (SA3 small's CFG pair at 10 s, 6.54 against 7.28 ms a call); slower at 514 (SA small's CFG
# pair, 4.69 against 3.57): there our kernel's GPU time, not the host, was the limit.
MAX_ROWS = 384
BM, BN, BK = 64, 64, 32

# the attention kernel's PTX helpers (mma.sync, cp.async) and a two-value store
_HEADER = (
    src.HEADER
    + """
__device__ __forceinline__ void gemm_store2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void gemm_store2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
"""
)

# y (M, N) = x (M, K) @ w (N, K)^T [+ bias (N)] [+ res (M, N)]; N % 64 == 0, K % 32 == 0 (16-byte rows).
_SOURCE = """
  constexpr int BM = 64, BN = 64, BK = 32, PAD = 8;  // + 8: fragment rows 80 bytes apart, no bank conflicts
  __shared__ __align__(16) T as[2][BM][BK + PAD];
  __shared__ __align__(16) T bs[2][BN][BK + PAD];
  const T* tag = nullptr;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float c[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) c[i][j][0] = c[i][j][1] = c[i][j][2] = c[i][j][3] = 0.f;

  // Copy x's and w's tiles of K step k0 into buffer `buf` (rows past M: zeros) as one cp.async group.
  auto stage = [&](int buf, int k0) {
#pragma unroll
    for (int idx = threadIdx.x; idx < BM * BK / 8; idx += 128) {
      const int r = idx / (BK / 8), ch = (idx % (BK / 8)) * 8;
      if (m0 + r < M) {
        attn_cp16(&as[buf][r][ch], x + (size_t)(m0 + r) * K + k0 + ch);
      } else {
        *reinterpret_cast<uint4*>(&as[buf][r][ch]) = make_uint4(0, 0, 0, 0);
      }
      attn_cp16(&bs[buf][r][ch], w + (size_t)(n0 + r) * K + k0 + ch);
    }
    attn_cp_commit();
  };

  stage(0, 0);
  for (int k0 = 0, buf = 0; k0 < K; k0 += BK, buf ^= 1) {
    if (k0 + BK < K) {
      stage(buf ^ 1, k0 + BK);  // its readers finished at the end of the last step
      attn_cp_wait<1>();
    } else {
      attn_cp_wait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      unsigned a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int r = wm + 16 * mi + g, k = 16 * ks + 2 * t;
        a[mi][0] = *reinterpret_cast<const unsigned*>(&as[buf][r][k]);
        a[mi][1] = *reinterpret_cast<const unsigned*>(&as[buf][r + 8][k]);
        a[mi][2] = *reinterpret_cast<const unsigned*>(&as[buf][r][k + 8]);
        a[mi][3] = *reinterpret_cast<const unsigned*>(&as[buf][r + 8][k + 8]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const T* br = &bs[buf][wn + 8 * ni + g][16 * ks + 2 * t];
        const unsigned b0 = *reinterpret_cast<const unsigned*>(br);
        const unsigned b1 = *reinterpret_cast<const unsigned*>(br + 8);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) attn_mma(c[mi][ni], a[mi], b0, b1, tag);
      }
    }
    __syncthreads();  // every warp is done with `buf` before the next step's copy into it
  }

  // Epilogue: the fp32 sums + bias + residual, rounded once; rows g and g + 8 of each 16 x 8 tile.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int col = n0 + wn + 8 * ni + 2 * t;
      float b0 = 0.f, b1 = 0.f;
      LOAD_BIAS
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + wm + 16 * mi + g + 8 * h;
        if (row < M) {
          float v0 = c[mi][ni][2 * h] + b0, v1 = c[mi][ni][2 * h + 1] + b1;
          ADD_RES
          gemm_store2(y + (size_t)row * N + col, v0, v1);
        }
      }
    }
  }
"""


_LOAD_BIAS = "b0 = static_cast<float>(bias[col]); b1 = static_cast<float>(bias[col + 1]);"
_ADD_RES = """v0 += static_cast<float>(res[(size_t)row * N + col]);
          v1 += static_cast<float>(res[(size_t)row * N + col + 1]);"""


def kernel_source(has_bias: bool, has_res: bool) -> tuple[str, str]:
    """(header, body) of the kernel with its epilogue's bias / residual (also for the nvcc test)."""
    body = _SOURCE.replace("LOAD_BIAS", _LOAD_BIAS if has_bias else "")
    return _HEADER, body.replace("ADD_RES", _ADD_RES if has_res else "")


@functools.cache
def _kernel(has_bias: bool, has_res: bool) -> object:
    inputs = ["x", "w", *(["bias"] if has_bias else []), *(["res"] if has_res else [])]
    header, source = kernel_source(has_bias, has_res)
    return mx.fast.cuda_kernel(
        name=f"mag_gemm{'_bias' if has_bias else ''}{'_res' if has_res else ''}",
        input_names=inputs,
        output_names=["y"],
        source=source,
        header=header,
        ensure_row_contiguous=True,
    )


def takes(x: mx.array, weight: mx.array, bias: mx.array | None, residual: mx.array | None) -> bool:
    """Whether the kernel computes this product: fp16 / bf16 throughout, weight (N, K) with N a multiple of
    64 and K of 32, x (..., K) of up to MAX_ROWS rows, bias (N,), a residual of the output's shape."""
    if x.dtype not in (mx.float16, mx.bfloat16) or weight.ndim != 2 or x.ndim < 1 or x.size == 0:
        return False
    n, k = weight.shape
    rows = x.size // x.shape[-1]
    return (
        weight.dtype == x.dtype
        and x.shape[-1] == k
        and n % BN == 0
        and k % BK == 0
        and rows <= MAX_ROWS
        and (bias is None or (bias.shape == (n,) and bias.dtype == x.dtype))
        and (residual is None or (tuple(residual.shape) == (*x.shape[:-1], n) and residual.dtype == x.dtype))
    )


def supported(x: mx.array, weight: mx.array, bias: mx.array | None, residual: mx.array | None) -> bool:
    return ENABLED and on_cuda() and takes(x, weight, bias, residual)


def reference(layer: nn.Module, x: mx.array, residual: mx.array | None = None) -> mx.array:
    """MLX's ops: `layer(x)`, or `residual + layer(x)` as one addmm for a bias-free layer."""
    if residual is None:
        return layer(x)
    if "bias" in layer:
        return residual + layer(x)
    return residual_linear(residual, x, layer)


def gemm(
    x: mx.array, weight: mx.array, bias: mx.array | None = None, residual: mx.array | None = None
) -> mx.array:
    """x @ weight.T [+ bias] [+ residual] by the kernel (callers check `supported`)."""
    n, k = weight.shape
    rows = x.size // k
    inputs = [x.reshape(rows, k), weight]
    if bias is not None:
        inputs.append(bias)
    if residual is not None:
        inputs.append(residual.reshape(rows, n))
    (y,) = _kernel(bias is not None, residual is not None)(
        inputs=inputs,
        template=[("T", x.dtype), ("M", rows), ("N", n), ("K", k)],  # the epilogue: in the kernel's source
        grid=(n // BN * 128, -(-rows // BM), 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(rows, n)],
        output_dtypes=[x.dtype],
    )
    return y.reshape(*x.shape[:-1], n)


def linear(layer: nn.Module, x: mx.array, residual: mx.array | None = None) -> mx.array:
    """`layer(x)` [+ residual] for an nn.Linear: the kernel where `supported`, MLX's ops elsewhere."""
    if type(layer) is nn.Linear:
        bias = layer.bias if "bias" in layer else None
        if supported(x, layer.weight, bias, residual):
            return gemm(x, layer.weight, bias, residual)
    return reference(layer, x, residual)
