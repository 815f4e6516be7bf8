"""ACE-Step's Python-API latents in/out (diffusion/latents_io.py), on the committed tiny turbo and base
checkpoints: the noise `draw_noise` gives for the seed, passed as `latents=`, gives the seeded result
exactly; the returned latents decode (tiled VAE, trim, peak normalisation) to the returned audio."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate.ace_step.generate import peak_normalize
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ace-lat")
    return {
        v: mag.load(str(convert(str(FIXTURES / f"acestep-v15-{v}"), root / v))) for v in ("turbo", "base")
    }


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_given_noise_equals_the_seeded_path_and_latents_decode(models, variant):
    model = models[variant]
    kw = dict(seconds=2.0, steps=3, seed=[7, 8])
    prompts = ["pop", "rock"]
    audio = model.generate(prompts, **kw)
    frames = model.latent_frames(2.0)
    noise = np.array(model.draw_noise([7, 8], (2, frames, model.model.dit.config.acoustic_dim)))
    got, latents = model.generate(prompts, **kw, latents=noise, return_latents=True)
    np.testing.assert_array_equal(got, audio)
    assert latents.shape == noise.shape and latents.dtype == np.float32
    decoded = np.array(model.decode(mx.array(latents)).astype(mx.float32))[..., : audio.shape[-1]]
    np.testing.assert_array_equal(peak_normalize(decoded).astype(np.float32), audio)
    assert not np.array_equal(model.generate(prompts, **kw, latents=noise[::-1].copy()), audio)
    with pytest.raises(UserError, match=r"latents must have shape \(2, "):
        model.generate(prompts, **kw, latents=noise[:1])
