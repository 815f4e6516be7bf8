"""ACE-Step 1.5 whole-song parity (mlx_audio_generate.ace_step.generate.AceStep) with the original `acestep`
pipeline on the committed tiny turbo and base checkpoints, fp32: the handler's prompts and inputs, the model
file's `generate_audio` (its noise injected, dcw_enabled=False, explicit infer_steps / shift / guidance) and
the handler's tiled VAE decode + peak normalisation, against our conversion + `generate`.

Every comparison is against reference outputs: the committed tests/fixtures/ace/generate (made by
tests/reference/ace_generate.py) and, where the reference sources are here, a fresh run of that script.
The reference's torch noise goes in through `AceStep.draw_noise` (torch's generator is not ours).
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate.ace_step.generate import AceStep, peak_normalize, tiled_decode
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from tests.reference import ace, ace_generate
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
CASES = list(ace_generate.CASES)


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if ace.reference_root() is None else ace_generate.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "generate", live), "generate")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The tiny DiT folders converted as released: vae/ and the text encoder found beside them."""
    root = tmp_path_factory.mktemp("ace-gen")
    return {v: convert(str(FIXTURES / f"acestep-v15-{v}"), root / v) for v in ("turbo", "base")}


def _generate(
    model: AceStep, case: dict, noise: np.ndarray, capture: list | None = None, **over
) -> np.ndarray:
    model.draw_noise = lambda seed, shape: mx.array(noise)
    model.decode_chunk = case["chunk"]
    if capture is not None:
        decode = AceStep.decode.__get__(model)

        def spy(latents):
            capture.append(np.array(latents))
            return decode(latents)

        model.decode = spy
    kwargs = dict(
        lyrics=case["lyrics"], language=case["language"], bpm=case["bpm"],
        keyscale=case["keyscale"] or None, timesignature=case["timesignature"] or None,
        steps=case["steps"], shift=case["shift"],
    )  # fmt: skip
    if case["variant"] != "turbo":
        kwargs.update(
            guidance_scale=case["guidance"],
            cfg_interval_start=case["interval"][0],
            cfg_interval_end=case["interval"][1],
        )
    kwargs.update(over)
    prompts = [case["caption"]] * len(case["seeds"])
    return model.generate(prompts, seconds=case["seconds"], seed=list(case["seeds"]), **kwargs)


@pytest.mark.parametrize("name", CASES)
def test_whole_generation(ref, converted, name):
    """Caption + metas + lyrics -> latents -> audio, as the reference pipeline: the latents of
    generate_audio and the decoded, normalised audio (every 37th sample, the first and last 4000 in full)."""
    meta, arrays = ref
    case = meta["cases"][name]
    model = mag.load(str(converted[case["variant"]]))
    lat: list = []
    audio = _generate(model, case, arrays[f"{name}.noise"], lat)
    n_out = round(case["seconds"] * 48000)
    assert audio.shape == (len(case["seeds"]), 2, n_out) and audio.dtype == np.float32
    err_lat = rel_err(lat[0], arrays[f"{name}.latents"])
    stride = meta["audio_stride"]
    ref_strided = arrays[f"{name}.audio.strided"][..., : math.ceil(n_out / stride)]
    err_audio = rel_err(audio[..., ::stride], ref_strided)
    err_head = rel_err(audio[..., : meta["edge"]], arrays[f"{name}.audio.head"])
    print(f"{name}: latents {err_lat:.2e} audio {err_audio:.2e} head {err_head:.2e}")
    assert max(err_lat, err_audio, err_head) <= TOL
    if case["frames"] * 1920 == n_out:  # the reference's clip ends where ours does
        assert rel_err(audio[..., -meta["edge"] :], arrays[f"{name}.audio.tail"]) <= TOL
    else:  # shorter than 128 frames: the reference decodes 128 and keeps them; we cut
        assert case["frames"] == 128 and n_out < 128 * 1920


def test_peak_normalisation(ref, converted):
    """Latents whose decode exceeds 1: each row divided by its own peak, as the handler's decode."""
    meta, arrays = ref
    model = mag.load(str(converted["turbo"]))
    audio = peak_normalize(np.array(model.decode(mx.array(arrays["loud.latents"]))))
    err = rel_err(audio[..., :: meta["audio_stride"]], arrays["loud.audio.strided"])
    print(f"loud decode + normalisation rel err {err:.2e}")
    assert err <= TOL
    assert np.abs(audio).max() <= 1.0 + 1e-6 and (arrays["loud.peak"] > 1).any()


def test_silence_tiled_past_its_end(ref, converted):
    """A song longer than the shipped silence latent: its source latents are the latent tiled."""
    _, arrays = ref
    model = mag.load(str(converted["turbo"]))
    want = arrays["silence.tiled"]
    assert want.shape[1] > model.model.silence_latent.shape[1]
    assert rel_err(model.silence(want.shape[1])[None], want) == 0.0


def test_tiled_decode_equals_one_piece(converted):
    """The overlap-discard tiling (windows of 96 -> overlap 32, stride 32) adds nothing of its own."""
    model = mag.load(str(converted["turbo"]))
    z = mx.random.normal((1, 8, 150), key=mx.random.key(3))
    whole = np.array(model.model.vae.decode(z))
    tiled = np.array(tiled_decode(model.model.vae.decode, z, 96, 64))
    assert tiled.shape == whole.shape
    assert rel_err(tiled, whole) <= TOL


def test_rows_equal_their_prompt_alone(converted):
    """Per-row seeds: a row of a batch (same or different prompts) equals that prompt generated alone."""
    model = mag.load(str(converted["turbo"]))
    kw = dict(seconds=4.0, steps=2)
    both = model.generate(
        ["lofi beat", "lofi beat", "a much longer caption about jazz"], seed=[1, 2, 3], **kw
    )
    assert np.allclose(both[1], model.generate("lofi beat", seed=[2], **kw)[0], atol=1e-5)
    assert np.allclose(
        both[2], model.generate("a much longer caption about jazz", seed=[3], **kw)[0], atol=1e-5
    )
    assert not np.allclose(both[0], both[1])
    assert model.generate("x", seconds=4.013, seed=0, steps=1).shape == (1, 2, round(4.013 * 48000))
    one = model.generate("lofi beat", seed=9, **kw)
    assert np.array_equal(one, model.generate("lofi beat", seed=9, **kw))  # deterministic


def test_stages_and_progress(converted):
    model = mag.load(str(converted["base"]))
    stages, steps = [], []
    model.generate("x", seconds=4.0, seed=0, steps=3, guidance_scale=2.0,
                   progress=lambda d, t: steps.append((d, t)),
                   on_stage=lambda s, d, t: stages.append((s, d, t)))  # fmt: skip
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert [s for s in stages if s[0] != "generate"] == [
        ("text", 0, 1),
        ("text", 1, 1),
        ("decode", 0, 1),
        ("decode", 1, 1),
    ]
    assert [s for s in stages if s[0] == "generate"] == [("generate", i, 3) for i in range(4)]


@pytest.mark.parametrize(
    "variant, kwargs, expect",
    [
        ("turbo", {"guidance_scale": 3.0}, "turbo"),
        ("turbo", {"cfg_interval_start": 0.2}, "turbo"),
        ("base", {"cfg_interval_start": 0.8, "cfg_interval_end": 0.2}, "must not exceed"),
        ("turbo", {"steps": 21}, "steps"),
        ("base", {"steps": 201}, "steps"),
        ("turbo", {"bpm": 29}, "bpm"),
        ("turbo", {"bpm": 301}, "bpm"),
        ("turbo", {"keyscale": "H major"}, "keyscale"),
        ("turbo", {"timesignature": "5"}, "timesignature"),
        ("turbo", {"language": "xx"}, "language"),
        ("turbo", {"shift": 0.5}, "shift"),
        ("turbo", {"seconds": 600.5}, "at most 600"),
        ("turbo", {"seconds": 0}, "seconds"),
    ],
)
def test_bad_settings(converted, variant, kwargs, expect):
    model = mag.load(str(converted[variant]))
    seconds = kwargs.pop("seconds", 4.0)
    with pytest.raises(UserError, match=expect):
        model.generate("x", seconds=seconds, seed=0, **kwargs)
