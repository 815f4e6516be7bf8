"""MusicGen's memory: the weights a config describes and the peak of one request (checked before allocating).

The estimates are upper bounds of the big buffers (KV cache, cross-attention keys, logits and sampling
temporaries, the EnCodec activations at the audio rate), not exact counts; see mlx_audio_generate/memory.py
for why a request that would not fit must be refused instead of attempted.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..codecs.encodec import EncodecConfig
from ..memory import check_fits, nbytes, stored_itemsize, t5_params
from ..text.t5 import T5Config
from .delay import num_steps
from .model import DecoderConfig

# Bytes per audio sample per codec filter (num_filters) at the audio rate, measured on the CPU with
# mx.get_peak_memory (122 decoding, 105 encoding, for 4 to 64 filters: im2col buffers of the k=7 convs and
# the residual branches); the GPU convolutions hold fewer buffers at once (not measured: half is assumed).
_CODEC_BYTES_CPU = {"decode": 128, "encode": 112}
_HINT = "the batch (fewer prompts or a smaller --batch-size) or --seconds"


def _codec_bytes(kind: str) -> int:
    cpu = _CODEC_BYTES_CPU[kind]
    return cpu if mx.default_device().type == mx.cpu else cpu // 2


def weight_bytes(t5: T5Config, dec: DecoderConfig, codec: EncodecConfig, itemsize: float) -> int:
    """Bytes the weights of these configs take (parameter count x itemsize) plus the decoder's fp32
    sinusoidal table (built in float64 first)."""
    D, k, v = dec.hidden_size, dec.num_codebooks, dec.vocab_size
    attn = 4 * D * D * (2 if dec.cross_attention else 1)
    lm_params = k * (v + 1) * D + dec.num_hidden_layers * (attn + 2 * D * dec.ffn_dim) + k * v * D
    # EnCodec: the convolutions of every stage (both sides), the LSTMs and the codebooks
    codec_params, ch = 0, codec.num_filters
    for _ in codec.upsampling_ratios:
        hidden = max(ch // codec.compress, 1)
        res = codec.num_residual_layers * (ch * hidden * codec.residual_kernel_size + hidden * ch + ch * ch)
        codec_params += 2 * (res + ch * 2 * ch * 2 * max(codec.upsampling_ratios))
        ch *= 2
    codec_params += 2 * (
        ch * codec.hidden_size * codec.last_kernel_size + 8 * codec.num_lstm_layers * ch * ch
    )
    codec_params += codec.num_quantizers * codec.codebook_size * codec.hidden_size
    positions = nbytes(dec.max_position_embeddings, D, itemsize=12)
    return int((t5_params(t5) + lm_params) * itemsize) + 4 * codec_params + positions


def check_weights(config: dict[str, Any], t5: T5Config, dec: DecoderConfig, codec: EncodecConfig) -> None:
    """UserError if the weights these configs describe cannot fit (before the model is built)."""
    check_fits(
        weight_bytes(t5, dec, codec, stored_itemsize(config)),
        "this checkpoint's weights (as its config.json describes them)",
        "the model size: use a smaller or quantized model (or the config is corrupt)",
    )


def request_bytes(
    dec: DecoderConfig,
    codec: EncodecConfig,
    t5: T5Config,
    *,
    rows: int,
    guided: bool,
    window_frames: int,
    total_frames: int,
    text_tokens: int,
    prefix: int = 0,
    prompt_samples: int = 0,
    melody_samples: int = 0,
    itemsize: int = 4,
) -> int:
    """Peak bytes of one `generate` call: the largest phase (text encoding, one window of decoder steps, the
    EnCodec decode of the whole clip, encoding the audio prompt) plus the codes kept across phases."""
    r = 2 * rows if guided else rows  # classifier-free guidance doubles the decoder's batch
    D, k = dec.hidden_size, dec.num_codebooks
    length = prefix + 1 + window_frames + num_steps(window_frames, k, dec.audio_channels)
    kv = 2 * nbytes(dec.num_hidden_layers, 2, r, D, length, itemsize=itemsize)  # x2: a functional update
    cross = (
        nbytes(dec.num_hidden_layers, 2, r, text_tokens, D, itemsize=itemsize) if dec.cross_attention else 0
    )
    first = prefix + 1 + window_frames  # the prefill's positions (prompt and melody prefix included)
    prefill = nbytes(r, first, dec.ffn_dim + 4 * D, 3) + nbytes(r, dec.num_attention_heads, first, first, 2)
    step = nbytes(r, k, dec.vocab_size, 8) + nbytes(r, dec.ffn_dim + 4 * D, 4)
    lm = kv + cross + prefill + step
    text = nbytes(rows, text_tokens, t5.d_ff + 4 * t5.d_model + t5.num_heads * text_tokens, 2)
    samples = total_frames * codec.hop_length
    decode = nbytes(rows, samples, codec.num_filters, itemsize=_codec_bytes("decode"))
    decode += nbytes(rows, dec.audio_channels, samples, 3)  # the audio, its float32 cast, the numpy copy
    encode = nbytes(prompt_samples, codec.num_filters, itemsize=_codec_bytes("encode"))
    melody = nbytes(melody_samples, 8 * 4)  # the chroma STFT frames (float64, 4x overlapping)
    codes = nbytes(rows, k, total_frames, 4)
    return codes + max(lm, text, decode, encode, melody)


def check_request(**kw: Any) -> None:
    """UserError naming what to lower if `request_bytes(**kw)` would not fit in the free memory."""
    check_fits(request_bytes(**kw), "this request", _HINT)
