"""A DiT block's memory-bound row operations as CUDA kernels (MLX CUDA backend): LayerNorm and the GLU gate.

Why (bench/dit_profile.py under Nsight Compute, H200, docs/benchmarks.md "round 9"): at Stable Audio 1.0's
shape (2050 rows of 1536, the CFG pair) MLX's layer_norm took 11.6 µs a call, 1.1 TB/s of the H200's ~4.8,
72 calls a DiT call; the GLU's compiled `h * silu(gate)` read the feed-forward product's two halves as
strided views at 2.4 TB/s. LayerNorm gives each row to one warp and keeps it in registers; both kernels
load and store 16 bytes a thread at a time, so their inputs must start 16-byte aligned: fresh arrays, or
views that skip whole rows (all the DiTs pass; other views are copied by `ensure_row_contiguous`).

- `layer_norm(x, weight, bias, eps)`: rows of a width that is a multiple of 256, up to 4096; mean, then the
  mean of squared deviations (two passes over the registers, as MLX and torch compute it), all in float32;
  the weight and bias are fetched before the reductions up to 2048 wide (their latency behind them).
- `add_layer_norm(x, r, weight, bias, eps)`: (x + r, its LayerNorm) as one kernel: a residual add and the
  next pre-norm (the DiT's feed-forward add and the next block's norm; the add's own kernel read and wrote
  the rows once more, 6.6 µs a block at 1.0's shape). The sum is rounded to the dtype before it is
  normalised, as the two ops do.
- `glu(h)`: h = [x | gate] along the last axis (the product's own layout), x * silu(gate) in float32,
  rounded once; halves of a width that is a multiple of 8.

fp16 / bf16 on CUDA where `*_supported` holds (`ENABLED = False` turns them all off: an A/B knob); MLX's ops
elsewhere, which are the `*_reference` functions.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn

from .devices import float_bits, on_cuda

ENABLED = True
WARPS = 4  # warps (rows) per block
MAX_WIDTH = 4096  # a row in one warp's registers: 128 floats a lane (8192 spills)

_HEADER = """
// 8 elements of T <-> 8 floats through one 16-byte access
template <typename T>
__device__ __forceinline__ void row_unpack8(const uint4& raw, float* f) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(v[i]);
}
template <typename T>
__device__ __forceinline__ void row_load8(const T* p, float* f) {
  row_unpack8<T>(*reinterpret_cast<const uint4*>(p), f);
}
template <typename T>
__device__ __forceinline__ void row_store8(T* p, const float* f) {
  uint4 raw;
  T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = static_cast<T>(f[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ float row_warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}
"""

_LAYER_NORM = """
  constexpr int V = W / 256;  // 8-element vectors a lane
  // weight / bias fetched before the reductions, their latency behind them, where the registers allow
  constexpr bool EARLY = V <= 8;
  const int lane = threadIdx.x & 31;
  const long row = (static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= ROWS) return;
  uint4 wr[EARLY ? V : 1], br[EARLY ? V : 1];
  if constexpr (EARLY) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      wr[v] = *reinterpret_cast<const uint4*>(weight + (v * 32 + lane) * 8);
      br[v] = *reinterpret_cast<const uint4*>(bias + (v * 32 + lane) * 8);
    }
  }
  float f[V][8];
LOAD_ROW
  float s = 0.f;
#pragma unroll
  for (int v = 0; v < V; ++v)
#pragma unroll
    for (int i = 0; i < 8; ++i) s += f[v][i];
  const float mean = row_warp_sum(s) / W;
  float q = 0.f;
#pragma unroll
  for (int v = 0; v < V; ++v)
#pragma unroll
    for (int i = 0; i < 8; ++i) q += (f[v][i] - mean) * (f[v][i] - mean);
  const float inv = rsqrtf(row_warp_sum(q) / W + __int_as_float(EPS_BITS));
  T* yr = y + row * W;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = (v * 32 + lane) * 8;
    float g[8], b[8];
    if constexpr (EARLY) {
      row_unpack8<T>(wr[v], g);
      row_unpack8<T>(br[v], b);
    } else {
      row_load8(weight + c, g);
      row_load8(bias + c, b);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) f[v][i] = (f[v][i] - mean) * inv * g[i] + b[i];
    row_store8(yr + c, f[v]);
  }
"""

# The row itself: x's, or (add_layer_norm) sum = x + r, stored and normalised as rounded to T (the sum the
# reference's `x + ff(...)` holds before its next LayerNorm).
_LOAD_X = """
  const T* xr = row < SPLIT ? x + row * W : x2 + (row - SPLIT) * W;
#pragma unroll
  for (int v = 0; v < V; ++v) row_load8(xr + (v * 32 + lane) * 8, f[v]);
"""
_LOAD_SUM = """
  const T* xr = row < SPLIT ? x + row * W : x2 + (row - SPLIT) * W;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int c = (v * 32 + lane) * 8;
    float a[8];
    row_load8(xr + c, f[v]);
    row_load8(r + row * W + c, a);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[v][i] += a[i];
    row_store8(sum + row * W + c, f[v]);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[v][i] = static_cast<float>(static_cast<T>(f[v][i]));
  }
"""

_GLU = """
  // one thread per 8 outputs: x = h[row, c:c+8], gate = h[row, F + c:F + c + 8]
  const long t = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= static_cast<long>(ROWS) * (F / 8)) return;
  const long row = t / (F / 8);
  const int c = static_cast<int>(t - row * (F / 8)) * 8;
  float a[8], g[8];
  row_load8(h + row * 2 * F + c, a);
  row_load8(h + row * 2 * F + F + c, g);
#pragma unroll
  for (int i = 0; i < 8; ++i) a[i] = a[i] * (g[i] / (1.0f + expf(-g[i])));
  row_store8(y + row * F + c, a);
"""


_KERNELS = {  # which: (inputs, outputs, body)
    "layer_norm": (["x", "x2", "weight", "bias"], ["y"], _LAYER_NORM.replace("LOAD_ROW", _LOAD_X)),
    "add_layer_norm": (
        ["x", "x2", "r", "weight", "bias"],
        ["sum", "y"],
        _LAYER_NORM.replace("LOAD_ROW", _LOAD_SUM),
    ),  # fmt: skip
    "glu": (["h"], ["y"], _GLU),
}


@functools.cache
def _kernel(which: str) -> object:
    inputs, outputs, source = _KERNELS[which]
    return mx.fast.cuda_kernel(
        name=f"mag_row_{which}",
        input_names=inputs,
        output_names=outputs,
        source=source,
        header=_HEADER,
        ensure_row_contiguous=True,
    )


def kernel_source(which: str) -> tuple[str, str]:
    """(header, body) of a kernel, for the nvcc test."""
    return _HEADER, _KERNELS[which][2]


def _half(x: mx.array) -> bool:
    return x.dtype in (mx.float16, mx.bfloat16) and x.ndim >= 1 and x.size > 0


def layer_norm_takes(x: mx.array, weight: mx.array, bias: mx.array) -> bool:
    """Whether the kernel normalises these rows: fp16 / bf16, a width that is a multiple of 256 up to
    MAX_WIDTH, weight and bias of that width (of x's dtype or cast to it)."""
    w = x.shape[-1] if x.ndim else 0
    return (
        _half(x)
        and w % 256 == 0
        and 0 < w <= MAX_WIDTH
        and tuple(weight.shape) == (w,)
        and tuple(bias.shape) == (w,)
    )


def glu_takes(h: mx.array) -> bool:
    """Whether the kernel gates this product: fp16 / bf16, halves of a width that is a multiple of 8."""
    return _half(h) and h.shape[-1] % 16 == 0


def layer_norm_supported(x: mx.array, weight: mx.array, bias: mx.array) -> bool:
    return ENABLED and on_cuda() and layer_norm_takes(x, weight, bias)


def glu_supported(h: mx.array) -> bool:
    return ENABLED and on_cuda() and glu_takes(h)


def layer_norm_reference(x: mx.array, weight: mx.array, bias: mx.array, eps: float) -> mx.array:
    return mx.fast.layer_norm(x, weight, bias, eps)


def glu_reference(h: mx.array) -> mx.array:
    """x * silu(gate) for h = [x | gate] (split views of the product)."""
    a, gate = mx.split(h, 2, axis=-1)
    return a * nn.silu(gate)


def _rows_of(x: mx.array, tail: mx.array | None) -> mx.array:
    """The rows of x then tail's (along the first axis), as one array (what the kernels read in place)."""
    return x if tail is None else mx.concatenate([x, tail], axis=0)


def _joined_shape(x: mx.array, tail: mx.array | None) -> tuple[int, ...]:
    return tuple(x.shape) if tail is None else (x.shape[0] + tail.shape[0], *x.shape[1:])


def _tail_fits(x: mx.array, tail: mx.array | None) -> bool:
    return tail is None or (x.ndim >= 2 and tail.shape[1:] == x.shape[1:] and tail.dtype == x.dtype)


def _norm_call(
    which: str, x: mx.array, tail: mx.array | None, rest: list[mx.array], weight, bias, eps: float
) -> list:
    head = x.size // x.shape[-1]
    rows = head + (0 if tail is None else tail.size // tail.shape[-1])
    return _kernel(which)(
        inputs=[x, x if tail is None else tail, *rest, weight.astype(x.dtype), bias.astype(x.dtype)],
        template=[
            ("T", x.dtype),
            ("W", x.shape[-1]),
            ("ROWS", rows),
            ("SPLIT", head),
            ("EPS_BITS", float_bits(eps)),
        ],  # fmt: skip
        grid=(-(-rows // WARPS) * WARPS * 32, 1, 1),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[_joined_shape(x, tail)] * (1 + len(rest)),
        output_dtypes=[x.dtype] * (1 + len(rest)),
    )


def layer_norm(
    x: mx.array, weight: mx.array, bias: mx.array, eps: float, tail: mx.array | None = None
) -> mx.array:
    """LayerNorm over the last axis of x's rows then `tail`'s (along the first axis: read where they are,
    without joining them first): the kernel where supported, else MLX's."""
    if not (layer_norm_supported(x, weight, bias) and _tail_fits(x, tail)):
        return layer_norm_reference(_rows_of(x, tail), weight, bias, eps)
    return _norm_call("layer_norm", x, tail, [], weight, bias, eps)[0]


def add_layer_norm(
    x: mx.array, r: mx.array, weight: mx.array, bias: mx.array, eps: float, tail: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """(s, LayerNorm(s)) for s = [x; tail] + r: a residual add and the next pre-norm as one kernel where
    supported (r of the joined shape and x's dtype; it reads the rows once and writes both results), else
    MLX's ops."""
    if not (
        layer_norm_supported(x, weight, bias)
        and _tail_fits(x, tail)
        and tuple(r.shape) == _joined_shape(x, tail)
        and r.dtype == x.dtype
    ):
        s = _rows_of(x, tail) + r
        return s, layer_norm_reference(s, weight, bias, eps)
    s, y = _norm_call("add_layer_norm", x, tail, [r], weight, bias, eps)
    return s, y


def glu(h: mx.array) -> mx.array:
    """x * silu(gate) of h = [x | gate]: the kernel where supported, else MLX's ops."""
    if not glu_supported(h):
        return glu_reference(h)
    rows, f = h.size // h.shape[-1], h.shape[-1] // 2
    threads = rows * (f // 8)
    (y,) = _kernel("glu")(
        inputs=[h],
        template=[("T", h.dtype), ("F", f), ("ROWS", rows)],
        grid=(-(-threads // 256) * 256, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(*h.shape[:-1], f)],
        output_dtypes=[h.dtype],
    )
    return y
