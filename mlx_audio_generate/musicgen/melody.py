"""MusicGen-Melody's language model: transformers' `MusicgenMelodyForConditionalGeneration` minus the codecs.

The melody decoder has NO cross-attention. Its conditioning is a prefix of embeddings placed before the
audio codes and read by the ordinary causal self-attention:

    prefix = [ audio_enc_to_dec_proj(chroma), tiled/cut to chroma_length ;
               enc_to_dec_proj(T5 states) * mask ]

(chroma first, then text: transformers' `torch.cat([audio_hidden_states, encoder_hidden_states], dim=1)`).
The positions count the prefix, so the BOS column sits at position chroma_length + T. Nothing is masked
inside the prefix: padded text states are zeros but still attended, exactly as transformers' generate runs
it (it consumes the text mask to zero the states and passes no attention mask to the decoder).

Guidance (scale > 1) appends an unconditional half: zero text states and the "null" chroma, a one-hot on
bin 0 for every frame (zeros_like(chroma) with [..., 0] = 1). Without a melody the conditional half uses
the null chroma too (one frame, tiled), which is how a melody checkpoint runs as a text-only model.

Parameter names (ours): decoder.* as MusicgenDecoder (no encoder_attn), enc_to_dec_proj.* when the T5 and
decoder widths differ, audio_enc_to_dec_proj.* when num_chroma differs from the decoder width.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from ..weights import Checkpoint
from .model import Conditioning, DecoderConfig, MusicgenDecoder, _check_shape


def null_chroma(batch: int, frames: int, num_chroma: int) -> mx.array:
    """The unconditional / absent melody: every frame one-hot on chroma bin 0 (transformers' choice)."""
    first = mx.arange(num_chroma)[None, None, :] == 0
    return mx.broadcast_to(first, (batch, frames, num_chroma)).astype(mx.float32)


class MelodyLM(nn.Module):
    has_melody = True

    def __init__(self, config: DecoderConfig, text_hidden_size: int, num_chroma: int, chroma_length: int):
        super().__init__()
        if config.cross_attention:
            raise UserError("MusicGen-Melody needs a musicgen_melody_decoder config (no cross-attention)")
        if num_chroma < 1 or chroma_length < 1:
            raise UserError(f"bad melody config: num_chroma={num_chroma}, chroma_length={chroma_length}")
        self.config = config
        self.num_chroma = num_chroma
        self.chroma_length = chroma_length
        self.decoder = MusicgenDecoder(config)
        d = config.hidden_size
        # transformers creates each projection only when the widths differ.
        self.enc_to_dec_proj = nn.Linear(text_hidden_size, d) if text_hidden_size != d else None
        self.audio_enc_to_dec_proj = nn.Linear(num_chroma, d) if num_chroma != d else None

    @classmethod
    def from_config(cls, config: dict[str, Any], text_hidden_size: int) -> MelodyLM:
        return cls(
            DecoderConfig.from_dict(config["decoder"]),
            text_hidden_size,
            int(config.get("num_chroma", 12)),
            int(config.get("chroma_length", 235)),
        )

    def project_chroma(self, chroma: mx.array) -> mx.array:
        """(B, F, num_chroma) -> (B, chroma_length, D): projected, then repeated ceil(L / F) times when
        shorter and cut to chroma_length (transformers projects first, then tiles)."""
        x = chroma.astype(mx.float32)
        if self.audio_enc_to_dec_proj is not None:
            x = self.audio_enc_to_dec_proj(x.astype(self.audio_enc_to_dec_proj.weight.dtype))
        frames = x.shape[1]
        if frames < self.chroma_length:
            x = mx.tile(x, (1, math.ceil(self.chroma_length / frames), 1))
        return x[:, : self.chroma_length]

    def conditioning(
        self, text_states: mx.array, text_mask: mx.array | None, guided: bool, chroma: mx.array | None = None
    ) -> Conditioning:
        """T5 states (B, T, Dt), their mask (B, T) and optional chroma (B or 1, F, num_chroma) -> the prefix
        (B or 2B, chroma_length + T, D)."""
        b = text_states.shape[0]
        text = text_states
        if self.enc_to_dec_proj is not None:
            text = self.enc_to_dec_proj(text.astype(self.enc_to_dec_proj.weight.dtype))
        if guided:  # melody order: project, then append the zero half, then apply the mask
            text = mx.concatenate([text, mx.zeros_like(text)], axis=0)
            if text_mask is not None:
                text_mask = mx.concatenate([text_mask, mx.zeros_like(text_mask)], axis=0)
        if text_mask is not None:
            text = text * text_mask[..., None].astype(text.dtype)

        if chroma is None:
            audio = null_chroma(b, 1, self.num_chroma)
            null = audio
        else:
            if chroma.ndim != 3 or chroma.shape[2] != self.num_chroma or chroma.shape[0] not in (1, b):
                raise UserError(
                    f"chroma must be shaped (1 or {b}, frames, {self.num_chroma}), got {tuple(chroma.shape)}"
                )
            if chroma.shape[1] < 1:
                raise UserError("the melody has no chroma frame")
            audio = mx.broadcast_to(chroma, (b, *chroma.shape[1:])).astype(mx.float32)
            null = null_chroma(b, chroma.shape[1], self.num_chroma)
        if guided:
            audio = mx.concatenate([audio, null], axis=0)
        audio = self.project_chroma(audio)
        dtype = self.decoder.layer_norm.weight.dtype
        prefix = mx.concatenate([audio.astype(dtype), text.astype(dtype)], axis=1)
        return Conditioning(prefix=prefix)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Tensors `decoder.*`, `enc_to_dec_proj.*`, `audio_enc_to_dec_proj.*` of a transformers
        MusicgenMelodyForConditionalGeneration checkpoint, named as this module's parameters."""
        out = {f"decoder.{k}": v for k, v in self.decoder.sanitize(ckpt, f"{prefix}decoder.").items()}
        for name in ("enc_to_dec_proj", "audio_enc_to_dec_proj"):
            module = getattr(self, name)
            if module is None:
                if f"{prefix}{name}.weight" in ckpt:
                    raise UserError(
                        f"checkpoint has {name} but the config implies equal widths (no projection)"
                    )
                continue
            for p in ("weight", "bias"):
                out[f"{name}.{p}"] = ckpt.take(f"{prefix}{name}.{p}")
            _check_shape(out[f"{name}.weight"], tuple(module.weight.shape), f"{prefix}{name}.weight")
        return out
