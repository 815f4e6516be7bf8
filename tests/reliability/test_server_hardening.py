"""mlx-audio-server under hostile input: no server paths in what clients read, a deleted output folder is
recreated, request and error bodies are bounded, start-up errors are one line with exit code 2.

The real server process runs on a loopback port (as in tests/test_server.py); the path redaction and the
app-level cases also run in-process (FastAPI's TestClient), with no network at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlx_audio_generate.server.launch import free_port, serve

httpx = pytest.importorskip("httpx")

# Distinctive folder names: if any of them reaches a client, a server path leaked.
SECRET = "secret-home-7f3a"
ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.~-]+/)+[\w.~-]*")  # two or more components after a leading /


def wait_job(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s: {job}"
        time.sleep(0.1)


def submit(client, **body) -> str:
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "warm piano", "seconds": 0.3, **body})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def assert_no_paths(text: str, *roots: Path) -> None:
    assert SECRET not in text, text
    for root in roots:
        assert str(root) not in text, text
    assert not ABS_PATH.search(text), text


@pytest.fixture(scope="module")
def server(tmp_path_factory, musicgen_converted):
    """tiny (a link) and broken (a copy whose weights the test removes), both under a secret folder."""
    root = tmp_path_factory.mktemp("hardening") / SECRET
    models = root / "models"
    models.mkdir(parents=True)
    (models / "tiny").symlink_to(Path(musicgen_converted).resolve())
    shutil.copytree(musicgen_converted, models / "broken")
    out = root / "clips"
    log = root / "server.log"
    with serve(["--models-dir", str(models), "--output-dir", str(out)], log_path=log) as srv:
        yield SimpleNamespace(url=srv.url, port=srv.port, root=root, models=models, out=out, log=log)


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# ------------------------------------------------------------------------------------- 1. no server paths


def test_failed_job_error_names_the_file_not_its_path(client, server):
    (server.models / "broken" / "model.safetensors").unlink()  # after the server described it
    job = wait_job(client, submit(client, model="broken"))
    assert job["status"] == "failed" and "model.safetensors" in job["error"], job
    assert_no_paths(job["error"], server.root, Path(server.models).resolve())
    listed = client.get("/api/jobs")
    assert_no_paths(listed.text, server.root)
    assert_no_paths(client.get(f"/api/jobs/{job['id']}").text, server.root)
    # ... while the server's log keeps the whole message, folder included.
    log = server.log.read_text(errors="replace")
    assert str(Path(server.models / "broken").resolve()) in log


@pytest.mark.parametrize(
    "message, expected",
    [
        ("cannot read /home/me/models/x/model.safetensors (truncated)", "cannot read model.safetensors"),
        ("[Errno 2] No such file or directory: '/srv/My Models/x/config.json'", "'config.json'"),
        ('cannot open "/a b/c d.wav" now', '"c d.wav"'),
        ("see file:///home/me/x/y.wav.", "see y.wav."),
        ("folder ~/models/tiny is missing", "folder tiny is missing"),
        ("bad /tmp/pytest-of-root/x: no", "bad x: no"),
    ],
)
def test_redaction_keeps_the_base_name(message, expected):
    from mlx_audio_generate.server.jobs import redact_paths

    out = redact_paths(message)
    assert expected in out, out
    assert "/home" not in out and "/srv" not in out and "/tmp" not in out and "~/" not in out, out


def test_redaction_leaves_other_text_alone():
    from mlx_audio_generate.server.jobs import redact_paths

    for text in [
        "seconds must be at most 30 for model 'tiny'",
        "top_p: 1/2 is not allowed; see http://127.0.0.1:8420/api/models",
        "MusicGen / Stable Audio: steps must be >= 1",
        "relative a/b stays",
    ]:
        assert redact_paths(text) == text


def test_redaction_hides_the_output_and_model_folders(tmp_path):
    from mlx_audio_generate.server.jobs import redact_paths

    out = tmp_path / "my clips"
    text = f"output folder '{out}' does not exist; cannot write {out}/abc.wav"
    red = redact_paths(text, {out: "the output folder"})
    assert str(tmp_path) not in red and "my clips" not in red and "abc.wav" in red, red
    assert "the output folder" in red


def test_http_error_bodies_carry_no_paths(musicgen_converted, tmp_path):
    """Any HTTPException, a 422 made from a message and an unhandled exception: no path in the body."""
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    from mlx_audio_generate.server import create_app, discover_models

    out = tmp_path / SECRET
    out.mkdir()
    app = create_app(discover_models({"tiny": musicgen_converted}), out, allowed_hosts=["testserver"])

    @app.get("/boom-http")
    def boom_http() -> None:
        raise HTTPException(409, f"cannot read {out}/x.wav and /etc/secret-7f3a/key.pem")

    @app.get("/boom-422")
    def boom_422() -> None:
        detail = [{"loc": ["body", "prompt"], "msg": f"no such file '{out}/p.txt'", "type": "value_error"}]
        raise HTTPException(422, detail=detail)

    @app.get("/boom-500")
    def boom_500() -> None:
        raise RuntimeError(f"internal /opt/{SECRET}/lib.so failure")

    with TestClient(app, raise_server_exceptions=False) as c:
        for path, status, name in [("/boom-http", 409, "key.pem"), ("/boom-422", 422, "p.txt")]:
            r = c.get(path)
            assert r.status_code == status and name in r.json()["message"], r.text
            assert_no_paths(r.text, out)
        r = c.get("/boom-500")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
        assert "internal error" in r.json()["message"]
        assert_no_paths(r.text, out)


# ------------------------------------------------------------------------------- 2. deleted output folder


def test_deleted_output_folder_is_recreated(client, server):
    assert wait_job(client, submit(client, seed=1))["status"] == "done"
    shutil.rmtree(server.out)  # removed while the server runs
    job = wait_job(client, submit(client, seed=2))
    assert job["status"] == "done", job
    assert (server.out / f"{job['id']}.wav").is_file()
    assert client.get(job["audio_url"]).status_code == 200

    # A folder that cannot be made (a file in its place): that job fails cleanly, the next one works.
    shutil.rmtree(server.out)
    server.out.write_text("not a folder")
    try:
        job = wait_job(client, submit(client, seed=3))
        assert job["status"] == "failed" and "output folder" in job["error"], job
        assert len(job["error"].splitlines()) == 1
        assert_no_paths(job["error"], server.root)
    finally:
        server.out.unlink()
    job = wait_job(client, submit(client, seed=4))
    assert job["status"] == "done" and (server.out / f"{job['id']}.wav").is_file(), job


# ------------------------------------------------------------------------------------ 3. bounded bodies


def test_oversized_body_is_413_before_parsing(client):
    keys = {f"k{i}": 1 for i in range(300_000)}  # ~5 MB of unknown keys
    body = json.dumps({"model": "tiny", "prompt": "x", "seconds": 1.0, **keys}).encode()
    assert len(body) > 4_000_000
    t0 = time.monotonic()
    r = client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert len(r.content) < 300 and "\n" not in r.json()["message"] and "65536" in r.json()["message"]
    assert time.monotonic() - t0 < 10
    assert client.get("/api/models").status_code == 200  # the server (and this connection) carry on


def test_chunked_body_without_length_is_bounded(client):
    def chunks():
        yield b'{"model": "tiny", "prompt": "x", "seconds": 1.0'
        for i in range(20_000):
            yield f', "k{i}": 1'.encode()
        yield b"}"

    r = client.post("/api/jobs", content=chunks(), headers={"content-type": "application/json"})
    sent = r.request.headers
    assert sent.get("transfer-encoding") == "chunked" and "content-length" not in sent
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert len(r.content) < 300

    small = iter([b'{"model": "tiny", ', b'"prompt": "x", "seconds": 0.3, "seed": 9}'])  # chunked, in bounds
    r = client.post("/api/jobs", content=small, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"])["status"] == "done"


def test_many_errors_give_a_bounded_422(client):
    keys = {f"unknown_{i}": 1 for i in range(3000)}  # within the body limit, 3000 problems
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 1.0, **keys})
    assert r.status_code == 422
    data = r.json()
    assert data["count"] == 3000 and len(data["detail"]) == 20
    assert "\n" not in data["message"] and len(data["message"]) <= 1000 and "2980 more" in data["message"]
    assert len(r.content) < 8000, len(r.content)
    # a single problem still reads as before
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 1.0, "colour": "blue"})
    assert r.status_code == 422 and r.json()["count"] == 1 and "colour" in r.json()["message"]


def test_long_field_names_are_cut_in_errors(client):
    r = client.post("/api/jobs", json={"model": "tiny", "prompt": "x", "seconds": 1.0, "k" * 50_000: 1})
    assert r.status_code == 422 and len(r.content) < 2000, len(r.content)


# ------------------------------------------------------------------------------ 4. start-up errors


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlx_audio_generate.cli.serve", *args]
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        cmd, cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_busy_port_is_one_line_and_exit_2(musicgen_converted, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _run_cli(
            ["--host", "127.0.0.1", "--port", str(port), "--model", f"tiny={musicgen_converted}"],
            {"TMPDIR": str(tmpdir)},
        )
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith(f"mlx-audio-server: error: port {port} is in use"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "mlx-audio-server: http" not in p.stdout  # no start-up line for a server that never ran
    assert list(tmpdir.iterdir()) == []  # and no temporary output folder left behind


def test_address_not_on_this_machine_is_one_line_and_exit_2(musicgen_converted, tmp_path):
    # 192.0.2.1 (TEST-NET-1) is never a local address; binding to it sends nothing anywhere.
    p = _run_cli(["--host", "192.0.2.1", "--model", f"tiny={musicgen_converted}"], {})
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("mlx-audio-server: error: cannot listen on '192.0.2.1'"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_unknown_host_name_is_one_line_and_exit_2(musicgen_converted, monkeypatch, capsys):
    # In-process, with the name lookup answered here: a real lookup of 'nonsense' would ask the DNS server.
    from mlx_audio_generate.cli.serve import main

    def no_such_name(host, *a, **k):
        if host == "nonsense":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        raise AssertionError(f"unexpected lookup of {host!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(SystemExit) as e:
        main(["--host", "nonsense", "--port", str(free_port()), "--model", f"tiny={musicgen_converted}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mlx-audio-server: error: cannot listen on 'nonsense'"), err
    assert len(err.strip().splitlines()) == 1, err


def test_normal_start_up_line(server):
    log = server.log.read_text(errors="replace")
    line = f"mlx-audio-server: http://127.0.0.1:{server.port}/  models: broken (musicgen), tiny (musicgen)"
    assert line in log and f"Uvicorn running on http://127.0.0.1:{server.port}" in log
