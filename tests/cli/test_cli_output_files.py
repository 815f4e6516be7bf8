"""What `mlx-audio-generate` does with the files it names: an existing `--output` (or its sidecar, or one of a
multi-clip run's numbered files) is refused in one line before any model work unless `--overwrite` / `-y`;
the metadata names a model folder by its absolute path; with several prompts each "wrote" line says which
prompt the file holds."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from mlx_audio_generate.cli import generate as generate_cli


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(code, err, *words):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# refused before the model is even resolved: a name that would need a download shows no model work happens
BASE = ["--model", "musicgen-small", "--prompt", "rain", "--seconds", "0.2", "--seed", "1", "--quiet"]


def test_an_existing_output_is_refused(tmp_path, capsys):
    mine = tmp_path / "take.wav"
    mine.write_bytes(b"my own recording")
    code, _, err = run([*BASE, "--output", mine], capsys)
    one_line_error(code, err, "take.wav", "already exists", "--overwrite")
    assert mine.read_bytes() == b"my own recording"


def test_a_multi_clip_run_refuses_if_any_of_its_files_exists(tmp_path, capsys):
    (tmp_path / "clip_2.wav").write_bytes(b"mine")
    code, _, err = run([*BASE, "--prompt", "wind", "--output", tmp_path / "clip.wav"], capsys)
    one_line_error(code, err, "clip_2.wav", "already exists")
    assert not (tmp_path / "clip_1.wav").exists()  # nothing written at all


def test_an_existing_sidecar_is_refused(tmp_path, capsys):
    (tmp_path / "a.wav.json").write_text("{}")
    code, _, err = run([*BASE, "--output", tmp_path / "a.wav", "--metadata-json"], capsys)
    one_line_error(code, err, "a.wav.json", "already exists")
    assert (tmp_path / "a.wav.json").read_text() == "{}" and not (tmp_path / "a.wav").exists()


@pytest.mark.parametrize("flag", ["--overwrite", "-y"])
def test_overwrite_replaces_and_metadata_and_wrote_lines(
    flag, musicgen_converted, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(musicgen_converted.parent)
    typed = f"../{musicgen_converted.parent.name}/{musicgen_converted.name}"  # a relative path, as typed
    out = tmp_path / "clip.wav"
    (tmp_path / "clip_1.wav").write_bytes(b"mine")
    args = ["--model", typed, "--prompt", "rain on a tin roof", "--prompt", "wind", "--seconds", "0.2"]
    code, stdout, err = run([*args, "--seed", "3", "--output", out, "--metadata-json", flag], capsys)
    assert code == 0, err
    info = sf.info(str(tmp_path / "clip_1.wav"))
    assert info.frames == 6400  # replaced by the clip

    lines = stdout.strip().splitlines()
    assert lines[0].startswith("wrote ") and "clip_1.wav (prompt 1 'rain on a tin roof', 0.20 s" in lines[0]
    assert "clip_2.wav (prompt 2 'wind', 0.20 s" in lines[1], lines

    meta = json.loads((tmp_path / "clip_2.wav.json").read_text())
    assert meta["model"] == str(musicgen_converted.resolve()) and meta["prompt"] == "wind"


def test_a_single_prompt_wrote_line_is_unchanged(musicgen_converted, tmp_path, capsys):
    args = ["--model", musicgen_converted, "--prompt", "rain", "--seconds", "0.2", "--seed", "1"]
    code, stdout, err = run([*args, "--output", tmp_path / "one.wav"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"wrote {tmp_path / 'one.wav'} (0.20 s, 1 ch, 32000 Hz, seed 1)"), stdout
