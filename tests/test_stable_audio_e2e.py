"""Stable Audio Open end to end against stable-audio-tools: our converter + T5 + conditioning + DiT +
sampler + VAE vs `generate_diffusion_cond`, for tiny checkpoints written by stable-audio-tools itself.

The reference runs for real (`generate_diffusion_cond` with the arguments its gradio app passes); only its
random draws are replaced by ours, since torch's generator cannot be matched from MLX: `torch.randn` for the
initial noise, `torch.randn_like` (ping-pong) and k-diffusion's Brownian-tree noise sampler (SDE samplers)
for the per-step noise. Ours draw them from `k0, k1 = split(key(seed))` as `StableAudio.generate` does.

stable-audio-tools runs its T5 in float16; the test builder puts the reference T5 back in float32, so this
is an fp32-vs-fp32 comparison: relative error max|ours - ref| / max|ref| <= 1e-4 on the final audio.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.convert import convert
from mlx_audio_generate.diffusion import samplers as S
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.generate import StableAudio
from mlx_audio_generate.weights import load_safetensors
from tests.reference import require
from tests.reference.sat import import_sat

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch")

sat = import_sat()
generation = sat.inference.generation
import k_diffusion as K  # noqa: E402  (after import_sat, which installs the stand-ins it needs)

TOL = 1e-4
PROMPT = "lofi piano with warm vinyl crackle"
LONG_PROMPT = "happy upbeat rock song with electric guitar, " * 40  # far more tokens than 128
V_SIGMAS = dict(sigma_min=0.3, sigma_max=500.0, rho=1.0)  # stable-audio-open-1.0's model card


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def tiny(request, style: str):
    """(source folder, reference model, converted folder) of a session-built tiny checkpoint."""
    name = "stable_audio_small" if style == "small" else "stable_audio_1_0"
    src, ref = request.getfixturevalue(name)
    return src, ref, request.getfixturevalue(f"{name}_converted")


def our_noise(seed: int, shape: tuple[int, ...], steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The initial and per-step noise `StableAudio.generate` draws for `seed`."""
    k0, k1 = mx.random.split(mx.random.key(seed))
    step_fn = S.gaussian_noise(k1, steps)
    return np.array(mx.random.normal(shape, key=k0)), [np.array(step_fn(i, shape)) for i in range(steps)]


def reference_generate(
    monkeypatch, model, config, prompts, seconds, steps, cfg, sampler, seed, negative=None
):
    """generate_diffusion_cond over the whole window, fed our noise: (audio, final latents, draws used)."""
    shape = (len(prompts), model.io_channels, config["sample_size"] // model.pretransform.downsampling_ratio)
    init, step_noises = our_noise(seed, shape, steps)
    used: list[int] = []
    orig_randn = torch.randn

    def randn(*size, **kw):
        dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (list, tuple)) else size
        if dims == shape:  # generate_diffusion_cond's initial noise (the only draw of this shape)
            return torch.from_numpy(init.copy())
        return orig_randn(*size, **kw)

    def randn_like(x, *a, **kw):  # ping-pong's per-step noise
        used.append(len(used))
        return torch.from_numpy(step_noises[used[-1]].copy())

    def brownian_tree(x, *a, **kw):  # dpmpp-2m/3m-sde: one draw per step before the last
        def draw(sigma, sigma_next):
            used.append(len(used))
            return torch.from_numpy(step_noises[used[-1]].copy())

        return draw

    orig_sample_k = generation.sample_k

    def sample_k(model_fn, noise, init_data, steps, sampler_type, **kw):
        # sample_k offers no plain euler: run k-diffusion's on the same denoiser, schedule and scaling.
        if sampler_type != "euler":
            return orig_sample_k(model_fn, noise, init_data, steps, sampler_type=sampler_type, **kw)
        sig = {k: kw.pop(k) for k in ("sigma_min", "sigma_max", "rho")}
        kw.pop("device")
        sigmas = K.sampling.get_sigmas_polyexponential(steps, sig["sigma_min"], sig["sigma_max"], sig["rho"])
        den = K.external.VDenoiser(model_fn)
        return K.sampling.sample_euler(den, noise * sigmas[0], sigmas, extra_args=kw, disable=True)

    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch, "randn_like", randn_like)
    monkeypatch.setattr(K.sampling, "BrownianTreeNoiseSampler", brownian_tree)
    monkeypatch.setattr(generation, "sample_k", sample_k)
    latents = []
    decode = model.pretransform.decode
    monkeypatch.setattr(model.pretransform, "decode", lambda z, **k: decode(latents.append(z) or z, **k))
    meta = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
    neg = [{**m, "prompt": negative} for m in meta] if negative else None
    kw = V_SIGMAS if model.diffusion_objective == "v" else {}
    try:
        with torch.no_grad():
            audio = generation.generate_diffusion_cond(
                model, steps=steps, cfg_scale=cfg, conditioning=meta, negative_conditioning=neg,
                batch_size=len(prompts), sample_size=config["sample_size"], seed=seed, device="cpu",
                sampler_type=sampler, **kw,
            )  # fmt: skip
    finally:
        monkeypatch.undo()
    return audio.numpy(), latents[0].numpy(), used


CASES = [
    # style, sampler (None = default), steps (None = default), cfg (None = default), negative, batch
    ("small", None, None, None, None, 1),  # pingpong, 8 steps, cfg 1: stable-audio-open-small's card
    ("small", "euler", 5, 3.0, None, 1),
    ("small", "rk4", 3, 1.0, None, 1),
    ("small", "dpmpp", 4, 1.0, None, 1),
    ("1.0", "dpmpp-3m-sde", 5, 7.0, None, 1),
    ("1.0", "dpmpp-3m-sde", 5, 7.0, "muffled, low quality", 1),
    ("1.0", "dpmpp-3m-sde", 4, 7.0, None, 2),
    ("1.0", "euler", 4, 7.0, None, 1),
    ("1.0", "dpmpp-2m-sde", 4, 4.0, "noise", 1),
]


@pytest.mark.parametrize("style,sampler,steps,cfg,negative,batch", CASES)
def test_generation_matches_stable_audio_tools(
    request, monkeypatch, style, sampler, steps, cfg, negative, batch
):
    _, ref_model, conv = tiny(request, style)
    config = json.loads((conv / "config.json").read_text())["model_config"]
    ours = StableAudio.from_pretrained(conv)
    d = ours.defaults
    assert (d.sampler, d.steps, d.cfg_scale) == (
        ("pingpong", 8, 1.0) if style == "small" else ("dpmpp-3m-sde", 100, 7.0)
    )
    seconds = 0.5 if style == "small" else 0.9
    prompts = [PROMPT, "dark techno beat"][:batch]
    seed = 11
    done: list[tuple[int, int]] = []
    latents = []  # the final latents too: the tiny VAE's output is dominated by its biases
    decode = ours.model.vae.decode
    monkeypatch.setattr(ours.model.vae, "decode", lambda z: decode(latents.append(np.array(z)) or z))
    audio = ours.generate(
        prompts if batch > 1 else PROMPT, seconds=seconds, steps=steps, cfg_scale=cfg, sampler=sampler,
        negative_prompt=negative, seed=seed, progress=lambda i, n: done.append((i, n)),
    )  # fmt: skip
    n_steps = steps or d.steps
    assert done == [(i + 1, n_steps) for i in range(n_steps)]
    monkeypatch.undo()
    ref, ref_latents, used = reference_generate(monkeypatch, ref_model, config, prompts, seconds, n_steps,
                                   d.cfg_scale if cfg is None else cfg, sampler or d.sampler, seed,
                                   negative)  # fmt: skip
    name = sampler or d.sampler
    # Every draw of a stochastic sampler came from our noise (k-diffusion's euler draws too, but unused).
    expected = {"pingpong": n_steps, "dpmpp-3m-sde": n_steps - 1, "dpmpp-2m-sde": n_steps - 1}
    if name in expected:
        assert len(used) == expected[name]
    samples = round(seconds * 44100)
    assert ref.shape == (batch, 2, config["sample_size"])  # the reference returns the whole window
    assert audio.shape == (batch, 2, samples) and audio.dtype == np.float32
    err, lat_err = rel_err(audio, ref[..., :samples]), rel_err(latents[0], ref_latents)
    print(f"{style} {name} steps={n_steps} cfg={cfg} neg={bool(negative)} batch={batch}: "
          f"rel err audio {err:.2e}, latents {lat_err:.2e}")  # fmt: skip
    assert err <= TOL and lat_err <= TOL


@pytest.mark.parametrize("style", ["small", "1.0"])
def test_conditioning_matches_the_reference_conditioner(request, style):
    """T5 tokenisation (truncation keeps </s>, max_length 64 vs 128), T5, numbers and assembly."""
    _, ref_model, conv = tiny(request, style)
    ours = StableAudio.from_pretrained(conv)
    max_length = 64 if style == "small" else 128
    assert ours.model.text_max_length == max_length
    prompts = [PROMPT, LONG_PROMPT]
    meta = [{"prompt": p, "seconds_start": 0, "seconds_total": 0.7} for p in prompts]
    with torch.no_grad():
        ref = ref_model.get_conditioning_inputs(ref_model.conditioner(meta, "cpu"))
    c = ours.condition(prompts, 0.7)
    numbers = 1 if style == "small" else 2
    assert c.cross_attn_cond.shape == tuple(ref["cross_attn_cond"].shape) == (2, max_length + numbers, 32)
    assert rel_err(c.cross_attn_cond, ref["cross_attn_cond"]) <= TOL
    assert rel_err(c.global_cond, ref["global_cond"]) <= TOL
    mask = np.array(c.cross_attn_mask)
    np.testing.assert_array_equal(mask, ref["cross_attn_mask"].bool().numpy())
    assert mask[1, :max_length].all() and not mask[0, :max_length].all()  # the long prompt is truncated
    ids, _ = ours.tokenizer.encode([LONG_PROMPT], max_length=max_length, pad_to_max_length=True)
    assert ids[0, -1] == ours.tokenizer.eos_id  # truncation keeps </s>


# ------------------------------------------------------------------------------------------------ converter


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dtype_written_as_asked(stable_audio_small, tmp_path, dtype):
    src = stable_audio_small[0]
    out = convert(str(src), tmp_path / "out", dtype=dtype, t5=str(src / "t5"))
    assert json.loads((out / "config.json").read_text())["mlx_audio_generate"]["dtype"] == dtype
    weights = load_safetensors(out / "model.safetensors")
    assert {str(v.dtype) for v in weights.values()} == {f"mlx.core.{dtype}"}
    assert {k.split(".")[0] for k in weights} == {"t5", "conditioner", "dit", "vae"}
    model = StableAudio.from_pretrained(out)  # loads strictly and runs
    audio = model.generate(PROMPT, seconds=0.2, steps=2, seed=0)
    assert audio.shape == (1, 2, 8820) and np.isfinite(audio).all()


def test_converted_config(stable_audio_1_0, stable_audio_1_0_converted):
    cfg = json.loads((stable_audio_1_0_converted / "config.json").read_text())
    assert cfg["mlx_audio_generate"]["family"] == "stable_audio"
    assert cfg["mlx_audio_generate"]["dtype"] == "float32"
    assert cfg["model_config"] == json.loads((stable_audio_1_0[0] / "model_config.json").read_text())
    assert cfg["t5"]["d_model"] == 32 and (stable_audio_1_0_converted / "tokenizer.json").is_file()


def _edited_copy(src, tmp_path, edit):
    """A copy of the tiny source folder with its model.safetensors edited by `edit(dict)`."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_unknown_tensor_is_named(stable_audio_small, tmp_path):
    dst = _edited_copy(
        stable_audio_small[0], tmp_path, lambda s: s.update({"model.model.extra": torch.ones(3)})
    )
    with pytest.raises(UserError, match=r"model\.model\.extra"):
        convert(str(dst), tmp_path / "out", t5=str(dst / "t5"))
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_an_error(stable_audio_small, tmp_path):
    key = "model.model.transformer.layers.1.ff.ff.2.bias"
    dst = _edited_copy(stable_audio_small[0], tmp_path, lambda s: s.pop(key))
    with pytest.raises(UserError, match="lacks tensor"):
        convert(str(dst), tmp_path / "out", t5=str(dst / "t5"))


def test_unknown_t5_tensor_is_named(stable_audio_small, tmp_path):
    from safetensors.torch import load_file, save_file

    t5 = tmp_path / "t5"
    shutil.copytree(stable_audio_small[0] / "t5", t5)
    state = load_file(str(t5 / "model.safetensors"))
    state["encoder.extra.weight"] = torch.ones(2)
    save_file(state, str(t5 / "model.safetensors"))
    with pytest.raises(UserError, match=r"encoder\.extra\.weight"):
        convert(str(stable_audio_small[0]), tmp_path / "out", t5=str(t5))


def test_missing_or_wrong_t5(stable_audio_small, tmp_path):
    src = stable_audio_small[0]
    with pytest.raises(UserError, match="neither an existing folder"):
        convert(str(src), tmp_path / "a", t5=str(tmp_path / "no-t5"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        convert(str(src), tmp_path / "b", t5=str(tmp_path / "empty"))
    sp_only = tmp_path / "sp-only"
    shutil.copytree(src / "t5", sp_only)
    (sp_only / "tokenizer.json").rename(sp_only / "spiece.model")
    with pytest.raises(UserError, match="save_pretrained"):
        convert(str(src), tmp_path / "c", t5=str(sp_only))
    assert not any(p.name.startswith(("a", "b", "c")) for p in tmp_path.iterdir())


def test_t5_of_another_width_is_refused(stable_audio_small, tmp_path):
    from transformers import T5EncoderModel

    from tests.reference.stable_audio import tiny_t5_config

    cfg = tiny_t5_config()
    cfg.d_model = 48
    wide = tmp_path / "t5-wide"
    T5EncoderModel(cfg).save_pretrained(wide)
    shutil.copy(stable_audio_small[0] / "t5" / "tokenizer.json", wide)
    with pytest.raises(UserError, match="48 wide"):
        convert(str(stable_audio_small[0]), tmp_path / "out", t5=str(wide))


def test_diffusers_style_t5_folder(stable_audio_1_0, stable_audio_1_0_converted, tmp_path):
    """A 1.0-style repo (text_encoder/ + tokenizer/ beside model.safetensors) is its own default T5."""
    from transformers import T5EncoderModel

    src = stable_audio_1_0[0]
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("model.safetensors", "model_config.json"):
        shutil.copy(src / name, repo)
    T5EncoderModel.from_pretrained(src / "t5").save_pretrained(repo / "text_encoder")
    (repo / "tokenizer").mkdir()
    for f in (src / "t5").glob("tokenizer*.json"):
        shutil.copy(f, repo / "tokenizer")
    out = convert(str(repo), tmp_path / "out")  # no --t5: the repo's own text_encoder/
    ours, full = (
        load_safetensors(out / "model.safetensors"),
        load_safetensors(stable_audio_1_0_converted / "model.safetensors"),
    )
    assert ours.keys() == full.keys()
    assert all(mx.array_equal(ours[k], full[k]) for k in ours)
    assert (out / "tokenizer.json").read_bytes() == (src / "t5" / "tokenizer.json").read_bytes()


# ------------------------------------------------------------------------------------------- generate API


def test_generate_validation(stable_audio_small_converted):
    model = StableAudio.from_pretrained(stable_audio_small_converted)
    window = 32768 / 44100
    assert model.max_seconds == pytest.approx(window)
    bad = [
        (dict(prompt=" "), "prompt is empty"),
        (dict(seconds=0), "positive"),
        (dict(seconds=float("nan")), "positive"),
        (dict(seconds=window + 0.01), "at most 0.743 "),
        (dict(steps=0), "steps"),
        (dict(sampler="dpmpp-3m-sde"), "does not fit"),
        (dict(sampler="nope"), "choose one of"),
        (dict(cfg_scale=float("inf")), "cfg_scale"),
        (dict(seed=-1), "seed"),
    ]
    for kw, match in bad:
        args = {"prompt": PROMPT, "seconds": 0.3, "seed": 0, **kw}
        with pytest.raises(UserError, match=match):
            model.generate(args.pop("prompt"), **args)


def test_whole_window_by_default_and_seeded(stable_audio_small_converted):
    model = StableAudio.from_pretrained(stable_audio_small_converted)
    a = model.generate(PROMPT, steps=2, seed=5)
    assert a.shape == (1, 2, 32768)
    b = model.generate(PROMPT, seconds=0.3, steps=2, seed=5)
    assert b.shape == (1, 2, round(0.3 * 44100))
    np.testing.assert_array_equal(b, model.generate(PROMPT, seconds=0.3, steps=2, seed=5))
    # Same noise, but seconds_total is conditioning: the shorter request is not just a cut of the longer.
    assert 0 < rel_err(b, a[..., : b.shape[-1]]) < 1e-2
    assert rel_err(model.generate(PROMPT, seconds=0.3, steps=2, seed=6), b) > 1e-2
