"""Hostile input to `mlx-audio-generate`: every case is one line on stderr and exit code 2, never a traceback
nor an "internal error", and nothing half-written is left behind.

Real failures where the machine allows: a full disk is the file size limit (RLIMIT_FSIZE, so the writers get
EFBIG) in a subprocess; a read-only folder or an unreadable file is real in a subprocess that, when the tests
run as root, has lost the capabilities that let root ignore permission bits (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped from its bounding set; it stays uid 0).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from mlx_audio_generate.cli import generate as generate_cli

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "mlx-audio-generate"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    return e.value.code, capsys.readouterr().err


def one_line(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert lines[0].startswith("mlx-audio-generate: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def file_size_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def as_plain_user() -> None:
    """preexec: permission bits apply to the child even when the tests run as root."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli(args: list, cwd: Path, preexec=None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        cwd=cwd,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=preexec,
    )


def everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ----------------------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_disk_full_while_writing_the_audio(musicgen_converted, tmp_path, ext):
    out = tmp_path / "out"
    out.mkdir()
    args = ["--model", musicgen_converted, "--prompt", "x", "--seconds", "2", "--seed", "1", "--quiet"]
    r = cli([*args, "--output", f"a.{ext}"], out, preexec=file_size_limit(4096))
    one_line(r.returncode, r.stderr, f"cannot write 'a.{ext}'", "File too large")
    assert list(out.iterdir()) == []


def test_disk_full_while_converting_on_first_use(musicgen_dir, tmp_path):
    """MLX's safetensors writer reports a failed write as RuntimeError (no errno): still one line."""
    cache = tmp_path / "cache"
    args = ["--model", musicgen_dir, "--prompt", "x", "--seconds", "0.2", "--quiet", "--output", "a.wav"]
    r = cli(args, tmp_path, preexec=file_size_limit(200_000), MLX_AUDIO_GENERATE_CACHE=str(cache))
    one_line(r.returncode, r.stderr, "File too large")
    assert everything(cache) == [] and not (tmp_path / "a.wav").exists()


# ------------------------------------------------------------------------------------ the model cache


def test_cache_path_that_is_a_file(musicgen_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cachefile").write_text("mine")
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cachefile"))
    code, err = run(["--model", str(musicgen_dir), "--prompt", "x", "--seconds", "0.2"], capsys)
    one_line(code, err, "model cache", "cachefile", "not a folder", "MLX_AUDIO_GENERATE_CACHE")
    assert (tmp_path / "cachefile").read_text() == "mine"


def test_read_only_cache_folder(musicgen_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        args = ["--model", musicgen_dir, "--prompt", "x", "--seconds", "0.2", "--quiet"]
        r = cli(args, tmp_path, preexec=as_plain_user, MLX_AUDIO_GENERATE_CACHE=str(cache))
        one_line(r.returncode, r.stderr, "model cache", "not writable", "MLX_AUDIO_GENERATE_CACHE")
        assert list(cache.iterdir()) == []
    finally:
        cache.chmod(0o755)


# ------------------------------------------------------------------------------ numbers that overflow

BIG = "9" * 400
HUGE = "9" * 5000  # over Python's 4300-digit limit for int("...")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seconds", "1e305"], ["seconds", "1e+305"]),
        (["--seconds", "1e400"], ["seconds", "inf"]),
        (["--seed", BIG], ["--seed"]),
        (["--seed", HUGE], ["--seed"]),
        (["--n", BIG], ["--n"]),
        (["--top-k", BIG], ["--top-k"]),
        (["--temperature", "1e400"], ["--temperature"]),
    ],
)
def test_numbers_that_overflow_on_the_command_line(
    musicgen_converted, tmp_path, capsys, flags, words, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, err = run(["--model", str(musicgen_converted), "--prompt", "x", *flags], capsys)
    one_line(code, err, *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "line, words",
    [
        (f'{{"prompt": "x", "seconds": {BIG}}}', ["jobs.jsonl:2", "seconds"]),
        (f'{{"prompt": "x", "seed": {BIG}}}', ["jobs.jsonl:2", "seed"]),
        (f'{{"prompt": "x", "top_k": {BIG}}}', ["jobs.jsonl:2", "top_k"]),
        (f'{{"prompt": "x", "temperature": {BIG}}}', ["jobs.jsonl:2", "temperature"]),
        (f'{{"prompt": "x", "id": {BIG}}}', ["jobs.jsonl:2", "id"]),
        ('{"prompt": "x", "seconds": 1e400}', ["jobs.jsonl:2", "seconds"]),
        (f'{{"prompt": "x", "seed": {HUGE}}}', ["jobs.jsonl:2", "too many digits"]),
        ("[" * 100_000 + "]" * 100_000, ["jobs.jsonl:2", "nested too deeply"]),
        ('{"prompt": "x\\ud800"}', ["jobs.jsonl:2", "prompt", "U+D800", "UTF-8"]),
    ],
)
def test_hostile_batch_lines(musicgen_converted, tmp_path, capsys, line, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.jsonl").write_text('{"prompt": "fine"}\n' + line + "\n")
    args = ["--model", str(musicgen_converted), "--prompts-file", "jobs.jsonl", "--output-dir", "out"]
    code, err = run(args, capsys)
    one_line(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]  # nothing made, not even out/


# -------------------------------------------------------------------------------- text that is not UTF-8


def test_prompt_bytes_that_are_not_utf8(musicgen_converted, tmp_path):
    """Real argv bytes: Python turns 0xff into U+DCFF (surrogateescape); the tokenizer could not take it."""
    r = subprocess.run(
        [os.fsencode(SCRIPT), b"--model", os.fsencode(musicgen_converted), b"--prompt", b"caf\xff"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        timeout=180,
    )
    one_line(r.returncode, r.stderr.decode(), "--prompt", "not valid UTF-8", "byte 0xff", "character 4")
    assert list(tmp_path.iterdir()) == []


def test_lone_surrogate_prompt_in_process(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(["--model", str(musicgen_converted), "--prompt", "ok", "--prompt", "a\ud83d"], capsys)
    one_line(code, err, "--prompt", "U+D83D")


def test_prompts_file_that_is_not_utf8_names_the_line(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.jsonl").write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    args = ["--model", str(musicgen_converted), "--prompts-file", "jobs.jsonl", "--output-dir", "out"]
    code, err = run(args, capsys)
    one_line(code, err, "jobs.jsonl:2", "not UTF-8", "0xe9")


def test_prompts_file_that_is_a_folder(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    args = ["--model", str(musicgen_converted), "--prompts-file", "jobs", "--output-dir", "out"]
    one_line(*run(args, capsys), "'jobs' is a folder")


def test_prompts_file_that_cannot_be_read(musicgen_converted, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "x"}\n')
    jobs.chmod(0)
    args = ["--model", musicgen_converted, "--prompts-file", jobs, "--output-dir", tmp_path / "out"]
    r = cli(args, tmp_path, preexec=as_plain_user)
    one_line(r.returncode, r.stderr, "cannot read prompts file", "Permission denied")
    assert stat.S_IMODE(jobs.stat().st_mode) == 0 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- output names


def test_output_names_checked_before_generating(musicgen_converted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--model", str(musicgen_converted), "--prompt", "x", "--seconds", "0.2", "--seed", "1", "--quiet"]
    one_line(*run([*base, "--output", "a" * 252 + ".wav"], capsys), "256 bytes", "255")
    one_line(*run([*base, "--output", "a" * 300 + "/x.wav"], capsys), "File name too long")
    # the audio name fits, its --metadata-json sidecar (<name>.json) would not: refused before any work
    one_line(*run([*base, "--output", "b" * 247 + ".wav", "--metadata-json"], capsys), "256 bytes")
    (tmp_path / "side.wav.json").mkdir()
    one_line(*run([*base, "--output", "side.wav", "--metadata-json"], capsys), "side.wav.json", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["side.wav.json"]
    # a legal 251-byte name: its temp file (same folder) must fit the limit too
    name = "c" * 247 + ".wav"
    code, err = run([*base, "--output", name], capsys)
    assert code == 0, err
    assert sf.info(str(tmp_path / name)).frames == 6400
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "side.wav.json"])


def test_output_name_with_bytes_that_are_not_utf8(musicgen_converted, tmp_path):
    """A Linux file name may hold any bytes: written as asked, and the 'wrote' line still prints."""
    r = subprocess.run(
        [os.fsencode(SCRIPT), b"--model", os.fsencode(musicgen_converted), b"--prompt", b"x", b"--seconds",
         b"0.2", b"--output", b"caf\xe9.wav", b"--metadata-json"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"wrote caf\\xe9.wav (0.20 s")
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"caf\xe9.wav", b"caf\xe9.wav.json"]
    assert json.loads((tmp_path / os.fsdecode(b"caf\xe9.wav.json")).read_text())["prompt"] == "x"
