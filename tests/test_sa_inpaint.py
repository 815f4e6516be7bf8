"""Stable Audio inpainting against stable-audio-tools 0.0.16's masked sampling (`mask_args`), same noise.

0.0.16 cannot be imported beside 0.0.19, and 0.0.17 removed `mask_args`, so the reference's masked-sampling
code is vendored below (verbatim apart from the marked lines) and run on the installed reference model
(0.0.19's DiT, conditioner and VAE, which 0.0.16 shares) and k-diffusion 0.1.1 (0.0.16's pin). `build_mask`
and `get_bmask` come from the installed 0.0.19, which still ships them unchanged from 0.0.16.
Random draws are routed to ours as in test_sa_variation.py, the inpainting callback's `randn_like` included.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.diffusion import inpaint
from mlx_audio_generate.diffusion import samplers as S
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.generate import StableAudio, noise_keys
from tests.reference import require
from tests.test_sa_variation import (
    PROMPT,
    SR,
    TOL,
    V_SIGMAS,
    K,
    Noise,
    clip,
    inject,
    record_start,
    rel_err,
    run_ours,
    sat,
    tiny,
)

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch")

build_mask = sat.inference.generation.build_mask
get_bmask = sat.inference.sampling.get_bmask
prepare_audio = sat.inference.utils.prepare_audio

# ------------------------------------------------------------------------------------------------------------
# Vendored from stable-audio-tools 0.0.16 (https://pypi.org/project/stable-audio-tools/0.0.16/,
# stable_audio_tools/inference/sampling.py `sample_k`; the last release with masked sampling).


def sample_k_0016(
    model_fn, noise, init_data=None, mask=None, steps=100, sampler_type="dpmpp-2m-sde", sigma_min=0.5,
    sigma_max=50, rho=1.0, device="cuda", callback=None, cond_fn=None, **extra_args,
):  # fmt: skip
    denoiser = K.external.VDenoiser(model_fn)

    # (cond_fn branch dropped: unused here)

    # Make the list of sigmas. Sigma values are scalars related to the amount of noise each denoising step has
    sigmas = K.sampling.get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho, device=device)
    # Scale the initial noise by sigma
    noise = noise * sigmas[0]

    wrapped_callback = callback

    if mask is None and init_data is not None:
        # VARIATION (no inpainting)
        # set the initial latent to the init_data, and noise it with initial sigma
        x = init_data + noise
    elif mask is not None and init_data is not None:
        # INPAINTING
        bmask = get_bmask(0, steps, mask)
        # initial noising
        input_noised = init_data + noise
        # set the initial latent to a mix of init_data and noise, based on step 0's binary mask
        x = input_noised * bmask + noise * (1 - bmask)

        # define the inpainting callback function (Note: side effects, it mutates x)
        # See https://github.com/crowsonkb/k-diffusion/blob/master/k_diffusion/sampling.py#L596C13-L596C105
        # callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        # This is called immediately after `denoised = model(x, sigmas[i] * s_in, **extra_args)`
        def inpainting_callback(args):
            i = args["i"]
            x = args["x"]
            sigma = args["sigma"]
            # denoised = args["denoised"]
            # noise the init_data input with this step's appropriate amount of noise
            input_noised = init_data + torch.randn_like(init_data) * sigma
            # shrinking hard mask
            bmask = get_bmask(i, steps, mask)
            # mix input_noise with x, using binary mask
            new_x = input_noised * bmask + x * (1 - bmask)
            # mutate x
            x[:, :, :] = new_x[:, :, :]

        # wrap together the inpainting callback and the user-submitted callback.
        if callback is None:
            wrapped_callback = inpainting_callback
        else:
            wrapped_callback = lambda args: (inpainting_callback(args), callback(args))  # noqa: E731
    else:
        # SAMPLING
        # set the initial latent to noise
        x = noise

    # (`with torch.cuda.amp.autocast():` dropped: a no-op on CPU)
    if sampler_type == "k-heun":
        return K.sampling.sample_heun(
            denoiser, x, sigmas, disable=False, callback=wrapped_callback, extra_args=extra_args
        )  # noqa: E501
    elif sampler_type == "dpmpp-2m-sde":
        return K.sampling.sample_dpmpp_2m_sde(
            denoiser, x, sigmas, disable=False, callback=wrapped_callback, extra_args=extra_args
        )  # noqa: E501
    elif sampler_type == "dpmpp-3m-sde":
        return K.sampling.sample_dpmpp_3m_sde(
            denoiser, x, sigmas, disable=False, callback=wrapped_callback, extra_args=extra_args
        )  # noqa: E501
    # Not in 0.0.16's list (0.0.19's sample_k has dpmpp-2m; euler is ours): the same k-diffusion callback.
    elif sampler_type == "dpmpp-2m":
        return K.sampling.sample_dpmpp_2m(
            denoiser, x, sigmas, disable=False, callback=wrapped_callback, extra_args=extra_args
        )  # noqa: E501
    elif sampler_type == "euler":
        return K.sampling.sample_euler(
            denoiser, x, sigmas, disable=False, callback=wrapped_callback, extra_args=extra_args
        )  # noqa: E501
    raise ValueError(sampler_type)


def generate_diffusion_cond_0016(
    model, steps, cfg_scale, conditioning, batch_size, sample_size, seed, device, init_audio, mask_args,
    **sampler_kwargs,
):  # fmt: skip
    """0.0.16's `generate_diffusion_cond`, reduced to the init-audio + mask_args path (no negative prompt).
    Returns the sampled latents before the VAE decode (the caller decodes) and the encoded init audio."""
    audio_sample_size = sample_size
    sample_size = sample_size // model.pretransform.downsampling_ratio
    torch.manual_seed(seed)
    noise = torch.randn([batch_size, model.io_channels, sample_size], device=device)
    conditioning_tensors = model.conditioner(conditioning, device)
    conditioning_inputs = model.get_conditioning_inputs(conditioning_tensors)
    negative_conditioning_tensors = {}

    in_sr, init_audio = init_audio
    io_channels = model.pretransform.io_channels
    init_audio = prepare_audio(init_audio, in_sr=in_sr, target_sr=model.sample_rate, target_length=audio_sample_size, target_channels=io_channels, device=device)  # noqa: E501 # fmt: skip
    init_audio = model.pretransform.encode(init_audio)
    init_audio = init_audio.repeat(batch_size, 1, 1)

    # Inpainting mask
    # Cut and paste init_audio according to cropfrom, pastefrom, pasteto
    # This is helpful for forward and reverse outpainting
    cropfrom = math.floor(mask_args["cropfrom"] / 100.0 * sample_size)
    pastefrom = math.floor(mask_args["pastefrom"] / 100.0 * sample_size)
    pasteto = math.ceil(mask_args["pasteto"] / 100.0 * sample_size)
    assert pastefrom < pasteto, "Paste From should be less than Paste To"
    croplen = pasteto - pastefrom
    if cropfrom + croplen > sample_size:
        croplen = sample_size - cropfrom
    cropto = cropfrom + croplen
    pasteto = pastefrom + croplen
    cutpaste = init_audio.new_zeros(init_audio.shape)
    cutpaste[:, :, pastefrom:pasteto] = init_audio[:, :, cropfrom:cropto]
    init_audio = cutpaste
    # Build a soft mask (list of floats 0 to 1, the size of the latent) from the given args
    mask = build_mask(sample_size, mask_args)
    mask = mask.to(device)

    sampled = sample_k_0016(model.model, noise, init_audio, mask, steps, **sampler_kwargs, **conditioning_inputs, **negative_conditioning_tensors, cfg_scale=cfg_scale, batch_cfg=True, rescale_cfg=True, device=device)  # noqa: E501 # fmt: skip
    return sampled, init_audio, mask


# End of vendored code.
# ------------------------------------------------------------------------------------------------------------


def mask_args_for(start, end, soft_l, soft_r, marination, window_s):
    """Our seconds as the reference's percentages of the window (cut/paste at its identity defaults)."""
    pct = lambda s: 100.0 * s / window_s  # noqa: E731
    return {"cropfrom": 0.0, "pastefrom": 0.0, "pasteto": 100.0, "maskstart": pct(start), "maskend": pct(end),
            "softnessL": pct(soft_l), "softnessR": pct(soft_r), "marination": marination}  # fmt: skip


def test_mask_matches_reference_build_mask_and_get_bmask():
    frames, window_s = 24, 24 * 2048 / SR
    cases = [(0.3, 0.75, 0.1, 0.05, 0.0), (0.0, 1.1, 0.0, 0.0, 0.0), (0.5, 1.0, 0.2, 0.2, 0.3),
             (0.1, 0.2, 0.0, 0.1, 0.9), (0.33, 0.9, 0.3, 0.25, 0.0)]  # fmt: skip
    for start, end, sl, sr_, mar in cases:
        bounds = inpaint.frame_bounds(start, end, sl, sr_, SR, 2048)
        ours = inpaint.build_mask(frames, *bounds, marination=mar)
        ref = build_mask(frames, mask_args_for(start, end, sl, sr_, mar, window_s)).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)
        for steps in (1, 3, 8, 100):
            for i in range(steps):
                np.testing.assert_array_equal(
                    inpaint.binary_mask(i, steps, ours), get_bmask(i, steps, torch.from_numpy(ref)).numpy()
                )  # noqa: E501


def reference_inpaint(
    monkeypatch, model, config, prompts, seconds, steps, cfg, sampler, seed, audio, mask_args
):
    shape = (len(prompts), model.io_channels, config["sample_size"] // model.pretransform.downsampling_ratio)
    noise = Noise(seed, shape, steps)
    inject(monkeypatch, noise)
    starts = []
    fn = {"k-heun": "sample_heun", "euler": "sample_euler"}.get(
        sampler, "sample_" + sampler.replace("-", "_")
    )
    record_start(monkeypatch, K.sampling, fn, starts)
    meta = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
    try:
        with torch.no_grad():
            sampled, init, mask = generate_diffusion_cond_0016(
                model, steps, cfg, meta, len(prompts), config["sample_size"], seed, "cpu",
                (SR, torch.from_numpy(audio.copy())), mask_args, sampler_type=sampler, **V_SIGMAS,
            )  # fmt: skip
            # Our documented last step (not the reference's): frames with mask 0 take the input's latents.
            kept = torch.where(mask == 0, init, sampled)
            out = model.pretransform.decode(kept)
    finally:
        monkeypatch.undo()
    assert noise.used == {"steps": steps - 1 if sampler.endswith("-sde") else 0, "mask": steps, "vae": 1}
    arrays = {"audio": out, "sampled": sampled, "kept": kept, "start": starts[0], "mask": mask}
    return {k: v.numpy() for k, v in arrays.items()}


CASES = [
    # sampler, steps, cfg, (mask_start, mask_end, softness_left, softness_right, marination), batch
    ("dpmpp-3m-sde", 6, 7.0, (0.3, 0.75, 0.1, 0.05, 0.0), 1),  # stable-audio-open-1.0's sampler
    ("dpmpp-3m-sde", 4, 7.0, (0.5, 1.0, 0.0, 0.0, 0.3), 2),
    ("dpmpp-2m-sde", 4, 4.0, (0.1, 0.6, 0.2, 0.0, 0.0), 1),
    ("k-heun", 3, 7.0, (0.4, 0.9, 0.0, 0.1, 0.0), 1),
    ("euler", 3, 7.0, (0.2, 0.5, 0.0, 0.0, 0.0), 1),
    ("dpmpp-2m", 4, 7.0, (0.6, 1.05, 0.1, 0.1, 0.5), 1),
]


@pytest.mark.parametrize("sampler,steps,cfg,mask,batch", CASES)
def test_inpainting_matches_stable_audio_tools_0016(request, monkeypatch, sampler, steps, cfg, mask, batch):
    ref, config, ours = tiny(request, "1.0")
    start, end, soft_l, soft_r, marination = mask
    prompts = [PROMPT, "glassy bells"][:batch]
    audio = clip(1.1, seed=6)
    seed = 13
    got = run_ours(monkeypatch, ours, prompts, steps=steps, cfg_scale=cfg, sampler=sampler, seed=seed,
                   inpaint_audio=audio, mask_start=start, mask_end=end, mask_softness_left=soft_l,
                   mask_softness_right=soft_r, marination=marination)  # fmt: skip
    assert got["progress"] == [(i + 1, steps) for i in range(steps)]
    seconds = audio.shape[1] / SR
    window_s = config["sample_size"] / SR
    want = reference_inpaint(monkeypatch, ref, config, prompts, seconds, steps, cfg, sampler, seed, audio,
                             mask_args_for(start, end, soft_l, soft_r, marination, window_s))  # fmt: skip
    assert (want["mask"] > 0).any() and (want["mask"] == 0).any()
    n = audio.shape[1]
    errs = {  # latents: after the paste on both sides (test_sampler_output... checks them before it)
        "start": rel_err(got["start"], want["start"]),
        "latents": rel_err(got["latents"], want["kept"]),
        "audio": rel_err(got["audio"], want["audio"][..., :n]),
    }
    print(f"inpaint {sampler} steps={steps} mask={mask} batch={batch}: " + ", ".join(
        f"{k} {v:.2e}" for k, v in errs.items()))  # fmt: skip
    assert max(errs.values()) <= TOL, errs


def test_sampler_output_matches_before_the_paste(request, monkeypatch):
    """The faithful port itself (S.sample with a mask), before generate's paste, on every frame."""
    ref, config, ours = tiny(request, "1.0")
    audio, seed, steps = clip(1.1, seed=7), 5, 5
    mask_args = mask_args_for(0.2, 0.7, 0.1, 0.1, 0.2, config["sample_size"] / SR)
    want = reference_inpaint(monkeypatch, ref, config, [PROMPT], audio.shape[1] / SR, steps, 7.0,
                             "dpmpp-3m-sde", seed, audio, mask_args)  # fmt: skip
    noise = Noise(seed, (1, 8, 24), steps)
    seconds = audio.shape[1] / SR
    cond = ours.condition([PROMPT], seconds)
    dit = ours.model.dit
    dit_cond = dit.cfg_condition(cond.cross_attn_cond, cond.global_cond, 7.0)
    init = ours.encode_audio(ours.prepare_audio(ours.load_audio(audio)), mx.array(noise.vae))
    steps_fn = lambda i, shape: mx.array(noise.steps[i])  # noqa: E731
    mask_fn = lambda i, shape: mx.array(noise.mask[i])  # noqa: E731
    bounds = inpaint.frame_bounds(0.2, 0.7, 0.1, 0.1, SR, 2048)
    mask = inpaint.build_mask(24, *bounds, marination=0.2)
    sampled = S.sample(lambda x, t: dit.guided(x, t, dit_cond, 7.0), mx.array(noise.initial), steps,
                       objective="v", sampler="dpmpp-3m-sde", init_data=init, inpaint_mask=mask,
                       inpaint_noise_fn=mask_fn, noise_fn=steps_fn)  # fmt: skip
    err = rel_err(sampled, want["sampled"])
    print(f"masked sampling (no paste) rel err {err:.2e}")
    assert err <= TOL


def test_outside_the_mask_keeps_the_input(stable_audio_1_0_converted):
    """Outside the mask the output is the clip up to the VAE round trip (encode -> decode, same noise),
    except within the decoder's reach of the regenerated frames, which is measured here."""
    ours = StableAudio.from_pretrained(stable_audio_1_0_converted)
    audio, seed, steps = clip(1.1, seed=8), 4, 4
    start, end = 0.85, 1.05
    out = ours.generate(PROMPT, steps=steps, seed=seed, inpaint_audio=audio, mask_start=start, mask_end=end)
    n = audio.shape[1]
    vae = ours.model.vae
    vae_noise = mx.random.normal((1, 8, 24), key=noise_keys(seed).vae)
    z = ours.encode_audio(ours.prepare_audio(ours.load_audio(audio)), vae_noise)
    roundtrip = np.array(vae.decode(z))[..., :n]
    first, last = inpaint.frame_bounds(start, end, 0, 0, SR, 2048)[:2]
    regenerated = np.zeros(24, bool)
    regenerated[first:last] = True
    # The samples a change of the regenerated frames can reach through the decoder.
    poked = np.array(vae.decode(mx.where(mx.array(regenerated), z + 3.0, z)))[..., :n]
    reach = (np.abs(poked - roundtrip) > 1e-6 * np.abs(roundtrip).max()).any(axis=(0, 1))
    outside = ~reach
    assert outside[: 4 * 2048].all() and not outside[first * 2048 : min(last * 2048, n)].any()
    rt_err = np.abs(roundtrip - audio)[..., outside].max()
    out_err = np.abs(out[0] - audio)[..., outside].max()
    near = ~outside & (np.arange(n) < first * 2048)
    near_err = np.abs(out[0] - audio)[..., near].max()
    print(f"VAE round-trip max error {rt_err:.3e}; outside the mask {out_err:.3e} ({outside.sum()} samples); "
          f"within the decoder's reach ({near.sum()} samples) {near_err:.3e}")  # fmt: skip
    assert out_err <= rt_err * (1 + 1e-5) + 1e-6
    assert rel_err(out[0][..., outside], roundtrip[0][..., outside]) <= 1e-5
    # ... while the masked region was regenerated.
    inside = slice(first * 2048, min(last * 2048, n))
    assert rel_err(out[0][..., inside], roundtrip[0][..., inside]) > 1e-2


def test_bad_input_is_a_user_error(stable_audio_small_converted, stable_audio_1_0_converted, tmp_path):
    small = StableAudio.from_pretrained(stable_audio_small_converted)
    big = StableAudio.from_pretrained(stable_audio_1_0_converted)
    audio = clip(0.8)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF0000WAVEjunk")
    ok = dict(inpaint_audio=audio, mask_start=0.2, mask_end=0.5)
    bad = [
        (small, ok, "v-objective"),
        (big, {**ok, "inpaint_audio": str(tmp_path / "none.wav")}, "does not exist"),
        (big, {**ok, "inpaint_audio": str(junk)}, "cannot read"),
        (big, {**ok, "mask_end": 0.9}, "outside the clip"),
        (big, {**ok, "mask_start": -0.1}, "outside the clip"),
        (big, {**ok, "mask_end": 0.6, "seconds": 0.5}, "outside the clip"),
        (big, {**ok, "mask_end": 0.1}, "must be after"),
        (big, {**ok, "mask_end": 0.2}, "must be after"),
        (big, {**ok, "mask_end": None}, "needs --mask-start"),
        (big, {**ok, "mask_start": float("nan")}, r"--mask-start \(mask_start\) must be a number"),
        (big, {**ok, "mask_softness_left": 0.2, "mask_softness_right": 0.2}, "longer than the mask"),
        (big, {**ok, "mask_softness_left": -0.1}, ">= 0"),
        (big, {**ok, "marination": 1.5}, "marination"),
        (big, dict(mask_start=0.2, mask_end=0.5), "need --inpaint-audio"),
        (big, {**ok, "init_noise_level": 3.0}, "need --init-audio"),
    ]
    for model, kw, match in bad:
        with pytest.raises(UserError, match=match) as e:
            model.generate(PROMPT, steps=1, seed=0, **kw)
        assert "\n" not in str(e.value)
