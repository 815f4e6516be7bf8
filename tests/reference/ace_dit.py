"""Reference outputs of ACE-Step 1.5's DiT (`AceStepDiTModel`, the `decoder` of the original PyTorch
AceStepConditionGenerationModel), its APG guidance and its `generate_audio` loops, on the committed tiny
checkpoints (tests/fixtures/ace/acestep-v15-{turbo,base}), for tests/ace_step/test_ace_dit.py.

`make(out_dir)` writes (fp32 safetensors):
- `{turbo,base}.safetensors`: inputs `in.*` (x_t (B, T, A) with an odd T, context latents = source latents ||
  a 0/1 chunk mask, a packed condition sequence with a padded tail and its mask, a latent mask with padding,
  timestep vectors incl. 1.0 and a small t, a timestep_r != t) and the decoder's outputs `out.<case>` for
  CASES, each called as `generate_audio` calls it (with the masks, which the reference ignores);
  `out.nomask`: the `ta` case without any mask (equal to `out.ta`: the masks have no effect);
  `out.cached_1` / `out.cached_2`: two calls sharing one EncoderDecoderCache (the second reuses the
  cross-attention K/V of the first);
  generate_audio runs (`gen.<name>.*`: the noise from `torch.Generator().manual_seed(seed)`, the times each
  decoder call got, the encoder states / context it was given, the result) with `prepare_condition` replaced
  by the fixed condition of `in.*` (the condition encoder is not this test's), `dcw_enabled=False`;
- `apg.safetensors`: `apg_forward` (with a MomentumBuffer over 3 calls, dims=[1]) on fixed tensors: clipped
  and unclipped norms, eta 0.5, 3000 frames, a difference nearly parallel to the conditional prediction.

    python -m tests.reference.ace_dit tests/fixtures/ace/dit
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
MODELS = ("turbo", "base")
BATCH, LENGTH, COND_LEN = 2, 21, 9
T_VALUES = {"ta": [1.0, 0.013], "tb": [0.5, 0.27], "rb": [0.31, 0.0]}


class Case(NamedTuple):
    name: str
    t: str  # key of T_VALUES
    r: str | None = None  # timestep_r (None: = t, as at inference)


CASES = [Case("ta", "ta"), Case("tb", "tb"), Case("tb_r", "tb", "rb")]


class Gen(NamedTuple):
    name: str
    seed: int
    shift: float
    infer_steps: int | None
    guidance: float = 1.0  # base only
    cfg_interval: tuple[float, float] | str = (0.0, 1.0)  # "edge": see _edge_interval


GENS = {
    "turbo": [
        Gen("shift3", 7, 3.0, None),
        Gen("shift2", 8, 2.0, None),
        Gen("shift1", 9, 1.0, None),
        Gen("shift2p4", 10, 2.4, None),  # rounded to the 2.0 table
        Gen("steps5_shift3", 11, 3.0, 5),
        Gen("steps25_shift2p5", 12, 2.5, 25),  # clamped to 20 steps
    ],
    "base": [
        Gen("cfg7_shift3", 21, 3.0, 6, 7.0),
        Gen("nocfg_shift1", 22, 1.0, 5, 1.0),
        Gen("cfg5_shift2_interval", 23, 2.0, 8, 5.0, "edge"),
        Gen("cfg3_steps33_shift1", 24, 1.0, 33, 3.0, (0.25, 0.75)),  # torch's linspace beyond one AVX vector
    ],
}


def _edge_interval(shift: float, steps: int) -> tuple[float, float]:
    """(start, end) just beside two schedule values: start a hair above t[5], end a hair below t[2] (Python
    floats that round to those float32 values): a float32 comparison includes both steps, a float64 one
    would not."""
    import numpy as np
    import torch

    t = torch.linspace(1.0, 0.0, steps + 1)
    t = (shift * t / (1 + (shift - 1) * t)).numpy()
    lo, hi = float(t[5]), float(t[2])
    start, end = lo + float(np.spacing(np.float32(lo))) / 4, hi - float(np.spacing(np.float32(hi))) / 4
    assert np.float32(start) == t[5] and np.float32(end) == t[2] and start > lo and end < hi
    return start, end


def _inputs(A: int, H: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    src = torch.randn(BATCH, LENGTH, A, generator=g)
    chunk = (torch.rand(BATCH, LENGTH, A, generator=g) > 0.3).float()
    out = {
        "x": torch.randn(BATCH, LENGTH, A, generator=g),
        "context": torch.cat([src, chunk], dim=-1),
        "enc": torch.randn(BATCH, COND_LEN, H, generator=g),
        "enc_mask": torch.ones(BATCH, COND_LEN),
        "mask": torch.ones(BATCH, LENGTH),
    }
    out["enc_mask"][1, 6:] = 0  # a packed sequence with a padded tail: the reference attends it anyway
    out["mask"][1, 17:] = 0
    for k, v in T_VALUES.items():
        out[k] = torch.tensor(v, dtype=torch.float32)
    return out


def _decode(model, inp: dict, t, r, masks: bool = True, cache=None):
    import torch

    with torch.no_grad():
        return model.decoder(
            hidden_states=inp["x"],
            timestep=t,
            timestep_r=r,
            attention_mask=inp["mask"] if masks else None,
            encoder_hidden_states=inp["enc"],
            encoder_attention_mask=inp["enc_mask"] if masks else None,
            context_latents=inp["context"],
            use_cache=cache is not None,
            past_key_values=cache,
        )[0]


def _generate(model, variant: str, inp: dict, gen: Gen) -> dict:
    """One generate_audio run on the fixed condition; the times and inputs of every decoder call recorded."""
    import torch

    calls = []
    forward = model.decoder.forward

    def recording(**kw):
        calls.append({k: kw[k] for k in ("timestep", "encoder_hidden_states", "context_latents")})
        return forward(**kw)

    cond = (inp["enc"], inp["enc_mask"], inp["context"])
    model.prepare_condition = lambda **kw: cond  # the condition encoder is not under test here
    model.decoder.forward = recording
    A = inp["x"].shape[-1]
    kwargs = {"seed": gen.seed, "shift": gen.shift, "infer_steps": gen.infer_steps, "dcw_enabled": False}
    interval = gen.cfg_interval
    if variant == "base":
        if interval == "edge":
            interval = _edge_interval(gen.shift, gen.infer_steps)
        kwargs |= {
            "diffusion_guidance_scale": gen.guidance,
            "cfg_interval_start": interval[0],
            "cfg_interval_end": interval[1],
            "use_progress_bar": False,
        }
    try:
        with torch.no_grad():
            out = model.generate_audio(
                None, None, None, None, None, None,
                src_latents=inp["context"][..., :A], chunk_masks=None, is_covers=None, **kwargs,
            )["target_latents"]  # fmt: skip
    finally:
        del model.prepare_condition
        del model.decoder.forward
    noise = model.prepare_noise(inp["context"], gen.seed)
    p = f"gen.{gen.name}."
    res = {
        p + "noise": noise,
        p + "times": torch.stack([c["timestep"] for c in calls]),
        p + "enc": calls[0]["encoder_hidden_states"],
        p + "context": calls[0]["context_latents"],
        p + "out": out,
    }
    if variant == "base":
        res[p + "cfg_interval"] = torch.tensor(interval, dtype=torch.float64)
    return res


def make_model(variant: str, seed: int = 0) -> dict:
    """{tensor name: numpy array} of one tiny model's inputs and reference outputs."""
    import numpy as np
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from .ace import load_reference

    model = load_reference(FIXTURES, variant)
    cfg = model.config
    inp = _inputs(cfg.audio_acoustic_hidden_dim, cfg.hidden_size, seed)
    arrays = {f"in.{k}": v for k, v in inp.items()}
    for case in CASES:
        t = inp[case.t]
        arrays[f"out.{case.name}"] = _decode(model, inp, t, inp[case.r] if case.r else t)
    arrays["out.nomask"] = _decode(model, inp, inp["ta"], inp["ta"], masks=False)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    arrays["out.cached_1"] = _decode(model, inp, inp["ta"], inp["ta"], cache=cache)
    shifted = dict(inp, x=inp["x"].flip(1))
    arrays["out.cached_2"] = _decode(model, shifted, inp["tb"], inp["tb"], cache=cache)
    for gen in GENS[variant]:
        arrays.update(_generate(model, variant, inp, gen))
    out = {}
    for k, v in arrays.items():
        v = v.detach().contiguous().numpy()
        out[k] = v if v.dtype == np.float64 else v.astype(np.float32)
    return out


def make_apg(seed: int = 1) -> dict:
    import torch

    from .ace import import_ace

    import_ace()
    from acestep.models.common.apg_guidance import MomentumBuffer, apg_forward

    g = torch.Generator().manual_seed(seed)
    out = {}
    buf = MomentumBuffer()
    for i, scale in enumerate((7.0, 7.0, 4.0)):  # sampling steps sharing one buffer; step 2 unclipped
        cond = torch.randn(BATCH, LENGTH, 8, generator=g)
        uncond = cond - torch.randn(BATCH, LENGTH, 8, generator=g) * (0.05 if i == 2 else 1.0)
        out[f"step{i}.cond"], out[f"step{i}.uncond"] = cond, uncond
        out[f"step{i}.out"] = apg_forward(cond, uncond, scale, momentum_buffer=buf, dims=[1])
    cond = torch.randn(BATCH, LENGTH, 8, generator=g)
    uncond = cond - torch.randn(BATCH, LENGTH, 8, generator=g)
    out["eta.cond"], out["eta.uncond"] = cond, uncond
    out["eta.out"] = apg_forward(cond, uncond, 5.0, eta=0.5, dims=[1])
    cond = torch.randn(1, 3000, 8, generator=g)
    uncond = cond - torch.randn(1, 3000, 8, generator=g) * 0.2
    out["long.cond"], out["long.uncond"] = cond, uncond
    out["long.out"] = apg_forward(cond, uncond, 7.0, dims=[1])
    cond = torch.randn(BATCH, LENGTH, 8, generator=g) * 3
    uncond = cond * 0.9 - 1e-3 * torch.randn(BATCH, LENGTH, 8, generator=g)  # diff nearly parallel to cond
    out["parallel.cond"], out["parallel.uncond"] = cond, uncond
    out["parallel.out"] = apg_forward(cond, uncond, 7.0, dims=[1])
    return {k: v.contiguous().numpy() for k, v in out.items()}


def make(out_dir: str | Path) -> Path:
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for variant in MODELS:
        save_file(make_model(variant), str(out / f"{variant}.safetensors"))
    save_file(make_apg(), str(out / "apg.safetensors"))
    return out


if __name__ == "__main__":
    make(sys.argv[1] if len(sys.argv) > 1 else REPO / "tests/fixtures/ace/dit")
