"""Reference outputs of ACE-Step 1.5's sampler options (the original `acestep` code, ../shared/reference) on
the committed tiny checkpoints (tests/fixtures/ace/acestep-v15-{turbo,base}), for
tests/ace_step/test_ace_samplers.py.

- `{turbo,base}.safetensors`: the model file's `generate_audio` for each RUNS entry (infer_method ode / sde,
  sampler_mode euler / heun, APG / ADG on base, DCW off / each mode / several bases, the velocity clamp and
  EMA), on the
  fixed condition of tests/reference/ace_dit.py (`prepare_condition` replaced: the condition encoder is
  another module's; 21 frames, an odd length, so DCW's wavelet transform pads). Per run `<name>.`: `noise`
  (the seeded `prepare_noise`), `draws` (every fresh noise the SDE's `renoise` drew from torch's global
  generator, seeded per run; (k, B, T, C), empty for ODE) and `out` (target_latents); `in.enc`,
  `in.context` the condition; `null` the learned null condition (base).
- `parts.safetensors`: `adg_forward` on fixed tensors (several guidance scales, sigmas, a nearly parallel
  pair, angles below and above the clip) and the DCW primitives (`dcw_low` / `high` / `double` / `pix`
  with Haar, `dcw_double` with every basis of WAVELETS) on odd and even lengths.

DCW needs `pytorch_wavelets` (tests/requirements-reference.txt). Without it upstream's DCW is a silent
no-op, so `make` refuses to run instead of writing uncorrected outputs as DCW's. `pytorch_wavelets` imports
`pkg_resources` (gone from recent setuptools): a stand-in with the one function it uses is registered
first when the real one is missing.

    python -m tests.reference.ace_samplers tests/fixtures/ace/samplers
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import NamedTuple

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
MODELS = ("turbo", "base")


class Run(NamedTuple):
    name: str
    seed: int
    steps: int
    shift: float
    infer_method: str = "ode"
    sampler_mode: str = "euler"
    dcw: str = "off"  # "off" or a dcw_mode
    guidance: float = 1.0  # base only
    use_adg: bool = False
    interval: tuple[float, float] = (0.0, 1.0)
    clamp: float = 0.0  # velocity_norm_threshold
    ema: float = 0.0  # velocity_ema_factor
    dcw_scaler: float = 0.05
    dcw_high_scaler: float = 0.02
    wavelet: str = "haar"


RUNS = {
    "turbo": [
        Run("ode_euler", 31, 6, 3.0),
        Run("ode_heun", 32, 6, 3.0, sampler_mode="heun"),
        Run("sde_euler", 33, 6, 3.0, "sde"),
        Run("ode_euler_dcw", 34, 6, 3.0, dcw="double"),
        Run("ode_heun_dcw", 35, 6, 2.0, sampler_mode="heun", dcw="double"),
        Run("sde_euler_dcw", 36, 8, 3.0, "sde", dcw="double"),
        Run("dcw_low", 37, 5, 3.0, dcw="low", dcw_scaler=0.2),
        Run("dcw_high", 38, 5, 3.0, dcw="high", dcw_scaler=0.2),
        Run("dcw_pix", 39, 5, 3.0, dcw="pix", dcw_scaler=0.1),
        Run("clamp_ema", 40, 6, 3.0, clamp=0.9, ema=0.3),
        Run("heun_clamp_ema", 41, 5, 3.0, sampler_mode="heun", clamp=0.9, ema=0.3),
        Run("ode_heun_dcw_db4", 42, 5, 3.0, sampler_mode="heun", dcw="double", wavelet="db4"),
        Run("dcw_low_sym8", 43, 5, 3.0, dcw="low", dcw_scaler=0.2, wavelet="sym8"),
        Run("dcw_high_sym4", 44, 5, 3.0, dcw="high", dcw_scaler=0.2, wavelet="sym4"),
    ],
    "base": [
        Run("ode_euler_apg", 51, 6, 3.0, guidance=7.0),
        Run("ode_euler_adg", 52, 6, 3.0, guidance=7.0, use_adg=True),
        Run("ode_heun_apg", 53, 5, 3.0, sampler_mode="heun", guidance=7.0, interval=(0.3, 0.8)),
        Run("ode_heun_adg", 54, 5, 2.0, sampler_mode="heun", guidance=5.0, use_adg=True),
        Run("sde_euler_apg", 55, 6, 3.0, "sde", guidance=7.0),
        Run("sde_euler_adg", 56, 6, 3.0, "sde", guidance=4.0, use_adg=True, interval=(0.2, 0.9)),
        Run("sde_nocfg", 57, 5, 1.0, "sde"),
        Run("ode_euler_apg_dcw", 58, 6, 3.0, dcw="double", guidance=7.0),
        Run("ode_euler_adg_dcw", 59, 6, 3.0, dcw="double", guidance=7.0, use_adg=True),
        Run("ode_heun_apg_dcw", 60, 5, 3.0, sampler_mode="heun", dcw="double", guidance=7.0),
        Run("ode_heun_adg_dcw", 61, 5, 3.0, sampler_mode="heun", dcw="double", guidance=7.0, use_adg=True),
        Run("sde_euler_apg_dcw", 62, 6, 3.0, "sde", dcw="double", guidance=7.0),
        Run("sde_euler_adg_dcw", 63, 6, 3.0, "sde", dcw="double", guidance=7.0, use_adg=True),
        Run("heun_adg_clamp_ema", 64, 5, 3.0, sampler_mode="heun", guidance=7.0, use_adg=True, clamp=0.9,
            ema=0.3),
        Run("ode_euler_apg_dcw_db2", 65, 6, 3.0, dcw="double", guidance=7.0, wavelet="db2"),
        Run("sde_euler_adg_dcw_coif2", 66, 6, 3.0, "sde", dcw="double", guidance=7.0, use_adg=True,
            wavelet="coif2"),
    ],
}  # fmt: skip
# adg_forward cases: (guidance, sigma, spread of uncond around cond, frames)
ADG_CASES = {
    "g7": (7.0, 0.8, 1.0, 21),
    "g2_small_angle": (2.0, 0.5, 0.05, 21),  # small angles: weight * theta under the clip
    "g15": (15.0, 0.2, 0.5, 20),
    "parallel": (7.0, 0.6, 1e-4, 21),  # nearly parallel: cos clamped at 1 - 1e-6
    "g1": (1.0, 0.9, 1.0, 21),  # weight 0 -> 1e-3
}
DCW_LENGTHS = (20, 21)
WAVELETS = ("haar", "db2", "db4", "sym4", "sym8", "coif2")  # the bases upstream's UI offers


def import_wavelets():
    """pytorch_wavelets' DWT1DForward / DWT1DInverse, with a stand-in pkg_resources where it is missing."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.resources

        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_stream = lambda pkg, name: importlib.resources.files(pkg).joinpath(name).open("rb")
        sys.modules["pkg_resources"] = stand_in
    from pytorch_wavelets import DWT1DForward, DWT1DInverse

    return DWT1DForward, DWT1DInverse


def _check_dcw_live():
    """Upstream's DCW silently does nothing without pytorch_wavelets: refuse to record that as DCW."""
    from .ace import import_ace

    import_wavelets()
    import_ace()
    from acestep.models.common.dcw_loader import WAVELET_CACHE

    if WAVELET_CACHE._try_import() is None:
        raise RuntimeError(
            "pytorch_wavelets does not import: pip install -r tests/requirements-reference.txt"
        )


def _generate(model, variant: str, inp: dict, run: Run) -> dict:
    import torch

    cond = (inp["enc"], inp["enc_mask"], inp["context"])
    model.prepare_condition = lambda **kw: cond  # the condition encoder is not under test here
    draws = []
    renoise = model.renoise

    def recording(x, t, noise=None):  # the reference's own draw, kept
        if noise is None:
            noise = torch.randn_like(x)
            draws.append(noise.clone())
        return renoise(x, t, noise)

    model.renoise = recording
    A = inp["x"].shape[-1]
    kwargs = dict(
        seed=run.seed, shift=run.shift, infer_steps=run.steps, infer_method=run.infer_method,
        sampler_mode=run.sampler_mode, velocity_norm_threshold=run.clamp, velocity_ema_factor=run.ema,
        dcw_enabled=run.dcw != "off", dcw_mode="double" if run.dcw == "off" else run.dcw,
        dcw_scaler=run.dcw_scaler, dcw_high_scaler=run.dcw_high_scaler, dcw_wavelet=run.wavelet,
    )  # fmt: skip
    if variant == "base":
        kwargs |= dict(
            diffusion_guidance_scale=run.guidance, use_adg=run.use_adg, cfg_interval_start=run.interval[0],
            cfg_interval_end=run.interval[1], use_progress_bar=False,
        )  # fmt: skip
    torch.manual_seed(1000 + run.seed)  # the SDE's draws come from the global generator
    try:
        with torch.no_grad():
            out = model.generate_audio(
                None, None, None, None, None, None,
                src_latents=inp["context"][..., :A], chunk_masks=None, is_covers=None, **kwargs,
            )["target_latents"]  # fmt: skip
    finally:
        del model.prepare_condition
        del model.renoise
    p = f"{run.name}."
    empty = torch.zeros((0, *inp["x"].shape))
    return {
        p + "noise": model.prepare_noise(inp["context"], run.seed),
        p + "draws": torch.stack(draws) if draws else empty,
        p + "out": out,
    }


def make_model(variant: str) -> dict:
    from .ace import load_reference
    from .ace_dit import _inputs

    model = load_reference(FIXTURES, variant)
    cfg = model.config
    inp = _inputs(cfg.audio_acoustic_hidden_dim, cfg.hidden_size, 0)
    arrays = {"in.enc": inp["enc"], "in.context": inp["context"]}
    if variant == "base":
        arrays["null"] = model.null_condition_emb
    for run in RUNS[variant]:
        arrays.update(_generate(model, variant, inp, run))
    return {k: v.detach().float().contiguous().numpy() for k, v in arrays.items()}


def make_parts(seed: int = 3) -> dict:
    import torch

    from .ace import import_ace

    import_ace()
    from acestep.models.common.apg_guidance import adg_forward
    from acestep.models.common.dcw_primitives import dcw_double, dcw_high, dcw_low, dcw_pix

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (scale, sigma, spread, frames) in ADG_CASES.items():
        x = torch.randn(2, frames, 8, generator=g)
        cond = torch.randn(2, frames, 8, generator=g)
        uncond = cond + spread * torch.randn(2, frames, 8, generator=g)
        p = f"adg.{name}."
        out |= {p + "x": x, p + "cond": cond, p + "uncond": uncond}
        out[p + "out"] = adg_forward(x, cond, uncond, torch.tensor(sigma), scale)
    for n in DCW_LENGTHS:
        x = torch.randn(2, n, 8, generator=g)
        y = x + 0.5 * torch.randn(2, n, 8, generator=g)
        p = f"dcw.{n}."
        out |= {p + "x": x, p + "y": y}
        out[p + "low"] = dcw_low(x, y, 0.3)
        out[p + "high"] = dcw_high(x, y, 0.3)
        out[p + "double"] = dcw_double(x, y, 0.3, 0.2)
        out[p + "double_low_only"] = dcw_double(x, y, 0.3, 0.0)
        out[p + "pix"] = dcw_pix(x, y, 0.3)
        for w in WAVELETS:
            out[f"{p}{w}.double"] = dcw_double(x, y, 0.3, 0.2, w)
    return {k: v.contiguous().numpy() for k, v in out.items()}


def make(out_dir: str | Path) -> Path:
    import torch
    from loguru import logger
    from safetensors.numpy import save_file

    _check_dcw_live()
    logger.disable("acestep")
    torch.set_grad_enabled(False)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for variant in MODELS:
        save_file(make_model(variant), str(folder / f"{variant}.safetensors"))
    save_file(make_parts(), str(folder / "parts.safetensors"))
    return folder


live = once_per_session(make, "ace-samplers-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "samplers"))
