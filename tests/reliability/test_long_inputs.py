"""Long inputs are read lazily and bad API arguments give UserErrors: only the frames a generation uses are
read (and resampled) from an audio file, bit-identical to reading it whole; window plans are O(1); wrong
types and transposed arrays are refused with one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate  # noqa: F401
from mlx_audio_generate.audio import read_audio
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.family import MAX_TOTAL_SECONDS
from mlx_audio_generate.musicgen.longform import plan_windows

REPO = Path(__file__).resolve().parents[2]
SR = 32000


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000, 96000, 32000])
def test_partial_read_is_bit_identical(tmp_path, sr_in):
    x = np.random.default_rng(sr_in).standard_normal((3 * sr_in, 2)).astype(np.float32) * 0.3
    path = tmp_path / "a.wav"
    sf.write(path, x, sr_in, subtype="FLOAT")
    whole = read_audio(path, sample_rate=SR, channels=1)
    for n in (1, 999, SR, whole.shape[1] - 1, whole.shape[1], whole.shape[1] + 10):
        assert np.array_equal(read_audio(path, sample_rate=SR, channels=1, max_frames=n), whole[:, :n])


@pytest.fixture(scope="module")
def two_hour_wav(tmp_path_factory):
    """2 hours of 8 kHz mono noise (PCM 16: 115 MB on disk), written in chunks."""
    path = tmp_path_factory.mktemp("long") / "two_hours.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 8000, 1, "PCM_16") as f:
        for _ in range(120):
            f.write((rng.standard_normal(8000 * 60) * 0.1).astype(np.float32))
    return path


RSS = textwrap.dedent(
    """
    import resource, sys, time
    import mlx_audio_generate
    from mlx_audio_generate.errors import UserError
    kind, path, folder = sys.argv[1:4]
    if kind == "audio_prompt":
        from mlx_audio_generate.musicgen.generate import MusicGen
        model = MusicGen.from_pretrained(folder)
    elif kind == "init_audio":
        from mlx_audio_generate.stable_audio.generate import StableAudio
        model = StableAudio.from_pretrained(folder)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        if kind == "read":
            from mlx_audio_generate.audio import read_audio
            read_audio(path, sample_rate=32000, channels=1, max_frames=30 * 32000)
        elif kind == "audio_prompt":
            model.generate("x", seconds=40, seed=0, audio_prompt=path)
        else:
            model.generate("x", steps=1, seed=0, init_audio=path, init_strength=0.5)
        result = "ok"
    except UserError as e:
        result = "UserError: " + str(e)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{grown:.0f} {time.perf_counter() - t:.2f} {result}")
    """
)


def _run(kind: str, path: Path, folder: str = "") -> tuple[float, float, str]:
    out = subprocess.run(
        [sys.executable, "-c", RSS, kind, str(path), folder], capture_output=True, text=True, cwd=REPO,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    grown, secs, result = out.stdout.strip().splitlines()[-1].split(" ", 2)
    return float(grown), float(secs), result


def test_two_hour_file_read_small(two_hour_wav):
    grown, secs, result = _run("read", two_hour_wav)
    assert result == "ok"
    assert grown < 100, f"peak RSS grew {grown} MB reading 30 s of a 2-hour file"  # whole: ~1.5 GB


def test_two_hour_audio_prompt_refused_small(two_hour_wav, musicgen_converted):
    grown, secs, result = _run("audio_prompt", two_hour_wav, str(musicgen_converted))
    assert result.startswith("UserError") and "at least 30.00 s" in result, result
    assert grown < 100, grown


def test_two_hour_init_audio_small(two_hour_wav, stable_audio_small_converted):
    grown, secs, result = _run("init_audio", two_hour_wav, str(stable_audio_small_converted))
    assert result == "ok", result
    assert grown < 150, grown


def test_long_melody_file_equals_the_array(melody_converted, tmp_path):
    """A melody file longer than what is used gives exactly the tokens of the whole melody as an array
    (one window: its first 30 s; several windows: up to the last window's end, wrapping when shorter)."""
    from mlx_audio_generate.musicgen.generate import MusicGen

    model = MusicGen.from_pretrained(melody_converted)
    rng = np.random.default_rng(1)
    for seconds_of_melody in (40.0, 2.0):
        wav = (rng.standard_normal(round(seconds_of_melody * SR)) * 0.2).astype(np.float32)
        path = tmp_path / f"m{seconds_of_melody}.wav"
        sf.write(path, wav, SR, subtype="FLOAT")
        for kw in (dict(seconds=0.4), dict(seconds=3.0, window_seconds=1.0, extend_stride=0.5)):
            a = model.generate_tokens("x", seed=0, melody=path, **kw)
            b = model.generate_tokens("x", seed=0, melody=wav, **kw)
            assert np.array_equal(np.array(a), np.array(b)), (seconds_of_melody, kw)


def test_hour_plan_is_instant():
    t = time.perf_counter()
    plan = plan_windows(round(MAX_TOTAL_SECONDS * 50), 1500, 900)
    assert len(plan) == 200 and plan[-1].offset + plan[-1].prompt_frames + plan[-1].new_frames == 180000
    huge = plan_windows(10**12, 1500, 900)  # O(1) memory whatever the length
    assert len(huge) == 1 + -(-(10**12 - 1500) // 900)
    assert time.perf_counter() - t < 0.1


@pytest.fixture(scope="module")
def musicgen(musicgen_converted):
    from mlx_audio_generate.musicgen.generate import MusicGen

    return MusicGen.from_pretrained(musicgen_converted)


@pytest.mark.parametrize(
    "kw",
    [
        dict(seconds="5"),
        dict(prompt=5),
        dict(prompt=None),
        dict(melody=12),
        dict(audio_prompt={"a": 1}),
        dict(extend_stride="x", seconds=40),
        dict(seed=1.5),
        dict(window_seconds="x"),
        dict(audio_prompt=np.zeros((16000, 1), np.float32)),  # (samples, channels): transposed
        dict(stream=True, seconds="5"),
        dict(stream=True, chunk_seconds="x"),
    ],
)
def test_musicgen_bad_types_are_user_errors(musicgen, kw):
    kw = {"prompt": "x", "seconds": 0.2, **kw}
    if kw.pop("stream", False):
        chunk = kw.pop("chunk_seconds", 1.0)
        call = lambda: list(musicgen.stream(kw.pop("prompt"), chunk_seconds=chunk, **kw))  # noqa: E731
    else:
        call = lambda: musicgen.generate(kw.pop("prompt"), **kw)  # noqa: E731
    with pytest.raises(UserError) as e:
        call()
    assert "\n" not in str(e.value)
