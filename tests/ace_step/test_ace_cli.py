"""`mlx-audio-generate --model ace_step --weights-dir ...` end to end on the converted tiny turbo checkpoint:
the file (length, channels, 48 kHz), equality with the Python API, the ACE-Step flags, a batch file, the
convert CLI, and bad input (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate as mag
from mlx_audio_generate.cli import batch as batch_cli
from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert
from tests.reference import require

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
SR = 48000
LYRICS = "[Verse]\nHello world"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return convert(str(FIXTURES / "acestep-v15-turbo"), tmp_path_factory.mktemp("ace-cli") / "turbo")


def run(main, args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def gen(weights, out: Path, capsys, *extra) -> np.ndarray:
    args = ["--model", "ace_step", "--weights-dir", weights, "--prompt", "upbeat pop", "--seconds", "4",
            "--seed", "7", "--steps", "3", "--output", out, "--quiet", *extra]  # fmt: skip
    code, err = run(generate_cli.main, args, capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    assert sr == SR
    return audio.T


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect.lower() in lines[0].lower(), lines[0]


def test_generate_file_equals_api(weights, tmp_path, capsys):
    flags = ("--lyrics", LYRICS, "--bpm", "120", "--keyscale", "C major", "--timesignature", "4",
             "--language", "en", "--shift", "2")  # fmt: skip
    a = gen(weights, tmp_path / "a.wav", capsys, *flags)
    assert a.shape == (2, 4 * SR)
    api = mag.load(str(weights)).generate(
        ["upbeat pop"], seconds=4, seed=[7], steps=3, lyrics=LYRICS, bpm=120, keyscale="C major",
        timesignature="4", language="en", shift=2.0,
    )[0]  # fmt: skip
    assert np.allclose(a, api, atol=1e-6)  # the CLI is the Python API with the same seed (a list of one)
    plain = gen(weights, tmp_path / "b.wav", capsys)
    assert not np.allclose(a, plain)  # the flags act


def test_batch_file(weights, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"prompt": "upbeat pop", "seconds": 4, "seed": 7, "steps": 3, "lyrics": LYRICS},
             {"prompt": "jazz", "seconds": 4.5, "seed": 8, "steps": 2, "bpm": 90, "keyscale": "A minor",
              "id": "second"}]  # fmt: skip
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    code, err = run(batch_cli.main, ["--weights-dir", weights, "--prompts-file", jobs, "--output-dir", out,
                                     "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    first, sr = sf.read(out / rows[0]["file"], dtype="float32", always_2d=True)
    assert sr == SR and first.shape == (4 * SR, 2)
    api = mag.load(str(weights)).generate(["upbeat pop"], seconds=4, seed=[7], steps=3, lyrics=LYRICS)[0]
    assert np.allclose(first.T, api, atol=1e-6)
    second, _ = sf.read(out / rows[1]["file"], dtype="float32", always_2d=True)
    assert second.shape == (round(4.5 * SR), 2)


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--seconds", "601"], "at most 600"),
        (["--bpm", "20"], "bpm"),
        (["--bpm", "301"], "bpm"),
        (["--keyscale", "H major"], "keyscale"),
        (["--timesignature", "5"], "timesignature"),
        (["--language", "klingon"], "language"),
        (["--guidance-scale", "5"], "turbo"),
        (["--steps", "21"], "steps"),
        (["--cfg-scale", "3"], "stable audio"),
    ],
)
def test_bad_input(weights, tmp_path, capsys, extra, expect):
    out = tmp_path / "x.wav"
    args = ["--model", "ace_step", "--weights-dir", weights, "--prompt", "pop", "--seconds", "4",
            "--output", out, "--quiet", *extra]  # fmt: skip
    if "--seconds" in extra:
        args[args.index("--seconds") + 1] = extra[extra.index("--seconds") + 1]
    code, err = run(generate_cli.main, args, capsys)
    assert_one_line_error(code, err, expect)
    assert not out.exists()


@pytest.mark.parametrize(
    "remove, expect", [("vae", "vae/"), ("acestep-v15-turbo/silence_latent.pt", "silence")]
)
def test_convert_cli_missing_parts(tmp_path, capsys, remove, expect):
    if "silence" not in remove:
        require("torch")  # the converter reads the silence latent (a pickle) before it looks for the VAE
    src = tmp_path / "repo"
    for part in ("acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B"):
        shutil.copytree(FIXTURES / part, src / part)
    target = src / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, err = run(convert_cli.main, ["--model", src, "--output", tmp_path / "m", "--quiet"], capsys)
    assert_one_line_error(code, err, expect)
    assert not (tmp_path / "m").exists()


def test_convert_cli_components_flag(tmp_path, capsys):
    require("torch")  # the silence latent is a pickle
    lone = tmp_path / "lone" / "acestep-v15-turbo"
    shutil.copytree(FIXTURES / "acestep-v15-turbo", lone)
    code, err = run(convert_cli.main, ["--model", lone, "--output", tmp_path / "m", "--components", FIXTURES,
                                       "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "m" / "model.safetensors").is_file()
