"""The samplers' fused (compiled) step arithmetic, the default on the GPU, on the CPU: the parity tests of
test_samplers.py against stable-audio-tools / k-diffusion again with FUSE forced on, and fused == eager."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlx_audio_generate.diffusion import sampler_steps
from mlx_audio_generate.diffusion import samplers as S
from tests.test_samplers import (  # noqa: F401 - collected again here, with the fixture below
    B,
    C,
    T,
    mlx_model,
    test_rf_sampler_parity,
    test_seeded_determinism,
    test_v_other_schedule_and_init_data,
    test_v_sampler_parity,
    test_v_sde_single_step_is_one_denoise,
)


@pytest.fixture(autouse=True)
def fused_everywhere(monkeypatch):
    monkeypatch.setattr(sampler_steps, "FUSE", True)


@pytest.mark.parametrize(
    "objective,name", [("rf_denoiser", "pingpong"), ("v", "dpmpp-3m-sde"), ("v", "dpmpp-2m-sde")]
)
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
def test_fused_equals_eager(monkeypatch, objective, name, dtype):
    noise = mx.random.normal((B, C, T), key=mx.random.key(3)).astype(dtype)

    def model(x, t):
        return mlx_model(x.astype(mx.float32), t).astype(dtype)

    def run():
        return S.sample(model, noise, 6, objective=objective, sampler=name, key=mx.random.key(5))

    fused = run()
    monkeypatch.setattr(sampler_steps, "FUSE", False)
    eager = run()
    assert fused.dtype == eager.dtype == dtype
    assert mx.array_equal(fused, eager)
