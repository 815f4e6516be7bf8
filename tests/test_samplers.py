"""Parity of stable_audio/samplers.py with stable-audio-tools' `sample_rf` / `sample_k` and k-diffusion 0.1.1.

No model is needed: an analytic toy "DiT" (fixed random channel mix, tanh, functions of t) is written
identically in torch and MLX. Both sides start from the same noise and get the same per-step noise (the
reference's is recorded or injected), and every step's state and clean estimate is compared, fp32:
relative error max|ours - ref| / max|ref| <= 1e-4.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.diffusion import samplers as S
from mlx_audio_generate.errors import UserError
from tests.reference import require
from tests.reference.sat import import_sat

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch")

sat = import_sat()
sat_sampling = sat.inference.sampling
import k_diffusion as K  # noqa: E402  (after import_sat, which installs the stand-ins it needs)

TOL = 1e-4
B, C, T = 2, 4, 16
_rng = np.random.RandomState(0)
W = (_rng.randn(C, C) * 0.8 / math.sqrt(C)).astype(np.float32)
BIAS = (_rng.randn(C, 1) * 0.1).astype(np.float32)
U = (_rng.randn(C, 1) * 0.5).astype(np.float32)


def torch_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t[:, None, None]
    w, b, u = (torch.from_numpy(a) for a in (W, BIAS, U))
    return torch.tanh(torch.matmul(w, x) + b) * (1 + tt) + torch.sin(3 * tt) * u - 0.3 * x * torch.cos(tt)


def mlx_model(x: mx.array, t: mx.array) -> mx.array:
    tt = t[:, None, None]
    w, b, u = (mx.array(a) for a in (W, BIAS, U))
    return mx.tanh(mx.matmul(w, x) + b) * (1 + tt) + mx.sin(3 * tt) * u - 0.3 * x * mx.cos(tt)


def rel(ours: mx.array, ref: torch.Tensor) -> float:
    r = ref.detach().numpy().astype(np.float64)
    return float(np.abs(np.array(ours, dtype=np.float64) - r).max() / np.abs(r).max())


def unit_noise(seed: int, shape=(B, C, T)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def injected(noises: list[torch.Tensor]):
    return lambda i, shape: mx.array(noises[i].numpy())


def run_ours(name: str, objective: str, noise: torch.Tensor, steps: int, **kw):
    infos: list[S.StepInfo] = []
    out = S.sample(mlx_model, mx.array(noise.numpy()), steps, objective=objective, sampler=name,
                   callback=infos.append, **kw)  # fmt: skip
    assert [s.i for s in infos] == list(range(steps)) and all(s.steps == steps for s in infos)
    return out, infos


def check_trajectory(out, infos, ref_out, ref_steps, post_step: bool, check_denoised: bool = True) -> float:
    """ref_steps: the reference callback dicts. k-diffusion style callbacks (post_step False) see x *before*
    step i; stable-audio-tools' euler/rk4 see x after it."""
    errs = [rel(out, ref_out)]
    for i, info in enumerate(infos):
        if post_step:
            errs.append(rel(info.x, ref_steps[i]["x"]))
        elif i + 1 < len(ref_steps):
            errs.append(rel(info.x, ref_steps[i + 1]["x"]))
        if check_denoised:
            errs.append(rel(info.denoised, ref_steps[i]["denoised"]))
    assert max(errs) <= TOL, errs
    return max(errs)


# ------------------------------------------------------------------------------------------- schedules


def ref_rf_t(monkeypatch, steps: int, sigma_max: float) -> np.ndarray:
    """The t that sample_rf hands to its euler / pingpong / dpmpp samplers."""
    monkeypatch.setattr(sat_sampling, "sample_discrete_euler", lambda model, x, sigmas=None, **kw: sigmas)
    return sat_sampling.sample_rf(
        None, torch.zeros(1, 1, 4), steps=steps, sigma_max=sigma_max, device="cpu"
    ).numpy()


@pytest.mark.parametrize("steps", [1, 2, 8, 50, 100])
@pytest.mark.parametrize("sigma_max", [1.0, 0.7, 1.5])
def test_rf_schedule(monkeypatch, steps, sigma_max):
    ref = ref_rf_t(monkeypatch, steps, sigma_max)
    ours = S.rf_schedule(steps, sigma_max)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours[0] == min(sigma_max, 1.0) and ours[-1] == 0
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)  # float32 ulps (torch's SIMD linspace)


@pytest.mark.parametrize("steps", [1, 2, 8, 100, 250])
@pytest.mark.parametrize("smin,smax,rho", [(0.3, 500.0, 1.0), (0.01, 100.0, 1.0), (0.03, 1000.0, 2.0)])
def test_polyexponential_sigmas(steps, smin, smax, rho):
    ref = K.sampling.get_sigmas_polyexponential(steps, smin, smax, rho).numpy()
    ours = S.polyexponential_sigmas(steps, smin, smax, rho)
    assert ours.dtype == np.float32 and ours.shape == ref.shape and ours[-1] == 0
    # torch's CPU linspace (SIMD) differs from its elementwise formula by ~1 ulp; exp(ramp * log-range)
    # scales that by up to ~10 (log(1000 / 0.03)).
    np.testing.assert_allclose(ours, ref, rtol=4e-6, atol=0)


@pytest.mark.parametrize("use_sine", [False, True])
def test_distribution_shift(use_sine):
    opts = dict(base_shift=0.5, max_shift=1.15, max_length=4096, min_length=256, use_sine=use_sine)
    t = torch.linspace(1, 0, 11)
    ref = sat_sampling.DistributionShift(**opts).time_shift(t, 1024).numpy()
    ours = S.DistributionShift(**opts).time_shift(t.numpy(), 1024)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- rectified flow


def ref_rf(monkeypatch, name, noise, steps, init=None, **kw):
    """sample_rf, recording each randn_like the sampler draws (ping-pong's per-step noise)."""
    drawn: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(1234)

    def randn_like(x):
        drawn.append(torch.randn(x.shape, generator=gen, dtype=x.dtype))
        return drawn[-1]

    monkeypatch.setattr(torch, "randn_like", randn_like)
    steps_seen: list[dict] = []
    out = sat_sampling.sample_rf(torch_model, noise, init_data=init, steps=steps, sampler_type=name,
                                 device="cpu", callback=steps_seen.append, **kw)  # fmt: skip
    monkeypatch.undo()
    return out, steps_seen, drawn


@pytest.mark.parametrize(
    "name,steps",
    [("pingpong", 8), ("pingpong", 1), ("pingpong", 3), ("euler", 8), ("euler", 50), ("rk4", 8), ("rk4", 13),
     ("dpmpp", 8), ("dpmpp", 2), ("dpmpp", 30)],
)  # fmt: skip
def test_rf_sampler_parity(monkeypatch, name, steps):
    noise = unit_noise(steps)
    ref_out, ref_steps, drawn = ref_rf(monkeypatch, name, noise, steps)
    assert len(drawn) == (steps if name == "pingpong" else 0)
    out, infos = run_ours(name, "rf_denoiser", noise, steps, noise_fn=injected(drawn))
    post = name in ("euler", "rk4")  # their reference callbacks run after the update
    check_trajectory(out, infos, ref_out, ref_steps, post_step=post, check_denoised=not post)


@pytest.mark.parametrize("name", ["euler", "pingpong", "rk4"])
def test_rf_init_data(monkeypatch, name):
    """Audio-to-audio: x = init * (1 - s) + noise * s with the schedule starting at s = init_noise_level."""
    noise, init = unit_noise(5), unit_noise(6) * 0.5
    ref_out, ref_steps, drawn = ref_rf(monkeypatch, name, noise, 10, init=init, sigma_max=0.6)
    out, infos = run_ours(name, "rectified_flow", noise, 10, sigma_max=0.6, init_data=mx.array(init.numpy()),
                          noise_fn=injected(drawn))  # fmt: skip
    assert infos[0].sigma == pytest.approx(0.6)
    post = name != "pingpong"
    check_trajectory(out, infos, ref_out, ref_steps, post_step=post, check_denoised=not post)


def test_rf_rk4_distribution_shift(monkeypatch):
    noise = unit_noise(7)
    kw = dict(base_shift=0.4, max_shift=1.2, max_length=64, min_length=4)
    ref_out, ref_steps, _ = ref_rf(
        monkeypatch, "rk4", noise, 6, dist_shift=sat_sampling.DistributionShift(**kw)
    )
    out, infos = run_ours("rk4", "rectified_flow", noise, 6, dist_shift=S.DistributionShift(**kw))
    check_trajectory(out, infos, ref_out, ref_steps, post_step=True, check_denoised=False)


# ------------------------------------------------------------------------------------------ v-objective


def ref_k(monkeypatch, name, noise, steps, noises, init=None, **kw):
    """sample_k with k-diffusion's Brownian-tree noise sampler replaced by the injected noise."""
    sigmas = K.sampling.get_sigmas_polyexponential(steps, kw["sigma_min"], kw["sigma_max"], kw["rho"])
    calls = []

    def fake_tree(x, sigma_min, sigma_max, *a, **k):
        def draw(sigma, sigma_next):
            i = len(calls)
            assert float(sigma) == float(sigmas[i]) and float(sigma_next) == float(sigmas[i + 1])
            calls.append(i)
            return noises[i]

        return draw

    monkeypatch.setattr(K.sampling, "BrownianTreeNoiseSampler", fake_tree)
    steps_seen: list[dict] = []
    if (
        name == "euler"
    ):  # not offered by sample_k: call k-diffusion on the same denoiser, schedule and scaling
        out = K.sampling.sample_euler(K.external.VDenoiser(torch_model), noise * sigmas[0], sigmas,
                                      callback=steps_seen.append, disable=True)  # fmt: skip
    else:
        out = sat_sampling.sample_k(torch_model, noise, init, steps, sampler_type=name, device="cpu",
                                    callback=steps_seen.append, **kw)  # fmt: skip
    monkeypatch.undo()
    return out, steps_seen, calls


V_CASES = [("dpmpp-3m-sde", 100), ("dpmpp-3m-sde", 2), ("dpmpp-3m-sde", 3), ("dpmpp-3m-sde", 9),
           ("dpmpp-2m-sde", 100), ("dpmpp-2m-sde", 2), ("dpmpp-2m-sde", 9), ("dpmpp-2m", 25), ("dpmpp-2m", 1),
           ("k-heun", 10), ("euler", 50)]  # fmt: skip


@pytest.mark.parametrize("name,steps", V_CASES)
def test_v_sampler_parity(monkeypatch, name, steps):
    sig = dict(sigma_min=0.3, sigma_max=500.0, rho=1.0)  # stable-audio-open-1.0's model card
    noise = unit_noise(100 + steps)
    noises = [unit_noise(1000 + i) for i in range(steps)]
    ref_out, ref_steps, calls = ref_k(monkeypatch, name, noise, steps, noises, **sig)
    assert len(calls) == (steps - 1 if name in S.STOCHASTIC else 0)  # no noise before the final sigma = 0
    out, infos = run_ours(name, "v", noise, steps, noise_fn=injected(noises), **sig)
    check_trajectory(out, infos, ref_out, ref_steps, post_step=False)


def test_v_other_schedule_and_init_data(monkeypatch):
    sig = dict(sigma_min=0.01, sigma_max=5.0, rho=2.0)
    noise, init = unit_noise(11), unit_noise(12) * 0.5
    noises = [unit_noise(2000 + i) for i in range(12)]
    ref_out, ref_steps, _ = ref_k(monkeypatch, "dpmpp-3m-sde", noise, 12, noises, init=init, **sig)
    out, infos = run_ours("dpmpp-3m-sde", "v", noise, 12, init_data=mx.array(init.numpy()),
                          noise_fn=injected(noises), **sig)  # fmt: skip
    check_trajectory(out, infos, ref_out, ref_steps, post_step=False)


def test_v_sde_single_step_is_one_denoise():
    """k-diffusion's SDE samplers crash for steps = 1 (h unbound); ours take the one denoising step."""
    with pytest.raises(UnboundLocalError):
        sat_sampling.sample_k(torch_model, unit_noise(3), None, 1, sampler_type="dpmpp-3m-sde", device="cpu")
    noise = mx.array(unit_noise(3).numpy())
    s0 = S.polyexponential_sigmas(1)[0]  # 500 up to float32 rounding
    want = S.v_denoiser(mlx_model)(noise * float(s0), s0)
    for name in ("dpmpp-3m-sde", "dpmpp-2m-sde"):
        got = S.sample(mlx_model, noise, 1, objective="v", sampler=name, key=mx.random.key(0))
        assert mx.array_equal(got, want)


# ------------------------------------------------------------------------------- determinism and errors


@pytest.mark.parametrize("objective,name", [("rf_denoiser", "pingpong"), ("v", "dpmpp-3m-sde")])
def test_seeded_determinism(objective, name):
    noise = mx.random.normal((B, C, T), key=mx.random.key(1))

    def run(seed):
        return S.sample(mlx_model, noise, 8, objective=objective, sampler=name, key=mx.random.key(seed))

    a, b, c = run(7), run(7), run(8)
    assert mx.array_equal(a, b) and not mx.allclose(a, c)


def test_default_noise_is_unit_iid():
    fn = S.gaussian_noise(mx.random.key(0), 3)
    n0, n1 = np.array(fn(0, (4, 8192))), np.array(fn(1, (4, 8192)))
    assert (
        abs(n0.std() - 1) < 0.02
        and abs(n0.mean()) < 0.02
        and abs(np.corrcoef(n0.ravel(), n1.ravel())[0, 1]) < 0.02
    )
    assert np.array_equal(n0, np.array(fn(0, (4, 8192))))


def test_defaults_and_registry():
    assert S.default_sampler("v") == "dpmpp-3m-sde"
    assert S.default_sampler("rf_denoiser") == "pingpong"
    assert S.default_sampler("rectified_flow") == "euler"
    assert set(S.sampler_names("rf_denoiser")) == {"euler", "rk4", "dpmpp", "pingpong"}
    assert "dpmpp-3m-sde" in S.sampler_names("v") and "pingpong" not in S.sampler_names("v")
    infos = []
    S.sample(mlx_model, mx.zeros((1, C, T)), 4, objective="v", key=mx.random.key(0), callback=infos.append)
    assert [i.i for i in infos] == [0, 1, 2, 3] and infos[0].sigma == pytest.approx(500.0, rel=1e-6)


@pytest.mark.parametrize(
    "objective,name,steps,match",
    [("v", "pingpong", 8, "does not fit"), ("rf_denoiser", "dpmpp-3m-sde", 8, "does not fit"),
     ("rectified_flow", "k-heun", 8, "does not fit"), ("v", "nope", 8, "choose one of"),
     ("v", None, 0, "steps"), ("rf_denoiser", None, -1, "steps"), ("eps", None, 8, "objective")],
)  # fmt: skip
def test_user_errors(objective, name, steps, match):
    with pytest.raises(UserError, match=match):
        S.sample(
            mlx_model, mx.zeros((1, C, T)), steps, objective=objective, sampler=name, key=mx.random.key(0)
        )


def test_stochastic_sampler_needs_a_noise_source():
    with pytest.raises(ValueError, match="key"):
        S.sample(mlx_model, mx.zeros((1, C, T)), 4, objective="rf_denoiser")
