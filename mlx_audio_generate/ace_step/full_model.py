"""The whole ACE-Step 1.5 model as one MLX module tree, built from the converted config's three sections:
`dit` (the DiT folder's config.json, an AceStepConfig), `text_encoder` (Qwen3-Embedding-0.6B's config.json)
and `vae` (the diffusers AutoencoderOobleck config.json).

Parameter names are the keys of our converted `model.safetensors`:
`text_encoder.*` (Qwen3Model, transformers' names), `conditioning.*` (the checkpoint's `encoder.*`,
`tokenizer.*`, `detokenizer.*` and `null_condition_emb`), `dit.*` (the checkpoint's `decoder.*`), `vae.*`
(the Oobleck VAE, encoder kept for audio inputs) and `silence_latent` (1, T, C): the shipped
silence_latent.pt (a (1, C, T) tensor, transposed on load as the reference's handler does): the source
latents of text2music and the timbre reference when there is none.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..codecs.oobleck import OobleckConfig, OobleckVAE
from ..errors import UserError
from ..text.qwen3 import Qwen3TextEncoder, qwen3_args, qwen3_ignore_patterns
from ..weights import Checkpoint
from .condition_blocks import AceConditionConfig
from .conditioning import AceConditioning
from .dit import AceDiTConfig, AceStepDiTModel

TIMBRE_FRAMES = 750  # infer_refer_latent: silence[:, :750] when an item has no reference audio


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key) if isinstance(config, dict) else None
    if not isinstance(value, dict):
        raise UserError(f"the ACE-Step config lacks its '{key}' section; convert the model again")
    return value


class AceStepModel(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        dit_cfg, te_cfg, vae_cfg = (_section(config, k) for k in ("dit", "text_encoder", "vae"))
        dit = AceDiTConfig.from_dict(dit_cfg)
        cond = AceConditionConfig.from_dict(dit_cfg)
        vae = OobleckConfig.from_diffusers(vae_cfg)
        self.text_encoder = Qwen3TextEncoder(qwen3_args(te_cfg))
        self.conditioning = AceConditioning(cond)
        self.dit = AceStepDiTModel(dit)
        self.vae = OobleckVAE(vae)
        silence = config.get("silence_frames", TIMBRE_FRAMES)
        if isinstance(silence, bool) or not isinstance(silence, int) or silence < TIMBRE_FRAMES:
            raise UserError(f"the ACE-Step config's silence_frames {silence!r} must be >= {TIMBRE_FRAMES}")
        self.silence_latent = mx.zeros((1, silence, dit.acoustic_dim))
        self.sample_rate = int(vae_cfg.get("sampling_rate", 48000))
        self._check_wiring(dit, cond, vae)

    def _check_wiring(self, dit: AceDiTConfig, cond: AceConditionConfig, vae: OobleckConfig) -> None:
        """Refuse parts that do not fit together (a clear error now, not a shape error later)."""
        hidden = self.text_encoder.args.hidden_size
        if cond.text_hidden_dim != hidden:
            raise UserError(
                f"the DiT's text_hidden_dim {cond.text_hidden_dim} != the text encoder's {hidden}"
            )
        if vae.latent_dim != dit.acoustic_dim or cond.timbre_hidden_dim != dit.acoustic_dim:
            raise UserError(
                f"the VAE's {vae.latent_dim} latent channels do not fit the DiT's audio_acoustic_hidden_dim "
                f"{dit.acoustic_dim} / timbre_hidden_dim {cond.timbre_hidden_dim}"
            )
        if self.sample_rate <= 0 or vae.downsampling_ratio <= 0:
            raise UserError("the VAE config's sampling_rate and downsampling ratios must be positive")

    # -- facts -----------------------------------------------------------------------------------------------

    @property
    def audio_channels(self) -> int:
        return self.vae.config.io_channels

    @property
    def downsampling_ratio(self) -> int:
        return self.vae.downsampling_ratio

    @property
    def is_turbo(self) -> bool:
        return self.dit.config.is_turbo

    # -- weights ---------------------------------------------------------------------------------------------

    def sanitize(
        self, dit_ckpt: Checkpoint, te_ckpt: Checkpoint, vae_ckpt: Checkpoint, silence: mx.array
    ) -> dict[str, mx.array]:
        """Every tensor of the three checkpoints, strictly accounted, and the silence latent (1, T, C)."""
        weights = {f"dit.{k}": v for k, v in self.dit.sanitize(dit_ckpt, "decoder.").items()}
        weights.update({f"conditioning.{k}": v for k, v in self.conditioning.sanitize(dit_ckpt).items()})
        dit_ckpt.finish()
        weights.update({f"text_encoder.{k}": v for k, v in self.text_encoder.sanitize(te_ckpt).items()})
        te_ckpt.finish(ignore=qwen3_ignore_patterns())
        weights.update({f"vae.{k}": v for k, v in self.vae.sanitize_diffusers(vae_ckpt).items()})
        vae_ckpt.finish()
        want = self.silence_latent.shape
        if tuple(silence.shape) != tuple(want):
            raise UserError(f"the silence latent is {tuple(silence.shape)}, the model needs {tuple(want)}")
        weights["silence_latent"] = silence
        return weights
