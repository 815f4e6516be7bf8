"""A DiT self-attention's queries and keys from its fused QKV product as one CUDA kernel (MLX CUDA backend).

Why (bench/dit_profile.py under Nsight Compute, H200, docs/benchmarks.md "round 9"): MLX runs q / k's
preparation as several kernels a block. Each partial rotary embedding first copies its strided input (the
split view of the QKV product) and then rotates it in place: 22 µs a call at Stable Audio 1.0's shape, a
tenth of its DiT call. Its output is laid out (B, H, N, D), so the attention's output is too and the
output projection's reshape copies it once more; with QK LayerNorm (Stable Audio small) two more kernels.

`qk(qkv, heads, rotary_dim, periods, norm)`: for qkv (B, N, 3 H D) = [q | k | v] (the reference's
`to_qkv` layout), q and k as (B, H, N, D) **views of heads-last buffers** (B, N, H, D), each head
  1. optionally LayerNorm'ed over D (`norm` = (weight, bias, eps)), rounded to the input type as the
     reference's fp16 / bf16 LayerNorm output is;
  2. rotated on its first `rotary_dim` dims (rotate-half layout, positions 0..N-1, angle n / period in
     float32, the rotation in float32 and rounded once, as the reference's float32 rotary).
`q_norm(q, heads, weight, bias, eps)`: a cross-attention's q product (B, N, H D) with its heads
LayerNorm'ed, the same way. Attention over such views writes heads-last output (cuDNN follows q's layout;
attention_kernel writes it), so the output projection reads it without a copy. One warp takes up to 8
head vectors of a token, computing the token's angles once (its products must start aligned to a head
vector: fresh arrays, as the DiT's are, or views that skip whole tokens). `reference` and
`q_norm_reference` are the same maths as MLX ops (what the CPU, Metal and float32 run); `takes`,
`supported` and `q_norm_supported` say where the kernel runs. `ENABLED = False` turns it off (an A/B
knob).
"""

from __future__ import annotations

import functools

import mlx.core as mx

from .devices import float_bits, on_cuda

ENABLED = True
WARPS = 4  # warps per block
MAX_SLICES = 12  # head vectors a warp takes at most: the grid's waves against each warp's work (see below)

_NORM = """
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) s += x[e];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float mean = s / D;
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) q += (x[e] - mean) * (x[e] - mean);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
    const float inv = rsqrtf(q / D + __int_as_float(EPS_BITS));
    const T* g = GAMMA;
    const T* bb = BETA;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float y = (x[e] - mean) * inv * static_cast<float>(g[i0 + e]) + static_cast<float>(bb[i0 + e]);
      x[e] = static_cast<float>(static_cast<T>(y));  // the reference's LayerNorm output is of the input type
    }
"""

# One warp takes SLICES head vectors (D wide, D / 32 elements a lane) of one token: q's heads then k's.
# The angles depend on the token and the lane only, so each warp computes its lane's cos / sin once for
# all of them. (Eight elements a lane, four vectors a warp pass, measured slower: 17.9 against 14.4 µs a
# call at Stable Audio 1.0's shape.) At that shape (48 vectors a token) bench/row_probe.py under ncu gave
# 15.9 / 14.6 / 13.9 / 14.2 µs for 4 / 8 / 12 / 16 vectors a warp: 12 fills the GPU in one wave of blocks.
_SOURCE = """
  constexpr int E = D / 32;                         // elements per lane
  constexpr int SWAP = R > 0 ? R / (2 * E) : 0;     // lane distance of a rotation pair (0: no rotation)
  constexpr int WPT = PARTS * H / SLICES;           // warps per token
  struct alignas(2 * E) Vec { T v[E]; };
  const int lane = threadIdx.x & 31;
  const int w = static_cast<int>((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  if (w >= B * N * WPT) return;
  const int token = w / WPT;
  const int first = (w - token * WPT) * SLICES;
  const int n = token % N;  // the position
  const int i0 = lane * E;
  float c[E], sn[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int i = i0 + e;
    c[e] = 1.f;
    sn[e] = 0.f;
    if (R > 0 && i < R) {
      const float theta = static_cast<float>(n) * (1.0f / periods[i < R / 2 ? i : i - R / 2]);
      c[e] = cosf(theta);
      sn[e] = i < R / 2 ? -sinf(theta) : sinf(theta);  // the sign of rotate-half's partner
    }
  }
#pragma unroll 4
  for (int sl = first; sl < first + SLICES; ++sl) {
    const int which = sl / H;  // 0: q, 1: k
    const int h = sl - which * H;
    const Vec in = *reinterpret_cast<const Vec*>(
        src + (static_cast<long>(token) * SRC + which * H + h) * D + i0);
    float x[E];
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = static_cast<float>(in.v[e]);
NORM_BLOCK
    Vec out;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float other = SWAP > 0 ? __shfl_xor_sync(0xffffffffu, x[e], SWAP) : 0.f;  // all lanes take part
      out.v[e] = static_cast<T>(R > 0 && i0 + e < R ? x[e] * c[e] + other * sn[e] : x[e]);
    }
    *reinterpret_cast<Vec*>(DST + (static_cast<long>(token) * H + h) * D + i0) = out;
  }
"""


def kernel_source(norm: bool, parts: int = 2) -> str:
    """The kernel's body: with QK LayerNorm or not, q and k (parts 2, from a fused QKV product) or q only
    (parts 1, from a q product)."""
    two = parts == 2
    body = _NORM.replace("GAMMA", "which ? k_weight : q_weight" if two else "q_weight")
    body = body.replace("BETA", "which ? k_bias : q_bias" if two else "q_bias")
    return _SOURCE.replace("NORM_BLOCK", body if norm else "").replace(
        "DST", "(which ? k_out : q_out)" if two else "q_out"
    )


def slices_per_warp(parts: int, heads: int) -> int:
    """Head vectors a warp takes: the most, up to MAX_SLICES, that divide parts x heads."""
    total = parts * heads
    return next(s for s in (16, 12, 8, 6, 4, 3, 2, 1) if s <= MAX_SLICES and total % s == 0)


@functools.cache
def _kernel(norm: bool, parts: int) -> object:
    names = ["src", "periods"]
    if norm:
        names += ["q_weight", "q_bias"] + (["k_weight", "k_bias"] if parts == 2 else [])
    return mx.fast.cuda_kernel(
        name=f"mag_{'qk' if parts == 2 else 'q'}{'_norm' if norm else ''}_rope",
        input_names=names,
        output_names=["q_out", "k_out"][:parts],
        source=kernel_source(norm, parts),
        ensure_row_contiguous=True,
    )


Norm = tuple[mx.array, mx.array, mx.array, mx.array, float]  # q weight, q bias, k weight, k bias, eps


def _head_dim(x: mx.array, slices: int) -> int | None:
    """The head dim of a product (B, N, slices x D) the kernel reads, None where it does not."""
    if x.ndim != 3 or x.dtype not in (mx.float16, mx.bfloat16) or slices <= 0 or x.shape[-1] % slices:
        return None
    d = x.shape[-1] // slices
    return d if d in (64, 128) and x.size > 0 else None


def takes(qkv: mx.array, heads: int, rotary_dim: int, norm: Norm | None = None) -> bool:
    """Whether the kernel computes this product's q / k: fp16 / bf16, head dim 64 or 128, a rotary dim that
    pairs lanes by XOR (an even multiple of D / 32 whose lane distance is a power of two), norm weights of
    the head dim."""
    d = _head_dim(qkv, 3 * heads)
    if d is None or not 0 < rotary_dim <= d:
        return False
    e = d // 32
    swap = rotary_dim // (2 * e)
    if rotary_dim % (2 * e) or swap & (swap - 1):
        return False
    return norm is None or all(tuple(a.shape) == (d,) for a in norm[:4])


def supported(qkv: mx.array, heads: int, rotary_dim: int, norm: Norm | None = None) -> bool:
    """Whether the kernel runs here: switched on, on CUDA, for what `takes` accepts."""
    return ENABLED and on_cuda() and takes(qkv, heads, rotary_dim, norm)


def q_norm_supported(q: mx.array, heads: int, weight: mx.array, bias: mx.array) -> bool:
    """Whether the kernel LayerNorms this q product's heads here (a cross-attention's queries)."""
    d = _head_dim(q, heads)
    return ENABLED and on_cuda() and d is not None and weight.shape == bias.shape == (d,)


def split(qkv: mx.array, heads: int) -> list[mx.array]:
    """q, k, v of a fused QKV product as (B, H, N, D) views (split views, not integer indexing: that would be
    a gather kernel each on MLX)."""
    b, n, _ = qkv.shape
    return [a.reshape(b, n, heads, -1).transpose(0, 2, 1, 3) for a in mx.split(qkv, 3, axis=-1)]


def values(qkv: mx.array, heads: int) -> mx.array:
    """v as (B, H, N, D): a view of the product."""
    return split(qkv, heads)[2]


def reference(
    qkv: mx.array, heads: int, rotary_dim: int, periods: mx.array, norm: Norm | None = None
) -> tuple[mx.array, mx.array]:
    """q, k as (B, H, N, D) by MLX's ops (layer_norm, then rope on the first rotary_dim dims)."""
    q, k, _ = split(qkv, heads)
    if norm is not None:
        qw, qb, kw, kb, eps = norm
        q, k = mx.fast.layer_norm(q, qw, qb, eps), mx.fast.layer_norm(k, kw, kb, eps)
    rot = functools.partial(mx.fast.rope, traditional=False, base=None, scale=1.0, offset=0, freqs=periods)
    return rot(q, rotary_dim), rot(k, rotary_dim)


def q_norm_reference(q: mx.array, heads: int, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
    b, n, _ = q.shape
    return mx.fast.layer_norm(q.reshape(b, n, heads, -1).transpose(0, 2, 1, 3), weight, bias, eps)


def _run(src: mx.array, heads: int, parts: int, rotary_dim: int, periods, norm) -> list[mx.array]:
    b, n, width = src.shape
    d = width // ((3 if parts == 2 else 1) * heads)
    slices = slices_per_warp(parts, heads)
    inputs = [src, mx.ones((1,), mx.float32) if periods is None else periods.astype(mx.float32)]
    template = [("T", src.dtype), ("D", d), ("H", heads), ("N", n), ("B", b), ("R", rotary_dim),
                ("SRC", width // d), ("PARTS", parts), ("SLICES", slices)]  # fmt: skip
    if norm is not None:
        inputs += [a.astype(src.dtype) for a in norm[:-1]]
        template.append(("EPS_BITS", float_bits(norm[-1])))
    warps = b * n * parts * heads // slices
    outs = _kernel(norm is not None, parts)(
        inputs=inputs,
        template=template,
        grid=(-(-warps // WARPS) * WARPS * 32, 1, 1),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[(b, n, heads, d)] * parts,
        output_dtypes=[src.dtype] * parts,
    )
    return [o.transpose(0, 2, 1, 3) for o in outs]


def qk(
    qkv: mx.array, heads: int, rotary_dim: int, periods: mx.array, norm: Norm | None = None
) -> tuple[mx.array, mx.array]:
    """q, k as (B, H, N, D): the kernel where `supported` (views of heads-last buffers), else `reference`."""
    if not supported(qkv, heads, rotary_dim, norm):
        return reference(qkv, heads, rotary_dim, periods, norm)
    q, k = _run(qkv, heads, 2, rotary_dim, periods, norm)
    return q, k


def q_norm(q: mx.array, heads: int, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
    """A q product's heads LayerNorm'ed, as (B, H, N, D): the kernel where supported (a view of a
    heads-last buffer), else `q_norm_reference`."""
    if not q_norm_supported(q, heads, weight, bias):
        return q_norm_reference(q, heads, weight, bias, eps)
    return _run(q, heads, 1, 0, None, (weight, bias, eps))[0]
