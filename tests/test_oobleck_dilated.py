"""The Oobleck residual units' dilated convolution as a plain one over interleaved subsequences
(codecs/oobleck.dilated_conv, the CUDA form where cuDNN's heuristic is slow) against torch's dilated Conv1d,
and the VAE's switch between the forms; fp32."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate.codecs.oobleck import DILATED_MODES, OobleckConfig, OobleckVAE, dilated_conv
from mlx_audio_generate.weights import torch_conv1d
from tests.reference import require

torch = require("torch")


@pytest.mark.parametrize("mode", DILATED_MODES)
@pytest.mark.parametrize(("dilation", "channels", "length"), [(1, 8, 20), (3, 8, 20), (9, 16, 41), (9, 4, 9),
                                                               (9, 4, 5), (3, 6, 1)])  # fmt: skip
def test_dilated_conv_matches_torch(mode, dilation, channels, length):
    # lengths that are and are not multiples of the dilation, and shorter than the kernel's reach
    g = torch.Generator().manual_seed(dilation * 100 + length)
    ref = torch.nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, channels, length, generator=g)
    with torch.no_grad():
        want = ref(x).numpy()
    ours = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
    ours.weight = torch_conv1d(mx.array(ref.weight.detach().numpy()))
    ours.bias = mx.array(ref.bias.detach().numpy())
    got = dilated_conv(mx.array(x.numpy()).transpose(0, 2, 1), ours, dilation, mode)
    got = np.array(got).transpose(0, 2, 1)
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_vae_dilated_modes_agree_and_switch():
    from tests.reference.stable_audio import tiny_config

    vae = OobleckVAE(OobleckConfig.from_dict(tiny_config("small")["model"]["pretransform"]))
    mx.random.seed(1)
    vae.update(nn.utils.tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape), vae.parameters()))
    z, audio = mx.random.normal((1, 8, 4)), mx.random.normal((1, 2, 4 * vae.downsampling_ratio))
    assert vae.dilated == "auto"  # MLX's conv1d here (the CPU); subsequences only on CUDA
    outs = {}
    for mode in DILATED_MODES:
        vae.dilated = mode
        units = [u for part in (vae.encoder, vae.decoder) for b in part.blocks for u in b.res]
        assert all(u.dilated == mode for u in units) and len(units) == 6 * len(vae.decoder.blocks)
        outs[mode] = (np.array(vae.decode(z)), np.array(vae.encode(audio)))
    for mode in ("auto", "subsequences"):
        for got, want in zip(outs[mode], outs["conv"], strict=True):
            assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4, mode  # 15 units (test_oobleck)
    with pytest.raises(ValueError, match="unknown dilated-conv mode"):
        vae.dilated = "fft"
