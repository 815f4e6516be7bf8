"""The family seam: a third family added in the test tree alone (tests/seam/dummy_family.py, registered at run
time) is served by load(), mlx-audio-convert, mlx-audio-generate, batch files and the server; and outside the
family packages and the registry no module names a family."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate
from mlx_audio_generate import registry
from tests.seam import dummy_family as D

PACKAGE = Path(mlx_audio_generate.__file__).parent


@pytest.fixture()
def tone(tmp_path, monkeypatch):
    """(reference folder, converted folder) of the dummy family, registered for this test only."""
    registry.register(D.FAMILY)
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    src = D.save_reference(tmp_path / "tone-src")
    from mlx_audio_generate.cli.convert import main as convert_main

    with pytest.raises(SystemExit) as e:
        convert_main(["--model", str(src), "--output", str(tmp_path / "tone"), "--quiet"])
    assert e.value.code == 0
    yield src, tmp_path / "tone"
    registry.unregister(D.FAMILY.name)


def expected(seconds: float, seed: int, pitch: float = 440.0, sr: int = 8000) -> np.ndarray:
    return D.tone(0.5, pitch, np.arange(round(seconds * sr)) / sr, seed).astype(np.float32)


def test_load_and_convert(tone):
    src, out = tone
    meta = json.loads((out / "config.json").read_text())["mlx_audio_generate"]
    assert meta["family"] == "tone" and meta["source"] == str(src)
    model = mlx_audio_generate.load(out)
    np.testing.assert_allclose(
        model.generate("hum", seconds=0.25, seed=3)[0, 0], expected(0.25, 3), atol=1e-6
    )
    # a reference folder converts once through the cache, like any family's
    again = mlx_audio_generate.load(str(src))
    np.testing.assert_array_equal(again.generate("hum", seconds=0.1, seed=1), model.generate("hum", 0.1, 1))


def test_cli(tone, tmp_path, capsys):
    from mlx_audio_generate.cli import generate as generate_cli

    _, out = tone
    wav = tmp_path / "t.wav"
    args = ["--model", "tone", "--weights-dir", str(out), "--prompt", "hum", "--seconds", "0.5", "--quiet"]
    with pytest.raises(SystemExit) as e:
        generate_cli.main([*args, "--pitch", "220", "--seed", "4", "--output", str(wav)])
    assert e.value.code == 0
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == 8000
    np.testing.assert_allclose(audio, expected(0.5, 4, 220.0), atol=1e-6)
    assert "--pitch" in generate_cli.setup_arg_parser().format_help()  # the flag comes from its schema
    for extra, word in ((["--pitch", "5"], "--pitch"), (["--top-k", "5"], "--top-k")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            generate_cli.main([*args, *extra, "--output", str(tmp_path / "bad.wav")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and word in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad.wav").exists()


def test_batch_file(tone, tmp_path, capsys):
    from mlx_audio_generate.cli import batch as batch_cli

    _, out = tone
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a", "pitch": 300, "seed": 1}\n{"prompt": "b", "seconds": 0.2, "seed": 2}\n')
    argv = ["--weights-dir", str(out), "--prompts-file", str(jobs), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        batch_cli.main([*argv, "--seconds", "0.3", "--quiet"])
    assert e.value.code == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert [r["settings"] for r in rows] == [
        {"seconds": 0.3, "pitch": 300.0},
        {"seconds": 0.2, "pitch": 440.0},
    ]
    audio, _ = sf.read(tmp_path / "o" / "00000.wav", dtype="float32")
    np.testing.assert_allclose(audio, expected(0.3, 1, 300.0), atol=1e-6)
    jobs.write_text('{"prompt": "a", "pitch": "high"}\n')
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        batch_cli.main([*argv[:-1], str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "jobs.jsonl:1: pitch must be a number in [20, 4000]" in err, err


def test_server(tone, tmp_path):
    from fastapi.testclient import TestClient

    from mlx_audio_generate.server import create_app, discover_models

    _, out = tone
    (tmp_path / "clips").mkdir()
    app = create_app(discover_models({"hum": out}), tmp_path / "clips")
    with TestClient(app, base_url="http://127.0.0.1") as c:
        (info,) = c.get("/api/models").json()
        assert (info["family"], info["family_label"], info["sample_rate"]) == ("tone", "Tone", 8000)
        assert [(p["name"], p["default"], p["maximum"]) for p in info["params"]] == [("pitch", 440.0, 4000.0)]
        r = c.post("/api/jobs", json={"model": "hum", "prompt": "x", "seconds": 0.25, "pitch": 5000.0})
        assert r.status_code == 422 and "pitch" in r.json()["message"]
        r = c.post("/api/jobs", json={"model": "hum", "prompt": "x", "seconds": 0.25, "top_k": 5})
        assert r.status_code == 422 and "top_k" in r.json()["message"]
        job = c.post(
            "/api/jobs", json={"model": "hum", "prompt": "x", "seconds": 0.25, "seed": 9, "pitch": 220.0}
        )
        assert job.status_code == 202, job.text
        for _ in range(200):
            view = c.get(job.json()["url"]).json()
            if view["status"] in ("done", "failed"):
                break
        assert view["status"] == "done", view["error"]
        audio, _ = sf.read(tmp_path / "clips" / f"{view['id']}.wav", dtype="float32")
        np.testing.assert_allclose(audio, expected(0.25, 9, 220.0), atol=1e-6)


# -------------------------------------------------------------------------- no family named outside

FAMILY_WORDS = re.compile(r"musicgen|stable[_ ]?audio(?![-_ ]tools)|stable-audio-(open|3)", re.IGNORECASE)


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Identifiers, imported module names and non-docstring string constants of a module (comments and
    docstrings may cite where an algorithm comes from; code and messages may not name a family)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom):
            words.append((node.lineno, node.module or ""))
            words.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            words.extend((node.lineno, a.name) for a in node.names)
    return words


def test_no_module_outside_the_families_names_one():
    family_dirs = {PACKAGE / name.rsplit(".", 1)[1] for name in registry.FAMILY_PACKAGES}
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        if path == PACKAGE / "registry.py" or any(d in path.parents for d in family_dirs):
            continue
        if path.suffix == ".py":
            found += [
                f"{path.relative_to(PACKAGE)}:{n}: {w!r}"
                for n, w in _code_words(path)
                if FAMILY_WORDS.search(w)
            ]
        elif path.suffix in (".js", ".html", ".css"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if FAMILY_WORDS.search(line):
                    found.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_check_finds_a_family_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Docstrings may cite MusicGen."""\nfrom .musicgen import x\nname = "stable_audio"\n')
    assert [w for _, w in _code_words(probe) if FAMILY_WORDS.search(w)] == ["musicgen", "stable_audio"]


def test_every_family_offers_example_prompts():
    """The web UI's presets come from each family's declaration (Family.examples), none hand-written there."""
    for fam in registry.families().values():
        assert len(fam.examples) >= 3 and all(e.strip() for e in fam.examples), fam.name
