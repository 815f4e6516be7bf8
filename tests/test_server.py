"""mlx-audio-server end to end: the real server process on a loopback port, driven over HTTP."""

from __future__ import annotations

import http.client
import io
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlx_audio_generate.server.launch import ServerStartError, serve, start_server

httpx = pytest.importorskip("httpx")


def wait_job(client, job_id: str, timeout: float = 60.0, until=("done", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s: {job}"
        time.sleep(0.1)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.T, sr


def submit(client, **body) -> str:
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "warm piano", "seconds": 1.0, **body})
    assert r.status_code == 202, r.text
    return r.json()["id"]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, musicgen_converted, stable_audio_small_converted) -> Path:
    """tiny + sa (links), broken (a copy whose weights the test removes), notes (not a model: skipped)."""
    root = tmp_path_factory.mktemp("models")
    (root / "tiny").symlink_to(Path(musicgen_converted).resolve())
    (root / "sa").symlink_to(Path(stable_audio_small_converted).resolve())
    shutil.copytree(musicgen_converted, root / "broken")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("server-out")
    data = tmp_path_factory.mktemp("server-data")
    args = ["--models-dir", str(models_dir), "--output-dir", str(out), "--data-dir", str(data)]
    with serve(args, log_path=out.parent / "server.log") as srv:
        yield SimpleNamespace(proc=srv.proc, url=srv.url, port=srv.port, output_dir=out)


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# ---------------------------------------------------------------------------------------------- tests


def test_models(client):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert sorted(models) == ["broken", "sa", "tiny"]  # "notes" is not a converted folder
    tiny = models["tiny"]
    assert (tiny["family"], tiny["sample_rate"], tiny["max_seconds"]) == ("musicgen", 32000, 30.0)
    assert {p["name"]: p["default"] for p in tiny["params"]} == {
        "temperature": 1.0,
        "top_k": 250,
        "top_p": 0.0,
        "guidance_coef": 3.0,
        "audio_prompt": None,  # an upload's id (test_server_uploads.py); no melody: not a melody model
        "extend_stride": None,  # long form (test_server_output.py)
    }
    sa = models["sa"]
    assert sa["family"] == "stable_audio" and sa["sample_rate"] == 44100 and 0 < sa["max_seconds"] < 1
    params = {p["name"]: p for p in sa["params"]}
    assert params["sampler"]["default"] == "pingpong" and "euler" in params["sampler"]["choices"]
    assert params["steps"]["default"] == 8 and params["negative_prompt"]["kind"] == "text"


def test_job_roundtrip_matches_the_python_api(client, server, musicgen_converted):
    settings = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "guidance_coef": 2.0}
    r = client.post(
        "/api/jobs", json={"model": "tiny", "prompt": "warm piano", "seconds": 1.5, "seed": 7, **settings}
    )
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job_id = r.json()["id"]
    assert str(uuid.UUID(job_id)) == job_id and r.headers["location"] == f"/api/jobs/{job_id}"

    job = wait_job(client, job_id)
    assert job["status"] == "done", job
    assert job["progress"] == 1.0 and job["step"] == job["total"] > 0 and job["error"] is None
    assert job["seed"] == 7 and job["params"] == settings and job["seconds"] == 1.5
    assert job["audio_url"] == f"/api/jobs/{job_id}/audio"
    assert client.get("/api/jobs").json()[0]["id"] == job_id  # newest first

    r = client.get(job["audio_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert "tiny_warm-piano_7.wav" in r.headers["content-disposition"]
    audio, sr = read_wav(r.content)
    assert sr == 32000 and audio.shape == (1, 48000) and np.isfinite(audio).all()
    assert (server.output_dir / f"{job_id}.wav").is_file() and (
        server.output_dir / f"{job_id}.json"
    ).is_file()

    # The server passes every setting through: the same call in-process gives the same samples.
    from mlx_audio_generate import load

    ref = load(musicgen_converted).generate("warm piano", seconds=1.5, seed=7, **settings)[0]
    np.testing.assert_array_equal(audio, ref)


def test_stable_audio_job(client):
    body = {"model": "sa", "prompt": "drum loop", "seconds": 0.5, "seed": 1, "steps": 3, "sampler": "euler"}
    job = wait_job(client, client.post("/api/jobs", json=body).json()["id"])
    assert job["status"] == "done", job
    assert job["params"] == {"steps": 3, "cfg_scale": 1.0, "sampler": "euler", "negative_prompt": ""}
    assert job["total"] == 3
    audio, sr = read_wav(client.get(job["audio_url"]).content)
    assert sr == 44100 and audio.shape == (2, 22050)


def test_concurrent_clients(server):
    """Two clients submit at once (and a third walks away); every job runs, each seed its own audio."""
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def user(seeds: list[int]) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                ids = {seed: submit(c, seed=seed) for seed in seeds}
                for seed, job_id in ids.items():
                    job = wait_job(c, job_id)
                    assert job["status"] == "done", job
                    results.append((seed, c.get(job["audio_url"]).content))
        except BaseException as e:
            errors.append(e)

    with httpx.Client(base_url=server.url, timeout=30) as c:  # submits, then disconnects
        abandoned = submit(c, seed=99)
    threads = [threading.Thread(target=user, args=(s,)) for s in ([1, 2], [3, 1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(seed for seed, _ in results) == [1, 1, 2, 3]
    same_seed = {data for seed, data in results if seed == 1}
    assert len(same_seed) == 1, "one seed gave two different clips: generation is not deterministic"
    audio = {seed: read_wav(data)[0] for seed, data in results}
    assert all(a.shape == (1, 32000) for a in audio.values())
    assert not np.array_equal(audio[1], audio[2]) and not np.array_equal(audio[2], audio[3])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert wait_job(c, abandoned)["status"] == "done"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 3600.5}, "seconds"),  # beyond the long-form limit (one window: test_server_output.py)
        ({"seconds": "5"}, "seconds"),
        ({"model": "nope"}, "model"),
        ({"seed": -1}, "seed"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 5000}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"guidance_coef": 100}, "guidance_coef"),
        ({"steps": 10}, "steps"),  # a Stable Audio parameter sent to MusicGen
        ({"model": "sa", "seconds": 0.5, "steps": 0}, "steps"),
        ({"model": "sa", "seconds": 0.5, "cfg_scale": 50}, "cfg_scale"),
        ({"model": "sa", "seconds": 0.5, "sampler": "dpmpp-3m-sde"}, "sampler"),  # not for rf models
        ({"model": "sa", "seconds": 2.0}, "seconds"),  # beyond the model's window
        ({"colour": "blue"}, "colour"),
    ],
)
def test_validation_errors(client, body, field):
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "piano", "seconds": 1.0, **body})
    assert r.status_code == 422, r.text
    data = r.json()
    assert field in data["message"]
    assert [d["loc"][-1] for d in data["detail"]] == [field]


def test_unknown_and_malformed_job_ids(client):
    missing = uuid.uuid4()
    for method, path in [
        ("GET", f"/api/jobs/{missing}"),
        ("GET", f"/api/jobs/{missing}/audio"),
        ("DELETE", f"/api/jobs/{missing}"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404 and str(missing) in r.json()["message"]
    assert client.get("/api/jobs/not-a-uuid").status_code == 422


@pytest.mark.parametrize(
    "raw",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5C..%5Cetc%5Cpasswd",
        "%2Fetc%2Fpasswd",
    ],
)
def test_path_like_job_ids_cannot_escape(server, raw):
    for suffix in ("", "/audio"):
        # http.client sends the path byte for byte (httpx would normalise the dot segments away).
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", f"/api/jobs/{raw}{suffix}")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (404, 422), (raw, suffix, resp.status)
        assert b"root:" not in body


def test_failed_job_reports_and_the_next_runs(client, models_dir):
    (models_dir / "broken" / "model.safetensors").unlink()  # after the server described it
    bad = client.post("/api/jobs", json={"model": "broken", "prompt": "piano", "seconds": 1.0}).json()["id"]
    good = submit(client, seed=5)
    job = wait_job(client, bad)
    assert job["status"] == "failed" and "model.safetensors" in job["error"], job
    assert client.get(f"/api/jobs/{bad}/audio").status_code == 409
    assert wait_job(client, good)["status"] == "done"


def test_openapi_ui_and_host_check(client, server):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/models", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/audio"} <= set(paths)
    assert set(paths["/api/jobs"]) == {"get", "post"}
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="generate"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    # A page on another site resolving its name to 127.0.0.1 (DNS rebinding) is refused.
    assert httpx.get(f"{server.url}/api/models", headers={"Host": "evil.example"}).status_code == 400


def test_queue_full_and_cancel(musicgen_converted, tmp_path):
    args = ["--model", f"tiny={musicgen_converted}", "--max-queue", "1", "--output-dir", str(tmp_path)]
    args += ["--data-dir", str(tmp_path / "data")]
    with serve(args, log_path=tmp_path / "log") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        long = submit(c, seconds=12.0)
        wait_job(c, long, until=("running", "done", "failed"))
        waiting = submit(c)  # the one queue slot
        r = c.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 1.0})
        assert r.status_code == 429 and "waiting" in r.json()["message"], r.text
        assert c.get(f"/api/jobs/{long}").json()["status"] == "running"  # so the 429 was deterministic
        assert c.get(f"/api/jobs/{waiting}").json()["queue_position"] == 1

        assert c.delete(f"/api/jobs/{waiting}").json()["status"] == "cancelled"
        c.delete(f"/api/jobs/{long}")
        assert wait_job(c, long)["status"] == "cancelled"
        assert wait_job(c, submit(c))["status"] == "done"  # the worker carries on


def test_launch_reports_a_server_that_exits(tmp_path):
    # The launcher's failure path: the process ends before it answers -> ServerStartError with its log.
    log = tmp_path / "log"
    with pytest.raises(ServerStartError, match="server exited with 2") as e:
        start_server(["--model", "tiny=/nonexistent/folder"], log_path=log, timeout=30)
    assert "unknown model '/nonexistent/folder'" in str(e.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no models"),
        (["--model", "=x"], "[NAME=]MODEL"),
        (["--model", "tiny"], "unknown model 'tiny'"),
        (["--model", "tiny=/nonexistent/folder"], "unknown model '/nonexistent/folder'"),
        (["--model", "bad/name=."], "not allowed"),
        (["--model", "a=.", "--port", "70000"], "--port"),
    ],
)
def test_cli_errors(argv, message, capsys):
    from mlx_audio_generate.cli.serve import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("mlx-audio-server: error:") and message in err and len(err.strip().splitlines()) == 1
    )
