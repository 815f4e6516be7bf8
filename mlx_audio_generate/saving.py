"""`save`: the Python API's way to write what a model's `generate` returned.

>>> import mlx_audio_generate as mag
>>> model = mag.load("musicgen-small")
>>> audio = model.generate(["lofi piano", "jazz trio"], seconds=10, seed=0)   # (batch, channels, samples)
>>> mag.save(audio, "clip.flac", model.sample_rate)          # clip_1.flac, clip_2.flac
>>> mag.save(audio[0], "piano.wav", model.sample_rate, normalize=-14, metadata={"prompt": "lofi piano"})

It is the CLI's writer (audio.write_audio: atomic, tags, optional `<file>.json`) and its loudness
normalisation (audio.loudness_normalize), so a file saved here is the file the CLI would write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .audio import check_output_path, loudness_normalize, write_audio
from .errors import UserError


def save(
    audio: Any,
    path: str | Path,
    sample_rate: int,
    metadata: dict | None = None,
    normalize: float | None = None,
    sidecar: bool = False,
    overwrite: bool = False,
) -> Path | list[Path]:
    """Write one clip `(channels, samples)` (or `(samples,)`) to `path`, or a batch `(batch, channels,
    samples)` to `<stem>_1<ext>`, `<stem>_2<ext>`, ... (a batch of one: to `path`); returns the path(s).

    The format follows the extension (.wav float32, .flac 24-bit, .ogg Vorbis, .mp3 where libsndfile has
    it). `metadata`: a dict embedded in the file's tags (its "prompt" as the title), and with `sidecar`
    also written as `<file>.json`. `normalize`: a target loudness in LUFS (e.g. -14), true-peak safe at
    -1 dBTP; what was achieved is stored in the metadata under "loudness". An existing file is replaced only
    with `overwrite=True`; every path is checked before anything is written."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise UserError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if normalize is not None and (
        isinstance(normalize, bool) or not isinstance(normalize, int | float) or not -70 <= normalize <= 0
    ):
        raise UserError(f"normalize takes a loudness in LUFS between -70 and 0, got {normalize!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise UserError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        a = np.asarray(audio, dtype=np.float32)  # numpy or mlx arrays (mlx converts through the buffer)
    except (TypeError, ValueError):
        raise UserError(f"audio must be an array of samples, got {type(audio).__name__}") from None
    if a.ndim not in (1, 2, 3) or a.size == 0:
        raise UserError(
            f"audio must be (samples), (channels, samples) or (batch, channels, samples), got {a.shape}"
        )
    if a.ndim == 2 and a.shape[0] > a.shape[1]:
        raise UserError(f"audio has shape {a.shape}: expected (channels, samples), not the transpose")
    if not np.isfinite(a).all():
        raise UserError("audio contains NaN or infinite samples")
    clips = [a] if a.ndim < 3 else list(a)
    base = Path(path)
    if len(clips) == 1:
        paths = [base]
    else:
        paths = [base.with_name(f"{base.stem}_{i + 1}{base.suffix}") for i in range(len(clips))]
    sidecar = sidecar and (metadata is not None or normalize is not None)
    for p in paths:
        check_output_path(p, sidecar=sidecar)
        taken = [p, p.with_name(p.name + ".json")] if sidecar else [p]
        existing = [t for t in taken if t.exists()]
        if existing and not overwrite:
            raise UserError(f"'{existing[0]}' exists; pass overwrite=True to replace it")
    for p, clip in zip(paths, clips, strict=True):
        meta = dict(metadata) if metadata is not None else None
        if normalize is not None:
            clip, info = loudness_normalize(
                clip if clip.ndim == 2 else clip[None], sample_rate, float(normalize)
            )
            meta = {**(meta or {}), "loudness": info}
        write_audio(p, clip, sample_rate, metadata=meta, sidecar=sidecar)
    return paths[0] if a.ndim < 3 else paths
