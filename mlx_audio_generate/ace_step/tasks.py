"""One request's task inputs for ACE-Step 1.5 (`AceStep.generate`): the task and its instruction, the song's
length, the source latents the DiT's context takes, the cover's hints, the repaint window.

As the reference handler builds them (`_prepare_reference_and_source_audio`, `prepare_padding_info`,
`_prepare_target_latents_and_wavs`, `_build_chunk_masks_and_src_latents`, `_prepare_precomputed_lm_hints`):
- a source task's song is its source: latent frames = max(128, ceil(samples / 1920)), the source's latents
  padded with the silence latent's first frames; the metadata's duration is the source's (the reference locks
  it to the source and ignores the requested one; so do we: `seconds` does not apply); the result has the
  source's length;
- text2music with audio codes is a cover (`_resolve_generate_music_task`); the codes' hints (quantizer ->
  detokenizer, 5 codes per second -> 25 Hz) padded with the silence latent's first frames are both the
  source latents and the precomputed hints; the song is the codes' length (the reference's metadata says
  the requested duration, default 30 s; ours says the codes' length, which is what comes out);
- repaint: the window's frames of the source replaced by the silence latent at the same frames; lego keeps
  the source inside its window; cover, extract and complete take the source as it is (cover: `is_covers`, so
  the condition encoder takes its tokenize -> detokenize hints instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from ..errors import UserError
from . import modes as M
from .source_audio import load_source

if TYPE_CHECKING:
    from .generate import AceStep

MIN_FRAMES = 128  # _prepare_target_latents_and_wavs: max(128, max_latent_length)


@dataclass
class TaskInputs:
    task: str
    instruction: str
    frames: int
    n_out: int  # samples of the result
    duration: float | None  # the metadata's duration; None: the requested seconds
    source: mx.array | None = None  # (frames, C) the DiT context's source latents; None: silence
    target: mx.array | None = None  # (frames, C) the source's latents unmasked (repaint's clean source)
    is_cover: bool = False
    hints: mx.array | None = None  # (frames, C) precomputed 25 Hz hints (audio codes)
    window: tuple[int, int] | None = None  # repaint / lego: latent frames [a, b)
    seconds_window: tuple[float, float] | None = None
    wav: np.ndarray | None = None  # the source waveform (2, n) (the repaint's splice)

    def repaint_mask(self, batch: int) -> np.ndarray | None:
        if self.window is None:
            return None
        mask = np.zeros((batch, self.frames), dtype=bool)
        mask[:, self.window[0] : self.window[1]] = True
        return mask


_NEEDS = {
    "repaint_start": ("repaint", "lego"),
    "repaint_end": ("repaint", "lego"),
    "audio_cover_strength": ("cover",),
    "cover_noise_strength": ("cover",),
    "track": M.TRACK_TASKS,
}
_DEFAULTS = {"audio_cover_strength": 1.0, "cover_noise_strength": 0.0}


def _check_combination(task: str, v: dict[str, Any], given: dict[str, Any]) -> None:
    for name, tasks in _NEEDS.items():
        value = given.get(name)
        if value is not None and value != _DEFAULTS.get(name) and task not in tasks:
            raise UserError(f"{name} applies to task {' / '.join(tasks)}, not {task}")
    if v["src_audio"] is not None and v["audio_codes"] is not None:
        raise UserError("give src_audio or audio_codes, not both")
    if task == "text2music" and v["src_audio"] is not None:
        raise UserError(
            "src_audio needs a task that uses it: --task repaint, cover, lego, extract or complete"
        )
    if v["audio_codes"] is not None and task != "cover":
        raise UserError(f"audio_codes make a cover, not a {task}")
    if task in M.SOURCE_TASKS and v["src_audio"] is None and v["audio_codes"] is None:
        extra = " (or audio_codes)" if task == "cover" else ""
        raise UserError(f"task {task} needs src_audio{extra}: the song to work on")
    if v["retake_variance"] > 0 and v["retake_seed"] is None:
        raise UserError("retake_variance needs retake_seed (the second noise's seed)")
    if v["retake_seed"] is not None and v["retake_variance"] == 0:
        raise UserError("retake_seed needs retake_variance > 0")


def _pad(ace: AceStep, latents: mx.array, frames: int) -> mx.array:
    """Latents (T, C) padded to `frames` with the silence latent's first frames (tiled)."""
    t = latents.shape[0]
    return latents if t >= frames else mx.concatenate([latents, ace.silence(frames - t)], axis=0)


def prepare(ace: AceStep, v: dict[str, Any], given: dict[str, Any]) -> TaskInputs:
    """The request's TaskInputs; `v` the checked settings (defaults filled), `given` what the caller set."""
    task = v["task"]
    if v["audio_codes"] is not None and task == "text2music":
        task = "cover"
    _check_combination(task, v, given)
    text = M.instruction(task, v["track"])
    if task == "text2music":
        return TaskInputs(task, text, 0, 0, None)
    hop = ace.model.downsampling_ratio
    if v["audio_codes"] is not None:
        cond = ace.model.conditioning
        codebook = int(np.prod(cond.tokenizer.quantizer.levels))
        if cond.tokenizer.quantizer.quantizers != 1:
            raise UserError("audio codes need a checkpoint with one FSQ quantizer")
        codes = M.parse_codes(v["audio_codes"], codebook)
        hints = cond.codes_to_hints(mx.array(codes)[None, :, None])[0]
        t = hints.shape[0]
        if t * hop > ace.max_seconds * ace.sample_rate:
            raise UserError(f"audio_codes are longer than {ace.max_seconds:g} s")
        frames = max(MIN_FRAMES, t)
        hints = _pad(ace, hints, frames)
        return TaskInputs(task, text, frames, t * hop, t * hop / ace.sample_rate, hints, hints, True, hints)

    wav = load_source(v["src_audio"], "src_audio", ace.max_seconds, ace.audio_channels)
    n = wav.shape[1]
    target = ace.encode(wav)
    frames = max(MIN_FRAMES, target.shape[0])
    target = _pad(ace, target, frames)
    out = TaskInputs(task, text, frames, n, n / ace.sample_rate, target, target, task == "cover", wav=wav)
    if task in ("repaint", "lego"):
        song = n / ace.sample_rate
        start = 0.0 if v["repaint_start"] is None else v["repaint_start"]
        end = song if v["repaint_end"] is None else v["repaint_end"]
        if end > song + 1e-9:
            raise UserError(f"repaint_end {end:g} s is past the end of src_audio ({song:.3f} s)")
        if start >= end:
            raise UserError(f"the repaint window [{start:g}, {end:g}) s is empty")
        a, b = M.repaint_window(start, end, frames, ace.sample_rate)
        out.window, out.seconds_window = (a, b), (start, end)
        if task == "repaint":  # lego keeps the source inside its window
            sil = ace.silence(frames)
            keep = mx.array((np.arange(frames) < a) | (np.arange(frames) >= b))[:, None]
            out.source = mx.where(keep, target, sil)
    return out
