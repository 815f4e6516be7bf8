"""SAME decodes in pieces: the whole decode cut into exact tiles, and the reference's chunked decode, both as
generators of consecutive audio pieces (bounded memory; a caller may write each piece as it comes).

- `decode_tiles(same, latents, tile)`: the SAME decoder is local: a latent's audio depends only on the
  latents within `decoder_reach(config)` of it (chunked attention sees its own row, the midpoint-shifted
  rows one more row, a sliding window `depth x window` groups, the mapping conv half its kernel). So the
  latents are cut into cores of `tile` latents, each decoded with a halo of at least that reach on both sides
  (clipped at the ends) and only the core's samples kept: the concatenation is `decode(latents)`, the same
  numbers in fp32 (the tests check it against the whole decode and the reference). Cores start at
  multiples of `align`, so the chunked attention rows fall where they fall in the whole sequence and no
  inner tile is padded; the last tile keeps the end's padding, as the whole decode does.
- `decode_windows(same, latents, chunk, overlap)`: the reference's `decode_audio(chunked=True)` (same.py's
  `decode_chunked`, piece by piece): a different function from `decode` near the window seams, as in the
  reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import mlx.core as mx

from .same import SAME, SAMEConfig, _check_chunking, _pieces, _starts

TILE = 128  # latents per exact tile (about 12 s of audio at 44.1 kHz / 4096): memory, not the numbers


def decoder_reach(config: SAMEConfig) -> tuple[int, int]:
    """(reach, align) of the decoder in latents: a latent's audio depends on no latent farther than `reach`;
    tile bounds at multiples of `align` keep every chunked-attention row and padding as in the whole
    decode."""
    reach, align, frames = 0, 1, 1  # frames: the block's input frames per latent
    for rc in config.decoder:
        if rc.window is None:
            m = rc.chunk_size // rc.stride  # groups (input frames) per attention row
            # unshifted rows: m - 1 frames; the shifted rows (offset half a row) reach at most m further
            r = (m - 1) + (m if rc.midpoint_shift else 0)
            align = math.lcm(align, m // math.gcd(m, frames))
        else:
            r = rc.depth * max(rc.sliding_window)  # each layer's band: window groups either side
        if rc.in_channels != rc.out_channels:  # the mapping conv after the transformer, on output frames
            k = 3 if rc.conv_mapping else 1
            r += -(-(k - 1 - (k - 1) // 2) // rc.stride)
        reach += -(-r // frames)
        frames *= rc.stride
    return reach, align


def decode_tiles(
    same: SAME, latents: mx.array, tile: int = TILE, halo: int | None = None
) -> Iterator[mx.array]:
    """`same.decode(latents)` (no noise) as consecutive evaluated pieces of about `tile` latents each.
    `halo` (latents each side, default: the reach rounded up to `align`) is for the tests' negative check."""
    reach, align = decoder_reach(same.config)
    r = same.downsampling_ratio
    L = latents.shape[-1]
    tile = max(-(-tile // align) * align, align)
    halo = -(-reach // align) * align if halo is None else halo
    if L <= tile:
        out = same.decode(latents)
        mx.eval(out)
        yield out
        return
    for c0 in range(0, L, tile):
        c1 = min(c0 + tile, L)
        w0, w1 = max(c0 - halo, 0), min(c1 + halo, L)
        out = same.decode(latents[..., w0:w1])
        last = c1 == L  # the last tile keeps everything to the end (the end's padding, as decode does)
        piece = out[..., (c0 - w0) * r : None if last else (c1 - w0) * r]
        mx.eval(piece)  # one tile's activations at a time
        yield piece


def decode_windows(same: SAME, latents: mx.array, chunk: int = 128, overlap: int = 32) -> Iterator[mx.array]:
    """`same.decode_chunked(latents, chunk, overlap)` as consecutive evaluated pieces (one per window)."""
    r = same.downsampling_ratio
    _check_chunking(chunk, overlap)
    L = latents.shape[-1]
    if L < chunk:
        out = same.decode(latents)
        mx.eval(out)
        yield out
        return
    starts = _starts(L, chunk, chunk - overlap)
    outs = [s * r for s in starts[:-1]] + [(L - chunk) * r]
    yield from _pieces(
        lambda s: same.decode(latents[..., s : s + chunk]), starts, outs, L * r, overlap // 2 * r
    )
