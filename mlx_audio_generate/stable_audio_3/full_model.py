"""The whole Stable Audio 3 model as one MLX module tree, built from `model_config.json` + the bundled T5Gemma
`config.json`.

Parameter names are the keys of our converted `model.safetensors`:
`conditioner.*` (the reference's MultiConditioner: `conditioners.prompt.encoder.*` is the T5Gemma encoder,
nested in its text conditioner as in the reference, `conditioners.prompt.padding_embedding`,
`conditioners.seconds_total.embedding.*`), `dit.*` (the diffusion transformer) and `same.*` (the SAME
autoencoder, encoder kept for audio-to-audio and inpainting).
"""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..codecs.same import IGNORED as SAME_IGNORED
from ..codecs.same import SAME, SAMEConfig
from ..diffusion import flow
from ..errors import UserError
from ..text.t5gemma import T5GemmaConfig, t5gemma_ignore_patterns
from ..weights import Checkpoint
from .conditioners import Conditioners, ConditioningConfig, NumberConditionerConfig
from .dit import SA3DiT, SA3DiTConfig

MODEL_TYPE = "diffusion_cond_inpaint"
# What `StableAudioModel.generate` can feed: the prompt, seconds_total and the inpainting pair.
NUMBER_IDS = ("seconds_total",)
LOCAL_IDS = ("inpaint_mask", "inpaint_masked_input")
# `_adapt_sample_size` reads the encoder's `chunk_size` with this default (SAME-L has none).
DEFAULT_CHUNK_SIZE = 32


def _section(d: dict, key: str, where: str) -> dict:
    value = d.get(key)
    if not isinstance(value, dict):
        raise UserError(f"model_config.json lacks {where}{key}: not a Stable Audio 3 config")
    return value


class SA3Model(nn.Module):
    def __init__(self, model_config: dict[str, Any], t5gemma_config: dict[str, Any]):
        super().__init__()
        if not isinstance(model_config, dict) or model_config.get("model_type") != MODEL_TYPE:
            kind = model_config.get("model_type") if isinstance(model_config, dict) else None
            raise UserError(
                f"model_config.json describes a '{kind}' model, not Stable Audio 3 ({MODEL_TYPE})"
            )
        m = _section(model_config, "model", "")
        for key in ("pretransform", "conditioning", "diffusion"):
            _section(m, key, "model.")
        try:
            self.sample_size = int(model_config["sample_size"])
            self.sample_rate = int(model_config["sample_rate"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"model_config.json lacks a valid {e}") from None
        if self.sample_rate <= 0 or self.sample_size <= 0:
            raise UserError("model_config.json sample_rate and sample_size must be positive")
        self.model_config = model_config
        cond_cfg = ConditioningConfig.from_dict(model_config)
        texts = cond_cfg.text
        if len(texts) != 1:
            raise UserError(f"Stable Audio 3 has one T5Gemma text conditioner; this config has {len(texts)}")
        self.text_id = texts[0].id
        self.conditioner = Conditioners(cond_cfg, {self.text_id: T5GemmaConfig.from_dict(t5gemma_config)})
        self.dit = SA3DiT(SA3DiTConfig.from_dict(model_config))
        self.same = SAME(SAMEConfig.from_dict(m["pretransform"]))
        self.shift = flow.shift_from_options(m["diffusion"].get("sampling_distribution_shift_options"))
        self.latent_align = self._latent_align(m["pretransform"])
        self._check_wiring(cond_cfg)

    @staticmethod
    def _latent_align(pretransform: dict) -> int:
        """`_adapt_sample_size`'s latent multiple: encoder chunk_size (default 32) // its first stride."""
        try:
            enc = pretransform["config"]["encoder"]["config"]
            align = int(enc.get("chunk_size", DEFAULT_CHUNK_SIZE)) // int(enc["strides"][0])
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            raise UserError("model_config.json's SAME encoder lacks chunk_size / strides") from None
        return max(align, 1)

    def _check_wiring(self, cond: ConditioningConfig) -> None:
        """Refuse configs whose parts do not fit together (a clear error now, not a shape error later)."""
        if self.text_id not in cond.cross_attention_ids:
            raise UserError(f"the T5Gemma conditioner '{self.text_id}' is not a cross-attention input")
        numbers = {c.id for c in cond.conditioners if isinstance(c, NumberConditionerConfig)}
        used = set(cond.cross_attention_ids + cond.global_cond_ids)
        unknown = sorted(used & numbers - set(NUMBER_IDS))
        if unknown:
            raise UserError(f"number conditioner(s) {', '.join(unknown)} cannot be set (only {NUMBER_IDS})")
        if sorted(cond.local_add_cond_ids) not in ([], sorted(LOCAL_IDS)):
            raise UserError(f"local conditioning {cond.local_add_cond_ids} is not {LOCAL_IDS}")
        dit, same = self.dit.config, self.same.config
        if dit.io_channels != same.latent_dim:
            raise UserError(f"DiT io_channels {dit.io_channels} != SAME latent_dim {same.latent_dim}")
        if cond.local_add_cond_ids and dit.local_add_cond_dim != 1 + same.latent_dim:
            raise UserError(f"DiT local_add_cond_dim {dit.local_add_cond_dim} != 1 + latent_dim")
        if self.sample_size < same.downsampling_ratio * self.latent_align:
            raise UserError(f"sample_size {self.sample_size} is shorter than one latent frame")

    # -- facts the generation API needs ----------------------------------------------------------------------

    @property
    def objective(self) -> str:
        return self.dit.config.diffusion_objective

    @property
    def audio_channels(self) -> int:
        return self.same.io_channels

    @property
    def downsampling_ratio(self) -> int:
        return self.same.downsampling_ratio

    @property
    def conditioning_config(self) -> ConditioningConfig:
        return self.conditioner.config

    @property
    def text_max_length(self) -> int:
        return next(c for c in self.conditioning_config.text if c.id == self.text_id).max_length

    @property
    def inpaints(self) -> bool:
        return bool(self.conditioning_config.local_add_cond_ids)

    # -- weights ---------------------------------------------------------------------------------------------

    def sanitize(self, ckpt: Checkpoint, t5_ckpt: Checkpoint) -> dict[str, Any]:
        """Every tensor of the SA3 `model.safetensors` and of the bundled T5Gemma checkpoint, strictly
        accounted (the T5Gemma's decoder half and LM head are ignored: only its encoder conditions)."""
        weights = {}
        for name, part, prefix in (
            ("dit", self.dit, "model.model."),
            ("same", self.same, "pretransform.model."),
            ("conditioner", self.conditioner, "conditioner.conditioners."),
        ):
            for k, v in part.sanitize(ckpt, prefix).items():
                weights[f"{name}.{k}"] = v
        # SAME's RoPE buffers (checked against ours by its sanitizer) and zero-size noise_scaling_factor
        ckpt.finish(ignore=list(SAME_IGNORED))
        for k, v in self.conditioner.sanitize_encoder(self.text_id, t5_ckpt).items():
            weights[f"conditioner.{k}"] = v
        t5_ckpt.finish(ignore=t5gemma_ignore_patterns())
        return weights
