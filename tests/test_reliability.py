"""Reliability: killed conversions, disk full, converter errors, bad arguments and hostile files.

Each test states one guarantee of docs/reliability.md: a cache entry exists only once complete, partial
folders of killed conversions are removed by the next run, writes that fail leave nothing behind, bad
arguments and bad files give one-line `UserError`s, and pickle checkpoints never execute code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate
from mlx_audio_generate import resolve as resolver
from mlx_audio_generate.convert import convert
from mlx_audio_generate.converted import is_converted
from mlx_audio_generate.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# Converts into the cache named by $MLX_AUDIO_GENERATE_CACHE, but stops right after model.safetensors is
# written (touching the marker file) so that the test can SIGKILL it at a known point mid-conversion.
SLOW_CONVERT = textwrap.dedent(
    """
    import sys, time
    import mlx_audio_generate.converted as mc
    save = mc.save_safetensors
    def slow(*args, **kwargs):
        save(*args, **kwargs)
        open(sys.argv[2], "w").close()
        time.sleep(120)
    mc.save_safetensors = slow
    from mlx_audio_generate.resolve import resolve
    resolve(sys.argv[1], quiet=True)
    """
)


def tree(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_dir())


def one_line_error(fn, *words: str) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture()
def model(musicgen_converted):
    return mlx_audio_generate.load(musicgen_converted)


@pytest.fixture(scope="module")
def sa_model(stable_audio_small_converted):
    return mlx_audio_generate.load(stable_audio_small_converted)


# ------------------------------------------------------------------------------ killed conversion (SIGKILL)


def test_killed_conversion_leaves_cache_usable(musicgen_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    marker = tmp_path / "weights-written"
    env = {**os.environ, "MLX_AUDIO_GENERATE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERT, str(musicgen_dir), str(marker)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "conversion did not reach model.safetensors in 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(cache))
    target = resolver.cache_dir(str(musicgen_dir), None)
    # the killed run left a partial folder (weights, no config) that nothing takes for a converted model;
    # it is staged at the top of the cache, so the entry's own folder does not exist yet
    partial = [p for p in cache.iterdir() if p.name.startswith(".")]
    assert partial and any((p / "model.safetensors").is_file() for p in partial), partial
    assert not target.parent.exists()
    assert not any(is_converted(p) for p in tree(cache))

    # a fresh resolve converts, removes the dead process's partial folder, and the result loads and runs
    out = resolver.resolve(str(musicgen_dir), quiet=True)
    assert out == target and is_converted(out)
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert [p.name for p in cache.iterdir()] == [target.parent.name]  # the dead run's partial is gone
    assert [p for p in tree(cache) if is_converted(p)] == [target]
    audio = mlx_audio_generate.load(str(musicgen_dir)).generate("piano", seconds=0.2, seed=0)[0]
    assert np.isfinite(np.asarray(audio)).all() and np.asarray(audio).shape[-1] == 6400


def test_live_conversions_partials_are_kept(tmp_path):
    """Only partial folders of dead processes are removed: a running conversion's folders stay."""
    from mlx_audio_generate.convert import remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = [f".original.{os.getpid()}", f"..original.{os.getpid()}.{os.getpid()}.abcd_123"]
    stale = [f".original.{dead.pid}", f"..original.{dead.pid}.{dead.pid}.x1y2z3w4"]
    other = ["original", ".other.1", f".original.{dead.pid}.not-a-temp"]
    for name in live + stale + other:
        (tmp_path / name).mkdir()
    remove_stale_partials(tmp_path, "original")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(live + other)


# --------------------------------------------------------------------------- failed writes leave nothing


def test_converter_error_leaves_no_partial_output(musicgen_dir, tmp_path, monkeypatch):
    import mlx_audio_generate.converted as mc

    def broken(*args, **kwargs):
        raise UserError("tokenizer copy failed")

    # fails after model.safetensors and config.json are written into the temp folder
    monkeypatch.setattr(mc.shutil, "copyfile", broken)
    out = tmp_path / "out" / "musicgen"
    one_line_error(lambda: convert(str(musicgen_dir), out), "tokenizer copy failed")
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_while_writing_weights(musicgen_dir, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", full)
    out = tmp_path / "out" / "musicgen"
    one_line_error(lambda: convert(str(musicgen_dir), out), "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []

    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    one_line_error(lambda: resolver.resolve(str(musicgen_dir), quiet=True), "No space left on device")
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


# ------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"seconds": float("nan")}, ["seconds", "nan"]),
        ({"seconds": float("inf")}, ["seconds", "inf"]),
        ({"seconds": -1.0}, ["seconds", "-1"]),
        ({"seconds": 0.0}, ["seconds"]),
        ({"temperature": -0.5}, ["temperature"]),
        ({"top_k": -1}, ["top_k"]),
        ({"top_p": 1.5}, ["top_p"]),
        ({"top_p": -0.1}, ["top_p"]),
        ({"window_seconds": float("nan")}, ["window"]),
    ],
)
def test_python_api_rejects_bad_arguments(model, kwargs, words):
    kwargs = {"seconds": 0.2, **kwargs}
    one_line_error(lambda: model.generate("piano", seed=0, **kwargs), *words)


def test_python_api_rejects_over_limit_stream(model):
    one_line_error(lambda: list(model.stream("piano", seconds=model.max_seconds + 1)), "window")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"steps": 0}, ["steps"]),
        ({"steps": -3}, ["steps"]),
        ({"cfg_scale": -1.0}, ["cfg_scale"]),
        ({"cfg_scale": float("nan")}, ["cfg_scale"]),
        ({"seconds": 1e6}, ["seconds", "at most"]),
        ({"seconds": float("nan")}, ["seconds"]),
        ({"seconds": -0.5}, ["seconds"]),
        ({"seed": -1}, ["seed"]),
    ],
)
def test_stable_audio_api_rejects_bad_arguments(sa_model, kwargs, words):
    kwargs = {"seconds": 0.5, "steps": 2, "seed": 0, **kwargs}
    one_line_error(lambda: sa_model.generate("drums", **kwargs), *words)


@pytest.mark.parametrize("kwargs", [{"temperature": float("nan")}, {"guidance_coef": float("nan")}])
def test_python_api_rejects_nan_sampling(model, kwargs):
    with pytest.raises(UserError):
        model.generate("piano", seconds=0.2, seed=0, **kwargs)


def test_output_path_that_is_a_directory(model, tmp_path):
    from mlx_audio_generate.audio import write_audio

    (tmp_path / "song.wav").mkdir()
    audio = np.zeros((1, 320), np.float32)
    one_line_error(lambda: write_audio(tmp_path / "song.wav", audio, model.sample_rate), "song.wav")
    assert (tmp_path / "song.wav").is_dir() and not list((tmp_path / "song.wav").iterdir())


# ----------------------------------------------------------------------------------------- bad folders


def test_wrong_family_weights_dir(musicgen_converted, tmp_path):
    from mlx_audio_generate.stable_audio.generate import StableAudio

    one_line_error(lambda: StableAudio.from_pretrained(musicgen_converted), "musicgen", "stable_audio")


def test_wrong_tensor_shape_in_converted_folder(musicgen_converted, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(musicgen_converted, folder)
    weights = dict(mx.load(str(folder / "model.safetensors")))
    name = next(k for k, v in sorted(weights.items()) if v.ndim == 2)
    weights[name] = mx.zeros((weights[name].shape[0] + 1, weights[name].shape[1]), weights[name].dtype)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    one_line_error(lambda: mlx_audio_generate.load(folder), "model.safetensors", name, "shape")


def test_malicious_pickle_is_refused(musicgen_dir, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil"
    src.mkdir()
    for f in musicgen_dir.iterdir():
        if not f.name.startswith("model") and f.is_file():
            shutil.copyfile(f, src / f.name)
    with open(src / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"decoder.weight": Evil()}, fh, protocol=2)
    assert json.loads((src / "config.json").read_text())["model_type"].startswith("musicgen")

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "musicgen"
    one_line_error(lambda: convert(str(src), out), "weights_only=True")
    assert not marker.exists()
    assert list((tmp_path / "out").iterdir()) == []
