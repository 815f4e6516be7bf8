"""ACE-Step 1.5's sampling schedules and its ODE Euler loops (`generate_audio` of the turbo and base/SFT
model files), in MLX.

Flow convention: x_t = t noise + (1 - t) x_0, the DiT predicts v = noise - x_0, Euler x <- x - v (t - t_next).
- turbo (guidance-distilled, no CFG): with `infer_steps`, s_i = 1 - i/n (n clamped to 20) mapped by
  t = shift s / (1 + (shift - 1) s) in float64, one model call per t; without it, the fixed 8-step table of
  the nearest of shift 1 / 2 / 3 (ties to the smaller, as `min` picks). The last step returns x - v t_last.
- base / SFT: t = linspace(1, 0, n + 1) in float32 (torch's CPU formula, below), the same shift map in float32
  when shift != 1, Euler down to 0. CFG when guidance_scale > 1: one batch [cond, null condition], APG
  (momentum -0.75, norm clip 2.5 over the time axis) at the steps whose t lies in `cfg_interval`, compared in
  float32 as the reference compares its float32 tensor with Python floats; outside it the conditional
  prediction alone.
The schedules are float32 numpy arrays (the reference runs float32 tensors); the step sizes are the float32
differences of consecutive values, as the reference's.
Repaint's source re-injection and the cover's switch to the non-cover condition come in as `inject` /
`switch` (modes.py builds them).
Not ported here: custom `timesteps` lists, SDE, Heun, velocity clamp / EMA, DCW, ADG (options that default
off; DCW is measured off in the parity tests).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np

from ..diffusion.flow_guidance import MomentumBuffer, apg
from ..errors import UserError
from .dit import AceCondition, AceStepDiTModel

_F = np.float32
MAX_TURBO_STEPS = 20
# generate_audio's SHIFT_TIMESTEPS (fix_nfe 8, the final 0 left out).
TURBO_TABLES: dict[float, tuple[float, ...]] = {
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
    2.0: (
        1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693, 0.6666666666666666,
        0.5454545454545454, 0.4, 0.2222222222222222,
    ),
    3.0: (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3),
}  # fmt: skip
Step = Callable[[int, float], None]  # progress callback: (step index, t)
Switch = tuple[int, mx.array, mx.array]  # (first step, context latents, packed condition) after a switch
Inject = Callable[[int, mx.array, float], mx.array]  # (step index, x after the step, t after it) -> x


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < float("inf"):
        raise UserError(f"shift must be a positive number, not {shift!r}")
    return float(shift)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"infer_steps must be an integer >= 1, not {steps!r}")
    return steps


def turbo_schedule(shift: float = 3.0, infer_steps: int | None = None) -> np.ndarray:
    """The t of each turbo model call (float32), without the final 0."""
    shift = _check_shift(shift)
    if infer_steps is None:
        nearest = min(TURBO_TABLES, key=lambda s: abs(s - shift))
        return np.array(TURBO_TABLES[nearest], dtype=_F)
    n = min(_check_steps(infer_steps), MAX_TURBO_STEPS)
    raw = [1.0 - i / n for i in range(n)]
    if shift != 1.0:
        raw = [shift * t / (1.0 + (shift - 1.0) * t) for t in raw]
    return np.array(raw, dtype=_F)


def torch_linspace_1_0(n: int) -> np.ndarray:
    """torch.linspace(1, 0, n + 1) (float32, CPU) exactly: step = -1/n in float32; the first half
    start + step i, the second half end - step (n - i), each rounded once (the compiled kernel fuses the
    multiply-add; float64 holds the product exactly, so rounding the float64 result is that single rounding).
    Checked against torch for every n < 2000 in the tests."""
    steps = n + 1
    step = np.float64(_F(-1.0) / _F(n))
    i = np.arange(steps, dtype=np.float64)
    head = (step * i + 1.0).astype(_F)
    tail = (-step * (n - i)).astype(_F)
    return np.where(np.arange(steps) < steps // 2, head, tail)


def base_schedule(infer_steps: int = 30, shift: float = 1.0) -> np.ndarray:
    """The base/SFT schedule: n + 1 float32 times from 1 to 0."""
    t = torch_linspace_1_0(_check_steps(infer_steps))
    shift = _check_shift(shift)
    if shift != 1.0:  # separate float32 ops, as torch's elementwise kernels
        num = (_F(shift) * t).astype(_F)
        den = (_F(1.0) + (_F(shift - 1.0) * t).astype(_F)).astype(_F)
        t = (num / den).astype(_F)
    return t


def in_interval(t: float, interval: tuple[float, float]) -> bool:
    """`t_curr >= start and t_curr <= end` with t_curr a float32 tensor: the Python floats become float32."""
    t32 = _F(t)
    return bool(_F(interval[0]) <= t32 <= _F(interval[1]))


def _times(t: float, batch: int) -> mx.array:
    return mx.full((batch,), _F(t), dtype=mx.float32)


def sample_turbo(
    model: AceStepDiTModel,
    noise: mx.array,
    context_latents: mx.array,
    condition: AceCondition | mx.array,
    schedule: np.ndarray,
    on_step: Step | None = None,
    *,
    switch: Switch | None = None,
    inject: Inject | None = None,
) -> mx.array:
    """The turbo loop (ODE Euler, no CFG) from `noise` (B, T, C) (or the renoised source of a cover): the
    generated latents (B, T, C). `switch` = (step, context, condition): from that step on, that condition
    (audio_cover_strength < 1); `inject(i, x, t_next)` after every step but the last (repaint)."""
    if not isinstance(condition, AceCondition):
        condition = model.condition(condition)
    x, b = noise, noise.shape[0]
    sched = np.asarray(schedule, dtype=_F)
    for i, t in enumerate(sched):
        if switch is not None and i == switch[0]:
            context_latents, condition = switch[1], model.condition(switch[2])
        v = model(x, _times(t, b), context_latents, condition)
        if i == len(sched) - 1:
            x = x - v * float(t)
        else:
            x = x - v * float(t - sched[i + 1])
            if inject is not None:
                x = inject(i, x, float(sched[i + 1]))
        mx.eval(x)
        if on_step is not None:
            on_step(i, float(t))
    return x


def sample_base(
    model: AceStepDiTModel,
    noise: mx.array,
    context_latents: mx.array,
    encoder_hidden_states: mx.array,
    null_condition_emb: mx.array,
    schedule: np.ndarray,
    guidance_scale: float = 7.0,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    on_step: Step | None = None,
    *,
    switch: Switch | None = None,
    inject: Inject | None = None,
) -> mx.array:
    """The base/SFT loop (ODE Euler) from `noise` (B, T, C) over `schedule` (n + 1 times, ending at 0), with
    APG guidance against the learned `null_condition_emb` (1, 1, E) when guidance_scale > 1. `switch` /
    `inject` as in `sample_turbo` (inject after every step; the momentum buffer runs on across a switch)."""
    b = noise.shape[0]
    do_cfg = guidance_scale > 1.0

    def pair(context: mx.array, enc: mx.array) -> tuple[mx.array, AceCondition]:
        if not do_cfg:
            return context, model.condition(enc)
        null = mx.broadcast_to(null_condition_emb.astype(enc.dtype), enc.shape)
        return mx.concatenate([context, context], axis=0), model.condition(
            mx.concatenate([enc, null], axis=0)
        )

    context, condition = pair(context_latents, encoder_hidden_states)
    buffer = MomentumBuffer()
    x = noise
    sched = np.asarray(schedule, dtype=_F)
    for i in range(len(sched) - 1):
        t, t_next = sched[i], sched[i + 1]
        if switch is not None and i == switch[0]:
            context, condition = pair(switch[1], switch[2])
        xin = mx.concatenate([x, x], axis=0) if do_cfg else x
        v = model(xin, _times(t, xin.shape[0]), context, condition)
        if do_cfg:
            cond, uncond = v[:b], v[b:]
            if in_interval(t, cfg_interval):
                v = apg(cond, uncond, guidance_scale, buffer, axes=(1,))
            else:
                v = cond
        x = x - v * float(t - t_next)
        if inject is not None:
            x = inject(i, x, float(t_next))
        mx.eval(x)
        if on_step is not None:
            on_step(i, float(t))
    return x
