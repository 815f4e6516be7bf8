"""From a model name to files in one command: auto-download through the HF cache (offline), conversion
cache reuse, several prompts and variations batched, formats, loudness, metadata, --quiet."""

from __future__ import annotations

import json
import os

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.resolve import cache_dir
from tests.test_hub import populate_hf_cache


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, musicgen_dir):
    """facebook/musicgen-small 'downloaded' into a private HF cache; downloads off; our cache private too."""
    cache = tmp_path / "hf"
    populate_hf_cache(cache, "facebook/musicgen-small", musicgen_dir)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "ours"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_short_name_downloads_converts_once_and_reuses(offline_hub, capsys):
    args = ["--model", "musicgen-small", "--prompt", "lofi piano", "--seconds", "0.5", "--seed", "1"]
    code, out, err = run([*args, "--output", "a.wav"], capsys)
    assert code == 0, err
    assert "converting facebook/musicgen-small" in err
    target = cache_dir("facebook/musicgen-small", None)
    assert (target / "model.safetensors").is_file()
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    code, out, err = run([*args, "--output", "b.wav"], capsys)
    assert code == 0 and "converting" not in err  # reused, not converted again
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert (offline_hub / "a.wav").read_bytes() == (offline_hub / "b.wav").read_bytes()
    # --quiet prints nothing at all
    code, out, err = run([*args, "--output", "c.wav", "--quiet"], capsys)
    assert code == 0 and out == "" and err == ""


def test_unknown_name_and_family_without_weights(offline_hub, capsys):
    code, _, err = run(["--model", "musicgen-tiny", "--prompt", "x"], capsys)
    assert code == 2 and "unknown model 'musicgen-tiny'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["--model", "musicgen", "--prompt", "x"], capsys)
    assert code == 2 and "--weights-dir" in err


def test_prompts_and_variations_are_batched_with_distinct_recorded_seeds(
    musicgen_converted, tmp_path, capsys
):
    from mlx_audio_generate.musicgen.generate import MusicGen

    calls = []
    orig = MusicGen.generate

    def spy(self, prompt, **kw):
        calls.append((list(prompt), list(kw["seed"])))
        return orig(self, prompt, **kw)

    MusicGen.generate = spy
    try:
        args = ["--model", str(musicgen_converted), "--prompt", "lofi piano", "--prompt", "dark techno"]
        code, out, err = run(
            [*args, "--n", "2", "--seconds", "0.4", "--seed", "10", "--output", str(tmp_path / "v.flac")],
            capsys,
        )
    finally:
        MusicGen.generate = orig
    assert code == 0, err
    # one device batch of 4 rows (default --batch-size 4), not four batch-1 calls
    assert calls == [(["lofi piano", "lofi piano", "dark techno", "dark techno"], [10, 11, 12, 13])]
    files = [tmp_path / f"v_{i}.flac" for i in range(1, 5)]
    seeds = []
    for f in files:
        with sf.SoundFile(f) as h:
            meta = json.loads(h.comment)
            assert h.samplerate == 32000 and h.frames == round(0.4 * 32000)
        seeds.append(meta["seed"])
        assert meta["settings"]["top_k"] == 250 and meta["family"] == "musicgen"
    assert seeds == [10, 11, 12, 13]
    # a variation is reproducible alone from its recorded seed
    model = MusicGen.from_pretrained(musicgen_converted)
    alone = model.generate("dark techno", seconds=0.4, seed=13)[0]
    batch = sf.read(files[3], dtype="float32", always_2d=True)[0].T
    np.testing.assert_allclose(batch, np.clip(alone, -1, 1), atol=2e-6)  # FLAC is 24-bit


def test_normalize_and_sidecar(musicgen_converted, tmp_path, capsys):
    out = tmp_path / "n.wav"
    args = ["--model", str(musicgen_converted), "--prompt", "lofi", "--seconds", "1.0", "--seed", "2"]
    code, _, err = run([*args, "--normalize", "-20", "--metadata-json", "--output", str(out)], capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float64", always_2d=True)
    assert abs(pyloudnorm.Meter(sr).integrated_loudness(audio) + 20) < 0.1
    meta = json.loads((tmp_path / "n.wav.json").read_text())
    assert meta["loudness"]["target_lufs"] == -20 and meta["prompt"] == "lofi"
    code, _, err = run([*args, "--normalize", "5", "--output", str(tmp_path / "m.wav")], capsys)
    assert code == 2 and "--normalize" in err


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg", ".mp3"])
def test_formats_from_extension(musicgen_converted, tmp_path, capsys, ext):
    out = tmp_path / f"f{ext}"
    args = ["--model", str(musicgen_converted), "--prompt", "lofi", "--seconds", "0.5", "--quiet"]
    code, _, err = run([*args, "--output", str(out)], capsys)
    assert code == 0, err
    info = sf.info(str(out))
    assert info.samplerate == 32000 and abs(info.duration - 0.5) < 0.06  # lossy codecs pad a little
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_prompts_file_routes_to_the_batch_job(musicgen_converted, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "lofi piano", "seconds": 0.3}\n{"prompt": "rock", "id": "riff", "seed": 4}\n')
    out = tmp_path / "out"
    args = ["--model", "musicgen", "--weights-dir", str(musicgen_converted), "--prompts-file", str(jobs)]
    code, _, err = run([*args, "--output-dir", str(out), "--seconds", "0.3", "--quiet"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == ["00000.wav", "riff.wav"] and rows[1]["seed"] == 4
    jobs.write_text('{"prompt": "x", "bogus": 1}\n')
    code, _, err = run([*args, "--output-dir", str(tmp_path / "o2")], capsys)
    assert code == 2 and "jobs.jsonl:1" in err and len(err.strip().splitlines()) == 1
