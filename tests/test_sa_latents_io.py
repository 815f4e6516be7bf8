"""Stable Audio Open's Python-API latents in/out (diffusion/latents_io.py) and `seconds_total`: the noise the
seed would draw, passed as `latents=`, gives the seeded result exactly; the returned latents decode (VAE,
trimmed to `seconds`) to the returned audio; `seconds_total` conditions independently of the length."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.generate import StableAudio, noise_keys

PROMPT = "rain on a tin roof"


@pytest.fixture(scope="module")
def models(stable_audio_small_converted, stable_audio_1_0_converted):
    return {
        "small": StableAudio.from_pretrained(stable_audio_small_converted),  # rf_denoiser, pingpong
        "1.0": StableAudio.from_pretrained(stable_audio_1_0_converted),  # v objective, dpmpp-3m-sde (SDE)
    }


def seeded_noise(model: StableAudio, seed: int, rows: int = 1) -> np.ndarray:
    """The initial noise `generate(seed=seed)` draws (module doc: the seed's first key)."""
    shape = (rows, model.model.dit.config.io_channels, model.model.latent_frames)
    return np.array(mx.random.normal(shape, key=noise_keys(seed).initial))


@pytest.mark.parametrize("name", ["small", "1.0"])
def test_given_noise_equals_the_seeded_path_and_latents_decode(models, name):
    model = models[name]
    kw = dict(seconds=0.5, steps=3, seed=5)
    audio = model.generate(PROMPT, **kw)
    noise = seeded_noise(model, 5)
    got, latents = model.generate(PROMPT, **kw, latents=noise, return_latents=True)
    np.testing.assert_array_equal(got, audio)
    assert latents.dtype == np.float32 and latents.shape == noise.shape
    samples = round(0.5 * model.sample_rate)
    decoded = np.array(model.model.vae.decode(mx.array(latents))[..., :samples].astype(mx.float32))
    np.testing.assert_array_equal(decoded, audio)
    other = model.generate(PROMPT, **kw, latents=seeded_noise(model, 6))
    assert not np.array_equal(other, audio)  # the noise given is the noise used


def test_given_noise_with_a_batch_of_seeds(models):
    model = models["small"]
    kw = dict(seconds=0.5, steps=3, seed=[1, 2])
    audio = model.generate([PROMPT, "drums"], **kw)
    noise = np.concatenate([seeded_noise(model, 1), seeded_noise(model, 2)])
    np.testing.assert_array_equal(model.generate([PROMPT, "drums"], **kw, latents=noise), audio)


def test_seconds_total_is_the_conditioning_only(models, monkeypatch):
    model = models["small"]
    kw = dict(seconds=0.5, steps=2, seed=3)
    audio = model.generate(PROMPT, **kw)
    np.testing.assert_array_equal(model.generate(PROMPT, **kw, seconds_total=0.5), audio)
    seen = []
    condition = model.condition
    monkeypatch.setattr(model, "condition", lambda p, s: seen.append(s) or condition(p, s))
    other = model.generate(PROMPT, **kw, seconds_total=0.7)
    assert seen == [0.7] and other.shape == audio.shape and not np.array_equal(other, audio)


def test_bad_latents_and_seconds_total(models):
    model = models["small"]
    good = seeded_noise(model, 0)
    for bad, match in [
        (good[:, :, :-1], r"latents must have shape \(1, "),
        (np.concatenate([good, good]), "latents must have shape"),
        (good * np.nan, "NaN"),
        ("noise", "latents must be an array"),
    ]:
        with pytest.raises(UserError, match=match):
            model.generate(PROMPT, seconds=0.5, steps=1, seed=0, latents=bad)
    with pytest.raises(UserError, match="seconds_total"):
        model.generate(PROMPT, seconds=0.5, steps=1, seed=0, seconds_total=-1.0)
