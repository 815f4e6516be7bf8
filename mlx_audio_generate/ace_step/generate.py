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
With `planner` on (planner_run.py), before 1.: the 5 Hz LM plans the caption (planner.py); its metadata fills
the unset bpm, key, time signature, duration and language, and its codes become the 25 Hz hints
(`codes_to_hints`, cut or silence-padded to the frames) that replace the source latents with `is_covers`
True and the cover instruction, as the handler does for LM codes (`_resolve_generate_music_task` switches
text2music to cover). One caption per call then (the rows of `n` variations share its plan, made with the
first row's seed).
Not ported here: reference audio (timbre), cover / repaint / lego / extract, SDE / Heun, ADG, retake variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..converted import Converted, load_weights, open_folder
from ..errors import UserError
from ..progress import OnStage, report_stage
from ..settings import check_prompts, check_seconds, check_settings, resolve_seed
from ..text.qwen3 import Qwen3Tokenizer
from . import schedule as S
from .conditioning import lyric_prompt, text_prompt, tokenize_prompts
from .family import FAMILY, MAX_SECONDS, settings
from .full_model import TIMBRE_FRAMES, AceStepModel
from .planner_run import codes_hints, fill_from_plan, load_planner

Progress = Callable[[int, int], None]
COVER_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"  # TASK_INSTRUCTIONS cover
MIN_FRAMES = 128  # _prepare_target_latents_and_wavs: max(128, max_latent_length)
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
        self, text: str, lyrics: str, frames: int, batch: int, hints: mx.array | None = None
    ) -> tuple[mx.array, mx.array]:
        """(packed condition (batch, S, H), context latents (batch, T, 2C)) of one prompt pair; `hints`
        (1, frames, C): LM-code hints as every row's source (cover rows)."""
        m = self.model
        ids, tmask, lids, lmask = tokenize_prompts(self.tokenizer, [text], [lyrics])
        states = m.text_encoder(mx.array(ids))
        embeds = m.text_encoder.embed(mx.array(lids))
        c = m.dit.config.acoustic_dim
        refer = mx.broadcast_to(m.silence_latent[:, :TIMBRE_FRAMES], (batch, TIMBRE_FRAMES, c))
        src = self.silence(frames)[None] if hints is None else hints
        src = mx.broadcast_to(src, (batch, frames, c))
        covers = np.full(batch, hints is not None)
        rep = lambda a: np.repeat(a, batch, axis=0)  # noqa: E731
        states_b = mx.broadcast_to(states, (batch, *states.shape[1:]))
        embeds_b = mx.broadcast_to(embeds, (batch, *embeds.shape[1:]))
        enc, _, context = m.conditioning.prepare_condition(
            states_b, rep(tmask), embeds_b, rep(lmask), refer, np.arange(batch), src,
            mx.ones((batch, frames, c)), covers, m.silence_latent, None if hints is None else src,
        )  # fmt: skip
        return enc, context

    def draw_noise(self, seed: int | list[int], shape: tuple[int, int, int]) -> mx.array:
        """The initial noise (B, T, C); the tests replace this to feed the reference's torch draws."""
        if isinstance(seed, list | tuple):
            return mx.stack([mx.random.normal(shape[1:], key=mx.random.key(int(s))) for s in seed])
        return mx.random.normal(shape, key=mx.random.key(seed))

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
        values = check_settings(self.settings, given)
        guidance, start, end = (
            values[k] for k in ("guidance_scale", "cfg_interval_start", "cfg_interval_end")
        )
        if self.model.is_turbo:
            if guidance is not None and guidance != 1.0:
                raise UserError(
                    f"guidance_scale {guidance:g} does not apply to a turbo checkpoint (guidance-distilled: "
                    "one pass); use ace-step-1.5-base or -sft for guidance"
                )
            if (start, end) != (0.0, 1.0):
                raise UserError("cfg_interval_start / cfg_interval_end do not apply to a turbo checkpoint")
        elif start > end:
            raise UserError(f"cfg_interval_start {start:g} must not exceed cfg_interval_end {end:g}")
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
        planner: str | None = None,
    ) -> np.ndarray:
        """Audio (batch, channels, round(seconds * 48000)) float32 for one caption or a list of them (the
        same lyrics and metadata for every row). seconds None = 30 (the metas' default duration). Settings
        None = this checkpoint's defaults (family.py). `progress(done, total)` after each step;
        `on_stage(stage, done, total)` for "text", "generate" and "decode" (progress.py)."""
        prompts = check_prompts([prompt] if isinstance(prompt, str) else list(prompt or []))
        if seconds is not None:
            check_seconds(seconds, self.max_seconds)
        v = self._values(
            lyrics=lyrics, language=language, bpm=bpm, keyscale=keyscale, timesignature=timesignature,
            steps=steps, shift=shift, guidance_scale=guidance_scale, cfg_interval_start=cfg_interval_start,
            cfg_interval_end=cfg_interval_end, planner=planner,
        )  # fmt: skip
        seed = resolve_seed(seed, len(prompts))
        plan = self.plan(prompts, seconds, v, seed)
        seconds = plan[0] if plan is not None else seconds
        seconds = check_seconds(30.0 if seconds is None else seconds, self.max_seconds)
        n_out = round(seconds * self.sample_rate)
        if n_out < 1:
            raise UserError(f"seconds {seconds:g} is shorter than one sample")
        metas = {
            "bpm": v["bpm"] or "N/A",
            "timesignature": v["timesignature"] or "N/A",
            "keyscale": v["keyscale"] or "N/A",
            "duration": seconds,
        }
        lyric = lyric_prompt(v["lyrics"] or "", v["language"])
        frames = self.latent_frames(seconds)
        b, c = len(prompts), self.model.dit.config.acoustic_dim
        turbo = self.model.is_turbo
        if turbo:
            sched = S.turbo_schedule(v["shift"], v["steps"])
        else:
            sched = S.base_schedule(v["steps"], v["shift"])
        n_steps = len(sched) if turbo else len(sched) - 1
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)

        noise = self.draw_noise(seed, (b, frames, c))
        report_stage(on_stage, "text", 0, 1)
        hints, instruction = None, None
        if plan is not None:
            hints = codes_hints(self.model.conditioning, plan[1], frames, self.silence(frames))
            instruction = COVER_INSTRUCTION
        conds = {
            p: self.condition(text_prompt(p, metas, instruction), lyric, frames, len(rows), hints)
            for p, rows in groups.items()
        }
        if on_stage is not None:  # the stage's real time
            mx.eval([x for pair in conds.values() for x in pair])
        report_stage(on_stage, "text", 1, 1)

        total = n_steps * len(groups)
        report_stage(on_stage, "generate", 0, total)
        done = 0
        out = [None] * b
        for p, rows in groups.items():
            enc, context = conds[p]
            x0 = noise[mx.array(rows)] if len(groups) > 1 else noise

            def on_step(i: int, t: float, base: int = done) -> None:
                if progress is not None:
                    progress(base + i + 1, total)
                report_stage(on_stage, "generate", base + i + 1, total)

            dit = self.model.dit
            if turbo:
                lat = S.sample_turbo(dit, x0, context, enc, sched, on_step)
            else:
                lat = S.sample_base(
                    dit, x0, context, enc, self.model.conditioning.null_condition_emb, sched,
                    v["guidance_scale"], (v["cfg_interval_start"], v["cfg_interval_end"]), on_step,
                )  # fmt: skip
            done += n_steps
            for j, r in enumerate(rows):
                out[r] = lat[j]
        latents = mx.stack(out)

        report_stage(on_stage, "decode", 0, 1)
        audio = np.array(self.decode(latents).astype(mx.float32))[..., :n_out]
        result = np.ascontiguousarray(peak_normalize(audio), dtype=np.float32)
        report_stage(on_stage, "decode", 1, 1)
        return result
