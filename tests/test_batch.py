"""Batch jobs in one process: files + manifest, seeds, grouping/batching, resuming, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate import batch as B
from mlx_audio_generate.cli import batch as batch_cli
from mlx_audio_generate.errors import UserError


def write_jobs(path: Path, *lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        batch_cli.main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def job(weights, jobs, out, capsys, *extra) -> list[dict]:
    code, err = run(
        ["--weights-dir", weights, "--prompts-file", jobs, "--output-dir", out, "--quiet", *extra], capsys
    )
    assert code == 0, err
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


JOBS = [
    {"prompt": "lofi piano", "seconds": 0.5},
    {"prompt": "rock guitar", "id": "rock", "seconds": 0.5},
    {"prompt": "jazz trio", "seconds": 0.25, "temperature": 0.7, "seed": 11},
    {"prompt": "ambient pad", "seconds": 0.5},
]


def test_files_manifest_and_seeds(musicgen_converted, tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[0], "", *JOBS[1:])  # a blank line is skipped
    rows = job(musicgen_converted, jobs, tmp_path / "out", capsys, "--seed", "3")
    assert [r["item"] for r in rows] == [0, 1, 2, 3]
    assert [r["line"] for r in rows] == [1, 3, 4, 5]
    assert [r["file"] for r in rows] == ["00000.wav", "rock.wav", "00002.wav", "00003.wav"]
    assert rows[2]["seed"] == 11  # a line's own seed wins
    assert rows[1]["seed"] == B.item_seed(3, "id:rock") and rows[0]["seed"] == B.item_seed(3, "#0")
    assert rows[2]["settings"] == {
        "seconds": 0.25,
        "temperature": 0.7,
        "top_k": 250,
        "top_p": 0.0,
        "guidance_coef": 3.0,
    }
    for r in rows:
        assert r["model"] == str(musicgen_converted) and r["rank"] == 0 and r["skipped"] is False
        assert r["seconds_taken"] > 0 and r["batch"] == 1
        audio, sr = sf.read(tmp_path / "out" / r["file"], dtype="float32", always_2d=True)
        assert sr == r["sample_rate"] == 32000
        assert audio.shape[0] == r["samples"] == round(r["settings"]["seconds"] * 32000)
        assert r["duration"] == pytest.approx(r["settings"]["seconds"])
        sidecar = json.loads((tmp_path / "out" / (r["file"] + ".json")).read_text())
        assert sidecar == {k: v for k, v in r.items() if k != "skipped"}

    # at batch size 1 an item's audio is exactly what generate gives for its own seed (= the single CLI)
    from mlx_audio_generate import load

    model = load(musicgen_converted)
    r = rows[1]
    ref = model.generate(r["prompt"], seed=r["seed"], **r["settings"])[0]
    audio, _ = sf.read(tmp_path / "out" / "rock.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(audio.T, ref)

    # another base seed changes derived seeds only; an id's seed does not depend on the line's position
    rows2 = job(
        musicgen_converted, write_jobs(tmp_path / "j2.jsonl", JOBS[1], JOBS[2]), tmp_path / "o2", capsys
    )
    assert rows2[0]["seed"] == B.item_seed(0, "id:rock") != rows[1]["seed"] and rows2[1]["seed"] == 11


class FakeModel:
    """Records generate calls; `list_seeds` False = rejects a list of seeds as an old generate would."""

    sample_rate = 8000

    def __init__(self, list_seeds: bool = True):
        self.calls: list[tuple] = []
        self.list_seeds = list_seeds

    def generate(self, prompt, seed=None, seconds=1.0, **kw):
        if isinstance(seed, list) and not self.list_seeds:
            raise UserError(f"seed must be an integer, got {seed}")
        self.calls.append((prompt, seed, seconds))
        seeds = seed if isinstance(seed, list) else [seed]
        n = round(seconds * self.sample_rate)
        return np.stack(
            [np.random.default_rng(s).uniform(-0.5, 0.5, (1, n)).astype(np.float32) for s in seeds]
        )


def make_items(tmp_path, lines):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *lines)
    defaults = B.family_defaults("musicgen", {})
    return B.parse_items(B.read_jobs(jobs), jobs, "musicgen", 0, defaults)


@pytest.mark.parametrize("list_seeds", [True, False])
def test_grouping_batching_and_fallback(tmp_path, capsys, list_seeds):
    lines = [{"prompt": f"p{i}", "seconds": 0.5 if i % 2 else 0.25, "seed": i} for i in range(7)]
    items = make_items(tmp_path, lines)
    # items with identical settings (not prompt/seed) share batches of at most 3, in file order
    assert [[it.index for it in b] for b in B.batches(items, 3)] == [[0, 2, 4], [1, 3, 5], [6]]
    model = FakeModel(list_seeds)
    out = tmp_path / "out"
    out.mkdir()
    rows = B.run_job(B.Job(items, out, "wav", "fake", lambda: model, batch_size=3))
    if list_seeds:
        assert model.calls == [
            (["p0", "p2", "p4"], [0, 2, 4], 0.25),
            (["p1", "p3", "p5"], [1, 3, 5], 0.5),
            ("p6", 6, 0.25),
        ]
        assert [r["batch"] for r in rows] == [3, 3, 3, 3, 3, 3, 1]
    else:  # one try with a list, then one item per call; noted once
        assert [c[1] for c in model.calls] == [0, 2, 4, 1, 3, 5, 6]
        assert capsys.readouterr().err.count("batch size 1 instead") == 1
    for r in rows:  # each row is its own seed's audio whatever the batch
        audio, _ = sf.read(out / r["file"], dtype="float32", always_2d=True)
        n = round(r["settings"]["seconds"] * 8000)
        ref = np.random.default_rng(r["seed"]).uniform(-0.5, 0.5, (1, n)).astype(np.float32)
        np.testing.assert_array_equal(audio.T, ref)


def test_resume_skips_finished_items(tmp_path, capsys):
    lines = [{"prompt": f"p{i}", "seconds": 0.25} for i in range(5)]
    out = tmp_path / "out"
    out.mkdir()
    model = FakeModel()

    def run_once(lines):
        model.calls.clear()
        items = make_items(tmp_path, lines)
        return B.run_job(B.Job(items, out, "wav", "fake", lambda: model, quiet=True))

    run_once(lines)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    # what a crash leaves: a wav whose final sidecar was never written, a missing wav, a temp file
    side = out / "00001.wav.json"
    side.write_text(
        json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "seconds_taken"})
    )
    (out / "00002.wav").unlink()
    (out / ".00003.wav.abc123.wav").write_bytes(b"RIFF half")
    lines[4]["prompt"] = "edited"  # a changed line is a new request for the same file name
    rows = run_once(lines)
    assert sorted(c[0] for c in model.calls) == ["edited", "p1", "p2"]
    assert [r["skipped"] for r in rows] == [True, False, False, True, False]
    assert not list(out.glob(".*"))
    assert (out / "00000.wav").stat().st_mtime_ns == mtimes["00000.wav"]
    assert (out / "00003.wav").stat().st_mtime_ns == mtimes["00003.wav"]
    # a finished job reruns without loading the model at all
    rows = B.run_job(B.Job(make_items(tmp_path, lines), out, "wav", "fake", lambda: 1 / 0, quiet=True))
    assert all(r["skipped"] for r in rows) and len((out / "manifest.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    "lines, extra, message",
    [
        (['{"prompt": "a"}', '{"prompt": "b",}'], [], "jobs.jsonl:2: not valid JSON"),
        (['{"prompt": "a"}', '["b"]'], [], "jobs.jsonl:2: each line must be a JSON object"),
        ([{"prompt": "a"}, {"prompt": "b", "temprature": 1}], [], "jobs.jsonl:2: 'temprature' is an unknown"),
        ([{"prompt": "a", "steps": 8}], [], "jobs.jsonl:1: 'steps' is not a musicgen setting"),
        ([{"prompt": "a"}, {"prompt": "b", "top_k": 0}], [], "jobs.jsonl:2: top_k must be an integer >= 1"),
        ([{"prompt": "a", "seconds": "1"}], [], "jobs.jsonl:1: seconds must be a number > 0"),
        ([{"prompt": " "}], [], 'jobs.jsonl:1: "prompt" must be a non-empty string'),
        ([{"prompt": "a", "seed": -1}], [], 'jobs.jsonl:1: "seed" must be an integer'),
        ([{"prompt": "a", "id": "../x"}], [], 'jobs.jsonl:1: "id" must be'),
        (
            [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "X"}],
            [],
            "jobs.jsonl:2: file name 'X' is already",
        ),
        ([{"prompt": "a", "id": "00001"}, {"prompt": "b"}], [], "jobs.jsonl:2: file name '00001'"),
        ([], [], "has no items"),
        ([{"prompt": "a"}], ["--steps", "8"], "--steps is not a musicgen setting"),
        ([{"prompt": "a"}], ["--top-p", "2"], "--top-p: top_p must be a number in [0, 1]"),
        ([{"prompt": "a"}], ["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_bad_input_names_the_line(musicgen_converted, tmp_path, capsys, lines, extra, message):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *lines)
    out = tmp_path / "out"
    code, err = run(
        ["--weights-dir", musicgen_converted, "--prompts-file", jobs, "--output-dir", out, *extra], capsys
    )
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mlx-audio-generate: error: ")
    assert not out.exists()  # failed before anything was written


def test_bad_output_dir_and_files(musicgen_converted, tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a"})
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    base = ["--weights-dir", musicgen_converted, "--prompts-file", jobs]
    for out, message in ((blocker, "is not a folder"), (blocker / "sub", "is not writable")):
        code, err = run([*base, "--output-dir", out], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, err = run([*base, "--output-dir", ro], capsys)
        assert code == 2 and "is not writable" in err
    code, err = run(["--weights-dir", musicgen_converted, "--prompts-file", tmp_path / "no.jsonl",
                     "--output-dir", tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and "does not exist" in err
    code, err = run(["--prompts-file", jobs, "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "--weights-dir" in err
    assert blocker.read_text() == "x" and not (tmp_path / "o").exists()


def test_stable_audio_settings(stable_audio_small_converted, tmp_path, capsys):
    weights = stable_audio_small_converted
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "drum loop", "steps": 2},
        {"prompt": "pad", "sampler": "euler", "negative_prompt": "noise"},
    )
    rows = job(
        weights, jobs, tmp_path / "out", capsys, "--seconds", "0.25", "--steps", "3", "--batch-size", "2"
    )
    assert [r["settings"]["steps"] for r in rows] == [2, 3]
    assert rows[1]["settings"]["sampler"] == "euler" and rows[0]["settings"]["cfg_scale"] is None
    assert all(r["sample_rate"] == 44100 and r["samples"] == round(0.25 * 44100) for r in rows)
    # checks that need the loaded model still name the line, before anything is generated
    bad = write_jobs(tmp_path / "bad.jsonl", {"prompt": "a", "seconds": 0.25}, {"prompt": "b", "seconds": 60})
    code, err = run(
        ["--weights-dir", weights, "--prompts-file", bad, "--output-dir", tmp_path / "o2"], capsys
    )
    assert code == 2 and "bad.jsonl:2: seconds must be at most" in err, err
    assert not list((tmp_path / "o2").glob("*.wav"))
    code, err = run(
        ["--weights-dir", weights, "--prompts-file", jobs, "--output-dir", tmp_path / "o3", "--top-k", "5"],
        capsys,
    )
    assert code == 2 and "--top-k is not a stable_audio setting" in err


def test_refuses_a_launch_that_did_not_connect(musicgen_converted, tmp_path, capsys, monkeypatch):
    """A launcher said 2 ranks but the group has size 1: each rank would redo the whole job."""
    monkeypatch.setenv("MLX_WORLD_SIZE", "2")
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a", "seconds": 0.25})
    out = tmp_path / "out"
    code, err = run(
        ["--weights-dir", musicgen_converted, "--prompts-file", jobs, "--output-dir", out], capsys
    )
    assert code == 2 and "did not connect" in err, err
    assert not list(out.iterdir())


@pytest.mark.parametrize(
    "model, message",
    [("musicgen", "needs --weights-dir"), ("no-such-model", "unknown model 'no-such-model'")],
)
def test_bad_model_fails_before_the_output_dir(tmp_path, capsys, model, message):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a"})
    out = tmp_path / "out"
    code, err = run(["--model", model, "--prompts-file", jobs, "--output-dir", out], capsys)
    assert code == 2 and message in err and not out.exists(), err
