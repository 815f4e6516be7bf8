"""Rectified-flow sampling on a shifted linear-time schedule, in MLX.

Stability AI's newer rectified-flow sampling code (`inference/sampling.py` `sample_diffusion` +
`build_schedule`, `inference/distribution_shift.py`) differs from stable-audio-tools 0.0.19's `sample_rf`
(samplers.py) in:

- the schedule: t = linspace(sigma_max, 0, steps + 1) warped by a time shift (default: uniform in log-SNR
  between -6.2 and 2.0, whatever the length), then t[0] = sigma_max again. With sigma_max < 1 (audio-to-audio)
  the warp of t[1] can exceed sigma_max (0.9 -> 0.9885 at 8 steps): the schedule is not monotone there, and
  the reference runs it as is, so do we;
- rk4 evaluates its last stage at max(t_next, 1e-5) (samplers.rf_rk4 with t_floor) and runs on that schedule;
- dpmpp computes (-h).expm1() directly as (t_next - t) / ((1 - t_next) t) and clamps t, 1 - t at 1e-10, so
  its step after t = 1 is second order (0.0.19: log-SNR -inf there, i.e. first order): `rf_dpmpp_clamped`.

Euler and ping-pong are the same maths as 0.0.19's and are reused from samplers.py. The samplers have a
progress callback (samplers.StepInfo) and no inpainting hook: inpainting there is conditioning only.

Schedules are float32 numpy (the reference computes float32 tensors) and enter the graph as Python floats.
Only one schedule for the whole batch: the reference builds one per batch row from each row's length, but
the rows differ only for a length-dependent shift *and* rows of different lengths (`build_schedule` refuses
those; the default shift does not depend on the length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..errors import UserError
from . import samplers as S

_F = np.float32

OBJECTIVES = S.RF_OBJECTIVES
SAMPLER_NAMES = ("euler", "rk4", "dpmpp", "pingpong")
# sample_diffusion's choice when no sampler is given (its gradio UI offers pingpong alone for "rf_denoiser"
# and euler / rk4 / dpmpp for "rectified_flow"; sample_diffusion itself accepts all four for both).
DEFAULT_SAMPLERS = {"rf_denoiser": "pingpong", "rectified_flow": "euler"}
RK4_T_FLOOR = 1e-5  # the reference's clamp of rk4's last-stage time
_EPS = _F(1e-10)  # dpmpp's clamp of t and 1 - t


class TimeShift(Protocol):
    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------- shifts


@dataclass(frozen=True)
class IdentityShift:
    """Config type "none": t unchanged."""

    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray:
        return t


@dataclass(frozen=True)
class LogSNRShift:
    """Config type "logsnr": logsnr = end - t (end - start), t' = sigmoid(-logsnr), 0 and 1 kept; the start
    drops by `rate` per doubling of seq_len from `anchor_logsnr` at `anchor_length`."""

    anchor_length: int = 2000
    anchor_logsnr: float = -6.2
    rate: float = 1.0
    logsnr_end: float = 2.0

    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray:
        # Float32 like the reference's tensor path (the one generation takes: lengths come as a tensor).
        log2_ratio = np.log2(_F(seq_len) / _F(self.anchor_length))
        start = _F(self.anchor_logsnr) - _F(self.rate) * log2_ratio
        end = _F(self.logsnr_end)
        logsnr = end - t * (end - start)
        with np.errstate(over="ignore"):
            out = (_F(1) / (_F(1) + np.exp(logsnr))).astype(_F)  # sigmoid(-logsnr)
        return np.where(t <= 0, _F(0), np.where(t >= 1, _F(1), out)).astype(_F)


@dataclass(frozen=True)
class AlphaShift:
    """Config type "flux": t' = a t / (1 + (a - 1) t), a log-linear in seq_len from alpha_min at min_length
    to alpha_max at max_length (lengths clamped to that range)."""

    min_length: int = 256
    max_length: int = 4096
    alpha_min: float = 1.0
    alpha_max: float = 1.0

    def alpha(self, seq_len: int) -> float:
        lo, hi = math.log(self.min_length), math.log(self.max_length)
        if hi == lo:
            hi += 1e-8  # constant alpha, as the reference guards it
        la, lb = math.log(max(self.alpha_min, 1e-8)), math.log(max(self.alpha_max, 1e-8))
        frac = (math.log(min(max(seq_len, self.min_length), self.max_length)) - lo) / (hi - lo)
        return math.exp(la + frac * (lb - la))

    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray:
        a = _F(self.alpha(seq_len))
        return (a * t / (_F(1) + (a - _F(1)) * t)).astype(_F)


@dataclass(frozen=True)
class ClampedDistributionShift(S.DistributionShift):
    """Config type "full": samplers.DistributionShift with seq_len clamped to [min_length, max_length]."""

    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray:
        return super().time_shift(t, min(max(seq_len, self.min_length), self.max_length))


# The default when the model config has no `sampling_distribution_shift_options`: no length dependence.
DEFAULT_SHIFT = LogSNRShift(rate=0.0, anchor_logsnr=-6.2, logsnr_end=2.0)
SHIFT_TYPES = {
    "none": IdentityShift,
    "logsnr": LogSNRShift,
    "flux": AlphaShift,
    "full": ClampedDistributionShift,
}


def shift_from_options(options: dict | None) -> TimeShift:
    """The sampling shift of a model config's `sampling_distribution_shift_options` (None: DEFAULT_SHIFT).

    Keys as the reference's `_create_dist_shift`: "type" (default "full") and that class's arguments."""
    if options is None:
        return DEFAULT_SHIFT
    opts = dict(options)
    kind = opts.pop("type", "full")
    if kind not in SHIFT_TYPES:
        raise UserError(
            f"unknown sampling distribution shift type {kind!r}: expected one of {', '.join(SHIFT_TYPES)}"
        )
    try:
        return SHIFT_TYPES[kind](**opts)
    except TypeError as e:
        raise UserError(f"bad sampling_distribution_shift_options for type {kind!r}: {e}") from None


def length_free(shift: TimeShift | None) -> bool:
    """Whether the shift ignores seq_len (then one schedule serves every duration)."""
    if shift is None or isinstance(shift, IdentityShift):
        return True
    if isinstance(shift, LogSNRShift):
        return shift.rate == 0
    return isinstance(shift, AlphaShift) and shift.alpha_min == shift.alpha_max


def build_schedule(
    steps: int,
    sigma_max: float = 1.0,
    shift: TimeShift | None = DEFAULT_SHIFT,
    seq_len: int | Sequence[int] | None = None,
) -> np.ndarray:
    """`build_schedule` (include_endpoint): steps + 1 float32 values from sigma_max down to 0.

    seq_len: the latent length the shift sees, clamped to >= 1. Generation passes each row's
    ceil(int(seconds_total * sample_rate) / downsampling_ratio) (without the headroom); a sequence gives
    one length per row, which must yield one schedule. Only length-free shifts (DEFAULT_SHIFT) accept None."""
    if steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps}")
    t = S._linspace(sigma_max, 0.0, steps + 1)
    if shift is None:
        return t
    if seq_len is None:
        if not length_free(shift):
            raise ValueError(f"{type(shift).__name__} depends on the sequence length: pass seq_len")
        seq_len = 1
    lengths = [seq_len] if isinstance(seq_len, int) else list(seq_len)
    rows = [shift.time_shift(t, max(int(n), 1)) for n in lengths]
    if any(not np.array_equal(r, rows[0]) for r in rows[1:]):
        raise UserError(
            "this schedule shift depends on the length and the batch rows have different durations: "
            "generate them separately"
        )
    out = np.array(rows[0], _F)
    out[0] = sigma_max  # the start stays where sample_diffusion's init mix puts it
    return out


# ---------------------------------------------------------------------------------------------- samplers


def rf_dpmpp_clamped(
    model_fn: S.ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: S.NoiseFn | None = None,
    callback: S.Callback | None = None,
) -> mx.array:
    """`sample_flow_dpmpp` of the newer code: DPM-Solver++(2M) in the flow's log-SNR, with (-h).expm1()
    computed directly and t, 1 - t clamped at 1e-10 (first order on the first and the last step)."""

    def log_snr(u: np.float32) -> np.float32:
        return np.log(max(_F(1) - u, _EPS) / max(u, _EPS))

    n = len(t) - 1
    old = None
    for i in range(n):
        tc, tn = t[i], t[i + 1]
        den = x - float(tc) * model_fn(x, S._tvec(x, tc))
        coeff = (tn - tc) / (max(_F(1) - tn, _EPS) * max(tc, _EPS))  # = (-h).expm1()
        scale = float((_F(1) - tn) * coeff)
        ratio = float(tn / max(tc, _EPS))
        if old is None or tn == 0:
            x = ratio * x - scale * den
        else:
            r = (log_snr(tc) - log_snr(t[i - 1])) / (log_snr(tn) - log_snr(tc))
            a, b = _F(1) + _F(1) / (_F(2) * r), _F(1) / (_F(2) * r)
            x = ratio * x - scale * (float(a) * den - float(b) * old)
        old = den
        S._step(callback, i, n, tc, x, den)
    return x


def rf_rk4_clamped(
    model_fn: S.ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: S.NoiseFn | None = None,
    callback: S.Callback | None = None,
) -> mx.array:
    """`sample_rk4` of the newer code: samplers.rf_rk4 with its last stage at max(t_next, 1e-5)."""
    return S.rf_rk4(model_fn, x, t, noise_fn=noise_fn, callback=callback, t_floor=RK4_T_FLOOR)


SAMPLERS: dict[str, S.SamplerFn] = {
    "euler": S.rf_euler,
    "rk4": rf_rk4_clamped,
    "dpmpp": rf_dpmpp_clamped,
    "pingpong": S.rf_pingpong,
}
STOCHASTIC = frozenset({"pingpong"})


def default_sampler(objective: str) -> str:
    if objective not in DEFAULT_SAMPLERS:
        raise UserError(
            f"unknown diffusion objective {objective!r}: expected one of {', '.join(DEFAULT_SAMPLERS)}"
        )
    return DEFAULT_SAMPLERS[objective]


def sample_flow(
    model_fn: S.ModelFn,
    noise: mx.array,
    steps: int,
    *,
    objective: str,
    sampler: str | None = None,
    init_data: mx.array | None = None,
    init_noise_level: float = 1.0,
    shift: TimeShift | None = DEFAULT_SHIFT,
    seq_len: int | Sequence[int] | None = None,
    key: mx.array | None = None,
    noise_fn: S.NoiseFn | None = None,
    callback: S.Callback | None = None,
) -> mx.array:
    """`sample_diffusion` for "rectified_flow" / "rf_denoiser", from unit-variance `noise` (batch, C, T).

    model_fn(x, t) -> velocity at t of shape (batch,) (the DiT with its CFG). With `init_data`
    (audio-to-audio latents) sampling starts at sigma_max = init_noise_level from
    init * (1 - sigma_max) + noise * sigma_max; without it, init_noise_level is ignored (as in the
    reference). Ping-pong draws fresh noise each step: from `noise_fn` if given, else from `key`."""
    sampler = sampler or default_sampler(objective)
    default_sampler(objective)  # an explicit sampler still needs a rectified-flow objective
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    sigma_max = 1.0
    x = noise
    if init_data is not None:
        sigma_max = float(init_noise_level)
        if not 0 < sigma_max <= 1:
            raise UserError(f"init noise level must be in (0, 1], got {init_noise_level}")
        x = init_data * (1 - sigma_max) + noise * sigma_max
    t = build_schedule(steps, sigma_max, shift, seq_len)
    if noise_fn is None and sampler in STOCHASTIC:
        if key is None:
            raise ValueError(f"sampler {sampler!r} is stochastic: pass key= (or noise_fn=)")
        noise_fn = S.gaussian_noise(key, steps)
    return SAMPLERS[sampler](model_fn, x, t, noise_fn=noise_fn, callback=callback)
