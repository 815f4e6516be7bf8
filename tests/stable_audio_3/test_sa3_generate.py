"""Whole Stable Audio 3 generations (StableAudio3.generate) against the reference's
`StableAudioModel(...).generate(...)` on both tiny checkpoints (small: SAME-S + plain DiT, medium: SAME-L +
differential DiT), fp32: relative error max|ours - ref| / max|ref| <= 1e-4 on the audio and on the latents
the decoder receives. The latents are the sharp check: the tiny random SAME decoders' audio depends only
weakly on their latents (different latents move it by 0.3-0.6 %), the decode itself is tested in
test_same.py; breaking the padding mask, a region's mask or APG moves the latents by 4e-3 to 3e-2.

Cases (tests/reference/sa3_generate.py): text-to-audio (batch of 2, cfg 1, ping-pong), CFG with APG and a
negative prompt, the -base path (rectified_flow config: Euler with CFG 7, dpmpp with plain CFG, rk4 with
apg 0.5), audio-to-audio (default level 0.9, 0.5 with Euler, 0.6 on medium), inpainting with two regions,
continuation (a region from the clip's end), variable length with the 6 s headroom and a padded latent
(2048 Hz config copy), the exact-length mode (headroom 0, an even and an odd latent count), and chunked SAME
encode/decode (config `pretransform.chunked`, 160 latents).

Converted with our converter from the committed checkpoints (config variants written beside symlinks to
their weights). Injected, and said so: the reference's initial noise and ping-pong draws (recorded from its
own torch RNG, fed through `draw_noise`); the SAME decoder's `mask_noise` is 0 on the reference side (ours
never draws it); ExpoFourierFeatures' frequencies as torch computes them (its CPU float32 exp is one ulp off
the exact value for a few frequencies; `test_own_frequencies` measures the whole generation with ours).

Reference outputs: the committed tests/fixtures/sa3/generate always; with the reference sources here
(tests.reference.sa3.reference_root()) also a live run of `make()` into a tmp folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate.convert import convert
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs
from tests.reference.sa3 import reference_root
from tests.reference.sa3_generate import variant_config

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
GEN_KEYS = ("steps", "cfg_scale", "apg_scale", "sampler", "negative_prompt", "init_noise_level")


@pytest.fixture(scope="module", params=SOURCES)
def ref(request, tmp_path_factory):

    def live() -> Path:
        from tests.reference.sa3_generate import make

        return make(tmp_path_factory.mktemp("sa3-generate"))

    live_run = None if reference_root() is None else live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "generate", live_run), "generate")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(checkpoint, variant) -> our converted folder (built on first use)."""
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("sa3-converted")

    def get(ckpt: str, variant: str) -> Path:
        if (ckpt, variant) not in cache:
            src = root / f"src-{ckpt}-{variant}"
            src.mkdir()
            committed = FIXTURES / ckpt
            cfg = variant_config(json.loads((committed / "model_config.json").read_text()), variant)
            (src / "model_config.json").write_text(json.dumps(cfg))
            for name in ("model.safetensors", "t5gemma-b-b-ul2"):
                os.symlink(committed / name, src / name)
            cache[(ckpt, variant)] = convert(str(src), root / f"{ckpt}-{variant}")
        return cache[(ckpt, variant)]

    return get


def rel(ours, ref: np.ndarray) -> float:
    o = np.asarray(ours, dtype=np.float64)
    assert o.shape == ref.shape, (o.shape, ref.shape)
    return float(np.abs(o - ref).max() / max(np.abs(ref).max(), 1e-30))


def inject_frequencies(model, t: dict, ckpt: str) -> None:
    model.model.dit._expo_freqs = mx.array(t[f"{ckpt}/expo_freqs/dit"])
    model.model.conditioner.conditioners["seconds_total"]._freqs = mx.array(t[f"{ckpt}/expo_freqs/seconds"])


def generate_like(model, case: dict, t: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Our generation of a case with the reference's noise: (audio, decoder input latents, steps drawn)."""
    name = case["name"]
    noise, drawn = t[f"{name}/noise"], t.get(f"{name}/drawn")
    used: list[int] = []

    def draw_noise(seed, shape, steps):
        assert tuple(shape) == noise.shape

        def step(i, shp):
            used.append(i)
            return mx.array(drawn[i])

        return mx.array(noise), step

    latents: list[np.ndarray] = []
    real_decode = model.decode_pieces  # the decoder's input latents, recorded
    model.draw_noise = draw_noise
    model.decode_pieces = lambda z: (latents.append(np.array(z)), real_decode(z))[1]
    try:
        kwargs = {k: case[k] for k in GEN_KEYS if k in case}
        for k in ("init_audio", "inpaint_audio"):
            if case.get(k):
                kwargs[k] = t[f"audio/{case[k]}"]
        if case.get("inpaint_regions"):
            kwargs["inpaint_regions"] = [tuple(r) for r in case["inpaint_regions"]]
        if "headroom_seconds" in case:
            kwargs["headroom_seconds"] = case["headroom_seconds"]
        out = model.generate(case["prompts"], seconds=case["seconds"], seed=case["seed"], **kwargs)
    finally:
        del model.draw_noise, model.decode_pieces
    return out, latents[0], used


CASE_NAMES = [c["name"] for c in json.loads((FIXTURES / "generate" / "meta.json").read_text())["cases"]]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_generation_matches_the_reference(ref, converted, name):
    meta, t = ref
    case = next(c for c in meta["cases"] if c["name"] == name)
    model = mag.load(str(converted(case["ckpt"], case["variant"])))
    inject_frequencies(model, t, case["ckpt"])
    out, latents, used = generate_like(model, case, t)
    ref_out = t[f"{name}/out"]
    drawn = t.get(f"{name}/drawn")
    # the reference's ping-pong draws were used in order, all but the last (scaled by t = 0: ours skips it);
    # none for the deterministic samplers
    assert used == list(range(0 if drawn is None else len(drawn) - 1))
    err_z = rel(latents, t[f"{name}/latents"])
    n = ref_out.shape[-1]  # the reference cuts at int(seconds * sr), ours at round(): equal here
    assert out.shape == (len(case["prompts"]), 2, n), out.shape
    err = rel(out, ref_out)
    print(f"{name}: audio {err:.2e}, latents {err_z:.2e}")
    assert err_z <= TOL and err <= TOL, (err_z, err)


def test_own_frequencies(ref, converted):
    """The same generations with our own (exact) Fourier frequencies: latents and audio within 1e-4."""
    meta, t = ref
    for name in ("s-cfg-neg", "s-base-euler", "s-varlen", "m-t2a", "m-cfg-neg"):
        case = next(c for c in meta["cases"] if c["name"] == name)
        model = mag.load(str(converted(case["ckpt"], case["variant"])))
        out, latents, _ = generate_like(model, case, t)
        err, err_z = rel(out, t[f"{name}/out"]), rel(latents, t[f"{name}/latents"])
        print(f"{name} with our frequencies: audio {err:.2e}, latents {err_z:.2e}")
        assert err <= TOL and err_z <= TOL, (name, err, err_z)


def test_padding_and_headroom_lengths(ref, converted):
    """The reference's length rules, read off its outputs: latents for the 6 s headroom (aligned to 2,
    capped at sample_size) and for headroom 0; the audio past the padding mask is zero."""
    meta, t = ref
    model = mag.load(str(converted("small", "varlen")))
    for case in meta["cases"]:
        if case["variant"] not in ("varlen", "chunked"):
            continue
        headroom = case.get("headroom_seconds", 6.0)
        n = model.sample_size(case["seconds"], headroom)
        assert t[f"{case['name']}/latents"].shape[-1] == n // model.model.downsampling_ratio
    # s-varlen: 1.03 s + 6 s -> 114 latents, 113 valid (the mask's last latent is padding)
    pad = model.padding_mask(1.03, 6.0, 114)
    assert pad.sum() == 113 and not pad[-1]
    assert model.sample_size(1.03, 0.0) == 18 * 128 and model.padding_mask(1.03, 0.0, 18).sum() == 17
