"""The DiT's host-light GEMM kernel (mlx_audio_generate/gemm_kernel.py) against MLX's ops.

The kernel runs on MLX's CUDA backend only: those tests are skipped elsewhere and run on the GPU machine,
against the float32 product of the same half-precision inputs on the CPU. Everywhere: the shape rules and
the fallback to MLX's ops (what the fp32 parity tests of every DiT run). The source compiles with nvcc in
tests/test_cuda_sources.py.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlx_audio_generate import gemm_kernel as gk
from tests.reference.parity import rel_err

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend (run on the GPU machine)")
TOL = {mx.float16: 2e-3, mx.bfloat16: 1.5e-2}


def rand(shape, dtype=mx.float32, seed=0, scale=1.0):
    mx.random.seed(seed)
    a = (scale * mx.random.normal(shape)).astype(dtype)
    mx.eval(a)
    return a


def test_the_shapes_the_kernel_takes():
    x, w = mx.zeros((1, 257, 1024), mx.float16), mx.zeros((3072, 1024), mx.float16)
    assert gk.takes(x, w, None, None)
    assert gk.takes(x, w, mx.zeros((3072,), mx.float16), mx.zeros((1, 257, 3072), mx.float16))
    assert not gk.takes(x.astype(mx.float32), w.astype(mx.float32), None, None)  # float32: MLX's
    assert not gk.takes(x, w.astype(mx.bfloat16), None, None)
    assert not gk.takes(x, mx.zeros((3000, 1024), mx.float16), None, None)  # N not a multiple of 64
    assert not gk.takes(mx.zeros((257, 1000), mx.float16), mx.zeros((64, 1000), mx.float16), None, None)
    assert not gk.takes(mx.zeros((2, 257, 1024), mx.float16), w, None, None)  # past MAX_ROWS: cuBLAS
    assert not gk.takes(x, w, mx.zeros((3072,), mx.float32), None)
    assert not gk.takes(x, w, None, mx.zeros((257, 3072), mx.float16))  # the residual's shape is y's


@pytest.mark.parametrize("bias", [False, True])
def test_linear_falls_back_to_mlx_ops(bias, monkeypatch):
    layer = nn.Linear(64, 128, bias=bias)
    x, r = rand((3, 5, 64)), rand((3, 5, 128), seed=1)
    assert mx.array_equal(gk.linear(layer, x), layer(x))
    assert mx.allclose(gk.linear(layer, x, r), r + layer(x), atol=1e-6)
    monkeypatch.setattr(gk, "ENABLED", False)
    assert not gk.supported(x.astype(mx.float16), layer.weight.astype(mx.float16), None, None)


def test_quantized_layers_take_mlx_ops():
    # the routing is the point: MLX's quantized ops on the CPU stream anywhere (on the GPU machine its CUDA
    # quantized matmul for float32 failed to compile: its headers lack crt/mma.h)
    with mx.stream(mx.cpu):
        layer = nn.QuantizedLinear(64, 128, bias=False)
        x = rand((4, 64))
        assert mx.array_equal(gk.linear(layer, x), layer(x))


def reference(x, w, bias, res):
    with mx.stream(mx.cpu):
        y = x.astype(mx.float32) @ w.astype(mx.float32).T
        y = y if bias is None else y + bias.astype(mx.float32)
        y = y if res is None else y + res.astype(mx.float32)
        mx.eval(y)
    return y


@gpu
@pytest.mark.parametrize(
    "rows, n, k",
    [
        ((1, 257), 3072, 1024),
        ((257,), 1024, 4096),
        ((1, 5), 128, 64),
        ((2, 70), 8192, 1024),
        ((384,), 64, 32),
    ],  # fmt: skip
)
@pytest.mark.parametrize("epilogue", ["none", "bias", "res", "both"])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_kernel_matches_the_product(rows, n, k, epilogue, dtype):
    x, w = rand((*rows, k), dtype, 0), rand((n, k), dtype, 1, scale=k**-0.5)
    bias = rand((n,), dtype, 2) if epilogue in ("bias", "both") else None
    res = rand((*rows, n), dtype, 3) if epilogue in ("res", "both") else None
    assert gk.supported(x, w, bias, res)
    y = gk.gemm(x, w, bias, res)
    assert y.shape == (*rows, n) and y.dtype == dtype
    assert rel_err(y.astype(mx.float32), reference(x, w, bias, res)) <= TOL[dtype]


@gpu
def test_linear_takes_the_kernel_for_a_half_precision_layer():
    layer = nn.Linear(1024, 3072)
    layer.set_dtype(mx.float16)
    x, r = rand((1, 257, 1024), mx.float16), rand((1, 257, 3072), mx.float16, 1)
    want = reference(x, layer.weight, layer.bias, r)
    assert rel_err(gk.linear(layer, x, r).astype(mx.float32), want) <= TOL[mx.float16]
