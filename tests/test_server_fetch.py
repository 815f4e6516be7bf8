"""Fetching models from the server (fetcher.py, fetch_routes.py): the real server process, offline, against a
Hugging Face cache holding tiny checkpoints in the released layout (as tests/test_hub.py builds it), and
online against a hub on a loopback port (tests/local_hub.py) that huggingface_hub downloads from for real.

facebook/musicgen-small is the tiny MusicGen of conftest; facebook/musicgen-stereo-small is a copy whose
weights file is not safetensors (its conversion fails); every other repo is missing (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from local_hub import LocalHub
from test_hub import populate_hf_cache
from test_server import submit, wait_job

from mlx_audio_generate.hub import download_patterns
from mlx_audio_generate.server.launch import serve

httpx = pytest.importorskip("httpx")


def wait_fetch(client, name: str, timeout: float = 60.0, views: list | None = None) -> tuple[dict, list[str]]:
    """The fetch's final view, and the stages seen while polling it (every view polled: `views`)."""
    deadline, seen = time.monotonic() + timeout, []
    while True:
        r = client.get(f"/api/models/fetch/{name}")
        assert r.status_code == 200, r.text
        view = r.json()
        if views is not None:
            views.append(view)
        if view["stage"] and (not seen or seen[-1] != view["stage"]):
            seen.append(view["stage"])
        if view["state"] != "fetching":
            return view, seen
        assert time.monotonic() < deadline, f"fetch still {view['stage']} after {timeout} s: {view}"
        time.sleep(0.05)


def hf_size(folder: Path, repo: str) -> int:
    from huggingface_hub.utils import filter_repo_objects

    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    return sum(
        files[f].stat().st_size for f in filter_repo_objects(files, allow_patterns=download_patterns(repo))
    )


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, musicgen_dir) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    populate_hf_cache(cache, "facebook/musicgen-small", musicgen_dir)
    broken = tmp_path_factory.mktemp("broken-src") / "musicgen"
    shutil.copytree(musicgen_dir, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    populate_hf_cache(cache, "facebook/musicgen-stereo-small", broken)
    return cache


def start(root: Path, hf_cache: Path, *extra: str):
    args = ["--models-dir", str(root / "models"), "--data-dir", str(root / "data"), *extra]
    (root / "models").mkdir(exist_ok=True)
    env = {"HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"}
    return serve(args, log_path=root / "server.log", env=env)


@pytest.fixture(scope="module")
def server(tmp_path_factory, hf_cache, musicgen_converted):
    root = tmp_path_factory.mktemp("fetch-server")
    with start(root, hf_cache, "--model", f"tiny={musicgen_converted}") as srv:
        yield SimpleNamespace(url=srv.url, models=root / "models", log=root / "server.log")


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def catalog(client, sizes: bool = False) -> dict[str, dict]:
    body = client.get("/api/catalog", params={"sizes": "true"} if sizes else None).json()
    return {m["name"]: m for m in body["models"]}


def test_catalog_lists_every_registry_model(client, musicgen_dir):
    from mlx_audio_generate import registry

    body = client.get("/api/catalog").json()
    assert body["fetch_enabled"] is True
    items = {m["name"]: m for m in body["models"]}
    assert list(items) == list(registry.short_names())  # every name, in the registry's order
    small = items["musicgen-small"]
    assert (small["family"], small["family_label"], small["repo"]) == (
        "musicgen",
        "MusicGen",
        "facebook/musicgen-small",
    )
    # in the Hugging Face cache: its size is what a conversion reads of it, measured on disk
    assert small["downloaded"] is True and small["size_bytes"] == hf_size(
        musicgen_dir, "facebook/musicgen-small"
    )
    medium = items["musicgen-medium"]  # not cached, and offline: no size
    assert (medium["state"], medium["downloaded"], medium["size_bytes"], medium["fetch"]) == (
        "fetchable", False, None, None
    )  # fmt: skip
    # "tiny" was converted from a local folder: it stands for no registry model
    assert all(m["served_as"] == [] for m in items.values() if m["name"] != "musicgen-small")


def test_fetch_shows_progress_and_serves_the_model(client, server):
    assert "musicgen-small" not in [m["name"] for m in client.get("/api/models").json()]
    r = client.post("/api/models/fetch", json={"name": "musicgen-small"})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/api/models/fetch/musicgen-small"
    assert (r.json()["state"], r.json()["stage"]) == ("fetching", "queued")
    again = client.post("/api/models/fetch", json={"name": "musicgen-small"})  # once at a time per name
    assert again.status_code == 409 and "already being fetched" in again.json()["message"], again.text
    assert catalog(client)["musicgen-small"]["state"] == "fetching"
    job = submit(client)  # generation runs while the model is fetched (another process converts it)

    view, seen = wait_fetch(client, "musicgen-small")
    assert view["state"] == "done" and view["error"] is None, view
    assert view["served_as"] == "musicgen-small" and view["progress"] == 1.0
    assert list(view["stage_times"]) == ["download", "convert", "adding"]  # in this order, each ended
    assert all(end is not None and end >= start for start, end in view["stage_times"].values())
    assert view["tensors_total"] > 0 and view["tensors_done"] == view["tensors_total"]
    assert set(seen) <= {"queued", "download", "convert", "adding"}
    assert wait_job(client, job)["status"] == "done"

    # served without a restart: listed, described from its config, and it generates
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["musicgen-small"]["family"] == "musicgen"
    done = wait_job(client, submit(client, model="musicgen-small", seconds=0.5, seed=3))
    assert done["status"] == "done", done
    assert client.get(done["audio_url"]).content[:4] == b"RIFF"
    entry = catalog(client)["musicgen-small"]
    assert (entry["state"], entry["served_as"]) == ("served", ["musicgen-small"])

    # written into the first --models-dir in the CLI cache's layout, nothing else: a restart serves it
    assert sorted(p.name for p in server.models.iterdir()) == ["facebook--musicgen-small"]
    assert sorted(p.name for p in (server.models / "facebook--musicgen-small").iterdir()) == ["original"]
    from mlx_audio_generate.server import discover_models

    assert list(discover_models({}, [server.models])) == ["musicgen-small"]
    again = client.post("/api/models/fetch", json={"name": "musicgen-small"})
    assert again.status_code == 409 and "already served" in again.json()["message"], again.text


def test_failed_fetches_are_one_line_and_leave_nothing(client, server):
    # offline, and not in the Hugging Face cache
    r = client.post("/api/models/fetch", json={"name": "musicgen-medium"})
    assert r.status_code == 202, r.text
    view, _ = wait_fetch(client, "musicgen-medium")
    assert view["state"] == "failed" and "not in the local Hugging Face cache" in view["error"], view
    # in the cache, but its weights are not safetensors: the conversion fails
    assert client.post("/api/models/fetch", json={"name": "musicgen-stereo-small"}).status_code == 202
    broken, _ = wait_fetch(client, "musicgen-stereo-small")
    assert broken["state"] == "failed" and broken["served_as"] is None, broken
    for v in (view, broken):
        assert (
            "\n" not in v["error"] and "/" + "tmp" not in v["error"] and str(server.models) not in v["error"]
        )
    items = catalog(client)
    assert items["musicgen-medium"]["state"] == items["musicgen-stereo-small"]["state"] == "failed"
    assert items["musicgen-stereo-small"]["fetch"]["error"] == broken["error"]
    # nothing half-written: no entry, no staging folder of either (the earlier fetch's entry may be there)
    assert {p.name for p in server.models.iterdir()} <= {"facebook--musicgen-small"}
    names = [m["name"] for m in client.get("/api/models").json()]
    assert "musicgen-medium" not in names and "musicgen-stereo-small" not in names
    # a failed fetch may be tried again (and fails again, the same way)
    assert client.post("/api/models/fetch", json={"name": "musicgen-medium"}).status_code == 202
    assert wait_fetch(client, "musicgen-medium")[0]["error"] == view["error"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"name": "facebook/musicgen-small"}, 404, "can fetch; did you mean musicgen-small?"),  # no repo id
        ({"name": "../../etc/passwd"}, 404, "not a model this server can fetch"),  # nor a path
        ({"name": "musicgen-smal"}, 404, "did you mean musicgen-small?"),
        ({"name": "musicgen-small", "dtype": "int8"}, 422, "dtype must be one of"),
        ({"name": "musicgen-small", "repo": "x/y"}, 422, "repo"),
        ({"name": "x" * 65}, 422, "name"),
    ],
)
def test_fetch_requests_refused(client, body, status, message):
    r = client.post("/api/models/fetch", json=body)
    assert r.status_code == status and message in r.json()["message"], r.text
    assert client.get("/api/models/fetch/nothing-here").status_code == 404


def test_no_fetch_lists_but_refuses(tmp_path, hf_cache, musicgen_converted):
    with (
        start(tmp_path, hf_cache, "--no-fetch", "--model", f"tiny={musicgen_converted}") as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        body = c.get("/api/catalog").json()
        assert body["fetch_enabled"] is False and body["models"][0]["state"] == "fetchable"
        r = c.post("/api/models/fetch", json={"name": "musicgen-small"})
        assert r.status_code == 403 and "--no-fetch" in r.json()["message"], r.text
        assert c.get("/api/models/fetch/musicgen-small").status_code == 404
    assert list((tmp_path / "models").iterdir()) == []


def test_no_models_is_fine_when_the_page_can_fetch_them(tmp_path, hf_cache):
    with start(tmp_path, hf_cache) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/api/models").json() == []
        assert c.post("/api/models/fetch", json={"name": "musicgen-small"}).status_code == 202
        assert wait_fetch(c, "musicgen-small")[0]["state"] == "done"
        assert [m["name"] for m in c.get("/api/models").json()] == ["musicgen-small"]


def test_download_from_a_hub_with_byte_progress(tmp_path, musicgen_dir, musicgen_converted):
    repo = "facebook/musicgen-small"
    (tmp_path / "models").mkdir()
    args = ["--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data")]
    args += ["--model", f"tiny={musicgen_converted}"]
    # the weights come in 64 KiB pieces 0.15 s apart: about 3 s of downloading (network time, not CPU time)
    with LocalHub({repo: musicgen_dir}, delay=0.15) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf")}  # online: HF_HUB_OFFLINE unset
        with (
            serve(args, env=env, log_path=tmp_path / "server.log") as srv,
            httpx.Client(base_url=srv.url) as c,
        ):
            # the hub is asked only on request (?sizes=true: the page's open Models panel)...
            assert catalog(c)["musicgen-small"]["size_bytes"] is None
            time.sleep(0.3)
            assert hub.requests == []
            # ...and then, before any download, the size comes from its file listing (in the background)
            deadline = time.monotonic() + 30
            while (entry := catalog(c, sizes=True)["musicgen-small"])["size_bytes"] is None:
                assert time.monotonic() < deadline, entry
                time.sleep(0.1)
            size = hf_size(musicgen_dir, repo)
            assert entry["size_bytes"] == size and entry["downloaded"] is False
            assert not any(r.startswith("GET /facebook") for r in hub.requests)  # listed (HEAD) only

            assert c.post("/api/models/fetch", json={"name": "musicgen-small"}).status_code == 202
            during = wait_job(c, submit(c, seconds=0.5))  # the worker generates while the model downloads
            views: list[dict] = []
            view, seen = wait_fetch(c, "musicgen-small", views=views)
            assert view["state"] == "done", view
            assert during["status"] == "done" and during["finished"] < view["stage_times"]["download"][1]
            assert (
                seen[seen.index("download") :]
                == ["download", "convert", "adding"][: len(seen) - seen.index("download")]
            )
            # bytes and files counted up while downloading; at the end, all of them
            partial = [
                v for v in views if v["stage"] == "download" and 0 < v["bytes_done"] < v["bytes_total"]
            ]
            assert partial, [(v["stage"], v["bytes_done"], v["bytes_total"]) for v in views]
            assert all(0 < v["progress"] < 1 for v in partial)
            assert (view["bytes_done"], view["bytes_total"]) == (size, size)
            assert view["files_done"] == view["files_total"] > 1
            assert f"GET /{repo}/resolve/{'f' * 40}/model.safetensors" in hub.requests
            job = wait_job(c, submit(c, model="musicgen-small", seconds=0.5))
            assert job["status"] == "done", job
            assert catalog(c)["musicgen-small"]["downloaded"] is True

            # a repo the hub does not have: one line, nothing left behind
            assert c.post("/api/models/fetch", json={"name": "musicgen-medium"}).status_code == 202
            failed, _ = wait_fetch(c, "musicgen-medium")
            assert failed["state"] == "failed" and "not found" in failed["error"], failed
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["facebook--musicgen-small"]


def test_cancel_a_fetch(tmp_path, musicgen_dir, musicgen_converted):
    """DELETE /api/models/fetch/{name} (the page's Cancel): a queued fetch is dropped at once; a running one's
    process is stopped mid-download, nothing is left in the models folder, the model is fetchable again, and
    fetching it again completes."""
    repo = "facebook/musicgen-small"
    (tmp_path / "models").mkdir()
    args = ["--models-dir", str(tmp_path / "models"), "--data-dir", str(tmp_path / "data")]
    args += ["--model", f"tiny={musicgen_converted}"]
    with LocalHub({repo: musicgen_dir}, delay=0.3) as hub:  # ~6 s of downloading: time to cancel
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf")}
        with (
            serve(args, env=env, log_path=tmp_path / "server.log") as srv,
            httpx.Client(base_url=srv.url) as c,
        ):
            assert c.post("/api/models/fetch", json={"name": "musicgen-small"}).status_code == 202
            assert c.post("/api/models/fetch", json={"name": "musicgen-medium"}).status_code == 202  # queued
            queued = c.delete("/api/models/fetch/musicgen-medium")
            assert queued.status_code == 200 and queued.json()["state"] == "cancelled", queued.text
            deadline = time.monotonic() + 30
            while (v := c.get("/api/models/fetch/musicgen-small").json())["bytes_done"] == 0:
                assert time.monotonic() < deadline, v
                time.sleep(0.05)
            r = c.delete("/api/models/fetch/musicgen-small")
            assert r.status_code == 200, r.text
            view, _ = wait_fetch(c, "musicgen-small")
            assert view["state"] == "cancelled" and view["error"] is None, view
            assert 0 < view["bytes_done"] < view["bytes_total"]  # stopped mid-download
            assert catalog(c)["musicgen-small"]["state"] == "fetchable"
            assert [m["name"] for m in c.get("/api/models").json()] == ["tiny"]
            again = c.delete("/api/models/fetch/musicgen-small")
            assert again.status_code == 409 and "ended already" in again.json()["message"]
            assert c.delete("/api/models/fetch/musicgen-large").status_code == 404
            assert not list((tmp_path / "models").iterdir())  # nothing half-written
            hub.delay = 0.0
            assert c.post("/api/models/fetch", json={"name": "musicgen-small"}).status_code == 202
            view, _ = wait_fetch(c, "musicgen-small")
            assert view["state"] == "done", view
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["facebook--musicgen-small"]


def test_cached_conversion_is_added_from_the_cli_cache(tmp_path, hf_cache, musicgen_converted):
    # without --models-dir, fetches go to the CLI's cache; a conversion already there is only added
    cache = tmp_path / "cli-cache"
    shutil.copytree(musicgen_converted, cache / "facebook--musicgen-small" / "original")
    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(tmp_path / "data")]
    env = {
        "HF_HUB_CACHE": str(tmp_path / "empty-hf"),
        "HF_HUB_OFFLINE": "1",
        "MLX_AUDIO_GENERATE_CACHE": str(cache),
    }
    with serve(args, env=env, log_path=tmp_path / "server.log") as srv, httpx.Client(base_url=srv.url) as c:
        entry = catalog(c)["musicgen-small"]
        assert (entry["state"], entry["downloaded"]) == ("cached", False)
        assert c.post("/api/models/fetch", json={"name": "musicgen-small"}).status_code == 202
        view, _ = wait_fetch(c, "musicgen-small")
        assert view["state"] == "done" and view["tensors_total"] == 0, view  # nothing downloaded or converted
        assert sorted(m["name"] for m in c.get("/api/models").json()) == ["musicgen-small", "tiny"]
        assert catalog(c)["musicgen-small"]["state"] == "served"
    assert sorted(p.name for p in cache.iterdir()) == ["facebook--musicgen-small"]
