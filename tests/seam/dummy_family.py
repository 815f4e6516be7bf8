"""A dummy third family, written only in the test tree: a registry entry and a trivial model (a sine tone
whose pitch is its one setting). tests/seam/test_family_seam.py registers it and drives every entry point."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_audio_generate.converted import write_folder
from mlx_audio_generate.family import ConvertJob, Family, ModelFacts, QuantizeSpec
from mlx_audio_generate.settings import Setting, check_prompts, check_seconds, check_settings, resolve_seed
from mlx_audio_generate.weights import Checkpoint, load_safetensors, read_tensors

SETTINGS = [Setting("pitch", "float", 440.0, "Pitch", "Tone frequency in Hz.", 20.0, 4000.0)]
MAX_SECONDS = 10.0


def save_reference(folder: Path, sample_rate: int = 8000, gain: float = 0.5) -> Path:
    """A 'reference checkpoint' of the dummy family: its config and one weight."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tone_config.json").write_text(json.dumps({"model_type": "tone", "sample_rate": sample_rate}))
    mx.save_safetensors(str(folder / "model.safetensors"), {"gain": mx.array([gain])})
    return folder


class ToneModel:
    def __init__(self, gain: float, sample_rate: int):
        self.gain, self.sample_rate, self.audio_channels, self.max_seconds = gain, sample_rate, 1, MAX_SECONDS

    def generate(self, prompt, seconds=5.0, seed=None, progress=None, *, on_stage=None, pitch=None):
        prompts = check_prompts(prompt)
        seconds = check_seconds(seconds, self.max_seconds)
        pitch = check_settings(SETTINGS, {"pitch": pitch})["pitch"]
        seed = resolve_seed(seed, len(prompts))
        seeds = seed if isinstance(seed, list) else [seed] * len(prompts)
        t = np.arange(round(seconds * self.sample_rate)) / self.sample_rate
        rows = [tone(self.gain, pitch, t, s) for s in seeds]
        if progress is not None:
            progress(1, 1)
        return np.stack(rows)[:, None, :].astype(np.float32)


def tone(gain: float, pitch: float, t: np.ndarray, seed: int) -> np.ndarray:
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    return gain * np.sin(2 * np.pi * pitch * t + phase)


def _convert(job: ConvertJob) -> None:
    config = json.loads((job.src / "tone_config.json").read_text())
    ckpt = Checkpoint(read_tensors(job.src), name="tone checkpoint")
    weights = {"gain": ckpt.take("gain").astype(mx.float32)}
    ckpt.finish()
    write_folder(job.out, "tone", config, weights, {"dtype": "float32", "source": job.source})


def _load(conv) -> ToneModel:
    weights = load_safetensors(conv.folder / "model.safetensors")
    return ToneModel(float(weights["gain"][0]), int(conv.config["sample_rate"]))


FAMILY = Family(
    name="tone",
    label="Tone",
    models={"tone-small": "example/tone-small"},
    example="tone-small",
    detect=lambda folder: (Path(folder) / "tone_config.json").is_file(),
    convert=_convert,
    load=_load,
    facts=lambda config: ModelFacts(int(config["sample_rate"]), 1, MAX_SECONDS),
    settings=lambda config: list(SETTINGS),
    quantize=QuantizeSpec("core"),
)
