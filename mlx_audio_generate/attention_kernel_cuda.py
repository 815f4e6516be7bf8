"""CUDA sources of the short-sequence attention kernel (attention_kernel.py holds the Python side).

Tensor cores for fp16 / bf16 (FlashAttention-2's scheme), fp32 accumulation: each warp takes 16 queries,
held in registers as mma.sync m16n8k16 A fragments. The block copies KEYS keys and values at a time into
shared memory with cp.async, the next chunk while this one is used (two buffers: the copies' latency, not
the arithmetic, is what a short sequence waits on). For each chunk a warp computes its 16 x KEYS scores,
folds them into an online softmax (a running maximum and sum per row) and adds P V; P is rounded to the
input type for that product, as cuDNN's kernels do. The scores' accumulator tiles are the A fragments of
P V as they are, and V's B fragments come from ldmatrix.trans.

It reads q / k / v through their strides (MLX passes `<name>_strides` to a source that names them), takes
an optional additive mask the same way, and writes the output heads-last, (B, N, H, D).
"""

HEADER = """
#define ATTN_FULL 0xffffffffu
__device__ __forceinline__ unsigned attn_pack(__half lo, __half hi) {
  __half2 v = __halves2half2(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ unsigned attn_pack(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  __nv_bfloat162 v = __halves2bfloat162(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ unsigned attn_pack_f(float lo, float hi, const __half*) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ unsigned attn_pack_f(float lo, float hi, const __nv_bfloat16*) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
// c += a b for a 16x16 (row) and b 16x8 (col) tile, one overload per input type
#define ATTN_MMA(TYPE, PTX)                                                                     \
  __device__ __forceinline__ void attn_mma(                                                     \
      float* c, const unsigned* a, unsigned b0, unsigned b1, const TYPE*) {                     \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX                           \
                 ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                   \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));               \
  }
ATTN_MMA(__half, "f16")
ATTN_MMA(__nv_bfloat16, "bf16")
// 16 bytes global -> shared without registers (completes at the wait)
__device__ __forceinline__ void attn_cp16(void* dst, const void* src) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(src));
}
__device__ __forceinline__ void attn_cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int PENDING>
__device__ __forceinline__ void attn_cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(PENDING)); }
// b fragments of two 8x8 tiles read transposed: rows (keys) from lanes 0-15's addresses
__device__ __forceinline__ void attn_ldmatrix_t(unsigned& b0, unsigned& b1, const void* row) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(a));
}
"""

SOURCE = """
  constexpr int NT = KEYS / 8;   // key tiles of a chunk
  constexpr int KS = D / 16;     // steps over the head dimension
  constexpr int DT = D / 8;      // output dimension tiles
  constexpr int VW = 8;          // elements per 16-byte staging load
  // Two buffers: the next chunk is copied in while this one is used. + 8: rows 16 bytes apart in the banks
  // (conflict-free fragment loads and ldmatrix).
  __shared__ __align__(16) T ks[2][KEYS][D + 8];
  __shared__ __align__(16) T vs[2][KEYS][D + 8];
  const T* tag = nullptr;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;  // fragment row group
  const int t = lane & 3;   // thread in the group
  const int b = blockIdx.y / H;
  const int h = blockIdx.y - b * H;
  const int hk = h / (H / HK);
  const int q0 = (blockIdx.x * WARPS + warp) * 16;
  const float scale = __int_as_float(SCALE_BITS);
  const T* qp = q + b * q_strides[0] + h * q_strides[1];
  const T* kp = k + b * k_strides[0] + hk * k_strides[1];
  const T* vp = v + b * v_strides[0] + hk * v_strides[1];
  const T zero = static_cast<T>(0.f);

  // This warp's 16 queries as A fragments, kept in registers for every chunk.
  unsigned qa[KS][4];
  auto qat = [&](int r, int c) -> T {
    const int n = q0 + r;
    return n < N ? qp[n * q_strides[2] + c * q_strides[3]] : zero;
  };
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    const int c = 16 * s + 2 * t;
    qa[s][0] = attn_pack(qat(g, c), qat(g, c + 1));
    qa[s][1] = attn_pack(qat(g + 8, c), qat(g + 8, c + 1));
    qa[s][2] = attn_pack(qat(g, c + 8), qat(g, c + 9));
    qa[s][3] = attn_pack(qat(g + 8, c + 8), qat(g + 8, c + 9));
  }
  const bool vec = k_strides[3] == 1 && v_strides[3] == 1 && k_strides[2] % VW == 0 &&
      v_strides[2] % VW == 0 && reinterpret_cast<unsigned long long>(kp) % 16 == 0 &&
      reinterpret_cast<unsigned long long>(vp) % 16 == 0;

  float o[DT][4];
#pragma unroll
  for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8

  // Stage keys / values c0 .. c0 + KEYS - 1 (zeros past S) into buffer `buf` as one cp.async group.
  auto stage = [&](int buf, int c0) {
    if (vec) {
      for (int idx = threadIdx.x; idx < KEYS * D / VW; idx += WARPS * 32) {
        const int j = idx / (D / VW), d = (idx - j * (D / VW)) * VW;
        if (c0 + j < S) {
          attn_cp16(&ks[buf][j][d], kp + (c0 + j) * k_strides[2] + d);
          attn_cp16(&vs[buf][j][d], vp + (c0 + j) * v_strides[2] + d);
        } else {
          *reinterpret_cast<uint4*>(&ks[buf][j][d]) = make_uint4(0, 0, 0, 0);
          *reinterpret_cast<uint4*>(&vs[buf][j][d]) = make_uint4(0, 0, 0, 0);
        }
      }
    } else {
      for (int idx = threadIdx.x; idx < KEYS * D; idx += WARPS * 32) {
        const int j = idx / D, d = idx - j * D;
        const bool ok = c0 + j < S;
        ks[buf][j][d] = ok ? kp[(c0 + j) * k_strides[2] + d * k_strides[3]] : zero;
        vs[buf][j][d] = ok ? vp[(c0 + j) * v_strides[2] + d * v_strides[3]] : zero;
      }
    }
    attn_cp_commit();
  };

  stage(0, 0);
  for (int c0 = 0, buf = 0; c0 < S; c0 += KEYS, buf ^= 1) {
    if (c0 + KEYS < S) {
      stage(buf ^ 1, c0 + KEYS);  // its buffer's readers finished at the end of the last chunk
      attn_cp_wait<1>();          // this chunk's group is complete, the next one may still be in flight
    } else {
      attn_cp_wait<0>();
    }
    __syncthreads();  // every thread's copies of this chunk are visible

    // Scores of 16 queries x KEYS keys.
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int st = 0; st < KS; ++st) {
        const T* kr = &ks[buf][8 * n + g][16 * st + 2 * t];
        attn_mma(s[n], qa[st], *reinterpret_cast<const unsigned*>(kr),
                 *reinterpret_cast<const unsigned*>(kr + 8), tag);
      }
    }
    // Scale, mask, drop the keys past S; each row's maximum over the 4 threads that hold it.
    float x0 = -INFINITY, x1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = c0 + 8 * n + 2 * t + (e & 1);
        float sc = s[n][e] * scale;
        ADD_MASK
        if (j >= S) sc = -INFINITY;
        s[n][e] = sc;
      }
      x0 = fmaxf(x0, fmaxf(s[n][0], s[n][1]));
      x1 = fmaxf(x1, fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int w = 1; w < 4; w <<= 1) {
      x0 = fmaxf(x0, __shfl_xor_sync(ATTN_FULL, x0, w));
      x1 = fmaxf(x1, __shfl_xor_sync(ATTN_FULL, x1, w));
    }
    // Online softmax: rescale what the earlier chunks summed to the new running maximum. l0 / l1 are this
    // thread's share of the row sums (added over the group at the end: the rescaling is the same for all).
    const float n0 = fmaxf(m0, x0), n1 = fmaxf(m1, x1);
    const float r0 = n0 == -INFINITY ? 1.f : expf(m0 - n0);
    const float r1 = n1 == -INFINITY ? 1.f : expf(m1 - n1);
    m0 = n0;
    m1 = n1;
    l0 *= r0;
    l1 *= r1;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      s[n][0] = n0 == -INFINITY ? 0.f : expf(s[n][0] - n0);
      s[n][1] = n0 == -INFINITY ? 0.f : expf(s[n][1] - n0);
      s[n][2] = n1 == -INFINITY ? 0.f : expf(s[n][2] - n1);
      s[n][3] = n1 == -INFINITY ? 0.f : expf(s[n][3] - n1);
      l0 += s[n][0] + s[n][1];
      l1 += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      o[i][0] *= r0;
      o[i][1] *= r0;
      o[i][2] *= r1;
      o[i][3] *= r1;
    }
    // o += P V: two score tiles are one A fragment (the accumulator layout is the operand layout).
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      unsigned pa[4];
      pa[0] = attn_pack_f(s[2 * kk][0], s[2 * kk][1], tag);
      pa[1] = attn_pack_f(s[2 * kk][2], s[2 * kk][3], tag);
      pa[2] = attn_pack_f(s[2 * kk + 1][0], s[2 * kk + 1][1], tag);
      pa[3] = attn_pack_f(s[2 * kk + 1][2], s[2 * kk + 1][3], tag);
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        unsigned b0, b1;
        attn_ldmatrix_t(b0, b1, &vs[buf][16 * kk + (lane & 15)][8 * i]);
        attn_mma(o[i], pa, b0, b1, tag);
      }
    }
    __syncthreads();  // this buffer's readers are done before the next chunk's copies into it
  }

#pragma unroll
  for (int w = 1; w < 4; w <<= 1) {
    l0 += __shfl_xor_sync(ATTN_FULL, l0, w);
    l1 += __shfl_xor_sync(ATTN_FULL, l1, w);
  }
  const float i0 = 1.f / l0, i1 = 1.f / l1;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int n = q0 + g + 8 * r;
    if (n < N) {
      T* out_row = out + ((size_t)(b * N + n) * H + h) * D + 2 * t;
      const float inv = r ? i1 : i0;
#pragma unroll
      for (int i = 0; i < DT; ++i) {
        *reinterpret_cast<unsigned*>(out_row + 8 * i) =
            attn_pack_f(o[i][2 * r] * inv, o[i][2 * r + 1] * inv, tag);
      }
    }
  }
"""

# The additive mask's term at score (query q0 + row, key j) (the unmasked kernel has no `mask` to name).
ADD_MASK = """{
          const int n = q0 + g + (e >> 1) * 8;
          if (j < S && n < N) {
            sc += static_cast<float>(mask[b * mask_strides[0] + h * mask_strides[1] + n * mask_strides[2] +
                                          j * mask_strides[3]]);
          }
        }"""
