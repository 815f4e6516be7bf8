"""ACE-Step 1.5's sampling schedules and its sampling loops (`generate_audio` of the turbo and base/SFT model
files), in MLX.

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

Sampler options (`SamplerOptions`, each off by default as upstream's, DCW included: see `sampler_options`):
- infer_method "sde": each step predicts x0 = x - v t and renoises it to the next time with fresh noise
  (t' noise + (1 - t') x0). The fresh noise comes from the caller (`step_noise(i)`: ours is drawn from the
  seed; the reference's `renoise` draws torch.randn_like from the global generator). Turbo renoises to the
  next schedule time and its last step returns x0 without a draw; base / SFT renoise to the UNSHIFTED time
  1 - (i + 1) / n (the reference's formula, whatever the shift), the last one to 0 (x0, after a draw).
- sampler_mode "heun": a predictor Euler step to the next time, a second model call there, the mean of the
  two velocities for the step (turbo's last step stays x0 = x - v t). The corrector's guidance is plain CFG
  (APG's momentum moves once a step) or ADG (plain CFG at t = 0). Heun does not combine with SDE (the
  reference falls back to Euler: refused here).
- ADG (`use_adg`, base / SFT with CFG): flow_guidance.adg in place of APG inside the CFG interval.
- velocity_norm_threshold > 0: v scaled down to at most threshold * |x| (norms over a row's T and C);
  velocity_ema_factor > 0: v <- (1 - f) v + f v_prev (the previous step's final velocity).
- dcw: after each step, the wavelet correction (diffusion/wavelet_correction.py) of x_next against the
  step's x0 prediction x - v t (v before Heun's averaging), at the step's current t.
Repaint's source re-injection and the cover's switch to the non-cover condition come in as `inject` /
`switch` (modes.py builds them): the switch at the start of its step, the injection after the step's update
and its DCW correction, at the time the step ended on (the SDE's renoise time; none after turbo's x0 step),
as the reference's loop orders them.
Not ported here: custom `timesteps` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..diffusion.flow_guidance import MomentumBuffer, adg, apg, cfg
from ..diffusion.wavelet_correction import DCW, DCW_MODES
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
StepNoise = Callable[[int], mx.array]  # SDE: step index -> fresh noise shaped like the latents
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


@dataclass(frozen=True)
class SamplerOptions:
    """The sampler options of `generate_audio` (module doc); the defaults are the reference's ODE Euler."""

    infer_method: str = "ode"  # "ode" | "sde"
    sampler_mode: str = "euler"  # "euler" | "heun"
    use_adg: bool = False
    velocity_norm_threshold: float = 0.0
    velocity_ema_factor: float = 0.0
    dcw: DCW | None = None

    def __post_init__(self):
        if self.infer_method not in ("ode", "sde") or self.sampler_mode not in ("euler", "heun"):
            raise UserError(f"unknown sampler {self.infer_method!r} / {self.sampler_mode!r}")
        if self.infer_method == "sde" and self.sampler_mode == "heun":
            raise UserError("sampler_mode heun does not combine with infer_method sde (use euler, or ode)")

    @property
    def heun(self) -> bool:
        return self.sampler_mode == "heun"

    def clamp(self, v: mx.array, x: mx.array) -> mx.array:
        """The velocity norm clamp (off at threshold 0): scale = min(1, thr (|x| + 1e-10) / (|v| + 1e-10))."""
        if self.velocity_norm_threshold <= 0.0:
            return v
        norm = lambda a: mx.sqrt(mx.sum(a * a, axis=(1, 2), keepdims=True))  # noqa: E731
        scale = self.velocity_norm_threshold * (norm(x) + 1e-10) / (norm(v) + 1e-10)
        return v * mx.minimum(scale, 1.0)

    def smooth(self, v: mx.array, prev: mx.array | None) -> mx.array:
        """The velocity EMA (off at factor 0, and at the first step)."""
        f = self.velocity_ema_factor
        return v if f <= 0.0 or prev is None else (1.0 - f) * v + f * prev


def sampler_options(values: dict, turbo: bool) -> SamplerOptions:
    """SamplerOptions from `generate`'s checked settings (family.py names, defaults filled), refusing what
    does not apply: ADG on turbo (no CFG there) or without guidance, Heun with SDE, a DCW strength changed
    from its default (upstream's, DCW's own) without DCW (the high band's outside "double", a basis with
    "pix")."""
    adg_on = values.get("guidance_method") == "adg"
    if adg_on and turbo:
        raise UserError(
            "guidance_method adg does not apply to a turbo checkpoint (guidance-distilled: no CFG)"
        )
    if adg_on and not (values.get("guidance_scale") or 1.0) > 1.0:
        raise UserError("guidance_method adg needs guidance_scale > 1 (it is a CFG guidance)")
    mode = values.get("dcw") or "off"
    needs = (("scaler", DCW_MODES), ("high_scaler", ("double",)), ("wavelet", ("low", "high", "double")))
    for name, modes in needs:
        key = f"dcw_{name}"
        if values.get(key, getattr(DCW, name)) != getattr(DCW, name) and mode not in modes:
            raise UserError(f"{key} needs dcw {' / '.join(modes)} (dcw is {mode})")
    dcw = None
    if mode != "off":
        dcw = DCW(mode, values["dcw_scaler"], values["dcw_high_scaler"], values.get("dcw_wavelet") or "haar")
    return SamplerOptions(
        values.get("infer_method") or "ode", values.get("sampler_mode") or "euler", adg_on,
        values.get("velocity_norm_threshold") or 0.0, values.get("velocity_ema_factor") or 0.0, dcw,
    )  # fmt: skip


Predict = Callable[[mx.array, np.float32, bool], mx.array]  # (x, t, corrector call?) -> guided velocity


def _loop(
    predict: Predict,
    x: mx.array,
    sched: np.ndarray,
    n_steps: int,
    opts: SamplerOptions,
    step_noise: StepNoise | None,
    sde_time: Callable[[int], float],
    x0_last: bool,
    on_step: Step | None,
    switch: tuple[int, Callable[[], None]] | None = None,
    inject: Inject | None = None,
) -> mx.array:
    """The step loop of both variants (module doc). `x0_last`: the last step returns x - v t (turbo).
    `switch` = (step, change): change() swaps the condition `predict` uses, at the start of that step."""
    if opts.infer_method == "sde" and step_noise is None:
        raise ValueError("infer_method sde needs step_noise")
    prev_v = None
    for i in range(n_steps):
        t = sched[i]
        if switch is not None and i == switch[0]:
            switch[1]()
        v = opts.smooth(opts.clamp(predict(x, t, False), x), prev_v)
        x_before, v_denoise = x, v
        t_after = None
        if x0_last and i == n_steps - 1:
            x = x - v * float(t)
        elif opts.infer_method == "sde":
            t_next = t_after = sde_time(i)
            x = t_next * step_noise(i) + (1.0 - t_next) * (x - v * float(t))
        else:
            t_next = sched[i + 1]
            t_after = float(t_next)
            dt = float(t - t_next)
            if opts.heun:
                x_pred = x - v * dt
                v2 = opts.clamp(predict(x_pred, t_next, True), x_pred)
                if opts.velocity_ema_factor > 0.0:
                    v2 = (1.0 - opts.velocity_ema_factor) * v2 + opts.velocity_ema_factor * v
                v = 0.5 * (v + v2)
            x = x - v * dt
        if opts.dcw is not None:
            x = opts.dcw.apply(x, x_before - v_denoise * float(t), float(t))
        prev_v = v
        if inject is not None and t_after is not None:
            x = inject(i, x, t_after)
        mx.eval(x)
        if on_step is not None:
            on_step(i, float(t))
    return x


def sample_turbo(
    model: AceStepDiTModel,
    noise: mx.array,
    context_latents: mx.array,
    condition: AceCondition | mx.array,
    schedule: np.ndarray,
    on_step: Step | None = None,
    options: SamplerOptions | None = None,
    step_noise: StepNoise | None = None,
    *,
    switch: Switch | None = None,
    inject: Inject | None = None,
) -> mx.array:
    """The turbo loop (no CFG) from `noise` (B, T, C) (or the renoised source of a cover): the generated
    latents (B, T, C). `switch` = (step, context, condition): from that step on, that condition
    (audio_cover_strength < 1); `inject(i, x, t_next)` after every step but the last (repaint)."""
    if not isinstance(condition, AceCondition):
        condition = model.condition(condition)
    b = noise.shape[0]
    sched = np.asarray(schedule, dtype=_F)
    now = {"context": context_latents, "condition": condition}

    def predict(x: mx.array, t: np.float32, corrector: bool) -> mx.array:
        return model(x, _times(t, b), now["context"], now["condition"])

    def sde_time(i: int) -> float:
        return float(sched[i + 1])

    def change() -> None:
        now["context"], now["condition"] = switch[1], model.condition(switch[2])

    opts = options or SamplerOptions()
    return _loop(
        predict, noise, sched, len(sched), opts, step_noise, sde_time, True, on_step,
        None if switch is None else (switch[0], change), inject,
    )  # fmt: skip


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
    options: SamplerOptions | None = None,
    step_noise: StepNoise | None = None,
    *,
    switch: Switch | None = None,
    inject: Inject | None = None,
) -> mx.array:
    """The base/SFT loop from `noise` (B, T, C) over `schedule` (n + 1 times, ending at 0), with APG (or
    ADG) guidance against the learned `null_condition_emb` (1, 1, E) when guidance_scale > 1. `switch` /
    `inject` as in `sample_turbo` (inject after every step; the momentum buffer runs on across a switch)."""
    opts = options or SamplerOptions()
    b = noise.shape[0]
    do_cfg = guidance_scale > 1.0

    def pair(context: mx.array, enc: mx.array) -> tuple[mx.array, AceCondition]:
        if not do_cfg:
            return context, model.condition(enc)
        null = mx.broadcast_to(null_condition_emb.astype(enc.dtype), enc.shape)
        return mx.concatenate([context, context], axis=0), model.condition(
            mx.concatenate([enc, null], axis=0)
        )

    now = dict(zip(("context", "condition"), pair(context_latents, encoder_hidden_states), strict=True))

    def change() -> None:
        now["context"], now["condition"] = pair(switch[1], switch[2])

    buffer = MomentumBuffer()
    sched = np.asarray(schedule, dtype=_F)
    n = len(sched) - 1

    def predict(x: mx.array, t: np.float32, corrector: bool) -> mx.array:
        xin = mx.concatenate([x, x], axis=0) if do_cfg else x
        v = model(xin, _times(t, xin.shape[0]), now["context"], now["condition"])
        if not do_cfg:
            return v
        cond, uncond = v[:b], v[b:]
        if not in_interval(t, cfg_interval):
            return cond
        if opts.use_adg:  # the corrector's ADG would divide by t = 0
            return (
                adg(x, cond, uncond, float(t), guidance_scale) if t > 0 else cfg(cond, uncond, guidance_scale)
            )
        # the corrector uses plain CFG: APG's momentum moves once a step
        return (
            cfg(cond, uncond, guidance_scale)
            if corrector
            else apg(cond, uncond, guidance_scale, buffer, (1,))
        )

    def sde_time(i: int) -> float:
        return 1.0 - float(i + 1) / n  # unshifted, as the reference

    return _loop(
        predict, noise, sched, n, opts, step_noise, sde_time, False, on_step,
        None if switch is None else (switch[0], change), inject,
    )  # fmt: skip
