"""Stable Audio 3 memory options keep the numbers: lazy SAME encoder, `low_memory`, streamed decode.

On folders converted from the committed tiny checkpoint (small: SAME-S), CPU, float32. These are
ours-vs-ours on purpose: each option must give exactly the default's audio, whose parity with the reference
is test_sa3_generate.py's (and the tiled decode's test_same_tiles.py's).

- What a generation reads is measured with MLX's own counter: weights load lazily, so evaluating a part's
  parameters afterwards allocates their bytes only if the generation never read them (or let them go).
- text-to-audio never reads the SAME encoder; audio-to-audio does.
- `low_memory=True`: the same audio bit for bit, T5Gemma and the DiT no longer resident after the call, a
  second call the same again (they are read back from model.safetensors).
- `stream=True`: the pieces joined are the one-shot audio bit for bit (exact tiles of 16 latents, the
  reference's chunked windows, headroom 6 and 0), also once written piece by piece into a WAV file; and the
  one-shot audio in many tiles is the one-shot audio decoded in one piece.
- the tiled decode's peak memory is a fraction of the whole decode's on a long sequence.
"""

from __future__ import annotations

import copy
import gc
import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from mlx.utils import tree_flatten

from mlx_audio_generate.audio import write_audio
from mlx_audio_generate.codecs.same_tiles import decode_tiles
from mlx_audio_generate.convert import convert
from mlx_audio_generate.stable_audio_3.generate import StableAudio3

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
LONG = 160  # latents of the long variant: two reference windows of 128


def variant(config: dict, name: str) -> dict:
    cfg = copy.deepcopy(config)
    if name in ("long", "long-chunked"):  # 2048 Hz: 160 latents in 320 s of (cheap) audio
        cfg["sample_rate"], cfg["sample_size"] = 2048, 4096 * LONG
    if name == "long-chunked":
        cfg["model"]["pretransform"]["chunked"] = True
    return cfg


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa3-memory")
    committed = FIXTURES / "small"
    out = {}
    for name in ("native", "long", "long-chunked"):
        src = root / f"src-{name}"
        src.mkdir()
        cfg = variant(json.loads((committed / "model_config.json").read_text()), name)
        (src / "model_config.json").write_text(json.dumps(cfg))
        for f in ("model.safetensors", "t5gemma-b-b-ul2"):
            os.symlink(committed / f, src / f)
        out[name] = convert(str(src), root / name)
    return out


def unread_bytes(params) -> int:
    """Bytes that evaluating `params` allocates now: 0 if they were already read (and kept)."""
    arrays = [v for _, v in tree_flatten(params)]
    gc.collect()  # earlier tests' garbage must not be freed in between (it would hide the allocation)
    gc.disable()
    try:
        mx.synchronize()
        mx.clear_cache()
        before = mx.get_active_memory()
        mx.eval(arrays)
        mx.synchronize()
        return mx.get_active_memory() - before
    finally:
        gc.enable()


def nbytes(params) -> int:
    return sum(v.nbytes for _, v in tree_flatten(params))


def unread(params) -> bool:
    """True if none of `params` was resident: evaluating them allocates at least their bytes (the allocator
    may round a buffer up, or hand out a larger cached one)."""
    n = nbytes(params)
    assert n > 0
    return unread_bytes(params) >= 0.95 * n


def resident(params) -> bool:
    """True if `params` were all resident (evaluating them allocates nothing)."""
    return unread_bytes(params) <= 0.01 * nbytes(params)


def encoder(model: StableAudio3) -> list:
    same = model.model.same
    return [b.parameters() for b in (*same.encoder_blocks, same.encoder_proj)]


def text_encoder(model: StableAudio3):
    return model.model.conditioner.conditioners[model.model.text_id].parameters()


GEN = dict(seconds=0.15, seed=3, steps=2)


def test_text_to_audio_never_reads_the_same_encoder(folders):
    m = StableAudio3.from_pretrained(folders["native"])
    m.generate("a prompt", **GEN)
    assert unread(encoder(m))
    m = StableAudio3.from_pretrained(folders["native"])
    clip = np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32) * 0.1
    m.generate("a prompt", init_audio=clip, **GEN)  # audio-to-audio encodes: the encoder was read
    assert resident(encoder(m))


def test_low_memory_releases_the_text_encoder_and_dit_with_the_same_audio(folders):
    keep = StableAudio3.from_pretrained(folders["native"])
    lean = StableAudio3.from_pretrained(folders["native"], low_memory=True)
    ref = keep.generate(["a prompt", "another"], **GEN)
    out = lean.generate(["a prompt", "another"], **GEN)
    np.testing.assert_array_equal(out, ref)
    for part in (text_encoder, lambda m: m.model.dit.parameters()):
        assert resident(part(keep))  # the default keeps them
        assert unread(part(lean))  # low_memory let them go
    lean = StableAudio3.from_pretrained(folders["native"], low_memory=True)
    lean.generate("warm-up", **GEN)
    np.testing.assert_array_equal(lean.generate(["a prompt", "another"], **GEN), ref)  # read back


@pytest.mark.parametrize("name", ["native", "long", "long-chunked"])
@pytest.mark.parametrize("headroom", [6.0, 0.0])
def test_streamed_pieces_are_the_one_shot_audio(folders, name, headroom):
    m = StableAudio3.from_pretrained(folders[name])
    seconds = 0.15 if name == "native" else 300.0
    kw = dict(seconds=seconds, seed=5, steps=2, headroom_seconds=headroom)
    m.decode_tile = 10**6  # one piece: the path test_sa3_generate checks against the reference
    whole = m.generate("a prompt", **kw)
    m.decode_tile = 16 if name != "native" else 2
    one = m.generate("a prompt", **kw)
    # Many tiles (masked, clipped and cut per piece) against one: the same audio to float32 rounding. Not
    # bit for bit: a tile changes the decoder's GEMM shapes, and OpenBLAS's kernels (loaded by _blas.py) sum
    # in a shape-dependent order on some CPUs (AMD EPYC: ~1e-7 apart; MLX's own BLAS: equal).
    np.testing.assert_allclose(one, whole, rtol=1e-5, atol=1e-6)
    pieces = list(m.generate("a prompt", stream=True, **kw))
    if name != "native":  # many tiles / the reference's windows, not one piece
        assert len(pieces) >= 2
    assert all(p.dtype == np.float32 and p.shape[:2] == one.shape[:2] for p in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces, axis=-1), one)


def test_streamed_wav_is_the_one_shot_wav(folders, tmp_path):
    m = StableAudio3.from_pretrained(folders["long"])
    m.decode_tile = 8
    kw = dict(seconds=200.0, seed=1, steps=2)
    one = m.generate("a prompt", **kw)
    write_audio(tmp_path / "one.wav", one[0], m.sample_rate)
    with sf.SoundFile(tmp_path / "streamed.wav", "w", m.sample_rate, m.audio_channels, "FLOAT") as f:
        for piece in m.generate("a prompt", stream=True, **kw):
            f.write(piece[0].T)  # written as each tile is decoded
    a, _ = sf.read(tmp_path / "one.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "streamed.wav", dtype="float32")
    np.testing.assert_array_equal(a, b)


def test_tiled_decode_peak_is_bounded(folders):
    same = StableAudio3.from_pretrained(folders["long"]).model.same
    z = mx.random.normal((1, same.latent_dim, LONG), key=mx.random.key(0))
    mx.eval(same.parameters(), z)

    def peak(fn) -> int:
        mx.synchronize()
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        out = fn()
        mx.eval(out)
        mx.synchronize()
        return mx.get_peak_memory() - base

    whole = peak(lambda: same.decode(z))
    tiled = peak(lambda: mx.concatenate(list(decode_tiles(same, z, 8)), axis=-1))
    assert tiled < whole / 2, (tiled, whole)
