"""Stable Audio Open as the rest of the tool sees it: names, repos, detection, conversion, loading,
settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..diffusion.samplers import default_sampler
from ..family import AudioModel, ConvertJob, Family, ModelFacts, Preset, QuantizeSpec
from ..settings import MAX_PROMPT_CHARS, Setting

MODELS = {
    "stable-audio-open-small": "stabilityai/stable-audio-open-small",
    "stable-audio-open-1.0": "stabilityai/stable-audio-open-1.0",
}
# Stable Audio's T5 conditioner loads "t5-base" by name; its weights live in this repo.
T5_BASE_REPO = "google-t5/t5-base"
# Only what the converter reads. Globs match across folders, so 1.0's diffusers copies of the weights
# (transformer/, vae/) are excluded by naming exactly what is read.
_PATTERNS = ["model.safetensors", "model_config.json", "text_encoder/*", "tokenizer/*"]
_T5_PATTERNS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "spiece.model"]


@dataclass(frozen=True)
class Defaults:
    sampler: str
    steps: int
    cfg_scale: float


# Per objective, what stable-audio-tools' gradio app preselects (= the model cards for small and 1.0); the
# sampler is the one its sampling functions pick by default (diffusion.samplers.default_sampler).
DEFAULTS = {
    objective: Defaults(default_sampler(objective), steps, cfg)
    for objective, steps, cfg in (
        ("rf_denoiser", 8, 1.0),  # stable-audio-open-small (distilled): pingpong
        ("v", 100, 7.0),  # stable-audio-open-1.0 (sigma 0.3-500: samplers' defaults): dpmpp-3m-sde
        ("rectified_flow", 50, 7.0),  # euler
    )
}


def objective_of(config: dict[str, Any]) -> str:
    """The diffusion objective of a converted folder's config (no weights read)."""
    from .dit import DiTConfig

    return DiTConfig.from_dict(config["model_config"]).diffusion_objective


def settings(config: dict[str, Any] | None) -> list[Setting]:
    """The generation settings; with a converted config, its objective's defaults and sampler names."""
    from ..diffusion.samplers import SAMPLERS, sampler_names

    objective = None if config is None else objective_of(config)
    d = DEFAULTS.get(objective) if objective is not None else None
    # without a checkpoint: every sampler of some objective (the checkpoint's own list is checked once known)
    every = tuple(dict.fromkeys(name for names in SAMPLERS.values() for name in names))
    choices = every if objective is None else tuple(sampler_names(objective))
    audio = dict(batch=False)  # audio inputs: the server takes an upload's id (server/uploads.py)
    return [
        Setting(
            "steps",
            "int",
            d and d.steps,
            "Steps",
            "Diffusion steps; more is slower and usually cleaner.",
            1,
            1000,
        ),  # fmt: skip
        Setting(
            "cfg_scale",
            "float",
            d and d.cfg_scale,
            "CFG scale",
            "How strongly to follow the prompt (1 = a single pass).",
            0.0,
            20.0,
        ),  # fmt: skip
        Setting(
            "sampler",
            "choice",
            d and d.sampler,
            "Sampler",
            "Diffusion sampler.",
            choices=choices,
            note="" if objective is None else f" (diffusion objective {objective!r})",
        ),  # fmt: skip
        Setting(
            "negative_prompt",
            "text",
            "",
            "Negative prompt",
            "What to steer away from (optional).",
            max_length=MAX_PROMPT_CHARS,
        ),  # fmt: skip
        Setting("init_audio", "file", None, "Init audio", "make a variation of this audio", **audio),
        Setting(
            "init_noise_level",
            "float",
            None,
            "Init noise level",
            "how far from --init-audio (the reference's init_noise_level)",
            0.0,
            exclusive_minimum=True,
            **audio,
        ),  # fmt: skip
        Setting(
            "init_strength",
            "float",
            None,
            "Init strength",
            "0..1 alternative to --init-noise-level (1 = ignore the init audio)",
            0.0,
            1.0,
            exclusive_minimum=True,
            **audio,
        ),  # fmt: skip
        Setting("inpaint_audio", "file", None, "Inpaint audio", "regenerate a region of this audio", **audio),
        Setting(
            "mask_start",
            "float",
            None,
            "Mask start",
            "inpainting region start",
            0.0,
            metavar="SECONDS",
            region=("inpaint_audio", "start"),
            **audio,
        ),  # fmt: skip
        Setting(
            "mask_end",
            "float",
            None,
            "Mask end",
            "inpainting region end",
            0.0,
            metavar="SECONDS",
            region=("inpaint_audio", "end"),
            **audio,
        ),  # fmt: skip
    ]


# The web UI's presets (data: tests/seam/test_family_presets.py checks them against `settings(None)`).
# Lengths fit open-small's ~11.9 s window. Steps / CFG / sampler differ tenfold between the distilled small
# (8 steps, CFG 1) and 1.0 (100 steps, CFG 7), so the presets that set them are the 1.0-style ones: the
# server offers a preset only for checkpoints whose schema takes it (dpmpp-3m-sde is a v-objective sampler).
PRESETS = (
    Preset("Drum loop, 120 BPM", "drum loop, 120 BPM, tight kick and crisp hi-hats", 8.0,
           {"negative_prompt": "vocals, speech, reverb wash"}),
    Preset("Foley: footsteps on gravel", "foley: footsteps on gravel, close mic, dry", 6.0,
           {"negative_prompt": "music, melody"}),
    Preset("Ambient pad", "ambient pad, slow evolving, warm analog synth", 11.0,
           {"negative_prompt": "drums, percussion"}),
    Preset("Drum loop, 120 BPM (1.0, 100 steps)", "drum loop, 120 BPM, tight kick and crisp hi-hats", 8.0,
           {"steps": 100, "cfg_scale": 7.0, "sampler": "dpmpp-3m-sde", "negative_prompt": "vocals, speech"}),
)  # fmt: skip


def _detect(folder: Path) -> bool:
    """A stable-audio-tools model_config.json, except the newer models' over a SAME autoencoder or a
    T5Gemma conditioner (another family's: this one cannot run them)."""
    from ..hub import read_json

    config = read_json(Path(folder) / "model_config.json")
    if config is None:
        return False
    try:
        m = config["model"]
        encoder = m["pretransform"]["config"]["encoder"]["type"]
        conds = [c.get("type") for c in m["conditioning"]["configs"]]
    except (KeyError, TypeError, AttributeError):
        return True  # ours to refuse with a clear message (full_model checks the config)
    return encoder != "same" and "t5gemma" not in conds


def _patterns(repo: str) -> list[str]:
    return list(_T5_PATTERNS if repo == T5_BASE_REPO else _PATTERNS)


def _convert(job: ConvertJob) -> None:
    from .convert import convert_stable_audio

    convert_stable_audio(job)


def _load(conv: Any) -> AudioModel:
    from .generate import StableAudio

    return StableAudio.from_converted(conv)


def _facts(config: dict[str, Any]) -> ModelFacts:
    from ..codecs.oobleck import OobleckConfig

    mc = config["model_config"]
    vae = OobleckConfig.from_dict(mc["model"]["pretransform"])
    ratio = vae.downsampling_ratio
    window = int(mc["sample_size"]) // ratio * ratio  # as StableAudioModel.window_samples
    sr = int(mc["sample_rate"])
    return ModelFacts(sr, vae.io_channels, window / sr)


FAMILY = Family(
    name="stable_audio",
    label="Stable Audio",
    models=MODELS,
    example="stable-audio-open-small",
    detect=_detect,
    convert=_convert,
    load=_load,
    facts=_facts,
    settings=settings,
    quantize=QuantizeSpec(
        "dit",
        frozenset({"project_in", "project_out", "preprocess_conv", "postprocess_conv"}),
        ("to_timestep_embed", "to_cond_embed", "to_global_embed"),
        "DiT",
    ),
    download_patterns=_patterns,
    extra_repos=frozenset({T5_BASE_REPO}),
    convert_settings=(
        Setting(
            "t5",
            "text",
            None,
            "T5",
            "T5 folder or repo (default google-t5/t5-base; 1.0 uses its own)",
            batch=False,
            server=False,
        ),  # fmt: skip
    ),
    verb="denoising",
    examples=(
        "drum loop, 120 BPM, tight kick and crisp hi-hats",
        "ambient pad, slow evolving, warm analog synth",
        "foley: footsteps on gravel, close mic",
        "rain on a tin roof with distant thunder",
    ),
    presets=PRESETS,
)
