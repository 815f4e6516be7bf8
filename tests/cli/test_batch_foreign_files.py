"""Batch mode never replaces a file it did not write: a file at one of the job's names that is not a batch
job's own (sidecar or embedded request) is refused in one line before any model work, unless --overwrite /
-y; the job's own files (finished, or interrupted before their sidecar) are resumed as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_audio_generate import batch as B
from mlx_audio_generate.audio import write_audio
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.errors import UserError


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def job(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # a model that is not here fails after the file checks
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "rain", "seconds": 0.2}\n{"prompt": "wind", "id": "w", "seconds": 0.2}\n')
    out = tmp_path / "out"
    out.mkdir()
    return ["--model", "musicgen-small", "--prompts-file", jobs, "--output-dir", out, "--quiet"], out


def test_a_users_file_at_a_jobs_name_is_refused(job, capsys):
    args, out = job
    (out / "w.wav").write_bytes(b"my recording")
    code, _, err = run(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "w.wav" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "w.wav").read_bytes() == b"my recording"


@pytest.mark.parametrize("flag", ["--overwrite", "-y"])
def test_overwrite_lets_the_job_go_on(job, capsys, flag):
    args, out = job
    (out / "w.wav").write_bytes(b"my recording")
    code, _, err = run([*args, flag], capsys)
    # past the file check: the model is the next thing, and it is not in the (offline) cache
    assert code == 2 and "w.wav" not in err and "Hugging Face" in err, err


def test_the_jobs_own_files_are_not_foreign(tmp_path):
    clip = np.zeros((1, 800), np.float32)
    items = B.parse_items(
        [(1, {"prompt": "a"}), (2, {"prompt": "b"}), (3, {"prompt": "c"})],
        tmp_path / "jobs.jsonl",
        "musicgen",
        0,
        {},
    )
    names = [f"{item.name}.wav" for item in items]
    # finished (sidecar) / interrupted before its sidecar (request embedded only) / nothing yet
    write_audio(tmp_path / names[0], clip, 8000, metadata={"prompt": "a", "seed": 1})
    (tmp_path / f"{names[0]}.json").write_text(json.dumps({"prompt": "a", "seed": 1}))
    write_audio(tmp_path / names[1], clip, 8000, metadata={"prompt": "b", "seed": 2})
    B.check_not_foreign(items, tmp_path, "wav")  # nothing refused
    write_audio(tmp_path / names[2], clip, 8000)  # audio, but not ours: no request anywhere
    with pytest.raises(UserError, match=names[2]):
        B.check_not_foreign(items, tmp_path, "wav")
