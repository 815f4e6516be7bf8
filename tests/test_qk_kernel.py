"""The DiT's q / k kernel (mlx_audio_generate/qk_kernel.py: split, QK LayerNorm, partial rotary) against
MLX's ops.

The kernel runs on MLX's CUDA backend only: those tests are skipped elsewhere and run on the GPU machine,
against the reference in float32 on the CPU. Everywhere: the shape rules, the CPU's fallback, and the
reference against the layer norm and rope it stands for. Its source compiles with nvcc in
tests/test_cuda_sources.py; the Stable Audio DiT's fp32 parity tests run the reference path.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate import qk_kernel, row_kernels
from mlx_audio_generate.diffusion.dit_parts import rope_inv_freq
from tests.reference.parity import rel_err
from tests.tiny_dit import cpu_forward, dit_inputs, tiny_dit

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend (run on the GPU machine)")


def inputs(b, n, h, d, r, norm: bool, dtype=mx.float32, seed=0):
    mx.random.seed(seed)
    qkv = (3 * mx.random.normal((b, n, 3 * h * d))).astype(dtype)
    periods = mx.array(1.0 / rope_inv_freq(r))
    ln = None
    if norm:
        qw, qb, kw, kb = (mx.random.normal((d,)).astype(dtype) for _ in range(4))
        ln = (qw, qb, kw, kb, 1e-6)
    mx.eval(qkv, periods, *(ln[:4] if ln else ()))
    return qkv, periods, ln


def exact(qkv, heads, r, periods, norm):
    """The reference in float32 on the CPU."""
    f32 = None if norm is None else (*(a.astype(mx.float32) for a in norm[:4]), norm[4])
    with mx.stream(mx.cpu):
        q, k = qk_kernel.reference(qkv.astype(mx.float32), heads, r, periods, f32)
        mx.eval(q, k)
    return q, k


def test_reference_is_layer_norm_then_rope():
    qkv, periods, ln = inputs(2, 9, 3, 64, 32, norm=True)
    q, k = qk_kernel.reference(qkv, 3, 32, periods, ln)
    assert q.shape == k.shape == (2, 3, 9, 64)
    heads = [a.reshape(2, 9, 3, 64).transpose(0, 2, 1, 3) for a in mx.split(qkv, 3, axis=-1)]
    for got, a, (w, b) in ((q, heads[0], ln[0:2]), (k, heads[1], ln[2:4])):
        normed = mx.fast.layer_norm(a, w, b, 1e-6)
        expect = mx.fast.rope(normed, 32, traditional=False, base=None, scale=1.0, offset=0, freqs=periods)
        np.testing.assert_array_equal(np.array(got), np.array(expect))
    np.testing.assert_array_equal(np.array(qk_kernel.values(qkv, 3)), np.array(heads[2]))


def test_cpu_takes_the_reference():
    qkv, periods, ln = inputs(1, 5, 2, 64, 32, norm=True, dtype=mx.float16)
    with mx.stream(mx.cpu):
        assert not qk_kernel.supported(qkv, 2, 32, ln)
        got, want = qk_kernel.qk(qkv, 2, 32, periods, ln), qk_kernel.reference(qkv, 2, 32, periods, ln)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b))


def test_the_shapes_the_kernel_takes():
    qkv = mx.zeros((2, 1025, 3 * 24 * 64), mx.float16)
    assert qk_kernel.takes(qkv, 24, 32)  # Stable Audio 1.0
    assert qk_kernel.supported(qkv, 24, 32) == ON_CUDA
    assert qk_kernel.takes(mx.zeros((1, 257, 3 * 8 * 128), mx.bfloat16), 8, 64)  # small
    assert qk_kernel.takes(qkv, 24, 64)  # the whole head rotated
    assert not qk_kernel.takes(qkv.astype(mx.float32), 24, 32)  # float32: MLX's ops
    assert not qk_kernel.takes(mx.zeros((2, 5, 3 * 4 * 32), mx.float16), 4, 16)  # head dim 32
    assert not qk_kernel.takes(qkv, 24, 48)  # lane distance 12: not a power of two
    assert not qk_kernel.takes(qkv, 24, 2)  # fewer rotated dims than a lane holds twice
    assert not qk_kernel.takes(qkv, 24, 96)  # more than the head
    assert not qk_kernel.takes(qkv, 25, 32)  # the width is not 3 x heads x head dim
    assert not qk_kernel.takes(qkv[0], 24, 32)  # 2-D
    ln = tuple(mx.zeros((64,), mx.float16) for _ in range(4)) + (1e-6,)
    assert qk_kernel.takes(qkv, 24, 32, ln)
    assert not qk_kernel.takes(qkv, 24, 32, (mx.zeros((32,)),) + ln[1:])  # norm weights of another width


def test_the_q_products_the_norm_takes():
    q, w = mx.zeros((1, 257, 8 * 128), mx.float16), mx.ones((128,), mx.float16)
    assert qk_kernel.q_norm_supported(q, 8, w, w) == ON_CUDA
    with mx.stream(mx.cpu):
        assert not qk_kernel.q_norm_supported(q, 8, w, w)
        got = qk_kernel.q_norm(q + 1, 8, w, w, 1e-6)
        np.testing.assert_array_equal(
            np.array(got), np.array(qk_kernel.q_norm_reference(q + 1, 8, w, w, 1e-6))
        )
    assert qk_kernel.q_norm_reference(q, 8, w, w, 1e-6).shape == (1, 8, 257, 128)
    if ON_CUDA:
        assert qk_kernel.q_norm_supported(q, 16, w[:64], w[:64])  # 16 heads of 64
        assert not qk_kernel.q_norm_supported(q, 16, w, w)  # head dim 64 against weights of 128
        assert not qk_kernel.q_norm_supported(q, 32, w[:32], w[:32])  # head dim 32
        assert not qk_kernel.q_norm_supported(q.astype(mx.float32), 8, w, w)


def test_switched_off_takes_the_reference(monkeypatch):
    monkeypatch.setattr(qk_kernel, "ENABLED", False)
    assert not qk_kernel.supported(mx.zeros((2, 1025, 3 * 24 * 64), mx.float16), 24, 32)


@gpu
@pytest.mark.parametrize(
    "b, n, h, d, r, norm",
    [
        (2, 1025, 24, 64, 32, False),  # Stable Audio 1.0, CFG pair
        (1, 257, 8, 128, 64, True),  # small, QK LayerNorm
        (3, 7, 2, 64, 64, True),  # the whole head rotated
        (1, 1, 4, 128, 32, False),  # one token
    ],
)
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_kernel_matches_the_reference(b, n, h, d, r, norm, dtype):
    qkv, periods, ln = inputs(b, n, h, d, r, norm, dtype)
    assert qk_kernel.supported(qkv, h, r, ln)
    q, k = qk_kernel.qk(qkv, h, r, periods, ln)
    assert q.shape == k.shape == (b, h, n, d) and q.dtype == dtype
    eq, ek = exact(qkv, h, r, periods, ln)
    tol = {mx.float16: 2e-3, mx.bfloat16: 1.6e-2}[dtype]
    assert rel_err(q, eq) <= tol and rel_err(k, ek) <= tol


@gpu
@pytest.mark.parametrize("shape", [(1, 257, 8, 128), (2, 1025, 24, 64), (1, 1, 4, 64)])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_q_norm_matches_the_reference(shape, dtype):
    b, n, h, d = shape
    mx.random.seed(1)
    q = (3 * mx.random.normal((b, n, h * d)) + 1).astype(dtype)
    w, bias = mx.random.normal((d,)).astype(dtype), mx.random.normal((d,)).astype(dtype)
    assert qk_kernel.q_norm_supported(q, h, w, bias)
    got = qk_kernel.q_norm(q, h, w, bias, 1e-6)
    assert got.shape == (b, h, n, d) and got.dtype == dtype
    with mx.stream(mx.cpu):
        f32 = [a.astype(mx.float32) for a in (q, w, bias)]
        want = qk_kernel.q_norm_reference(f32[0], h, f32[1], f32[2], 1e-6)
        mx.eval(want)
    assert rel_err(got, want) <= {mx.float16: 2e-3, mx.bfloat16: 1.6e-2}[dtype]


@gpu
@pytest.mark.parametrize("qk_norm", ["ln", "none"])
@pytest.mark.parametrize("compiled", [False, True])
def test_dit_with_the_kernels_on_the_gpu(qk_norm, compiled, monkeypatch):
    # fp16 on the GPU with and without this kernel and the row kernels (LayerNorm, GLU: width 256 and
    # 2 x 1024 here), against the fp32 CPU forward
    dit = tiny_dit(qk_norm)
    x, t, ctx, glob = dit_inputs()
    ref = cpu_forward(dit, x, t, ctx, glob)
    dit.set_dtype(mx.float16)
    dit.compiled = compiled
    cond = dit.condition(ctx, glob)
    errs = {}
    for on in (False, True):
        monkeypatch.setattr(qk_kernel, "ENABLED", on)
        monkeypatch.setattr(row_kernels, "ENABLED", on)
        dit._jit.fns.clear()  # traced with the other setting
        errs[on] = rel_err(dit.forward(x, t, cond), ref)
    assert errs[True] <= max(2 * errs[False], 5e-3), errs
