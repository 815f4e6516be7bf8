"""The fused CUDA decode kernels (musicgen/decode_kernels.py) against the MLX ops they replace.

The kernels run only on MLX's CUDA backend in fp16 / bf16, so the tests marked `gpu` need that device: on
this project's CPU CI they are skipped (reported as skipped, never as passed) and they are run on the GPU
machine (`python -m pytest tests/test_decode_kernels.py`, see docs/benchmarks.md for the recorded run). The
CPU tests check that everywhere else the reference ops are what runs.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.musicgen import decode_kernels as dk
from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes
from mlx_audio_generate.musicgen.model import DecoderConfig, MusicgenLM

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend (run on the GPU machine)")


def rel_err(a: mx.array, b: mx.array) -> float:
    a, b = np.array(a.astype(mx.float32), np.float64), np.array(b.astype(mx.float32), np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def tensors(rows: int, d: int, n: int, dtype: mx.Dtype, seed: int = 0):
    k = mx.random.split(mx.random.key(seed), 5)
    x = (mx.random.normal((rows, 1, d), key=k[0]) * 2 + 0.5).astype(dtype)
    g = (1 + 0.1 * mx.random.normal((d,), key=k[1])).astype(dtype)
    b = (0.1 * mx.random.normal((d,), key=k[2])).astype(dtype)
    w = (mx.random.normal((n, d), key=k[3]) * d**-0.5).astype(dtype)
    res = mx.random.normal((rows, 1, n), key=k[4]).astype(dtype)
    return x, g, b, w, res


def test_cpu_and_fp32_take_the_reference_ops():
    x, g, b, w, res = tensors(2, 64, 32, mx.float32)
    assert not dk.supported(x, w)  # fp32 (and any CPU stream) never launches a CUDA kernel
    np.testing.assert_array_equal(
        np.array(dk.ln_matvec(x, g, b, 1e-5, w, gelu=True)),
        np.array(dk.reference_ln_matvec(x, g, b, 1e-5, w, True)),
    )
    np.testing.assert_array_equal(
        np.array(dk.matvec_add(x, w, res)), np.array(dk.reference_matvec_add(x, w, res))
    )
    if not ON_CUDA:
        assert not dk.supported(x.astype(mx.float16), w.astype(mx.float16))


SHAPES = [(2, 1024, 3072), (8, 2048, 8192), (2, 4096, 1024), (3, 48, 40), (2, 8192, 2048), (16, 2048, 2048)]


@gpu
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("rows,d,n", SHAPES)
def test_kernels_match_the_ops(dtype, rows, d, n):
    x, g, b, w, res = tensors(rows, d, n, dtype)
    assert dk.supported(x, w)
    # fp16 / bf16 outputs: within a couple of output roundings of the unfused ops
    tol = 4e-3 if dtype == mx.float16 else 3e-2
    for gelu in (False, True):
        got = dk.ln_matvec(x, g, b, 1e-5, w, gelu=gelu)
        assert got.shape == (rows, 1, n) and got.dtype == dtype
        assert rel_err(got, dk.reference_ln_matvec(x, g, b, 1e-5, w, gelu)) <= tol
    y = dk.matvec_add(x.reshape(rows, 1, d), w, res)
    assert rel_err(y, dk.reference_matvec_add(x, w, res)) <= tol


def test_launch_shapes_split_long_rows():
    # more warps per weight row only while a product has few warps, each slice a multiple of the 16-byte loads
    shapes = [(1024, 3072), (1024, 4096), (4096, 1024), (2048, 2048), (8192, 2048), (48, 40), (1536, 4608)]
    for d, n in shapes:
        wpr, rpw = dk.config(d, n)
        assert wpr in (1, 2, 4, 8) and rpw >= 1
        assert d % (8 * wpr) == 0 and (wpr == 1 or d // wpr >= dk.MIN_SLICE)
    assert dk.config(8192, 2048)[0] > dk.config(2048, 8192)[0]  # fc2 (long input, few rows) splits, fc1 not
    x, g, b, w, _ = tensors(2, 64, 96, mx.float32)
    with pytest.raises(ValueError, match="needs the CUDA kernel"):
        dk.ln_qkv(x, g, b, 1e-5, w, 4)
    with pytest.raises(ValueError, match="needs the CUDA kernel"):
        dk.ln_matvec(x, g, b, 1e-5, w, out_shape=(2, 4, 1, 24))


@gpu
@pytest.mark.parametrize("rows,d,n", [(2, 1024, 3072), (8, 2048, 6144), (16, 2048, 6144)], ids=str)
def test_qkv_layouts(rows, d, n):
    # q (B, H, 1, Dh) and k / v (2, B, H, 1, Dh) = the (B, 1, 3D) product split as SelfAttention splits it;
    # rows 16 x 2048 normalizes on the fly. Cross-attention's q as (B, H, 1, Dh); SDPA's output as x.
    heads = d // 64
    x, g, b, w, _ = tensors(rows, d, n, mx.float16)
    q, kv = dk.ln_qkv(x, g, b, 1e-5, w, heads)
    assert q.shape == (rows, heads, 1, 64) and kv.shape == (2, rows, heads, 1, 64)
    ref = dk.reference_ln_matvec(x, g, b, 1e-5, w).reshape(rows, 1, 3, heads, 64).transpose(2, 0, 3, 1, 4)
    assert rel_err(q, ref[0]) <= 4e-3 and rel_err(kv, ref[1:]) <= 4e-3
    wq = w[:d]  # the q rows
    got = dk.ln_matvec(x, g, b, 1e-5, wq, out_shape=(rows, heads, 1, 64))
    assert rel_err(got, dk.reference_ln_matvec(x, g, b, 1e-5, wq).reshape(rows, heads, 1, 64)) <= 4e-3
    res = mx.random.normal((rows, 1, d), key=mx.random.key(3)).astype(mx.float16)
    y = dk.matvec_add(q, wq, res)  # q stands in for SDPA's (B, H, 1, Dh) output
    assert rel_err(y, dk.reference_matvec_add(q.reshape(rows, 1, d), wq, res)) <= 4e-3


@gpu
@pytest.mark.parametrize("wpr,rpw", [(1, 1), (2, 1), (4, 2), (8, 1)])
def test_every_launch_shape_matches(wpr, rpw, monkeypatch):
    x, g, b, w, res = tensors(8, 2048, 1000, mx.float16)  # N not a multiple of the block's rows
    x2 = mx.random.normal((8, 1, 1000), key=mx.random.key(7)).astype(mx.float16)
    w2 = (mx.random.normal((2048, 1000), key=mx.random.key(8)) * 1000**-0.5).astype(mx.float16)
    monkeypatch.setattr(dk, "OVERRIDE", {(2048, 1000): (wpr, rpw), (1000, 2048): (1, rpw)})
    got = dk.ln_matvec(x, g, b, 1e-5, w, gelu=True)
    assert rel_err(got, dk.reference_ln_matvec(x, g, b, 1e-5, w, True)) <= 4e-3
    y = dk.matvec_add(x2, w2, x)  # 1000 wide input: one warp per row (1000 % 16 != 0 for WPR 2)
    assert rel_err(y, dk.reference_matvec_add(x2, w2, x)) <= 4e-3


@gpu
def test_decoder_with_kernels_matches_without():
    cfg = DecoderConfig.from_dict(
        dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, ffn_dim=1024, num_codebooks=4,
             vocab_size=2048)
    )  # fmt: skip
    lm = MusicgenLM(cfg, 128)
    lm.set_dtype(mx.float16)
    mx.eval(lm.parameters())
    states = mx.random.normal((2, 7, 128), key=mx.random.key(1))
    mask = mx.array([[1] * 7, [1] * 4 + [0] * 3])
    greedy = SamplingOptions(top_k=1, guidance_scale=3.0)
    codes = {}
    for kernels in (False, True):
        lm.decoder.kernels = kernels
        codes[kernels] = np.array(generate_codes(lm, states, mask, 24, greedy))
    # fp16 greedy tokens: the kernels round like the ops up to summation order; near-ties may flip a token
    assert (codes[True] == codes[False]).mean() >= 0.95
