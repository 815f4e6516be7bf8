"""ACE-Step 1.5's generation tasks beyond text2music: their instructions, the repaint window and masks, the
cover's audio codes, retake noise, and the repaint's latent and waveform blends.

Mirrors the reference handler (acestep/core/generation/handler, upstream 6d467e4) as `generate_music` runs it
with its defaults:
- tasks (`constants.TASK_TYPES`): text2music, repaint, cover, lego, extract, complete; turbo and SFT
  checkpoints offer text2music / repaint / cover (`TASK_TYPES_TURBO`: the UI's choices for every model that is
  not the pure base), the base checkpoint all six. cover-nofsq is not offered here.
- instructions (`task_utils.generate_instruction`, the UI's): each task's `TASK_INSTRUCTIONS` text, a track
  name upper-cased into lego / extract / complete (their `*_default` text without a track). The bare
  `GenerationParams` keeps text2music's instruction for every task unless told otherwise; the UI, and so we,
  use the task's own.
- the repaint window (`conditioning_masks._build_chunk_masks_and_src_latents`): latent frames
  [int(start * 48000 // 1920), int(end * 48000 // 1920)), clamped into the song; the chunk mask is all ones:
  `chunk_mask_mode` defaults to "auto", which writes 2.0 into the boolean mask, i.e. True everywhere (the
  0/1 "explicit" mask is not what the reference runs by default, reference README §6.7);
- `repaint_mode` "balanced" with `repaint_strength` 0.5 (`generate_music._resolve_repaint_config`): source
  re-injection for the first round(0.5 n) steps, a latent crossfade of round(25 * 0.5) = 12 frames at the
  window's edges, a waveform splice of int(0.025 * 48000) = 1200 samples (repaint_step_injection.py,
  repaint_waveform_splice.py);
- audio codes (`audio_codes._parse_audio_code_string`): `<|audio_code_N|>` tokens (or ints here), one FSQ
  index per 5 Hz frame; the reference clamps out-of-range values to [0, 63999], we refuse them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from ..errors import UserError
from .conditioning import TASK_INSTRUCTIONS
from .family import BASE_ONLY_TASKS, TASKS, TRACK_NAMES  # noqa: F401 (the task names live with the settings)

SOURCE_TASKS = ("repaint", "cover", "lego", "extract", "complete")  # need src_audio (cover: or codes)
TRACK_TASKS = ("lego", "extract", "complete")
# repaint_mode "balanced", repaint_strength 0.5 (generate_music's defaults) as _resolve_repaint_config maps
# them
_INV = 1.0 - 0.5
REPAINT_INJECTION = _INV
REPAINT_LATENT_FADE = round(25 * _INV)  # 12 frames
REPAINT_WAV_FADE = 0.05 * _INV  # seconds
HOP = 1920  # the handler's samples per latent frame (constants, not the VAE config)
_CODE = re.compile(r"<\|audio_code_(\d+)\|>")


def instruction(task: str, track: str | None = None) -> str:
    """The task's instruction text (`generate_instruction`)."""
    if task in TRACK_TASKS:
        if not track:
            return TASK_INSTRUCTIONS[f"{task}_default"]
        key = "TRACK_CLASSES" if task == "complete" else "TRACK_NAME"
        return TASK_INSTRUCTIONS[task].format(**{key: track.upper()})
    return TASK_INSTRUCTIONS[task]


def parse_codes(codes: str | Sequence[int] | np.ndarray, codebook: int) -> np.ndarray:
    """Audio codes as int32 (N,): a `<|audio_code_N|>` string (what the 5 Hz LM writes) or integers, each in
    [0, codebook)."""
    if isinstance(codes, str):
        found = _CODE.findall(codes)
        if not found or _CODE.sub("", codes).strip():
            raise UserError("audio_codes must be <|audio_code_N|> tokens (or a list of integers)")
        values = [int(x) for x in found]
    else:
        arr = np.asarray(codes)
        if (
            arr.ndim != 1
            or arr.size == 0
            or not (np.issubdtype(arr.dtype, np.integer) or (arr.dtype == object and _all_ints(arr)))
        ):
            raise UserError("audio_codes must be a non-empty list of integers (or <|audio_code_N|> tokens)")
        values = [int(x) for x in arr]
    bad = [v for v in values if not 0 <= v < codebook]
    if bad:
        raise UserError(f"audio code {bad[0]} is out of range: codes lie in [0, {codebook})")
    return np.array(values, dtype=np.int32)


def _all_ints(arr: np.ndarray) -> bool:
    return all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in arr)


def codes_text(codes: Sequence[int]) -> str:
    """Codes as the LM's token string (`convert_src_audio_to_codes`)."""
    return "".join(f"<|audio_code_{int(c)}|>" for c in codes)


def repaint_window(start: float, end: float, frames: int, sample_rate: int = 48000) -> tuple[int, int]:
    """Latent frames [a, b) of the window [start, end) seconds, as the reference rounds and clamps them."""
    a = int(start * sample_rate // HOP)
    b = int(end * sample_rate // HOP)
    a = max(0, min(a, frames - 1))
    return a, max(a + 1, min(b, frames))


def _ramp(n: int, up: bool) -> np.ndarray:
    r = np.linspace(0.0, 1.0, n + 2, dtype=np.float64)[1:-1]
    return (r if up else r[::-1]).astype(np.float32)


def soft_mask(mask: np.ndarray, fade: int) -> np.ndarray:
    """build_soft_repaint_mask: (B, T) bool -> float32, linear ramps of `fade` frames outside the window."""
    soft = mask.astype(np.float32).copy()
    if fade <= 0:
        return soft
    t = mask.shape[1]
    for b, row in enumerate(mask):
        if row.all() or not row.any():
            continue
        idx = np.flatnonzero(row)
        left, right = int(idx[0]), int(idx[-1]) + 1
        lo = max(left - fade, 0)
        if left - lo > 0:
            soft[b, lo:left] = _ramp(left - lo, True)
        hi = min(right + fade, t)
        if hi - right > 0:
            soft[b, right:hi] = _ramp(hi - right, False)
    return soft


def inject_source(x: mx.array, clean: mx.array, mask: mx.array, t: float, noise: mx.array) -> mx.array:
    """apply_repaint_step_injection: outside the window x becomes the source noised to t."""
    return mx.where(mask[:, :, None], x, t * noise + (1.0 - t) * clean)


def blend_boundary(x: mx.array, clean: mx.array, mask: np.ndarray, fade: int) -> mx.array:
    """apply_repaint_boundary_blend: soft * generated + (1 - soft) * source."""
    m = mx.array(soft_mask(mask, fade))[:, :, None]
    return m * x + (1.0 - m) * clean


def waveform_splice(
    pred: np.ndarray, src: np.ndarray, start: float, end: float, sample_rate: int, fade: float
) -> np.ndarray:
    """apply_repaint_waveform_splice: outside [start, end) the source waveform itself, `fade` seconds of
    linear crossfade at each edge; pred (B, C, n), src (C, m)."""
    n = min(pred.shape[-1], src.shape[-1])
    a = max(0, min(int(start * sample_rate), n))
    b = max(a, min(int(end * sample_rate), n))
    if a == 0 and b >= n:
        return pred
    fade_n = int(fade * sample_rate)
    mask = np.zeros(n, dtype=np.float32)
    mask[a:b] = 1.0
    if fade_n > 0:
        lo = max(a - fade_n, 0)
        if a - lo > 0:
            mask[lo:a] = _ramp(a - lo, True)
        hi = min(b + fade_n, n)
        if hi - b > 0:
            mask[b:hi] = _ramp(hi - b, False)
    out = pred.copy()
    out[..., :n] = mask * pred[..., :n] + (1.0 - mask) * src[None, :, :n]
    return out


def retake(noise: mx.array, other: mx.array, variance: float) -> mx.array:
    """Retake's variance-preserving blend: cos(v pi/2) noise + sin(v pi/2) other (v = 0: noise unchanged)."""
    if variance <= 0.0:
        return noise
    angle = variance * (math.pi / 2.0)
    return math.cos(angle) * noise + math.sin(angle) * other


def cover_start(schedule: Sequence[float], strength: float) -> int:
    """The index of the schedule's time nearest 1 - cover_noise_strength (ties: the first), where the
    renoised source starts."""
    level = 1.0 - strength
    values = [float(t) for t in schedule]
    nearest = min(values, key=lambda t: abs(t - level))
    return values.index(nearest)
