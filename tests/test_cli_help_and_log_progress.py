"""The plain `--help` (batch mode's flags and defaults, --sampler's choices, examples), `--version`,
`python -m mlx_audio_generate`, the "loading..." line, batch mode's per-step bar, and progress written as
whole lines (no carriage returns) when stderr is not a terminal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_audio_generate
from mlx_audio_generate import progress
from mlx_audio_generate.cli import batch as batch_cli
from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.cli import serve as serve_cli
from mlx_audio_generate.diffusion.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]


def run(main, args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_plain_help_shows_batch_mode_samplers_and_examples(capsys):
    code, out, _ = run(generate_cli.main, ["--help"], capsys)
    text = " ".join(out.split())  # argparse wraps lines
    assert code == 0
    assert "--output-dir" in text and "--format {wav,flac,ogg,mp3}" in text and "(default wav)" in text
    assert "(default 4; 1 with --prompts-file)" in text and "0 with --prompts-file" in text
    for name in (n for names in SAMPLERS.values() for n in names):
        assert name in text.rsplit("--sampler SAMPLER", 1)[1].split("--negative-prompt", 1)[0], name
    assert "examples:" in out and "mlx-audio-generate --model musicgen-small --prompt" in out
    assert "--prompts-file jobs.jsonl --output-dir out/" in out


def test_batch_flags_without_a_prompts_file_are_refused(tmp_path, capsys):
    code, _, err = run(
        generate_cli.main, ["--model", "musicgen-small", "--prompt", "x", "--format", "flac"], capsys
    )
    assert code == 2 and "--format applies only to a batch job (--prompts-file)" in err, err


@pytest.mark.parametrize("main", [generate_cli.main, convert_cli.main, batch_cli.main, serve_cli.main])
def test_version(main, capsys):
    code, out, _ = run(main, ["--version"], capsys)
    assert code == 0 and out.strip().endswith(mlx_audio_generate.__version__)


def test_python_dash_m_runs_the_generate_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "mlx_audio_generate", "--version"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and r.stdout.strip() == f"mlx-audio-generate {mlx_audio_generate.__version__}"
    r = subprocess.run([sys.executable, "-m", "mlx_audio_generate", "--prompt", "x"], capture_output=True,
                       text=True, env=env)  # fmt: skip
    assert r.returncode == 2 and "--model" in r.stderr


def test_bars_are_whole_lines_when_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    clock = iter([0.0, 1.0, 12.0, 13.0, 30.0, 31.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.tqdm_bar("denoising")
    for done in range(6):
        bar(done, 5)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # a line each time 10 s have passed (at 12 s and 30 s), then the completed bar; not a line per step
    assert [line.split("|")[0] for line in lines] == ["denoising:  40%", "denoising:  80%", "denoising: 100%"]
    assert " 2/5 " in lines[0] and " 4/5 " in lines[1] and " 5/5 [00:31" in lines[2], lines

    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress.tqdm_bar("denoising")
    for done in range(6):
        bar(done, 5)
    assert "\r" in tty.getvalue()  # a terminal gets tqdm's redrawn bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_loading_line_and_batch_per_step_bar(musicgen_converted, tmp_path, capsys, monkeypatch):
    args = ["--model", "musicgen", "--weights-dir", musicgen_converted, "--prompt", "x", "--seconds", "0.3"]
    code, _, err = run(generate_cli.main, [*args, "--output", tmp_path / "log.wav"], capsys)
    assert code == 0 and "loading musicgen" not in err  # a log: no status line (an error stays one line)
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)  # a terminal: the one waiting is told
    with pytest.raises(SystemExit):
        generate_cli.main([str(a) for a in args] + ["--output", str(tmp_path / "tty.wav")])
    monkeypatch.undo()
    assert "loading musicgen (MusicGen)..." in tty.getvalue()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": p, "seconds": 0.3}) + "\n" for p in ("a", "b", "c")))
    out = tmp_path / "out"
    args = ["--weights-dir", musicgen_converted, "--prompts-file", jobs, "--output-dir", out]
    code, _, err = run(batch_cli.main, [*args, "--batch-size", "2"], capsys)
    assert code == 0, err
    # a log: one line per finished item, no status or bar lines
    assert [line.split(" ")[2] for line in err.splitlines()[:3]] == [
        str(out / f"0000{i}.wav") for i in range(3)
    ]
    assert "[rank 0] loading " not in err and "100%" not in err
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)  # a terminal: the loading line and a per-step bar per call
    with pytest.raises(SystemExit):
        batch_cli.main([str(a) for a in args[:-1]] + [str(tmp_path / "tty"), "--batch-size", "2"])
    monkeypatch.undo()
    err = tty.getvalue()
    assert "[rank 0] loading " in err
    assert "[rank 0] 00000..00001: 100%" in err and "[rank 0] 00002: 100%" in err, err
    assert "step" in err.split("[rank 0] 00002: 100%", 1)[1].split("]", 1)[0]
    code, _, err = run(batch_cli.main, [*args, "--output-dir", tmp_path / "q", "--quiet"], capsys)
    assert code == 0 and err == ""
