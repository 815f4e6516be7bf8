"""Stable Audio variations (init audio) against stable-audio-tools 0.0.19's `generate_diffusion_cond(
init_audio=..., init_noise_level=...)` on the tiny random checkpoints, fed the same noise.

The reference runs for real; only its random draws are replaced by ours (as in test_stable_audio_e2e.py):
`torch.randn` (initial noise), the VAE bottleneck's `vae_sample` (its `randn_like`), `torch.randn_like`
(ping-pong) and k-diffusion's Brownian-tree sampler (SDE samplers). Compared, fp32, relative error
max|ours - ref| / max|ref| <= 1e-4: the prepared audio, the encoded latents, the sampler's starting point
for the noise level, the final latents and the audio.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate.diffusion import samplers as S
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.generate import StableAudio, noise_keys, strength_to_noise_level
from tests.reference import require
from tests.reference.sat import import_sat

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch")

sat = import_sat()
generation = sat.inference.generation
sat_sampling = sat.inference.sampling
import k_diffusion as K  # noqa: E402  (after import_sat, which installs the stand-ins it needs)
import stable_audio_tools.models.bottleneck as sat_bottleneck  # noqa: E402

TOL = 1e-4
PROMPT = "warm analog pad"
SR = 44100
V_SIGMAS = dict(sigma_min=S.V_SIGMA_MIN, sigma_max=S.V_SIGMA_MAX, rho=S.V_RHO)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def tiny(request, style: str):
    """(reference model, model_config, our StableAudio) for a session-built tiny checkpoint."""
    name = "stable_audio_small" if style == "small" else "stable_audio_1_0"
    _, ref = request.getfixturevalue(name)
    ours = StableAudio.from_pretrained(request.getfixturevalue(f"{name}_converted"))
    return ref, ours.model.model_config, ours


def clip(seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A deterministic test clip (channels, samples) at 44.1 kHz: tones plus a little noise."""
    n = round(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.RandomState(seed)
    rows = [0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.05 * rng.randn(n) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


class Noise:
    """The draws `StableAudio.generate` makes for `seed` (see generate.noise_keys)."""

    def __init__(self, seed: int, shape: tuple[int, ...], steps: int):
        keys = noise_keys(seed)
        self.initial = np.array(mx.random.normal(shape, key=keys.initial))
        self.vae = np.array(mx.random.normal((1, *shape[1:]), key=keys.vae))
        step_fn, mask_fn = S.gaussian_noise(keys.steps, steps), S.gaussian_noise(keys.mask, steps)
        self.steps = [np.array(step_fn(i, shape)) for i in range(steps)]
        self.mask = [np.array(mask_fn(i, shape)) for i in range(steps)]
        self.shape = shape
        self.used = {"steps": 0, "mask": 0, "vae": 0}

    def next(self, stream: str) -> torch.Tensor:
        i = self.used[stream]
        self.used[stream] += 1
        return torch.from_numpy(getattr(self, stream)[i].copy())


def inject(monkeypatch, noise: Noise) -> None:
    """Route the reference's random draws to `noise` (undone by monkeypatch.undo())."""
    orig_randn, orig_randn_like = torch.randn, torch.randn_like

    def randn(*size, **kw):
        dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (list, tuple)) else size
        if dims == noise.shape:  # generate_diffusion_cond's initial noise (the only draw of this shape)
            return torch.from_numpy(noise.initial.copy())
        return orig_randn(*size, **kw)

    def randn_like(x, *a, **kw):
        caller = sys._getframe(1).f_code.co_name
        if caller == "inpainting_callback":  # 0.0.16's masked sampling re-noising the input
            return noise.next("mask")
        if caller == "sample_flow_pingpong":
            return noise.next("steps")
        return orig_randn_like(x, *a, **kw)  # k-diffusion euler/heun draw eps every step, unused (no churn)

    def vae_sample(mean, scale):
        stdev = torch.nn.functional.softplus(scale) + 1e-4
        assert tuple(mean.shape) == noise.vae.shape
        return noise.next("vae") * stdev + mean, torch.zeros(())  # (latents, kl) as the reference

    def brownian_tree(x, *a, **kw):  # dpmpp-2m/3m-sde: one draw per step before the last
        return lambda sigma, sigma_next: noise.next("steps")

    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch, "randn_like", randn_like)
    monkeypatch.setattr(sat_bottleneck, "vae_sample", vae_sample)
    monkeypatch.setattr(K.sampling, "BrownianTreeNoiseSampler", brownian_tree)


REF_SAMPLERS = {  # where the reference's sampler function lives, to record the state it starts from
    "pingpong": (sat_sampling, "sample_flow_pingpong"),
    "euler-rf": (sat_sampling, "sample_discrete_euler"),
    "dpmpp": (sat_sampling, "sample_flow_dpmpp"),
    "rk4": (sat_sampling, "sample_rk4"),
    "dpmpp-3m-sde": (K.sampling, "sample_dpmpp_3m_sde"),
    "dpmpp-2m-sde": (K.sampling, "sample_dpmpp_2m_sde"),
    "dpmpp-2m": (K.sampling, "sample_dpmpp_2m"),
    "k-heun": (K.sampling, "sample_heun"),
    "euler-v": (K.sampling, "sample_euler"),
}


def record_start(monkeypatch, owner, name: str, starts: list) -> None:
    orig = getattr(owner, name)

    def wrapped(model, x, *a, **kw):
        starts.append(x.detach().clone())
        return orig(model, x, *a, **kw)

    monkeypatch.setattr(owner, name, wrapped)


def record_decode(monkeypatch, pretransform, latents: list) -> None:
    decode = pretransform.decode
    monkeypatch.setattr(pretransform, "decode", lambda z, **k: decode(latents.append(z.clone()) or z, **k))


def run_ours(monkeypatch, ours: StableAudio, prompts, **kw) -> dict:
    """Our generate, recording the sampler's starting state and the final latents."""
    family = S.objective_family(ours.model.objective)
    name = kw.get("sampler") or ours.defaults.sampler
    starts, latents = [], []
    orig = S.SAMPLERS[family][name]

    def wrapped(fn, x, *a, **k):
        starts.append(np.array(x))
        return orig(fn, x, *a, **k)

    monkeypatch.setitem(S.SAMPLERS[family], name, wrapped)
    vae = ours.model.vae
    decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z: decode(latents.append(np.array(z)) or z))
    done: list[tuple[int, int]] = []
    try:
        audio = ours.generate(prompts, progress=lambda i, n: done.append((i, n)), **kw)
    finally:
        monkeypatch.undo()
    return {"audio": audio, "start": starts[0], "latents": latents[0], "progress": done}


def reference_variation(
    monkeypatch, model, config, prompts, seconds, steps, cfg, sampler, seed, audio, level
):
    """generate_diffusion_cond with init audio, fed our noise: dict(audio, latents, start, noise)."""
    shape = (len(prompts), model.io_channels, config["sample_size"] // model.pretransform.downsampling_ratio)
    noise = Noise(seed, shape, steps)
    inject(monkeypatch, noise)
    starts, latents = [], []
    key = f"{sampler}-{'v' if model.diffusion_objective == 'v' else 'rf'}" if sampler == "euler" else sampler
    record_start(monkeypatch, *REF_SAMPLERS[key], starts)
    record_decode(monkeypatch, model.pretransform, latents)
    meta = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
    kw = dict(V_SIGMAS) if model.diffusion_objective == "v" else {}
    if sampler == "euler" and model.diffusion_objective == "v":
        # sample_k offers no plain euler: run k-diffusion's on the same denoiser, schedule and init.
        def sample_k(model_fn, noise_, init_data, steps, sampler_type, **k):
            sig = {n: k.pop(n) for n in ("sigma_min", "sigma_max", "rho")}
            k.pop("device")
            sigmas = K.sampling.get_sigmas_polyexponential(
                steps, sig["sigma_min"], sig["sigma_max"], sig["rho"]
            )
            x = init_data + noise_ * sigmas[0]
            return K.sampling.sample_euler(
                K.external.VDenoiser(model_fn), x, sigmas, extra_args=k, disable=True
            )

        monkeypatch.setattr(generation, "sample_k", sample_k)
    try:
        with torch.no_grad():
            out = generation.generate_diffusion_cond(
                model, steps=steps, cfg_scale=cfg, conditioning=meta, batch_size=len(prompts),
                sample_size=config["sample_size"], seed=seed, device="cpu", sampler_type=sampler,
                init_audio=(SR, torch.from_numpy(audio.copy())), init_noise_level=level, **kw,
            )  # fmt: skip
    finally:
        monkeypatch.undo()
    assert noise.used["vae"] == 1
    return {"audio": out.numpy(), "latents": latents[0].numpy(), "start": starts[0].numpy(), "noise": noise}


# ------------------------------------------------------------------------------------------- prepare + encode


@pytest.mark.parametrize("style", ["small", "1.0"])
def test_prepared_and_encoded_audio_match(request, monkeypatch, style):
    """prepare_audio (pad/crop to sample_size, channels) and the VAE encode with the bottleneck noise."""
    ref, config, ours = tiny(request, style)
    size = config["sample_size"]
    cases = [clip(0.3), clip(0.3, channels=1), clip(2.0, seed=1), clip(0.4, channels=3, seed=2)]
    for a in cases:
        mine = ours.prepare_audio(ours.load_audio(a))
        theirs = sat.inference.utils.prepare_audio(torch.from_numpy(a), SR, SR, size, 2, "cpu").numpy()
        assert mine.shape == theirs.shape == (1, 2, size)
        np.testing.assert_array_equal(mine, theirs)
    audio = ours.prepare_audio(ours.load_audio(cases[0]))
    noise = Noise(3, (1, 8, size // 2048), 1)
    inject(monkeypatch, noise)
    try:
        with torch.no_grad():
            want = ref.pretransform.encode(torch.from_numpy(audio)).numpy()
    finally:
        monkeypatch.undo()
    got = np.array(ours.encode_audio(audio, mx.array(noise.vae)))
    err = rel_err(got, want)
    print(f"{style}: encoded latents rel err {err:.2e}")
    assert got.shape == want.shape == (1, 8, size // 2048) and err <= TOL


# ----------------------------------------------------------------------------------------- whole generation

CASES = [
    # style, sampler, steps, cfg, init_noise_level, clip seconds, batch
    ("small", "pingpong", 8, 1.0, 0.7, 0.5, 1),  # stable-audio-open-small's card settings
    ("small", "euler", 4, 3.0, 0.35, 0.6, 1),
    ("small", "rk4", 2, 1.0, 0.5, 0.5, 1),
    ("small", "dpmpp", 3, 1.0, 0.9, 0.5, 1),
    ("1.0", "dpmpp-3m-sde", 5, 7.0, 20.0, 0.8, 1),  # stable-audio-open-1.0's sampler
    ("1.0", "dpmpp-3m-sde", 4, 7.0, 3.0, 0.8, 2),
    ("1.0", "k-heun", 3, 7.0, 1.0, 0.8, 1),
    ("1.0", "euler", 3, 7.0, 5.0, 0.8, 1),
    ("1.0", "dpmpp-2m", 3, 4.0, 50.0, 0.8, 1),
    ("1.0", "dpmpp-2m-sde", 3, 7.0, 0.5, 0.8, 1),
]


@pytest.mark.parametrize("style,sampler,steps,cfg,level,seconds,batch", CASES)
def test_variation_matches_stable_audio_tools(
    request, monkeypatch, style, sampler, steps, cfg, level, seconds, batch
):
    ref, config, ours = tiny(request, style)
    prompts = [PROMPT, "dusty breakbeat"][:batch]
    audio = clip(seconds, seed=4)
    seed = 21
    got = run_ours(monkeypatch, ours, prompts, steps=steps, cfg_scale=cfg, sampler=sampler, seed=seed,
                   init_audio=audio, init_noise_level=level)  # fmt: skip
    assert got["progress"] == [(i + 1, steps) for i in range(steps)]
    want = reference_variation(
        monkeypatch, ref, config, prompts, seconds, steps, cfg, sampler, seed, audio, level
    )
    n = round(seconds * SR)  # seconds defaults to the clip's length
    assert got["audio"].shape == (batch, 2, n)
    errs = {
        "start": rel_err(got["start"], want["start"]),
        "latents": rel_err(got["latents"], want["latents"]),
        "audio": rel_err(got["audio"], want["audio"][..., :n]),
    }
    print(f"{style} {sampler} steps={steps} level={level} batch={batch}: " + ", ".join(
        f"{k} {v:.2e}" for k, v in errs.items()))  # fmt: skip
    assert max(errs.values()) <= TOL, errs
    # The start really is the encoded clip noised to the level (not pure noise).
    init = np.array(ours.encode_audio(ours.prepare_audio(audio), mx.array(want["noise"].vae)))
    noise = want["noise"].initial
    expect = init + level * noise if style == "1.0" else (1 - level) * init + level * noise
    assert rel_err(got["start"], expect) <= 1e-6


# --------------------------------------------------------------------------------------------- API behaviour


def test_strength_maps_to_noise_level(stable_audio_small_converted, stable_audio_1_0_converted):
    assert strength_to_noise_level("rf_denoiser", 0.25) == 0.25
    assert strength_to_noise_level("v", 1.0) == pytest.approx(500.0)
    assert strength_to_noise_level("v", 0.5) == pytest.approx((0.3 * 500) ** 0.5)
    audio = clip(0.3)
    for folder, s in ((stable_audio_small_converted, 0.6), (stable_audio_1_0_converted, 0.4)):
        model = StableAudio.from_pretrained(folder)
        kw = dict(steps=2, seed=3, init_audio=audio)
        a = model.generate(PROMPT, init_strength=s, **kw)
        b = model.generate(PROMPT, init_noise_level=strength_to_noise_level(model.model.objective, s), **kw)
        np.testing.assert_array_equal(a, b)


def test_file_input_seeded_and_resampled(stable_audio_small_converted, tmp_path: Path):
    model = StableAudio.from_pretrained(stable_audio_small_converted)
    audio = clip(0.4)
    path = tmp_path / "in.wav"
    sf.write(path, audio.T, SR, subtype="FLOAT")
    kw = dict(steps=2, init_noise_level=0.5)
    a = model.generate(PROMPT, seed=7, init_audio=str(path), **kw)
    np.testing.assert_array_equal(a, model.generate(PROMPT, seed=7, init_audio=audio, **kw))
    np.testing.assert_array_equal(a, model.generate(PROMPT, seed=7, init_audio=path, **kw))
    assert a.shape == (1, 2, audio.shape[1])
    assert rel_err(model.generate(PROMPT, seed=8, init_audio=audio, **kw), a) > 1e-3
    # Another rate is resampled to 44.1 kHz first; mono becomes stereo; seconds still cuts the output.
    sf.write(tmp_path / "mono22k.wav", audio[0, ::2], 22050, subtype="FLOAT")
    b = model.generate(PROMPT, seed=7, init_audio=tmp_path / "mono22k.wav", seconds=0.25, **kw)
    assert b.shape == (1, 2, round(0.25 * SR)) and np.isfinite(b).all()


def test_bad_input_is_a_user_error(stable_audio_small_converted, stable_audio_1_0_converted, tmp_path: Path):
    small = StableAudio.from_pretrained(stable_audio_small_converted)
    big = StableAudio.from_pretrained(stable_audio_1_0_converted)
    audio = clip(0.3)
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    bad = [
        (small, dict(init_audio=str(tmp_path / "missing.wav"), init_noise_level=0.5), "does not exist"),
        (small, dict(init_audio=str(junk), init_noise_level=0.5), "cannot read"),
        (small, dict(init_audio=audio), "needs --init-noise-level"),
        (small, dict(init_audio=audio, init_noise_level=0.0), r"in \(0, 1\]"),
        (small, dict(init_audio=audio, init_noise_level=1.5), r"in \(0, 1\]"),
        (small, dict(init_audio=audio, init_noise_level=float("nan")), r"in \(0, 1\]"),
        (big, dict(init_audio=audio, init_noise_level=0.3), r"in \(0.3, 500\]"),
        (big, dict(init_audio=audio, init_noise_level=600.0), r"in \(0.3, 500\]"),
        (big, dict(init_audio=audio, init_strength=0.0), "init_strength"),
        (small, dict(init_audio=audio, init_strength=1.2), "init_strength"),
        (small, dict(init_audio=audio, init_strength=0.5, init_noise_level=0.5), "not both"),
        (small, dict(init_noise_level=0.5), "need --init-audio"),
        (small, dict(init_audio=audio, inpaint_audio=audio, init_noise_level=0.5), "not both"),
        (small, dict(init_audio=audio.T, init_noise_level=0.5), "transpose"),
        (small, dict(init_audio=np.zeros((2, 0), np.float32), init_noise_level=0.5), "array"),
        (small, dict(init_audio=audio * np.nan, init_noise_level=0.5), "NaN"),
    ]
    for model, kw, match in bad:
        with pytest.raises(UserError, match=match) as e:
            model.generate(PROMPT, steps=1, seed=0, **kw)
        assert "\n" not in str(e.value)
