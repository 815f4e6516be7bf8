"""The whole MusicGen model as one MLX module tree, built from a transformers MusicGen config dict.

Parameter names are the keys of our converted `model.safetensors`:
`text_encoder.*` (T5), `lm.decoder.*` / `lm.enc_to_dec_proj.*` (LM), `audio_encoder.*` (EnCodec);
melody checkpoints add `lm.audio_enc_to_dec_proj.*` and have no cross-attention (melody.py).
"""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..codecs.encodec import Encodec, EncodecConfig, encodec_ignore_patterns
from ..errors import UserError
from ..memory import check_bounds
from ..text.t5 import T5Config, T5Encoder
from ..weights import Checkpoint
from .melody import MelodyLM
from .memory import check_weights
from .model import DecoderConfig, MusicgenLM

# The melody fields that size tensors (the released checkpoints: 12 chroma bins, 235 chroma frames).
MELODY_BOUNDS = {"num_chroma": (1, 1024), "chroma_length": (1, 65536)}


class MusicGenModel(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        for part in ("text_encoder", "decoder", "audio_encoder"):
            if not isinstance(config.get(part), dict):
                raise UserError(f"MusicGen config lacks its '{part}' section; not a MusicGen checkpoint")
        self.config = config
        # Every config is parsed (and its sizes bounded) and the weights they describe checked against the
        # free memory before any module is built: MLX cannot survive a failed allocation.
        t5_cfg = T5Config.from_dict(config["text_encoder"])
        dec_cfg = DecoderConfig.from_dict(config["decoder"])
        codec_cfg = EncodecConfig.from_dict(config["audio_encoder"])
        melody = config.get("model_type") == "musicgen_melody"
        if melody:
            check_bounds(config, MELODY_BOUNDS, "MusicGen-Melody")
        check_weights(config, t5_cfg, dec_cfg, codec_cfg)
        self.text_encoder = T5Encoder(t5_cfg)
        self.lm: MusicgenLM | MelodyLM
        if melody:
            self.lm = MelodyLM.from_config(config, t5_cfg.d_model)
        else:
            self.lm = MusicgenLM(dec_cfg, t5_cfg.d_model)
        self.audio_encoder = Encodec(codec_cfg)

    @property
    def is_melody(self) -> bool:
        return self.config.get("model_type") == "musicgen_melody"

    def sanitize(self, ckpt: Checkpoint) -> dict:
        """All tensors of a transformers MusicgenForConditionalGeneration (or MusicgenMelody...) checkpoint,
        strictly accounted."""
        weights = {}
        for k, v in self.text_encoder.sanitize(ckpt, "text_encoder.").items():
            weights[f"text_encoder.{k}"] = v
        for k, v in self.lm.sanitize(ckpt, "").items():
            weights[f"lm.{k}"] = v
        for k, v in self.audio_encoder.sanitize(ckpt, "audio_encoder.").items():
            weights[f"audio_encoder.{k}"] = v
        ckpt.finish(ignore=encodec_ignore_patterns("audio_encoder."))
        return weights
