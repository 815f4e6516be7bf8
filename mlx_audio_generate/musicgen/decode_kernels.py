"""Fused CUDA kernels for the MusicGen decode step (MLX CUDA backend, fp16 / bf16).

A decode step (one position per row) is bound by host time per kernel, not by the GPU (see
docs/benchmarks.md). MLX runs LayerNorm, the matrix-vector product and the residual add / GELU after it as
separate kernels; these fuse them:

- `ln_matvec(x, g, b, eps, w, gelu)`: T(gelu?(W @ T(layer_norm(x)))) per row: the LayerNorm rounded to T
  before the product, exactly where the unfused path stores it.
- `ln_qkv(x, g, b, eps, w, heads)`: the same for the fused QKV product, written as q (B, H, 1, Dh) and k/v
  (2, B, H, 1, Dh), the layouts SDPA and the cache write take (no view ops; MLX's SDPA copies a strided q).
- `matvec_add(x, w, res)`: res + T(W @ x), the residual add after the product rounded to T; x may be SDPA's
  (B, H, 1, Dh) output as it is (row-contiguous: the same memory as (B, 1, D)).

Shapes: x (B, 1, D) (any shape of B x D elements), w (N, D), D % 8 == 0, B <= MAX_ROWS. Accumulation is
fp32 like MLX's GEMV. Each weight row is read once for all B rows, 16 bytes per lane; `WPR` warps share one
row (split-K over D, partial sums added in a fixed order through shared memory) so long rows (fc2's 4x-wide
input) and narrow outputs still fill the GPU, and each warp can take `RPW` rows (its input loads shared by
them). `config` picks both from the shape; the constants below are what bench/kernel_probe.py measures.
The input rows (LayerNorm-ed first: statistics one warp per row) are staged in dynamic shared memory up to
MAX_STAGED_BYTES, past that read from global memory (normalized on the fly: no B x D limit). Each warp warms
L2 with the start of its weight slice before that staging and then keeps 4 16-byte loads per lane in flight.
`reference_*` are the same maths as MLX ops (the CPU / fp32 path and the tests' yardstick).
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn

from ..devices import on_cuda

_HEADER = """
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 8 consecutive elements (16 bytes) of row b of the input at column c, as floats.
template <typename T, int D>
struct XPlain {  // global or shared memory, used as stored
  const T* x;
  __device__ __forceinline__ void operator()(int b, int c, float* v) const {
    const uint4 raw = *reinterpret_cast<const uint4*>(x + b * D + c);
    const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = static_cast<float>(t[j]);
  }
};

template <typename T>
__device__ __forceinline__ void ln_chunk(
    const T* x, const T* g, const T* beta, float mean, float rstd, T* out) {
  const uint4 xr = *reinterpret_cast<const uint4*>(x);
  const uint4 gr = *reinterpret_cast<const uint4*>(g);
  const uint4 br = *reinterpret_cast<const uint4*>(beta);
  const T* xv = reinterpret_cast<const T*>(&xr);
  const T* gv = reinterpret_cast<const T*>(&gr);
  const T* bv = reinterpret_cast<const T*>(&br);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float h = (static_cast<float>(xv[j]) - mean) * rstd;
    out[j] = T(h * static_cast<float>(gv[j]) + static_cast<float>(bv[j]));
  }
}

template <typename T, int D>
struct XNorm {  // layer_norm(x) rounded to T, computed from global x on the fly (stats: mean, rstd per row)
  const T* x;
  const T* g;
  const T* beta;
  const float* stats;
  __device__ __forceinline__ void operator()(int b, int c, float* v) const {
    __align__(16) T h[8];
    ln_chunk<T>(x + b * D + c, g + c, beta + c, stats[2 * b], stats[2 * b + 1], h);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = static_cast<float>(h[j]);
  }
};

// Warm L2 with the first 4 KB of this warp's weight slice (one 128-byte line per lane and row, no registers
// held), issued before the block stages its input so the HBM latency overlaps that work.
template <typename T, int D, int WPR, int RPW>
__device__ __forceinline__ void prefetch_slice(const T* w, int N, int n0, int ks, int lane) {
  constexpr int KS = D / WPR;
  const int off = lane * (128 / sizeof(T));
  if (off < KS) {
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      const T* p = w + static_cast<size_t>(n0 + r < N ? n0 + r : N - 1) * D + ks * KS + off;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
}

// acc[r][b] = W row (n0 + r) . input row b over this warp's slice `ks` of D (D / WPR columns), per lane
// (summed over the warp by `finish`). The weights are loaded U iterations (16 bytes each) at a time into
// registers before they are used, so several loads per lane are in flight. Rows past N read row N - 1
// (never stored).
template <typename T, int B, int D, int WPR, int RPW, typename XL>
__device__ __forceinline__ void slice_dots(
    const T* w, int N, int n0, int ks, int lane, const XL& xl, float (&acc)[RPW][B]) {
  constexpr int VEC = 8;
  constexpr int KS = D / WPR;
  constexpr int ITERS = (KS + 32 * VEC - 1) / (32 * VEC);
  constexpr int U = ITERS < 4 ? ITERS : 4;
#pragma unroll
  for (int r = 0; r < RPW; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = 0.f;
  const T* wr[RPW];
#pragma unroll
  for (int r = 0; r < RPW; ++r) wr[r] = w + static_cast<size_t>(n0 + r < N ? n0 + r : N - 1) * D + ks * KS;
#pragma unroll
  for (int it0 = 0; it0 < ITERS; it0 += U) {
    uint4 wraw[U][RPW];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int off = ((it0 + u) * 32 + lane) * VEC;
      if (it0 + u < ITERS && off < KS) {
#pragma unroll
        for (int r = 0; r < RPW; ++r) wraw[u][r] = __ldg(reinterpret_cast<const uint4*>(wr[r] + off));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int off = ((it0 + u) * 32 + lane) * VEC;
      if (it0 + u < ITERS && off < KS) {
#pragma unroll
        for (int b = 0; b < B; ++b) {
          float xv[VEC];
          xl(b, ks * KS + off, xv);
#pragma unroll
          for (int r = 0; r < RPW; ++r) {
            const T* wv = reinterpret_cast<const T*>(&wraw[u][r]);
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[r][b] += static_cast<float>(wv[j]) * xv[j];
          }
        }
      }
    }
  }
}

// Sum each row's WPR warp slices (in slice order, through shared memory) and hand (b, n, sum) to `epi`.
template <int B, int WPR, int RPW, typename Epi>
__device__ __forceinline__ void finish(
    float (&acc)[RPW][B], float* part, int N, int n0, int warp, int lane, const Epi& epi) {
#pragma unroll
  for (int r = 0; r < RPW; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = warp_sum(acc[r][b]);
  if (WPR == 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < RPW; ++r)
        if (n0 + r < N)
#pragma unroll
          for (int b = 0; b < B; ++b) epi(b, n0 + r, acc[r][b]);
    }
    return;
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int b = 0; b < B; ++b) part[(warp * RPW + r) * B + b] = acc[r][b];
  }
  __syncthreads();
  if (warp % WPR == 0) {
    for (int i = lane; i < RPW * B; i += 32) {
      const int r = i / B, b = i % B;
      if (n0 + r < N) {
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < WPR; ++k) s += part[((warp + k) * RPW + r) * B + b];
        epi(b, n0 + r, s);
      }
    }
  }
}
"""

# One block = 256 threads = 8 warps = 8 / WPR * RPW output rows.
_LN_MATVEC = """
  constexpr int WARPS = 8;
  constexpr int ROWS = WARPS / WPR * RPW;
  extern __shared__ __align__(16) unsigned char staged_raw[];
  __shared__ float stats[2 * B];
  __shared__ float part[WARPS * RPW * B];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int n0 = blockIdx.x * ROWS + (warp / WPR) * RPW;
  prefetch_slice<T, D, WPR, RPW>(w, N, n0, warp % WPR, lane);
  // LayerNorm statistics: one warp per input row, two passes in fp32 (the row is L1-resident)
  for (int r = warp; r < B; r += WARPS) {
    const T* xr = x + r * D;
    float s = 0.f;
    for (int c = lane * 8; c < D; c += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xr + c);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) s += static_cast<float>(t[j]);
    }
    const float mean = warp_sum(s) / D;
    float v = 0.f;
    for (int c = lane * 8; c < D; c += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xr + c);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float d = static_cast<float>(t[j]) - mean;
        v += d * d;
      }
    }
    v = warp_sum(v);
    if (lane == 0) {
      stats[2 * r] = mean;
      stats[2 * r + 1] = rsqrtf(v / D + eps[0]);
    }
  }
  __syncthreads();
  T* hs = reinterpret_cast<T*>(staged_raw);
  if (STAGED) {  // the normalized rows, rounded to T, into shared memory
    for (int e = tid * 8; e < B * D; e += 256 * 8) {
      const int r = e / D, c = e % D;
      __align__(16) T h[8];
      ln_chunk<T>(x + e, g + c, beta + c, stats[2 * r], stats[2 * r + 1], h);
      *reinterpret_cast<uint4*>(hs + e) = *reinterpret_cast<const uint4*>(h);
    }
    __syncthreads();
  }
  float acc[RPW][B];
  if (STAGED) {
    slice_dots<T, B, D, WPR, RPW>(w, N, n0, warp % WPR, lane, XPlain<T, D>{hs}, acc);
  } else {
    slice_dots<T, B, D, WPR, RPW>(w, N, n0, warp % WPR, lane, XNorm<T, D>{x, g, beta, stats}, acc);
  }
  constexpr int NP = N / PARTS;
  finish<B, WPR, RPW>(acc, part, N, n0, warp, lane, [&](int b, int n, float s) {
    float v = static_cast<float>(T(s));
    if (GELU) v = 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
    y[((n / NP) * B + b) * NP + n % NP] = T(v);
  });
"""
# QKV: q (B, D) and k / v (2, B, D) as two outputs (the same kernel, another store)
_LN_QKV = _LN_MATVEC.replace(
    "y[((n / NP) * B + b) * NP + n % NP] = T(v);",
    "if (n < NP) { q[b * NP + n] = T(v); } else { kv[((n / NP - 1) * B + b) * NP + n % NP] = T(v); }",
)

_MATVEC_ADD = """
  constexpr int WARPS = 8;
  constexpr int ROWS = WARPS / WPR * RPW;
  extern __shared__ __align__(16) unsigned char staged_raw[];
  __shared__ float part[WARPS * RPW * B];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int n0 = blockIdx.x * ROWS + (warp / WPR) * RPW;
  prefetch_slice<T, D, WPR, RPW>(w, N, n0, warp % WPR, lane);
  float acc[RPW][B];
  if (STAGED) {  // the input rows into shared memory (read by every warp)
    T* xs = reinterpret_cast<T*>(staged_raw);
    for (int e = tid * 8; e < B * D; e += 256 * 8) {
      *reinterpret_cast<uint4*>(xs + e) = *reinterpret_cast<const uint4*>(x + e);
    }
    __syncthreads();
    slice_dots<T, B, D, WPR, RPW>(w, N, n0, warp % WPR, lane, XPlain<T, D>{xs}, acc);
  } else {
    slice_dots<T, B, D, WPR, RPW>(w, N, n0, warp % WPR, lane, XPlain<T, D>{x}, acc);
  }
  finish<B, WPR, RPW>(acc, part, N, n0, warp, lane, [&](int b, int n, float s) {
    y[b * N + n] = T(static_cast<float>(res[b * N + n]) + static_cast<float>(T(s)));
  });
"""

MAX_ROWS = 16  # rows (2 x batch with CFG) the kernels take; more fall back to the MLX ops
# Normalized rows staged in dynamic shared memory up to this (with the static arrays under the 48 KB a kernel
# gets without an opt-in); past it each warp normalizes its chunks on the fly.
MAX_STAGED_BYTES = 40 * 1024
# Launch shape (measured by bench/kernel_probe.py): more warps per weight row until a product has MIN_WARPS
# warps, keeping each warp's slice of D at least MIN_SLICE columns; RPW output rows per warp.
MIN_WARPS = 4096
MIN_SLICE = 512
RPW = 1
OVERRIDE: dict[tuple[int, int], tuple[int, int]] = {}  # (D, N) -> (WPR, RPW); for the probe's sweeps


def config(d: int, n: int) -> tuple[int, int]:
    """(warps per weight row, rows per warp) of a (N, D) product."""
    if (d, n) in OVERRIDE:
        return OVERRIDE[(d, n)]
    wpr = 1
    while wpr < 8 and n * wpr < MIN_WARPS and d % (16 * wpr) == 0 and d // (2 * wpr) >= MIN_SLICE:
        wpr *= 2
    return wpr, RPW


@functools.cache
def _kernel(
    name: str, inputs: tuple[str, ...], outputs: tuple[str, ...], source: str, staged_bytes: int
) -> object:
    """One of the kernels above, built once per dynamic shared memory size."""
    return mx.fast.cuda_kernel(
        name=name,
        input_names=list(inputs),
        output_names=list(outputs),
        source=source,
        header=_HEADER,
        shared_memory=staged_bytes,
    )


_LN_INPUTS = ("x", "g", "beta", "eps", "w")


def _staged_bytes(x: mx.array) -> int:
    """Dynamic shared memory for the block's copy of the (normalized) input rows; 0 = read from global."""
    n = x.nbytes
    return n if n <= MAX_STAGED_BYTES else 0


def supported(x: mx.array, w: mx.array) -> bool:
    """Whether the CUDA kernels take this product (else the caller uses the reference ops)."""
    return (
        on_cuda()
        and x.dtype in (mx.float16, mx.bfloat16)
        and w.dtype == x.dtype
        and x.ndim >= 2
        and x.shape[0] <= MAX_ROWS
        and w.ndim == 2
        and w.shape[1] % 8 == 0
        and x.size == x.shape[0] * w.shape[1]  # one position per row
    )


def _launch(kernel, inputs: list[mx.array], x: mx.array, w: mx.array, out_shapes: list, **template) -> list:
    b, (n, d) = x.shape[0], w.shape
    wpr, rpw = config(d, n)
    if d % (8 * wpr):
        wpr = 1
    rows = 8 // wpr * rpw
    return kernel(
        inputs=inputs,
        template=[
            ("T", x.dtype),
            ("B", b),
            ("D", d),
            ("N", n),
            ("WPR", wpr),
            ("RPW", rpw),
            *template.items(),
        ],
        grid=(((n + rows - 1) // rows) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=out_shapes,
        output_dtypes=[x.dtype] * len(out_shapes),
    )


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
    x: mx.array,
    g: mx.array,
    b: mx.array,
    eps: float,
    w: mx.array,
    gelu: bool = False,
    fused: bool = True,
    out_shape: tuple[int, ...] | None = None,
) -> mx.array:
    """(B, 1, D) -> (B, 1, N): [gelu](layer_norm(x) @ W.T), one CUDA kernel when `fused` and supported.
    `out_shape` (kernel only: check `supported` first): the output's shape instead, any of B x N elements in
    the same memory order (cross-attention's q as (B, H, 1, Dh), no view op)."""
    if not (fused and supported(x, w)):
        if out_shape is not None:
            raise ValueError("ln_matvec with out_shape needs the CUDA kernel (check supported())")
        return reference_ln_matvec(x, g, b, eps, w, gelu)
    staged = _staged_bytes(x)
    eps_arr = mx.array([eps], dtype=mx.float32)
    shape = out_shape or (x.shape[0], 1, w.shape[0])
    kernel = _kernel("mag_ln_mv3", _LN_INPUTS, ("y",), _LN_MATVEC, staged)
    (y,) = _launch(kernel, [x, g, b, eps_arr, w], x, w, [shape], GELU=gelu, STAGED=staged > 0, PARTS=1)
    return y


def ln_qkv(
    x: mx.array, g: mx.array, b: mx.array, eps: float, w: mx.array, heads: int
) -> tuple[mx.array, mx.array]:
    """(B, 1, D), fused QKV weight (3D, D) -> q (B, H, 1, Dh), kv (2, B, H, 1, Dh) of layer_norm(x) @ W.T,
    one CUDA kernel (only: check `supported` first)."""
    if not supported(x, w):
        raise ValueError("ln_qkv needs the CUDA kernel (check supported())")
    rows, dm = x.shape[0], w.shape[0] // 3
    if w.shape[0] != 3 * dm or dm % heads:
        raise ValueError(f"ln_qkv: {w.shape[0]} outputs are not q, k, v of {heads} heads")
    staged = _staged_bytes(x)
    eps_arr = mx.array([eps], dtype=mx.float32)
    shapes = [(rows, heads, 1, dm // heads), (2, rows, heads, 1, dm // heads)]
    kernel = _kernel("mag_ln_qkv3", _LN_INPUTS, ("q", "kv"), _LN_QKV, staged)
    q, kv = _launch(kernel, [x, g, b, eps_arr, w], x, w, shapes, GELU=False, STAGED=staged > 0, PARTS=3)
    return q, kv


def matvec_add(x: mx.array, w: mx.array, res: mx.array, fused: bool = True) -> mx.array:
    """(B, 1, D) (or any B x D elements, e.g. SDPA's (B, H, 1, Dh) with fused), (N, D), (B, 1, N) ->
    res + x @ W.T, one CUDA kernel when `fused` and supported."""
    if not (fused and supported(x, w)):
        return reference_matvec_add(x, w, res)
    staged = _staged_bytes(x)
    kernel = _kernel("mag_mv_add3", ("x", "w", "res"), ("y",), _MATVEC_ADD, staged)
    (y,) = _launch(kernel, [x, w, res], x, w, [res.shape], STAGED=staged > 0)
    return y
