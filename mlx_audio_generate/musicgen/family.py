"""MusicGen as the rest of the tool sees it: names, repos, detection, conversion, loading, settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..family import AudioModel, ConvertJob, Family, ModelFacts, Preset, QuantizeSpec
from ..settings import Setting
from .longform import DEFAULT_STRIDE, DEFAULT_WINDOW

MODELS = {
    "musicgen-small": "facebook/musicgen-small",
    "musicgen-medium": "facebook/musicgen-medium",
    "musicgen-large": "facebook/musicgen-large",
    "musicgen-stereo-small": "facebook/musicgen-stereo-small",
    "musicgen-stereo-medium": "facebook/musicgen-stereo-medium",
    "musicgen-stereo-large": "facebook/musicgen-stereo-large",
    "musicgen-melody": "facebook/musicgen-melody",
    "musicgen-melody-large": "facebook/musicgen-melody-large",
    "musicgen-stereo-melody": "facebook/musicgen-stereo-melody",
    "musicgen-stereo-melody-large": "facebook/musicgen-stereo-melody-large",
}

# The longest clip one call makes (sliding windows beyond the 30 s window): an hour of audio is already hours
# of work on most machines, and a bound keeps a typo (1e9) from planning gigabytes of windows.
MAX_TOTAL_SECONDS = 3600.0

# Defaults are audiocraft's; the bounds refuse typos (temperature 100) rather than sensible extremes.
SETTINGS = [
    Setting("temperature", "float", 1.0, "Temperature", "Sampling temperature; 0 = greedy.", 0.0, 5.0),
    Setting(
        "top_k",
        "int",
        250,
        "Top-k",
        "Candidate tokens per step; 1 = greedy, 2048 = every codebook entry.",
        1,
        2048,
    ),  # fmt: skip
    Setting("top_p", "float", 0.0, "Top-p", "Nucleus sampling mass; 0 = off.", 0.0, 1.0),
    Setting("guidance_coef", "float", 3.0, "Guidance", "Classifier-free guidance strength.", 0.0, 20.0),
    Setting(
        "melody",
        "file",
        None,
        "Melody",
        "melody to follow (melody checkpoints)",
        batch=False,
        metavar="FILE",
    ),  # fmt: skip
    Setting(
        "audio_prompt",
        "file",
        None,
        "Audio prompt",
        "audio to continue; --seconds is the total length",
        batch=False,
        metavar="FILE",
    ),  # fmt: skip
    Setting(
        "extend_stride",
        "float",
        None,
        "Extend stride",
        f"beyond the {DEFAULT_WINDOW:g} s window, seconds added per extra window "
        f"(default {DEFAULT_STRIDE:g})",
        0.0,
        DEFAULT_WINDOW,
        exclusive_minimum=True,
        exclusive_maximum=True,
        batch=False,
        metavar="SECONDS",
    ),  # fmt: skip
]


# The web UI's presets (data: tests/seam/test_family_presets.py checks them against SETTINGS). Lengths stay
# inside the 30 s window; guidance 3 and top-k 250 are audiocraft's defaults, shown where a preset moves
# the others.
PRESETS = (
    Preset("Lofi beat, 80 BPM", "lofi hip hop beat with warm piano chords and vinyl crackle, 80 BPM", 15.0,
           {"guidance_coef": 3.0, "temperature": 1.0, "top_k": 250}),
    Preset("Synthwave drive", "80s synthwave, driving bassline, gated drums, 110 BPM", 20.0,
           {"guidance_coef": 3.5}),
    Preset("Acoustic folk (steady)", "acoustic folk guitar, fingerpicked, warm and intimate", 12.0,
           {"temperature": 0.8, "top_k": 150, "guidance_coef": 4.0}),
    Preset("Orchestral trailer", "epic orchestral trailer music, big brass and taiko drums", 30.0,
           {"guidance_coef": 5.0, "top_k": 250}),
)  # fmt: skip


def _detect(folder: Path) -> bool:
    from ..hub import read_json

    config = read_json(Path(folder) / "config.json")
    return isinstance(config, dict) and str(config.get("model_type", "")).startswith("musicgen")


def _convert(job: ConvertJob) -> None:
    from .convert import convert_musicgen

    convert_musicgen(job)


def _load(conv: Any) -> AudioModel:
    from .generate import MusicGen

    return MusicGen.from_converted(conv)


def _facts(config: dict[str, Any]) -> ModelFacts:
    channels = int(config["decoder"].get("audio_channels", 1))
    return ModelFacts(int(config["audio_encoder"]["sampling_rate"]), channels, DEFAULT_WINDOW)


def settings(config: dict[str, Any] | None) -> list[Setting]:
    """The settings; with a converted config that is not a melody model's, the melody input is not offered
    by the server and the UI (the CLI keeps the flag, to say why it does not apply)."""
    if config is None or config.get("model_type") == "musicgen_melody":
        return list(SETTINGS)
    return [replace(st, server=False) if st.name == "melody" else st for st in SETTINGS]


FAMILY = Family(
    name="musicgen",
    label="MusicGen",
    models=MODELS,
    example="musicgen-small",
    detect=_detect,
    convert=_convert,
    load=_load,
    facts=_facts,
    settings=settings,
    quantize=QuantizeSpec("lm", frozenset({"enc_to_dec_proj", "audio_enc_to_dec_proj"}), (), "LM"),
    streams=True,
    long_form=True,
    max_total_seconds=MAX_TOTAL_SECONDS,
    verb="generating",
    examples=(
        "lofi hip hop beat with warm piano chords and vinyl crackle, 80 BPM",
        "80s synthwave, driving bassline, gated drums",
        "acoustic folk guitar, fingerpicked, warm and intimate",
        "epic orchestral trailer music, big brass and taiko drums",
    ),
    presets=PRESETS,
)
