"""Inpainting regions of Stable Audio 3: the setting's text ("START:END,START:END"), and the mask
`StableAudioModel.generate` builds from `inpaint_mask_start_seconds` / `inpaint_mask_end_seconds` lists.

Mask convention (the reference's): 1 = keep the input audio, 0 = regenerate. Built over the generation's
`audio_sample_size` samples: ones, each region [int(start * sr), int(end * sr)) (clamped to the length) set
to 0, then everything from int(seconds_total * sr) on set to 0 (as training's random_inpaint_mask past the
real length), then taken to the latent frames by torch's nearest interpolation (frame i reads sample
floor(i * (N / L)), float32).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ..errors import UserError
from ..settings import named

Region = tuple[float, float | None]


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: '{text}' is not a number of seconds") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: '{text}' is not a number of seconds")
    return value


def parse_regions(value: str | Sequence[Sequence[float | None]], where: str | None = None) -> list[Region]:
    """ "1.5:3,4:" or [(1.5, 3), (4, None)] -> [(start, end or None)]; None = to the end of the clip.
    Errors name `where` (default: the setting, "--inpaint-regions (inpaint_regions)")."""
    where = where or named("inpaint_regions")
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise UserError(f"{where} is empty; give START:END seconds, e.g. 1.5:3")
        out: list[Region] = []
        for p in parts:
            if p.count(":") != 1:
                raise UserError(f"{where}: '{p}' is not START:END (seconds, e.g. 1.5:3)")
            a, b = (s.strip() for s in p.split(":"))
            out.append((_number(a, where), _number(b, where) if b else None))
        return out
    try:
        pairs = [tuple(r) for r in value]
    except TypeError:
        raise UserError(f"{where} must be text like '1.5:3,4:6' or a list of (start, end) pairs") from None
    out = []
    for r in pairs:
        ok = len(r) == 2 and all(
            v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v))
            for v in r
        )
        if not ok or r[0] is None:
            raise UserError(f"{where}: {r!r} is not a (start, end) pair of seconds")
        out.append((float(r[0]), None if r[1] is None else float(r[1])))
    if not out:
        raise UserError(f"{where} is empty; give at least one (start, end) region")
    return out


def check_regions(
    regions: list[Region], seconds: float, where: str | None = None
) -> list[tuple[float, float]]:
    """Each region inside the clip being generated: 0 <= start < end <= seconds (END None -> seconds)."""
    where = where or named("inpaint_regions")
    out = []
    for start, end in regions:
        end = seconds if end is None else end
        if not 0 <= start < end or end > seconds + 1e-9:
            raise UserError(
                f"{where}: {start:g}:{end:g} is outside the clip; regions need 0 <= START < END <= "
                f"{seconds:g} (the seconds generated)"
            )
        out.append((start, min(end, seconds)))
    return out


def sample_mask(
    regions: list[tuple[float, float]], seconds_total: float, sample_rate: int, n_samples: int
) -> np.ndarray:
    """The reference's inpaint mask over `n_samples` audio samples, float32 (1 keep, 0 regenerate)."""
    mask = np.ones(n_samples, np.float32)
    for start, end in regions:
        a = min(int(start * sample_rate), n_samples)
        b = min(int(end * sample_rate), n_samples)
        mask[a:b] = 0
    effective = int(seconds_total * sample_rate)
    if 0 < effective < n_samples:
        mask[effective:] = 0
    return mask


def nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="nearest") of a 1-D mask to `size` points."""
    n = mask.shape[-1]
    if size == n:
        return mask.copy()
    scale = np.float32(n) / np.float32(size)
    idx = np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64)
    return mask[..., np.minimum(idx, n - 1)]
