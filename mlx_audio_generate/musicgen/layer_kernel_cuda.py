"""The CUDA source of the one-kernel MusicGen decoder layer (layer_kernel.py has the why, the how and the
launch): `HEADER` (device functions: grid barrier, staging + LayerNorm, matrix-vector product, L2 prefetch,
split attention) and `SOURCE` (the kernel's body, the layer's stages in order), in the form
`mx.fast.cuda_kernel` wraps them (a `__global__` function whose parameters are INPUTS, then OUTPUTS).
"""

HEADER = """
__device__ __forceinline__ float lk_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float lk_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
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
template <typename T, int DIN, int RP>
__device__ __forceinline__ void lk_prefetch_n(const T* w, int n) {  // n rows, a run-time count
  constexpr int LINES = DIN * sizeof(T) / 128;
  const int lane = threadIdx.x % 32;
  const int nw = lk_warps();
  for (int n0 = lk_warp() * RP; n0 < n; n0 += nw * RP)
    for (int r = 0; r < RP && n0 + r < n; ++r) {
      const char* row = reinterpret_cast<const char*>(w + static_cast<size_t>(n0 + r) * DIN);
      for (int l = lane; l < LINES; l += 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + l * 128));
    }
}

template <typename T, int DIN, int N, int RP>
__device__ __forceinline__ void lk_prefetch(const T* w) {
  lk_prefetch_n<T, DIN, RP>(w, N);
}

__device__ __forceinline__ unsigned int lk_now() {  // the GPU's global timer (ns), low 32 bits
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return static_cast<unsigned int>(t);
}

// A launch's grid-barrier words: `bar` (its slot), `tm` (nullptr, or the probe's timestamps: block 0's
// arrival at and departure from each barrier, layer_kernel.TIMING) and the barriers passed so far.
struct LkSync {
  int* bar;
  unsigned int* tm;
  int k;
};

// Every block of the grid is resident (one per SM), so they can wait for each other. A slot's first 8 bytes
// count arrivals and are never reset: every barrier adds exactly gridDim.x, so barrier k of a launch is the
// arrivals [k * n, (k + 1) * n) and a block waits until the count reaches the end of its barrier's range.
// One release atomic to arrive, acquire loads to wait (the data written before the barrier is visible after
// it). bar[2] != 0: a wait timed out (a broken slot: later waits give up at once; check_barrier reports it).
__device__ __noinline__ void lk_barrier(LkSync& sy) {
  __syncthreads();
  int* bar = sy.bar;
  if (threadIdx.x == 0) {
    if (sy.tm != nullptr && blockIdx.x == 0 && sy.k < @TM_BARRIERS@) sy.tm[2 + 2 * sy.k] = lk_now();
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
    if (sy.tm != nullptr && blockIdx.x == 0 && sy.k < @TM_BARRIERS@) sy.tm[3 + 2 * sy.k] = lk_now();
  }
  ++sy.k;
  __syncthreads();
}

// Called by a whole warp after its part of a task of `n` parts (its results stored): true for the warp
// whose part completes the task (it then reads the others' results through L2). The count goes back to 0
// with the last part, so a counter serves one task after another (tasks that follow a grid barrier).
__device__ __forceinline__ bool lk_last(int* count, int n) {
  __threadfence();
  __syncwarp();
  int last = 0;
  if (threadIdx.x % 32 == 0) {
    __threadfence();
    last = atomicAdd(count, 1) == n - 1;
    if (last) atomicExch(count, 0);
  }
  last = __shfl_sync(0xffffffffu, last, 0);
  if (last) __threadfence();
  return last != 0;
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
// 16 bytes of a row at a time (U x RP loads in flight: 16 for one row, so fc2's 8192-wide rows take 2
// dependent rounds, not 4; the stage measured the same, 12.4 vs 11.5 us at width 2048, within run-to-run
// spread); epi(b, n, fp32 sum) from lane 0.
template <typename T, int B, int DIN, int N, int RP, typename Epi>
__device__ __forceinline__ void lk_gemv(const T* __restrict__ w, const T* xs, const Epi& epi) {
  constexpr int PER_LANE = DIN / 256;
  constexpr int UMAX = RP == 1 ? 16 : 8;
  constexpr int U = PER_LANE < UMAX ? PER_LANE : UMAX;
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

// 8 consecutive staged values as floats: fp32 (two 16-byte loads) or T (one)
__device__ __forceinline__ void lk_load8(const float* p, float* f) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

template <typename T>
__device__ __forceinline__ void lk_load8(const T* p, float* f) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = static_cast<float>(t[j]);
}

// W (n x DIN, n a run-time count) with each row against its own staged row: row r against row r / per_x
// of xs (the absorbed cross-attention: each guidance row has its own text, so its own matrix); otherwise
// as lk_gemv (warps stride over groups of RP rows, 16 bytes per lane and load); epi(r, fp32 sum), lane 0.
template <typename T, typename XT, int DIN, int RP, typename Epi>
__device__ __forceinline__ void lk_gemv_own(const T* __restrict__ w, int n, int per_x, const XT* xs,
                                            const Epi& epi) {
  constexpr int PER_LANE = DIN / 256;
  constexpr int UMAX = RP == 1 ? 16 : 8;
  constexpr int U = PER_LANE < UMAX ? PER_LANE : UMAX;
  const int lane = threadIdx.x % 32;
  const int nw = lk_warps();
  for (int n0 = lk_warp() * RP; n0 < n; n0 += nw * RP) {
    float acc[RP];
    const XT* xr[RP];
#pragma unroll
    for (int r = 0; r < RP; ++r) {
      acc[r] = 0.f;
      xr[r] = xs + static_cast<long>((n0 + r < n ? n0 + r : n - 1) / per_x) * DIN;
    }
#pragma unroll
    for (int i0 = 0; i0 < PER_LANE; i0 += U) {
      uint4 wr[U][RP];
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < RP; ++r) {
          const int m = n0 + r < n ? n0 + r : n - 1;
          if (i0 + u < PER_LANE)
            wr[u][r] = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(m) * DIN) +
                             (i0 + u) * 32 + lane);
        }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u < PER_LANE) {
          const int c = ((i0 + u) * 32 + lane) * 8;
#pragma unroll
          for (int r = 0; r < RP; ++r) {
            float xv[8];
            lk_load8(xr[r] + c, xv);
            const T* wv = reinterpret_cast<const T*>(&wr[u][r]);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r] += static_cast<float>(wv[j]) * xv[j];
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RP; ++r) acc[r] = lk_sum(acc[r]);
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < RP; ++r)
        if (n0 + r < n) epi(n0 + r, acc[r]);
    }
  }
}

// The softmax of each of the B x H heads' `text` scores (fp32, (B, H, text), text <= 64) into p: row b's
// probabilities at p + b * HTP + h * text + j, zeros from H * text to HTP. Every score is copied into its
// place first, 4 loads a thread in flight (one L2 round trip, not one per head), then a warp per head works
// in shared memory (the whole block).
template <int B, int H, int HTP>
__device__ void lk_softmax_rows(const float* scores, int text, float* p) {
  constexpr int PER = 4;
  const int lane = threadIdx.x % 32, ht = H * text;
  for (int i0 = threadIdx.x; i0 < B * HTP; i0 += PER * blockDim.x) {
    float v[PER];
#pragma unroll
    for (int u = 0; u < PER; ++u) {
      const int i = i0 + u * blockDim.x, c = i % HTP;
      v[u] = i < B * HTP && c < ht ? __ldcg(scores + (i / HTP) * ht + c) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < PER; ++u)
      if (i0 + u * blockDim.x < B * HTP) p[i0 + u * blockDim.x] = v[u];
  }
  __syncthreads();
  for (int bh = threadIdx.x / 32; bh < B * H; bh += blockDim.x / 32) {
    float* s = p + (bh / H) * HTP + (bh % H) * text;  // each lane rewrites only the scores it read
    const float s0 = lane < text ? s[lane] : -INFINITY;
    const float s1 = lane + 32 < text ? s[lane + 32] : -INFINITY;
    const float m = lk_max(fmaxf(s0, s1));
    const float e0 = lane < text ? expf(s0 - m) : 0.f;
    const float e1 = lane + 32 < text ? expf(s1 - m) : 0.f;
    const float inv = 1.f / lk_sum(e0 + e1);
    if (lane < text) s[lane] = e0 * inv;
    if (lane + 32 < text) s[lane + 32] = e1 * inv;
  }
  __syncthreads();
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
// warps (`splits` slices per head, partials in `part`; the warp that completes a head's last slice combines
// them: no grid barrier, `ctr` counts a head's slices). K/V of row b, head h start at k + (b * H + h) *
// kstride. Writes T(out) as (B, H * 64).
template <typename T, int B, int H, int MAXSPLIT>
__device__ void lk_attention(
    const T* q, const T* k, const T* v, long kstride, int len, float scale, float* part, T* out, int* ctr) {
  const int lane = threadIdx.x % 32;
  const int gw = lk_warp(), nw = lk_warps();
  constexpr int BH = B * H;
  int splits = (len + 15) / 16;  // at least 16 positions a slice (two loads of 8 per lane)
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
      continue;
    }
    float* pp = part + static_cast<long>(task) * 66;
    __stcg(pp + 2 * lane, acc.x);
    __stcg(pp + 2 * lane + 1, acc.y);
    if (lane == 0) {
      __stcg(pp + 64, m);
      __stcg(pp + 65, l);
    }
    if (!lk_last(ctr + bh, splits)) continue;
    // combine: lane s % 32 weighs slice s (exp(m_s - max), 0 for an empty slice: m = -inf), then every lane
    // sums its two dims over the slices, 8 loads in flight (the partials are in L2)
    pp = part + static_cast<long>(bh) * splits * 66;
    float mloc = -INFINITY;
    for (int s = lane; s < splits; s += 32) mloc = fmaxf(mloc, __ldcg(pp + s * 66 + 64));
    const float mmax = lk_max(mloc);
    float den = 0.f, ox = 0.f, oy = 0.f;
    for (int s0 = 0; s0 < splits; s0 += 32) {
      float wl = 0.f;
      if (s0 + lane < splits) {
        wl = expf(__ldcg(pp + (s0 + lane) * 66 + 64) - mmax);
        den += wl * __ldcg(pp + (s0 + lane) * 66 + 65);
      }
      const int n = splits - s0 < 32 ? splits - s0 : 32;
#pragma unroll 8
      for (int j = 0; j < n; ++j) {
        const float wj = __shfl_sync(0xffffffffu, wl, j);
        const float2 a = __ldcg(reinterpret_cast<const float2*>(pp + (s0 + j) * 66) + lane);
        ox += wj * a.x;
        oy += wj * a.y;
      }
    }
    den = lk_sum(den);
    out[bh * 64 + 2 * lane] = T(ox / den);
    out[bh * 64 + 2 * lane + 1] = T(oy / den);
  }
}
"""

# Inputs: x (B, 1, D); q (B, H, 1, 64); cache (2, B, H, M, 64) (this layer's); cache_next (the next layer's,
# written in place at position L - 1 with NEXT); len int32 [L, slot, M, S]; consts fp32 [eps, scale, layer];
# barrier int32 [SLOTS x SLOT_INTS]; then the layer's weights (the cross ones unread without CROSS; with
# ABSORB, w_cq and w_co hold kq and vo and cross_k / cross_v are unread; the next layer's unread without
# NEXT). Outputs: y (B, 1, D); qn (B, H, 1, 64) (NEXT); ws (fp32 scratch: the T activations, the attention
# partials, the probe's timestamps).
SOURCE = """
  constexpr int H = D / 64;
  extern __shared__ __align__(16) unsigned char lk_smem[];
  T* xs = reinterpret_cast<T*>(lk_smem);
  __shared__ float stats[2 * B];
  // this launch's barrier words: the step's first slot + the layer's index (see layer_kernel.SLOTS)
  int* bar = const_cast<int*>(barrier) + @SLOT_INTS@ * ((len[1] + static_cast<int>(consts[2])) % @SLOTS@);
  int* ctr = bar + 4;  // per head: its attention slices done (lk_last)
  const float eps = consts[0], scale = consts[1];
  T* o = reinterpret_cast<T*>(ws);  // self-attention output (B, D)
  T* x1 = o + B * D;                // after the self-attention residual
  T* qc = o + 2 * B * D;            // cross-attention query
  T* oc = o + 3 * B * D;            // cross-attention output
  T* x2 = o + 4 * B * D;            // after the cross-attention residual
  T* hf = o + 5 * B * D;            // GELU(fc1) (B, F)
  float* part = ws + (5 * B * D + B * F) * sizeof(T) / 4;  // attention partials (B * H * MAXSPLIT * 66)
  LkSync sy{bar, TIMING ? reinterpret_cast<unsigned int*>(part + B * H * MAXSPLIT * 66) : nullptr, 0};
  if (TIMING && blockIdx.x == 0 && threadIdx.x == 0) sy.tm[0] = lk_now();

  // 1. self-attention over the cache (this step's k / v already written at position len - 1)
  lk_prefetch<T, D, D, 1>(w_o);
  // the cache's length and the text's are run-time values (len[2], len[3]): one compiled kernel per model
  const long tmax = len[2];
  lk_attention<T, B, H, MAXSPLIT>(q, cache, cache + B * H * tmax * 64, tmax * 64, len[0], scale, part, o,
                                  ctr);
  lk_barrier(sy);
  // 2. x1 = x + out_proj(o)
  lk_stage<T, B, D>(o, nullptr, nullptr, 0.f, xs, stats);
  lk_gemv<T, B, D, D, 1>(w_o, xs, [&](int b, int n, float s) {
    x1[b * D + n] = T(static_cast<float>(x[b * D + n]) + static_cast<float>(T(s)));
  });
  if (CROSS && ABSORB) {
    lk_prefetch_n<T, D, 1>(w_cq, B * H * len[3]);
  } else if (CROSS) {
    lk_prefetch<T, D, D, 1>(w_cq);
  } else {
    lk_prefetch<T, D, F, 2>(w_1);
  }
  lk_barrier(sy);
  const T* xr = x1;
  if (CROSS && ABSORB) {
    // 3. the cross-attention with its two products absorbed into the text's keys and values
    // (layer_kernel.absorb_cross): w_cq holds kq, row (b, h, j) = W_q[h]^T k[b, h, j] (B x H x text rows),
    // w_co holds vo, row (b, n) = W_o[n, h] . v[b, h, j] over the columns (h, j), zeros up to HTP: the
    // scores are kq . LayerNorm(x1) and x2 = x1 + vo . softmax (one grid barrier and no attention stage
    // fewer; no more bytes than W_q + W_o while B x text <= 64)
    const int text = len[3];
    lk_stage<T, B, D>(x1, ln2_g, ln2_b, eps, xs, stats);
    lk_gemv_own<T, T, D, 1>(w_cq, B * H * text, H * text, xs,
                            [&](int r, float s) { __stcg(part + r, s * scale); });
    lk_prefetch_n<T, HTP, 2>(w_co, B * D);
    lk_barrier(sy);
    float* p = reinterpret_cast<float*>(lk_smem);  // B x HTP probabilities (fp32) where the rows were staged
    lk_softmax_rows<B, H, HTP>(part, text, p);
    lk_gemv_own<T, float, HTP, 2>(w_co, B * D, D, p, [&](int r, float s) {
      x2[r] = T(lk_cg(x1 + r) + static_cast<float>(T(s)));
    });
    lk_prefetch<T, D, F, 2>(w_1);
    lk_barrier(sy);
    xr = x2;
  } else if (CROSS) {
    // 3. cross-attention: q of LayerNorm(x1), attention over the text's len[3] keys, x2 = x1 + out(oc)
    // (tried: the query and the attention in one stage, by the warp that completes a head's query; slower,
    // the grid waits for that warp's whole attention: bench/results/2026-12-01-h200-r5/)
    const int text = len[3];
    lk_stage<T, B, D>(x1, ln2_g, ln2_b, eps, xs, stats);
    lk_gemv<T, B, D, D, 1>(w_cq, xs, [&](int b, int n, float s) { qc[b * D + n] = T(s); });
    lk_prefetch<T, D, D, 1>(w_co);
    lk_barrier(sy);
    lk_attention<T, B, H, MAXSPLIT>(qc, cross_k, cross_v, static_cast<long>(text) * 64, text, scale, part, oc,
                                    ctr);
    lk_barrier(sy);
    lk_stage<T, B, D>(oc, nullptr, nullptr, 0.f, xs, stats);
    lk_gemv<T, B, D, D, 1>(w_co, xs, [&](int b, int n, float s) {
      x2[b * D + n] = T(lk_cg(x1 + b * D + n) + static_cast<float>(T(s)));
    });
    lk_prefetch<T, D, F, 2>(w_1);
    lk_barrier(sy);
    xr = x2;
  }
  // 4. feed-forward: GELU(fc1(LayerNorm(xr))), y = xr + fc2(.)
  lk_stage<T, B, D>(xr, ln3_g, ln3_b, eps, xs, stats);
  lk_gemv<T, B, D, F, 2>(w_1, xs, [&](int b, int n, float s) {
    const float v = static_cast<float>(T(s));
    hf[b * F + n] = T(0.5f * v * (1.f + erff(v * 0.7071067811865476f)));
  });
  lk_prefetch<T, F, D, 1>(w_2);
  lk_barrier(sy);
  lk_stage<T, B, F>(hf, nullptr, nullptr, 0.f, xs, stats);
  lk_gemv<T, B, F, D, 1>(w_2, xs, [&](int b, int n, float s) {
    y[b * D + n] = T(lk_cg(xr + b * D + n) + static_cast<float>(T(s)));
  });
  if (NEXT) {
    // 5. the next layer's LayerNorm + QKV: q (B, H, 1, 64) out, k / v into the next layer's cache at L - 1
    // (in place: that cache is read only by the next layer's launch, which follows this one)
    lk_prefetch<T, D, 3 * D, 2>(w_qkv);
    lk_barrier(sy);
    lk_stage<T, B, D>(y, ln1_g, ln1_b, eps, xs, stats);
    T* kv_next = const_cast<T*>(cache_next) + static_cast<long>(len[0] - 1) * 64;
    lk_gemv<T, B, D, 3 * D, 2>(w_qkv, xs, [&](int b, int n, float s) {
      if (n < D) {
        qn[b * D + n] = T(s);
      } else {
        const int c = n % D;  // k (n / D == 1) or v (2) of head c / 64, dim c % 64
        kv_next[((static_cast<long>(n / D - 1) * B + b) * H + c / 64) * tmax * 64 + c % 64] = T(s);
      }
    });
    // warm L2 with the next layer's cached K / V (its first stage reads them; one 128-byte line a position)
    const int cached = len[0] - 1;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 2 * B * H * cached; i += gridDim.x * blockDim.x) {
      const T* row = cache_next + (static_cast<long>(i / cached) * tmax + i % cached) * 64;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(row));
    }
  }
  if (TIMING && blockIdx.x == 0 && threadIdx.x == 0) {
    sy.tm[1] = lk_now();
    sy.tm[@TM_COUNT@] = sy.k;
  }
"""

INPUTS = [
    "x", "q", "cache", "cache_next", "len", "consts", "barrier",
    "w_o", "ln2_g", "ln2_b", "w_cq", "cross_k", "cross_v", "w_co",
    "ln3_g", "ln3_b", "w_1", "w_2", "ln1_g", "ln1_b", "w_qkv",
]  # fmt: skip
OUTPUTS = ["y", "qn", "ws"]
