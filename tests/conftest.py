"""Shared session fixtures: tiny reference checkpoints (written by transformers) and their conversions."""

from __future__ import annotations

import pytest

from tests.reference.musicgen import save_tiny_musicgen


@pytest.fixture(scope="session")
def musicgen_dir(tmp_path_factory):
    """A tiny mono MusicGen folder exactly as transformers' save_pretrained writes it (+ tokenizer)."""
    return save_tiny_musicgen(tmp_path_factory.mktemp("musicgen-src"))


@pytest.fixture(scope="session")
def musicgen_stereo_dir(tmp_path_factory):
    return save_tiny_musicgen(tmp_path_factory.mktemp("musicgen-stereo-src"), seed=3, audio_channels=2)


@pytest.fixture(scope="session")
def musicgen_converted(musicgen_dir, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(musicgen_dir), tmp_path_factory.mktemp("conv") / "musicgen")


@pytest.fixture(scope="session")
def musicgen_stereo_converted(musicgen_stereo_dir, tmp_path_factory):
    from mlx_audio_generate.convert import convert

    return convert(str(musicgen_stereo_dir), tmp_path_factory.mktemp("conv") / "musicgen-stereo")
