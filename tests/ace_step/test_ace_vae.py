"""ACE-Step 1.5's VAE (diffusers `AutoencoderOobleck` at 48 kHz, hop 1920) through our Oobleck
(mlx_audio_generate.codecs.oobleck: `OobleckConfig.from_diffusers`, `OobleckVAE.sanitize_diffusers`) against
diffusers 0.42.1 on the committed tiny tests/fixtures/ace/vae, fp32: encode (the posterior mean, and the
pipeline's `latent_dist.sample()` with its noise injected), decode, and the shipped silence latent.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.codecs.oobleck import OobleckConfig, OobleckVAE, load_oobleck
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import require
from tests.reference.parity import rel_err

torch = require("torch")
diffusers = require("diffusers")

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
VAE = FIXTURES / "vae"
STEM = "diffusion_pytorch_model"


def vae_config() -> dict:
    return json.loads((VAE / "config.json").read_text())


@pytest.fixture(scope="module")
def ours() -> OobleckVAE:
    cfg = OobleckConfig.from_diffusers(vae_config())
    ckpt = Checkpoint(read_tensors(VAE, STEM), name=str(VAE))
    vae = load_oobleck(cfg, OobleckVAE(cfg).sanitize_diffusers(ckpt))
    ckpt.finish()  # every diffusers tensor used
    return vae


@pytest.fixture(scope="module")
def reference():
    return diffusers.AutoencoderOobleck.from_pretrained(VAE).eval()


def test_config_is_the_48k_one(ours):
    c = ours.config
    assert c.downsampling_ratio == 1920 and c.latent_dim == 8 and c.encoder.latent_dim == 16
    assert c.encoder.strides == (2, 4, 4, 6, 10) and not c.final_tanh and c.scale == 1.0


def test_encode_mean_and_sample(ours, reference):
    """`latent_dist.mean`, and `latent_dist.sample()` = mean + std * noise with the noise handed to both."""
    audio = torch.randn(2, 2, 1920 * 5, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():
        dist = reference.encode(audio).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(1))
    want = dist.mean + dist.std * noise
    x = mx.array(audio.numpy())
    mean_err = rel_err(ours.encode(x), dist.mean)
    sample_err = rel_err(ours.encode(x, noise=mx.array(noise.numpy())), want)
    print(f"encode mean {mean_err:.2e} sample {sample_err:.2e}")
    assert max(mean_err, sample_err) <= TOL


def test_decode(ours, reference):
    z = torch.randn(2, 8, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = reference.decode(z).sample
    err = rel_err(ours.decode(mx.array(z.numpy())), want)
    print(f"decode rel err {err:.2e}")
    assert err <= TOL


def test_silence_latent_is_encoded_silence(ours):
    """The checkpoint's silence_latent.pt is the VAE mean of 30 s of zeros (1, C, 750). Away from the edges
    encoded silence is one constant frame (asserted on the shipped latent), so 3 s of zeros must give its
    first and last 30 frames (30 s through the encoder takes a minute on a shared CPU)."""
    shipped = torch.load(FIXTURES / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True).numpy()
    edge = 30
    assert (shipped[..., edge:-edge] == shipped[..., edge : edge + 1]).all()
    got = np.array(ours.encode(mx.zeros((1, 2, 48000 * 3))))
    assert got.shape == (1, shipped.shape[1], 75)
    assert rel_err(got[..., :edge], shipped[..., :edge]) <= TOL
    assert rel_err(got[..., -edge:], shipped[..., -edge:]) <= TOL


def test_bad_configs():
    base = vae_config()
    for change, match in (
        ({"_class_name": "AutoencoderKL"}, "not supported"),
        ({"encoder_hidden_size": 12}, "2 x latent_dim"),
        ({"channel_multiples": "x"}, "non-integer"),
        ({"decoder_channels": 0}, "decoder"),
    ):
        with pytest.raises(UserError, match=match):
            OobleckConfig.from_diffusers({**base, **change})
    with pytest.raises(UserError, match="JSON object"):
        OobleckConfig.from_diffusers([])
    tensors = read_tensors(VAE, STEM)
    del tensors["decoder.conv1.bias"]
    with pytest.raises(UserError, match="decoder.conv1.bias"):
        OobleckVAE(OobleckConfig.from_diffusers(base)).sanitize_diffusers(Checkpoint(tensors))
