"""ACE-Step 1.5 conversion (mlx_audio_generate.ace_step.convert / family): the released layouts (the main repo
folder with acestep-v15-turbo/ + vae/ + Qwen3-Embedding-0.6B/, a DiT folder with them one level up, the
`components` setting), detection, download patterns, facts and settings, strict weights, the silence latent
read only with torch.load(weights_only=True), dtype / quantization, and bad folders (one-line UserError,
nothing written)."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_audio_generate as mag
from mlx_audio_generate import registry
from mlx_audio_generate.ace_step import family as F
from mlx_audio_generate.ace_step.convert import read_silence
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import load_safetensors
from tests.reference import require

torch = require("torch")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"


def repo(tmp_path: Path, variant: str = "turbo", parts=("vae", "Qwen3-Embedding-0.6B")) -> Path:
    """A repo-shaped folder: the DiT as acestep-v15-<variant>/ beside the VAE and text encoder."""
    root = tmp_path / "repo"
    shutil.copytree(FIXTURES / f"acestep-v15-{variant}", root / f"acestep-v15-{variant}")
    for p in parts:
        shutil.copytree(FIXTURES / p, root / p)
    return root


def test_main_repo_layout(tmp_path):
    root = repo(tmp_path)
    assert registry.detect(root).name == "ace_step"
    assert registry.detect(root / "acestep-v15-turbo").name == "ace_step"
    out = convert(str(root), tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlx_audio_generate"]["family"] == "ace_step"
    assert set(cfg) >= {"dit", "text_encoder", "vae", "silence_frames"}
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json"}  # fmt: skip
    w = load_safetensors(out / "model.safetensors")
    ref_silence = torch.load(root / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    np.testing.assert_array_equal(np.array(w["silence_latent"]), ref_silence.transpose(1, 2).numpy())
    prefixes = {k.split(".")[0] for k in w}
    assert prefixes == {"dit", "conditioning", "text_encoder", "vae", "silence_latent"}
    model = mag.load(str(out))
    assert (model.sample_rate, model.audio_channels, model.max_seconds) == (48000, 2, 600.0)


def test_dit_folder_with_components_one_level_up(tmp_path):
    """The checkpoints/ layout: a DiT folder, vae/ and the text encoder beside it; same weights either way."""
    root = repo(tmp_path, "base")
    a = load_safetensors(convert(str(root / "acestep-v15-base"), tmp_path / "a") / "model.safetensors")
    b = load_safetensors(convert(str(root), tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]) for k in a)


def test_components_setting(tmp_path):
    """A lone DiT folder takes its VAE / text encoder from --components (a folder holding both)."""
    lone = tmp_path / "lone" / "acestep-v15-turbo"
    shutil.copytree(FIXTURES / "acestep-v15-turbo", lone)
    with pytest.raises(UserError, match=r"vae/ and Qwen3-Embedding-0.6B/.*--components"):
        convert(str(lone), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    out = convert(str(lone), tmp_path / "y", components=str(FIXTURES))
    assert json.loads((out / "config.json").read_text())["mlx_audio_generate"]["components_source"] == str(
        FIXTURES
    )
    with pytest.raises(UserError, match="lacks vae/"):
        convert(str(lone), tmp_path / "z", components=str(tmp_path / "lone"))


@pytest.mark.parametrize(
    "remove, expect",
    [
        ("vae", "vae/"),
        ("Qwen3-Embedding-0.6B", "Qwen3-Embedding-0.6B/"),
        ("acestep-v15-turbo/silence_latent.pt", "silence_latent.pt"),
        ("acestep-v15-turbo/model.safetensors", "model"),
        ("Qwen3-Embedding-0.6B/tokenizer.json", "tokenizer.json"),
    ],
)
def test_missing_parts(tmp_path, remove, expect):
    root = repo(tmp_path)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=expect) as e:
        convert(str(root), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # nothing half-written beside it


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_silence_latent_pickle_is_never_executed(tmp_path, capsys):
    path = tmp_path / "silence_latent.pt"
    with open(path, "wb") as f:
        pickle.dump(_Boom(), f)
    with pytest.raises(UserError, match="weights_only=True"):
        read_silence(path)
    assert "code ran" not in capsys.readouterr().out
    torch.save({"not": "a tensor"}, path)
    with pytest.raises(UserError, match=r"\(1, channels, frames\)"):
        read_silence(path)


def test_without_torch_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    # the package is not on PyPI: the hint names torch itself (and the small CPU build on Linux)
    with pytest.raises(UserError, match=r"needs PyTorch: pip install torch \(Linux .*whl/cpu") as e:
        read_silence(FIXTURES / "acestep-v15-turbo" / "silence_latent.pt")
    assert "mlx-audio-generate[torch]" not in str(e.value)


def test_wrong_silence_shape(tmp_path):
    root = repo(tmp_path)
    torch.save(torch.zeros(1, 8, 100), root / "acestep-v15-turbo" / "silence_latent.pt")
    with pytest.raises(UserError, match="750"):
        convert(str(root), tmp_path / "out")


def test_dtype_and_quantization(tmp_path):
    out = convert(str(FIXTURES / "acestep-v15-turbo"), tmp_path / "bf16", dtype="bfloat16")
    w = load_safetensors(out / "model.safetensors")
    assert w["dit.condition_embedder.weight"].dtype == mx.bfloat16
    assert w["silence_latent"].dtype == mx.float32  # a VAE latent: kept exact
    a = mag.load(str(out)).generate("x", seconds=4.0, seed=0, steps=2)
    assert np.isfinite(a).all()
    q = convert(str(FIXTURES / "acestep-v15-turbo"), tmp_path / "q", quantize_bits=8, quantize_group_size=32)
    meta = json.loads((q / "config.json").read_text())["mlx_audio_generate"]["quantization"]
    assert meta["modules"] == "dit" and meta["layers"] > 0
    wq = load_safetensors(q / "model.safetensors")
    assert "dit.layers.0.self_attn.q_proj.scales" in wq
    assert "dit.condition_embedder.scales" not in wq
    assert not any(k.startswith("dit.time_embed") and k.endswith("scales") for k in wq)
    assert np.isfinite(mag.load(str(q)).generate("x", seconds=4.0, seed=0, steps=2)).all()


def test_download_patterns_and_names():
    assert F.FAMILY.download_patterns(F.MAIN_REPO) == [
        "acestep-v15-turbo/config.json", "acestep-v15-turbo/model.safetensors",
        "acestep-v15-turbo/silence_latent.pt", "vae/*", "Qwen3-Embedding-0.6B/*",
    ]  # fmt: skip
    assert F.FAMILY.download_patterns("ACE-Step/acestep-v15-base") == [
        "config.json",
        "model.safetensors",
        "silence_latent.pt",
    ]
    assert registry.short_names()["ace-step-1.5-sft"] == "ACE-Step/acestep-v15-sft"
    assert registry.short_names()["ace-step-1.5-xl-turbo"] == "ACE-Step/acestep-v15-xl-turbo"
    assert F.FAMILY.download_patterns("ACE-Step/acestep-v15-xl-sft") == list(F.DIT_FILES)
    assert F.variant_of({"dit": {"model_version": "xl_sft", "is_turbo": False}}) == "sft"
    assert F.variant_of({"dit": {"model_version": "xl_turbo", "is_turbo": True}}) == "turbo"
    assert registry.for_model("ace-step-1.5-turbo").name == "ace_step"
    assert F.MAIN_REPO in registry.known_repos()


def test_settings_per_variant():
    def by(config):
        return {s.name: s for s in F.settings(config)}

    turbo = by({"dit": {"model_version": "turbo", "is_turbo": True}})
    base = by({"dit": {"model_version": "base", "is_turbo": False}})
    sft = by({"dit": {"model_version": "sft", "is_turbo": False}})
    assert (turbo["steps"].default, turbo["steps"].maximum) == (8, 20)
    assert (base["steps"].default, base["steps"].maximum, sft["steps"].default) == (32, 200, 50)
    assert turbo["guidance_scale"].default == 1.0 and base["guidance_scale"].default == 7.0
    assert turbo["shift"].default == base["shift"].default == 3.0
    assert len(turbo["keyscale"].choices) == 70 and "B♭ major" in turbo["keyscale"].choices
    assert len(turbo["language"].choices) == 51 and turbo["language"].default == "unknown"
    assert turbo["timesignature"].choices == ("2", "3", "4", "6")
    assert (turbo["bpm"].minimum, turbo["bpm"].maximum) == (30, 300)
    assert by(None)["steps"].default is None


def test_not_an_ace_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert not F.FAMILY.detect(tmp_path)


def test_base_by_repo_id_fetches_only_the_main_repos_components(tmp_path, monkeypatch):
    """`ace-step-1.5-base` by repo id: its own DiT files, and from the main repo only vae/ and the text
    encoder (not the main repo's turbo DiT, ~4.8 GB). snapshot_download is replaced by a stand-in that
    serves the fixture folders and records the patterns it was asked for."""
    import huggingface_hub

    asked: dict[str, list[str]] = {}
    base = shutil.copytree(FIXTURES / "acestep-v15-base", tmp_path / "hub" / "base")  # alone, as in the cache
    served = {"ACE-Step/acestep-v15-base": base, F.MAIN_REPO: repo(tmp_path)}

    def snapshot_download(repo_id, allow_patterns=None, **_):
        asked[repo_id] = list(allow_patterns)
        return str(served[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = convert("ACE-Step/acestep-v15-base", tmp_path / "base")
    assert asked["ACE-Step/acestep-v15-base"] == ["config.json", "model.safetensors", "silence_latent.pt"]
    assert asked[F.MAIN_REPO] == ["vae/*", "Qwen3-Embedding-0.6B/*"]
    assert F.variant_of(json.loads((out / "config.json").read_text())) == "base"
