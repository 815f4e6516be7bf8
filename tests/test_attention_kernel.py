"""The short-sequence attention kernel (mlx_audio_generate/attention_kernel.py) against MLX's attention.

The kernel runs on MLX's CUDA backend only: those tests are skipped elsewhere and run on the GPU machine.
Everywhere: the CPU takes the reference path, the reference is MLX's attention made heads-last, and the
Stable Audio DiT gives the same output with every attention choice (on the CPU "short" falls back to MLX's
fused attention). The CUDA source compiles with nvcc in tests/test_cuda_sources.py.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate import attention_kernel as ak
from tests.reference.parity import rel_err
from tests.tiny_dit import cpu_forward, dit_inputs, tiny_dit

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend (run on the GPU machine)")


def qkv(b, h, n, s, hk, d, dtype=mx.float32, seed=0):
    mx.random.seed(seed)
    q = mx.random.normal((b, h, n, d)).astype(dtype)
    k = mx.random.normal((b, hk, s, d)).astype(dtype)
    v = mx.random.normal((b, hk, s, d)).astype(dtype)
    mx.eval(q, k, v)
    return q, k, v


def exact(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """The reference in float32 on the CPU (MLX-CUDA's float32 products may round through TF32)."""
    with mx.stream(mx.cpu):
        out = ak.reference(*(x.astype(mx.float32) for x in (q, k, v)), scale, mask)
        mx.eval(out)
    return out


def test_reference_is_mlx_attention_heads_last():
    q, k, v = qkv(2, 4, 7, 5, 2, 64)
    ref = ak.reference(q, k, v, 0.3)
    assert ref.shape == (2, 7, 4, 64)
    expect = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(np.array(ref), np.array(expect))


def test_cpu_takes_the_reference():
    q, k, v = qkv(1, 2, 9, 9, 2, 64)
    with mx.stream(mx.cpu):
        assert not ak.supported(q, k, v)
        np.testing.assert_array_equal(
            np.array(ak.attend(q, k, v, 0.125)), np.array(ak.reference(q, k, v, 0.125))
        )


def test_the_shapes_the_kernel_takes():
    q, k, v = qkv(1, 8, 257, 257, 8, 128, mx.float16)
    assert ak.takes(q, k, v)
    assert ak.supported(q, k, v) == ON_CUDA
    assert not ak.takes(q, k[:, :, :1], v)  # K / V shapes differ
    assert not ak.takes(q[..., :32], k[..., :32], v[..., :32])  # head dim 32
    assert not ak.takes(*(x.astype(mx.float32) for x in (q, k, v)))  # float32: MLX's attention
    assert not ak.takes(q, k[:, :3], v[:, :3])  # 3 KV heads do not divide 8
    assert ak.takes(q, k[:, :2], v[:, :2])  # KV groups
    assert ak.takes(q, k, v, mx.zeros((257, 257), mx.float16))
    assert ak.takes(q, k, v, mx.zeros((1, 8, 1, 257), mx.float32))
    assert not ak.takes(q, k, v, mx.zeros((257, 257), mx.bool_))  # a boolean mask selects: MLX's
    assert not ak.takes(q, k, v, mx.zeros((2, 257, 257), mx.float16))  # 2 heads' rows against 8
    assert not ak.takes(q, k, v, mx.zeros((1, 1, 1, 1, 257), mx.float16))  # 5-D
    big = qkv(2, 24, 1000, 1000, 24, 64, mx.float16)
    assert not ak.takes(*big) and ak.takes(*big, force=True)  # past MAX_WORK: cuDNN is faster


@gpu
@pytest.mark.parametrize(
    "b, h, n, s, hk, d",
    [
        (1, 8, 257, 257, 8, 128),  # Stable Audio small, self-attention
        (1, 8, 257, 65, 8, 128),  # small, cross-attention
        (2, 24, 33, 130, 12, 64),  # 1.0's cross-attention heads, KV groups, fewer queries
        (3, 4, 17, 1, 2, 64),  # one key
        (1, 2, 5, 1000, 2, 128),  # many chunks
    ],
)
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])  # float32: MLX's attention
def test_kernel_matches_mlx_attention(b, h, n, s, hk, d, dtype):
    q, k, v = qkv(b, h, n, s, hk, d, dtype)
    assert ak.supported(q, k, v) == (dtype != mx.float32)
    out = ak.attend(q, k, v, d**-0.5)
    assert out.shape == (b, n, h, d) and out.dtype == dtype
    tol = {mx.float32: 1e-3, mx.float16: 2e-3, mx.bfloat16: 1.6e-2}[dtype]  # float32: TF32 products
    assert rel_err(out, exact(q, k, v, d**-0.5)) <= tol


@gpu
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_strided_views_are_read_in_place(dtype):
    # q / k / v as the split views of a fused QKV product, heads transposed: MLX passes their strides.
    b, n, h, d = 1, 70, 4, 128
    mx.random.seed(1)
    fused = mx.random.normal((b, n, 3 * h * d)).astype(dtype)
    q, k, v = (a.reshape(b, n, h, d).transpose(0, 2, 1, 3) for a in mx.split(fused, 3, axis=-1))
    tol = {mx.float16: 2e-3, mx.bfloat16: 1.6e-2}[dtype]
    assert rel_err(ak.attend(q, k, v, 0.1), exact(q, k, v, 0.1)) <= tol
    # an odd element offset (no vectorized staging) and a non-unit innermost stride
    q2, k2, v2 = q[..., 1:65], k[..., 1:65], v[..., 1:65]
    assert rel_err(ak.attend(q2, k2, v2, 0.1), exact(q2, k2, v2, 0.1)) <= tol
    q3, k3, v3 = q[..., ::2], k[..., ::2], v[..., ::2]
    assert rel_err(ak.attend(q3, k3, v3, 0.1), exact(q3, k3, v3, 0.1)) <= tol


@gpu
@pytest.mark.parametrize("mask_shape", [(1, 12, 64, 64), (64, 64), (2, 1, 1, 64)])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_additive_mask(mask_shape, dtype):
    # T5's position bias (one row per head) plus its padding mask, broadcast over the batch
    q, k, v = qkv(2, 12, 64, 64, 12, 64, dtype, seed=2)
    mask = mx.random.normal(mask_shape) * 3
    mask = mx.where(
        mx.arange(64) >= 50,
        mx.array(-65504.0 if dtype == mx.float16 else float(np.finfo(np.float32).min)),
        mask,
    ).astype(dtype)
    out = ak.attend(q, k, v, 1.0, mask)
    tol = {mx.float16: 2e-3, mx.bfloat16: 1.6e-2}[dtype]
    assert rel_err(out, exact(q, k, v, 1.0, mask.astype(mx.float32))) <= tol


def test_dit_attention_choices_agree():
    # fp32 on the CPU: "short" and "auto" fall back to MLX's fused attention there, "matmul" is its own path
    dit = tiny_dit()
    x, t, ctx, glob = dit_inputs()
    with mx.stream(mx.cpu):
        cond = dit.condition(ctx, glob)
        outs = {}
        for impl in ("sdpa", "short", "matmul", "auto"):
            dit.attention = impl
            outs[impl] = dit.forward(x, t, cond)
            mx.eval(outs[impl])
    for impl in ("short", "matmul", "auto"):
        assert rel_err(outs[impl], outs["sdpa"]) <= 1e-4, impl


@gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_dit_with_the_kernel_on_the_gpu(compiled):
    # fp16 on the GPU, each attention against the fp32 CPU forward: the kernel's error is cuDNN's
    dit = tiny_dit()
    x, t, ctx, glob = dit_inputs()
    dit.attention = "sdpa"
    ref = cpu_forward(dit, x, t, ctx, glob)
    dit.set_dtype(mx.float16)
    dit.compiled = compiled
    cond = dit.condition(ctx, glob)
    errs = {}
    for impl in ("sdpa", "short"):
        dit.attention = impl
        errs[impl] = rel_err(dit.forward(x, t, cond), ref)
    assert errs["short"] <= max(2 * errs["sdpa"], 5e-3), errs
