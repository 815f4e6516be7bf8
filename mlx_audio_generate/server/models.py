"""The server's models: converted folders by name, described from their config, loaded on first use.

Describing a model (sample rate, length limit, parameters and defaults) reads only config.json, so the server
starts at once and can validate requests before any weights are loaded; the worker thread loads the weights
the first time a job needs them and keeps the model.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..api import converted_family, load
from ..errors import UserError

log = logging.getLogger("mlx_audio_generate.server")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PROMPT_CHARS = 1000

# Value ranges accepted by the API (also the UI's input bounds). Wide enough for any sensible use, narrow
# enough that a typo (temperature 100, 10^6 steps) is refused instead of queueing an hour of work.
BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 5.0),
    "top_k": (1, 2048),  # MusicGen's EnCodec codebooks have 2048 entries
    "top_p": (0.0, 1.0),
    "guidance_coef": (0.0, 20.0),
    "steps": (1, 500),
    "cfg_scale": (0.0, 20.0),
}

# As MusicGen.max_seconds (the 30 s training window); replaced by the loaded model's own value.
MUSICGEN_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class ParamSpec:
    """One family-specific generation parameter, as the UI shows it and the API checks it."""

    name: str
    kind: str  # "float" | "int" | "choice" | "text"
    default: Any
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    max_length: int | None = None


def _bounded(name: str, kind: str, default: Any, label: str, help: str) -> ParamSpec:
    lo, hi = BOUNDS[name]
    return ParamSpec(name, kind, default, label, help, minimum=lo, maximum=hi)


def musicgen_params() -> list[ParamSpec]:
    # Defaults are MusicGen.generate's (= the CLI's and audiocraft's).
    return [
        _bounded("temperature", "float", 1.0, "Temperature", "Sampling temperature; 0 = greedy."),
        _bounded("top_k", "int", 250, "Top-k", "Candidate tokens per step; 1 = greedy."),
        _bounded("top_p", "float", 0.0, "Top-p", "Nucleus sampling mass; 0 = off."),
        _bounded("guidance_coef", "float", 3.0, "Guidance", "Classifier-free guidance strength."),
    ]


def stable_audio_params(steps: int, cfg_scale: float, sampler: str, samplers: list[str]) -> list[ParamSpec]:
    return [
        _bounded("steps", "int", steps, "Steps", "Diffusion steps; more is slower and usually cleaner."),
        _bounded("cfg_scale", "float", cfg_scale, "CFG scale", "How strongly to follow the prompt."),
        ParamSpec("sampler", "choice", sampler, "Sampler", "Diffusion sampler.", choices=tuple(samplers)),
        ParamSpec(
            "negative_prompt",
            "text",
            "",
            "Negative prompt",
            "What to steer away from (optional).",
            max_length=MAX_PROMPT_CHARS,
        ),
    ]


class ModelEntry:
    """A named converted folder: its description now, its loaded model once a job needs it."""

    def __init__(
        self,
        name: str,
        folder: Path,
        family: str,
        sample_rate: int,
        max_seconds: float,
        params: list[ParamSpec],
    ):
        self.name = name
        self.folder = folder
        self.family = family
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.params = {p.name: p for p in params}
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, name: str, folder: str | Path) -> ModelEntry:
        if not NAME_RE.match(name):
            raise UserError(
                f"model name '{name}' is not allowed; use letters, digits, '.', '_' or '-' (at most 64)"
            )
        folder = Path(folder).expanduser().resolve()
        family = converted_family(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            if family == "musicgen":
                sr = int(config["audio_encoder"]["sampling_rate"])
                return cls(name, folder, family, sr, MUSICGEN_MAX_SECONDS, musicgen_params())
            return cls._stable_audio(name, folder, config["model_config"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"cannot read '{folder}/config.json' ({e!r}); convert the model again") from None

    @classmethod
    def _stable_audio(cls, name: str, folder: Path, mc: dict[str, Any]) -> ModelEntry:
        # The config classes only parse dicts (no weights, no device work).
        from ..codecs.oobleck import OobleckConfig
        from ..diffusion.samplers import sampler_names
        from ..stable_audio.dit import DiTConfig
        from ..stable_audio.generate import DEFAULTS

        sr = int(mc["sample_rate"])
        ratio = OobleckConfig.from_dict(mc["model"]["pretransform"]).downsampling_ratio
        objective = DiTConfig.from_dict(mc).diffusion_objective
        window = int(mc["sample_size"]) // ratio * ratio  # as StableAudioModel.window_samples
        d = DEFAULTS[objective]
        params = stable_audio_params(d.steps, d.cfg_scale, d.sampler, sampler_names(objective))
        return cls(name, folder, "stable_audio", sr, window / sr, params)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:
        """The model, loading it on first use (call from the worker thread: it owns the device)."""
        with self._lock:
            if self._model is None:
                model = load(self.folder)  # a failure is not cached: the next job tries again
                self.sample_rate = int(model.sample_rate)
                self.max_seconds = float(model.max_seconds)
                self._model = model
            return self._model

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "loaded": self.loaded,
            "params": [asdict(p) for p in self.params.values()],
        }


def discover_models(
    named: dict[str, str | Path] | None = None, models_dirs: list[str | Path] | None = None
) -> dict[str, ModelEntry]:
    """Models given by name (errors are fatal) plus every converted folder directly inside `models_dirs`
    (named after the folder; folders that are not converted models are skipped)."""
    entries: dict[str, ModelEntry] = {}
    for name, folder in (named or {}).items():
        entries[name] = ModelEntry.from_folder(name, folder)
    for d in models_dirs or []:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise UserError(f"--models-dir '{root}' is not a folder")
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if child.name in entries or not NAME_RE.match(child.name):
                continue
            try:
                entries[child.name] = ModelEntry.from_folder(child.name, child)
            except UserError as e:
                if (child / "config.json").is_file():  # a broken model deserves a word; other folders don't
                    log.warning("skipping %s: %s", child, e)
    return entries
