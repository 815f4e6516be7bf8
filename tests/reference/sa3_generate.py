"""Reference whole generations of Stable Audio 3 (`StableAudioModel(...).generate(...)`,
stable_audio_3/model.py) on the committed tiny checkpoints, for tests/stable_audio_3/test_sa3_generate.py.

Each case runs the reference's own `generate` (conditioning, `_adapt_sample_size` with the 6 s headroom,
padding mask, inpainting mask and local conditioning, init-audio mix, schedule, sampler with batch CFG + APG,
SAME decode, masking, clamp, truncation) with the SAME decoder's random `mask_noise` set to 0. Its random
draws are recorded, not replaced: the initial noise is the first `torch.randn` after `torch.manual_seed(seed)`
(re-drawn the same way), ping-pong's per-step `torch.randn_like` draws are copied as they are made, so the
test can inject both. The final latents (the decoder's input) are kept for diagnosis.

Config variants (the weights do not depend on them): `native` (the committed model_config.json: 44.1 kHz,
8192 samples, so every request is capped by sample_size; `generate` is given the model's sample_size as
its cap, as the reference's Gradio UI does: its own default is 120 s for every model), `base`
(diffusion_objective "rectified_flow", the -base models' path), `varlen` (sample_rate 2048, sample_size
20480: the 6 s headroom and the padding mask map to a handful of latents) and `chunked` (varlen with
`pretransform.chunked`: chunked SAME encode/decode).

The reference's rk4 cannot run generate()'s per-row schedule (its loop zips the rows of a (B, steps + 1)
schedule: no step for one row, it returns the noise): the rk4 case runs the same generate() with
`sample_diffusion(use_effective_length_for_schedule=False)`, i.e. sample_rk4 on the one schedule (the same
values: the default shift ignores the length).

    python -m tests.reference.sa3_generate tests/fixtures/sa3/generate

writes `generate.safetensors` (fp32) and `meta.json` (cases, variants) into that folder.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
CHECKPOINTS = ("small", "medium")
VARIANTS = {
    "native": {},
    "base": {"objective": "rectified_flow"},
    "varlen": {"sample_rate": 2048, "sample_size": 20480},
    "chunked": {"sample_rate": 2048, "sample_size": 20480, "chunked": True},
}
PROMPTS = ["lofi house loop with warm pads", "punchy kick drum fill", "footsteps on gravel"]

# name, checkpoint, variant, generate() arguments (ours; the reference's are derived in `_reference_args`)
CASES: list[dict] = [
    dict(name="s-t2a", ckpt="small", variant="native", prompts=PROMPTS[:2], seconds=0.1, steps=4, seed=11),
    dict(name="s-cfg-neg", ckpt="small", variant="native", prompts=PROMPTS[2:], seconds=0.1, steps=4,
         cfg_scale=4.0, negative_prompt="punchy kick", seed=12),
    dict(name="s-base-euler", ckpt="small", variant="base", prompts=PROMPTS[:1], seconds=0.15, steps=6,
         cfg_scale=7.0, negative_prompt="footsteps", seed=13),
    dict(name="s-base-dpmpp-cfg", ckpt="small", variant="base", prompts=PROMPTS[1:], seconds=0.12, steps=5,
         cfg_scale=3.0, apg_scale=0.0, sampler="dpmpp", seed=14),
    dict(name="s-base-rk4-apg-half", ckpt="small", variant="base", prompts=PROMPTS[:1], seconds=0.1, steps=3,
         cfg_scale=2.5, apg_scale=0.5, sampler="rk4", seed=15),
    dict(name="s-a2a", ckpt="small", variant="native", prompts=PROMPTS[:1], seconds=0.15, steps=4,
         init_audio="clip", seed=16),
    dict(name="s-a2a-euler", ckpt="small", variant="base", prompts=PROMPTS[2:], seconds=0.15, steps=4,
         init_audio="clip", init_noise_level=0.5, sampler="euler", cfg_scale=1.0, seed=17),
    dict(name="s-inpaint2", ckpt="small", variant="native", prompts=PROMPTS[1:2], seconds=0.18, steps=4,
         inpaint_audio="clip", inpaint_regions=[(0.02, 0.05), (0.1, 0.14)], seed=18),
    dict(name="s-continue", ckpt="small", variant="native", prompts=PROMPTS[:1], seconds=0.18, steps=4,
         inpaint_audio="short", inpaint_regions=[(0.08, None)], cfg_scale=2.0, seed=19),
    dict(name="s-varlen", ckpt="small", variant="varlen", prompts=PROMPTS[:2], seconds=1.03, steps=4,
         cfg_scale=3.0, seed=20),
    dict(name="s-exact", ckpt="small", variant="varlen", prompts=PROMPTS[2:], seconds=2.0, steps=4,
         headroom_seconds=0.0, seed=21),
    dict(name="s-exact-odd", ckpt="small", variant="varlen", prompts=PROMPTS[:1], seconds=1.03, steps=4,
         headroom_seconds=0.0, cfg_scale=2.0, seed=22),
    dict(name="s-chunked-inpaint", ckpt="small", variant="chunked", prompts=PROMPTS[1:2], seconds=4.0,
         steps=3, inpaint_audio="long", inpaint_regions=[(1.0, 2.0), (3.0, None)], seed=23),
    dict(name="m-t2a", ckpt="medium", variant="native", prompts=PROMPTS[:2], seconds=0.1, steps=4, seed=31),
    dict(name="m-cfg-neg", ckpt="medium", variant="native", prompts=PROMPTS[1:2], seconds=0.12, steps=4,
         cfg_scale=5.0, negative_prompt="warm pads", seed=32),
    dict(name="m-a2a", ckpt="medium", variant="native", prompts=PROMPTS[2:], seconds=0.15, steps=4,
         init_audio="clip", init_noise_level=0.6, seed=33),
    dict(name="m-inpaint2", ckpt="medium", variant="native", prompts=PROMPTS[:1], seconds=0.18, steps=4,
         inpaint_audio="clip", inpaint_regions=[(0.0, 0.04), (0.09, 0.13)], cfg_scale=2.0, seed=34),
    dict(name="m-varlen-chunked", ckpt="medium", variant="chunked", prompts=PROMPTS[:1], seconds=4.0,
         steps=3, cfg_scale=2.0, seed=35),
]  # fmt: skip


def variant_config(config: dict, variant: str) -> dict:
    """The committed model_config.json changed as the variant says (both sides build from this)."""
    v = VARIANTS[variant]
    cfg = copy.deepcopy(config)
    for key in ("sample_rate", "sample_size"):
        if key in v:
            cfg[key] = v[key]
    if "objective" in v:
        cfg["model"]["diffusion"]["diffusion_objective"] = v["objective"]
    if v.get("chunked"):
        cfg["model"]["pretransform"]["chunked"] = True
    return cfg


def clips() -> dict[str, tuple[str, np.ndarray]]:
    """Input audio: name -> (variant whose rate it is at, (2, samples) float32)."""
    rng = np.random.RandomState(5)

    def clip(sr: int, seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * sr)) / sr
        tone = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t + 1)])
        return (0.5 * tone + 0.05 * rng.randn(2, t.size)).astype(np.float32)

    return {"clip": ("native", clip(44100, 0.18)), "short": ("native", clip(44100, 0.08)),
            "long": ("chunked", clip(2048, 3.0))}  # fmt: skip


def _load(ckpt: str, variant: str):
    """The reference model of a committed checkpoint under a config variant, decoder mask_noise 0."""
    from stable_audio_3.loading_utils import load_diffusion_cond

    folder = FIXTURES / ckpt
    cfg = variant_config(json.loads((folder / "model_config.json").read_text()), variant)
    cond = cfg["model"]["conditioning"]["configs"][0]["config"]
    cond["model_path"] = str(folder / cond.pop("subfolder"))
    cond.pop("repo_id")
    model = load_diffusion_cond(cfg, str(folder / "model.safetensors"), device="cpu")
    for m in model.pretransform.model.decoder.modules():
        if hasattr(m, "mask_noise"):
            m.mask_noise = 0
    return model, cfg


def _reference_args(case: dict, sr: int, sample_size: int, audio: dict) -> dict:
    args = dict(
        prompt=case["prompts"] if len(case["prompts"]) > 1 else case["prompts"][0],
        batch_size=len(case["prompts"]),
        duration=case["seconds"],
        steps=case["steps"],
        cfg_scale=case.get("cfg_scale", 1.0),
        apg_scale=case.get("apg_scale", 1.0),
        seed=case["seed"],
        duration_padding_sec=case.get("headroom_seconds", 6.0),
        sample_size=sample_size,  # the model's window, as the reference's Gradio UI passes it
    )
    if case.get("negative_prompt"):
        args["negative_prompt"] = case["negative_prompt"]
    if case.get("sampler"):
        args["sampler_type"] = case["sampler"]
    if case.get("init_audio"):
        import torch

        args["init_audio"] = (sr, torch.from_numpy(audio[case["init_audio"]][1].copy()))
        args["init_noise_level"] = case.get("init_noise_level", 0.9)
    if case.get("inpaint_audio"):
        import torch

        args["inpaint_audio"] = (sr, torch.from_numpy(audio[case["inpaint_audio"]][1].copy()))
        starts = [s for s, _ in case["inpaint_regions"]]
        ends = [case["seconds"] if e is None else e for _, e in case["inpaint_regions"]]
        args["inpaint_mask_start_seconds"], args["inpaint_mask_end_seconds"] = starts, ends
    return args


def _expo_freqs(feats):
    """ExpoFourierFeatures' frequencies as its forward computes them (its own lines; torch's CPU float32 exp
    is within an ulp of the exact ones, not always equal), checked against its output."""
    import torch

    ramp = torch.linspace(0, 1, feats.dim // 2, dtype=torch.float32)
    log_min, log_max = math.log(feats.min_freq), math.log(feats.max_freq)
    freqs = torch.exp(ramp * (log_max - log_min) + log_min)
    t = torch.tensor([0.0, 0.3, 1.0])
    args = t[:, None] * freqs * 2 * math.pi
    assert torch.equal(feats(t), torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    return freqs


def run_case(case: dict, model, cfg: dict, audio: dict) -> dict[str, np.ndarray]:
    import torch
    from stable_audio_3 import model as model_module
    from stable_audio_3.model import StableAudioModel

    wrapper = StableAudioModel(model, cfg, "cpu", False)
    drawn: list[torch.Tensor] = []
    latents: list[torch.Tensor] = []
    real_randn_like, real_sample, real_decode = torch.randn_like, model_module.sample_diffusion, None

    def randn_like(x, *a, **k):  # the reference's own draw, copied
        out = real_randn_like(x, *a, **k)
        drawn.append(out.clone())
        return out

    def sample_diffusion(*a, **k):
        if case.get("sampler") == "rk4":  # see the module doc
            k["use_effective_length_for_schedule"] = False
        return real_sample(*a, **k)

    pre = model.pretransform
    real_decode = pre.decode

    def decode(z, **k):
        latents.append(z.clone())
        return real_decode(z, **k)

    torch.randn_like, model_module.sample_diffusion, pre.decode = randn_like, sample_diffusion, decode
    try:
        out = wrapper.generate(**_reference_args(case, cfg["sample_rate"], cfg["sample_size"], audio))
    finally:
        torch.randn_like, model_module.sample_diffusion = real_randn_like, real_sample
        del pre.decode
    z = latents[0]
    torch.manual_seed(case["seed"])  # the initial noise: generate's first draw after seeding
    noise = torch.randn(list(z.shape))
    res = {"out": out.numpy(), "latents": z.numpy(), "noise": noise.numpy()}
    if drawn:
        res["drawn"] = torch.stack(drawn).numpy()
    return res


def make(out_dir: str | Path) -> Path:
    """Run the reference for every case; write `out_dir/generate.safetensors` + `meta.json`; return the
    folder."""
    import torch
    from safetensors.numpy import save_file

    from tests.reference.sa3 import import_sa3

    import_sa3()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    audio = clips()
    tensors: dict[str, np.ndarray] = {f"audio/{k}": v for k, (_, v) in audio.items()}
    models: dict[tuple[str, str], tuple] = {}
    for case in CASES:
        key = (case["ckpt"], case["variant"])
        if key not in models:
            models[key] = _load(*key)
        model, cfg = models[key]
        for k, v in run_case(case, model, cfg, audio).items():
            tensors[f"{case['name']}/{k}"] = v
        if f"{case['ckpt']}/expo_freqs/dit" not in tensors:
            tensors[f"{case['ckpt']}/expo_freqs/dit"] = _expo_freqs(
                model.model.model.timestep_features
            ).numpy()
            number = model.conditioner.conditioners["seconds_total"]
            tensors[f"{case['ckpt']}/expo_freqs/seconds"] = _expo_freqs(number.embedder.embedding[0]).numpy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, str(out / "generate.safetensors"))
    meta = {"cases": CASES, "variants": VARIANTS, "clips": {k: sr for k, (sr, _) in audio.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/sa3/generate"))
