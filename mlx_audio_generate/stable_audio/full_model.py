"""The whole Stable Audio Open model as one MLX module tree, built from `model_config.json` + a T5 config.

Parameter names are the keys of our converted `model.safetensors`:
`t5.*` (T5 encoder), `conditioner.*` (T5 projection, number embedders), `dit.*` (diffusion transformer),
`vae.*` (Oobleck autoencoder, encoder kept for audio-to-audio).
"""

from __future__ import annotations

from typing import Any

import mlx.nn as nn

from ..codecs.oobleck import OobleckConfig, OobleckVAE
from ..diffusion.samplers import DistributionShift
from ..errors import UserError
from ..memory import check_bounds
from ..text.t5 import T5Config, T5Encoder, t5_ignore_patterns
from ..weights import Checkpoint
from .conditioners import ConditioningConfig, StableAudioConditioner
from .dit import DiTConfig, StableAudioDiT
from .memory import check_weights

# The numbers the generation API can supply (the reference app sets exactly these two).
NUMBER_IDS = ("seconds_start", "seconds_total")


# The window fields that size tensors (stable-audio-open-1.0: 2097152 samples at 44.1 kHz, ~47 s).
MODEL_BOUNDS = {"sample_size": (1, 1 << 26), "sample_rate": (1, 384_000)}


class StableAudioModel(nn.Module):
    def __init__(self, model_config: dict[str, Any], t5_config: dict[str, Any], itemsize: float = 2):
        """itemsize: bytes per stored parameter (converted.py metadata), for the weights' memory check."""
        super().__init__()
        if not isinstance(model_config, dict) or model_config.get("model_type") != "diffusion_cond":
            kind = model_config.get("model_type") if isinstance(model_config, dict) else None
            raise UserError(
                f"model_config.json describes a '{kind}' model; only text-to-audio 'diffusion_cond' "
                "(stable-audio-open-small / 1.0) is supported"
            )
        m = model_config.get("model") or {}
        for key in ("pretransform", "conditioning", "diffusion"):
            if not isinstance(m.get(key), dict):
                raise UserError(f"model_config.json lacks model.{key}: not a Stable Audio Open config")
        try:
            self.sample_size = int(model_config["sample_size"])
            self.sample_rate = int(model_config["sample_rate"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"model_config.json lacks a valid {e}") from None
        window = {"sample_size": self.sample_size, "sample_rate": self.sample_rate}
        check_bounds(window, MODEL_BOUNDS, "Stable Audio model_config")
        self.model_config = model_config
        # Every config is parsed (and its sizes bounded) and the weights they describe checked against the
        # free memory before any module is built: MLX cannot survive a failed allocation.
        t5_cfg = T5Config.from_dict(t5_config)
        # The T5 width comes from the T5 actually used, not from the reference's name table.
        cond_cfg = ConditioningConfig.from_dict(model_config, t5_dim=t5_cfg.d_model)
        dit_cfg = DiTConfig.from_dict(model_config)
        vae_cfg = OobleckConfig.from_dict(m["pretransform"])
        check_weights(itemsize, t5_cfg, cond_cfg, dit_cfg, vae_cfg)
        self.t5 = T5Encoder(t5_cfg)
        self.t5.compiled = None  # compiled on the GPU (its prompts are always padded to one length)
        self.conditioner = StableAudioConditioner(cond_cfg)
        self.dit = StableAudioDiT(dit_cfg)
        self.vae = OobleckVAE(vae_cfg)
        self._check_wiring(cond_cfg)
        opts = m["diffusion"].get("distribution_shift_options")
        try:
            self.dist_shift = DistributionShift(**opts) if opts else None
        except TypeError as e:
            raise UserError(f"distribution_shift_options {opts} are not understood: {e}") from None

    def _check_wiring(self, cond: ConditioningConfig) -> None:
        """Refuse configs whose parts do not fit together (clear error now instead of a shape error later)."""
        text_id = self.conditioner.text_id
        if text_id not in cond.cross_attention_cond_ids:
            raise UserError(f"the T5 conditioner '{text_id}' is not a cross-attention input of the DiT")
        used = set(cond.cross_attention_cond_ids + cond.global_cond_ids)
        unknown = sorted(cid for cid in used if cid in cond.numbers and cid not in NUMBER_IDS)
        if unknown:
            raise UserError(f"number conditioner(s) {', '.join(unknown)} cannot be set (only {NUMBER_IDS})")
        dit, vae = self.dit.config, self.vae.config
        if dit.io_channels != vae.latent_dim:
            raise UserError(f"DiT io_channels {dit.io_channels} != autoencoder latent_dim {vae.latent_dim}")
        if self.sample_size < vae.downsampling_ratio:
            raise UserError(f"sample_size {self.sample_size} is shorter than one latent frame")

    # -- facts the generation API needs ----------------------------------------------------------------------

    @property
    def objective(self) -> str:
        return self.dit.config.diffusion_objective

    @property
    def audio_channels(self) -> int:
        return self.vae.config.io_channels

    @property
    def latent_frames(self) -> int:
        return self.sample_size // self.vae.downsampling_ratio  # as generate_diffusion_cond (floor)

    @property
    def window_samples(self) -> int:
        """Audio samples the model produces per generation (its whole training window)."""
        return self.latent_frames * self.vae.downsampling_ratio

    @property
    def text_max_length(self) -> int:
        return self.conditioner.config.t5[self.conditioner.text_id].max_length

    # -- weights ---------------------------------------------------------------------------------------------

    def sanitize(self, ckpt: Checkpoint, t5_ckpt: Checkpoint) -> dict[str, Any]:
        """All tensors of a stable-audio-tools checkpoint and of a T5 checkpoint, strictly accounted."""
        self._check_t5_width(ckpt)
        weights = {}
        for name, part, prefix in (
            ("dit", self.dit, "model.model."),
            ("vae", self.vae, "pretransform.model."),
            ("conditioner", self.conditioner, "conditioner.conditioners."),
        ):
            for k, v in part.sanitize(ckpt, prefix).items():
                weights[f"{name}.{k}"] = v
        ckpt.finish()
        for k, v in self.t5.sanitize(t5_ckpt, "").items():
            weights[f"t5.{k}"] = v
        # A full T5 (google-t5/t5-base) carries a decoder and LM head that text conditioning never uses.
        t5_ckpt.finish(ignore=t5_ignore_patterns(""))
        return weights

    def _check_t5_width(self, ckpt: Checkpoint) -> None:
        """The checkpoint's T5 projection (or its absence) fixes the T5 width it was trained with."""
        cid = self.conditioner.text_id
        proj = f"conditioner.conditioners.{cid}.proj_out.weight"
        text = self.conditioner.config.t5[cid]
        expected = ckpt.tensors[proj].shape[1] if proj in ckpt else text.output_dim
        got = self.t5.config.d_model
        if got != expected:
            name = text.t5_model_name
            raise UserError(
                f"the T5 given is {got} wide but this model was trained with {name} ({expected} wide); "
                f"pass --t5 a {name} checkpoint (e.g. google-t5/t5-base)"
            )
