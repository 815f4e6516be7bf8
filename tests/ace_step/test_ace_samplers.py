"""ACE-Step 1.5's sampler options (schedule.py SamplerOptions, diffusion/flow_guidance.adg,
diffusion/wavelet_correction.DCW) vs the original `acestep` code (upstream 6d467e4) on the committed tiny
turbo / base checkpoints, fp32: whole `generate_audio` latents for ode / sde x euler / heun, APG vs ADG,
DCW off and on (every mode), the velocity clamp and EMA; `adg_forward` and the DCW primitives on fixed
tensors; the settings' checks; each new flag reaching the sampler from the CLI.

Reference outputs: the committed tests/fixtures/ace/samplers (made by tests/reference/ace_samplers.py) and,
where the reference sources are here, a fresh run of that builder (it needs pytorch_wavelets, pinned in
tests/requirements-reference.txt). The reference's noise is non-deterministic across implementations and
is INJECTED into ours: the seeded initial noise, and for SDE every fresh draw of its `renoise`
(torch.randn_like from the global generator, which the builder seeds per run and records) goes in through
our sampler's `step_noise` (in generation, `AceStep.draw_step_noise` draws them from the seed instead).
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

import mlx_audio_generate as mag
from mlx_audio_generate.ace_step import schedule as S
from mlx_audio_generate.ace_step.dit import AceDiTConfig, AceStepDiTModel
from mlx_audio_generate.ace_step.generate import AceStep
from mlx_audio_generate.convert import convert
from mlx_audio_generate.diffusion.flow_guidance import adg
from mlx_audio_generate.diffusion.wavelet_correction import DCW, haar_dwt, haar_idwt
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import ace, ace_samplers
from tests.reference.ace_samplers import ADG_CASES, DCW_LENGTHS, RUNS, WAVELETS, Run
from tests.reference.parity import SOURCES, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = ace.REPO / "tests" / "fixtures" / "ace"
COMMITTED = FIXTURES / "samplers"
OTHER_PARTS = [r"encoder\..*", r"tokenizer\..*", r"detokenizer\..*", r"null_condition_emb"]


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if ace.reference_root() is None else ace_samplers.live
    folder = reference_outputs(request.param, COMMITTED, live)
    return {n: load_file(str(folder / f"{n}.safetensors")) for n in ("turbo", "base", "parts")}


@pytest.fixture(scope="module")
def dits() -> dict[str, AceStepDiTModel]:
    out = {}
    for v in ("turbo", "base"):
        folder = FIXTURES / f"acestep-v15-{v}"
        ckpt = Checkpoint(read_tensors(folder), folder.name)
        model = AceStepDiTModel(AceDiTConfig.from_dict(json.loads((folder / "config.json").read_text())))
        model.load_weights(list(model.sanitize(ckpt, "decoder.").items()), strict=True)
        ckpt.finish(ignore=OTHER_PARTS)
        out[v] = model
    return out


def _options(run: Run) -> S.SamplerOptions:
    dcw = None if run.dcw == "off" else DCW(run.dcw, run.dcw_scaler, run.dcw_high_scaler, run.wavelet)
    return S.SamplerOptions(run.infer_method, run.sampler_mode, run.use_adg, run.clamp, run.ema, dcw)


def _sample(model, variant: str, arrays: dict, run: Run, draws_used: list | None = None, **over):
    p = f"{run.name}."
    draws = arrays[p + "draws"]

    def step_noise(i: int) -> mx.array:
        if draws_used is not None:
            draws_used.append(i)
        return mx.array(draws[i])

    opts = over.pop("options", None) or _options(run)
    noise, enc, context = (mx.array(arrays[k]) for k in (p + "noise", "in.enc", "in.context"))
    if variant == "turbo":
        return S.sample_turbo(model, noise, context, enc, S.turbo_schedule(run.shift, run.steps), None, opts,
                              step_noise)  # fmt: skip
    return S.sample_base(
        model, noise, context, enc, mx.array(arrays["null"]), S.base_schedule(run.steps, run.shift),
        run.guidance, run.interval, None, opts, step_noise,
    )  # fmt: skip


CASES = [(v, r) for v in ("turbo", "base") for r in RUNS[v]]


@pytest.mark.parametrize("variant, run", CASES, ids=[f"{v}-{r.name}" for v, r in CASES])
def test_sampler_parity(ref, dits, variant, run):
    """Whole generate_audio latents given the same noise (and, for SDE, the same fresh draws)."""
    arrays = ref[variant]
    used: list[int] = []
    out = _sample(dits[variant], variant, arrays, run, used)
    err = rel_err(out, arrays[f"{run.name}.out"])
    print(f"{variant} {run.name}: rel err {err:.2e}")
    assert err <= TOL
    n_draws = arrays[f"{run.name}.draws"].shape[0]
    if run.infer_method == "sde":  # turbo's last step draws nothing; base renoises to 0 after a draw
        assert used == list(range(n_draws)) and n_draws == run.steps - (variant == "turbo")
    else:
        assert not used and n_draws == 0


@pytest.mark.parametrize(
    "variant, name, change",
    [
        ("turbo", "ode_euler_dcw", dict(dcw=None)),  # DCW changes the result: the on case tests it
        ("turbo", "ode_heun_dcw_db4", dict(dcw=DCW("double", 0.05, 0.02, "haar"))),  # the basis matters
        ("base", "ode_euler_adg", dict(use_adg=False)),
        ("turbo", "ode_heun", dict(sampler_mode="euler")),
        ("base", "sde_euler_apg", dict(infer_method="ode")),
        ("base", "ode_heun_apg", dict(sampler_mode="euler")),
        ("turbo", "clamp_ema", dict(velocity_ema_factor=0.0)),
        ("turbo", "clamp_ema", dict(velocity_norm_threshold=0.0)),
    ],
)
def test_each_option_matters(ref, dits, variant, name, change):
    """Each option changes the latents well past the tolerance, so the parity above tests it; the DCW case
    also shows that the reference's DCW really ran (upstream's is a silent no-op without pytorch_wavelets)."""
    import dataclasses

    arrays = ref[variant]
    run = next(r for r in RUNS[variant] if r.name == name)
    opts = dataclasses.replace(_options(run), **change)
    out = _sample(dits[variant], variant, arrays, run, options=opts)
    assert rel_err(out, arrays[f"{name}.out"]) > 1e-3


# ------------------------------------------------------------------------------------------- parts


@pytest.mark.parametrize("name", ADG_CASES)
def test_adg_parity(ref, name):
    a, p = ref["parts"], f"adg.{name}."
    scale, sigma, _, _ = ADG_CASES[name]
    out = adg(mx.array(a[p + "x"]), mx.array(a[p + "cond"]), mx.array(a[p + "uncond"]), sigma, scale)
    err = rel_err(out, a[p + "out"])
    print(f"adg {name}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("n", DCW_LENGTHS)
def test_dcw_parity(ref, n):
    a, p = ref["parts"], f"dcw.{n}."
    x, y = mx.array(a[p + "x"]), mx.array(a[p + "y"])
    # the times that give the strengths the primitives got (low t * s, high (1 - t) * s; double: low
    # 0.5 * 0.6 = 0.3 and high 0.5 * 0.4 = 0.2, exact in float64); pix takes the raw scaler at any t
    cases = {
        "low": DCW("low", 0.3).apply(x, y, 1.0),
        "high": DCW("high", 0.3).apply(x, y, 0.0),
        "double": DCW("double", 0.6, 0.4).apply(x, y, 0.5),
        "double_low_only": DCW("double", 0.3, 0.0).apply(x, y, 1.0),
        "pix": DCW("pix", 0.3).apply(x, y, 0.7),
    }
    for w in WAVELETS:
        cases[f"{w}.double"] = DCW("double", 0.6, 0.4, w).apply(x, y, 0.5)
    for mode, out in cases.items():
        err = rel_err(out, a[p + mode])
        assert out.shape == x.shape and err <= TOL, (mode, err)


def test_haar_round_trip_and_zero_strength():
    x = mx.random.normal((2, 21, 4), key=mx.random.key(0))
    lo, hi = haar_dwt(x)
    assert lo.shape == (2, 11, 4)
    assert rel_err(haar_idwt(lo, hi, 21), np.array(x)) < 1e-6
    y = mx.random.normal((2, 21, 4), key=mx.random.key(1))
    assert DCW("low", 0.05).apply(x, y, 0.0) is x  # t = 0: no transform at all, as the reference
    assert DCW("double", 0.0, 0.0).apply(x, y, 0.4) is x
    with pytest.raises(ValueError):
        DCW("wide")
    with pytest.raises(ValueError):
        DCW("low", wavelet="db3")


def test_wavelet_tables():
    """The bases the family offers are the transform's; the DWT of a basis keeps its length rule."""
    from mlx_audio_generate.ace_step.family import DCW_WAVELETS
    from mlx_audio_generate.diffusion.wavelet_correction import WAVELETS as TABLE
    from mlx_audio_generate.diffusion.wavelet_correction import dwt

    assert DCW_WAVELETS == tuple(TABLE) == WAVELETS
    for w, taps in TABLE.items():
        assert abs(sum(taps) - 2**0.5) < 1e-12 and abs(sum(t * t for t in taps) - 1) < 1e-12  # orthonormal
        assert dwt(mx.zeros((1, 21, 2)), w)[0].shape[1] == (21 + len(taps) - 1) // 2


# ------------------------------------------------------------------------------------- settings, CLI


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ace-samplers")
    return {v: convert(str(FIXTURES / f"acestep-v15-{v}"), root / v) for v in ("turbo", "base")}


@pytest.mark.parametrize(
    "variant, kwargs, expect",
    [
        ("turbo", {"guidance_method": "adg"}, "adg does not apply to a turbo"),
        ("base", {"guidance_method": "adg", "guidance_scale": 1.0}, "needs guidance_scale > 1"),
        ("base", {"infer_method": "sde", "sampler_mode": "heun"}, "heun does not combine with"),
        ("turbo", {"infer_method": "euler"}, "infer_method"),
        ("turbo", {"sampler_mode": "rk4"}, "sampler_mode"),
        ("turbo", {"dcw": "on"}, "dcw"),
        ("turbo", {"dcw_scaler": 0.1}, "dcw_scaler needs dcw"),
        ("turbo", {"dcw": "low", "dcw_high_scaler": 0.1}, "dcw_high_scaler needs dcw double"),
        ("turbo", {"dcw": "double", "dcw_scaler": 1.5}, "dcw_scaler"),
        ("turbo", {"dcw_wavelet": "db4"}, "dcw_wavelet needs dcw low / high / double"),
        ("turbo", {"dcw": "pix", "dcw_wavelet": "db4"}, "dcw_wavelet needs dcw"),
        ("turbo", {"dcw": "low", "dcw_wavelet": "db3"}, "dcw_wavelet"),
        ("turbo", {"velocity_ema_factor": 1.0}, "velocity_ema_factor"),
        ("turbo", {"velocity_norm_threshold": -1.0}, "velocity_norm_threshold"),
    ],
)
def test_bad_sampler_settings(converted, variant, kwargs, expect):
    model = mag.load(str(converted[variant]))
    with pytest.raises(UserError, match=expect):
        model.generate("x", seconds=4.0, seed=0, steps=2, **kwargs)


def test_defaults_are_upstream_ode_euler_without_dcw(converted):
    model = mag.load(str(converted["base"]))
    v = model._values()
    assert v["sampler"] == S.SamplerOptions()  # ode, euler, APG, no clamp / EMA, DCW off
    assert S.SamplerOptions().dcw is None
    # the family's DCW strengths are DCW's own defaults (upstream's 0.05 / 0.02: sampler_options compares)
    assert (v["dcw_scaler"], v["dcw_high_scaler"]) == (DCW.scaler, DCW.high_scaler) == (0.05, 0.02)


def test_sde_generation_draws_from_the_seed(converted):
    """Generation's own SDE draws: deterministic per seed, a row equals its seed alone, differs from ODE."""
    model = mag.load(str(converted["turbo"]))
    kw = dict(seconds=4.0, steps=3, infer_method="sde")
    both = model.generate(["lofi", "lofi"], seed=[1, 2], **kw)
    assert np.array_equal(both, model.generate(["lofi", "lofi"], seed=[1, 2], **kw))
    assert np.allclose(both[1], model.generate("lofi", seed=[2], **kw)[0], atol=1e-5)
    mixed = model.generate(["a longer caption about jazz", "lofi"], seed=[1, 2], **kw)  # two prompt groups
    assert np.allclose(mixed[1], both[1], atol=1e-5)
    ode = model.generate("lofi", seed=[2], seconds=4.0, steps=3)
    assert not np.allclose(both[1], ode[0], atol=1e-3)


FLAGS = [
    ("turbo", ["--infer-method", "sde"], "infer_method", "sde"),
    ("turbo", ["--sampler-mode", "heun"], "sampler_mode", "heun"),
    ("base", ["--guidance-method", "adg"], "use_adg", True),
    ("turbo", ["--velocity-norm-threshold", "2"], "velocity_norm_threshold", 2.0),
    ("turbo", ["--velocity-ema-factor", "0.1"], "velocity_ema_factor", 0.1),
    ("turbo", ["--dcw", "low"], "dcw", DCW("low", 0.05, 0.02)),
    ("turbo", ["--dcw", "high", "--dcw-wavelet", "sym8"], "dcw", DCW("high", 0.05, 0.02, "sym8")),
    ("turbo", ["--dcw", "pix", "--dcw-scaler", "0.3"], "dcw", DCW("pix", 0.3, 0.02)),
    ("base", ["--dcw", "double", "--dcw-high-scaler", "0.1"], "dcw", DCW("double", 0.05, 0.1)),
]


@pytest.mark.parametrize("variant, flags, field, want", FLAGS, ids=[" ".join(f[1]) for f in FLAGS])
def test_cli_flag_reaches_the_sampler(converted, tmp_path, monkeypatch, capsys, variant, flags, field, want):
    """`mlx-audio-generate ... --<flag>`: the sampler loop gets the option (and, for SDE, step noise)."""
    from mlx_audio_generate.cli import generate as cli

    seen = {}
    name = "sample_turbo" if variant == "turbo" else "sample_base"
    real = getattr(S, name)

    def spy(*args, **kwargs):
        seen["opts"], seen["noise"] = args[-2], args[-1]
        return real(*args, **kwargs)

    monkeypatch.setattr(S, name, spy)
    out = tmp_path / "a.wav"
    argv = ["--model", "ace_step", "--weights-dir", str(converted[variant]), "--prompt", "x", "--seconds",
            "4", "--seed", "1", "--steps", "2", "--output", str(out), "--quiet", *flags]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    assert getattr(seen["opts"], field) == want
    assert (seen["noise"] is not None) == (seen["opts"].infer_method == "sde")
    assert out.is_file()


def test_cli_refuses_adg_on_turbo(converted, tmp_path, capsys):
    from mlx_audio_generate.cli import generate as cli

    out = tmp_path / "a.wav"
    argv = ["--model", "ace_step", "--weights-dir", str(converted["turbo"]), "--prompt", "x",
            "--seconds", "4", "--output", str(out), "--quiet", "--guidance-method", "adg"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "adg does not apply" in err[0]
    assert not out.exists()


def test_step_noise_keys(converted):
    """draw_step_noise: one key per step split off each seed; a list of seeds stacks per-row draws."""
    model = mag.load(str(converted["turbo"]))
    a = AceStep.draw_step_noise(model, [4, 5], (2, 6, 3), 3)
    b = AceStep.draw_step_noise(model, [5], (1, 6, 3), 3)
    assert np.array_equal(np.array(a(2)[1]), np.array(b(2)[0]))
    assert not np.allclose(np.array(a(0)), np.array(a(1)))
    assert not np.allclose(np.array(a(0)[1]), np.array(model.draw_noise([5], (1, 6, 3))[0]))
