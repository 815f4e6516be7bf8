"""Stable Audio Open text -> audio: load a converted folder once, generate many times.

model = StableAudio.from_pretrained("converted/stable-audio-open-small")
audio = model.generate("128 BPM tech house drum loop", seconds=8, seed=0)  # (batch, channels, samples)

One generation is stable-audio-tools' `generate_diffusion_cond` as its gradio app calls it: T5 + number
conditioning (seconds_start = 0, seconds_total = the requested seconds), initial noise over the model's whole
window, the sampler of the checkpoint's objective with classifier-free guidance, the VAE decode, and the
result cut to the requested length. Noise comes from an explicit MLX key (`seed`), not torch's generator.

Audio to audio (both start from a clip: a file, resampled to the model's rate, or a (channels, samples)
array at that rate; the reference's `prepare_audio` pads/crops it to the model's `sample_size` and sets its
channels; the VAE encodes it with the bottleneck's sampling noise):
- variations (`init_audio`): `generate_diffusion_cond(init_audio=..., init_noise_level=...)` of
  stable-audio-tools 0.0.19: the sampler starts from the encoded clip noised to `init_noise_level`, every
  sampler of both objectives. Its range: v (1.0) sigma in (0.3, 500] (the schedule's sigma_min, sigma_max);
  rectified flow (small) t in (0, 1] (1 = pure noise). Or `init_strength` s in (0, 1], mapped to the start of
  the default schedule: t = s (rectified flow), sigma = 0.3 * (500 / 0.3) ** s (v: the log-linear
  polyexponential schedule, so s is the fraction of its log-sigma range that is re-run).
- inpainting (`inpaint_audio`, `mask_start` / `mask_end` seconds): stable-audio-tools 0.0.16's masked
  sampling (see inpaint.py; v objective only), then the frames outside the mask are set to the clip's latents.

Seeds: `k0, k1 = split(key(seed))` give the initial and per-step noise (unchanged by audio-to-audio);
`split(key(seed), 4)[2:]` give the VAE encode noise and inpainting's per-step re-noising (threefry counters
distinct from the first split's, so all four streams are independent).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..audio import load_clip
from ..converted import Converted, load_weights, open_folder
from ..diffusion import inpaint
from ..diffusion import samplers as S
from ..diffusion.latents_io import given_latents, with_latents
from ..errors import UserError
from ..memory import stored_itemsize
from ..progress import OnStage, report_stage, step_reporter
from ..settings import by_name, check_prompts, check_seconds, check_settings, named, resolve_seed
from ..text.t5 import T5Tokenizer, load_tokenizer
from .conditioners import Conditioning
from .family import DEFAULTS, FAMILY, Defaults, settings
from .full_model import StableAudioModel
from .memory import check_request

Progress = Callable[[int, int], None]
# A file, or a (channels, samples) / (samples,) array at the model's sample rate.
AudioInput = str | Path | np.ndarray | mx.array


@dataclass(frozen=True)
class NoiseKeys:
    initial: mx.array  # the sampler's starting noise
    steps: mx.array  # stochastic samplers' per-step noise (S.gaussian_noise)
    vae: mx.array  # the VAE bottleneck's sampling noise when encoding init / inpaint audio
    mask: mx.array  # inpainting's per-step re-noising of the input (S.gaussian_noise)


def noise_keys(seed: int) -> NoiseKeys:
    """The four independent noise streams of one seed (see the module doc)."""
    root = mx.random.key(seed)
    k0, k1 = mx.random.split(root)
    k_vae, k_mask = mx.random.split(root, 4)[2:]
    return NoiseKeys(k0, k1, k_vae, k_mask)


def _rows_noise(keys: list[mx.array], steps: int) -> S.NoiseFn:
    """Per-step noise drawn row by row from each row's own key (S.gaussian_noise for one row)."""
    per_row = [mx.random.split(k, max(steps, 1)) for k in keys]
    return lambda i, shape: mx.stack([mx.random.normal(shape[1:], key=ks[i]) for ks in per_row])


def strength_to_noise_level(objective: str, strength: float) -> float:
    """init_strength s in (0, 1] -> the reference's init_noise_level (see the module doc)."""
    if S.objective_family(objective) == "rf":
        return float(strength)
    return S.V_SIGMA_MIN * (S.V_SIGMA_MAX / S.V_SIGMA_MIN) ** float(strength)


def _real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def resolve_init_noise_level(
    objective: str, init_noise_level: float | None, init_strength: float | None
) -> float:
    """Validate the variation amount for a model of `objective`; return the reference's init_noise_level.

    Needs only the objective (config.json's model_config), so a CLI can check it before loading weights."""
    rf = S.objective_family(objective) == "rf"
    if init_noise_level is not None and init_strength is not None:
        raise UserError(f"give {named('init_noise_level')} or {named('init_strength')}, not both")
    if init_strength is not None:
        if not _real(init_strength) or not 0 < init_strength <= 1:
            raise UserError(f"{named('init_strength')} must be in (0, 1], got {init_strength!r}")
        return strength_to_noise_level(objective, init_strength)
    lo, hi = (0.0, 1.0) if rf else (S.V_SIGMA_MIN, S.V_SIGMA_MAX)
    what = "t (rectified flow)" if rf else "sigma (v objective)"
    if init_noise_level is None:
        raise UserError(
            f"{named('init_audio')} needs {named('init_noise_level')}, a {what} in ({lo:g}, {hi:g}], "
            f"or {named('init_strength')} in (0, 1]"
        )
    if not _real(init_noise_level) or not lo < init_noise_level <= hi:
        raise UserError(
            f"{named('init_noise_level')} must be a {what} in ({lo:g}, {hi:g}] for this model, "
            f"got {init_noise_level!r}"
        )
    return float(init_noise_level)


class StableAudio:
    def __init__(self, model: StableAudioModel, tokenizer: T5Tokenizer, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.settings = settings(config)  # this checkpoint's (its objective's defaults and samplers)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> StableAudio:
        return cls.from_converted(open_folder(folder, FAMILY.name))

    @classmethod
    def from_converted(cls, conv: Converted) -> StableAudio:
        folder, config = conv.folder, conv.config
        for key in ("model_config", "t5"):
            if not isinstance(config.get(key), dict):
                raise UserError(f"'{folder}/config.json' lacks its '{key}' section; convert the model again")
        model = StableAudioModel(config["model_config"], config["t5"], stored_itemsize(config))
        load_weights(model, conv)
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
        self,
        prompts: list[str],
        seconds: float,
        steps: int,
        sampler: str,
        cfg: float,
        seed: int | list[int] | None,
    ) -> int:
        """Validate the request (against the settings schema); return its length in samples."""
        check_prompts(prompts)
        seconds = check_seconds(seconds, self.max_seconds)
        samples = round(seconds * self.sample_rate)
        if samples < 1:
            raise UserError(f"{named('seconds')} = {seconds:g} is shorter than one sample")
        schema = [s for s in self.settings if s.name in ("steps", "cfg_scale", "sampler")]
        check_settings(schema, {"steps": steps, "cfg_scale": cfg, "sampler": sampler})
        resolve_seed(seed, len(prompts))
        return samples

    # -- audio to audio -------------------------------------------------------------------------------------

    def load_audio(self, audio: AudioInput, what: str = "audio") -> np.ndarray:
        """The clip (channels, samples) float32 at the model's rate with the model's channel count (the
        reference's `set_audio_channels`: mono is repeated, extra channels dropped, a mono model averages)."""
        return load_clip(audio, what, self.sample_rate, self.audio_channels, self.model.sample_size)

    def prepare_audio(self, clip: np.ndarray) -> np.ndarray:
        """`prepare_audio`'s PadCrop: (1, channels, sample_size), zero-padded at the end or cropped."""
        out = np.zeros((1, clip.shape[0], self.model.sample_size), np.float32)
        n = min(clip.shape[1], self.model.sample_size)
        out[0, :, :n] = clip[:, :n]
        return out

    def encode_audio(self, audio: np.ndarray, noise: mx.array | None) -> mx.array:
        """VAE latents (1, latent_dim, frames) of prepared audio; `noise`: the bottleneck's sampling noise."""
        latents = self.model.vae.encode(mx.array(audio), noise=noise)
        if latents.shape[-1] != self.model.latent_frames:
            raise UserError(
                f"this model's sample_size {self.model.sample_size} is not a multiple of its VAE's "
                f"{self.model.vae.downsampling_ratio}x downsampling: audio to audio is not possible"
            )
        return latents

    def generate(
        self,
        prompt: str | list[str],
        seconds: float | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        sampler: str | None = None,
        negative_prompt: str | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        *,
        init_audio: AudioInput | None = None,
        init_noise_level: float | None = None,
        init_strength: float | None = None,
        inpaint_audio: AudioInput | None = None,
        mask_start: float | None = None,
        mask_end: float | None = None,
        mask_softness_left: float = 0.0,
        mask_softness_right: float = 0.0,
        marination: float = 0.0,
        on_stage: OnStage | None = None,
        seconds_total: float | None = None,
        latents: Any = None,
        return_latents: bool = False,
    ) -> np.ndarray:
        """Audio (batch, channels, round(seconds * sample_rate)) float32 for one prompt or a list of them.

        seconds None = the whole window (with init / inpaint audio: the clip's length, at most the window);
        steps / cfg_scale / sampler None = the checkpoint's defaults (`defaults`); an empty negative prompt
        means none (the reference app's rule); `progress(done, total)` is called after each step.

        init_audio: make a variation of this clip; init_noise_level (or init_strength) says how far from it
        (ranges in the module doc). inpaint_audio: regenerate [mask_start, mask_end) seconds of this clip and
        keep the rest; mask_softness_left / _right: Hann crossfades (seconds) inside the region's edges;
        marination in [0, 1]: the reference's early pinning of the region to the input (0 = off).

        on_stage: `on_stage(stage, done, total)` for each stage in order: "text" (T5 + conditioning, 0/1 and
        1/1), "generate" (0/steps, then after each sampler step) and "decode" (the VAE, 0/1 and 1/1: one
        piece); see progress.py.

        Python API only (diffusion/latents_io.py): seconds_total, the DiT's "seconds_total" conditioning
        (default: seconds; the result is still `seconds` long); latents, the initial noise (batch,
        io_channels, latent frames) instead of the seed's; return_latents: (audio, final latents), which the
        VAE decodes (then trimmed to `seconds`) into that audio.
        """
        if not isinstance(prompt, str | list | tuple):
            raise UserError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        d = self.defaults
        a2a = self._check_a2a(
            init_audio, init_noise_level, init_strength, inpaint_audio,
            (mask_start, mask_end, mask_softness_left, mask_softness_right, marination),
        )  # fmt: skip
        objective = self.model.objective
        level = None
        if init_audio is not None:
            level = resolve_init_noise_level(objective, init_noise_level, init_strength)
        what = "init_audio" if init_audio is not None else "inpaint_audio"
        clip = None if a2a is None else self.load_audio(a2a, what)
        clip_seconds = None if clip is None else clip.shape[1] / self.sample_rate
        seconds = (self.max_seconds if clip is None else clip_seconds) if seconds is None else seconds
        steps = d.steps if steps is None else steps
        cfg = d.cfg_scale if cfg_scale is None else cfg_scale
        sampler = sampler or d.sampler
        samples = self._check(prompts, seconds, steps, sampler, cfg, seed)
        cond_seconds = (
            seconds if seconds_total is None else check_seconds(seconds_total, None, "seconds_total")
        )
        negative_prompt = by_name(self.settings)["negative_prompt"].check(negative_prompt)
        steps, cfg = int(steps), float(cfg)
        dit = self.model.dit
        check_request(  # before anything is allocated: MLX cannot survive a failed allocation
            dit=dit.config,
            vae=self.model.vae.config,
            rows=len(prompts),
            cfg_pair=cfg != 1.0,
            sample_size=self.model.sample_size,
            latent_frames=self.model.latent_frames,
            text_tokens=self.model.text_max_length,
            audio_input=clip is not None,
        )
        if inpaint_audio is not None:
            inpaint.check_mask_args(
                mask_start, mask_end, mask_softness_left, mask_softness_right, marination,
                min(clip_seconds, seconds),
            )  # fmt: skip

        report_stage(on_stage, "text", 0, 1)
        cond = self.condition(prompts, cond_seconds)
        neg = self.condition([negative_prompt] * len(prompts), cond_seconds) if negative_prompt else None
        if on_stage is not None:  # the stage's real time (the same values as evaluated with the first step)
            conds = [c for c in (cond, neg) if c is not None]
            parts = [v for c in conds for v in (c.cross_attn_cond, c.cross_attn_mask, c.global_cond)]
            mx.eval([v for v in parts if v is not None])
        report_stage(on_stage, "text", 1, 1)
        dit_cond = dit.cfg_condition(
            cond.cross_attn_cond,
            cond.global_cond,
            cfg,
            negative_cross_attn_cond=None if neg is None else neg.cross_attn_cond,
            negative_cross_attn_mask=None if neg is None else neg.cross_attn_mask,
        )
        seed = resolve_seed(seed, len(prompts))
        shape = (len(prompts), dit.config.io_channels, self.model.latent_frames)
        extra: dict = {}
        if isinstance(seed, list | tuple):
            # One seed per row: every draw of row r comes from its own keys, so a row equals that prompt
            # generated alone with its seed (list of one == the int seed), whatever else the batch holds.
            rows = [noise_keys(int(s)) for s in seed]
            keys = rows[0]
            noise = mx.stack([mx.random.normal(shape[1:], key=r.initial) for r in rows])
            extra["noise_fn"] = _rows_noise([r.steps for r in rows], steps)
        else:
            rows, keys = None, noise_keys(seed)
            # The sampler state stays float32 whatever the DiT's dtype (the DiT casts its input itself).
            noise = mx.random.normal(shape, key=keys.initial)
        if latents is not None:
            noise = given_latents(latents, shape)
        init = mask = None
        if clip is not None:
            prepared = self.prepare_audio(clip)
            if rows is None or len({int(s) for s in seed}) == 1:
                # Encoded once and repeated over the batch, as the reference does.
                vae_noise = mx.random.normal((1, *shape[1:]), key=keys.vae)
                init = mx.broadcast_to(self.encode_audio(prepared, vae_noise), shape)
            else:
                init = mx.concatenate(
                    [self.encode_audio(prepared, mx.random.normal((1, *shape[1:]), key=r.vae)) for r in rows]
                )
            extra["init_data"] = init
        if level is not None:
            extra["sigma_max"] = level
        if inpaint_audio is not None:
            sr, ratio = self.sample_rate, self.model.vae.downsampling_ratio
            bounds = inpaint.frame_bounds(
                mask_start, mask_end, mask_softness_left, mask_softness_right, sr, ratio
            )
            mask = inpaint.build_mask(self.model.latent_frames, *bounds, marination=float(marination))
            extra["inpaint_mask"] = mask
            extra["inpaint_noise_fn"] = (
                S.gaussian_noise(keys.mask, steps)
                if rows is None
                else _rows_noise([r.mask for r in rows], steps)
            )
        report_stage(on_stage, "generate", 0, steps)
        report = step_reporter(progress, on_stage, steps)

        latents = S.sample(
            lambda x, t: dit.guided(x, t, dit_cond, cfg),
            noise,
            steps,
            objective=self.model.objective,
            sampler=sampler,
            dist_shift=self.model.dist_shift,
            key=keys.steps,
            callback=None if report is None else (lambda info: report(info.i + 1, info.steps)),
            **extra,
        )
        if mask is not None:
            latents = inpaint.keep_outside(latents, init, mask)
        report_stage(on_stage, "decode", 0, 1)
        audio = self.model.vae.decode(latents.astype(mx.float32))[..., :samples]
        audio = np.array(audio.astype(mx.float32))
        report_stage(on_stage, "decode", 1, 1)
        return with_latents(audio, latents, return_latents)

    def _check_a2a(
        self,
        init_audio: AudioInput | None,
        init_noise_level: float | None,
        init_strength: float | None,
        inpaint_audio: AudioInput | None,
        mask_args: tuple,
    ) -> AudioInput | None:
        """Cheap checks of how the audio-to-audio arguments combine (before any file is read)."""
        if init_audio is not None and inpaint_audio is not None:
            raise UserError(
                f"give {named('init_audio')} for a variation or {named('inpaint_audio')} for inpainting, "
                "not both"
            )
        levels = {"init_noise_level": init_noise_level, "init_strength": init_strength}
        if init_audio is None and any(v is not None for v in levels.values()):
            given = [k for k, v in levels.items() if v is not None]
            raise UserError(f"{named(*given)} need {named('init_audio')}")
        start, end, soft_l, soft_r, marination = mask_args
        masks = {"mask_start": start, "mask_end": end, "mask_softness_left": soft_l or None,
                 "mask_softness_right": soft_r or None, "marination": marination or None}  # fmt: skip
        if inpaint_audio is None and any(v is not None for v in masks.values()):
            # only the options given, by their flags (softness / marination are Python-API keywords only)
            given = [k for k, v in masks.items() if v is not None]
            raise UserError(f"{named(*given)} need {named('inpaint_audio')}")
        if inpaint_audio is not None:
            S.check_inpaint(self.model.objective)
        return init_audio if init_audio is not None else inpaint_audio
