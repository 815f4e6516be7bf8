"""Token sampling shared by the autoregressive models: temperature, top-k, top-p (nucleus), greedy.

The order follows transformers' logits warpers: temperature, then top-k, then top-p on what top-k kept,
then a categorical draw. Draws take an explicit PRNG key, so one seed gives bit-identical tokens.
"""

from __future__ import annotations

import math

import mlx.core as mx

from .errors import UserError


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a number >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise UserError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise UserError(f"top-p must lie in [0, 1] (0 or 1 = off), got {top_p}")


def is_greedy(temperature: float, top_k: int | None) -> bool:
    return temperature == 0 or top_k == 1


def top_k_filter(logits: mx.array, k: int) -> mx.array:
    """Set every logit below the k-th largest of its row to -inf (ties with the k-th are kept, as in
    transformers' TopKLogitsWarper)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.min(mx.topk(logits, k, axis=-1), axis=-1, keepdims=True)
    return mx.where(logits < kth, -mx.inf, logits)


def _nucleus_sorted(logits: mx.array, top_p: float) -> tuple[mx.array, mx.array]:
    """Sort each row descending and mask (-inf) all but the smallest prefix whose probability mass reaches
    `top_p`; the first token is always kept. Returns (masked sorted logits, sort order)."""
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits.astype(mx.float32), axis=-1)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    # Token i is needed iff the tokens ranked above it hold less than top_p (transformers' rule, from the
    # other end: it drops tokens whose ascending cumulative mass is <= 1 - top_p).
    keep = mass_before < top_p
    return mx.where(keep, sorted_logits, -mx.inf), order


def top_p_filter(logits: mx.array, top_p: float) -> mx.array:
    """Nucleus filter in the original token order (for inspection and tests; sampling avoids the scatter)."""
    if not 0.0 < top_p < 1.0:
        return logits
    masked, order = _nucleus_sorted(logits, top_p)
    inverse = mx.argsort(order, axis=-1)
    return mx.take_along_axis(masked, inverse, axis=-1)


def sample_tokens(
    logits: mx.array,
    key: mx.array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> mx.array:
    """One token per row of `logits` (..., V) -> (...,) int32.

    Greedy (argmax) when temperature == 0 or top_k == 1. top_k 0/None and top_p 0/None/1 turn those filters
    off. `key` is an `mx.random.key`; with None MLX's global PRNG is used (not reproducible)."""
    check_sampling_args(temperature, top_k, top_p)
    return draw_tokens(logits, key, temperature, top_k, top_p)


def draw_tokens(
    logits: mx.array,
    key: mx.array | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> mx.array:
    """`sample_tokens` without the argument checks: for decode loops that check them once up front."""
    logits = logits.astype(mx.float32)
    if is_greedy(temperature, top_k):
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and 0.0 < top_p < 1.0:
        masked, order = _nucleus_sorted(logits, top_p)
        idx = mx.random.categorical(masked, axis=-1, key=key)
        return mx.take_along_axis(order, idx[..., None], axis=-1)[..., 0].astype(mx.int32)
    return mx.random.categorical(logits, axis=-1, key=key).astype(mx.int32)
