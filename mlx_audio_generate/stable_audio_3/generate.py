"""Stable Audio 3 text -> audio: load a converted folder once, generate many times.

model = StableAudio3.from_pretrained("converted/stable-audio-3-small-music")
audio = model.generate("lofi house loop", seconds=10, seed=0)  # (batch, 2, samples) float32

One generation is the reference's `StableAudioModel.generate` (stable_audio_3/model.py) step by step:
1. length: `_adapt_sample_size`: int((seconds + headroom) * sr) rounded up to the downsampling ratio, then to
   `ratio * (chunk_size // stride)` (2 latents for SAME), capped at `sample_size`; latents = that // ratio.
   Variable length follows the reference: `headroom_seconds` (its `duration_padding_sec`, default 6) of extra
   latents the model fills with its own ending, a padding mask over the latents past
   ceil(int(seconds * sr) / ratio) + int(headroom * sr / ratio) (at most the alignment's one or two latents,
   or none when capped), the decoded audio zeroed there, and the result cut to the requested length. The
   padding mask acts as in the reference without flash-attn varlen (CPU / MPS): the padded latents' values
   are zeroed in self-attention, their keys stay in the softmax (its README §2.4: with flash-attn they are
   left out; only those alignment latents differ). `headroom_seconds=0` is the reference with
   duration_padding_sec=0: the exact length of the official MLX runtime and diffusers (latents =
   ceil(seconds * sr / ratio) rounded up to even), the rounding latent, if any, under the padding mask.
2. conditioning: the T5Gemma prompt tokens + the seconds_total token as cross-attention, seconds_total as the
   global condition; with cfg_scale != 1 the unconditional half is zeros or the negative prompt's tokens.
3. inpainting / continuation (`inpaint_audio` + `inpaint_regions`): the local add conditioning = concat(mask,
   latents * mask), mask 1 keep / 0 regenerate over the regions, 0 after seconds_total, taken to the latent
   frames by nearest interpolation (regions.py); without it the DiT gets the all-zero local condition.
   Continuation is a region from the clip's end to `seconds` (END left out). The kept part is *conditioning*
   only, as in the reference (no paste-back).
4. audio-to-audio (`init_audio`, `init_noise_level` t in (0, 1], default 0.9): the clip's SAME latents mixed
   `init * (1 - t) + noise * t` and sampled on the schedule from t.
5. noise, schedule and sampler: unit noise (batch, latent_dim, latents); flow.py's schedule (the config's
   `sampling_distribution_shift_options`, else LogSNR -6.2..2 without length dependence) and sampler
   (ping-pong for rf_denoiser, Euler for rectified_flow; rk4 / dpmpp too); CFG with APG (SA3DiT.guided).
   The reference's rk4 receives generate()'s per-row schedule, which its loop cannot iterate (it returns the
   noise unchanged); ours runs rk4 on the same schedule values (tested against sample_rk4 on one schedule).
6. decode: the SAME decoder (chunked, 128 latents with 32 overlap, when the config's `pretransform.chunked`;
   else the whole decode, computed in exact tiles of 128 latents: codecs/same_tiles.py), without the
   reference decoder's random `mask_noise` (0.01 * randn added to its new tokens at inference: a codec here
   does not draw hidden noise; same.py), in `same_dtype` (module doc below); x padding mask, clamp(-1, 1),
   cut to round(seconds * sr) samples. Piece by piece: memory is bounded by one tile / window, and
   `stream=True` hands each piece over as it is decoded (the concatenation is the one-shot result).

Memory. Weights are read lazily (MLX loads safetensors on first use): text-to-audio never reads the SAME
encoder (only init / inpaint audio does). `low_memory=True` (the CLI sets it for a run of one generate call)
also lets go of what a call no longer needs: the T5Gemma conditioner once the conditioning is computed, the
DiT once the sampling is done; their parameters are re-bound to lazy reads of model.safetensors, so a next
call reads them again from disk (slower, same numbers). The server and the Python API keep them by default.

SAME precision (`same_dtype`): float32 by default (the parity default), float16 on an MLX-CUDA GPU, as the
reference decodes there (its `from_pretrained` runs the whole model in fp16 with CUDA, fp32 elsewhere:
latents cast to the pretransform's dtype, decoded, then `.to(float32)`); "float16" / "bfloat16" / "float32"
choose (tests/stable_audio_3/test_same_half.py checks fp16 and bf16 against the reference in the same
precision).

Seeds: `k0, k1 = split(key(seed))` give the initial and per-step (ping-pong) noise; a list of seeds has one
per prompt and row r draws from its own keys only, so a row equals that prompt generated alone with its seed.
Torch's RNG is not reproduced: the parity tests inject the reference's draws through `draw_noise`.

LoRA: the reference patches the linears of `model.model` (our `self.model.dit`) and `model.conditioner`
(`self.model.conditioner`, T5Gemma included); a LoRA loader (stable_audio_3/lora.py) applies to those
modules of `StableAudio3.model` before `generate`, which needs no change for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..audio import load_clip
from ..codecs.same_tiles import TILE, decode_tiles, decode_windows
from ..converted import Converted, load_weights, open_folder
from ..devices import on_cuda
from ..diffusion import flow
from ..diffusion import samplers as S
from ..diffusion.latents_io import given_latents, with_latents
from ..errors import UserError
from ..progress import OnStage, report_stage, step_reporter
from ..settings import check_prompts, check_seconds, check_settings, named, resolve_seed
from ..weights import load_safetensors
from .conditioners import TextTokenizers, conditioning_inputs
from .family import DEFAULTS, FAMILY, INIT_NOISE_LEVEL, Defaults, settings
from .full_model import SA3Model
from .lora import apply_loras, parse_loras
from .regions import check_regions, nearest, parse_regions, sample_mask

Progress = Callable[[int, int], None]
AudioInput = str | Path | np.ndarray | mx.array  # a file, or (channels, samples) at the model's rate
HEADROOM_SECONDS = 6.0  # StableAudioModel.generate's duration_padding_sec
# (initial noise (B, C, L), per-step noise function) for a generation; see `draw_noise`
NoiseDraw = tuple[mx.array, S.NoiseFn]
SAME_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def same_dtype_for(name: str | None) -> mx.Dtype:
    """The SAME decoder's dtype: `name`, or None = float16 on an MLX-CUDA GPU (the reference's CUDA
    default), float32 elsewhere (module doc)."""
    if name is None:
        return mx.float16 if on_cuda() else mx.float32
    if name not in SAME_DTYPES:
        raise UserError(f"same_dtype must be one of {', '.join(SAME_DTYPES)}, not {name!r}")
    return SAME_DTYPES[name]


def _row_keys(seed: int) -> tuple[mx.array, mx.array]:
    k0, k1 = mx.random.split(mx.random.key(seed))
    return k0, k1


class StableAudio3:
    def __init__(
        self,
        model: SA3Model,
        tokenizers: TextTokenizers,
        config: dict,
        *,
        weights_file: Path | None = None,
        low_memory: bool = False,
    ):
        self.model = model
        self.tokenizers = tokenizers
        self.config = config
        self.settings = settings(config)  # this checkpoint's (its objective's defaults)
        # model.safetensors, where released parts are read back from (None: a model built in memory,
        # which low_memory then leaves resident)
        self.weights_file = weights_file
        self.low_memory = low_memory
        self.decode_tile = TILE  # latents per exact decode tile: memory and streaming grain, not the numbers

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, low_memory: bool = False, same_dtype: str | None = None
    ) -> StableAudio3:
        return cls.from_converted(
            open_folder(folder, FAMILY.name), low_memory=low_memory, same_dtype=same_dtype
        )

    @classmethod
    def from_converted(
        cls, conv: Converted, *, low_memory: bool = False, same_dtype: str | None = None
    ) -> StableAudio3:
        folder, config = conv.folder, conv.config
        for key in ("model_config", "t5gemma"):
            if not isinstance(config.get(key), dict):
                raise UserError(f"'{folder}/config.json' lacks its '{key}' section; convert the model again")
        model = SA3Model(config["model_config"], config["t5gemma"])
        load_weights(model, conv)
        # SAME's output is the waveform itself: float32 whatever the stored dtype, unless asked (module doc)
        model.same.set_dtype(same_dtype_for(same_dtype))
        tokenizers = TextTokenizers(model.conditioning_config, {model.text_id: folder})
        return cls(
            model, tokenizers, config, weights_file=folder / "model.safetensors", low_memory=low_memory
        )

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.model.audio_channels

    @property
    def max_seconds(self) -> float:
        return self.model.sample_size / self.sample_rate

    @property
    def defaults(self) -> Defaults:
        return DEFAULTS[self.model.objective]

    # -- lengths ---------------------------------------------------------------------------------------------

    def sample_size(self, seconds: float, headroom: float) -> int:
        """`_adapt_sample_size`: the audio samples generated for `seconds` + headroom (module doc)."""
        ratio = self.model.downsampling_ratio
        target = int((seconds + headroom) * self.sample_rate)
        target = -(-target // ratio) * ratio
        align = ratio * self.model.latent_align
        target = -(-target // align) * align
        return min(target, self.model.sample_size)

    def effective_latents(self, seconds: float) -> int:
        """`compute_effective_seq_len_from_conditioning`: ceil(int(seconds * sr) / ratio)."""
        return math.ceil(int(seconds * self.sample_rate) / self.model.downsampling_ratio)

    def padding_mask(self, seconds: float, headroom: float, latents: int) -> np.ndarray:
        """sample_diffusion's mask (latents,) bool: the first effective + int(headroom * sr / ratio) valid."""
        extra = int(headroom * self.sample_rate / self.model.downsampling_ratio)
        valid = min(self.effective_latents(seconds) + extra, latents)
        return np.arange(latents) < valid

    # -- conditioning ----------------------------------------------------------------------------------------

    def condition(self, prompts: list[str], seconds: float, local: dict[str, mx.array] | None = None) -> dict:
        """`get_conditioning_inputs(conditioner([{prompt, seconds_total}, ...]))`: cross_attn_cond,
        cross_attn_mask, global_cond (local_add_cond when `local` holds the inpainting pair)."""
        m = self.model
        tensors = m.conditioner(
            {m.text_id: self.tokenizers(m.text_id, prompts), "seconds_total": [float(seconds)] * len(prompts)}
        )
        cfg = m.conditioning_config
        if local is None:  # no inpainting: the DiT takes the all-zero local condition as None
            cfg = replace(cfg, local_add_cond_ids=())
        return conditioning_inputs(cfg, {**tensors, **(local or {})})

    # -- audio inputs ----------------------------------------------------------------------------------------

    def load_audio(self, audio: AudioInput, what: str) -> np.ndarray:
        """The clip (channels, samples) float32 at the model's rate with the model's channels (the reference's
        `set_audio_channels`: mono repeated, extra channels dropped, a mono model averages)."""
        return load_clip(audio, what, self.sample_rate, self.audio_channels, self.model.sample_size)

    def encode_audio(self, clip: np.ndarray, n_samples: int) -> mx.array:
        """`_encode_audio_input`: the clip zero-padded / cut to `n_samples` (PadCrop), SAME latents
        (1, latent_dim, n_samples // ratio); chunked when the config's pretransform is."""
        audio = np.zeros((1, clip.shape[0], n_samples), np.float32)
        n = min(clip.shape[1], n_samples)
        audio[0, :, :n] = clip[:, :n]
        same = self.model.same
        x = mx.array(audio)
        return same.encode_chunked(x) if same.config.chunked else same.encode(x)

    @property
    def same_dtype(self) -> mx.Dtype:
        return self.model.same.decoder_proj.weight.dtype

    def decode_pieces(self, latents: mx.array) -> Iterator[mx.array]:
        """The SAME decode as consecutive float32 pieces, each evaluated before the next (module doc, 6.)."""
        same = self.model.same
        z = latents.astype(self.same_dtype)  # the reference: latents cast to the pretransform's dtype
        pieces = decode_windows(same, z) if same.config.chunked else decode_tiles(same, z, self.decode_tile)
        for piece in pieces:
            yield piece.astype(mx.float32)

    def decode(self, latents: mx.array) -> mx.array:
        return mx.concatenate(list(self.decode_pieces(latents)), axis=-1)

    def release(self, part: str) -> None:
        """Let go of a part's weights ("text": the T5Gemma conditioner, "dit"): its parameters are re-bound to
        lazy reads of model.safetensors, so they are read again when next used (module doc, Memory)."""
        if self.weights_file is None:
            return
        prefix = {"text": f"conditioner.conditioners.{self.model.text_id}.", "dit": "dit."}[part]
        fresh = [(k, v) for k, v in load_safetensors(self.weights_file).items() if k.startswith(prefix)]
        self.model.load_weights(fresh, strict=False)
        mx.clear_cache()

    # -- noise -----------------------------------------------------------------------------------------------

    def draw_noise(self, seed: int | list[int], shape: tuple[int, int, int], steps: int) -> NoiseDraw:
        """The initial noise and ping-pong's per-step noise (see the module doc); the tests replace this to
        feed the reference's torch draws."""
        if isinstance(seed, list | tuple):
            keys = [_row_keys(int(s)) for s in seed]
            noise = mx.stack([mx.random.normal(shape[1:], key=k0) for k0, _ in keys])
            per_row = [mx.random.split(k1, max(steps, 1)) for _, k1 in keys]

            def rows(i: int, shp: tuple[int, ...]) -> mx.array:
                return mx.stack([mx.random.normal(shp[1:], key=ks[i]) for ks in per_row])

            return noise, rows
        k0, k1 = _row_keys(seed)
        return mx.random.normal(shape, key=k0), S.gaussian_noise(k1, steps)

    # -- generation ------------------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[str],
        seconds: float | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        *,
        on_stage: OnStage | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        apg_scale: float | None = None,
        sampler: str | None = None,
        negative_prompt: str | None = None,
        init_audio: AudioInput | None = None,
        init_noise_level: float | None = None,
        inpaint_audio: AudioInput | None = None,
        inpaint_regions: str | Sequence[Sequence[float | None]] | None = None,
        lora: str | Sequence[Any] | None = None,
        headroom_seconds: float = HEADROOM_SECONDS,
        seconds_total: float | None = None,
        latents: Any = None,
        return_latents: bool = False,
        stream: bool = False,
    ) -> np.ndarray | Iterator[np.ndarray]:
        """Audio (batch, channels, round(seconds * sample_rate)) float32 for one prompt or a list of them.

        seconds None = the whole window (with init / inpaint audio: the clip's length, at most the window);
        steps / cfg_scale / sampler None = the checkpoint's defaults (`defaults`); apg_scale None = 1; an
        empty negative prompt means none. init_audio: a variation of this clip, init_noise_level t in (0, 1]
        (default 0.9). inpaint_audio + inpaint_regions ("START:END,..." seconds or [(start, end), ...], END
        None = to the end): regenerate those regions, keep the rest (continuation: a region past the clip's
        end). lora: adapter files applied for this call ("PATH[:STRENGTH],..." or paths, (path, strength)
        pairs or lora.LoRASpec, stacked in order; the reference's LoRA application, see lora.py).
        headroom_seconds: the reference's duration_padding_sec (module doc; 0 = exact length).
        stream: return an iterator of consecutive (batch, channels, n) float32 pieces of that audio instead,
        each handed over as soon as its tile / window is decoded (their concatenation is the result).
        `progress(done, total)` after each step; `on_stage(stage, done, total)` for "text" (0/1, 1/1),
        "generate" (0/steps, then each step) and "decode" (0/1, 1/1), see progress.py.
        Python API only (diffusion/latents_io.py): seconds_total (the "seconds_total" conditioning; default
        seconds), latents (the initial noise, as draw_noise's), return_latents ((audio, final latents))."""
        initial = latents  # the name is reused below for the latent length
        prompts = check_prompts([prompt] if isinstance(prompt, str) else list(prompt or []))
        regions = self._check_inputs(init_audio, init_noise_level, inpaint_audio, inpaint_regions)
        clip = None if init_audio is None else self.load_audio(init_audio, "init_audio")
        source = None if inpaint_audio is None else self.load_audio(inpaint_audio, "inpaint_audio")
        if seconds is None:
            clips = [c.shape[1] / self.sample_rate for c in (clip, source) if c is not None]
            seconds = max(clips) if clips else self.max_seconds
        seconds = check_seconds(seconds, self.max_seconds)
        if not (isinstance(headroom_seconds, int | float) and 0 <= headroom_seconds <= 60):
            raise UserError(f"headroom_seconds must be a number in [0, 60], got {headroom_seconds!r}")
        n_out = round(seconds * self.sample_rate)
        if n_out < 1:
            raise UserError(f"{named('seconds')} = {seconds:g} is shorter than one sample")
        d = self.defaults
        values = check_settings(
            [s for s in self.settings if s.name in ("steps", "cfg_scale", "apg_scale", "sampler")],
            {"steps": steps, "cfg_scale": cfg_scale, "apg_scale": apg_scale, "sampler": sampler},
        )
        steps, cfg, apg, sampler = (values[k] for k in ("steps", "cfg_scale", "apg_scale", "sampler"))
        steps, sampler = steps or d.steps, sampler or d.sampler
        cfg = d.cfg_scale if cfg is None else cfg
        apg = 1.0 if apg is None else apg
        seed = resolve_seed(seed, len(prompts))
        spans = None if regions is None else check_regions(regions, seconds)
        if stream and return_latents:
            raise UserError(
                "return_latents does not combine with stream=True (the latents come before the audio)"
            )
        run = dict(
            seconds=seconds, seed=seed, steps=steps, cfg=cfg, apg=apg, sampler=sampler, lora=lora,
            initial=initial, seconds_total=seconds_total,
        )  # fmt: skip
        pieces = self._pieces(
            prompts, run, negative_prompt, clip, source, spans, init_noise_level,
            float(headroom_seconds), n_out, progress, on_stage,
        )  # fmt: skip
        if stream:
            return pieces
        result = np.concatenate(list(pieces), axis=-1)
        return with_latents(result, run["final"], return_latents)

    def _pieces(
        self,
        prompts: list[str],
        run: dict[str, Any],
        negative_prompt: str | None,
        clip: np.ndarray | None,
        source: np.ndarray | None,
        spans: list | None,
        init_noise_level: float | None,
        headroom_seconds: float,
        n_out: int,
        progress: Progress | None,
        on_stage: OnStage | None,
    ) -> Iterator[np.ndarray]:
        """Steps 1-6 of the module doc for checked inputs; yields the audio piece by piece."""
        seconds, seed, steps, sampler = run["seconds"], run["seed"], run["steps"], run["sampler"]
        cfg, apg, lora = run["cfg"], run["apg"], run["lora"]
        initial, seconds_total = run["initial"], run["seconds_total"]
        b = len(prompts)

        # 1. lengths
        n_samples = self.sample_size(seconds, float(headroom_seconds))
        ratio = self.model.downsampling_ratio
        latents = n_samples // ratio
        pad = self.padding_mask(seconds, float(headroom_seconds), latents)

        adapters = apply_loras(self.model.dit, self.model.conditioner, parse_loras(lora)) if lora else None
        try:
            # 2. noise, 3. conditioning (the local pair first: it is part of the DiT's conditioning)
            noise, noise_fn = self.draw_noise(seed, (b, self.model.dit.config.io_channels, latents), steps)
            noise = noise if initial is None else given_latents(initial, noise.shape)
            report_stage(on_stage, "text", 0, 1)
            local = None
            if spans is not None:
                mask = nearest(sample_mask(spans, seconds, self.sample_rate, n_samples), latents)
                mask = mx.broadcast_to(mx.array(mask)[None, None], (b, 1, latents))
                encoded = self.encode_audio(source, n_samples)
                local = {
                    "inpaint_mask": mask,
                    "inpaint_masked_input": mx.broadcast_to(encoded, noise.shape) * mask,
                }
            cond_seconds = (
                seconds if seconds_total is None else check_seconds(seconds_total, None, "seconds_total")
            )
            cond = self.condition(prompts, cond_seconds, local)
            neg = None
            if negative_prompt and cfg != 1.0:  # the reference's negative conditioning only acts under CFG
                neg = self.condition([negative_prompt] * b, cond_seconds)
            dit = self.model.dit
            cond_args = (cond["cross_attn_cond"], cond["global_cond"], cfg)
            cond_kwargs = dict(
                local_add_cond=cond["local_add_cond"],
                padding_mask=mx.broadcast_to(mx.array(pad)[None], (b, latents)),
                negative_cross_attn_cond=None if neg is None else neg["cross_attn_cond"],
                negative_cross_attn_mask=None if neg is None else neg["cross_attn_mask"],
            )
            dit_cond = dit.cfg_condition(*cond_args, **cond_kwargs)
            # low_memory: T5Gemma can go once what it computed is evaluated (a LoRA on it: after its removal)
            release = self.low_memory and adapters is None
            if on_stage is not None or release:  # the stage's real time; the text encoder's last use
                mx.eval([v for v in (*dit_cond.kv, dit_cond.global_embed) if v is not None])
                mx.eval([v for v in cond_kwargs.values() if isinstance(v, mx.array)])
            if release:
                del cond, neg
                self.release("text")
            report_stage(on_stage, "text", 1, 1)

            # 4. audio-to-audio, 5. sampling
            init = None
            if clip is not None:
                init = mx.broadcast_to(self.encode_audio(clip, n_samples), noise.shape)
            report_stage(on_stage, "generate", 0, steps)
            report = step_reporter(progress, on_stage, steps)

            def model_fn(x: mx.array, t: mx.array) -> mx.array:
                nonlocal dit_cond
                # an adapter with a sigma interval switching on or off changes the DiT's own projections
                if adapters is not None and adapters.activate(float(t[0])):
                    dit_cond = dit.cfg_condition(*cond_args, **cond_kwargs)
                return dit.guided(x, t, dit_cond, cfg, apg)

            out = flow.sample_flow(
                model_fn,
                noise,
                steps,
                objective=self.model.objective,
                sampler=sampler,
                init_data=init,
                init_noise_level=INIT_NOISE_LEVEL if init_noise_level is None else float(init_noise_level),
                shift=self.model.shift,
                seq_len=self.effective_latents(seconds),
                noise_fn=noise_fn,
                callback=None if report is None else (lambda info: report(info.i + 1, info.steps)),
            )

            run["final"] = out  # return_latents
            # 6. decode, piece by piece: x padding mask, clamp, cut to n_out (all per sample)
            if release:
                del dit_cond, model_fn, cond_args, cond_kwargs
                self.release("dit")
            report_stage(on_stage, "decode", 0, 1)
            keep = np.repeat(pad, ratio).astype(np.float32)
            start = 0
            for piece in self.decode_pieces(out):
                n = piece.shape[-1]
                k = np.zeros(n, np.float32)
                k[: max(min(keep.shape[0] - start, n), 0)] = keep[start : start + n]
                piece = mx.clip(piece * mx.array(k), -1.0, 1.0)[..., : max(n_out - start, 0)]
                if piece.shape[-1]:
                    yield np.array(piece)
                start += n
                if start >= n_out:  # the rest is headroom, cut off anyway
                    break
            report_stage(on_stage, "decode", 1, 1)
        finally:
            if adapters is not None:
                adapters.remove()
            if self.low_memory and adapters is not None:
                self.release("text")
                self.release("dit")

    def _check_inputs(
        self,
        init_audio: AudioInput | None,
        init_noise_level: float | None,
        inpaint_audio: AudioInput | None,
        inpaint_regions: object,
    ) -> list | None:
        """Cheap checks of how the audio inputs combine (before any file is read); the parsed regions."""
        schema = {s.name: s for s in self.settings}
        if init_audio is None and init_noise_level is not None:
            raise UserError(f"{named('init_noise_level')} needs {named('init_audio')}")
        schema["init_noise_level"].check(init_noise_level)
        if inpaint_audio is None and inpaint_regions is not None:
            raise UserError(f"{named('inpaint_regions')} need {named('inpaint_audio')} (the audio to keep)")
        if inpaint_audio is not None and inpaint_regions is None:
            raise UserError(f"{named('inpaint_audio')} needs {named('inpaint_regions')} (START:END seconds)")
        if inpaint_audio is not None and not self.model.inpaints:
            raise UserError("this checkpoint takes no inpainting conditioning (no local_add_cond_ids)")
        if isinstance(inpaint_regions, str):
            schema["inpaint_regions"].check(inpaint_regions)
        return None if inpaint_regions is None else parse_regions(inpaint_regions)
