"""Stable Audio 3's Python-API latents in/out (diffusion/latents_io.py) and `seconds_total`, on the committed
tiny small checkpoint: the noise `draw_noise` gives for the seed, passed as `latents=`, gives the seeded
result exactly; the returned latents decode (SAME, padding mask, clip, trim) to the returned audio."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3.generate import HEADROOM_SECONDS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return mag.load(str(convert(str(FIXTURES / "small"), tmp_path_factory.mktemp("sa3-lat") / "small")))


def test_given_noise_equals_the_seeded_path_and_latents_decode(model):
    kw = dict(seconds=0.1, steps=3, seed=4)
    audio = model.generate("x", **kw)
    # the shape generate asks draw_noise for: captured, then drawn the same way
    shapes = []
    draw = model.draw_noise
    model.draw_noise = lambda seed, shape, steps: shapes.append(shape) or draw(seed, shape, steps)
    try:
        model.generate("x", **kw)
    finally:
        del model.draw_noise
    noise = np.array(draw(4, shapes[0], 3)[0])
    got, latents = model.generate("x", **kw, latents=noise, return_latents=True)
    np.testing.assert_array_equal(got, audio)
    assert latents.shape == noise.shape and latents.dtype == np.float32
    frames = latents.shape[-1]
    pad = model.padding_mask(0.1, HEADROOM_SECONDS, frames)
    decoded = model.decode(mx.array(latents))
    keep = np.repeat(pad, model.model.downsampling_ratio)[: decoded.shape[-1]]
    keep = np.pad(keep, (0, max(decoded.shape[-1] - keep.shape[0], 0))).astype(np.float32)
    decoded = mx.clip(decoded * mx.array(keep), -1.0, 1.0)[..., : audio.shape[-1]]
    np.testing.assert_array_equal(np.array(decoded.astype(mx.float32)), audio)
    assert not np.array_equal(model.generate("x", **kw, latents=noise[..., ::-1].copy()), audio)
    with pytest.raises(UserError, match="latents must have shape"):
        model.generate("x", **kw, latents=noise[:, :, 1:])


def test_seconds_total_is_the_conditioning_only(model):
    kw = dict(seconds=0.1, steps=2, seed=1)
    audio = model.generate("x", **kw)
    np.testing.assert_array_equal(model.generate("x", **kw, seconds_total=0.1), audio)
    seen = []
    condition = model.condition
    model.condition = lambda p, s, local=None: seen.append(s) or condition(p, s, local)
    try:
        other = model.generate("x", **kw, seconds_total=0.2)
    finally:
        del model.condition
    assert seen == [0.2] and other.shape == audio.shape
