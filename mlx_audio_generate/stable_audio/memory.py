"""Stable Audio's memory: the weights a config describes and the peak of one request (checked before
allocating: MLX cannot survive a failed allocation, see mlx_audio_generate/memory.py).

The estimates are upper bounds of the big buffers (the DiT's activations and attention scores over the
latent window, the sampler state, the VAE's activations at the audio rate), not exact counts.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..codecs.oobleck import CoderConfig, OobleckConfig
from ..memory import check_fits, nbytes, t5_params
from ..text.t5 import T5Config
from .conditioners import ConditioningConfig
from .dit import DiTConfig

# Bytes per audio sample per VAE channel (`channels`, the full-rate width), measured on the CPU with
# mx.get_peak_memory: 96 decoding and encoding (16 to 64 channels; the k=7 convolutions' im2col buffers and
# the Snake branches). The GPU convolutions hold fewer buffers at once (not measured: half is assumed).
_VAE_BYTES_CPU = 96
_HINT = "the batch (fewer prompts or a smaller --batch-size)"


def _vae_bytes() -> int:
    return _VAE_BYTES_CPU if mx.default_device().type == mx.cpu else _VAE_BYTES_CPU // 2


def _coder_params(c: CoderConfig) -> int:
    widths = c.widths
    total = c.io_channels * widths[0] * 7 + widths[-1] * c.latent_dim * 3
    for (a, b), stride in zip(zip(widths, widths[1:], strict=False), c.strides, strict=False):
        small = min(a, b)
        total += 3 * (small * small * 8) + a * b * 2 * stride  # three residual units, the strided conv
    return total


def weight_bytes(
    t5: T5Config, cond: ConditioningConfig, dit: DiTConfig, vae: OobleckConfig, itemsize: float
) -> int:
    """Bytes the weights of these configs take (parameter count x itemsize; the VAE runs in float32)."""
    e, inner = dit.embed_dim, int(dit.embed_dim * dit.ff_mult)
    layer = 4 * e * e + 2 * e * e + 2 * e * dit.cond_embed_dim + 3 * e * inner
    dit_params = dit.depth * layer + e * (dit.io_channels * dit.patch_size * 2 + dit.cond_token_dim)
    proj = sum(c.t5_dim * c.output_dim for c in cond.t5.values())
    text = t5_params(t5) + proj
    vae_params = _coder_params(vae.encoder) + _coder_params(vae.decoder)
    return int((text + dit_params) * itemsize) + 4 * vae_params


def check_weights(
    itemsize: float, t5: T5Config, cond: ConditioningConfig, dit: DiTConfig, vae: OobleckConfig
) -> None:
    """UserError if the weights these configs describe (`itemsize` bytes a parameter) cannot fit."""
    check_fits(
        weight_bytes(t5, cond, dit, vae, itemsize),
        "this checkpoint's weights (as its config.json describes them)",
        "the model size: use a smaller or quantized model (or the config is corrupt)",
    )


def request_bytes(
    dit: DiTConfig,
    vae: OobleckConfig,
    *,
    rows: int,
    cfg_pair: bool,
    sample_size: int,
    latent_frames: int,
    text_tokens: int,
    audio_input: bool = False,
    itemsize: int = 4,
) -> int:
    """Peak bytes of one `generate` call: the sampler state and output, plus the largest phase (one DiT
    step over the latent window, the VAE decode of every row, encoding the input clip)."""
    r = 2 * rows if cfg_pair else rows  # classifier-free guidance doubles the DiT's batch
    tokens = latent_frames // dit.patch_size + 1  # + the prepended global token
    e, heads = dit.embed_dim, dit.num_heads
    width = e * (8 + 3 * dit.ff_mult)  # q, k, v, out, residual, norms + the GLU's two inner halves
    step = nbytes(r, tokens, width, 4) + nbytes(r, heads, tokens, tokens + text_tokens, 4 * 2)
    step += nbytes(dit.depth, r, text_tokens, 2 * e, itemsize=itemsize)  # cross-attention keys / values
    state = nbytes(rows, dit.io_channels, latent_frames, 4 * 8)  # x, noise, denoised, the solver's history
    decode = nbytes(rows, sample_size, vae.decoder.channels, itemsize=_vae_bytes())
    encode = nbytes(sample_size, vae.encoder.channels, itemsize=_vae_bytes()) if audio_input else 0
    output = nbytes(rows, vae.io_channels, sample_size, 4 * 3)  # the audio, its float32 cast, numpy's copy
    return state + output + max(step, decode, encode)


def check_request(**kw: Any) -> None:
    """UserError naming what to lower if `request_bytes(**kw)` would not fit in the free memory."""
    check_fits(request_bytes(**kw), "this request", _HINT)
