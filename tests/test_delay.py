"""The codebook delay pattern against transformers' build_delay_pattern_mask (mono and stereo)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.musicgen.delay import (
    apply_delay_pattern_mask,
    build_delay_pattern_mask,
    codebook_delays,
    delay_codes,
    num_steps,
    revert_delay_pattern,
)

PAD = 64


@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(channels):
    k = 4 * channels
    codes = mx.array(np.random.default_rng(0).integers(0, 64, size=(3, k, 9)).astype(np.int32))
    delayed = delay_codes(codes, PAD, channels)
    assert delayed.shape == (3, k, 9 + 4)
    assert (np.array(revert_delay_pattern(delayed, channels)) == np.array(codes)).all()


def test_delays_and_steps():
    assert codebook_delays(4, 1) == [0, 1, 2, 3]
    assert codebook_delays(8, 2) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert num_steps(250, 4, 1) == 253
    assert num_steps(250, 8, 2) == 253


@pytest.fixture(scope="module")
def hf_decoders():
    pytest.importorskip("torch")
    from transformers import MusicgenForCausalLM

    from tests.reference.musicgen import tiny_configs

    return {ch: MusicgenForCausalLM(tiny_configs(ch)[2]).eval() for ch in (1, 2)}


@pytest.mark.parametrize("channels", [1, 2])
def test_matches_transformers(hf_decoders, channels):
    import torch

    hf = hf_decoders[channels]
    k = 4 * channels
    rng = np.random.default_rng(channels)
    for prompt, max_length in ((0, 12), (0, 7), (0, 5), (0, 4), (3, 12), (5, 9)):
        ids = np.concatenate(
            [np.full((2, k, 1), PAD), rng.integers(0, 64, size=(2, k, prompt))], axis=2
        ).astype(np.int64)
        ref_ids, ref_mask = hf.build_delay_pattern_mask(
            torch.from_numpy(ids.reshape(2 * k, -1)), pad_token_id=PAD, max_length=max_length
        )
        ours_ids, ours_mask = build_delay_pattern_mask(ids, max_length, PAD, channels)
        assert (np.array(ours_mask).reshape(2 * k, -1) == ref_mask.numpy()).all(), (prompt, max_length)
        assert (np.array(ours_ids).reshape(2 * k, -1) == ref_ids.numpy()).all(), (prompt, max_length)
        # apply_delay_pattern_mask on a generated sequence
        seq = rng.integers(0, 64, size=(2, k, max_length))
        ref = hf.apply_delay_pattern_mask(torch.from_numpy(seq.reshape(2 * k, -1)), ref_mask).numpy()
        ours = np.array(apply_delay_pattern_mask(mx.array(seq.astype(np.int32)), ours_mask))
        assert (ours.reshape(2 * k, -1) == ref).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_delay_codes_is_the_transformers_layout(hf_decoders, channels):
    import torch

    k = 4 * channels
    codes = np.random.default_rng(5).integers(0, 64, size=(2, k, 6))
    ids = np.concatenate([np.full((2, k, 1), PAD), codes], axis=2)
    _, ref_mask = hf_decoders[channels].build_delay_pattern_mask(
        torch.from_numpy(ids.reshape(2 * k, -1)), pad_token_id=PAD, max_length=6 + 4
    )
    ours = np.array(delay_codes(mx.array(codes.astype(np.int32)), PAD, channels))
    assert (ours.reshape(2 * k, -1) == ref_mask.numpy()).all()
