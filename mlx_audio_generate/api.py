"""The Python API: load a model once, generate many times.

>>> from mlx_audio_generate import load
>>> model = load("musicgen-small")          # a model name (downloaded + converted once) or a converted folder
>>> audio = model.generate("lofi piano", seconds=10, seed=0)[0]   # (channels, samples) float32
>>> model.sample_rate
"""

from __future__ import annotations

from pathlib import Path

from .converted import load_model, open_folder
from .family import AudioModel


def load(
    model: str | Path, dtype: str | None = None, trust_remote_code: bool = False, quiet: bool = True
) -> AudioModel:
    """A ready model of any family (`family.AudioModel`: `generate(...)`, `sample_rate`, `audio_channels`,
    `max_seconds`).

    `model`: a folder written by mlx-audio-convert, or a model name / Hugging Face repo id / reference
    checkpoint folder, fetched and converted once into the cache (`resolve.resolve`; `dtype` applies to
    that conversion)."""
    from .resolve import resolve

    conv = open_folder(resolve(str(model), dtype=dtype, trust_remote_code=trust_remote_code, quiet=quiet))
    return load_model(conv)
