"""Stable Audio 3 as a product family: conversion of the committed tiny checkpoints through
`mlx_audio_generate.convert.convert`, detection (and Stable Audio Open not claiming SA3 folders), strict
tensor accounting, load(), facts, settings, quantized / float16 folders, the Python API's contract
(length, channels, rate, determinism, per-row seeds) and its bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mlx_audio_generate as mag
from mlx_audio_generate import registry
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
SR = 44100
WINDOW = 8192 / SR  # the tiny configs' sample_size


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sa3-conv")
    return {n: convert(str(FIXTURES / n), root / n) for n in ("small", "medium")}


def copy_src(tmp_path: Path, name: str = "small") -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / name, src)
    return src


def test_detection_and_registry():
    fam = registry.detect(FIXTURES / "small")
    assert fam.name == "stable_audio_3" and registry.detect(FIXTURES / "medium") is fam
    assert not registry.get("stable_audio").detect(FIXTURES / "small")  # Stable Audio Open leaves it
    assert registry.for_model("stable-audio-3-medium-base") is fam
    assert fam.models["stable-audio-3-small-sfx"] == "stabilityai/stable-audio-3-small-sfx"
    assert len(fam.models) == 6
    assert fam.download_patterns("stabilityai/stable-audio-3-medium") == [
        "model_config.json", "model.safetensors", "t5gemma-b-b-ul2/*"
    ]  # fmt: skip


def test_converted_folder(folders):
    folder = folders["small"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["mlx_audio_generate"]["family"] == "stable_audio_3"
    assert config["t5gemma"]["model_type"] == "t5gemma"
    fam = registry.get("stable_audio_3")
    facts = fam.facts(config)
    assert (facts.sample_rate, facts.audio_channels) == (SR, 2) and facts.max_seconds == pytest.approx(WINDOW)
    by = {s.name: s for s in fam.settings(config)}
    assert (by["steps"].default, by["cfg_scale"].default, by["sampler"].default) == (8, 1.0, "pingpong")
    assert by["sampler"].choices == ("euler", "rk4", "dpmpp", "pingpong")
    keys = load_file(str(folder / "model.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"conditioner", "dit", "same"}


def test_base_defaults(tmp_path):
    src = copy_src(tmp_path)
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["model"]["diffusion"]["diffusion_objective"] = "rectified_flow"
    (src / "model_config.json").write_text(json.dumps(cfg))
    model = mag.load(str(convert(str(src), tmp_path / "out")))
    assert (model.defaults.steps, model.defaults.cfg_scale, model.defaults.sampler) == (50, 7.0, "euler")


def test_api_contract(folders):
    for name, folder in folders.items():
        model = mag.load(str(folder))
        assert (model.sample_rate, model.audio_channels) == (SR, 2)
        a = model.generate(["lofi house loop", "footsteps"], seconds=0.1, seed=[3, 4], steps=2)
        assert a.shape == (2, 2, round(0.1 * SR)) and a.dtype == np.float32, name
        assert np.array_equal(
            a, model.generate(["lofi house loop", "footsteps"], seconds=0.1, seed=[3, 4], steps=2)
        )
        alone = model.generate("footsteps", seconds=0.1, seed=4, steps=2)
        assert np.allclose(a[1], alone[0], atol=1e-5), name  # a row equals its prompt alone with its seed
        assert not np.allclose(a[0], model.generate("lofi house loop", seconds=0.1, seed=5, steps=2)[0])
        assert np.abs(a).max() <= 1.0


def test_quantized_and_float16(tmp_path):
    q = convert(str(FIXTURES / "small"), tmp_path / "q", quantize_bits=8, quantize_group_size=64)
    meta = json.loads((q / "config.json").read_text())["mlx_audio_generate"]
    assert meta["quantization"]["layers"] > 0
    a = mag.load(str(q)).generate("punchy kick drum", seconds=0.05, seed=1, steps=2)
    assert a.shape == (1, 2, round(0.05 * SR)) and np.isfinite(a).all()
    h = convert(str(FIXTURES / "medium"), tmp_path / "h", dtype="float16")
    a = mag.load(str(h)).generate("punchy kick drum", seconds=0.05, seed=1, steps=2, cfg_scale=3.0)
    assert a.dtype == np.float32 and np.isfinite(a).all()


def test_unknown_tensor_is_named(tmp_path):
    src = copy_src(tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.model.surprise"] = np.zeros(3, np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(UserError, match="model.model.surprise"):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_t5gemma_folder(tmp_path):
    src = copy_src(tmp_path)
    shutil.rmtree(src / "t5gemma-b-b-ul2")
    with pytest.raises(UserError, match="T5Gemma"):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seconds=1.0), "at most"),
        (dict(sampler="heun"), "sampler"),
        (dict(steps=0), "steps"),
        (dict(apg_scale=2.0), "apg_scale"),
        (dict(init_noise_level=0.5), "needs --init-audio"),
        (dict(init_audio=np.zeros((2, 100), np.float32), init_noise_level=1.5), "init_noise_level"),
        (dict(inpaint_audio=np.zeros((2, 100), np.float32)), "inpaint_regions"),
        (dict(inpaint_regions="0:0.05"), "inpaint_audio"),
        (dict(inpaint_audio=np.zeros((2, 100), np.float32), inpaint_regions="0.05:0.5"), "outside the clip"),
        (dict(inpaint_audio=np.zeros((2, 100), np.float32), inpaint_regions="a:b"), "not a number"),
        (dict(inpaint_audio=np.zeros((2, 100), np.float32), inpaint_regions="0.1"), "START:END"),
        (dict(seed=[1, 2]), "seeds"),
    ],
)
def test_bad_input(folders, kwargs, match):
    model = mag.load(str(folders["small"]))
    kwargs = {"seconds": 0.1, **kwargs}
    with pytest.raises(UserError, match=match):
        model.generate("lofi", **kwargs)
