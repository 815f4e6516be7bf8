"""CLI end to end for MusicGen: convert a tiny transformers checkpoint, generate, and bad input handling."""

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


def run(main, args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def gen(weights, out: Path, capsys, *extra: str, prompt: str = "lofi piano", seconds: str = "0.5"):
    args = ["--model", "musicgen", "--prompt", prompt, "--seconds", seconds, "--weights-dir", str(weights)]
    code, _, err = run(generate_cli.main, [*args, "--output", str(out), "--quiet", *extra], capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    return audio.T, sr


def test_convert_cli(musicgen_dir, tmp_path, capsys):
    code, out, err = run(
        convert_cli.main, ["--model", str(musicgen_dir), "--output", str(tmp_path / "m")], capsys
    )
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    # a second conversion into the same non-empty folder needs --force
    code, _, err = run(
        convert_cli.main, ["--model", str(musicgen_dir), "--output", str(tmp_path / "m")], capsys
    )
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1


def test_generate_length_rate_and_determinism(musicgen_converted, tmp_path, capsys):
    a, sr = gen(musicgen_converted, tmp_path / "a.wav", capsys, "--seed", "5", seconds="0.73")
    assert sr == 32000 and a.shape == (1, round(0.73 * 32000))
    b, _ = gen(musicgen_converted, tmp_path / "b.wav", capsys, "--seed", "5", seconds="0.73")
    c, _ = gen(musicgen_converted, tmp_path / "c.wav", capsys, "--seed", "6", seconds="0.73")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert not np.array_equal(a, c)


def test_stereo_file_has_two_channels(musicgen_stereo_converted, tmp_path, capsys):
    a, sr = gen(musicgen_stereo_converted, tmp_path / "s.wav", capsys, "--seed", "1")
    assert sr == 32000 and a.shape == (2, 16000)
    assert not np.array_equal(a[0], a[1])  # left and right come from different codebooks


def test_sampling_flags_change_output_as_they_should(musicgen_converted, tmp_path, capsys):
    w = musicgen_converted

    def g(name, *extra):
        return gen(w, tmp_path / f"{name}.wav", capsys, *extra)[0]

    greedy1 = g("greedy1", "--top-k", "1", "--seed", "1")
    greedy2 = g("greedy2", "--top-k", "1", "--seed", "2")
    np.testing.assert_array_equal(greedy1, greedy2)  # top-k 1 is greedy: the seed no longer matters
    np.testing.assert_array_equal(g("temp0", "--temperature", "0", "--seed", "3"), greedy1)  # T=0 is greedy
    # a tiny nucleus keeps only the most likely token: greedy again, whatever the seed
    np.testing.assert_array_equal(g("p", "--top-p", "1e-6", "--seed", "4"), greedy1)
    sampled = g("s1", "--seed", "1")
    assert not np.array_equal(sampled, greedy1)  # default top-k 250 samples
    assert not np.array_equal(g("hot", "--temperature", "3", "--seed", "1"), sampled)  # temperature is used
    assert not np.array_equal(g("k2", "--top-k", "2", "--seed", "1"), sampled)  # top-k is used
    assert not np.array_equal(g("p5", "--top-p", "0.5", "--seed", "1"), sampled)  # top-p is used


def test_auto_named_output(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--model", "musicgen", "--prompt", "Lofi Piano!", "--seconds", "0.2", "--seed", "9"]
    code, out, err = run(generate_cli.main, [*args, "--weights-dir", str(musicgen_converted)], capsys)
    assert code == 0, err
    assert (tmp_path / "musicgen_lofi-piano_9.wav").is_file()
    code, _, _ = run(generate_cli.main, [*args, "--weights-dir", str(musicgen_converted)], capsys)
    assert (tmp_path / "musicgen_lofi-piano_9_1.wav").is_file()  # never overwrites


def _bad_inputs(tmp_path: Path, weights: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(weights, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    ro = tmp_path / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o500)
    base = ["--model", "musicgen", "--prompt", "x", "--seconds", "0.2"]
    w = ["--weights-dir", str(weights)]
    return {
        "missing weights dir": (
            [*base, "--weights-dir", str(tmp_path / "nope"), "--output", "o.wav"],
            "does not exist",
        ),
        "empty weights dir": ([*base, "--weights-dir", str(empty), "--output", "o.wav"], "config.json"),
        "corrupt weights": ([*base, "--weights-dir", str(corrupt), "--output", "o.wav"], "safetensors"),
        "no weights dir": ([*base, "--output", "o.wav"], "--weights-dir"),
        "seconds zero": (
            ["--model", "musicgen", "--prompt", "x", "--seconds", "0", *w, "--output", "o.wav"],
            "seconds",
        ),
        "seconds negative": (["--model", "musicgen", "--prompt", "x", "--seconds", "-1", *w], "seconds"),
        "seconds nan": (["--model", "musicgen", "--prompt", "x", "--seconds", "nan", *w], "seconds"),
        # (beyond 30 s is no longer an error: long clips extend the window, tests/test_longform.py)
        "seconds infinite": (
            ["--model", "musicgen", "--prompt", "x", "--seconds", "inf", *w, "--output", "o.wav"],
            "seconds",
        ),
        "empty prompt": (
            ["--model", "musicgen", "--prompt", "  ", "--seconds", "1", *w, "--output", "o.wav"],
            "prompt",
        ),
        "unknown model": (
            ["--model", "audiogen", "--prompt", "x", *w, "--output", "o.wav"],
            "unknown --model",
        ),
        "top-k zero": ([*base, *w, "--top-k", "0", "--output", "o.wav"], "--top-k"),
        "top-p over one": ([*base, *w, "--top-p", "1.5", "--output", "o.wav"], "--top-p"),
        "negative temperature": ([*base, *w, "--temperature", "-1", "--output", "o.wav"], "--temperature"),
        "output folder missing": ([*base, *w, "--output", str(tmp_path / "no" / "o.wav")], "does not exist"),
        "output is a directory": ([*base, *w, "--output", str(empty)], "directory"),
        "output unwritable": ([*base, *w, "--output", str(ro / "o.wav")], "not writable"),
        "bad extension": ([*base, *w, "--output", str(tmp_path / "o.xyz")], "extension"),
        "not a number": (["--model", "musicgen", "--prompt", "x", "--seconds", "ten", *w], "invalid float"),
    }


def test_bad_input_gives_one_line_and_exit_2(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if os.geteuid() == 0:
        # root ignores permission bits; simulate the unwritable folder check's answer honestly
        import mlx_audio_generate.audio as audio_mod

        monkeypatch.setattr(audio_mod.os, "access", lambda p, m: "readonly" not in str(p))
    for name, (args, expect) in _bad_inputs(tmp_path, musicgen_converted).items():
        before = set(os.listdir(tmp_path))
        code, out, err = run(generate_cli.main, args, capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert expect.lower() in lines[0].lower(), (name, lines[0])
        assert set(os.listdir(tmp_path)) == before, name  # no partial output left behind


def test_console_script_subprocess(musicgen_converted, tmp_path):
    exe = Path(sys.executable).parent / "mlx-audio-generate"
    out = tmp_path / "sub.wav"
    args = ["--model", "musicgen", "--prompt", "lofi", "--seconds", "0.3", "--seed", "1"]
    r = subprocess.run(
        [str(exe), *args, "--weights-dir", str(musicgen_converted), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).frames == round(0.3 * 32000)
    r = subprocess.run(
        [str(exe), *args, "--weights-dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
