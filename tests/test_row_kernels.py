"""The DiT's row kernels (mlx_audio_generate/row_kernels.py: LayerNorm, add + LayerNorm, the GLU gate)
against MLX's ops.

The kernels run on MLX's CUDA backend only: those tests are skipped elsewhere and run on the GPU machine,
against the reference in float32 on the CPU. Everywhere: the shape rules and the CPU's fallback. The
sources compile with nvcc in tests/test_cuda_sources.py; the Stable Audio DiT's fp32 parity tests run the
reference path.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate import row_kernels as rk
from tests.reference.parity import rel_err

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend (run on the GPU machine)")


def rand(shape, dtype=mx.float32, seed=0, scale=1.0, shift=0.0):
    mx.random.seed(seed)
    a = (scale * mx.random.normal(shape) + shift).astype(dtype)
    mx.eval(a)
    return a


def on_cpu(fn, *arrays):
    with mx.stream(mx.cpu):
        out = fn(*(a.astype(mx.float32) if isinstance(a, mx.array) else a for a in arrays))
        mx.eval(out)
    return out


def test_the_shapes_the_kernels_take():
    x, w = mx.zeros((2, 1025, 1536), mx.float16), mx.ones((1536,), mx.float16)
    assert rk.layer_norm_takes(x, w, w)
    assert rk.layer_norm_supported(x, w, w) == ON_CUDA
    assert rk.layer_norm_takes(mx.zeros((7, 4096), mx.bfloat16), mx.ones((4096,)), mx.ones((4096,)))
    assert not rk.layer_norm_takes(mx.zeros((7, 8192), mx.float16), mx.ones((8192,)), mx.ones((8192,)))
    assert not rk.layer_norm_takes(mx.zeros((7, 128), mx.float16), mx.ones((128,)), mx.ones((128,)))
    assert not rk.layer_norm_takes(x.astype(mx.float32), w, w)  # float32: MLX's
    assert not rk.layer_norm_takes(x, w[:256], w)  # weight of another width
    assert not rk.layer_norm_takes(mx.zeros((0, 1536), mx.float16), w, w)  # no rows
    assert rk.glu_takes(mx.zeros((2, 1025, 12288), mx.float16))
    assert rk.glu_takes(mx.zeros((3, 16), mx.bfloat16))
    assert not rk.glu_takes(mx.zeros((3, 24), mx.float16))  # halves of 12: not vectors of 8
    assert not rk.glu_takes(mx.zeros((3, 32), mx.float32))


def test_switched_off_takes_the_reference(monkeypatch):
    monkeypatch.setattr(rk, "ENABLED", False)
    assert not rk.glu_supported(mx.zeros((3, 16), mx.float16))
    assert not rk.layer_norm_supported(mx.zeros((3, 256), mx.float16), mx.ones((256,)), mx.ones((256,)))


def test_cpu_takes_the_references():
    x, w, b = rand((3, 512), mx.float16), rand((512,), mx.float16, 1), rand((512,), mx.float16, 2)
    h = rand((3, 64), mx.float16, 3)
    with mx.stream(mx.cpu):
        np.testing.assert_array_equal(
            np.array(rk.layer_norm(x, w, b, 1e-5)), np.array(mx.fast.layer_norm(x, w, b, 1e-5))
        )
        a, gate = mx.split(h, 2, axis=-1)
        np.testing.assert_array_equal(np.array(rk.glu(h)), np.array(a * nn.silu(gate)))
        r = rand((3, 512), mx.float16, 4)
        s, y = rk.add_layer_norm(x, r, w, b, 1e-5)
        np.testing.assert_array_equal(np.array(s), np.array(x + r))
        np.testing.assert_array_equal(np.array(y), np.array(mx.fast.layer_norm(x + r, w, b, 1e-5)))


def test_rows_in_two_arrays_are_the_joined_rows():
    # layer_norm / add_layer_norm over x's rows then tail's: what the ops give on the joined array
    x, tail = rand((1, 3, 256), mx.float16), rand((2, 3, 256), mx.float16, 6)
    w, b, r = rand((256,), mx.float16, 1), rand((256,), mx.float16, 2), rand((3, 3, 256), mx.float16, 4)
    with mx.stream(mx.cpu):
        joined = mx.concatenate([x, tail])
        np.testing.assert_array_equal(
            np.array(rk.layer_norm(x, w, b, 1e-5, tail)), np.array(mx.fast.layer_norm(joined, w, b, 1e-5))
        )
        s, y = rk.add_layer_norm(x, r, w, b, 1e-5, tail)
        np.testing.assert_array_equal(np.array(s), np.array(joined + r))
        np.testing.assert_array_equal(np.array(y), np.array(mx.fast.layer_norm(joined + r, w, b, 1e-5)))


def test_add_layer_norm_of_unlike_operands_takes_the_ops():
    # a broadcast residual or another dtype is not the kernel's: the sum and the norm as MLX ops, everywhere
    x, w = rand((2, 3, 256), mx.float16), rand((256,), mx.float16, 1)
    for r in (rand((256,), mx.float16, 2), rand((2, 3, 256), mx.float32, 2)):
        s, y = rk.add_layer_norm(x, r, w, w, 1e-5)
        np.testing.assert_array_equal(np.array(s), np.array(x + r))
        np.testing.assert_array_equal(np.array(y), np.array(mx.fast.layer_norm(x + r, w, w, 1e-5)))


TOL = {mx.float16: 2e-3, mx.bfloat16: 1.6e-2}


@gpu
@pytest.mark.parametrize("shape", [(2, 1025, 1536), (1, 257, 1024), (3, 4096), (1, 256)])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_layer_norm_matches_the_reference(shape, dtype):
    # rows off zero with a spread of their own: the mean and the variance both matter
    x = rand(shape, dtype, scale=3.0, shift=2.0)
    w, b = rand(shape[-1:], dtype, 1), rand(shape[-1:], dtype, 2)
    assert rk.layer_norm_supported(x, w, b)
    y = rk.layer_norm(x, w, b, 1e-5)
    assert y.shape == x.shape and y.dtype == dtype
    assert rel_err(y, on_cpu(lambda *a: mx.fast.layer_norm(*a, 1e-5), x, w, b)) <= TOL[dtype]


@gpu
@pytest.mark.parametrize("shape", [(2, 1025, 1536), (1, 257, 1024), (3, 4096)])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_add_layer_norm_matches_the_reference(shape, dtype):
    x, r = rand(shape, dtype, scale=3.0, shift=2.0), rand(shape, dtype, 5, scale=2.0)
    w, b = rand(shape[-1:], dtype, 1), rand(shape[-1:], dtype, 2)
    s, y = rk.add_layer_norm(x, r, w, b, 1e-5)
    assert s.shape == y.shape == x.shape and s.dtype == y.dtype == dtype
    # the sum is x + r rounded to the dtype (as MLX's add rounds it: equal but for a rare double rounding)
    with mx.stream(mx.cpu):
        s_ref = x + r
        mx.eval(s_ref)
    assert mx.mean((s == s_ref).astype(mx.float32)).item() >= 0.999
    assert rel_err(s.astype(mx.float32), s_ref.astype(mx.float32)) <= 1e-3
    # the norm is of that rounded sum
    assert rel_err(y, on_cpu(lambda *a: mx.fast.layer_norm(*a, 1e-5), s_ref, w, b)) <= TOL[dtype]


@gpu
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_rows_in_two_arrays_on_the_gpu(split, dtype):
    # the stream after a skipped null half: the conditional rows fresh, the rest a view into another array
    whole = rand((4, 1025, 1536), dtype, scale=3.0, shift=2.0)
    x, tail = rand((split, 1025, 1536), dtype, 7, scale=3.0), whole[split:]
    r, w, b = rand((4, 1025, 1536), dtype, 5), rand((1536,), dtype, 1), rand((1536,), dtype, 2)
    joined = on_cpu(lambda a, c: mx.concatenate([a, c]), x, tail)
    want = on_cpu(lambda *a: mx.fast.layer_norm(*a, 1e-5), joined, w, b)
    assert rel_err(rk.layer_norm(x, w, b, 1e-5, tail), want) <= TOL[dtype]
    s, y = rk.add_layer_norm(x, r, w, b, 1e-5, tail)
    with mx.stream(mx.cpu):
        s_ref = mx.concatenate([x, tail]) + r
        mx.eval(s_ref)
    assert mx.mean((s == s_ref).astype(mx.float32)).item() >= 0.999
    assert rel_err(y, on_cpu(lambda *a: mx.fast.layer_norm(*a, 1e-5), s_ref, w, b)) <= TOL[dtype]


@gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_guided_dit_with_the_null_half_skipped_on_the_gpu(compiled):
    # a CFG pair without a negative prompt in fp16 on the GPU (row kernels on the split stream) against
    # the float32 guided DiT on the CPU
    from tests.tiny_dit import dit_inputs, tiny_dit

    dit = tiny_dit()
    x, t, ctx, glob = dit_inputs()
    with mx.stream(mx.cpu):
        want = dit.guided(x, t, dit.cfg_condition(ctx, glob, 7.0), 7.0)
        mx.eval(want)
    dit.set_dtype(mx.float16)
    dit.compiled = compiled
    c = dit.cfg_condition(ctx, glob, 7.0)
    assert c.null_uncond
    got = dit.guided(x, t, c, 7.0)
    assert rel_err(got.astype(mx.float32), want) <= 2e-2


@gpu
@pytest.mark.parametrize("shape", [(2, 1025, 12288), (1, 257, 8192), (5, 16)])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_glu_matches_the_reference(shape, dtype):
    h = rand(shape, dtype, scale=4.0)
    assert rk.glu_supported(h)
    y = rk.glu(h)
    assert y.shape == (*shape[:-1], shape[-1] // 2) and y.dtype == dtype
    assert rel_err(y, on_cpu(rk.glu_reference, h)) <= TOL[dtype]
