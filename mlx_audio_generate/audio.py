"""Audio file I/O shared by both model families.

Writes go to a temporary file beside the target and are renamed into place, so an interrupted run never
leaves a half-written file. Reading resamples with a band-limited polyphase filter when needed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import UserError
from .weights import atomic_write

FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".ogg": ("OGG", "VORBIS")}


def check_output_path(path: str | Path) -> Path:
    """Validate an output path before any expensive work, so a bad path fails in a second, not after a run."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output '{path}' is a directory; give a file name such as {path / 'out.wav'}")
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"output '{path}' has an unsupported extension; use one of {', '.join(FORMATS)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder '{parent}' is not writable; choose another --output")
    return path


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write `audio` (channels × samples, float) atomically; the format follows the extension."""
    import soundfile as sf

    path = check_output_path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    fmt, subtype = FORMATS[path.suffix.lower()]
    if fmt != "WAV":
        audio = np.clip(audio, -1.0, 1.0)  # integer/lossy formats cannot hold values beyond full scale

    def write(tmp: str) -> None:
        sf.write(tmp, audio.T, sample_rate, format=fmt, subtype=subtype)

    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"cannot write '{path}': {e.strerror or e}") from None
    return path


def read_audio(path: str | Path, sample_rate: int | None = None, channels: int | None = None) -> np.ndarray:
    """Read an audio file as float32 (channels × samples), optionally resampled and up/down-mixed."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file '{path}' does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise UserError(f"cannot read audio file '{path}': {e}") from None
    audio = data.T
    if audio.shape[1] == 0:
        raise UserError(f"audio file '{path}' is empty")
    if channels is not None and audio.shape[0] != channels:
        if channels == 1:
            audio = audio.mean(axis=0, keepdims=True)
        elif audio.shape[0] == 1:
            audio = np.repeat(audio, channels, axis=0)
        else:
            raise UserError(f"'{path}' has {audio.shape[0]} channels; expected 1, 2 or {channels}")
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    return audio


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy), channels × samples."""
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, sr_out // g, sr_in // g, axis=-1).astype(np.float32)
