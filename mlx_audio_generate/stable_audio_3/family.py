"""Stable Audio 3 as the rest of the tool sees it: names, repos, detection, conversion, loading, settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..family import AudioModel, ConvertJob, Family, ModelFacts, Preset, QuantizeSpec
from ..settings import MAX_PROMPT_CHARS, Setting

_VARIANTS = ("small-music", "small-sfx", "medium")
MODELS = {
    f"stable-audio-3-{v}{base}": f"stabilityai/stable-audio-3-{v}{base}"
    for v in _VARIANTS
    for base in ("", "-base")
}
T5GEMMA_FOLDER = "t5gemma-b-b-ul2"  # the T5Gemma copy bundled with every released checkpoint
# Exactly what the converter reads.
_PATTERNS = ["model_config.json", "model.safetensors", f"{T5GEMMA_FOLDER}/*"]
SAMPLERS = ("euler", "rk4", "dpmpp", "pingpong")  # diffusion/flow.py SAMPLER_NAMES, for both objectives
INIT_NOISE_LEVEL = 0.9  # the reference CLI's --init-noise-level default


@dataclass(frozen=True)
class Defaults:
    sampler: str
    steps: int
    cfg_scale: float


# Per objective: `StableAudioModel.generate`'s steps / cfg (the CLI's hint "try 7.0 for base models") and
# `sample_diffusion`'s default sampler; the -base models' 50 steps are the model cards'.
DEFAULTS = {
    "rf_denoiser": Defaults("pingpong", 8, 1.0),  # post-trained (distilled)
    "rectified_flow": Defaults("euler", 50, 7.0),  # -base
}


def objective_of(config: dict[str, Any]) -> str:
    """The diffusion objective of a converted folder's config (no weights read)."""
    from .dit import SA3DiTConfig

    return SA3DiTConfig.from_dict(config["model_config"]).diffusion_objective


def settings(config: dict[str, Any] | None) -> list[Setting]:
    """The generation settings; with a converted config, its objective's defaults."""
    objective = None if config is None else objective_of(config)
    d = DEFAULTS.get(objective) if objective is not None else None
    audio = dict(batch=False)  # audio inputs: the server takes an upload's id (server/uploads.py)
    return [
        Setting("steps", "int", d and d.steps, "Steps",
                "Diffusion steps; more is slower and usually cleaner.", 1, 1000),
        Setting("cfg_scale", "float", d and d.cfg_scale, "CFG scale",
                "How strongly to follow the prompt (1 = a single pass).", 0.0, 20.0),
        Setting("apg_scale", "float", 1.0, "APG scale",
                "Adaptive projected guidance with CFG > 1: 1 = full APG, 0 = plain CFG.", 0.0, 1.0),
        Setting("sampler", "choice", d and d.sampler, "Sampler", "Diffusion sampler.", choices=SAMPLERS),
        Setting("negative_prompt", "text", "", "Negative prompt",
                "What to steer away from (optional; needs CFG > 1).", max_length=MAX_PROMPT_CHARS),
        Setting("init_audio", "file", None, "Init audio", "make a variation of this audio", **audio),
        Setting("init_noise_level", "float", None, "Init noise level",
                f"how much of --init-audio is re-generated, t in (0, 1] (default {INIT_NOISE_LEVEL:g})",
                0.0, 1.0, exclusive_minimum=True, **audio),
        Setting("inpaint_audio", "file", None, "Inpaint audio",
                "keep this audio outside --inpaint-regions (inpainting; continuation past its end)", **audio),
        Setting("inpaint_regions", "text", None, "Inpaint regions",
                "regions of --inpaint-audio to regenerate, in seconds: START:END[,START:END...] "
                "(END may be left out: to the end)", metavar="START:END,...", max_length=1000,
                region=("inpaint_audio", "list"), **audio),
        # LoRA files are read from this machine: the CLI and the Python API take them, not batch lines or
        # the server (whose clients must not name server paths)
        Setting("lora", "text", None, "LoRA",
                "LoRA adapters applied for this run, stacked in order: PATH[:STRENGTH][,PATH[:STRENGTH]...] "
                "(.safetensors with lora_config metadata)", metavar="PATH[:S],...", max_length=4000,
                batch=False, server=False),
    ]  # fmt: skip


# The web UI's presets (data: tests/seam/test_family_presets.py checks them against `settings(None)`).
# Steps / CFG / sampler stay the checkpoint's: the post-trained models (8 steps, CFG 1) and the -base ones
# (50 steps, CFG 7) want different ones. A negative prompt only acts under CFG > 1 (the -base models).
PRESETS = (
    Preset("Ambient pad", "ambient pad, slow evolving, shimmering reverb, warm analog synth", 30.0),
    Preset("Sound effect: door slam", "a heavy wooden door slams shut in a stone hallway, close mic", 4.0,
           {"negative_prompt": "music"}),
    Preset("Drum loop, 120 BPM", "drum loop 120 BPM, punchy kick, shuffled hi-hats", 8.0,
           {"negative_prompt": "vocals"}),
    Preset("Cinematic riser", "cinematic riser with a deep impact at the end", 10.0),
)  # fmt: skip


def _read_config(folder: Path) -> dict[str, Any] | None:
    from ..hub import read_json

    config = read_json(Path(folder) / "model_config.json")
    return config if isinstance(config, dict) else None


def looks_like_sa3(config: dict[str, Any]) -> bool:
    """A model_config.json of Stable Audio 3: an inpainting diffusion model over a SAME autoencoder with a
    T5Gemma text conditioner (reads the config only)."""
    if config.get("model_type") != "diffusion_cond_inpaint":
        return False
    m = config.get("model")
    if not isinstance(m, dict):
        return False
    try:
        encoder = m["pretransform"]["config"]["encoder"]["type"]
        conds = [c.get("type") for c in m["conditioning"]["configs"]]
    except (KeyError, TypeError, AttributeError):
        return False
    return encoder == "same" and "t5gemma" in conds


def _detect(folder: Path) -> bool:
    config = _read_config(folder)
    return config is not None and looks_like_sa3(config)


def _patterns(repo: str) -> list[str]:
    return list(_PATTERNS)


def _convert(job: ConvertJob) -> None:
    from .convert import convert_stable_audio_3

    convert_stable_audio_3(job)


def _load(conv: Any) -> AudioModel:
    from .generate import StableAudio3

    return StableAudio3.from_converted(conv)


def _facts(config: dict[str, Any]) -> ModelFacts:
    from ..codecs.same import SAMEConfig

    mc = config["model_config"]
    same = SAMEConfig.from_dict(mc["model"]["pretransform"])
    sr = int(mc["sample_rate"])
    return ModelFacts(sr, same.io_channels, int(mc["sample_size"]) / sr)


FAMILY = Family(
    name="stable_audio_3",
    label="Stable Audio 3",
    models=MODELS,
    example="stable-audio-3-small-music",
    detect=_detect,
    convert=_convert,
    load=_load,
    facts=_facts,
    settings=settings,
    quantize=QuantizeSpec(
        "dit",
        # project_in is read through `.weight` (the DiT's dtype probe); the ends set the latent's precision
        frozenset({"project_in", "project_out", "preprocess_conv", "postprocess_conv"}),
        ("to_timestep_embed", "to_cond_embed", "to_global_embed", "global_cond_embedder"),
        "DiT",
    ),
    download_patterns=_patterns,
    verb="denoising",
    examples=(
        "drum loop 120 BPM, punchy kick, shuffled hi-hats",
        "ambient pad, slow evolving, shimmering reverb",
        "foley: footsteps on a wooden floor",
        "cinematic riser with a deep impact at the end",
    ),
    presets=PRESETS,
    streams=True,  # generate(stream=True): the decoded audio tile by tile (generate.py)
)
