"""The Python API: load a model once, generate many times.

    from mlx_audio_generate import load
    model = load("converted/musicgen-small")          # a converted folder (see mlx-audio-convert)
    audio = model.generate("lofi piano", seconds=10, seed=0)[0]   # (channels, samples) float32
    model.sample_rate                                             # 32000 (MusicGen) / 44100 (Stable Audio)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError


def converted_family(folder: str | Path) -> str:
    """'musicgen' or 'stable_audio' for a folder written by mlx-audio-convert."""
    cfg = Path(folder).expanduser() / "config.json"
    try:
        meta = json.loads(cfg.read_text()).get("mlx_audio_generate", {})
    except (OSError, ValueError, AttributeError):
        meta = {}
    family = meta.get("family") if isinstance(meta, dict) else None
    if family not in ("musicgen", "stable_audio"):
        raise UserError(f"'{folder}' is not a folder written by mlx-audio-convert")
    return family


def load(weights_dir: str | Path) -> Any:
    """A ready model (MusicGen or StableAudio) from a converted folder; both have `generate` and
    `sample_rate`."""
    family = converted_family(weights_dir)
    if family == "musicgen":
        from .musicgen.generate import MusicGen

        return MusicGen.from_pretrained(weights_dir)
    from .stable_audio.generate import StableAudio

    return StableAudio.from_pretrained(weights_dir)
