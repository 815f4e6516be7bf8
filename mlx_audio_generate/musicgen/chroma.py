"""Melody chroma features: transformers' `MusicgenMelodyFeatureExtractor`, ported to numpy.

Per clip (mono, at the model's 32 kHz):
1. cut to `chunk_length` seconds (30 s: the feature extractor truncates; audiocraft's window);
2. clips shorter than n_fft are zero-padded to n_fft, split evenly (the extra sample goes right);
3. power spectrogram as torchaudio's `Spectrogram(n_fft, hop, power=2, normalized=True, center=True)`:
   reflect padding of n_fft // 2 on both sides, periodic Hann window, |STFT|^2 / sum(window^2);
4. the librosa-style chroma filter bank (transformers' `chroma_filter_bank`, tuning 0, cast to float32)
   sums the frequency bins into 12 pitch classes;
5. each frame is divided by its max (inf-norm, eps 1e-6) and replaced by a one-hot of its argmax.
Frames = 1 + samples // hop: 235 for 30 s. Silence gives bin 0 (argmax of zeros), like the reference.
We compute in float64, so the argmax can only differ from the float32 reference at near-ties.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class ChromaConfig:
    """The feature extractor's settings (preprocessor_config.json); defaults are transformers'."""

    sampling_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    num_chroma: int = 12
    chunk_length: int = 30

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChromaConfig:
        cfg = cls(
            sampling_rate=int(d.get("sampling_rate", cls.sampling_rate)),
            n_fft=int(d.get("n_fft", cls.n_fft)),
            hop_length=int(d.get("hop_length", cls.hop_length)),
            num_chroma=int(d.get("feature_size", d.get("num_chroma", cls.num_chroma))),
            chunk_length=int(d.get("chunk_length", cls.chunk_length)),
        )
        if min(cfg.sampling_rate, cfg.n_fft, cfg.hop_length, cfg.num_chroma, cfg.chunk_length) < 1:
            raise UserError(f"bad melody feature extractor settings: {cfg}")
        return cfg

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChromaConfig:
        """Read `preprocessor_config.json` when the checkpoint shipped one, else the reference defaults."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise UserError(f"{path} is not a valid feature extractor config ({e})") from None

    @property
    def max_samples(self) -> int:
        return self.chunk_length * self.sampling_rate


def chroma_filter_bank(num_frequency_bins: int, num_chroma: int, sampling_rate: int) -> np.ndarray:
    """(num_chroma, num_frequency_bins // 2 + 1) filters: transformers' `audio_utils.chroma_filter_bank` with
    its defaults (tuning 0, power 2, Gaussian weighting (5, 2), starting at C)."""
    frequencies = np.linspace(0, sampling_rate, num_frequency_bins, endpoint=False)[1:]
    octaves = np.log2(frequencies / (440.0 / 16))
    freq_bins = num_chroma * octaves
    # the 0 Hz bin: 1.5 octaves below bin 1
    freq_bins = np.concatenate(([freq_bins[0] - 1.5 * num_chroma], freq_bins))
    bins_width = np.concatenate((np.maximum(freq_bins[1:] - freq_bins[:-1], 1.0), [1]))
    filters = np.subtract.outer(freq_bins, np.arange(0, num_chroma, dtype="d")).T
    half = np.round(float(num_chroma) / 2)
    filters = np.remainder(filters + half + 10 * num_chroma, num_chroma) - half
    filters = np.exp(-0.5 * (2 * filters / np.tile(bins_width, (num_chroma, 1))) ** 2)
    filters = filters / np.sum(filters**2, axis=0, keepdims=True) ** 0.5
    filters *= np.tile(np.exp(-0.5 * (((freq_bins / num_chroma - 5.0) / 2.0) ** 2)), (num_chroma, 1))
    filters = np.roll(filters, -3 * (num_chroma // 12), axis=0)
    return np.ascontiguousarray(filters[:, : int(1 + num_frequency_bins / 2)])


def _power_spectrogram(audio: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(samples,) -> (frames, n_fft // 2 + 1): torchaudio's normalized power spectrogram, center=True."""
    half = n_fft // 2
    x = np.pad(audio, (half, half), mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann (torch default)
    spec = np.fft.rfft(x[idx] * window, axis=-1)
    return (spec.real**2 + spec.imag**2) / np.sum(window**2)


def normalized_chroma(audio: np.ndarray, cfg: ChromaConfig = ChromaConfig()) -> np.ndarray:
    """Mono audio (samples,) at cfg.sampling_rate -> (frames, num_chroma) chroma divided by each frame's max
    (before the one-hot): for checks against the reference's intermediate values."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise UserError(f"melody audio must be mono samples (n,), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserError("melody audio holds NaN or infinite samples")
    x = x[: cfg.max_samples].astype(np.float64)
    if len(x) < cfg.n_fft:
        pad = cfg.n_fft - len(x)
        x = np.pad(x, (pad // 2, pad // 2 + pad % 2))
    spec = _power_spectrogram(x, cfg.n_fft, cfg.hop_length)
    filters = chroma_filter_bank(cfg.n_fft, cfg.num_chroma, cfg.sampling_rate).astype(np.float32)
    raw = spec @ filters.astype(np.float64).T  # (frames, num_chroma)
    return raw / np.maximum(np.abs(raw).max(axis=-1, keepdims=True), 1e-6)


def chroma_features(audio: np.ndarray, cfg: ChromaConfig = ChromaConfig()) -> np.ndarray:
    """Mono audio (samples,) -> one-hot chroma (frames, num_chroma) float32, the feature extractor's
    `input_features[0]`."""
    norm = normalized_chroma(audio, cfg)
    out = np.zeros(norm.shape, dtype=np.float32)
    out[np.arange(len(norm)), norm.argmax(axis=-1)] = 1.0
    return out
