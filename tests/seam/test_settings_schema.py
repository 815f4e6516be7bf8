"""One settings schema: every rule holds the same in the CLI, batch files, the server and the Python API."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

import mlx_audio_generate
from mlx_audio_generate import registry
from mlx_audio_generate.errors import UserError

# (family, setting, a value out of its bounds). top_k 0 is refused everywhere: 1 is greedy and 2048 (the
# codebook size) keeps every token, so there is no "off" value to confuse with a number.
RULES = [
    ("musicgen", "top_k", 0),
    ("musicgen", "top_k", 2049),
    ("musicgen", "temperature", 5.5),
    ("musicgen", "top_p", 1.5),
    ("musicgen", "guidance_coef", -1.0),
    ("stable_audio", "steps", 0),
    ("stable_audio", "steps", 1001),
    ("stable_audio", "cfg_scale", 25.0),
]


@pytest.fixture()
def folders(musicgen_converted, stable_audio_small_converted):
    return {"musicgen": musicgen_converted, "stable_audio": stable_audio_small_converted}


def cli(argv, capsys) -> tuple[int, str]:
    from mlx_audio_generate.cli import generate as generate_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def server_post(folder, body: dict, tmp_path):
    from fastapi.testclient import TestClient

    from mlx_audio_generate.server import create_app, discover_models

    app = create_app(discover_models({"m": folder}), tmp_path)
    with TestClient(app, base_url="http://127.0.0.1") as c:  # without `with` the worker never starts
        return c.post("/api/jobs", json={"model": "m", "prompt": "x", "seconds": 0.2, **body})


@pytest.mark.parametrize("family, name, value", RULES)
def test_bounds_agree(folders, tmp_path, capsys, family, name, value):
    folder = folders[family]
    flag = "--" + name.replace("_", "-")
    base = ["--model", family, "--weights-dir", folder, "--prompt", "x", "--seconds", "0.2"]
    code, err = cli([*base, flag, value, "--output", tmp_path / "o.wav"], capsys)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "x", name: value}) + "\n")
    code, err = cli(
        ["--weights-dir", folder, "--prompts-file", jobs, "--output-dir", tmp_path / "out"], capsys
    )
    assert code == 2 and f"jobs.jsonl:1: {name} must be" in err, err
    r = server_post(folder, {name: value}, tmp_path)
    assert r.status_code == 422 and name in r.json()["message"], r.text
    model = mlx_audio_generate.load(folder)
    with pytest.raises(UserError, match=name):
        model.generate("x", seconds=0.2, seed=0, **{name: value})
    assert not (tmp_path / "o.wav").exists() and not list((tmp_path / "out").glob("*.wav"))


@pytest.mark.parametrize("family", ["musicgen", "stable_audio"])
def test_seed_contract(folders, tmp_path, capsys, family):
    folder = folders[family]
    base = ["--model", family, "--weights-dir", folder, "--prompt", "x", "--seconds", "0.2"]
    code, err = cli([*base, "--seed", 2**32, "--output", tmp_path / "o.wav"], capsys)
    assert code == 2 and "--seed must be an integer in [0, 2^32)" in err, err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "x", "seed": 2**32}) + "\n")
    code, err = cli(
        ["--weights-dir", folder, "--prompts-file", jobs, "--output-dir", tmp_path / "out"], capsys
    )
    assert code == 2 and '"seed" must be an integer in [0, 2^32)' in err, err
    assert server_post(folder, {"seed": 2**32}, tmp_path).status_code == 422
    model = mlx_audio_generate.load(folder)
    for bad in (2**32, -1, [1, 2]):
        with pytest.raises(UserError, match="seed"):
            model.generate("x", seconds=0.2, seed=bad)
    # the last seed's variations wrap around instead of leaving the range
    code, err = cli([*base, "--seed", 2**32 - 1, "--n", 2, "--output", tmp_path / "v.wav", "--quiet"], capsys)
    assert code == 0, err
    recorded = [json.loads(sf.SoundFile(str(tmp_path / f"v_{i}.wav")).comment)["seed"] for i in (1, 2)]
    assert recorded == [2**32 - 1, 0]


def test_defaults_agree(musicgen_converted, tmp_path, capsys):
    from mlx_audio_generate import batch as B

    fam = registry.get("musicgen")
    schema = {
        st.name: st.default for st in fam.settings(None) if st.server and st.batch and st.kind != "file"
    }
    assert schema == {"temperature": 1.0, "top_k": 250, "top_p": 0.0, "guidance_coef": 3.0}
    # audio inputs: the server takes uploads (not a melody model: no melody input)
    assert [st.name for st in fam.settings(None) if st.server and st.kind == "file"] == [
        "melody",
        "audio_prompt",
    ]
    assert {k: v for k, v in B.family_defaults(fam, {}).items() if k != "seconds"} == schema
    from mlx_audio_generate.server import discover_models

    (entry,) = discover_models({"m": musicgen_converted}).values()
    params = entry.info()["params"]
    # extend_stride: long form, offered by the server (not by batch lines)
    assert {p["name"]: p["default"] for p in params if p["kind"] != "file"} == {
        **schema,
        "extend_stride": None,
    }
    assert [p["name"] for p in params if p["kind"] == "file"] == ["audio_prompt"]
    out = tmp_path / "d.wav"
    code, err = cli(
        ["--model", musicgen_converted, "--prompt", "x", "--seconds", "0.1", "--seed", 1, "--output", out],
        capsys,
    )
    assert code == 0, err
    settings = json.loads(sf.SoundFile(str(out)).comment)["settings"]
    assert {k: v for k, v in settings.items() if k in schema} == schema
    # and the Python API without settings equals the API given those defaults
    model = mlx_audio_generate.load(musicgen_converted)
    a = model.generate("x", seconds=0.1, seed=1)
    b = model.generate("x", seconds=0.1, seed=1, **schema)
    assert (a == b).all()


def test_text_settings_must_be_valid_unicode(stable_audio_small_converted, tmp_path):
    """A lone surrogate (JSON "\\ud800") in a text setting: refused by the server and the API alike."""
    from fastapi.testclient import TestClient

    from mlx_audio_generate.server import create_app, discover_models

    app = create_app(discover_models({"m": stable_audio_small_converted}), tmp_path)
    body = {"model": "m", "prompt": "x", "seconds": 0.2, "negative_prompt": "noise \ud800"}
    with TestClient(app, base_url="http://127.0.0.1") as c:  # json.dumps escapes it: valid JSON on the wire
        r = c.post("/api/jobs", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "negative_prompt" in r.json()["message"], r.text
    model = mlx_audio_generate.load(stable_audio_small_converted)
    with pytest.raises(UserError, match="not valid UTF-8"):
        model.generate("x", seconds=0.2, seed=0, steps=1, negative_prompt="noise \ud800")
