"""Audio I/O: formats, atomic writes with metadata, loudness normalisation, reading and resampling."""

from __future__ import annotations

import json

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from mlx_audio_generate.audio import (
    FORMATS,
    loudness_normalize,
    match_channels,
    read_audio,
    true_peak,
    write_audio,
)
from mlx_audio_generate.errors import UserError

SR = 32000


def tone(seconds=2.0, freq=440.0, amp=0.1, channels=1, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 + 0.1 * c) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_format_round_trips_with_metadata(tmp_path, ext):
    audio = tone(channels=2)
    meta = {"prompt": "lofi piano", "model": "musicgen-small", "seed": 3}
    path = write_audio(tmp_path / f"a{ext}", audio, SR, metadata=meta)
    back, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == SR and back.shape[1] == 2
    if ext in (".wav", ".flac"):  # lossless: same samples (flac is 24-bit)
        assert abs(back.shape[0] - audio.shape[1]) == 0
        np.testing.assert_allclose(back.T, audio, atol=1e-5 if ext == ".flac" else 0)
    assert json.loads((tmp_path / f"a{ext}.json").read_text()) == meta
    if ext in (".wav", ".flac", ".ogg"):
        with sf.SoundFile(path) as f:
            assert f.title == "lofi piano" and json.loads(f.comment)["seed"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_same_audio_gives_identical_bytes(tmp_path):
    """No timestamped PEAK chunk in float WAVs: a seed reproduces the file bit for bit."""
    a = write_audio(tmp_path / "a.wav", tone(), SR).read_bytes()
    assert b"PEAK" not in a
    assert write_audio(tmp_path / "b.wav", tone(), SR).read_bytes() == a


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import soundfile

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(soundfile, "SoundFile", boom)
    with pytest.raises(UserError, match="No space left"):
        write_audio(tmp_path / "x.wav", tone(), SR)
    assert list(tmp_path.iterdir()) == []


def test_normalize_hits_target_and_is_true_peak_safe():
    quiet = tone(amp=0.01)
    out, info = loudness_normalize(quiet, SR, target_lufs=-14.0)
    assert abs(pyloudnorm.Meter(SR).integrated_loudness(out.T.astype(np.float64)) + 14.0) < 0.05
    assert info["output_lufs"] == pytest.approx(-14.0, abs=0.05)
    # a peaky signal: reaching -14 LUFS would clip, so the gain stops at -1 dBTP instead
    spiky = np.zeros((1, 2 * SR), np.float32)
    spiky[0, ::4000] = 0.9
    spiky += tone(amp=0.001)
    out, info = loudness_normalize(spiky, SR, target_lufs=-14.0)
    assert true_peak(out, SR) <= 10 ** (-1.0 / 20) + 1e-6
    assert info["output_lufs"] < -14.0


def test_match_channels():
    x = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], np.float32)
    np.testing.assert_array_equal(match_channels(x, 1), [[2.0, 3.0, 4.0]])  # mono: the channel mean
    np.testing.assert_array_equal(match_channels(x[:1], 2), [[1.0, 2.0, 3.0]] * 2)  # mono to stereo: repeated
    assert match_channels(x, 2) is x  # already right: untouched
    three = np.concatenate([x, x[:1] * 9])
    np.testing.assert_array_equal(match_channels(three, 2, drop_extra=True), x)  # the first channels
    with pytest.raises(UserError, match="melody has 3 channels; expected 1 or 2"):
        match_channels(three, 2, what="melody")


def test_read_resample_and_mixdown(tmp_path):
    path = write_audio(tmp_path / "s.wav", tone(seconds=1.0, channels=2, sr=44100), 44100)
    mono = read_audio(path, sample_rate=SR, channels=1)
    assert mono.shape == (1, SR)
    stereo = read_audio(path, channels=2)
    assert stereo.shape == (2, 44100)
    with pytest.raises(UserError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(UserError, match="cannot read audio"):
        read_audio(tmp_path / "junk.wav")
