"""MusicGen token generation: the decode loop of transformers' `MusicgenForConditionalGeneration.generate`.

- Classifier-free guidance (guidance_scale > 1, as transformers) runs as ONE batch of 2B rows,
  [conditional; unconditional], and the logits are combined as uncond + (cond - uncond) * guidance_scale
  before temperature / top-k / top-p.
- The delay pattern is built up front (BOS column, then each codebook k delayed by k); at each step the
  sampled column is overwritten wherever the pattern fixes a BOS/pad token, exactly like transformers'
  `apply_delay_pattern_mask` on the growing sequence.
- Conditioning comes from the LM: cross-attention keys/values (MusicGen) or a prefix of embeddings run once
  through the cache before the codes (MusicGen-Melody, `chroma` optional); see model.py / melody.py.
- `generate_steps` yields once per decoder step (for a progress bar) while MLX evaluates the step
  asynchronously; `generate_codes` collects them and reverts the delay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import UserError
from ..sampling import check_sampling_args, draw_tokens
from . import layer_kernel
from .delay import delay_pattern, num_steps, revert_delay_pattern
from .melody import MelodyLM
from .model import MusicgenLM

LM = MusicgenLM | MelodyLM


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 1.0
    top_k: int | None = 250
    top_p: float | None = None
    guidance_scale: float | None = 3.0

    @property
    def guided(self) -> bool:
        # transformers only builds the unconditional branch for guidance_scale > 1
        return self.guidance_scale is not None and self.guidance_scale > 1


Key = int | list[int] | mx.array | None


def row_keys(key: Key, rows: int) -> mx.array:
    """One PRNG key per batch row, (rows, 2). An int or a single key is shared by every row, so a row's
    tokens depend only on its own prompt and seed, never on what else is in the batch; a list gives each
    row its own seed (variations)."""
    if key is None:
        key = int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(key, int):
        key = mx.random.key(key)
    elif isinstance(key, list | tuple):
        if len(key) != rows:
            raise UserError(f"got {len(key)} seeds for {rows} prompts")
        return mx.stack([mx.random.key(int(s)) for s in key])
    if key.ndim == 1:
        return mx.broadcast_to(key, (rows, *key.shape))
    if key.shape[0] != rows:
        raise UserError(f"got {key.shape[0]} keys for {rows} prompts")
    return key


def _start_ids(b: int, k: int, bos: int, prompt_codes: mx.array | None) -> mx.array:
    """The decoder input ids before generation: a BOS column, then the prompt frames if any."""
    start = mx.full((b, k, 1), bos, dtype=mx.int32)
    if prompt_codes is None:
        return start
    if prompt_codes.ndim != 3 or tuple(prompt_codes.shape[:2]) != (b, k):
        raise UserError(f"prompt codes must be shaped ({b}, {k}, frames), got {tuple(prompt_codes.shape)}")
    return mx.concatenate([start, prompt_codes.astype(mx.int32)], axis=2)


def generate_steps(
    lm: LM,
    text_states: mx.array,
    text_mask: mx.array | None,
    frames: int,
    options: SamplingOptions = SamplingOptions(),
    key: Key = None,
    prompt_codes: mx.array | None = None,
    compiled: bool = False,
    chroma: mx.array | None = None,
) -> Iterator[mx.array]:
    """Yield the delay-pattern column of every decoder step, each (B, K) int32, `num_steps(frames)` of them.

    text_states: T5 last hidden states (B, T, Dt) (not yet projected); text_mask: their 0/1 mask (B, T).
    prompt_codes: optional audio-code prompt (B, K, P) to continue, as transformers' `decoder_input_ids`.
    key: an int seed, an `mx.random.key`, or one seed / key per row (see `row_keys`); the same key gives the
        same tokens.
    compiled: run the decoder step through `mx.compile` (fixed-shape KV cache with an array offset).
    chroma: melody chroma (1 or B, F, 12) for a melody LM (None = its null melody); an error for others."""
    cfg = lm.config
    check_sampling_args(options.temperature, options.top_k, options.top_p)
    if frames < 1:
        raise UserError(f"need at least one frame to generate, got {frames}")
    b = text_states.shape[0]
    k = cfg.num_codebooks
    bos = cfg.bos_token_id
    steps = num_steps(frames, k, cfg.audio_channels)

    start = _start_ids(b, k, bos, prompt_codes)
    first = start.shape[2]
    length = first + steps  # transformers' max_length: input length + max_new_tokens
    pattern = delay_pattern(start, length, bos, cfg.audio_channels)  # (B, K, length), -1 = to sample
    tokens = pattern[..., :first]  # the inputs with the pattern applied (all known)

    guided = options.guided
    rows = 2 * b if guided else b
    cond = lm.conditioning(text_states, text_mask, guided, chroma)
    cross_kv, cross_mask = cond.cross_kv, cond.cross_mask
    dec = lm.decoder
    # The melody prefix goes through the cache once, in the prefill; later offsets count it.
    pre = cond.prefix_len
    cache = dec.make_cache(rows, pre + length)
    dec.ensure_positions(pre + length)
    # (B, steps, 2): row r draws step t's noise from its own key, whatever the batch holds
    keys = mx.vmap(lambda k: mx.random.split(k, steps))(row_keys(key, b))
    scale = options.guidance_scale
    sample = mx.vmap(
        lambda logits, k: draw_tokens(logits, k, options.temperature, options.top_k, options.top_p)
    )

    def logits_of(col: mx.array, offset: int | mx.array, prefix: mx.array | None = None) -> mx.array:
        x = mx.concatenate([col, col], axis=0) if guided else col  # both halves see the same codes
        return dec(x, cross_kv, cross_mask, cache, offset, last_only=True, prefix=prefix)  # (rows, K, 1, V)

    def finish(logits: mx.array, step_keys: mx.array, p: mx.array) -> mx.array:
        logits = logits[:, :, -1].astype(mx.float32)
        if guided:
            with_cond, uncond = logits[:b], logits[b:]
            logits = uncond + (with_cond - uncond) * scale
        new = sample(logits, step_keys)  # (B, K)
        return mx.where(p == -1, new, p)  # the pattern's BOS/pad wins where it is set

    # On the GPU (where a step is bound by host time, see MusicgenDecoder.use_matvec) the guidance, sampling
    # and pattern tail is one compiled call; the CPU keeps it eager, bit for bit the parity-tested ops.
    tail = mx.compile(finish) if dec.use_matvec() else finish

    step_fn: Callable[[mx.array, int], mx.array]
    if compiled:
        state = [c.state for c in cache]
        traced = mx.compile(lambda col, off: logits_of(col, off), inputs=state, outputs=state)

        def step_fn(col: mx.array, offset: int) -> mx.array:
            return traced(col, mx.array(offset, dtype=mx.int32))
    else:
        step_fn = logits_of

    def step(col: mx.array, offset: int, t: int) -> mx.array:
        # the prefill (BOS column, prompt, melody prefix) has its own shape: always uncompiled
        logits = logits_of(col, 0, cond.prefix) if t == 0 else step_fn(col, offset)
        return tail(logits, keys[:, t], pattern[:, :, first + t])

    y = step(tokens, 0, 0)
    mx.async_eval(y)
    for t in range(steps):
        if t + 1 < steps:
            y_next = step(y[:, :, None], pre + first + t, t + 1)
            mx.async_eval(y_next)
        yield y
        if t + 1 < steps:
            y = y_next
    layer_kernel.check_barrier()  # a timed-out grid barrier (never expected) must not pass silently


def head_columns(lm: LM, b: int, frames: int, prompt_codes: mx.array | None) -> mx.array:
    """The known delayed columns before the first generated one (the BOS column, then the prompt's)."""
    cfg = lm.config
    total = num_steps(frames, cfg.num_codebooks, cfg.audio_channels)
    start = _start_ids(b, cfg.num_codebooks, cfg.bos_token_id, prompt_codes)
    first = start.shape[2]
    return delay_pattern(start, first + total, cfg.bos_token_id, cfg.audio_channels)[..., :first]


def generate_codes(
    lm: LM,
    text_states: mx.array,
    text_mask: mx.array | None,
    frames: int,
    options: SamplingOptions = SamplingOptions(),
    key: Key = None,
    prompt_codes: mx.array | None = None,
    progress: Callable[[int, int], None] | None = None,
    compiled: bool = False,
    chroma: mx.array | None = None,
) -> mx.array:
    """Generate audio codes (B, K, P + frames) (P = prompt frames, 0 without a prompt), the delay reverted:
    exactly `frames` new frames. `progress(done, total)` is called after each step."""
    cfg = lm.config
    total = num_steps(frames, cfg.num_codebooks, cfg.audio_channels)
    cols = [head_columns(lm, text_states.shape[0], frames, prompt_codes)]
    for i, col in enumerate(
        generate_steps(lm, text_states, text_mask, frames, options, key, prompt_codes, compiled, chroma)
    ):
        cols.append(col[..., None])
        if progress is not None:
            progress(i + 1, total)
    return revert_delay_pattern(mx.concatenate(cols, axis=2), cfg.audio_channels)
