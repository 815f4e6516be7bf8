"""`mlx-audio-generate --model ace_step --task ...` end to end on the converted tiny checkpoints: one run per
task (the file's length is the source's, 2 channels, 48 kHz; equal to the Python API), and bad input (a
one-line error, exit 2, no output file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate as mag
from mlx_audio_generate.ace_step.modes import codes_text
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert
from tests.reference.ace_modes import test_audio as make_audio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
SR = 48000


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ace-modes-cli")
    return {v: convert(str(FIXTURES / f"acestep-v15-{v}"), root / v) for v in ("turbo", "base")}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 5.5 s stereo source (not a whole number of 1920-sample frames) and a mono 44.1 kHz reference."""
    root = tmp_path_factory.mktemp("ace-modes-clips")
    src, ref = root / "src.wav", root / "ref.flac"
    sf.write(src, make_audio(5.5, 1).T, SR, subtype="FLOAT")
    sf.write(ref, make_audio(3.0, 2)[0][::2].copy(), 24000)
    return {"src": src, "ref": ref}


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def gen(weights: Path, out: Path, capsys, *extra) -> np.ndarray:
    args = ["--model", "ace_step", "--weights-dir", weights, "--prompt", "rock", "--seed", "7", "--steps",
            "2", "--output", out, "--quiet", *extra]  # fmt: skip
    code, err = run(args, capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    assert sr == SR and audio.shape[1] == 2
    return audio.T


@pytest.mark.parametrize(
    "variant, flags",
    [
        ("turbo", ["--task", "repaint", "--src-audio", "{src}", "--repaint-start", "1",
                   "--repaint-end", "3"]),
        ("turbo", ["--task", "cover", "--src-audio", "{src}", "--audio-cover-strength", "0.5",
                   "--cover-noise-strength", "0.4"]),
        ("turbo", ["--reference-audio", "{ref}", "--retake-variance", "0.3", "--retake-seed", "9"]),
        ("base", ["--task", "lego", "--src-audio", "{src}", "--track", "guitar", "--guidance-scale", "2"]),
        ("base", ["--task", "extract", "--src-audio", "{src}", "--track", "drums"]),
        ("base", ["--task", "complete", "--src-audio", "{src}", "--track", "bass"]),
    ],
)  # fmt: skip
def test_task_runs(weights, clips, tmp_path, capsys, variant, flags):
    flags = [f.format(**clips) for f in flags]
    audio = gen(weights[variant], tmp_path / "out.wav", capsys, "--seconds", "4", *flags)
    # a source task's song is the source's length (--seconds does not apply); otherwise --seconds
    want = round(5.5 * SR) if "--src-audio" in flags else 4 * SR
    assert audio.shape == (2, want)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def test_codes_cli_equals_api(weights, tmp_path, capsys):
    """--audio-codes (the LM's text) makes a cover of the codes' length, as AceStep.generate(audio_codes=)."""
    codes = [int(c) for c in np.random.default_rng(0).integers(0, 64000, 30)]
    audio = gen(weights["turbo"], tmp_path / "c.wav", capsys, "--audio-codes", codes_text(codes))
    assert audio.shape == (2, 30 * 5 * 1920)
    api = mag.load(str(weights["turbo"])).generate(["rock"], seed=[7], steps=2, audio_codes=codes)[0]
    assert np.allclose(audio, api, atol=1e-6)


@pytest.mark.parametrize(
    "variant, flags, expect",
    [
        ("turbo", ["--task", "repaint"], "needs src_audio"),
        ("turbo", ["--task", "repaint", "--src-audio", "{src}", "--repaint-end", "9"], "past the end"),
        ("turbo", ["--task", "repaint", "--src-audio", "{src}", "--repaint-start", "2", "--repaint-end", "1"],
         "empty"),
        ("turbo", ["--task", "lego", "--src-audio", "{src}"], "does not fit this model"),
        ("base", ["--task", "extract", "--src-audio", "{src}", "--track", "kazoo"], "track"),
        ("turbo", ["--audio-codes", "<|audio_code_99999|>"], "out of range"),
        ("turbo", ["--task", "cover", "--src-audio", "/nonexistent.wav"], "does not exist"),
    ],
)  # fmt: skip
def test_bad_input(weights, clips, tmp_path, capsys, variant, flags, expect):
    out = tmp_path / "bad.wav"
    args = ["--model", "ace_step", "--weights-dir", weights[variant], "--prompt", "rock", "--seed", "1",
            "--steps", "1", "--output", out, *[f.format(**clips) for f in flags]]  # fmt: skip
    code, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expect.lower() in lines[0].lower(), lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.wav"))
