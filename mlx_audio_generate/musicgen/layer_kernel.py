"""A whole MusicGen decoder layer of a decode step as ONE CUDA kernel (MLX CUDA backend, fp16 / bf16).

Why: a decode step is bound by host time per kernel, not by the GPU (docs/benchmarks.md: 12-40 us of host
work per launch whatever the kernel does). With the fused kernels of decode_kernels.py a layer still takes
9-10 launches; this takes one, plus the cache write (a slice update) before it.

How: a persistent grid, one 512-thread block per SM (`sm_count`: every block is resident at once), runs the
layer's stages in order and waits at a software grid barrier between them: one release atomic to arrive on
an arrival count, acquire loads to wait. The counts live in a persistent buffer (`_barrier_state`), a slot
per layer and step (`step_length`); they are never reset: every barrier adds one arrival per block, so a
slot's count is always a whole number of barriers. Before each barrier every warp warms L2 with its rows of
the next product, so the weights stream in while the grid waits. Stages, for one position per row:

  self-attention of q over the cache's first L positions (split over the grid's warps, then combined)
  -> out projection + residual -> [LayerNorm + cross q -> cross-attention -> cross out + residual]
  -> LayerNorm + fc1 + GELU -> fc2 + residual -> [LayerNorm + QKV of the next layer]

Every product is a matrix-vector product over the grid's warps (each weight row read once for all rows, 16
bytes per lane, fp32 accumulation) against its input staged in shared memory; results round to T exactly
where the unfused ops store (LayerNorm output, product, residual sum, GELU, attention output), so the layer
agrees with the ops up to fp16 / bf16 rounding and summation order (tests/test_decode_kernels.py, run on the
GPU machine: tests/test_layer_kernel.py). Data written by one block and read by another after a barrier is
read through L2 (`__ldcg`).

A barrier that waits longer than a few seconds (it cannot happen when every block is resident; it would if the
GPU were partitioned under us) sets an error word instead of hanging; `check_barrier` raises after the decode
loop if it was set. Head size 64 only (every MusicGen), widths multiples of 256.
"""

from __future__ import annotations

import ctypes
import functools
import os

import mlx.core as mx

_HEADER = """
__device__ __forceinline__ float lk_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ float2 lk_f2(const T* p) {  // two consecutive T (4-byte aligned) as floats
  const unsigned int raw = *reinterpret_cast<const unsigned int*>(p);
  const T* t = reinterpret_cast<const T*>(&raw);
  return make_float2(static_cast<float>(t[0]), static_cast<float>(t[1]));
}

template <typename T>
__device__ __forceinline__ float2 lk_f2cg(const T* p) {  // the same, written by another block: through L2
  const unsigned int raw = __ldcg(reinterpret_cast<const unsigned int*>(p));
  const T* t = reinterpret_cast<const T*>(&raw);
  return make_float2(static_cast<float>(t[0]), static_cast<float>(t[1]));
}

template <typename T>
__device__ __forceinline__ float lk_cg(const T* p) {  // one T written by another block: through L2
  const unsigned short r = __ldcg(reinterpret_cast<const unsigned short*>(p));
  return static_cast<float>(*reinterpret_cast<const T*>(&r));
}

__device__ __forceinline__ int lk_warp() { return blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; }
__device__ __forceinline__ int lk_warps() { return gridDim.x * (blockDim.x / 32); }

// Warm L2 with this warp's rows of the next product (the rows lk_gemv will give it), one 128-byte line per
// lane and instruction: issued before a barrier, so the weights stream in while the grid waits.
template <typename T, int DIN, int N, int RP>
__device__ __forceinline__ void lk_prefetch(const T* w) {
  constexpr int LINES = DIN * sizeof(T) / 128;
  const int lane = threadIdx.x % 32;
  const int nw = lk_warps();
  for (int n0 = lk_warp() * RP; n0 < N; n0 += nw * RP)
    for (int r = 0; r < RP && n0 + r < N; ++r) {
      const char* row = reinterpret_cast<const char*>(w + static_cast<size_t>(n0 + r) * DIN);
      for (int l = lane; l < LINES; l += 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + l * 128));
    }
}

// Every block of the grid is resident (one per SM), so they can wait for each other. A slot's first 8 bytes
// count arrivals and are never reset: every barrier adds exactly gridDim.x, so barrier k of a launch is the
// arrivals [k * n, (k + 1) * n) and a block waits until the count reaches the end of its barrier's range.
// One release atomic to arrive, acquire loads to wait (the data written before the barrier is visible after
// it). bar[2] != 0: a wait timed out (a broken slot: later waits give up at once; check_barrier reports it).
__device__ __noinline__ void lk_barrier(int* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long* count = reinterpret_cast<unsigned long long*>(bar);
    volatile int* failed = bar + 2;
    const unsigned long long n = gridDim.x;
    unsigned long long old, now;
    asm volatile("atom.release.gpu.global.add.u64 %0, [%1], 1;" : "=l"(old) : "l"(count) : "memory");
    const unsigned long long target = (old / n + 1) * n;
    unsigned int spins = 0;
    while (true) {
      asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(now) : "l"(count) : "memory");
      if (now >= target) break;
      if ((++spins & 1023u) == 0 && (*failed != 0 || spins >= (1u << 24))) {
        atomicExch(bar + 2, 1);
        break;
      }
    }
  }
  __syncthreads();
}

// Rows (B x DIN) written earlier in this launch into shared memory (one read through L2), then LayerNorm-ed
// there and rounded to T when g: statistics one warp per row, two passes in fp32.
template <typename T, int B, int DIN>
__device__ void lk_stage(const T* src, const T* g, const T* beta, float eps, T* xs, float* stats) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = threadIdx.x * 8; e < B * DIN; e += blockDim.x * 8)
    *reinterpret_cast<uint4*>(xs + e) = __ldcg(reinterpret_cast<const uint4*>(src + e));
  __syncthreads();
  if (g == nullptr) return;
  for (int r = warp; r < B; r += blockDim.x / 32) {
    float s = 0.f;
    for (int c = lane * 8; c < DIN; c += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xs + r * DIN + c);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) s += static_cast<float>(t[j]);
    }
    const float mean = lk_sum(s) / DIN;
    float var = 0.f;
    for (int c = lane * 8; c < DIN; c += 256) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xs + r * DIN + c);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float d = static_cast<float>(t[j]) - mean;
        var += d * d;
      }
    }
    var = lk_sum(var);
    if (lane == 0) {
      stats[2 * r] = mean;
      stats[2 * r + 1] = rsqrtf(var / DIN + eps);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x * 8; e < B * DIN; e += blockDim.x * 8) {
    const int r = e / DIN, c = e % DIN;
    const uint4 raw = *reinterpret_cast<const uint4*>(xs + e);
    const uint4 gr = __ldg(reinterpret_cast<const uint4*>(g + c));
    const uint4 br = __ldg(reinterpret_cast<const uint4*>(beta + c));
    const T* xv = reinterpret_cast<const T*>(&raw);
    const T* gv = reinterpret_cast<const T*>(&gr);
    const T* bv = reinterpret_cast<const T*>(&br);
    __align__(16) T h[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float nv = (static_cast<float>(xv[j]) - stats[2 * r]) * stats[2 * r + 1];
      h[j] = T(nv * static_cast<float>(gv[j]) + static_cast<float>(bv[j]));
    }
    *reinterpret_cast<uint4*>(xs + e) = *reinterpret_cast<const uint4*>(h);
  }
  __syncthreads();
}

// W (N x DIN) @ the B staged rows: the grid's warps stride over groups of RP adjacent weight rows, each lane
// 16 bytes of a row at a time (U loads in flight); epi(b, n, fp32 sum) from lane 0.
template <typename T, int B, int DIN, int N, int RP, typename Epi>
__device__ __forceinline__ void lk_gemv(const T* __restrict__ w, const T* xs, const Epi& epi) {
  constexpr int PER_LANE = DIN / 256;
  constexpr int U = PER_LANE < 8 ? PER_LANE : 8;
  const int lane = threadIdx.x % 32;
  const int nw = lk_warps();
  for (int n0 = lk_warp() * RP; n0 < N; n0 += nw * RP) {
    float acc[RP][B];
#pragma unroll
    for (int r = 0; r < RP; ++r)
#pragma unroll
      for (int b = 0; b < B; ++b) acc[r][b] = 0.f;
#pragma unroll
    for (int i0 = 0; i0 < PER_LANE; i0 += U) {
      uint4 wr[U][RP];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < RP; ++r) {
          const int n = n0 + r < N ? n0 + r : N - 1;
          if (i0 + u < PER_LANE)
            wr[u][r] = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(n) * DIN) +
                             (i0 + u) * 32 + lane);
        }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u < PER_LANE) {
          const int c = ((i0 + u) * 32 + lane) * 8;
#pragma unroll
          for (int b = 0; b < B; ++b) {
            const uint4 xr = *reinterpret_cast<const uint4*>(xs + b * DIN + c);
            const T* xv = reinterpret_cast<const T*>(&xr);
#pragma unroll
            for (int r = 0; r < RP; ++r) {
              const T* wv = reinterpret_cast<const T*>(&wr[u][r]);
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[r][b] += static_cast<float>(wv[j]) * static_cast<float>(xv[j]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RP; ++r)
#pragma unroll
      for (int b = 0; b < B; ++b) acc[r][b] = lk_sum(acc[r][b]);
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < RP; ++r)
        if (n0 + r < N)
#pragma unroll
          for (int b = 0; b < B; ++b) epi(b, n0 + r, acc[r][b]);
    }
  }
}

// One query (64 dims: two per lane, pre-scaled) against K/V rows [p0, p1) (row stride 64), online softmax in
// fp32: the running max m, sum l and unnormalized output acc of this slice.
template <typename T>
__device__ __forceinline__ void lk_attend(
    float2 qf, const T* k, const T* v, int p0, int p1, float& m, float& l, float2& acc) {
  constexpr int G = 8;
  const int lane = threadIdx.x % 32;
  m = -INFINITY;
  l = 0.f;
  acc = make_float2(0.f, 0.f);
  for (int p = p0; p < p1; p += G) {
    float2 kf[G], vf[G];
#pragma unroll
    for (int u = 0; u < G; ++u) {
      const int pp = p + u < p1 ? p + u : p1 - 1;
      kf[u] = lk_f2(k + pp * 64 + 2 * lane);
      vf[u] = lk_f2(v + pp * 64 + 2 * lane);
    }
    float s[G];
    float mx = m;
#pragma unroll
    for (int u = 0; u < G; ++u) {
      s[u] = lk_sum(qf.x * kf[u].x + qf.y * kf[u].y);
      if (p + u >= p1) s[u] = -INFINITY;
      mx = fmaxf(mx, s[u]);
    }
    const float corr = expf(m - mx);
    l *= corr;
    acc.x *= corr;
    acc.y *= corr;
#pragma unroll
    for (int u = 0; u < G; ++u) {
      const float e = expf(s[u] - mx);  // 0 past p1
      l += e;
      acc.x += e * vf[u].x;
      acc.y += e * vf[u].y;
    }
    m = mx;
  }
}

// Attention of the B x H queries (q: (B, H, 64)) over `len` positions, the positions split over the grid's
// warps (`splits` slices per head, partials in `part`, then combined by one warp per head). K/V of row b,
// head h start at k + (b * H + h) * kstride. Writes T(out) as (B, H * 64). Barriers inside when split.
template <typename T, int B, int H, int MAXSPLIT>
__device__ void lk_attention(
    const T* q, const T* k, const T* v, long kstride, int len, float scale, float* part, T* out, int* bar) {
  const int lane = threadIdx.x % 32;
  const int gw = lk_warp(), nw = lk_warps();
  constexpr int BH = B * H;
  int splits = (len + 31) / 32;  // at least 32 positions a slice
  const int fill = nw / BH > 1 ? nw / BH : 1;
  splits = splits < fill ? splits : fill;
  splits = splits < MAXSPLIT ? splits : MAXSPLIT;
  splits = splits > 1 ? splits : 1;
  const int chunk = (len + splits - 1) / splits;
  for (int task = gw; task < BH * splits; task += nw) {
    const int bh = task / splits, sp = task % splits;
    const int p0 = sp * chunk, p1 = p0 + chunk < len ? p0 + chunk : len;
    float2 qf = lk_f2cg(q + bh * 64 + 2 * lane);  // the cross q is written in this launch
    qf.x *= scale;
    qf.y *= scale;
    float m, l;
    float2 acc;
    if (p0 < p1) {
      lk_attend<T>(qf, k + bh * kstride, v + bh * kstride, p0, p1, m, l, acc);
    } else {
      m = -INFINITY;
      l = 0.f;
      acc = make_float2(0.f, 0.f);
    }
    if (splits == 1) {
      out[bh * 64 + 2 * lane] = T(acc.x / l);
      out[bh * 64 + 2 * lane + 1] = T(acc.y / l);
    } else {
      float* pp = part + static_cast<long>(task) * 66;
      __stcg(pp + 2 * lane, acc.x);
      __stcg(pp + 2 * lane + 1, acc.y);
      if (lane == 0) {
        __stcg(pp + 64, m);
        __stcg(pp + 65, l);
      }
    }
  }
  if (splits == 1) return;
  lk_barrier(bar);
  for (int bh = gw; bh < BH; bh += nw) {
    const float* pp = part + static_cast<long>(bh) * splits * 66;
    float mmax = -INFINITY;
    for (int s = 0; s < splits; ++s) mmax = fmaxf(mmax, __ldcg(pp + s * 66 + 64));
    float den = 0.f, ox = 0.f, oy = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ls = __ldcg(pp + s * 66 + 65);
      if (ls > 0.f) {
        const float wgt = expf(__ldcg(pp + s * 66 + 64) - mmax);
        den += wgt * ls;
        ox += wgt * __ldcg(pp + s * 66 + 2 * lane);
        oy += wgt * __ldcg(pp + s * 66 + 2 * lane + 1);
      }
    }
    out[bh * 64 + 2 * lane] = T(ox / den);
    out[bh * 64 + 2 * lane + 1] = T(oy / den);
  }
}
"""

# Inputs: x (B, 1, D); q (B, H, 1, 64); cache (2, B, H, M, 64); len int32 [L, slot, M, S]; consts fp32
# [eps, scale, layer]; barrier int32 [4 x SLOTS]; then the layer's weights (the cross ones unread without
# CROSS, the next layer's without NEXT). Outputs: y (B, 1, D); qn (B, H, 1, 64), kvn (2, B, H, 1, 64) (NEXT);
# ws (T scratch); part (fp32 scratch).
_SOURCE = """
  constexpr int H = D / 64;
  extern __shared__ __align__(16) unsigned char lk_smem[];
  T* xs = reinterpret_cast<T*>(lk_smem);
  __shared__ float stats[2 * B];
  // this launch's barrier words: the step's first slot + the layer's index (see layer_kernel.SLOTS)
  int* bar = const_cast<int*>(barrier) + 4 * ((len[1] + static_cast<int>(consts[2])) % @SLOTS@);
  const float eps = consts[0], scale = consts[1];
  T* o = ws;               // self-attention output (B, D)
  T* x1 = ws + B * D;      // after the self-attention residual
  T* qc = ws + 2 * B * D;  // cross-attention query
  T* oc = ws + 3 * B * D;  // cross-attention output
  T* x2 = ws + 4 * B * D;  // after the cross-attention residual
  T* hf = ws + 5 * B * D;  // GELU(fc1) (B, F)

  // 1. self-attention over the cache (this step's k / v already written at position len - 1)
  lk_prefetch<T, D, D, 1>(w_o);
  // the cache's length and the text's are run-time values (len[2], len[3]): one compiled kernel per model
  const long tmax = len[2];
  lk_attention<T, B, H, MAXSPLIT>(q, cache, cache + B * H * tmax * 64, tmax * 64, len[0],
                                  scale, part, o, bar);
  lk_barrier(bar);
  // 2. x1 = x + out_proj(o)
  lk_stage<T, B, D>(o, nullptr, nullptr, 0.f, xs, stats);
  lk_gemv<T, B, D, D, 1>(w_o, xs, [&](int b, int n, float s) {
    x1[b * D + n] = T(static_cast<float>(x[b * D + n]) + static_cast<float>(T(s)));
  });
  if (CROSS) {
    lk_prefetch<T, D, D, 1>(w_cq);
  } else {
    lk_prefetch<T, D, F, 2>(w_1);
  }
  lk_barrier(bar);
  const T* xr = x1;
  if (CROSS) {
    // 3. cross-attention: q of LayerNorm(x1), attention over the text's S keys, x2 = x1 + out(oc)
    lk_stage<T, B, D>(x1, ln2_g, ln2_b, eps, xs, stats);
    lk_gemv<T, B, D, D, 1>(w_cq, xs, [&](int b, int n, float s) { qc[b * D + n] = T(s); });
    lk_prefetch<T, D, D, 1>(w_co);
    lk_barrier(bar);
    const int text = len[3];
    lk_attention<T, B, H, MAXSPLIT>(qc, cross_k, cross_v, static_cast<long>(text) * 64, text, scale, part, oc,
                                    bar);
    lk_barrier(bar);
    lk_stage<T, B, D>(oc, nullptr, nullptr, 0.f, xs, stats);
    lk_gemv<T, B, D, D, 1>(w_co, xs, [&](int b, int n, float s) {
      x2[b * D + n] = T(lk_cg(x1 + b * D + n) + static_cast<float>(T(s)));
    });
    lk_prefetch<T, D, F, 2>(w_1);
    lk_barrier(bar);
    xr = x2;
  }
  // 4. feed-forward: GELU(fc1(LayerNorm(xr))), y = xr + fc2(.)
  lk_stage<T, B, D>(xr, ln3_g, ln3_b, eps, xs, stats);
  lk_gemv<T, B, D, F, 2>(w_1, xs, [&](int b, int n, float s) {
    const float v = static_cast<float>(T(s));
    hf[b * F + n] = T(0.5f * v * (1.f + erff(v * 0.7071067811865476f)));
  });
  lk_prefetch<T, F, D, 1>(w_2);
  lk_barrier(bar);
  lk_stage<T, B, F>(hf, nullptr, nullptr, 0.f, xs, stats);
  lk_gemv<T, B, F, D, 1>(w_2, xs, [&](int b, int n, float s) {
    y[b * D + n] = T(lk_cg(xr + b * D + n) + static_cast<float>(T(s)));
  });
  if (NEXT) {
    // 5. the next layer's LayerNorm + QKV: q (B, H, 1, 64), k / v (2, B, H, 1, 64)
    lk_prefetch<T, D, 3 * D, 2>(w_qkv);
    lk_barrier(bar);
    lk_stage<T, B, D>(y, ln1_g, ln1_b, eps, xs, stats);
    lk_gemv<T, B, D, 3 * D, 2>(w_qkv, xs, [&](int b, int n, float s) {
      if (n < D) {
        qn[b * D + n] = T(s);
      } else {
        kvn[((n / D - 1) * B + b) * D + n % D] = T(s);
      }
    });
  }
"""

INPUTS = [
    "x", "q", "cache", "len", "consts", "barrier",
    "w_o", "ln2_g", "ln2_b", "w_cq", "cross_k", "cross_v", "w_co",
    "ln3_g", "ln3_b", "w_1", "w_2", "ln1_g", "ln1_b", "w_qkv",
]  # fmt: skip
OUTPUTS = ["y", "qn", "kvn", "ws", "part"]

MAX_ROWS = 16
ENV = (
    "MLX_AUDIO_GENERATE_LAYER_KERNEL"  # "0": the per-op kernels instead (e.g. on a shared / partitioned GPU)
)
# Dynamic shared memory for the staged rows (B x ffn width): 1 block per SM leaves room for it.
MAX_STAGED_BYTES = 160 * 1024
BLOCK = 512  # 16 warps per SM: more weight loads in flight
BLOCKS_PER_SM = 1  # every block resident: >1 only where that many fit an SM (bench/layer_kernel_probe.py)


@functools.cache
def sm_count(device_index: int = 0) -> int:
    """Streaming multiprocessors of the CUDA device (the driver's answer; 0 when it cannot be asked)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, value = ctypes.c_int(), ctypes.c_int()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), device_index) != 0:
            return 0
        # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), 16, dev) != 0:
            return 0
        return int(value.value)
    except (OSError, AttributeError):
        return 0


def _compact(src: str) -> str:
    """CUDA source without comments, indentation or blank lines: MLX copies and hashes the whole source on
    every launch (host time per launch). The sources hold no string literal with "//" in it."""
    lines = []
    for line in src.splitlines():
        code = line.split("//", 1)[0].strip()
        if code:
            lines.append(code)
    return "\n".join(lines) + "\n"


def kernel_header() -> str:
    """The kernel's helper functions as mx.fast.cuda_kernel takes them."""
    return _compact(_HEADER)


def kernel_source() -> str:
    """The kernel's body as mx.fast.cuda_kernel takes it."""
    return _compact(_SOURCE.replace("@SLOTS@", str(SLOTS)))


@functools.cache
def _kernel(staged_bytes: int) -> object:
    return mx.fast.cuda_kernel(
        name="mag_decoder_layer1",
        input_names=INPUTS,
        output_names=OUTPUTS,
        source=kernel_source(),
        header=kernel_header(),
        shared_memory=staged_bytes,
    )


@functools.cache
def _launch(
    dtype: mx.Dtype, rows: int, d: int, ffn: int, cross: bool, nxt: bool, block: int, per_sm: int
) -> dict:
    """The launch arguments of one model's layer (built once: a decode step launches it once per layer)."""
    heads = d // 64
    nblocks = sm_count(0) * per_sm
    # slices per head of the attention: at most the grid's warps per head (and one per 32 positions)
    maxsplit = max(1, nblocks * block // 32 // (rows * heads))
    template = [("T", dtype), ("B", rows), ("D", d), ("F", ffn), ("CROSS", cross), ("NEXT", nxt),
                ("MAXSPLIT", maxsplit)]  # fmt: skip
    shapes = [
        (rows, 1, d),
        (rows, heads, 1, 64) if nxt else (1,),
        (2, rows, heads, 1, 64) if nxt else (1,),
        (5 * rows * d + rows * ffn,),
        (rows * heads * maxsplit * 66,),
    ]
    return dict(
        template=template,
        grid=(nblocks * block, 1, 1),
        threadgroup=(block, 1, 1),
        output_shapes=shapes,
        output_dtypes=[dtype, dtype, dtype, dtype, mx.float32],
    )


# Barrier words: SLOTS slots of 4 int32 (an arrival count in the first two, "timed out", unused). MLX may run
# graph nodes without a data path between them at once (a CUDA graph's independent branches; it orders a
# node after the last writer of its buffers, not after earlier readers), so launches of one graph must not
# share a slot: each decode step takes the next `layers` slots (`step_length`), each layer its own of them.
# A CUDA graph holds at most a few hundred nodes (MLX_MAX_OPS_PER_BUFFER), far fewer than SLOTS.
SLOTS = 4096
_STATE: dict[int, mx.array] = {}  # per grid size (a slot's count is a multiple of its grid's blocks)
_NEXT_SLOT = [0]


def _barrier_state(blocks: int) -> mx.array:
    """The grid barriers' words for grids of `blocks` blocks (kept for the process)."""
    if blocks not in _STATE:
        state = mx.zeros((SLOTS * 4,), dtype=mx.int32)
        mx.eval(state)
        _STATE[blocks] = state
    return _STATE[blocks]


def layer_consts(eps: float, scale: float, layers: int) -> list[mx.array]:
    """Per layer, the kernel's `consts`: [eps, attention scale, the layer's index (its barrier slot in a
    step's range)], built once per generation."""
    return [mx.array([eps, scale, i], dtype=mx.float32) for i in range(layers)]


def step_length(length: int, layers: int, cache_len: int, text_len: int) -> mx.array:
    """A decode step's `len` input: [positions to attend, the first of this step's `layers` barrier slots, the
    cache's max length, the text's length (0: no cross-attention)] (run-time values: no recompile per
    prompt or clip length)."""
    first = _NEXT_SLOT[0]
    _NEXT_SLOT[0] = (first + layers) % SLOTS
    return mx.array([length, first, cache_len, text_len], dtype=mx.int32)


def check_barrier() -> None:
    """Raise if a layer kernel's grid barrier timed out since the last check (its outputs were wrong)."""
    failed = [b for b, state in _STATE.items() if int(state.reshape(SLOTS, 4)[:, 2].max().item()) != 0]
    for blocks in failed:
        del _STATE[blocks]  # fresh words for the next launches
    if failed:
        raise RuntimeError(
            "the fused MusicGen layer kernel timed out at a grid barrier (is the GPU shared or "
            "partitioned?); set MLX_AUDIO_GENERATE_LAYER_KERNEL=0 to use the per-op kernels"
        )


def wanted(setting: bool | None) -> bool:
    """A decoder's `layer_kernel` setting: True / False, or None = on unless the environment says ENV=0."""
    if setting is not None:
        return setting
    return os.environ.get(ENV, "1").strip() != "0"


def staged_bytes(rows: int, ffn: int, dtype: mx.Dtype) -> int:
    return rows * ffn * dtype.size


def supported(x: mx.array, d: int, ffn: int, heads: int) -> bool:
    """Whether the layer kernel takes this decode step (else the caller runs the per-op path)."""
    rows = x.shape[0]
    return (
        mx.default_device() == mx.gpu
        and mx.cuda.is_available()
        and x.dtype in (mx.float16, mx.bfloat16)
        and 1 <= rows <= MAX_ROWS
        and x.size == rows * d
        and d == heads * 64
        and d % 256 == 0
        and ffn % 256 == 0
        and staged_bytes(rows, ffn, x.dtype) <= MAX_STAGED_BYTES
        and sm_count(0) > 0
    )


def decoder_layer(
    x: mx.array,
    q: mx.array,
    cache: mx.array,
    length: mx.array,
    consts: mx.array,
    weights: list[mx.array],
    cross_len: int,
    nxt: bool,
) -> tuple[mx.array, mx.array | None, mx.array | None]:
    """One decoder layer of a decode step: x (B, 1, D), q (B, H, 1, 64) (this layer's query), `cache`
    (2, B, H, max_len, 64) with this step's k / v already written at L - 1, `length` from `step_length`,
    `consts` from `layer_consts`, `weights` in INPUTS order from w_o (cross ones: any arrays when
    `cross_len` is 0; the next layer's: any when not `nxt`). Returns y (B, 1, D) and, with `nxt`, the next
    layer's q (B, H, 1, 64) and k / v (2, B, H, 1, 64). Check `supported` first."""
    rows, d, ffn = x.shape[0], x.shape[-1], weights[9].shape[0]  # w_1 (F, D)
    kernel = _kernel(staged_bytes(rows, ffn, x.dtype))
    launch = _launch(x.dtype, rows, d, ffn, cross_len > 0, nxt, BLOCK, BLOCKS_PER_SM)
    nblocks = launch["grid"][0] // launch["threadgroup"][0]
    out = kernel(inputs=[x, q, cache, length, consts, _barrier_state(nblocks), *weights], **launch)
    y, qn, kvn = out[0], out[1], out[2]
    return (y, qn, kvn) if nxt else (y, None, None)
