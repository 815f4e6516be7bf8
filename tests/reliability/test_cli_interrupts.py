"""Interrupting `mlx-audio-generate` with real signals sent to a real process, at known moments.

Guarantees (docs/reliability.md): the clips of a multi-clip run are written as each batch finishes, so Ctrl-C
keeps the finished files and names the missing ones on one line (exit 130); SIGTERM (exit 143) and Ctrl-C in
the middle of a write leave no temp file; Ctrl-C while the command is still importing its modules prints one
line, never a traceback; temp files of a run that was SIGKILLed are removed by the next run that writes the
same name, while a live process's temp file is left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "mlx-audio-generate"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# The console script, with soundfile's write stopped halfway (the temp file is on disk, half written): it
# touches argv[1] there and sleeps, so that the test can signal it at that exact point.
SLOW_WRITE = textwrap.dedent(
    """
    import sys, time
    marker, sys.argv = sys.argv[1], ["mlx-audio-generate", *sys.argv[2:]]
    import soundfile
    write = soundfile.SoundFile.write
    def slow(self, data):
        write(self, data[: len(data) // 2])
        open(marker, "w").close()
        time.sleep(120)
        write(self, data[len(data) // 2 :])
    soundfile.SoundFile.write = slow
    from mlx_audio_generate.cli.generate import main
    main()
    """
)

# The console script (or `python -m mlx_audio_generate.cli.batch`), sending itself a real SIGINT at the
# moment module argv[1] starts being imported.
INTERRUPT_AT_IMPORT = textwrap.dedent(
    """
    import os, runpy, signal, sys
    module, entry, sys.argv = sys.argv[1], sys.argv[2], ["mlx-audio-generate", *sys.argv[3:]]
    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == module:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None
    sys.meta_path.insert(0, Interrupt())
    if entry.endswith(".py") or "/" in entry:
        runpy.run_path(entry, run_name="__main__")
    else:
        runpy.run_module(entry, run_name="__main__", alter_sys=True)
    """
)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout} s"
        time.sleep(0.02)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def gen_args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--seconds", "0.5", "--seed", "3", "--quiet", *extra]


# ------------------------------------------------------------------ Ctrl-C in a multi-clip run keeps work


def test_ctrl_c_after_two_clips_keeps_them_and_names_the_missing(musicgen_converted, tmp_path):
    # 6 clips one at a time, each long enough (~400 decoder steps) that the signal lands inside clip 3
    args = ["--model", str(musicgen_converted), "--prompt", "rain", "--prompt", "wind", "--n", "3"]
    args += ["--seconds", "8", "--seed", "1", "--batch-size", "1", "--output", "clip.flac"]
    proc = subprocess.Popen(
        [str(SCRIPT), *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wrote = [proc.stdout.readline() for _ in range(2)]
        assert all(line.startswith("wrote clip_") for line in wrote), (wrote, proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("mlx-audio-generate: interrupted; wrote 2 of 6"), err
    assert "missing: clip_3.flac, clip_4.flac, clip_5.flac, clip_6.flac" in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_1.flac", "clip_2.flac"]
    for name in ("clip_1.flac", "clip_2.flac"):  # complete files, as a run of those seeds alone writes them
        assert sf.info(str(tmp_path / name)).frames == 8 * 32000


# --------------------------------------------------------------------- signals in the middle of a write


def test_sigterm_and_ctrl_c_during_the_write_leave_no_temp_file(musicgen_converted, tmp_path):
    for sig, code, word in ((signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")):
        folder = tmp_path / word
        folder.mkdir()
        marker = tmp_path / f"{word}.writing"
        cmd = [sys.executable, "-c", SLOW_WRITE, str(marker), *gen_args(musicgen_converted, "--prompt", "x")]
        proc = subprocess.Popen(
            [*cmd, "--output", "a.wav"], cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wait_for(marker, proc)
            assert len(hidden(folder)) == 1  # the half-written temp file
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        err = err.decode()
        assert proc.returncode == code, err
        assert err.strip().splitlines() == [f"mlx-audio-generate: {word}"], err
        assert list(folder.iterdir()) == [], hidden(folder)


def test_temp_of_a_killed_run_is_removed_by_the_next_but_a_live_one_is_kept(musicgen_converted, tmp_path):
    def start(marker: Path, output: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", SLOW_WRITE, str(marker), *gen_args(musicgen_converted, "--prompt", "x")]
        return subprocess.Popen([*cmd, "--output", output], cwd=tmp_path, env=ENV, stderr=subprocess.DEVNULL)

    killed = start(tmp_path / "k.writing", "a.wav")
    wait_for(tmp_path / "k.writing", killed)
    killed.send_signal(signal.SIGKILL)  # no handler runs: its temp file stays behind
    killed.wait(30)
    stale = hidden(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".a.wav."), stale
    (tmp_path / ".a.wav.notes").write_text("not ours")  # not our naming: never touched
    (tmp_path / ".b.wav.x1y2z3w4.wav").write_bytes(b"RIFF")  # another name's temp: not this run's business
    live = start(tmp_path / "l.writing", "a.wav")  # a second writer of the same name, alive mid-write
    try:
        wait_for(tmp_path / "l.writing", live)
        live_temp = sorted(set(hidden(tmp_path)) - set(stale) - {".a.wav.notes", ".b.wav.x1y2z3w4.wav"})
        assert len(live_temp) == 1
        r = subprocess.run(
            [str(SCRIPT), *gen_args(musicgen_converted, "--prompt", "x"), "--output", "a.wav"],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert hidden(tmp_path) == sorted([*live_temp, ".a.wav.notes", ".b.wav.x1y2z3w4.wav"])
        assert sf.info(str(tmp_path / "a.wav")).frames == 16000
    finally:
        live.kill()
        live.wait(30)


# -------------------------------------------------------------------------- Ctrl-C during the imports


def test_ctrl_c_while_importing_is_one_line(musicgen_converted, tmp_path):
    args = [*gen_args(musicgen_converted, "--prompt", "x"), "--output", "a.wav"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "x"}\n')
    batch = ["--weights-dir", str(musicgen_converted), "--prompts-file", str(jobs), "--output-dir", "out"]
    cases = [
        # the console script: numpy and MLX load inside its module-level imports
        ("numpy", str(SCRIPT), args),
        ("mlx.core", str(SCRIPT), args),
        ("soundfile", str(SCRIPT), args),
        # a --prompts-file run imports the batch modules later, inside the command
        ("mlx_audio_generate.batch", str(SCRIPT), ["--prompts-file", str(jobs), *batch[:2], *batch[4:]]),
        # what mlx.launch starts on each rank
        ("numpy", "mlx_audio_generate.cli.batch", batch),
    ]
    for module, entry, argv in cases:
        r = subprocess.run(
            [sys.executable, "-c", INTERRUPT_AT_IMPORT, module, entry, *argv],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 130, (module, entry, r.stderr)
        assert r.stderr.strip().splitlines() == ["mlx-audio-generate: interrupted"], (module, entry, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]


# ------------------------------------------------------------------------------- a batch job, Ctrl-C


def test_ctrl_c_in_a_batch_job_keeps_finished_items(musicgen_converted, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"prompt": "p{i}", "seconds": 6}}\n' for i in range(5)))
    cmd = [str(SCRIPT), "--weights-dir", str(musicgen_converted), "--prompts-file", str(jobs)]
    proc = subprocess.Popen(
        [*cmd, "--output-dir", "out"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True
    )
    try:
        first = proc.stderr.readline()  # "[rank 0] out/00000.wav (...)" once item 0 is complete
        assert "00000.wav" in first, first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert (
        last
        == "mlx-audio-generate: interrupted; 1 of 5 item(s) done; rerun the same command to generate the rest"
    )
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00000.wav", "00000.wav.json"]
