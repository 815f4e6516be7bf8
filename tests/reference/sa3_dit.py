"""Reference outputs of Stable Audio 3's DiT (`stable_audio_3`, DiTWrapper) on the committed tiny checkpoints
(tests/fixtures/sa3/{small,medium}), for tests/stable_audio_3/test_sa3_dit.py.

`make(out_dir)` writes `{small,medium}.safetensors` (fp32): the inputs (`in.*`: latents x, two timestep
vectors incl. 1.0 and a small t, the conditioner's cross tokens / mask / global condition of two prompts, a
negative prompt's, an inpainting local condition, a padding mask), the reference DiT's output of every case
of CASES (`out.<case>`), each called exactly as `sample_diffusion` calls it (the wrapper's conditioning dict
+ cfg_scale / apg_scale / padding_mask / batch_cfg / rescale_cfg), and its timestep embedding on its own
(`temb*.<t>`, `ref.expo_freqs`: see `_timestep_parts`).

    python -m tests.reference.sa3_dit tests/fixtures/sa3/dit
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
MODELS = ("small", "medium")
BATCH, LENGTH = 2, 12
T_VALUES = {"ta": [1.0, 0.013], "tb": [0.5, 0.27]}


class Case(NamedTuple):
    name: str
    t: str  # key of T_VALUES
    local: bool  # inpainting local condition (False: the zeros the reference is fed without inpainting)
    cfg: float
    apg: float
    negative: bool = False  # negative prompt as the unconditional tokens
    padding: bool = False  # padding mask (row 1 has padded tail latents)
    logsnr: bool = False  # timestep_features_logsnr switched on in the reference (same weights)


CASES = [
    Case("cfg1_ta", "ta", False, 1.0, 1.0),
    Case("cfg1_tb", "tb", False, 1.0, 1.0),
    Case("cfg1_ta_local", "ta", True, 1.0, 1.0),
    Case("cfg1_tb_local_pad", "tb", True, 1.0, 1.0, padding=True),
    Case("cfg1_tb_logsnr", "tb", False, 1.0, 1.0, logsnr=True),
    Case("cfg4_apg1_ta", "ta", False, 4.0, 1.0),
    Case("cfg4_apg0_ta", "ta", False, 4.0, 0.0),
    Case("cfg4_apg05_tb_local", "tb", True, 4.0, 0.5),
    Case("cfg4_apg1_ta_neg", "ta", False, 4.0, 1.0, negative=True),
    Case("cfg4_apg1_tb_local_pad", "tb", True, 4.0, 1.0, padding=True),
    Case("cfg4_apg05_ta_pad_neg", "ta", False, 4.0, 0.5, negative=True, padding=True),
]
PROMPTS = (["lofi house loop with warm pads", "punchy kick drum fill"], [10.0, 3.5])
NEGATIVE = "footsteps on gravel"


def _inputs(model, io_channels: int, seed: int) -> dict:
    """Inputs as torch tensors: conditioning from the model's own conditioner (T5Gemma + seconds_total)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, io_channels, LENGTH, generator=g)
    latents = torch.randn(BATCH, io_channels, LENGTH, generator=g)
    mask = torch.zeros(BATCH, 1, LENGTH)
    mask[0, :, :5] = 1  # keep the start (continuation)
    mask[1, :, 3:7] = 1  # keep a middle region
    prompts, seconds = PROMPTS
    meta = [{"prompt": p, "seconds_total": s} for p, s in zip(prompts, seconds, strict=True)]
    neg_meta = [{"prompt": NEGATIVE, "seconds_total": s} for s in seconds]
    with torch.no_grad():
        tensors = model.conditioner(meta, "cpu")
        neg = model.conditioner(neg_meta, "cpu")
    pad = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    pad[1, 8:] = False
    out = {
        "x": x,
        "local": torch.cat([mask, latents * mask], dim=1),
        "padding_mask": pad,
        "tensors": tensors,
        "negative_tensors": neg,
    }
    for k, v in T_VALUES.items():
        out[k] = torch.tensor(v, dtype=torch.float32)
    return out


def _reference_case(model, inp: dict, case: Case):
    import torch

    dit = model.model  # DiTWrapper
    local = inp["local"] if case.local else torch.zeros_like(inp["local"])
    tensors = dict(inp["tensors"], inpaint_mask=[local[:, :1]], inpaint_masked_input=[local[:, 1:]])
    cond = model.get_conditioning_inputs(tensors)
    extra = {}
    if case.negative:
        neg = dict(inp["negative_tensors"], inpaint_mask=[local[:, :1]], inpaint_masked_input=[local[:, 1:]])
        extra = model.get_conditioning_inputs(neg, negative=True)
    pad = inp["padding_mask"] if case.padding else None
    dit.model.timestep_features_logsnr = case.logsnr
    try:
        with torch.no_grad():
            return dit(
                inp["x"], inp[case.t], **cond, **extra, cfg_scale=case.cfg, apg_scale=case.apg,
                padding_mask=pad, batch_cfg=True, rescale_cfg=True,
            )  # fmt: skip
    finally:
        dit.model.timestep_features_logsnr = False


def _timestep_parts(dit, inp: dict) -> dict:
    """`ref.expo_freqs`: ExpoFourierFeatures' frequencies as its forward computes them (its own lines; torch's
    CPU exp is not correctly rounded, so they may differ from the exact ones by 1 ulp); `temb.<t>` /
    `temb_logsnr.<t>`: `to_timestep_embed(timestep_features(t))`, without / with the log-SNR mapping."""
    import math

    import torch

    feats = dit.timestep_features
    ramp = torch.linspace(0, 1, feats.dim // 2, dtype=torch.float32)
    log_min, log_max = math.log(feats.min_freq), math.log(feats.max_freq)
    out = {"ref.expo_freqs": torch.exp(ramp * (log_max - log_min) + log_min)}
    with torch.no_grad():
        for k in T_VALUES:
            t = inp[k]
            out[f"temb.{k}"] = dit.to_timestep_embed(feats(t[:, None]))
            out[f"temb_logsnr.{k}"] = dit.to_timestep_embed(feats(dit._t_to_logsnr_cond(t)[:, None]))
    return out


def make_model(name: str, seed: int = 0) -> dict:
    """{tensor name: numpy float32} of one tiny model's inputs and reference outputs."""
    from .sa3 import load_reference

    model, cfg = load_reference(REPO / "tests" / "fixtures" / "sa3" / name)
    inp = _inputs(model, cfg["model"]["io_channels"], seed)
    zeros = {"inpaint_mask": [inp["local"][:, :1] * 0], "inpaint_masked_input": [inp["local"][:, 1:] * 0]}
    cond = model.get_conditioning_inputs(dict(inp["tensors"], **zeros))
    neg = model.get_conditioning_inputs(dict(inp["negative_tensors"], **zeros), negative=True)
    arrays = {
        "in.x": inp["x"],
        "in.local": inp["local"],
        "in.padding_mask": inp["padding_mask"].float(),
        "in.cross": cond["cross_attn_cond"],
        "in.cross_mask": cond["cross_attn_mask"].float(),
        "in.global": cond["global_cond"],
        "in.neg_cross": neg["negative_cross_attn_cond"],
        "in.neg_mask": neg["negative_cross_attn_mask"].float(),
        **{f"in.{k}": inp[k] for k in T_VALUES},
    }
    for case in CASES:
        arrays[f"out.{case.name}"] = _reference_case(model, inp, case)
    arrays.update(_timestep_parts(model.model.model, inp))
    return {k: v.detach().float().contiguous().numpy() for k, v in arrays.items()}


def make(out_dir: str | Path) -> Path:
    """Write `{small,medium}.safetensors` into out_dir; returns it."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        save_file(make_model(name), str(out / f"{name}.safetensors"))
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "sa3" / "dit"))
