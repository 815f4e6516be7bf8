"""The public `mlx_audio_generate.save` (format by extension, batches, metadata, normalisation, no silent
overwrite) and `--normalize` saying on stderr what loudness it reached, and why when short of the target."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

import mlx_audio_generate as mag
from mlx_audio_generate.audio import _available_formats, loudness_normalize, loudness_report
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.errors import UserError

SR = 32000


def tone(channels: int = 2, seconds: float = 1.0, amp: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([amp * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(
        np.float32
    )


def test_save_one_clip_every_format(tmp_path):
    clip = tone()
    for ext in _available_formats():
        out = mag.save(clip, tmp_path / f"a{ext}", SR, metadata={"prompt": "a tone"})
        assert out == tmp_path / f"a{ext}"
        data, sr = sf.read(out, dtype="float32", always_2d=True)
        assert sr == SR and data.shape == (SR, 2), ext
        if ext in (".wav", ".flac"):  # float WAV is exact; 24-bit FLAC within its step
            np.testing.assert_allclose(data.T, clip, atol=0 if ext == ".wav" else 2**-22)
        if ext != ".mp3":  # libsndfile writes no tags into MP3
            with sf.SoundFile(str(out)) as f:
                assert f.title == "a tone" and json.loads(f.comment) == {"prompt": "a tone"}, ext
    assert "save" in mag.__all__


def test_save_a_batch_and_mlx_arrays(tmp_path):
    batch = np.stack([tone(), tone(amp=0.2)])
    paths = mag.save(mx.array(batch), tmp_path / "clip.wav", SR)
    assert paths == [tmp_path / "clip_1.wav", tmp_path / "clip_2.wav"]
    for p, clip in zip(paths, batch, strict=True):
        np.testing.assert_array_equal(sf.read(p, dtype="float32", always_2d=True)[0].T, clip)
    assert mag.save(batch[:1], tmp_path / "one.wav", SR) == [tmp_path / "one.wav"]
    mono = mag.save(tone(1)[0], tmp_path / "mono.wav", SR)  # (samples,)
    assert sf.info(str(mono)).channels == 1


def test_save_normalises_and_records_the_result(tmp_path):
    out = mag.save(tone(amp=0.01), tmp_path / "n.wav", SR, normalize=-14, sidecar=True, metadata={"seed": 1})
    data = sf.read(out, dtype="float64", always_2d=True)[0]
    assert pyloudnorm.Meter(SR).integrated_loudness(data) == pytest.approx(-14.0, abs=0.05)
    meta = json.loads((tmp_path / "n.wav.json").read_text())
    assert meta["seed"] == 1 and meta["loudness"]["output_lufs"] == pytest.approx(-14.0, abs=0.05)


def test_save_refuses_bad_input_and_existing_files(tmp_path):
    mag.save(tone(), tmp_path / "x.wav", SR)
    before = (tmp_path / "x.wav").read_bytes()
    with pytest.raises(UserError, match="exists; pass overwrite=True"):
        mag.save(tone(amp=0.3), tmp_path / "x.wav", SR)
    assert (tmp_path / "x.wav").read_bytes() == before
    mag.save(tone(amp=0.3), tmp_path / "x.wav", SR, overwrite=True)
    assert (tmp_path / "x.wav").read_bytes() != before
    # a batch whose second file exists: nothing is written
    (tmp_path / "b_2.wav").write_bytes(b"mine")
    with pytest.raises(UserError, match="b_2.wav"):
        mag.save(np.stack([tone(), tone()]), tmp_path / "b.wav", SR)
    assert not (tmp_path / "b_1.wav").exists() and (tmp_path / "b_2.wav").read_bytes() == b"mine"
    bad = [
        (dict(audio=tone().T), "transpose"),
        (dict(audio=tone() * np.nan), "NaN"),
        (dict(audio=np.zeros((1, 1, 1, 4))), "batch, channels, samples"),
        (dict(path=tmp_path / "x.xyz"), "unsupported extension"),
        (dict(sample_rate=0), "sample_rate"),
        (dict(normalize=3.0), "LUFS"),
    ]
    for over, match in bad:
        kw = {"audio": tone(), "path": tmp_path / "y.wav", "sample_rate": SR, **over}
        with pytest.raises(UserError, match=match):
            mag.save(kw.pop("audio"), kw.pop("path"), kw.pop("sample_rate"), **kw)
    assert not (tmp_path / "y.wav").exists()


def test_loudness_report_says_why_it_falls_short():
    spiky = np.zeros((1, 2 * SR), np.float32)
    spiky[0, ::4000] = 0.9
    spiky += tone(1, 2.0, amp=0.001)
    _, info = loudness_normalize(spiky, SR, target_lufs=-14.0)
    line = loudness_report(info)
    assert info["peak_limited"] and f"{info['output_lufs']:g} LUFS, not -14" in line
    assert "-1 dBTP ceiling" in line
    _, info = loudness_normalize(tone(amp=0.01), SR, target_lufs=-14.0)
    assert not info["peak_limited"] and "ceiling" not in loudness_report(info)
    assert "silent" in loudness_report(loudness_normalize(np.zeros((1, SR), np.float32), SR)[1])


def test_cli_normalize_prints_the_achieved_loudness(musicgen_converted, tmp_path, capsys):
    out = tmp_path / "n.wav"
    args = ["--model", "musicgen", "--weights-dir", str(musicgen_converted), "--prompt", "x", "--seconds",
            "0.5", "--seed", "0", "--normalize", "--output", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 0, err
    line = next(ln for ln in err.splitlines() if "loudness:" in ln)
    assert line.startswith(f"{out}: loudness: ") and "LUFS" in line, line
    with pytest.raises(SystemExit):
        generate_cli.main([*args[:-1], str(tmp_path / "q.wav"), "--quiet"])
    assert capsys.readouterr().err == ""
