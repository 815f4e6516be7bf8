"""Audio inputs through the server (server/uploads.py): uploads checked as audio by their bytes, size-limited,
never half-written; file settings (init audio, inpaint audio, melody, audio prompt) name an upload or a
finished job by id, never a path; a job with an upload gives the same audio as the Python API with that
file; region settings are checked against the clip; clips download as WAV, FLAC or MP3."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf
from test_server import wait_job

import mlx_audio_generate as mag
from mlx_audio_generate.server.launch import serve


def wav_bytes(seconds: float, sample_rate: int, channels: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(
        buf, 0.3 * rng.standard_normal((int(seconds * sample_rate), channels)), sample_rate, format="WAV"
    )
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(
    musicgen_converted, melody_converted, stable_audio_small_converted, stable_audio_1_0_converted,
    tmp_path_factory,
):  # fmt: skip
    root = tmp_path_factory.mktemp("uploads-server")
    args = [
        "--model", f"tiny={musicgen_converted}", "--model", f"melody={melody_converted}",
        "--model", f"sa={stable_audio_small_converted}", "--model", f"sa1={stable_audio_1_0_converted}",
        "--data-dir", str(root / "data"),
        "--max-upload-mb", "1",
    ]  # fmt: skip
    with serve(args, log_path=root / "server.log") as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield SimpleNamespace(url=srv.url, client=c, data=root / "data", sa=stable_audio_small_converted)


def upload(c: httpx.Client, data: bytes, name: str = "in.wav") -> httpx.Response:
    return c.post("/api/uploads", params={"name": name}, content=data)


def test_upload_roundtrip_and_refusals(server):
    c = server.client
    data = wav_bytes(0.5, 44100, 2)
    r = upload(c, data, "../../etc/My Take.wav")
    assert r.status_code == 201, r.text
    up = r.json()
    assert (up["name"], up["format"], up["sample_rate"], up["channels"]) == ("My Take.wav", "WAV", 44100, 2)
    assert up["seconds"] == pytest.approx(0.5) and c.get(up["audio_url"]).content == data
    before = sorted(p.name for p in (server.data / "uploads").iterdir())
    # not audio (whatever its name says), empty, over --max-upload-mb: refused, nothing written
    for body, name, status, words in [
        (b"PK\x03\x04 not audio at all" * 10, "song.wav", 415, "not an audio file"),
        (b"", "empty.wav", 415, "empty"),
        (b"\0" * (1024 * 1024 + 1), "big.wav", 413, "larger than 1 MB"),
    ]:
        r = upload(c, body, name)
        assert r.status_code == status and words in r.json()["message"], r.text
    assert sorted(p.name for p in (server.data / "uploads").iterdir()) == before
    assert c.get("/api/uploads/00000000-0000-0000-0000-000000000000/audio").status_code == 404


def test_init_audio_job_equals_the_python_api(server, tmp_path):
    c = server.client
    data = wav_bytes(1.0, 44100, 2, seed=1)
    up = upload(c, data).json()
    body = {
        "model": "sa",
        "prompt": "rain",
        "seconds": 0.5,
        "seed": 3,
        "steps": 2,
        "init_audio": up["id"],
        "init_strength": 0.5,
    }
    r = c.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"], timeout=180)
    assert job["status"] == "done", job
    assert job["params"]["init_audio"] == up["id"]  # the id, never the server's path
    got, sr = sf.read(io.BytesIO(c.get(job["audio_url"]).content), dtype="float32", always_2d=True)
    (tmp_path / "in.wav").write_bytes(data)
    want = mag.load(str(server.sa)).generate(
        "rain", seconds=0.5, seed=3, steps=2, init_audio=str(tmp_path / "in.wav"), init_strength=0.5
    )[0]
    np.testing.assert_array_equal(got.T, want)

    # "send to init": a finished job's clip as the init audio of the next
    body2 = {**body, "init_audio": job["id"], "seed": 4}
    assert wait_job(c, c.post("/api/jobs", json=body2).json()["id"], timeout=180)["status"] == "done"


@pytest.mark.parametrize(
    "extra, field, words",
    [
        ({"init_audio": "00000000-0000-0000-0000-000000000000"}, "init_audio", "no upload or finished job"),
        ({"init_audio": "/etc/passwd"}, "init_audio", "no upload or finished job"),
        ({"inpaint_audio": "UP", "mask_start": 0.2, "mask_end": 5.0}, "mask_end", "outside the clip"),
    ],
)
def test_bad_audio_inputs(server, extra, field, words):
    c = server.client
    up = upload(c, wav_bytes(1.0, 44100, 2)).json()
    extra = {k: up["id"] if v == "UP" else v for k, v in extra.items()}
    r = c.post("/api/jobs", json={"model": "sa", "prompt": "x", "seconds": 0.5, **extra})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field and words in r.json()["message"]
    assert "/" not in r.json()["message"].replace("/api/uploads", "")  # no server path in the answer


def test_inpaint_and_melody_and_audio_prompt(server):
    c = server.client
    sa_in = upload(c, wav_bytes(1.0, 44100, 2, seed=2)).json()["id"]
    inpaint = {"inpaint_audio": sa_in, "mask_start": 0.1, "mask_end": 0.3, "steps": 2}
    # inpainting: a v-objective model (Stable Audio Open 1.0)
    jobs = [c.post("/api/jobs", json={"model": "sa1", "prompt": "x", "seconds": 0.5, **inpaint}).json()["id"]]
    mono = upload(c, wav_bytes(1.0, 32000, 1, seed=3)).json()["id"]
    for model, extra in (("melody", {"melody": mono}), ("tiny", {"audio_prompt": mono})):
        r = c.post("/api/jobs", json={"model": model, "prompt": "x", "seconds": 1.5, **extra})
        assert r.status_code == 202, r.text
        jobs.append(r.json()["id"])
    assert [wait_job(c, j, timeout=180)["status"] for j in jobs] == ["done"] * 3
    # a model without melody conditioning does not offer it
    r = c.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 1.0, "melody": mono})
    assert r.status_code == 422 and "does not apply" in r.json()["message"]
    params = {m["name"]: {p["name"]: p for p in m["params"]} for m in c.get("/api/models").json()}
    assert "melody" in params["melody"] and "melody" not in params["tiny"]
    assert params["sa"]["mask_end"]["region"] == {"of": "inpaint_audio", "role": "end"}
    assert params["sa"]["inpaint_audio"]["kind"] == "file"


def test_download_formats(server):
    c = server.client
    r = c.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 0.5})
    job = wait_job(c, r.json()["id"], timeout=180)
    wav, sr = sf.read(io.BytesIO(c.get(job["audio_url"]).content), dtype="float32", always_2d=True)
    for fmt, media in (("flac", "audio/flac"), ("mp3", "audio/mpeg")):
        r = c.get(job["audio_url"], params={"format": fmt})
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert f'.{fmt}"' in r.headers["content-disposition"]
        got, sr2 = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
        assert sr2 == sr
        if fmt == "flac":  # lossless at 24 bits
            np.testing.assert_allclose(got, np.clip(wav, -1, 1), atol=2**-22)
    assert c.get(job["audio_url"], params={"format": "exe"}).status_code == 422
    assert c.delete(f"/api/history/{job['id']}").status_code == 200
    clips = server.data / "clips"
    assert not any(Path(p).name.startswith(job["id"]) for p in clips.iterdir())
