"""Stable Audio Open text -> audio: load a converted folder once, generate many times.

model = StableAudio.from_pretrained("converted/stable-audio-open-small")
audio = model.generate("128 BPM tech house drum loop", seconds=8, seed=0)  # (batch, channels, samples)

One generation is stable-audio-tools' `generate_diffusion_cond` as its gradio app calls it: T5 + number
conditioning (seconds_start = 0, seconds_total = the requested seconds), initial noise over the model's whole
window, the sampler of the checkpoint's objective with classifier-free guidance, the VAE decode, and the
result cut to the requested length. Noise comes from an explicit MLX key (`seed`), not torch's generator.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..converted import load_weights, open_converted
from ..errors import UserError
from ..t5 import T5Tokenizer, load_tokenizer
from . import samplers as S
from .conditioners import Conditioning
from .pipeline import StableAudioModel

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Defaults:
    sampler: str
    steps: int
    cfg_scale: float


# Per objective, what stable-audio-tools' gradio app preselects (= the model cards for small and 1.0).
DEFAULTS = {
    "rf_denoiser": Defaults("pingpong", 8, 1.0),  # stable-audio-open-small (distilled)
    "v": Defaults("dpmpp-3m-sde", 100, 7.0),  # stable-audio-open-1.0 (sigma 0.3-500: samplers' defaults)
    "rectified_flow": Defaults("euler", 50, 7.0),
}


class StableAudio:
    def __init__(self, model: StableAudioModel, tokenizer: T5Tokenizer, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> StableAudio:
        folder, config = open_converted(folder, "stable_audio")
        for key in ("model_config", "t5"):
            if not isinstance(config.get(key), dict):
                raise UserError(f"'{folder}/config.json' lacks its '{key}' section; convert the model again")
        model = StableAudioModel(config["model_config"], config["t5"])
        load_weights(model, folder)
        # The VAE's output is the waveform itself: it decodes in float32 whatever the stored dtype
        # (bfloat16's 8-bit mantissa would put a ~-48 dB noise floor on the audio); it is ~10% of the model.
        model.vae.set_dtype(mx.float32)
        return cls(model, load_tokenizer(folder), config)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.model.audio_channels

    @property
    def max_seconds(self) -> float:
        return self.model.window_samples / self.sample_rate

    @property
    def defaults(self) -> Defaults:
        return DEFAULTS[self.model.objective]

    def encode_text(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        """T5 hidden states (B, max_length, d_model) and mask, padded/truncated like the reference."""
        ids, mask = self.tokenizer.encode(
            prompts, max_length=self.model.text_max_length, pad_to_max_length=True
        )
        ids, mask = mx.array(ids), mx.array(mask)
        return self.model.t5(ids, mask), mask

    def condition(self, prompts: list[str], seconds_total: float) -> Conditioning:
        """The DiT's inputs, as `model.get_conditioning_inputs(model.conditioner(...))` gives them."""
        n = len(prompts)
        numbers = {"seconds_start": [0.0] * n, "seconds_total": [float(seconds_total)] * n}
        return self.model.conditioner(self.encode_text(prompts), numbers)

    def _check(
        self, prompts: list[str], seconds: float, steps: int, sampler: str, cfg: float, seed: int | None
    ) -> int:
        """Validate the request; return its length in samples."""
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise UserError("prompt is empty; describe the audio you want")
        if not isinstance(seconds, numbers.Real) or not math.isfinite(seconds) or seconds <= 0:
            raise UserError(f"seconds must be a positive number, got {seconds}")
        if seconds > self.max_seconds:
            shown = math.floor(self.max_seconds * 1000) / 1000  # never round the limit up
            raise UserError(f"seconds must be at most {shown:g} for this model (its window), got {seconds:g}")
        samples = round(seconds * self.sample_rate)
        if samples < 1:
            raise UserError(f"seconds {seconds:g} is shorter than one sample")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
            raise UserError(f"steps must be a positive integer, got {steps}")
        S.check_sampler(self.model.objective, sampler)
        if not math.isfinite(cfg) or cfg < 0:
            raise UserError(f"cfg_scale must be a number >= 0, got {cfg}")
        if seed is not None and (not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64):
            raise UserError(f"seed must be an integer in [0, 2^64), got {seed}")
        return samples

    def generate(
        self,
        prompt: str | list[str],
        seconds: float | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Audio (batch, channels, round(seconds * sample_rate)) float32 for one prompt or a list of them.

        seconds None = the whole window; steps / cfg_scale / sampler None = the checkpoint's defaults
        (`defaults`); an empty negative prompt means none (the reference app's rule); `progress(done, total)`
        is called after each step.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        d = self.defaults
        seconds = self.max_seconds if seconds is None else seconds
        steps = d.steps if steps is None else steps
        cfg = float(d.cfg_scale if cfg_scale is None else cfg_scale)
        sampler = sampler or d.sampler
        samples = self._check(prompts, seconds, steps, sampler, cfg, seed)
        steps = int(steps)

        cond = self.condition(prompts, seconds)
        neg = self.condition([negative_prompt] * len(prompts), seconds) if negative_prompt else None
        dit = self.model.dit
        dit_cond = dit.cfg_condition(
            cond.cross_attn_cond,
            cond.global_cond,
            cfg,
            negative_cross_attn_cond=None if neg is None else neg.cross_attn_cond,
            negative_cross_attn_mask=None if neg is None else neg.cross_attn_mask,
        )
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**32))
        k0, k1 = mx.random.split(mx.random.key(seed))
        shape = (len(prompts), dit.config.io_channels, self.model.latent_frames)
        # The sampler state stays float32 whatever the DiT's dtype (the DiT casts its input itself).
        noise = mx.random.normal(shape, key=k0)
        callback = None if progress is None else (lambda info: progress(info.i + 1, info.steps))
        latents = S.sample(
            lambda x, t: dit.guided(x, t, dit_cond, cfg),
            noise,
            steps,
            objective=self.model.objective,
            sampler=sampler,
            dist_shift=self.model.dist_shift,
            key=k1,
            callback=callback,
        )
        audio = self.model.vae.decode(latents.astype(mx.float32))[..., :samples]
        return np.array(audio.astype(mx.float32))
