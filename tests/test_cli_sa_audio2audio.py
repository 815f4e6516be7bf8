"""CLI end to end for Stable Audio variations (--init-audio) and inpainting (--inpaint-audio)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate.audio import write_audio
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.stable_audio.generate import StableAudio


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    out = capsys.readouterr()
    return e.value.code, out.err


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    t = np.arange(44100) / 44100
    x = 0.2 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32)
    return write_audio(tmp_path_factory.mktemp("clip") / "clip.wav", x, 44100)


def test_init_audio_cli_matches_the_api(stable_audio_small_converted, clip, tmp_path, capsys):
    w = ["--model", "stable_audio", "--weights-dir", str(stable_audio_small_converted)]
    out = tmp_path / "var.wav"
    # the tiny small-style window is 0.74 s (2048 x 16 samples)
    args = [*w, "--prompt", "drums", "--seconds", "0.7", "--seed", "3", "--init-audio", str(clip)]
    code, err = run([*args, "--init-strength", "0.5", "--output", str(out), "--quiet"], capsys)
    assert code == 0, err
    got, sr = sf.read(out, dtype="float32", always_2d=True)
    api = StableAudio.from_pretrained(stable_audio_small_converted).generate(
        "drums", seconds=0.7, seed=3, init_audio=str(clip), init_strength=0.5
    )[0]
    assert sr == 44100 and got.shape == (round(0.7 * 44100), 2)
    np.testing.assert_array_equal(got.T, api)


def test_inpaint_cli_runs_and_keeps_the_length(stable_audio_1_0_converted, clip, tmp_path, capsys):
    w = ["--model", "stable_audio", "--weights-dir", str(stable_audio_1_0_converted)]
    out = tmp_path / "inp.wav"
    args = [*w, "--prompt", "cymbal", "--seconds", "1.0", "--steps", "3", "--inpaint-audio", str(clip)]
    code, err = run(
        [*args, "--mask-start", "0.2", "--mask-end", "0.6", "--output", str(out), "--quiet"], capsys
    )
    assert code == 0, err
    assert sf.info(str(out)).frames == 44100


def test_bad_audio_to_audio_input(
    stable_audio_small_converted, stable_audio_1_0_converted, clip, tmp_path, capsys
):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not audio")
    small = ["--model", "stable_audio", "--weights-dir", str(stable_audio_small_converted), "--prompt", "x"]
    big = ["--model", "stable_audio", "--weights-dir", str(stable_audio_1_0_converted), "--prompt", "x"]
    cases = {
        "unreadable init": ([*small, "--init-audio", str(junk), "--init-strength", "0.5"], "not audio"),
        "strength out of range": ([*small, "--init-audio", str(clip), "--init-strength", "1.5"], "strength"),
        "mask end before start": (
            [*big, "--inpaint-audio", str(clip), "--mask-start", "0.6", "--mask-end", "0.2"],
            "mask",
        ),
        "mask outside the clip": (
            [*big, "--inpaint-audio", str(clip), "--mask-start", "0.5", "--mask-end", "3"],
            "mask",
        ),
    }
    os.chdir(tmp_path)
    for name, (args, expect) in cases.items():
        before = set(os.listdir(tmp_path))
        code, err = run([*args, "--seconds", "0.7", "--output", str(tmp_path / "o.wav")], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expect in lines[0].lower(), (name, err)
        assert set(os.listdir(tmp_path)) == before, name
