"""The server's persistent history (server/history.py): jobs with their settings, seed, stage timings and the
user's notes survive a restart of the real `mlx-audio-server` process; search, star, rename, delete; stage
progress and the ETA; the API docs served offline; models given as the CLI takes them (a converted folder,
a model name found in the CLI's cache, the cache folder itself)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_server import wait_job

from mlx_audio_generate.server.history import STOPPED, History
from mlx_audio_generate.server.jobs import Job
from mlx_audio_generate.server.launch import serve


def submit(client: httpx.Client, prompt: str, seed: int) -> str:
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": prompt, "seconds": 0.5, "seed": seed})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_history_survives_a_restart(musicgen_converted, tmp_path):
    data = tmp_path / "data"
    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(data)]
    with serve(args, log_path=tmp_path / "log1") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first, second = submit(c, "warm piano", 7), submit(c, "dusty drums", 8)
        done = wait_job(c, first, timeout=120), wait_job(c, second, timeout=120)
        assert [j["status"] for j in done] == ["done", "done"]
        job = done[0]
        # every stage the model reports, in order, each with a start and an end
        assert list(job["stage_times"]) == ["loading", "text", "generate", "decode", "writing"]
        assert all(a is not None and b is not None and a <= b for a, b in job["stage_times"].values())
        assert job["eta"] is None and job["stage"] is None
        r = c.patch(f"/api/jobs/{first}", json={"title": "  Keeper  take ", "rating": 4, "starred": True})
        assert r.status_code == 200 and (r.json()["title"], r.json()["rating"], r.json()["starred"]) == (
            "Keeper take", 4, True,
        )  # fmt: skip
        audio = c.get(f"/api/jobs/{first}/audio").content
    assert (data / "history.sqlite3").is_file() and (data / "clips" / f"{first}.wav").is_file()

    with serve(args, log_path=tmp_path / "log2") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
        assert set(jobs) == {first, second}
        kept = jobs[first]
        assert (kept["title"], kept["rating"], kept["starred"], kept["seed"]) == ("Keeper take", 4, True, 7)
        assert kept["params"] == job["params"] and kept["stage_times"] == job["stage_times"]
        assert c.get(kept["audio_url"]).content == audio
        # search (prompt, title, model; any case) and the starred filter
        assert [j["id"] for j in c.get("/api/jobs", params={"q": "KEEPER"}).json()] == [first]
        assert [j["id"] for j in c.get("/api/jobs", params={"q": "drums"}).json()] == [second]
        assert [j["id"] for j in c.get("/api/jobs", params={"starred": "true"}).json()] == [first]
        # notes are checked; a rating of 0 and an empty title clear them
        assert c.patch(f"/api/jobs/{first}", json={"rating": 6}).status_code == 422
        assert c.patch(f"/api/jobs/{first}", json={"colour": "red"}).status_code == 422
        cleared = c.patch(f"/api/jobs/{first}", json={"rating": 0, "title": ""}).json()
        assert cleared["rating"] is None and cleared["title"] is None and cleared["starred"]
        # delete: the row and the clip go, the other job stays
        assert c.delete(f"/api/history/{second}").status_code == 200
        assert c.get(f"/api/jobs/{second}").status_code == 404
        assert c.delete(f"/api/history/{second}").status_code == 404
    assert not (data / "clips" / f"{second}.wav").exists()
    assert not (data / "clips" / f"{second}.json").exists()
    assert (data / "clips" / f"{first}.wav").is_file()
    assert [r["id"] for r in History(data / "history.sqlite3").load()] == [first]


def test_unfinished_jobs_come_back_cancelled(tmp_path):
    """A job queued or running when the server stopped is not run behind the user's back after a restart."""
    h = History(tmp_path / "h.sqlite3")
    for i, status in enumerate(("queued", "running", "done")):
        job = Job("tiny", "musicgen", f"p{i}", 1.0, i, {"top_k": 5}, 32000, status=status, created=100.0 + i)
        h.save(job.row())
    h.close()
    rows = History(tmp_path / "h.sqlite3").load()
    assert [(r["status"], r["error"]) for r in rows] == [
        ("cancelled", STOPPED), ("cancelled", STOPPED), ("done", None),
    ]  # fmt: skip
    assert rows[0]["params"] == {"top_k": 5}
    assert Job.from_row(rows[2]).view(None)["progress"] == 1.0


def test_eta_from_the_steps_and_the_last_decode():
    job = Job("tiny", "musicgen", "p", 10.0, 0, {}, 32000, status="running")
    job.enter("generate", now=100.0)
    assert job.eta(100.5) is None  # no step timed yet
    job.step, job.total, job.eta_hint = 4, 10, 3.0
    assert job.eta(102.0) == pytest.approx(0.5 * 6 + 3.0)  # 0.5 s per step, 6 left, then the decode
    job.enter("decode", now=104.0)
    assert job.eta(105.0) == pytest.approx(2.0) and job.stage_times["generate"] == [100.0, 104.0]


def test_docs_work_offline(musicgen_converted, tmp_path):
    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(tmp_path / "data")]
    with serve(args, log_path=tmp_path / "log") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        page = c.get("/docs").text
        assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"):
            assert c.get(f"/static/vendor/swagger-ui/{asset}").status_code == 200
        assert c.get("/redoc").status_code == 404  # it would load from a CDN


def test_models_as_the_cli_takes_them(musicgen_converted, tmp_path):
    """--models-dir on the CLI's cache layout (<owner--name>/<dtype>/) serves each conversion under its
    model's short name; --model with a bare model name finds its conversion in the cache (no download)."""
    cache = tmp_path / "cache"
    (cache / "facebook--musicgen-small").mkdir(parents=True)
    (cache / "facebook--musicgen-small" / "original").symlink_to(Path(musicgen_converted).resolve())
    (cache / "facebook--musicgen-small" / "float16").symlink_to(Path(musicgen_converted).resolve())
    env = {"MLX_AUDIO_GENERATE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    data = ["--data-dir", str(tmp_path / "data")]
    with serve(["--models-dir", str(cache), *data], log_path=tmp_path / "a", env=env) as srv:
        names = [m["name"] for m in httpx.get(f"{srv.url}/api/models").json()]
    assert sorted(names) == ["musicgen-small", "musicgen-small-float16"]
    with serve(["--model", "musicgen-small", *data], log_path=tmp_path / "b", env=env) as srv:
        models = httpx.get(f"{srv.url}/api/models").json()
    assert [(m["name"], m["family"]) for m in models] == [("musicgen-small", "musicgen")]
