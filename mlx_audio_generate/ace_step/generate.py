"""ACE-Step 1.5 text -> music: load a converted folder once, generate many times.

model = AceStep.from_pretrained("converted/ace-step-1.5-turbo")
audio = model.generate("upbeat pop, bright synths", seconds=30, seed=0, lyrics="[Verse]\\n...")  # (B, 2, n)

One generation is the reference pipeline's text2music (acestep/core/generation/handler + the model file's
`generate_audio`), step by step:
1. prompts (conditioning_text.py): the caption with the SFT prompt ("# Instruction" text2music's, "# Caption",
   "# Metas": bpm / timesignature / keyscale or N/A, "duration: int(seconds) seconds"), the lyric prompt
   ("# Languages", "# Lyric"); Qwen3 states of the text prompt (called without a mask), token embeddings of
   the lyric prompt (conditioning.py, text/qwen3.py).
2. inputs (conditioning_target.py / conditioning_masks.py): latent frames = max(128, ceil(samples / 1920))
   (the reference takes int(round(seconds, 1) * 48000) // 1920, at least 128, and does not cut: ours covers
   the requested length and cuts it, so both agree whenever seconds * 25 is a whole number that is a
   multiple of 0.1 s, e.g. 10 s or 30 s); source latents = the silence latent tiled to that length, chunk
   mask all ones, no cover; the timbre reference of an item without reference audio is silence[:, :750]
   (`infer_refer_latent`); `prepare_condition` packs lyrics, timbre and text.
3. noise: randn (B, T, 64) from the seed (our MLX key: torch's generator is not reproduced; the parity tests
   inject the reference's noise through `draw_noise`); a list of seeds has one per prompt.
4. sampling (schedule.py): turbo's Euler loop (`infer_steps` passed, as the handler always does: shift
   mapped s = 1 - i/n, the last step x - v t), base / SFT's with CFG + APG against `null_condition_emb`
   when guidance_scale > 1, inside [cfg_interval_start, cfg_interval_end]. DCW is off: upstream enables it
   by default, but it is a no-op (one logged warning) unless the optional `pytorch_wavelets` is installed
   (reference README §2.7), and the UI turns it off for base models; the parity tests pass
   `dcw_enabled=False`.
5. decode (vae_decode_chunks.py): the Oobleck VAE in float32, tiled as the reference's MLX path decodes
   (windows of 512 latents, 64 latents of overlap on each side discarded; one piece when it fits), then the
   reference's normalisation: a row whose peak exceeds 1 is divided by its peak; the result is cut to
   round(seconds * 48000) samples.

Rows: the DiT attends its whole packed condition (padding included, README §2.6), so rows of different
prompt lengths would change each other through padding. Rows with the same prompts run as one batch (as the
reference's batch of one caption does); different prompts run one after the other, so a row always equals its
prompt generated alone with its seed.
Tasks (modes.py, tasks.py, source_audio.py; the handler's `generate_music` with its defaults): repaint
(source latents with silence in the window, chunk mask all ones as `chunk_mask_mode="auto"` really makes it,
the source re-injected outside the window for the first half of the steps, a 12-frame latent crossfade and a
1200-sample waveform splice), cover from audio (the source's tokenize -> detokenize hints, `is_covers`) or
from audio codes (`audio_codes=`: ints or `<|audio_code_N|>` text, e.g. the 5 Hz LM planner's), with
`audio_cover_strength` (the non-cover condition after that fraction of the steps) and
`cover_noise_strength` (from the renoised source at the nearest step); retake (`cos(v pi/2) n1 +
sin(v pi/2) n2`, n2 from `retake_seed`); a timbre reference (three 10 s segments, offsets from the row's
seed); lego / extract / complete on the base checkpoint. A source's song has the source's length. The
reference's random draws (VAE posterior, timbre offsets) are ours deterministic: the VAE mean, the seed.
Sampler options (schedule.py): SDE / Heun, ADG, DCW, velocity clamp / EMA, as `generate_audio` takes them.
Adapters (`lora`): PEFT LoRA / LyCORIS LoKr on the DiT (lora.py), merged into its weights for the call and
removed after it; applied before the conditioning, whose cross-attention K/V the DiT computes.
With `planner` on (planner_run.py): the 5 Hz LM plans the caption first (planner.py); its metadata fills
the unset bpm, key, time signature, duration and language, and its codes become `audio_codes` (a cover of
them, as the handler turns text2music with LM codes into a cover). One caption per call then (the rows of
`n` variations share its plan, made with the first row's seed); text2music only.
Not ported here: cover-nofsq, the repaint modes other than "balanced" 0.5, repaint windows outside the source
(the reference pads), flow-edit morph, custom timestep lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..converted import Converted, load_weights, open_folder
from ..diffusion.latents_io import given_latents, with_latents
from ..errors import UserError
from ..progress import OnStage, report_stage
from ..settings import check_prompts, check_seconds, check_settings, named, resolve_seed
from ..text.qwen3 import Qwen3Tokenizer
from . import modes as M
from . import schedule as S
from .conditioning import TEXT_MAX_TOKENS, lyric_prompt, text_prompt, tokenize_prompts
from .family import FAMILY, MAX_SECONDS, settings
from .full_model import TIMBRE_FRAMES, AceStepModel
from .lora import apply_loras
from .planner_run import fill_from_plan, load_planner
from .source_audio import AudioInput, encode_audio, load_source, repeat_to_timbre, timbre_clip, timbre_offsets
from .tasks import MIN_FRAMES, TaskInputs, prepare

Progress = Callable[[int, int], None]
FILE_SETTINGS = ("src_audio", "reference_audio")  # a path (checked as text) or an array
DECODE_CHUNK, DECODE_OVERLAP = 512, 64  # the reference's MLX VAE decode (and its largest PyTorch chunk)


def tiled_decode(
    decode: Callable[[mx.array], mx.array], latents: mx.array, chunk: int, overlap: int
) -> mx.array:
    """`_tiled_decode_inner` (overlap-discard tiling): latents (B, C, T) -> audio (B, channels, T * ratio)."""
    frames = latents.shape[-1]
    while chunk - 2 * overlap <= 0 and overlap > 4:  # the reference's overlap reduction, floor 4
        overlap //= 2
    if frames <= chunk:
        return decode(latents)
    stride = chunk - 2 * overlap
    if stride <= 0:
        raise UserError(f"decode chunk {chunk} must be > 2 * overlap {overlap}")
    pieces = []
    for i in range(math.ceil(frames / stride)):
        core_start, core_end = i * stride, min(i * stride + stride, frames)
        win_start, win_end = max(0, core_start - overlap), min(frames, core_end + overlap)
        audio = decode(latents[:, :, win_start:win_end])
        factor = audio.shape[-1] / (win_end - win_start)
        trim_start = int(round((core_start - win_start) * factor))
        trim_end = int(round((win_end - core_end) * factor))
        piece = audio[:, :, trim_start : audio.shape[-1] - trim_end if trim_end > 0 else audio.shape[-1]]
        mx.eval(piece)
        pieces.append(piece)
    return mx.concatenate(pieces, axis=-1)


def peak_normalize(audio: np.ndarray) -> np.ndarray:
    """A row whose peak exceeds 1 divided by its peak (`_decode_generate_music_pred_latents`)."""
    peak = np.abs(audio).max(axis=(1, 2), keepdims=True)
    return audio / np.maximum(peak, 1.0) if (peak > 1.0).any() else audio


class AceStep:
    def __init__(self, model: AceStepModel, tokenizer: Qwen3Tokenizer, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.settings = settings(config)  # this checkpoint's (its variant's defaults)
        self.decode_chunk, self.decode_overlap = DECODE_CHUNK, DECODE_OVERLAP

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AceStep:
        return cls.from_converted(open_folder(folder, FAMILY.name))

    @classmethod
    def from_converted(cls, conv: Converted) -> AceStep:
        model = AceStepModel(conv.config)
        load_weights(model, conv)
        # the VAE's output is the waveform and the silence latent is a VAE latent: both stay float32
        model.vae.set_dtype(mx.float32)
        model.silence_latent = model.silence_latent.astype(mx.float32)
        return cls(model, Qwen3Tokenizer(conv.folder), conv.config)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.model.audio_channels

    @property
    def max_seconds(self) -> float:
        return MAX_SECONDS

    # -- inputs ----------------------------------------------------------------------------------------------

    def latent_frames(self, seconds: float) -> int:
        """Latent frames for `seconds` (module doc, 2.)."""
        return max(MIN_FRAMES, math.ceil(round(seconds * self.sample_rate) / self.model.downsampling_ratio))

    def silence(self, frames: int) -> mx.array:
        """`_get_silence_latent_slice`: the silence latent (T, C), tiled when shorter than `frames`."""
        s = self.model.silence_latent[0]
        if frames > s.shape[0]:
            s = mx.tile(s, (math.ceil(frames / s.shape[0]), 1))
        return s[:frames]

    def condition(
        self,
        text: str,
        lyrics: str,
        frames: int,
        batch: int,
        *,
        source: mx.array | None = None,
        is_cover: bool = False,
        hints: mx.array | None = None,
        refer: mx.array | None = None,
        text_len: int | None = None,
    ) -> tuple[mx.array, mx.array]:
        """(packed condition (batch, S, H), context latents (batch, T, 2C)) of one prompt pair. `source`
        (T, C): the source latents (default silence); `is_cover` with `hints` (T, C) or, without, the source's
        tokenize -> detokenize; `refer` (1, 750, C): the timbre latents (default silence[:, :750]);
        `text_len`: the text tokens padded or cut to this length (the non-cover prompt takes the cover
        prompt's, as `_prepare_text_conditioning_inputs` pads it)."""
        m = self.model
        ids, tmask, lids, lmask = tokenize_prompts(self.tokenizer, [text], [lyrics])
        if text_len is not None and text_len != ids.shape[1]:
            keep = min(text_len, ids.shape[1])
            ids = np.concatenate([ids[:, :keep], np.full((1, text_len - keep), self.tokenizer.pad_id)], 1)
            tmask = np.concatenate([tmask[:, :keep], np.zeros((1, text_len - keep), tmask.dtype)], 1)
        states = m.text_encoder(mx.array(ids.astype(np.int32)))
        embeds = m.text_encoder.embed(mx.array(lids))
        c = m.dit.config.acoustic_dim
        refer = m.silence_latent[:, :TIMBRE_FRAMES] if refer is None else refer
        refer = mx.broadcast_to(refer, (batch, *refer.shape[1:]))
        src = self.silence(frames) if source is None else source
        src = mx.broadcast_to(src[None], (batch, frames, c))
        hints_b = None if hints is None else mx.broadcast_to(hints[None], (batch, *hints.shape))
        rep = lambda a: np.repeat(a, batch, axis=0)  # noqa: E731
        states_b = mx.broadcast_to(states, (batch, *states.shape[1:]))
        embeds_b = mx.broadcast_to(embeds, (batch, *embeds.shape[1:]))
        enc, _, context = m.conditioning.prepare_condition(
            states_b, rep(tmask), embeds_b, rep(lmask), refer, np.arange(batch), src,
            mx.ones((batch, frames, c)), np.full(batch, is_cover), m.silence_latent, hints_b,
        )  # fmt: skip
        return enc, context

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, TEXT_MAX_TOKENS))

    def vae_noise(self, shape: tuple[int, ...]) -> mx.array | None:
        """The VAE posterior draw of an encode (None: its mean, our default); tests feed the reference's."""
        return None

    def encode(self, audio: np.ndarray) -> mx.array:
        """Audio (channels, n) at 48 kHz -> latents (ceil(n / 1920), C) float32 (source_audio.py)."""
        return encode_audio(self.model.vae, audio, self.model.downsampling_ratio, self.vae_noise)

    def timbre(self, audio: np.ndarray, seed: int) -> tuple[tuple[int, int, int], mx.array]:
        """The timbre reference of a row: (segment offsets, latents (1, 750, C)) (source_audio.py)."""
        clip = repeat_to_timbre(audio)
        offsets = self.timbre_offsets(clip.shape[1], seed)
        return offsets, self.encode(timbre_clip(clip, offsets))[None]

    def timbre_offsets(self, samples: int, seed: int) -> tuple[int, int, int]:
        """The three 10 s segment starts (from the seed); the tests feed the reference's random ones."""
        return timbre_offsets(samples, seed)

    def draw_noise(self, seed: int | list[int], shape: tuple[int, int, int]) -> mx.array:
        """The initial noise (B, T, C); the tests replace this to feed the reference's torch draws."""
        if isinstance(seed, list | tuple):
            return mx.stack([mx.random.normal(shape[1:], key=mx.random.key(int(s))) for s in seed])
        return mx.random.normal(shape, key=mx.random.key(seed))

    def draw_step_noise(self, seed: int | list[int], shape: tuple[int, int, int], steps: int) -> S.StepNoise:
        """SDE's fresh noise: step i -> (B, T, C), from keys split off each seed (a row's draws depend on its
        seed only, as its initial noise). The tests replace this to feed the reference's torch draws."""
        seeds = [int(s) for s in seed] if isinstance(seed, list | tuple) else [int(seed)]
        keys = [mx.random.split(mx.random.key(s), steps) for s in seeds]
        if not isinstance(seed, list | tuple):
            return lambda i: mx.random.normal(shape, key=keys[0][i])
        return lambda i: mx.stack([mx.random.normal(shape[1:], key=k[i]) for k in keys])

    def decode(self, latents: mx.array) -> mx.array:
        """Latents (B, T, C) -> audio (B, channels, T * ratio), float32, tiled (module doc, 5.)."""
        z = latents.astype(mx.float32).transpose(0, 2, 1)
        return tiled_decode(self.model.vae.decode, z, self.decode_chunk, self.decode_overlap)

    # -- generation ------------------------------------------------------------------------------------------

    def plan(
        self, prompts: list[str], seconds: float | None, v: dict, seed: int | list[int]
    ) -> tuple[float | None, list[int]] | None:
        """With `planner` on: (seconds, codes), the planner's metadata written into the settings `v`."""
        planner = load_planner(v.pop("planner", None))
        if planner is None:
            return None
        if len(set(prompts)) > 1:
            raise UserError("the planner plans one caption per call; generate the prompts one at a time")
        metadata, codes = planner.plan(
            prompts[0], v["lyrics"] or "", duration=seconds, bpm=v["bpm"], keyscale=v["keyscale"],
            timesignature=v["timesignature"], seed=seed[0] if isinstance(seed, list) else seed,
        )  # fmt: skip
        return fill_from_plan(v, seconds, metadata), codes

    def _values(self, **given) -> dict:
        # audio inputs may be arrays and codes a list of ints: those are checked where they are read
        loose = {
            k: given[k] for k in (*FILE_SETTINGS, "audio_codes") if not isinstance(given.get(k), str | None)
        }
        values = check_settings(self.settings, {**given, **dict.fromkeys(loose)})
        values.update(loose)
        guidance, start, end = (
            values[k] for k in ("guidance_scale", "cfg_interval_start", "cfg_interval_end")
        )
        if self.model.is_turbo:
            if guidance is not None and guidance != 1.0:
                raise UserError(
                    f"{named('guidance_scale')} = {guidance:g} does not apply to a turbo checkpoint "
                    "(guidance-distilled: one pass); use ace-step-1.5-base or -sft for guidance"
                )
            if (start, end) != (0.0, 1.0):
                raise UserError(
                    f"{named('cfg_interval_start', 'cfg_interval_end')} do not apply to a turbo checkpoint"
                )
        elif start > end:
            raise UserError(
                f"{named('cfg_interval_start')} = {start:g} must not exceed "
                f"{named('cfg_interval_end')} = {end:g}"
            )
        values["sampler"] = S.sampler_options(values, self.model.is_turbo)
        return values

    def generate(
        self,
        prompt: str | list[str],
        seconds: float | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        *,
        on_stage: OnStage | None = None,
        lyrics: str | None = None,
        language: str | None = None,
        bpm: int | None = None,
        keyscale: str | None = None,
        timesignature: str | None = None,
        steps: int | None = None,
        shift: float | None = None,
        guidance_scale: float | None = None,
        cfg_interval_start: float | None = None,
        cfg_interval_end: float | None = None,
        task: str | None = None,
        src_audio: AudioInput | None = None,
        repaint_start: float | None = None,
        repaint_end: float | None = None,
        audio_cover_strength: float | None = None,
        cover_noise_strength: float | None = None,
        reference_audio: AudioInput | None = None,
        audio_codes: str | list[int] | None = None,
        retake_variance: float | None = None,
        retake_seed: int | None = None,
        track: str | None = None,
        guidance_method: str | None = None,
        infer_method: str | None = None,
        sampler_mode: str | None = None,
        velocity_norm_threshold: float | None = None,
        velocity_ema_factor: float | None = None,
        dcw: str | None = None,
        dcw_scaler: float | None = None,
        dcw_high_scaler: float | None = None,
        dcw_wavelet: str | None = None,
        lora: str | Sequence[Any] | None = None,
        planner: str | None = None,
        latents: Any = None,
        return_latents: bool = False,
    ) -> np.ndarray:
        """Audio (batch, channels, samples) float32 for one caption or a list of them (the same lyrics,
        metadata and task inputs for every row). seconds None = 30 (the metas' default duration); with a
        source (src_audio or audio_codes) the song has the source's length. Settings None = this
        checkpoint's defaults (family.py; the tasks: modes.py, tasks.py). `audio_codes`: 5 Hz codes as ints
        or `<|audio_code_N|>` text (the LM planner's output) -> a cover. lora: DiT adapters for this call
        ("PATH[:STRENGTH],..." or paths, (path, strength) pairs or lora.AdapterSpec; lora.py).
        `progress(done, total)` after each step; `on_stage(stage, done, total)` for "text", "generate" and
        "decode" (progress.py). Python API only (diffusion/latents_io.py): latents, the initial noise
        (B, T, C) instead of draw_noise's; return_latents: (audio, final latents)."""
        prompts = check_prompts([prompt] if isinstance(prompt, str) else list(prompt or []))
        asked = seconds  # the planner may write the duration when none is asked for
        seconds = check_seconds(30.0 if seconds is None else seconds, self.max_seconds)
        given = dict(
            lyrics=lyrics, language=language, bpm=bpm, keyscale=keyscale, timesignature=timesignature,
            steps=steps, shift=shift, guidance_scale=guidance_scale, cfg_interval_start=cfg_interval_start,
            cfg_interval_end=cfg_interval_end, task=task, src_audio=src_audio, repaint_start=repaint_start,
            repaint_end=repaint_end, audio_cover_strength=audio_cover_strength,
            cover_noise_strength=cover_noise_strength, reference_audio=reference_audio,
            audio_codes=audio_codes, retake_variance=retake_variance, retake_seed=retake_seed, track=track,
            guidance_method=guidance_method, infer_method=infer_method, sampler_mode=sampler_mode,
            velocity_norm_threshold=velocity_norm_threshold, velocity_ema_factor=velocity_ema_factor, dcw=dcw,
            dcw_scaler=dcw_scaler, dcw_high_scaler=dcw_high_scaler, dcw_wavelet=dcw_wavelet, planner=planner,
        )  # fmt: skip
        v = self._values(**given)
        seed = resolve_seed(seed, len(prompts))
        plan = self.plan(prompts, asked, v, seed)
        if plan is not None:  # the planner's codes: a cover of them (module doc)
            if v["task"] != "text2music" or v["audio_codes"] is not None:
                raise UserError(
                    f"{named('planner')} writes the audio codes of a text2music song; it does not combine "
                    f"with {named('task')} {v['task']} or {named('audio_codes')}"
                )
            seconds = check_seconds(plan[0] if plan[0] is not None else seconds, self.max_seconds)
            given["audio_codes"] = v["audio_codes"] = plan[1]
        seeds = list(seed) if isinstance(seed, list | tuple) else [seed] * len(prompts)
        job = prepare(self, v, given)
        if job.task == "text2music":
            job.n_out, job.frames = round(seconds * self.sample_rate), self.latent_frames(seconds)
            if job.n_out < 1:
                raise UserError(f"{named('seconds')} = {seconds:g} is shorter than one sample")
        metas = {
            "bpm": v["bpm"] or "N/A",
            "timesignature": v["timesignature"] or "N/A",
            "keyscale": v["keyscale"] or "N/A",
            "duration": seconds if job.duration is None else job.duration,
        }
        refer_audio = None
        if v["reference_audio"] is not None:
            refer_audio = load_source(v["reference_audio"], "reference_audio", self.max_seconds)
        lyric = lyric_prompt(v["lyrics"] or "", v["language"])
        frames = job.frames
        b, c = len(prompts), self.model.dit.config.acoustic_dim
        turbo = self.model.is_turbo
        sched = S.turbo_schedule(v["shift"], v["steps"]) if turbo else S.base_schedule(v["steps"], v["shift"])
        start_at = None
        if v["cover_noise_strength"] > 0.0:  # generate_audio: from the renoised source at the nearest step
            start_at = M.cover_start(sched if turbo else sched[:-1], v["cover_noise_strength"])
            sched = sched[start_at:]
        n_steps = len(sched) if turbo else len(sched) - 1
        # rows share a condition when their prompt (and, with a timbre reference, their seed) is the same
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault((p, seeds[i] if refer_audio is not None else None), []).append(i)

        noise = (
            self.draw_noise(seed, (b, frames, c))
            if latents is None
            else given_latents(latents, (b, frames, c))
        )
        if v["retake_variance"] > 0.0:
            noise = M.retake(
                noise, self.draw_noise([v["retake_seed"]] * b, (b, frames, c)), v["retake_variance"]
            )
        opts = v.pop("sampler")
        fresh = self.draw_step_noise(seed, (b, frames, c), n_steps) if opts.infer_method == "sde" else None
        # adapters before the conditioning (its cross-attention K/V), removed after the call
        with apply_loras(self.model.dit, lora) if lora else nullcontext():
            report_stage(on_stage, "text", 0, 1)
            conds = {
                key: self._conditions(key, job, metas, lyric, len(rows), v, refer_audio)
                for key, rows in groups.items()
            }
            if on_stage is not None:  # the stage's real time
                mx.eval([x for cs in conds.values() for pair in cs for x in pair])
            report_stage(on_stage, "text", 1, 1)

            total = n_steps * len(groups)
            report_stage(on_stage, "generate", 0, total)
            done = 0
            out = [None] * b
            mask = job.repaint_mask(1)
            for key, rows in groups.items():
                (enc, context), other = conds[key][0], conds[key][1:]
                x0 = noise[mx.array(rows)] if len(groups) > 1 else noise

                def on_step(i: int, t: float, base: int = done) -> None:
                    if progress is not None:
                        progress(base + i + 1, total)
                    report_stage(on_stage, "generate", base + i + 1, total)

                def step_noise(i: int, r: list[int] = rows) -> mx.array:  # SDE: this group's rows
                    return fresh(i)[mx.array(r)] if len(groups) > 1 else fresh(i)

                lat = self._sample(
                    job, v, x0, enc, context, other, sched, start_at, mask, n_steps, on_step,
                    opts, step_noise if fresh else None,
                )  # fmt: skip
                done += n_steps
                for j, r in enumerate(rows):
                    out[r] = lat[j]
            latents = mx.stack(out)

            report_stage(on_stage, "decode", 0, 1)
            audio = peak_normalize(np.array(self.decode(latents).astype(mx.float32)))
            if job.window is not None:  # repaint / lego: the source waveform itself outside the window
                start, end = job.seconds_window
                audio = M.waveform_splice(audio, job.wav, start, end, self.sample_rate, M.REPAINT_WAV_FADE)
            result = np.ascontiguousarray(audio[..., : job.n_out], dtype=np.float32)
            report_stage(on_stage, "decode", 1, 1)
            return with_latents(result, latents, return_latents)

    def _conditions(
        self, key: tuple, job: TaskInputs, metas: dict, lyric: str, batch: int, v: dict, refer_audio
    ) -> list[tuple[mx.array, mx.array]]:
        """[(condition, context)] of a group; a second, non-cover pair when audio_cover_strength < 1 (the
        text2music instruction, silence as source, `is_covers` False: generate_audio's non-cover branch)."""
        prompt, row_seed = key
        refer = None if refer_audio is None else self.timbre(refer_audio, row_seed)[1]
        text = text_prompt(prompt, metas, job.instruction)
        kw = dict(refer=refer)
        pairs = [
            self.condition(text, lyric, job.frames, batch, source=job.source, is_cover=job.is_cover,
                           hints=job.hints, **kw)
        ]  # fmt: skip
        if job.is_cover and v["audio_cover_strength"] < 1.0:
            plain = text_prompt(prompt, metas, M.instruction("text2music"))
            pairs.append(
                self.condition(plain, lyric, job.frames, batch, text_len=self.text_tokens(text), **kw)
            )
        return pairs

    def _sample(
        self, job: TaskInputs, v: dict, noise: mx.array, enc: mx.array, context: mx.array, other: list,
        sched: np.ndarray, start_at: int | None, mask: np.ndarray | None, n_steps: int, on_step,
        opts: S.SamplerOptions, step_noise: S.StepNoise | None,
    ) -> mx.array:  # fmt: skip
        """One group's sampling loop with the task's start, condition switch and repaint injection."""
        b = noise.shape[0]
        x = noise
        if start_at is not None:  # renoise(src_latents, nearest_t, noise)
            t0 = float(sched[0])
            x = t0 * noise + (1.0 - t0) * mx.broadcast_to(job.source[None], noise.shape)
        switch = None
        if other:
            enc2, context2 = other[0]
            switch = (int(n_steps * v["audio_cover_strength"]), context2, enc2)
        inject = clean = None
        if mask is not None:
            clean = mx.broadcast_to(job.target[None], noise.shape)
            mask_b = mx.array(np.repeat(mask, b, axis=0))
            cutoff = round(M.REPAINT_INJECTION * n_steps)

            def inject(i: int, x: mx.array, t: float) -> mx.array:
                return M.inject_source(x, clean, mask_b, t, noise) if i < cutoff else x

        dit = self.model.dit
        if self.model.is_turbo:
            lat = S.sample_turbo(
                dit, x, context, enc, sched, on_step, opts, step_noise, switch=switch, inject=inject
            )
        else:
            lat = S.sample_base(
                dit, x, context, enc, self.model.conditioning.null_condition_emb, sched, v["guidance_scale"],
                (v["cfg_interval_start"], v["cfg_interval_end"]), on_step, opts, step_noise,
                switch=switch, inject=inject,
            )  # fmt: skip
        if mask is not None:
            lat = M.blend_boundary(lat, clean, np.repeat(mask, b, axis=0), M.REPAINT_LATENT_FADE)
        return lat
