"""SAME decodes in pieces (codecs/same_tiles.py): the exact tiles are the whole decode, the windows the
reference's chunked decode.

- `decode_tiles` against our whole `decode` on the four SAME layouts (SAME-S: chunked attention + midpoint
  shift + kernel-3 mapping; SAME-L: sliding window; two-block chunked and windowed decoders): bit for bit
  where the attention is chunked; within 1e-6 relative with a sliding window, whose band attention groups
  its queries from the tile's start (float32 summation order, nothing else). With no halo the tiles differ
  (the check can fail).
- `decode_tiles` against the reference decode (fp32, 1e-4, committed outputs of tests.reference.sa3_same and
  a live run when the reference sources are here), cut in tiles of 2 latents.
- `decode_windows` (one piece per window) concatenated = the reference's `decode_audio(chunked=True)`.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_same import COMMITTED, convert

from mlx_audio_generate.codecs.same import SAME, SAMEConfig, load_same
from mlx_audio_generate.codecs.same_tiles import decode_tiles, decode_windows, decoder_reach
from mlx_audio_generate.weights import Checkpoint
from tests.reference.parity import SOURCES, reference_outputs, rel_err

TOL = 1e-4
WINDOW_TOL = 1e-6  # a sliding-window tile against the whole decode: float32 summation order
LAYOUTS = ("small", "medium", "deep_chunked", "deep_window")


def deep(name: str) -> SAME:
    cfg = SAMEConfig.from_dict(json.loads((COMMITTED / f"{name}_config.json").read_text()))
    ckpt = Checkpoint(dict(mx.load(str(COMMITTED / f"{name}_model.safetensors"))))
    return load_same(cfg, SAME(cfg).sanitize(ckpt, ""))


@pytest.fixture(scope="module")
def models() -> dict[str, SAME]:
    return {n: convert(n) if n in ("small", "medium") else deep(n) for n in LAYOUTS}


def joined(pieces) -> np.ndarray:
    return np.concatenate([np.array(p) for p in pieces], axis=-1)


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("frames", [29, 30, 37])
def test_tiles_are_the_whole_decode(models, name, frames):
    same = models[name]
    z = mx.random.normal((2, same.latent_dim, frames), key=mx.random.key(frames))
    whole = np.array(same.decode(z))
    windowed = any(b.window is not None for b in same.config.decoder)
    for tile in (1, 2, 4, 7, 12, frames - 1, frames):
        tiles = joined(decode_tiles(same, z, tile))
        assert tiles.shape == whole.shape, (name, tile)
        if windowed:
            assert rel_err(tiles, whole) <= WINDOW_TOL, (name, tile)
        else:
            # float32 rounding apart at most: a tile changes the convolutions' GEMM shapes, and OpenBLAS
            # (loaded by _blas.py) sums in a shape-dependent order on some CPUs (AMD EPYC: ~1e-7; MLX's
            # own BLAS: equal). A missing halo is orders of magnitude further (test_tiles_need_their_halo).
            np.testing.assert_allclose(tiles, whole, rtol=1e-5, atol=1e-6, err_msg=f"{name} tile {tile}")


@pytest.mark.parametrize("name", LAYOUTS)
def test_tiles_need_their_halo(models, name):
    """Without the halo the tiles' edges see zeros instead of their neighbours: not the whole decode."""
    same = models[name]
    z = mx.random.normal((1, same.latent_dim, 29), key=mx.random.key(1))
    reach, _ = decoder_reach(same.config)
    assert reach > 0
    err = rel_err(joined(decode_tiles(same, z, 4, halo=0)), np.array(same.decode(z)))
    assert err > 10 * WINDOW_TOL, (name, err)


@pytest.fixture(params=SOURCES)
def source(request, sa3_same_live):
    return reference_outputs(request.param, COMMITTED, sa3_same_live)


@pytest.mark.parametrize("name", ("small", "medium"))
def test_tiles_match_the_reference(models, source, name):
    ref = load_file(str(source / f"{name}.safetensors"))
    same = models[name]
    for key, out in (("latents", "decoded"), ("latents_pad", "decoded_pad")):
        tiles = joined(decode_tiles(same, mx.array(ref[key]), 2))
        assert rel_err(tiles, ref[out]) <= TOL, (name, key)


@pytest.mark.parametrize("name", ("small", "medium"))
def test_windows_are_the_reference_chunked_decode(models, source, name):
    ref = load_file(str(source / f"{name}.safetensors"))
    same = models[name]
    z = mx.array(ref["long_latents"])
    pieces = [np.array(p) for p in decode_windows(same, z)]
    assert len(pieces) == 3  # 230 latents: three windows of 128, the last anchored at the end
    np.testing.assert_array_equal(np.concatenate(pieces, axis=-1), np.array(same.decode_chunked(z)))
    assert rel_err(np.concatenate(pieces, axis=-1), ref["long_decoded"]) <= TOL
    for (c, o), out in (((8, 4), "chunk_decoded_8_4"), ((7, 3), "chunk_decoded_7_3")):
        got = joined(decode_windows(same, mx.array(ref["chunk_latents"]), c, o))
        assert rel_err(got, ref[out]) <= TOL, (name, c, o)
