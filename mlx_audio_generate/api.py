"""The Python API: load a model once, generate many times.

>>> from mlx_audio_generate import load
>>> model = load("musicgen-small")          # a model name (downloaded + converted once) or a converted folder
>>> audio = model.generate("lofi piano", seconds=10, seed=0)[0]   # (channels, samples) float32
>>> model.sample_rate                                             # 32000 (MusicGen) / 44100 (Stable Audio)
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


def load(
    model: str | Path, dtype: str | None = None, trust_remote_code: bool = False, quiet: bool = True
) -> Any:
    """A ready model (MusicGen or StableAudio), both with `generate(...)` and `sample_rate`.

    `model`: a folder written by mlx-audio-convert, or a model name / Hugging Face repo id / reference
    checkpoint folder, fetched and converted once into the cache (`registry.resolve`; `dtype` applies to
    that conversion)."""
    from .registry import resolve

    weights_dir = resolve(str(model), dtype=dtype, trust_remote_code=trust_remote_code, quiet=quiet)
    family = converted_family(weights_dir)
    if family == "musicgen":
        from .musicgen.generate import MusicGen

        return MusicGen.from_pretrained(weights_dir)
    from .stable_audio.generate import StableAudio

    return StableAudio.from_pretrained(weights_dir)
