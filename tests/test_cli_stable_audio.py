"""CLI end to end for Stable Audio Open: convert tiny stable-audio-tools checkpoints, generate, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.cli import generate as generate_cli

SR = 44100
SMALL_WINDOW = 32768 / SR  # the tiny "small"-style model's sample_size / sample_rate


def run(main, args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(weights, out: Path, capsys, *extra: str, prompt: str = "lofi piano", seconds: str = "0.5"):
    args = [
        "--model",
        "stable_audio",
        "--prompt",
        prompt,
        "--seconds",
        seconds,
        "--weights-dir",
        str(weights),
    ]
    code, _, err = run(generate_cli.main, [*args, "--output", str(out), "--quiet", *extra], capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    return audio.T, sr


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect.lower() in lines[0].lower(), lines[0]


def test_convert_cli(stable_audio_small, tmp_path, capsys):
    src = stable_audio_small[0]
    args = ["--model", str(src), "--output", str(tmp_path / "m"), "--t5", str(src / "t5")]
    code, out, err = run(convert_cli.main, [*args, "--dtype", "float16"], capsys)
    assert code == 0, err
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    a, sr = gen(tmp_path / "m", tmp_path / "a.wav", capsys, "--steps", "2", "--seed", "0")
    assert sr == SR and a.shape == (2, round(0.5 * SR)) and np.isfinite(a).all()


def test_convert_cli_missing_t5(stable_audio_small, tmp_path, capsys):
    src = stable_audio_small[0]
    (tmp_path / "empty").mkdir()
    for t5, expect in (
        (tmp_path / "nope", "neither an existing folder"),
        (tmp_path / "empty", "config.json"),
    ):
        args = ["--model", str(src), "--output", str(tmp_path / "m"), "--t5", str(t5)]
        code, _, err = run(convert_cli.main, args, capsys)
        assert_one_line_error(code, err, expect)
        assert not (tmp_path / "m").exists()
        assert {p.name for p in tmp_path.iterdir()} == {"empty"}  # no temp folder left behind


@pytest.mark.parametrize("seconds", ["0.3", "0.517", "0.7"])
def test_length_channels_rate(stable_audio_small_converted, tmp_path, capsys, seconds):
    a, sr = gen(stable_audio_small_converted, tmp_path / "a.wav", capsys, "--seed", "1", seconds=seconds)
    assert sr == SR and a.shape == (2, round(float(seconds) * SR))
    assert not np.array_equal(a[0], a[1])


def test_determinism(stable_audio_small_converted, tmp_path, capsys):
    w = stable_audio_small_converted
    a, _ = gen(w, tmp_path / "a.wav", capsys, "--seed", "5")
    b, _ = gen(w, tmp_path / "b.wav", capsys, "--seed", "5")
    c, _ = gen(w, tmp_path / "c.wav", capsys, "--seed", "6")
    # The samples, bit for bit (not the file bytes: libsndfile's WAV PEAK chunk holds a timestamp).
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_negative_prompt(stable_audio_1_0_converted, tmp_path, capsys):
    w = stable_audio_1_0_converted

    def g(name: str, *extra: str) -> np.ndarray:
        return gen(w, tmp_path / f"{name}.wav", capsys, "--seed", "2", "--steps", "3", *extra)[0]

    plain = g("plain")  # default cfg 7
    negative = g("neg", "--negative-prompt", "muffled noise")
    assert not np.array_equal(plain, negative)
    # At cfg 1 there is no unconditional pass (as in the reference), so the negative prompt has no effect.
    one = g("one", "--cfg-scale", "1")
    np.testing.assert_array_equal(one, g("one-neg", "--cfg-scale", "1", "--negative-prompt", "muffled noise"))
    assert not np.array_equal(one, plain)  # --cfg-scale is used


@pytest.mark.parametrize(
    "style,sampler",
    [("small", "pingpong"), ("small", "euler"), ("small", "rk4"), ("small", "dpmpp"),
     ("1.0", "dpmpp-3m-sde"), ("1.0", "dpmpp-2m-sde"), ("1.0", "dpmpp-2m"), ("1.0", "k-heun"),
     ("1.0", "euler")],
)  # fmt: skip
def test_each_sampler_runs(request, tmp_path, capsys, style, sampler):
    w = request.getfixturevalue(
        "stable_audio_small_converted" if style == "small" else "stable_audio_1_0_converted"
    )
    a, sr = gen(w, tmp_path / "s.wav", capsys, "--sampler", sampler, "--steps", "3", "--seed", "0")
    assert sr == SR and a.shape == (2, round(0.5 * SR)) and np.isfinite(a).all()


def _bad_inputs(tmp_path: Path, small: Path, v1: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(small, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    out = ["--output", "o.wav"]

    def sa(weights: Path, *extra: str, seconds: str = "0.3") -> list[str]:
        base = ["--model", "stable_audio", "--prompt", "x", "--seconds", seconds]
        return [*base, "--weights-dir", str(weights), *out, *extra]

    return {
        "unknown sampler": (sa(small, "--sampler", "ddim"), "choose one of"),
        "sampler of the other objective": (sa(v1, "--sampler", "pingpong"), "does not fit"),
        "steps zero": (sa(small, "--steps", "0"), "--steps"),
        "negative cfg": (sa(small, "--cfg-scale", "-1"), "--cfg-scale"),
        "seconds over the window": (sa(small, seconds=str(round(SMALL_WINDOW + 0.01, 3))), "at most 0.743"),
        "seconds zero": (sa(small, seconds="0"), "seconds"),
        "seconds nan": (sa(small, seconds="nan"), "seconds"),
        "empty prompt": (
            ["--model", "stable_audio", "--prompt", " ", "--weights-dir", str(small), *out],
            "prompt",
        ),
        "corrupt weights": (sa(corrupt), "safetensors"),
        "musicgen flag on stable audio weights": (
            ["--model", "musicgen", "--prompt", "x", "--seconds", "0.3", "--weights-dir", str(small), *out],
            "--model stable_audio",
        ),
    }


def test_bad_input_gives_one_line_and_exit_2(
    stable_audio_small_converted, stable_audio_1_0_converted, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cases = _bad_inputs(tmp_path, stable_audio_small_converted, stable_audio_1_0_converted)
    for name, (args, expect) in cases.items():
        before = set(os.listdir(tmp_path))
        code, _, err = run(generate_cli.main, args, capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert expect.lower() in lines[0].lower(), (name, lines[0])
        assert set(os.listdir(tmp_path)) == before and not (tmp_path / "o.wav").exists(), name


def test_console_script_subprocess(stable_audio_small_converted, tmp_path):
    exe = Path(sys.executable).parent / "mlx-audio-generate"
    out = tmp_path / "sub.wav"
    args = ["--model", "stable_audio", "--prompt", "rain", "--seconds", "0.4", "--seed", "1", "--quiet"]
    w = ["--weights-dir", str(stable_audio_small_converted)]
    r = subprocess.run(
        [str(exe), *args, *w, "--output", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    info = sf.info(str(out))
    assert (info.frames, info.channels, info.samplerate) == (round(0.4 * SR), 2, SR)
    bad = tmp_path / "bad.wav"
    r = subprocess.run(
        [str(exe), *args, *w, "--sampler", "nope", "--output", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not bad.exists()
