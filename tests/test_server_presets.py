"""Presets over HTTP: the families' presets in GET /api/models, only where they fit the checkpoint; the
user's presets (POST / GET / DELETE /api/presets) checked as strictly as a job request, 4xx with messages
naming the field, kept in the server's SQLite file across a restart of the real `mlx-audio-server`."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from fastapi.testclient import TestClient

from mlx_audio_generate import registry
from mlx_audio_generate.server import create_app, discover_models
from mlx_audio_generate.server.launch import serve
from mlx_audio_generate.server.models import ModelEntry
from mlx_audio_generate.server.presets import MAX_NAME_CHARS, family_presets

GOOD = {
    "name": "My lofi", "model": "tiny", "prompt": "dusty lofi drums", "seconds": 2.0, "seed": 5,
    "settings": {"top_k": 50, "temperature": 0.7},
}  # fmt: skip


@pytest.fixture(scope="module")
def client(musicgen_converted, stable_audio_small_converted, tmp_path_factory):
    models = discover_models({"tiny": musicgen_converted, "sa": stable_audio_small_converted})
    app = create_app(models, tmp_path_factory.mktemp("presets-out"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def test_family_presets_in_the_model_list(client):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    declared = registry.get("musicgen").presets
    got = models["tiny"]["presets"]
    assert [p["name"] for p in got] == [p.name for p in declared]  # the 30 s window takes them all
    lofi = got[0]
    assert lofi["prompt"] == declared[0].prompt and lofi["seconds"] == declared[0].seconds
    assert lofi["settings"] == dict(declared[0].settings)
    # the tiny Stable Audio window (< 1 s) fits none of its family's presets: none is offered
    assert models["sa"]["max_seconds"] < 1 and models["sa"]["presets"] == []


def test_family_presets_follow_the_checkpoint(stable_audio_small_converted, stable_audio_1_0_converted):
    """The same family's presets on two checkpoints: a v-objective sampler (1.0's) is offered only where the
    checkpoint has it. (The tiny windows are < 1 s; the released ones, ~11.9 s and ~47.6 s, are set.)"""
    small = ModelEntry.from_folder("small", stable_audio_small_converted)
    big = ModelEntry.from_folder("big", stable_audio_1_0_converted)
    small.max_seconds = small.max_total_seconds = 11.8  # not long form: the window is the limit
    big.max_seconds = big.max_total_seconds = 47.5
    names = [p.name for p in registry.get("stable_audio").presets]
    on_small = [p["name"] for p in family_presets(small)]
    on_big = [p["name"] for p in family_presets(big)]
    assert on_big == names
    assert on_small == [n for n in names if "1.0" not in n] and len(on_small) == len(names) - 1
    small.max_seconds = small.max_total_seconds = 7.0  # under the 8 s drum loops: left out, not cut
    assert all(p["seconds"] <= 7.0 for p in family_presets(small)) and len(family_presets(small)) == 1


def test_save_list_apply_delete(client):
    r = client.post("/api/presets", json=GOOD)
    assert r.status_code == 201, r.text
    saved = r.json()
    assert (saved["name"], saved["model"], saved["family"]) == ("My lofi", "tiny", "musicgen")
    assert saved["seed"] == 5
    assert saved["settings"] == {"top_k": 50, "temperature": 0.7}
    assert [p["id"] for p in client.get("/api/presets").json()] == [saved["id"]]
    # a saved preset is a valid job: the page sends exactly these fields
    job = {k: saved[k] for k in ("model", "prompt", "seconds", "seed")} | saved["settings"]
    assert client.post("/api/jobs", json=job).status_code == 202
    # names are unique ignoring case and spacing; nothing is overwritten
    again = client.post("/api/presets", json={**GOOD, "name": "  my   LOFI "})
    assert again.status_code == 409 and "exists already" in again.json()["message"]
    assert client.delete(f"/api/presets/{saved['id']}").json()["name"] == "My lofi"
    assert client.get("/api/presets").json() == []
    gone = client.delete(f"/api/presets/{saved['id']}")
    assert gone.status_code == 404 and "no preset" in gone.json()["message"]
    assert client.delete("/api/presets/not-an-id").status_code == 422


def test_presets_keep_the_output_settings(client):
    """The form holds the output settings (format, loudness) beside the model's: a preset keeps them."""
    r = client.post(
        "/api/presets", json={**GOOD, "name": "loud flac", "settings": {"format": "flac", "normalize": -14.0}}
    )
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["settings"] == {"format": "flac", "normalize": -14.0}
    job = {k: saved[k] for k in ("model", "prompt", "seconds", "seed")} | saved["settings"]
    assert client.post("/api/jobs", json=job).status_code == 202
    assert client.delete(f"/api/presets/{saved['id']}").status_code == 200


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"name": ""}, "name", "name is empty"),
        ({"name": "   "}, "name", "name is empty"),
        ({"name": "x" * (MAX_NAME_CHARS + 1)}, "name", "at most"),
        ({"name": "a\x00b"}, "name", "control characters"),
        ({"name": 5}, "name", "valid string"),
        ({"model": "nope"}, "model", "unknown model 'nope'"),
        ({"prompt": "  "}, "prompt", "prompt is empty"),
        ({"seconds": 3600.5}, "seconds", "at most 3600"),  # MusicGen: long form, up to an hour
        ({"seconds": "2"}, "seconds", "valid number"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"settings": {"steps": 8}}, "settings.steps", "not a setting of model 'tiny'"),
        ({"settings": {"prompt": "x"}}, "settings.prompt", "not a setting"),
        ({"settings": {"top_k": 0}}, "settings.top_k", "greater than or equal to 1"),
        ({"settings": {"top_k": "5"}}, "settings.top_k", "valid integer"),
        ({"settings": {"top_k": True}}, "settings.top_k", "valid integer"),
        ({"settings": {"temperature": 9.0}}, "settings.temperature", "less than or equal to 5"),
        ({"settings": {"temperature": float("nan")}}, "settings.temperature", "finite number"),
        ({"settings": {"top_k": {"a": [1]}}}, "settings.top_k", "valid integer"),
        ({"settings": {"audio_prompt": "x"}}, "settings.audio_prompt", "audio input"),
        ({"settings": []}, "settings", "valid dictionary"),
        ({"model": "sa", "settings": {"sampler": "dpmpp-3m-sde"}, "seconds": 0.5}, "settings.sampler",
         "does not fit this model"),

        ({"settings": {"format": "aiff"}}, "settings.format", "not offered here"),
        ({"settings": {"normalize": 3.0}}, "settings.normalize", "less than or equal to 0"),
    ],
)  # fmt: skip
def test_invalid_presets_are_refused(client, change, field, words):
    body = json.dumps({**GOOD, **change})  # json.dumps writes NaN as JSON's parsers accept it
    r = client.post("/api/presets", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert words in body["message"] and body["message"].startswith(field), body["message"]
    assert len(body["message"].splitlines()) == 1
    assert client.get("/api/presets").json() == []  # nothing half-saved


def test_user_presets_survive_a_restart(musicgen_converted, tmp_path):
    data = tmp_path / "data"
    args = ["--model", f"tiny={musicgen_converted}", "--data-dir", str(data)]
    with serve(args, log_path=tmp_path / "log1") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first = c.post("/api/presets", json=GOOD).json()
        second = c.post("/api/presets", json={**GOOD, "name": "Another", "seed": None, "settings": {}}).json()
        job = c.post("/api/jobs", json={"model": "tiny", "prompt": "kept", "seconds": 0.5}).json()["id"]
    # the history's file, a table of its own
    with sqlite3.connect(data / "history.sqlite3") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "presets"} <= tables
    with serve(args, log_path=tmp_path / "log2") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        kept = c.get("/api/presets").json()
        assert [p["name"] for p in kept] == ["Another", "My lofi"]  # by name
        assert kept[1] == first and kept[0] == second and kept[0]["seed"] is None
        assert [j["id"] for j in c.get("/api/jobs").json()] == [job]  # the history is untouched
        assert c.delete(f"/api/presets/{second['id']}").status_code == 200
    with serve(args, log_path=tmp_path / "log3") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert [p["id"] for p in c.get("/api/presets").json()] == [first["id"]]
