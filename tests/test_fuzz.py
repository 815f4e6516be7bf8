"""Fuzzing the readers of untrusted files: random byte corruptions give the clean error, never a crash.

Hypothesis drives corruptions (byte flips, truncations, insertions) of real files: a converted
model.safetensors, its config.json, a reference checkpoint folder, and audio files. Every outcome must be
either success or `UserError`; anything else (another exception, a crash, a hang past the deadline) fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_audio_generate.api import load
from mlx_audio_generate.audio import read_audio, write_audio
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import load_safetensors

FUZZ = settings(
    max_examples=60,
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@st.composite
def corruption(draw, size: int, head: int = 4096):
    """(edits, truncate_at): a few byte edits, mostly in the header where parsers live, maybe a cut."""
    n = draw(st.integers(1, 8))
    edits = [
        (
            draw(st.integers(0, min(size, head) - 1 if draw(st.booleans()) else size - 1)),
            draw(st.integers(0, 255)),
        )
        for _ in range(n)
    ]
    cut = draw(st.one_of(st.none(), st.integers(0, size)))
    return edits, cut


def corrupt(data: bytes, edits, cut) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos] = val
    return bytes(b[:cut] if cut is not None else b)


def only_user_errors(fn) -> None:
    try:
        fn()
    except UserError as e:
        assert str(e) and "\n" not in str(e)


@pytest.fixture(scope="module")
def safetensors_bytes(musicgen_converted) -> bytes:
    return (musicgen_converted / "model.safetensors").read_bytes()


@given(data=st.data())
@FUZZ
def test_safetensors_reader(safetensors_bytes, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    edits, cut = data.draw(corruption(len(safetensors_bytes)))
    path.write_bytes(corrupt(safetensors_bytes, edits, cut))

    def read():
        mx.eval(list(load_safetensors(path).values()))

    only_user_errors(read)


@given(data=st.data())
@FUZZ
def test_converted_folder_loader(musicgen_converted, tmp_path_factory, data):
    """A corrupted config.json or model.safetensors in a converted folder: load() or a clean error."""
    folder = tmp_path_factory.mktemp("conv") / "m"
    shutil.copytree(musicgen_converted, folder)
    name = data.draw(st.sampled_from(["config.json", "model.safetensors", "tokenizer.json"]))
    raw = (folder / name).read_bytes()
    edits, cut = data.draw(corruption(len(raw)))
    (folder / name).write_bytes(corrupt(raw, edits, cut))
    only_user_errors(lambda: load(folder))


@given(data=st.data())
@settings(parent=FUZZ, max_examples=25)
def test_reference_checkpoint_converter(musicgen_dir, tmp_path_factory, data):
    """Corrupted reference checkpoints (config.json or weights) convert or fail cleanly, writing nothing."""
    root = tmp_path_factory.mktemp("ref")
    src = root / "src"
    shutil.copytree(musicgen_dir, src)
    name = data.draw(st.sampled_from(["config.json", "model.safetensors"]))
    raw = (src / name).read_bytes()
    edits, cut = data.draw(corruption(len(raw)))
    (src / name).write_bytes(corrupt(raw, edits, cut))
    only_user_errors(lambda: convert(str(src), root / "out"))
    out = root / "out"
    assert not out.exists() or (out / "model.safetensors").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folder left behind


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("audio")
    x = (0.1 * np.sin(np.arange(8000) / 7.0)).astype(np.float32)[None]
    return {ext: write_audio(d / f"a{ext}", x, 16000).read_bytes() for ext in (".wav", ".flac", ".ogg")}


@given(data=st.data())
@FUZZ
def test_audio_reader(audio_files, tmp_path_factory, data):
    ext = data.draw(st.sampled_from(sorted(audio_files)))
    raw = audio_files[ext]
    edits, cut = data.draw(corruption(len(raw), head=256))
    path = Path(tmp_path_factory.mktemp("au")) / f"x{ext}"
    path.write_bytes(corrupt(raw, edits, cut))
    only_user_errors(lambda: read_audio(path, sample_rate=32000, channels=1))
