"""The Oobleck decoder's polyphase transposed convolution (codecs/oobleck.upsample) against torch's
ConvTranspose1d, every formulation, for the strides Oobleck uses and an odd one; fp32."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate.codecs.oobleck import UPSAMPLE_MODES, OobleckConfig, OobleckVAE, upsample
from mlx_audio_generate.weights import torch_conv_transpose1d
from tests.reference import require

torch = require("torch")
TOL = 1e-5


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize(("stride", "cin", "cout", "frames"), [(2, 8, 8, 9), (3, 6, 4, 7), (4, 16, 8, 11),
                                                               (8, 32, 16, 5), (8, 4, 4, 1)])  # fmt: skip
def test_upsample_matches_torch_conv_transpose(mode, stride, cin, cout, frames):
    g = torch.Generator().manual_seed(stride * 100 + cin)
    ref = torch.nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, cin, frames, generator=g)
    with torch.no_grad():
        want = ref(x).numpy()
    ours = nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
    ours.weight = torch_conv_transpose1d(mx.array(ref.weight.detach().numpy()))
    ours.bias = mx.array(ref.bias.detach().numpy())
    got = np.array(upsample(mx.array(x.numpy()).transpose(0, 2, 1), ours, stride, mode)).transpose(0, 2, 1)
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() <= TOL


def test_vae_upsample_modes_agree_and_switch():
    from tests.reference.stable_audio import tiny_config

    vae = OobleckVAE(OobleckConfig.from_dict(tiny_config("small")["model"]["pretransform"]))
    mx.random.seed(1)
    vae.update(nn.utils.tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape), vae.parameters()))
    z = mx.random.normal((1, 8, 4))
    assert vae.upsample == "auto"  # transpose on the GPU, matmul on the CPU
    outs = {}
    for mode in UPSAMPLE_MODES:
        vae.upsample = mode
        assert all(b.upsample == mode for b in vae.decoder.blocks)
        outs[mode] = np.array(vae.decode(z))
    for mode in ("auto", "matmul", "conv"):
        err = np.abs(outs[mode] - outs["transpose"]).max() / np.abs(outs["transpose"]).max()
        assert err <= 1e-4, (mode, err)  # through 5 blocks and 15 residual units (test_oobleck: 1e-4)
    with pytest.raises(ValueError, match="unknown upsample mode"):
        vae.upsample = "fft"
