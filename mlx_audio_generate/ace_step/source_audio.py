"""ACE-Step 1.5's audio inputs: the source of repaint / cover / lego / extract / complete and the timbre
reference, read, VAE-encoded and cut as the reference handler does (acestep/core/generation/handler).

- reading (`io_audio._normalize_audio_to_stereo_48k`): stereo (mono repeated, extra channels dropped), 48 kHz
  (ours resamples with the project's polyphase filter, the reference with torchaudio's), clamped to [-1, 1];
- encoding (`mlx_vae_encode_native._mlx_encode_single`, the reference's MLX path, as our decode follows its
  MLX decode): one piece up to 30 s, else windows of 30 s with 2 s of overlap on each side discarded. The
  reference samples the VAE posterior (`latent_dist.sample()`, fresh noise per window); ours takes its mean
  (deterministic) unless `noise` gives the draws (the parity tests inject the reference's). The audio is
  zero-padded to a whole number of 1920-sample frames first (the reference encodes the length as it is; the
  two agree whenever the length is a multiple of 1920 samples);
- the timbre reference (`process_reference_audio`): the clip repeated to at least 30 s, thirds of it, one
  10 s segment at a random offset inside each (front, middle, back), concatenated: 30 s -> 750 latents. The
  reference draws the offsets with Python's `random`; ours draws them from the row's seed
  (`numpy.random.default_rng(seed)`, three `integers` calls) so a seed gives the same segments every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..audio import load_clip
from ..errors import UserError

SAMPLE_RATE = 48000
ENCODE_CHUNK, ENCODE_OVERLAP = 30 * SAMPLE_RATE, 2 * SAMPLE_RATE
TIMBRE_SECONDS, SEGMENT_SECONDS = 30, 10
SILENT = 1e-6  # memory_utils.is_silence: every |sample| below this
AudioInput = str | Path | np.ndarray | mx.array
Noise = Callable[[tuple[int, ...]], mx.array | None]  # latent shape (1, C, T) -> a draw, or None: the mean


def load_source(audio: AudioInput, what: str, max_seconds: float, channels: int = 2) -> np.ndarray:
    """A file or a (channels, samples) array at 48 kHz -> float32 (channels, n) clamped to [-1, 1]; a
    one-line UserError for a clip that is longer than the model takes or silent."""
    if isinstance(audio, mx.array):
        audio = np.array(audio)
    limit = int(max_seconds * SAMPLE_RATE)
    clip = load_clip(audio, what, SAMPLE_RATE, channels, limit + 1)
    if clip.shape[1] > limit:
        raise UserError(f"{what} is longer than {max_seconds:g} s, the longest song this model makes")
    if np.all(np.abs(clip) < SILENT):
        raise UserError(f"{what} is silent")
    return np.clip(clip, -1.0, 1.0)


def encode_piece(vae, audio: np.ndarray, noise: Noise) -> mx.array:
    """One VAE encode of (C, n) audio -> (1, C_latent, n // ratio)."""
    x = mx.array(audio[None])
    return vae.encode(x, noise((1, vae.config.latent_dim, audio.shape[1] // vae.downsampling_ratio)))


def encode_audio(
    vae, audio: np.ndarray, hop: int, noise: Noise, chunk: int = ENCODE_CHUNK, overlap: int = ENCODE_OVERLAP
) -> mx.array:
    """(C, n) audio -> latents (T, C_latent), T = ceil(n / hop), tiled as the module doc says."""
    n = audio.shape[1]
    padded = math.ceil(n / hop) * hop
    if padded != n:
        audio = np.pad(audio, ((0, 0), (0, padded - n)))
    if padded <= chunk:
        return encode_piece(vae, audio, noise)[0].T
    stride = chunk - 2 * overlap
    parts = []
    for i in range(math.ceil(padded / stride)):
        core_start, core_end = i * stride, min(i * stride + stride, padded)
        win_start, win_end = max(0, core_start - overlap), min(padded, core_end + overlap)
        z = encode_piece(vae, audio[:, win_start:win_end], noise)
        factor = (win_end - win_start) / z.shape[-1]
        trim_start = int(round((core_start - win_start) / factor))
        trim_end = int(round((win_end - core_end) / factor))
        part = z[:, :, trim_start : z.shape[-1] - trim_end if trim_end > 0 else z.shape[-1]]
        mx.eval(part)
        parts.append(part)
    return mx.concatenate(parts, axis=-1)[0].T


def timbre_offsets(samples: int, seed: int) -> tuple[int, int, int]:
    """The three segment starts of a (repeated) clip of `samples`, drawn from `seed` (module doc)."""
    seg = SEGMENT_SECONDS * SAMPLE_RATE
    third = samples // 3
    rng = np.random.default_rng(seed)
    front = int(rng.integers(0, max(0, third - seg) + 1))
    middle = third + int(rng.integers(0, max(0, third - seg) + 1))
    back = 2 * third + int(rng.integers(0, max(0, (samples - 2 * third) - seg) + 1))
    return front, middle, back


def repeat_to_timbre(audio: np.ndarray) -> np.ndarray:
    """The clip repeated until it is at least 30 s (process_reference_audio)."""
    target = TIMBRE_SECONDS * SAMPLE_RATE
    if audio.shape[1] < target:
        audio = np.tile(audio, (1, math.ceil(target / audio.shape[1])))
    return audio


def timbre_clip(audio: np.ndarray, offsets: tuple[int, int, int]) -> np.ndarray:
    """The 30 s timbre clip: 10 s at each offset of the repeated clip, concatenated."""
    seg = SEGMENT_SECONDS * SAMPLE_RATE
    return np.concatenate([audio[:, o : o + seg] for o in offsets], axis=1)
