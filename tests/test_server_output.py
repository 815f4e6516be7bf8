"""The output settings of a server job (server/output.py) and MusicGen long form through the server.

Output: `format` (wav / flac / mp3) is the clip's stored and default download format; `normalize` (LUFS) is
applied in the job and what was reached is in the job's view and its history row. Long form: a long-form
family (MusicGen, `Family.long_form`) takes seconds beyond its window up to `Family.max_total_seconds`; the
job says how many windows the clip is made of and which one runs; the audio equals the Python API's."""

from __future__ import annotations

import io
import sqlite3
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from test_server import wait_job

from mlx_audio_generate.audio import _available_formats
from mlx_audio_generate.server.history import History
from mlx_audio_generate.server.launch import serve

SR = 32000


@pytest.fixture(scope="module")
def server(musicgen_converted, stable_audio_small_converted, tmp_path_factory):
    root = tmp_path_factory.mktemp("output-server")
    args = [
        "--model", f"tiny={musicgen_converted}", "--model", f"sa={stable_audio_small_converted}",
        "--data-dir", str(root / "data"), "--output-dir", str(root / "clips"),
    ]  # fmt: skip
    with serve(args, log_path=root / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield SimpleNamespace(client=c, data=root / "data", clips=root / "clips")


def run(c: httpx.Client, **body) -> dict:
    r = c.post("/api/jobs", json={"model": "tiny", "prompt": "warm piano", "seconds": 2.0, "seed": 3, **body})
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"], timeout=120)
    assert job["status"] == "done", job
    return job


def lufs(data: bytes) -> float:
    audio, sr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return pyloudnorm.Meter(sr).integrated_loudness(audio)


def test_models_describe_output_and_long_form(server):
    models = {m["name"]: m for m in server.client.get("/api/models").json()}
    tiny, sa = models["tiny"], models["sa"]
    assert (tiny["long_form"], tiny["max_seconds"], tiny["max_total_seconds"]) == (True, 30.0, 3600.0)
    assert not sa["long_form"] and sa["max_total_seconds"] == sa["max_seconds"]
    stride = {p["name"]: p for p in tiny["params"]}["extend_stride"]
    assert (stride["minimum"], stride["maximum"], stride["default"]) == (0.0, 30.0, None)
    for m in (tiny, sa):  # the same output settings for every model, described once
        out = {p["name"]: p for p in m["output"]}
        assert list(out) == ["normalize", "format"]
        assert (out["normalize"]["minimum"], out["normalize"]["maximum"]) == (-70.0, 0.0)
        assert out["format"]["default"] == "wav" and {"wav", "flac"} <= set(out["format"]["choices"])
    schema = server.client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]["properties"]
    assert "normalize" in schema and "format" in schema  # the request model reads the same declaration


def test_normalize_reaches_the_target_and_is_recorded(server):
    c = server.client
    plain = run(c, seconds=3.0)
    assert plain["normalize"] is None and plain["loudness"] is None
    before = lufs(c.get(plain["audio_url"]).content)
    target = -23.0
    assert abs(before - target) > 3  # the tiny model's clip is far from the target: the job moves it
    job = run(c, seconds=3.0, normalize=target)
    got = lufs(c.get(job["audio_url"]).content)
    assert abs(got - target) < 0.5, (before, got)
    info = job["loudness"]
    assert info["target_lufs"] == target and not info["peak_limited"]
    assert info["input_lufs"] == pytest.approx(before, abs=0.05)  # the same seed: the same clip before gain
    assert info["output_lufs"] == pytest.approx(got, abs=0.05)
    assert info["report"].startswith(f"loudness: {info['output_lufs']:g} LUFS (target -23")
    # the history row keeps what was asked and what was reached
    rows = {r["id"]: r for r in History(server.data / "history.sqlite3").load()}
    assert rows[job["id"]]["normalize"] == target and rows[job["id"]]["loudness"] == info
    assert rows[plain["id"]]["loudness"] is None


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"normalize": 3.0}, "normalize", "less than or equal to 0"),
        ({"normalize": -80.0}, "normalize", "greater than or equal to -70"),
        ({"normalize": "loud"}, "normalize", "number"),
        ({"normalize": -14.0, "seconds": 0.2}, "normalize", "at least 0.4 s"),
        ({"format": "ogg"}, "format", "choose one of: wav, flac"),
        ({"format": 3}, "format", "string"),
        ({"seconds": 3600.5}, "seconds", "at most 3600"),
        ({"model": "sa", "seconds": 2.0}, "seconds", "at most"),  # not long form: one window
        ({"extend_stride": 0.0}, "extend_stride", "greater than 0"),
        ({"extend_stride": 30.0}, "extend_stride", "less than 30"),
        ({"model": "sa", "seconds": 0.5, "extend_stride": 10.0}, "extend_stride", "does not apply"),
    ],
)
def test_bad_values_are_refused_with_a_message(server, body, field, words):
    r = server.client.post("/api/jobs", json={"model": "tiny", "prompt": "piano", "seconds": 1.0, **body})
    assert r.status_code == 422, r.text
    data = r.json()
    assert [d["loc"][-1] for d in data["detail"]] == [field]
    assert field in data["message"] and words in data["message"], data["message"]


def test_format_is_the_stored_and_default_download(server):
    c = server.client
    job = run(c, format="flac", normalize=-20.0)
    assert job["format"] == "flac" and job["download_name"].endswith(".flac")
    r = c.get(job["audio_url"])
    assert r.content[:4] == b"fLaC" and r.headers["content-type"] == "audio/flac"
    assert sorted(p.name for p in server.clips.glob(f"{job['id']}.*")) == [
        f"{job['id']}.{x}" for x in ("flac", "json")
    ]
    wav = c.get(job["audio_url"], params={"format": "wav"})  # made from the FLAC on request
    assert wav.content[:4] == b"RIFF" and 'filename="' in wav.headers["content-disposition"]
    assert abs(lufs(wav.content) - -20.0) < 0.5  # the normalised clip, in both files
    audio, sr = sf.read(io.BytesIO(wav.content), always_2d=True)
    assert (sr, audio.shape[0]) == (SR, 2 * SR)
    # a FLAC take is an input like any other (find_audio): continue it
    cont = run(c, seconds=2.5, audio_prompt=job["id"])
    assert cont["params"]["audio_prompt"] == job["id"]
    if ".mp3" in _available_formats():
        mp3 = run(c, format="mp3")
        data = c.get(mp3["audio_url"]).content
        assert mp3["download_name"].endswith(".mp3") and (data[:3] == b"ID3" or data[0] == 0xFF)


def test_long_form_beyond_the_window(server, musicgen_converted):
    """45 s with a 15 s stride: two windows of the 30 s window (1503 + 753 decoder steps), in the server as
    in the Python API; the view says which window runs."""
    c = server.client
    body = {"model": "tiny", "prompt": "warm piano", "seconds": 45.0, "seed": 5, "extend_stride": 15.0}
    r = c.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id, seen, etas = r.json()["id"], set(), []
    deadline = time.monotonic() + 180
    while True:
        job = c.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            break
        if job["stage"] == "generate" and job["window"] is not None:
            seen.add(job["window"])
            assert job["windows"] == 2 and job["total"] == 1503 + 753
            assert job["window"] == (1 if job["step"] < 1503 else 2), job
            if job["eta"] is not None:
                etas.append(job["eta"])
        assert time.monotonic() < deadline, job
        time.sleep(0.03)
    assert job["status"] == "done", job
    assert seen == {1, 2}, seen  # the page can say "window 1 of 2", then "window 2 of 2"
    assert etas and all(e >= 0 for e in etas)
    assert job["windows"] == 2 and job["window"] is None and job["params"]["extend_stride"] == 15.0
    audio, sr = sf.read(io.BytesIO(c.get(job["audio_url"]).content), dtype="float32", always_2d=True)
    assert (sr, audio.shape[0]) == (SR, 45 * SR)

    import mlx_audio_generate as mag

    expected = mag.load(musicgen_converted).generate("warm piano", seconds=45.0, seed=5, extend_stride=15.0)
    np.testing.assert_allclose(audio.T, expected[0], atol=1e-6)  # float WAV: the same samples


def test_a_schema_1_history_gains_the_output_columns(tmp_path):
    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, model TEXT NOT NULL, family TEXT NOT NULL, prompt TEXT NOT NULL,
            seconds REAL NOT NULL, seed INTEGER NOT NULL, params TEXT NOT NULL,
            sample_rate INTEGER NOT NULL, status TEXT NOT NULL, error TEXT,
            created REAL NOT NULL, started REAL, finished REAL,
            stage_times TEXT NOT NULL DEFAULT '{}',
            title TEXT, rating INTEGER, starred INTEGER NOT NULL DEFAULT 0)"""
    )
    db.execute(
        "INSERT INTO jobs (id, model, family, prompt, seconds, seed, params, sample_rate, status, created) "
        "VALUES ('a', 'tiny', 'musicgen', 'p', 1.0, 1, '{}', 32000, 'done', 1.0)"
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    (row,) = History(path).load()
    assert (row["format"], row["normalize"], row["loudness"]) == ("wav", None, None)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
