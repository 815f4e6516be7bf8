"""MusicGen's codebook delay pattern, laid out exactly as transformers' `build_delay_pattern_mask`.

Codebook k is delayed by d_k = k steps (stereo: codes are interleaved [L0, R0, L1, R1, ...] and a left/right
pair shares the delay d_k = k // 2). Position 0 of every codebook is BOS, codebook k holds BOS at positions
0..d_k, then its frames, then pad. A delayed sequence of length L therefore carries L - K_ch frames (K_ch =
codebooks per channel), and generating `frames` frames after the BOS column takes frames + K_ch - 1 steps.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..errors import UserError


def codebooks_per_channel(num_codebooks: int, audio_channels: int = 1) -> int:
    if audio_channels not in (1, 2) or num_codebooks % audio_channels:
        raise UserError(f"{num_codebooks} codebooks cannot be split into {audio_channels} audio channel(s)")
    return num_codebooks // audio_channels


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Delay of each codebook row: [0, 1, 2, 3] mono, [0, 0, 1, 1, 2, 2, 3, 3] stereo (interleaved)."""
    codebooks_per_channel(num_codebooks, audio_channels)
    return [k // audio_channels for k in range(num_codebooks)]


def num_steps(frames: int, num_codebooks: int, audio_channels: int = 1) -> int:
    """Decoder steps after the BOS column needed for `frames` complete frames."""
    return frames + codebooks_per_channel(num_codebooks, audio_channels) - 1


def delay_pattern(
    codes: mx.array | np.ndarray, max_length: int, pad_token_id: int, audio_channels: int = 1
) -> mx.array:
    """The delay pattern (B, K, max_length) for decoder input ids `codes` (B, K, S) (BOS column first, then
    any prompt frames): -1 where a token is still to be predicted, the shifted input ids where known, and
    `pad_token_id` in the BOS and end triangles."""
    ids = np.asarray(codes).astype(np.int64)
    b, k, s = ids.shape
    kc = codebooks_per_channel(k, audio_channels)
    delays = np.asarray(codebook_delays(k, audio_channels))
    shifted = np.full((b, k, max_length), -1, dtype=np.int64)
    for row, d in enumerate(delays):
        n = max(0, min(s, max_length - d))
        shifted[:, row, d : d + n] = ids[:, row, :n]
    cols = np.arange(max_length)[None, :]
    # BOS triangle (positions <= delay) and end triangle (positions past the codebook's last frame).
    is_pad = (cols <= delays[:, None]) | (cols >= delays[:, None] + max_length - kc + 1)
    return mx.array(np.where(is_pad[None], pad_token_id, shifted).astype(np.int32))


def build_delay_pattern_mask(
    codes: mx.array | np.ndarray, max_length: int, pad_token_id: int, audio_channels: int = 1
) -> tuple[mx.array, mx.array]:
    """transformers' `MusicgenForCausalLM.build_delay_pattern_mask`, batched as (B, K, S) instead of (B*K, S).

    Returns (input_ids (B, K, first_free), pattern (B, K, max_length)), the input ids cut before the first
    position still to predict. As in transformers, a `max_length` below 2 * K_ch - 1 applies no pattern at
    all (all -1): `delay_pattern` has no such special case."""
    ids = np.asarray(codes)
    b, k, s = ids.shape
    if max_length < 2 * codebooks_per_channel(k, audio_channels) - 1:
        return mx.array(ids.astype(np.int32)), mx.full((b, k, max_length), -1, dtype=mx.int32)
    pattern = delay_pattern(ids, max_length, pad_token_id, audio_channels)
    free = np.nonzero(np.array(pattern[:, 0, :]) == -1)[1]
    first = int(free.min()) if free.size else s
    return pattern[..., :first], pattern


def apply_delay_pattern_mask(ids: mx.array, pattern: mx.array) -> mx.array:
    """Keep `ids` where the pattern is -1, take the pattern's token elsewhere (transformers' namesake)."""
    p = pattern[..., : ids.shape[-1]]
    return mx.where(p == -1, ids, p.astype(ids.dtype))


def delay_codes(codes: mx.array, pad_token_id: int, audio_channels: int = 1) -> mx.array:
    """Frames (B, K, F) -> the delayed sequence (B, K, F + K_ch) with its BOS column, as transformers lays
    out `generate`'s output before reverting it (BOS = pad there)."""
    b, k, f = codes.shape
    kc = codebooks_per_channel(k, audio_channels)
    rows = []
    for row, d in enumerate(codebook_delays(k, audio_channels)):
        rows.append(
            mx.concatenate(
                [
                    mx.full((b, d + 1), pad_token_id, dtype=codes.dtype),
                    codes[:, row],
                    mx.full((b, kc - 1 - d), pad_token_id, dtype=codes.dtype),
                ],
                axis=1,
            )
        )
    return mx.stack(rows, axis=1)


def revert_delay_pattern(delayed: mx.array, audio_channels: int = 1) -> mx.array:
    """Delayed sequence (B, K, L) with its BOS column -> frames (B, K, L - K_ch). transformers drops every pad
    token instead, which is the same since generated codes never equal the pad id."""
    b, k, length = delayed.shape
    kc = codebooks_per_channel(k, audio_channels)
    frames = length - kc
    if frames < 1:
        raise UserError(f"a delayed sequence of {length} steps holds no complete frame ({kc} codebooks)")
    return mx.stack(
        [delayed[:, row, d + 1 : d + 1 + frames] for row, d in enumerate(codebook_delays(k, audio_channels))],
        axis=1,
    )
