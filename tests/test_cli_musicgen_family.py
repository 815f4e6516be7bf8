"""CLI end to end for the MusicGen family flags: --melody, --audio-prompt, --extend-stride (long clips),
stereo output, and their bad inputs (one line, exit 2, no file left behind)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.musicgen.generate import MusicGen

SR = 32000


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    return e.value.code, capsys.readouterr().err


def gen(weights, out: Path, capsys, *extra: str, seconds: str = "0.4") -> np.ndarray:
    args = ["--model", "musicgen", "--prompt", "lofi piano", "--seconds", seconds, "--seed", "3"]
    code, err = run([*args, "--weights-dir", str(weights), "--output", str(out), "--quiet", *extra], capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    assert sr == SR
    return audio.T


def write(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, np.asarray(audio, np.float32).T, sr)
    return path


def tone(seconds: float, freq: float = 330.0, channels: int = 1, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return np.stack([np.sin(2 * np.pi * freq * (c + 1) * t) * 0.5 for c in range(channels)])


def test_melody_flag(melody_converted, tmp_path, capsys):
    melody = write(tmp_path / "melody.flac", tone(1.5, 440.0, channels=2), sr=44100)  # resampled, downmixed
    audio = gen(melody_converted, tmp_path / "m.wav", capsys, "--melody", str(melody))
    plain = gen(melody_converted, tmp_path / "p.wav", capsys)
    assert audio.shape == plain.shape == (1, round(0.4 * SR))
    api = MusicGen.from_pretrained(melody_converted).generate(
        "lofi piano", seconds=0.4, seed=3, melody=melody
    )
    np.testing.assert_array_equal(audio, api[0])
    assert not np.array_equal(audio, plain)


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
def test_audio_prompt_flag(stereo, request, tmp_path, capsys):
    weights = request.getfixturevalue("musicgen_stereo_converted" if stereo else "musicgen_converted")
    prompt = write(tmp_path / "prompt.wav", tone(0.2, channels=2 if stereo else 1))
    audio = gen(weights, tmp_path / "c.wav", capsys, "--audio-prompt", str(prompt), seconds="0.5")
    assert audio.shape == (2 if stereo else 1, round(0.5 * SR))  # --seconds is the total length
    model = MusicGen.from_pretrained(weights)
    np.testing.assert_array_equal(audio, model.generate("lofi piano", 0.5, seed=3, audio_prompt=prompt)[0])
    if stereo:
        assert not np.array_equal(audio[0], audio[1])


def test_long_clip_flag(musicgen_stereo_converted, tmp_path, capsys, monkeypatch):
    # A 0.2 s window keeps the tiny model fast; the CLI path is the same as with the real 30 s window.
    monkeypatch.setattr(MusicGen, "max_seconds", property(lambda self: 0.2))
    audio = gen(
        musicgen_stereo_converted, tmp_path / "l.wav", capsys, "--extend-stride", "0.12", seconds="0.5"
    )
    assert audio.shape == (2, round(0.5 * SR))
    model = MusicGen.from_pretrained(musicgen_stereo_converted)
    api = model.generate("lofi piano", 0.5, seed=3, window_seconds=0.2, extend_stride=0.12)
    np.testing.assert_array_equal(audio, api[0])
    other = gen(
        musicgen_stereo_converted, tmp_path / "o.wav", capsys, "--extend-stride", "0.1", seconds="0.5"
    )
    assert not np.array_equal(audio, other)  # the stride is used


def test_bad_inputs_one_line_exit_2(musicgen_converted, melody_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notaudio.wav").write_text("not audio")
    long = write(tmp_path / "long.wav", tone(0.5))
    ok = write(tmp_path / "ok.wav", tone(0.2))
    base = ["--model", "musicgen", "--prompt", "x", "--seconds", "0.3", "--output", "o.wav"]
    mg, mel = ["--weights-dir", str(musicgen_converted)], ["--weights-dir", str(melody_converted)]
    cases = {
        "unreadable melody": ([*base, *mel, "--melody", "notaudio.wav"], "--melody"),
        "missing melody": ([*base, *mel, "--melody", "nope.wav"], "does not exist"),
        "melody on a plain checkpoint": ([*base, *mg, "--melody", str(ok)], "melody checkpoint"),
        "prompt longer than seconds": ([*base, *mg, "--audio-prompt", str(long)], "shorter than --seconds"),
        "unreadable audio prompt": ([*base, *mg, "--audio-prompt", "notaudio.wav"], "--audio-prompt"),
        "stride zero": ([*base, *mg, "--extend-stride", "0"], "--extend-stride"),
        "stride negative": ([*base, *mg, "--extend-stride", "-3"], "--extend-stride"),
        "stride at window": ([*base, *mg, "--extend-stride", "30"], "--extend-stride"),
        "stride nan": ([*base, *mg, "--extend-stride", "nan"], "--extend-stride"),
        "stable audio with melody": (
            ["--model", "stable_audio", "--prompt", "x", *mg, "--melody", str(ok)],
            "musicgen options",
        ),
    }
    for name, (args, expect) in cases.items():
        before = set(os.listdir(tmp_path))
        code, err = run(args, capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert expect.lower() in lines[0].lower(), (name, lines[0])
        assert set(os.listdir(tmp_path)) == before, name  # no partial output
