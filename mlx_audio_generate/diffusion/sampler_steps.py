"""The per-step arithmetic of the default samplers (samplers.py) as fused functions.

On the GPU each function below runs through `mx.compile`, so a sampler step's elementwise update is one
kernel instead of one kernel per operation (~25 a step for dpmpp-3m-sde) and the default noise draw is two
(the random bits and their transform). The step's scalars come in as arrays of x's dtype (`scalar`: what a
Python float is cast to), so one trace serves every step; the operations and their order are the eager
code's, so the values are too (tests/test_samplers_fused.py: bit-identical, fp32 and fp16). `FUSE` = True
/ False overrides the default (None: the GPU only; the CPU runs them eagerly, as its compiled kernels need a
C++ compiler at run time).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

# None: compiled on the GPU only; True/False force it.
FUSE: bool | None = None


def fused(fn: Callable) -> Callable:
    """`fn` through mx.compile where FUSE says so (one trace per shape/dtype), else `fn` itself."""
    compiled = mx.compile(fn)

    def run(*args):
        use = mx.default_device().type == mx.DeviceType.gpu if FUSE is None else FUSE
        return compiled(*args) if use else fn(*args)

    return run


def scalar(value: float, like: mx.array) -> mx.array:
    """A step scalar as an array of `like`'s dtype: what `float(value) * like` casts it to."""
    return mx.array(float(value), dtype=like.dtype)


# mx.random.normal(shape, key=key); the shape, a non-array argument, is part of the compiled function's key.
normal = fused(lambda key, shape: mx.random.normal(shape, key=key))

# v denoiser (k-diffusion's VDenoiser): the input scaling and c_out * v + c_skip * x
scale = fused(lambda x, c: x * c)
v_out = fused(lambda v, x, c_out, c_skip: v * c_out + x * c_skip)


def _pingpong(x, v, noise, tc, keep, tn):
    den = x - tc * v
    return den, keep * den + tn * noise


# rectified flow: pingpong's (clean estimate, re-noised next state); the clean estimate alone
pingpong = fused(_pingpong)
rf_denoised = fused(lambda x, v, tc: x - tc * v)


# dpmpp-2m-sde: first step, later steps (a, b: the exponential-integrator weights; sn, sq: the noise scale)
def _sde2_first(x, den, noise, a, b, sn, sq):
    return (a * x + b * den) + noise * sn * sq


def _sde2_next(x, den, old, noise, a, b, c, sn, sq):
    x = a * x + b * den
    return (x + c * (den - old)) + noise * sn * sq


sde2_first, sde2_next = fused(_sde2_first), fused(_sde2_next)


# dpmpp-3m-sde: first, second (one history term) and third-order steps
def _sde3_first(x, den, noise, a, b, sn, sq):
    return (a * x + b * den) + noise * sn * sq


def _sde3_second(x, den, den_1, noise, a, b, phi_2, r, sn, sq):
    x = a * x + b * den
    return (x + phi_2 * ((den - den_1) / r)) + noise * sn * sq


def _sde3_third(x, den, den_1, den_2, noise, a, b, r0, r1, r01, phi_2, phi_3, sn, sq):
    x = a * x + b * den
    d1_0 = (den - den_1) / r0
    d1_1 = (den_1 - den_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / r01
    d2 = (d1_0 - d1_1) / r01
    return (x + phi_2 * d1 - phi_3 * d2) + noise * sn * sq


sde3_first, sde3_second, sde3_third = fused(_sde3_first), fused(_sde3_second), fused(_sde3_third)
