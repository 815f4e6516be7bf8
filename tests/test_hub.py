"""Checkpoint sources: repo ids through a populated Hugging Face cache (offline), whitelist, bad sources."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from mlx_audio_generate import registry
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.hub import detect_family, fetch
from mlx_audio_generate.weights import load_safetensors


def populate_hf_cache(cache, repo_id: str, src) -> None:
    """Lay out `src` as huggingface_hub's cache does after a download of `repo_id` (refs/main -> snapshot)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(src, root / "snapshots" / revision)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, musicgen_dir):
    cache = tmp_path / "hf"
    populate_hf_cache(cache, "facebook/musicgen-small", musicgen_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def test_repo_id_converts_from_offline_cache(offline_cache, musicgen_converted, tmp_path):
    out = convert("facebook/musicgen-small", tmp_path / "out")
    a = load_safetensors(out / "model.safetensors")
    b = load_safetensors(musicgen_converted / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]))


def test_uncached_repo_offline_is_a_clear_error(offline_cache, tmp_path):
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        fetch("facebook/musicgen-medium")


def test_unknown_repo_needs_trust_remote_code(offline_cache):
    with pytest.raises(UserError, match="--trust-remote-code"):
        fetch("someone/musicgen-finetune")
    # with trust it is attempted (and here fails only because it is not cached offline)
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        fetch("someone/musicgen-finetune", trust_remote_code=True)


def test_bad_sources(tmp_path):
    with pytest.raises(UserError, match="neither an existing folder"):
        fetch(str(tmp_path / "missing" / "folder"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="bert"):
        detect_family(tmp_path / "other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        detect_family(tmp_path / "broken")
    with pytest.raises(UserError, match=f"not a {re.escape(registry.labels())} checkpoint"):
        detect_family(tmp_path)
