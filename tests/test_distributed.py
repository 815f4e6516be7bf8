"""Batch jobs over 2 ranks: `mlx.launch -n 2 --backend ring` on 127.0.0.1 with the tiny MusicGen.

The union of the ranks' files is the single-process run's, byte for byte (batch size 1); rank 0's manifest
covers every item; a rank killed mid-run (MLX_AUDIO_GENERATE_TEST_KILL_AFTER, read by the test-only
tests/distributed_hook/sitecustomize.py that every rank loads) leaves no manifest and no half-written file
counted as done, and a rerun finishes only what is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_audio_generate.cli import batch as batch_cli

LAUNCH = Path(sys.executable).with_name("mlx.launch")
HOOK = Path(__file__).parent / "distributed_hook"  # sitecustomize.py: the test-only kill switch
pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed beside python")


def free_ports() -> int:
    """A port p with p and p + 1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p
    raise RuntimeError("no two consecutive free ports")


def launch(weights, jobs: Path, out: Path, *env: str) -> subprocess.CompletedProcess:
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "-p", str(free_ports())]
    cmd += [x for e in (*env, f"PYTHONPATH={HOOK}") for x in ("--env", e)]
    cmd += ["--", sys.executable, "-m", "mlx_audio_generate.cli.batch", "--weights-dir", str(weights)]
    cmd += ["--prompts-file", str(jobs), "--output-dir", str(out)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).parents[1],
    )


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def audio_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.wav"))}


def complete(out: Path) -> set[str]:
    """Files whose final sidecar exists (what a rerun must not redo)."""
    done = set()
    for side in out.glob("*.wav.json"):
        if "seconds_taken" in json.loads(side.read_text()):
            done.add(side.name[: -len(".json")])
    return done


@pytest.fixture(scope="module")
def job(musicgen_converted, tmp_path_factory):
    """A 7-item job and its single-process result."""
    root = tmp_path_factory.mktemp("dist")
    jobs = root / "jobs.jsonl"
    lines = [{"prompt": f"tune {i}", "seconds": 0.5 if i % 3 else 0.25} for i in range(6)]
    lines.insert(2, {"prompt": "named", "id": "named", "seed": 99, "seconds": 0.25})
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    single = root / "single"
    with pytest.raises(SystemExit) as e:
        batch_cli.main(["--weights-dir", str(musicgen_converted), "--prompts-file", str(jobs)]
                       + ["--output-dir", str(single), "--quiet"])  # fmt: skip
    assert e.value.code == 0
    return musicgen_converted, jobs, single


def test_two_ranks_equal_one_process(job, tmp_path):
    weights, jobs, single = job
    out = tmp_path / "out"
    r = launch(weights, jobs, out)
    assert r.returncode == 0 and "WARN" not in r.stderr, r.stderr
    assert audio_files(out) == audio_files(single)  # bit-identical, every item
    rows, ref = manifest(out), manifest(single)
    assert [x["item"] for x in rows] == list(range(7))
    assert [x["rank"] for x in rows] == [i % 2 for i in range(7)]
    volatile = {"rank", "seconds_taken", "host"}
    for a, b in zip(rows, ref, strict=True):
        assert {k: v for k, v in a.items() if k not in volatile} == {
            k: v for k, v in b.items() if k not in volatile
        }
        assert a["skipped"] is False and a["seconds_taken"] > 0
    # every rank reported its own items; the sidecars agree with the manifest
    for x in rows:
        side = json.loads((out / (x["file"] + ".json")).read_text())
        assert side == {k: v for k, v in x.items() if k != "skipped"}


def test_killed_rank_then_rerun(job, tmp_path):
    weights, jobs, single = job
    out = tmp_path / "out"
    # rank 1 SIGKILLs itself after its first item; mlx.launch then stops rank 0
    r = launch(weights, jobs, out, "MLX_AUDIO_GENERATE_TEST_KILL_AFTER=1:1")
    assert "rank 1" in r.stderr and "-9" in r.stderr, r.stderr
    assert not (out / "manifest.jsonl").exists()
    done = complete(out)
    assert "00001.wav" in done and len(done) < 7
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}

    r = launch(weights, jobs, out)
    assert r.returncode == 0 and "WARN" not in r.stderr, r.stderr
    rows = manifest(out)
    assert [x["item"] for x in rows] == list(range(7))
    assert {x["file"] for x in rows if x["skipped"]} == done  # finished items were not redone...
    assert all((out / name).stat().st_mtime_ns == t for name, t in mtimes.items())
    assert audio_files(out) == audio_files(single)  # ...and the job is complete and the same
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    shutil.rmtree(out)
