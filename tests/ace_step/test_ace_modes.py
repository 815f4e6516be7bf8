"""ACE-Step 1.5's tasks beyond text2music (mlx_audio_generate.ace_step: modes.py, tasks.py, source_audio.py,
generate.py) against the original `acestep` handler on the committed tiny turbo and base checkpoints, fp32:
repaint, cover from audio and from codes (cover strength < 1, cover noise), retake variance, a timbre
reference, lego, extract, complete; each the whole generation, latents and decoded audio.

Every comparison is against reference outputs: the committed tests/fixtures/ace/modes (made by
tests/reference/ace_modes.py) and, where the reference sources are here, a fresh run of that script. What
the reference draws at random is injected into ours (and said so here):
- the DiT noise (and retake's second noise) through `AceStep.draw_noise`;
- the VAE posterior: the reference samples it (`latent_dist.sample()`), ours uses its mean by default; the
  test feeds the reference's draws through `AceStep.vae_noise`, in encode order;
- the timbre reference's three segment offsets (Python `random` in the reference; ours draws them from the
  seed) through `AceStep.timbre_offsets`.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate.ace_step import modes as M
from mlx_audio_generate.ace_step.generate import AceStep
from mlx_audio_generate.ace_step.source_audio import timbre_offsets
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from tests.reference import ace, ace_modes
from tests.reference.ace_modes import test_audio as make_audio
from tests.reference.ace_modes import test_codes as make_codes
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
CASES = list(ace_modes.CASES)


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if ace.reference_root() is None else ace_modes.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "modes", live), "modes")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ace-modes")
    return {v: convert(str(FIXTURES / f"acestep-v15-{v}"), root / v) for v in ("turbo", "base")}


def _inject(model: AceStep, name: str, case: dict, arrays: dict) -> None:
    """The reference's random draws into ours (module doc)."""
    noises = iter([arrays[f"{name}.noise"], arrays.get(f"{name}.retake_noise")])
    model.draw_noise = lambda seed, shape: mx.array(next(noises))
    draws = iter([arrays[f"{name}.vae_noise.{k}"] for k in range(case["vae_draws"])])
    model.vae_noise = lambda shape: mx.array(next(draws))
    if case["offsets"]:
        model.timbre_offsets = lambda samples, seed: tuple(case["offsets"])


def _kwargs(case: dict, arrays: dict, name: str) -> dict:
    kw = dict(
        lyrics=case["lyrics"], language=case["language"], bpm=case["bpm"], keyscale=case["keyscale"],
        timesignature=case["timesignature"], steps=case["steps"], shift=case["shift"], task=case["task"],
    )  # fmt: skip
    if case["variant"] != "turbo":
        kw["guidance_scale"] = case["guidance"]
    if "src" in case:
        kw["src_audio"] = make_audio(**case["src"])
    if "ref" in case:
        kw["reference_audio"] = make_audio(**case["ref"])
    if "codes" in case:
        kw["audio_codes"] = M.codes_text(make_codes(case["codes"]))  # the LM's string form
    if "repaint" in case:
        kw["repaint_start"], kw["repaint_end"] = case["repaint"]
    if "track" in case:
        kw["track"] = case["track"]
    if "cover_strength" in case:
        kw["audio_cover_strength"] = case["cover_strength"]
    if "cover_noise" in case:
        kw["cover_noise_strength"] = case["cover_noise"]
    if "retake" in case:
        kw["retake_variance"], kw["retake_seed"] = case["retake"]
    return kw


@pytest.mark.parametrize("name", CASES)
def test_whole_generation(ref, converted, name):
    """Task inputs -> latents -> audio as the reference handler: the latents of generate_audio (after the
    repaint's boundary blend) and the decoded, normalised (repaint / lego: spliced) audio, every 37th sample
    and the first 4000 in full."""
    meta, arrays = ref
    case = meta["cases"][name]
    model = mag.load(str(converted[case["variant"]]))
    _inject(model, name, case, arrays)
    lat: list = []
    decode = AceStep.decode.__get__(model)
    model.decode = lambda z: (lat.append(np.array(z)), decode(z))[1]
    seconds = case.get("seconds")
    audio = model.generate(
        [case["caption"]] * len(case["seeds"]), seconds=seconds, seed=list(case["seeds"]),
        **_kwargs(case, arrays, name),
    )  # fmt: skip
    n = case["samples"]
    assert audio.shape == (len(case["seeds"]), 2, n) and audio.dtype == np.float32
    err_lat = rel_err(lat[0], arrays[f"{name}.latents"])
    stride = meta["audio_stride"]
    err_audio = rel_err(audio[..., ::stride], arrays[f"{name}.audio.strided"][..., : math.ceil(n / stride)])
    err_head = rel_err(audio[..., :4000], arrays[f"{name}.audio.head"])
    print(f"{name}: latents {err_lat:.2e} audio {err_audio:.2e} head {err_head:.2e}")
    assert max(err_lat, err_audio, err_head) <= TOL


def test_cover_codes_identical(ref, converted):
    """The audio tokenizer's 5 Hz FSQ codes of given latents (158 frames: padded with silence to 160) are
    the reference's `tokenize` indices, int for int."""
    _, arrays = ref
    model = mag.load(str(converted["turbo"]))
    m = model.model
    _, idx = m.conditioning.tokenize(mx.array(arrays["codes.latents"]), m.silence_latent)
    assert np.array_equal(np.array(idx), arrays["codes.indices"])
    assert arrays["codes.indices"].shape == (1, 32, 1)


def test_codes_forms_agree(converted):
    """The codes as ints and as <|audio_code_N|> text make the same cover; the song has their length."""
    model = mag.load(str(converted["turbo"]))
    codes = make_codes(26)
    kw = dict(seed=3, steps=2)
    a = model.generate("x", audio_codes=[int(c) for c in codes], **kw)
    b = model.generate("x", audio_codes=M.codes_text(codes), task="cover", **kw)
    assert a.shape == (1, 2, 26 * 5 * 1920) and np.array_equal(a, b)


def test_timbre_offsets_from_seed():
    """Ours: three segments inside the front / middle / back thirds, the same for a seed, others else."""
    n = 40 * 48000
    a = timbre_offsets(n, 7)
    assert a == timbre_offsets(n, 7) and a != timbre_offsets(n, 8)
    third, seg = n // 3, 10 * 48000
    assert 0 <= a[0] <= third - seg and third <= a[1] <= 2 * third - seg and 2 * third <= a[2] <= n - seg
    assert timbre_offsets(30 * 48000, 1) == (0, 480000, 960000)  # a 30 s clip: the three thirds


def test_repaint_window_and_masks():
    """The handler's frame rounding, the soft mask's ramps (build_soft_repaint_mask) and the splice."""
    assert M.repaint_window(1.5, 4.0, 160) == (37, 100)
    assert M.repaint_window(6.39, 6.4, 160) == (159, 160)
    mask = np.zeros((1, 20), bool)
    mask[0, 8:12] = True
    soft = M.soft_mask(mask, 3)
    assert np.allclose(soft[0, 5:8], [0.25, 0.5, 0.75]) and np.allclose(soft[0, 12:15], [0.75, 0.5, 0.25])
    assert soft[0, 4] == 0 and soft[0, 15] == 0 and (soft[0, 8:12] == 1).all()
    pred, src = np.ones((1, 2, 100), np.float32), np.zeros((2, 100), np.float32)
    out = M.waveform_splice(pred, src, 0.5, 1.0, 100, 0.02)
    assert (out[..., 52:100] == 1).all() and (out[..., :48] == 0).all() and 0 < out[0, 0, 49] < 1


def test_instructions():
    assert M.instruction("repaint") == "Repaint the mask area based on the given conditions:"
    assert M.instruction("lego", "guitar") == "Generate the GUITAR track based on the audio context:"
    assert M.instruction("extract") == "Extract the track from the audio:"
    assert M.instruction("complete", "bass") == "Complete the input track with BASS:"


SRC = make_audio(6.4, 1)


@pytest.mark.parametrize(
    "variant, kwargs, expect",
    [
        ("turbo", {"task": "repaint"}, "needs src_audio"),
        ("turbo", {"task": "cover"}, "needs src_audio \\(or audio_codes\\)"),
        ("turbo", {"task": "repaint", "src_audio": SRC, "repaint_end": 7.0}, "past the end"),
        ("turbo", {"task": "repaint", "src_audio": SRC, "repaint_start": 3.0, "repaint_end": 3.0}, "empty"),
        ("turbo", {"task": "repaint", "src_audio": SRC, "repaint_start": -1.0}, "repaint_start"),
        ("turbo", {"task": "lego", "src_audio": SRC}, "does not fit this model"),
        ("turbo", {"task": "extract", "src_audio": SRC}, "does not fit this model"),
        ("base", {"task": "extract", "src_audio": SRC, "track": "kazoo"}, "track"),
        ("turbo", {"track": "bass"}, "track applies to"),
        ("turbo", {"audio_codes": "<|audio_code_64000|>"}, "out of range"),
        ("turbo", {"audio_codes": [1, -2]}, "out of range"),
        ("turbo", {"audio_codes": "hello"}, "audio_code_N"),
        ("turbo", {"audio_codes": [1], "src_audio": SRC, "task": "cover"}, "not both"),
        ("turbo", {"audio_codes": [1], "task": "repaint"}, "make a cover"),
        ("turbo", {"src_audio": SRC}, "needs a task"),
        ("turbo", {"audio_cover_strength": 0.5}, "applies to task cover"),
        ("turbo", {"retake_variance": 0.5}, "needs retake_seed"),
        ("turbo", {"retake_seed": 4}, "needs retake_variance"),
        ("turbo", {"task": "cover", "src_audio": np.zeros((2, 48000), np.float32)}, "silent"),
        ("turbo", {"reference_audio": "/nonexistent.wav"}, "does not exist"),
    ],
)
def test_bad_inputs(converted, variant, kwargs, expect):
    model = mag.load(str(converted[variant]))
    with pytest.raises(UserError, match=expect):
        model.generate("x", seconds=4.0, seed=0, steps=1, **kwargs)
