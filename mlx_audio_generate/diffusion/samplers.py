"""Diffusion samplers of stable-audio-tools 0.0.19 (`inference/sampling.py`) and k-diffusion 0.1.1, in MLX.

Trajectory-identical to the references given the same initial and per-step noise. Two families:

- rectified flow (`diffusion_objective` "rectified_flow" / "rf_denoiser", e.g. stable-audio-open-small):
  `model_fn(x, t)` returns the flow velocity v, the clean estimate is `x - t * v`; time runs from
  t = sigma_max (<= 1) down to 0 (`sample_rf`).
- v-objective ("v", e.g. stable-audio-open-1.0): `model_fn(x, t)` returns v; k-diffusion's VDenoiser turns it
  into a denoiser over sigma in [sigma_min, sigma_max] (`sample_k`).

Schedules and per-step scalars are computed in float32 numpy with the references' formulas (torch computes
them as float32 tensors) and enter the MLX graph as Python floats, so `x` keeps its dtype. `x` is
(batch, channels, length) like the reference; only `DistributionShift` reads the layout (length: last axis).

The references draw per-step noise from torch's global generator (ping-pong) or a torchsde Brownian tree
(dpmpp SDE samplers). Brownian increments over disjoint intervals, normalised as k-diffusion does, are i.i.d.
N(0, 1), so the default here draws i.i.d. standard normals from an explicit MLX key: the same distribution,
not the same bits. Parity tests inject the reference's noise through `noise_fn`.

Speed: the default samplers' step arithmetic and noise draw are sampler_steps.py's fused functions
(compiled on the GPU, the same values); without a callback one step is queued ahead (`_LookAhead`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import UserError
from . import inpaint
from . import sampler_steps as fs

ModelFn = Callable[[mx.array, mx.array], mx.array]  # (x, t of shape (batch,), float32) -> prediction
DenoiserFn = Callable[[mx.array, np.float32], mx.array]  # (x, sigma) -> clean estimate
NoiseFn = Callable[[int, tuple[int, ...]], mx.array]  # (step index, shape) -> unit-variance noise
# (step index, sigma, x) -> the x the step continues from: where k-diffusion's callback may rewrite x (after
# the model call and Euler/Heun's derivative, before the update); inpainting re-pins the kept frames there.
StepHook = Callable[[int, np.float32, mx.array], mx.array]
Callback = Callable[["StepInfo"], None]
SamplerFn = Callable[..., mx.array]

_F = np.float32


# stable-audio-open-1.0's model card (sample_k's own defaults are 0.01 / 100 / dpmpp-2m-sde).
V_SIGMA_MIN = 0.3
V_SIGMA_MAX = 500.0
V_RHO = 1.0

RF_OBJECTIVES = ("rectified_flow", "rf_denoiser")
# What stable-audio-tools' gradio interface preselects per objective (the model cards agree).
DEFAULT_SAMPLERS = {"v": "dpmpp-3m-sde", "rf_denoiser": "pingpong", "rectified_flow": "euler"}
STOCHASTIC = frozenset({"pingpong", "dpmpp-2m-sde", "dpmpp-3m-sde"})


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step (e.g. to draw a progress bar)."""

    i: int  # index of the step just taken, 0-based
    steps: int
    sigma: float  # noise level at the start of the step (t for rectified flow)
    x: mx.array  # state after the step
    denoised: mx.array  # the model's clean estimate at the start of the step


@dataclass(frozen=True)
class DistributionShift:
    """stable-audio-tools' `DistributionShift` (model config `distribution_shift_options`)."""

    base_shift: float = 0.5
    max_shift: float = 1.15
    max_length: int = 4096
    min_length: int = 256
    use_sine: bool = False

    def time_shift(self, t: np.ndarray, seq_len: int) -> np.ndarray:
        span = (
            (self.max_shift - self.base_shift)
            * (seq_len - self.min_length)
            / (self.max_length - self.min_length)
        )
        em = _F(math.exp(-(self.base_shift + span)))
        with np.errstate(divide="ignore"):  # t = 1 maps to 1 through inf, as in torch
            out = _F(1) - em / (em + (_F(1) / (_F(1) - t) - _F(1)) ** _F(1.0))
        if self.use_sine:
            out = np.sin(out * _F(math.pi) / _F(2))
        return out.astype(_F)


# ---------------------------------------------------------------------------------------------- schedules


def _linspace(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace in float32 (its elementwise formula; torch's CPU SIMD path may differ by 1 ulp)."""
    if n == 1:
        return np.array([start], _F)
    s, e = _F(start), _F(end)
    step = (e - s) / _F(n - 1)
    i = np.arange(n, dtype=_F)
    # Symmetric from both ends, like torch, so that the last value is exactly `end`.
    return np.where(np.arange(n) < n // 2, s + step * i, e - step * (_F(n - 1) - i)).astype(_F)


def rf_schedule(steps: int, sigma_max: float = 1.0) -> np.ndarray:
    """`sample_rf`'s t (steps + 1 values): logSNR linspace(-6, 2), t[0] = sigma_max, t[-1] = 0.

    Used by euler, dpmpp and pingpong. A sigma_max < 1 (init audio) starts the logSNR at its own value."""
    sigma_max = min(sigma_max, 1.0)
    logsnr_max = math.log((1 - sigma_max) / sigma_max + 1e-6) if sigma_max < 1 else -6.0
    logsnr = _linspace(logsnr_max, 2.0, steps + 1)
    with np.errstate(over="ignore"):
        t = (_F(1) / (_F(1) + np.exp(logsnr))).astype(_F)  # sigmoid(-logsnr)
    t[0] = sigma_max
    t[-1] = 0
    return t


def rf_linear_schedule(
    steps: int, sigma_max: float = 1.0, dist_shift: DistributionShift | None = None, seq_len: int = 0
) -> np.ndarray:
    """rk4's t: `sample_rf` calls `sample_rk4` with `steps`, not its logSNR t, so rk4 alone runs on
    linspace(sigma_max, 0) and alone honours the model's distribution shift. Reproduced as is."""
    t = _linspace(min(sigma_max, 1.0), 0.0, steps + 1)
    return dist_shift.time_shift(t, seq_len) if dist_shift is not None else t


def polyexponential_sigmas(
    steps: int, sigma_min: float = V_SIGMA_MIN, sigma_max: float = V_SIGMA_MAX, rho: float = V_RHO
) -> np.ndarray:
    """k-diffusion's `get_sigmas_polyexponential` (steps values, then a 0): polynomial in log sigma."""
    ramp = _linspace(1.0, 0.0, steps) ** _F(rho)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    sigmas = np.exp(ramp * _F(hi - lo) + _F(lo)).astype(_F)
    return np.append(sigmas, _F(0))


# ------------------------------------------------------------------------------------------------ helpers


def _tvec(x: mx.array, t: np.float32) -> mx.array:
    # from host memory (mx.full would be one more kernel a step)
    return mx.array(np.full((x.shape[0],), t, dtype=_F))


class _LookAhead:
    """What `sample` passes for "no callback": each step is scheduled (`mx.async_eval`) and the one before
    it waited for, so the next step's graph is built and queued while the device still computes this one,
    and at most two steps are in flight (memory)."""

    def __init__(self) -> None:
        self.prev: list[mx.array] = []

    def advance(self, *arrays: mx.array) -> None:
        mx.async_eval(*arrays)
        mx.eval(self.prev)
        self.prev = list(arrays)


def _step(callback: Callback | None, i: int, n: int, sigma: np.float32, x: mx.array, den: mx.array) -> None:
    """Bound the lazy graph to one step (memory); with a callback (progress shows real time) the step is
    evaluated before it runs."""
    if isinstance(callback, _LookAhead):
        callback.advance(x, den)
        return
    mx.eval(x, den)
    if callback is not None:
        callback(StepInfo(i, n, float(sigma), x, den))


def _noise(noise_fn: NoiseFn | None, i: int, x: mx.array) -> mx.array:
    if noise_fn is None:
        raise ValueError("this sampler is stochastic: pass noise_fn (see gaussian_noise)")
    return noise_fn(i, tuple(x.shape)).astype(x.dtype)


def _hook(hook: StepHook | None, i: int, sigma: np.float32, x: mx.array) -> mx.array:
    return x if hook is None else hook(i, sigma, x)


def gaussian_noise(key: mx.array, steps: int) -> NoiseFn:
    """Default per-step noise: i.i.d. N(0, 1), one subkey per step, so a key fixes the whole trajectory."""
    keys = mx.random.split(key, max(steps, 1))
    return lambda i, shape: fs.normal(keys[i], shape)


def v_denoiser(model_fn: ModelFn) -> DenoiserFn:
    """k-diffusion's VDenoiser (sigma_data = 1): c_skip * x + c_out * v(c_in * x, atan(sigma) * 2 / pi)."""

    def denoise(x: mx.array, sigma: np.float32) -> mx.array:
        s2 = sigma * sigma + _F(1)
        root = np.sqrt(s2)
        c_skip, c_out, c_in = _F(1) / s2, -sigma * _F(1) / root, _F(1) / root
        t = np.arctan(sigma) / _F(math.pi) * _F(2)
        v = model_fn(fs.scale(x, fs.scalar(c_in, x)), _tvec(x, t))
        return fs.v_out(v, x, fs.scalar(c_out, v), fs.scalar(c_skip, x))

    return denoise


# ------------------------------------------------------------------------------- rectified flow samplers
# Each takes model_fn (velocity), x (already at t[0]) and the schedule t (steps + 1 values down to 0).


def rf_euler(
    model_fn: ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> mx.array:
    """`sample_discrete_euler`."""
    n = len(t) - 1
    for i in range(n):
        dt = t[i + 1] - t[i]
        v = model_fn(x, _tvec(x, t[i]))
        den = x - float(t[i]) * v
        x = x + float(dt) * v
        _step(callback, i, n, t[i], x, den)
    return x


def rf_rk4(
    model_fn: ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    t_floor: float = 0.0,
) -> mx.array:
    """`sample_rk4` (pass `rf_linear_schedule`, which is what the reference uses for it).

    t_floor > 0 evaluates the last stage at max(t[i + 1], t_floor) instead of t[i + 1] (newer references
    clamp it so the model never sees t = 0); the update itself still uses the unclamped step."""
    n = len(t) - 1
    for i in range(n):
        tc, tp = t[i], t[i + 1]
        dt = tp - tc
        half = float(dt / _F(2))
        tm = _F(tc + dt / _F(2))
        k1 = model_fn(x, _tvec(x, tc))
        k2 = model_fn(x + half * k1, _tvec(x, tm))
        k3 = model_fn(x + half * k2, _tvec(x, tm))
        k4 = model_fn(x + float(dt) * k3, _tvec(x, max(tp, _F(t_floor)) if t_floor > 0 else tp))
        den = x - float(tc) * k1
        x = x + float(dt / _F(6)) * (k1 + 2 * k2 + 2 * k3 + k4)
        _step(callback, i, n, tc, x, den)
    return x


def rf_dpmpp(
    model_fn: ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> mx.array:
    """`sample_flow_dpmpp`: DPM-Solver++(2M) in the flow's logSNR."""

    def log_snr(u: np.float32) -> np.float32:
        with np.errstate(divide="ignore"):  # t = 1 -> -inf, t = 0 -> +inf, as in torch
            return np.log((_F(1) - u) / u)

    n = len(t) - 1
    old = None
    for i in range(n):
        tc, tn = t[i], t[i + 1]
        den = x - float(tc) * model_fn(x, _tvec(x, tc))
        alpha = _F(1) - tn
        h = log_snr(tn) - log_snr(tc)
        with np.errstate(divide="ignore", invalid="ignore"):
            if old is None or tn == 0:
                x = float(tn / tc) * x - float(alpha * np.expm1(-h)) * den
            else:
                r = (log_snr(tc) - log_snr(t[i - 1])) / h
                a, b = _F(1) + _F(1) / (_F(2) * r), _F(1) / (_F(2) * r)
                x = float(tn / tc) * x - float(alpha * np.expm1(-h)) * (float(a) * den - float(b) * old)
        old = den
        _step(callback, i, n, tc, x, den)
    return x


def rf_pingpong(
    model_fn: ModelFn,
    x: mx.array,
    t: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> mx.array:
    """`sample_flow_pingpong` (distilled models): jump to the clean estimate, re-noise to t[i + 1]."""
    n = len(t) - 1
    for i in range(n):
        tc, tn = t[i], t[i + 1]
        v = model_fn(x, _tvec(x, tc))
        # The reference draws noise for the last step too but scales it by t = 0: skipping it is exact.
        if tn != 0:
            den, x = fs.pingpong(
                x, v, _noise(noise_fn, i, x), fs.scalar(tc, x), fs.scalar(_F(1) - tn, x), fs.scalar(tn, x)
            )
        else:
            den = x = fs.rf_denoised(x, v, fs.scalar(tc, x))
        _step(callback, i, n, tc, x, den)
    return x


# ------------------------------------------------------------------------------------ k-diffusion samplers
# Each takes a denoiser (v_denoiser(model_fn)), x (already noise * sigmas[0]) and sigmas (ending in 0), and
# an optional StepHook run where k-diffusion runs its callback (the reference's masked sampling uses it).


def k_euler(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    hook: StepHook | None = None,
) -> mx.array:
    """k-diffusion `sample_euler` (no churn). Not offered by `sample_k`; same schedule and scaling."""
    n = len(sigmas) - 1
    for i in range(n):
        s = sigmas[i]
        den = denoiser(x, s)
        d = (x - den) / float(s)
        x = _hook(hook, i, s, x)
        x = x + d * float(sigmas[i + 1] - s)
        _step(callback, i, n, s, x, den)
    return x


def k_heun(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    hook: StepHook | None = None,
) -> mx.array:
    """k-diffusion `sample_heun` (no churn; Euler on the last step)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, sn = sigmas[i], sigmas[i + 1]
        den = denoiser(x, s)
        d = (x - den) / float(s)
        x = _hook(hook, i, s, x)
        dt = float(sn - s)
        if sn == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = (x2 - denoiser(x2, sn)) / float(sn)
            x = x + (d + d2) / 2 * dt
        _step(callback, i, n, s, x, den)
    return x


def dpmpp_2m(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    hook: StepHook | None = None,
) -> mx.array:
    """k-diffusion `sample_dpmpp_2m`."""
    n = len(sigmas) - 1
    old = None
    with np.errstate(divide="ignore"):  # -log(0) = inf on the last step, as in torch
        lam = -np.log(sigmas)
    for i in range(n):
        den = denoiser(x, sigmas[i])
        x = _hook(hook, i, sigmas[i], x)
        h = lam[i + 1] - lam[i]
        ratio = float(np.exp(-lam[i + 1]) / np.exp(-lam[i]))
        if old is None or sigmas[i + 1] == 0:
            x = ratio * x - float(np.expm1(-h)) * den
        else:
            r = (lam[i] - lam[i - 1]) / h
            a, b = _F(1) + _F(1) / (_F(2) * r), _F(1) / (_F(2) * r)
            x = ratio * x - float(np.expm1(-h)) * (float(a) * den - float(b) * old)
        old = den
        _step(callback, i, n, sigmas[i], x, den)
    return x


def dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    hook: StepHook | None = None,
) -> mx.array:
    """k-diffusion `sample_dpmpp_2m_sde` (eta 1, midpoint, s_noise 1)."""
    n = len(sigmas) - 1
    old = h_last = None
    for i in range(n):
        s, sn = sigmas[i], sigmas[i + 1]
        den = denoiser(x, s)
        x = _hook(hook, i, s, x)
        if sn == 0:
            x = den  # final denoising step
        else:
            h = np.log(s) - np.log(sn)  # (-log sn) - (-log s)
            eta_h = _F(1.0) * h
            a, b = fs.scalar(sn / s * np.exp(-eta_h), x), fs.scalar(-np.expm1(-h - eta_h), x)
            noise = _noise(noise_fn, i, x)
            ns = (fs.scalar(sn, x), fs.scalar(np.sqrt(-np.expm1(_F(-2) * eta_h)), x))
            if old is None:
                x = fs.sde2_first(x, den, noise, a, b, *ns)
            else:
                r = h_last / h
                x = fs.sde2_next(
                    x, den, old, noise, a, b, fs.scalar(_F(0.5) * -np.expm1(-h - eta_h) * (_F(1) / r), x), *ns
                )
            h_last = h
        old = den
        _step(callback, i, n, s, x, den)
    return x


def dpmpp_3m_sde(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    hook: StepHook | None = None,
) -> mx.array:
    """k-diffusion `sample_dpmpp_3m_sde` (eta 1, s_noise 1): stable-audio-open-1.0's sampler."""
    n = len(sigmas) - 1
    den_1 = den_2 = None
    h = h_1 = h_2 = None
    for i in range(n):
        s, sn = sigmas[i], sigmas[i + 1]
        den = denoiser(x, s)
        x = _hook(hook, i, s, x)
        if sn == 0:
            x = den  # final denoising step
        else:
            h = np.log(s) - np.log(sn)
            h_eta = h * _F(2.0)  # h * (eta + 1)
            a, b = fs.scalar(np.exp(-h_eta), x), fs.scalar(-np.expm1(-h_eta), x)
            phi_2 = np.expm1(-h_eta) / h_eta + _F(1)
            noise = _noise(noise_fn, i, x)
            ns = (fs.scalar(sn, x), fs.scalar(np.sqrt(-np.expm1(_F(-2) * h * _F(1.0))), x))
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                phi_3 = phi_2 / h_eta - _F(0.5)
                rs = (
                    fs.scalar(r0, x),
                    fs.scalar(r1, x),
                    fs.scalar(r0 + r1, x),
                    fs.scalar(phi_2, x),
                    fs.scalar(phi_3, x),
                )
                x = fs.sde3_third(x, den, den_1, den_2, noise, a, b, *rs, *ns)
            elif h_1 is not None:
                x = fs.sde3_second(
                    x, den, den_1, noise, a, b, fs.scalar(phi_2, x), fs.scalar(h_1 / h, x), *ns
                )
            else:
                x = fs.sde3_first(x, den, noise, a, b, *ns)
        den_1, den_2 = den, den_1
        h_1, h_2 = h, h_1
        _step(callback, i, n, s, x, den)
    return x


# ---------------------------------------------------------------------------------------------- registry

SAMPLERS: dict[str, dict[str, SamplerFn]] = {
    "rf": {"euler": rf_euler, "rk4": rf_rk4, "dpmpp": rf_dpmpp, "pingpong": rf_pingpong},
    "v": {
        "dpmpp-3m-sde": dpmpp_3m_sde,
        "dpmpp-2m-sde": dpmpp_2m_sde,
        "dpmpp-2m": dpmpp_2m,
        "k-heun": k_heun,
        "euler": k_euler,
    },
}


def objective_family(objective: str) -> str:
    """'rf' for "rectified_flow" / "rf_denoiser", 'v' for "v"; UserError otherwise."""
    if objective == "v":
        return "v"
    if objective in RF_OBJECTIVES:
        return "rf"
    raise UserError(
        f"unknown diffusion objective {objective!r}: expected 'v', 'rectified_flow' or 'rf_denoiser'"
    )


def sampler_names(objective: str) -> list[str]:
    return list(SAMPLERS[objective_family(objective)])


def default_sampler(objective: str) -> str:
    objective_family(objective)
    return DEFAULT_SAMPLERS[objective]


def check_sampler(objective: str, sampler: str) -> None:
    """UserError if `sampler` does not belong to the model's objective."""
    names = sampler_names(objective)
    if sampler not in names:
        raise UserError(
            f"sampler {sampler!r} does not fit this model (diffusion objective {objective!r}); "
            f"choose one of: {', '.join(names)}"
        )


def check_inpaint(objective: str) -> None:
    """UserError unless the objective has the reference's masked sampling (k-diffusion, i.e. "v")."""
    if objective_family(objective) != "v":
        raise UserError(
            f"inpainting needs a v-objective model (this one is {objective!r}): "
            "stable-audio-tools' masked sampling exists only for its k-diffusion samplers"
        )


def sample(
    model_fn: ModelFn,
    noise: mx.array,
    steps: int,
    *,
    objective: str,
    sampler: str | None = None,
    sigma_min: float = V_SIGMA_MIN,
    sigma_max: float | None = None,
    rho: float = V_RHO,
    init_data: mx.array | None = None,
    inpaint_mask: np.ndarray | None = None,
    inpaint_noise_fn: NoiseFn | None = None,
    dist_shift: DistributionShift | None = None,
    key: mx.array | None = None,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> mx.array:
    """Sample like `sample_k` (objective "v") or `sample_rf` (rectified flow) from unit-variance `noise`.

    model_fn(x, t) -> v is the DiT (with CFG) at t of shape (batch,). sigma_max defaults to 500 (v) / 1 (rf);
    with `init_data` (audio-to-audio latents) pass sigma_max = init_noise_level, as the reference does.
    sigma_min and rho only apply to v. Stochastic samplers need `key` (or `noise_fn`, which wins).

    Inpainting (v only): `init_data` plus `inpaint_mask`, the soft mask over latent frames of
    `inpaint.build_mask`, samples as stable-audio-tools 0.0.16's `sample_k` with a mask (see inpaint.py);
    `inpaint_noise_fn` gives the per-step noise that re-noises the input (its `torch.randn_like`)."""
    if steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps}")
    family = objective_family(objective)
    sampler = sampler or default_sampler(objective)
    check_sampler(objective, sampler)
    hook = None
    if inpaint_mask is not None:
        check_inpaint(objective)
        if init_data is None or inpaint_noise_fn is None:
            raise ValueError("inpainting needs init_data and inpaint_noise_fn")
    if noise_fn is None and sampler in STOCHASTIC:
        if key is None:
            raise ValueError(f"sampler {sampler!r} is stochastic: pass key= (or noise_fn=)")
        noise_fn = gaussian_noise(key, steps)
    fn = SAMPLERS[family][sampler]
    callback = callback or _LookAhead()

    if family == "v":
        sigma_max = V_SIGMA_MAX if sigma_max is None else sigma_max
        if not (sigma_min > 0 and sigma_max > 0):
            raise UserError(f"sigma_min and sigma_max must be positive, got {sigma_min} and {sigma_max}")
        sigmas = polyexponential_sigmas(steps, sigma_min, sigma_max, rho)
        x = noise * float(sigmas[0])
        if inpaint_mask is not None:
            x = inpaint.masked_start(init_data, x, inpaint_mask, steps)
            hook = inpaint.renoise_hook(init_data, inpaint_mask, steps, inpaint_noise_fn)
        elif init_data is not None:
            x = init_data + x
        return fn(v_denoiser(model_fn), x, sigmas, noise_fn=noise_fn, callback=callback, hook=hook)

    sigma_max = min(1.0 if sigma_max is None else sigma_max, 1.0)
    if not sigma_max > 0:
        raise UserError(f"sigma_max (init noise level) must be in (0, 1] for rectified flow, got {sigma_max}")
    if sampler == "rk4":
        t = rf_linear_schedule(steps, sigma_max, dist_shift, noise.shape[-1])
    else:
        t = rf_schedule(steps, sigma_max)
    x = noise
    if init_data is not None:
        x = init_data * (1 - sigma_max) + noise * sigma_max
    return fn(model_fn, x, t, noise_fn=noise_fn, callback=callback)
