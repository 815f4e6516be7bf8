"""The user's home and caches: the test session never touches them (tests/conftest.py points HOME, the XDG
folders, HF_HOME and MLX_AUDIO_GENERATE_CACHE at a throw-away sandbox and fails the run if its empty home
gets anything); a CLI run with HOME an empty folder leaves it empty; failures (a folder that is no
checkpoint, a failed download, pickle weights without torch) leave no cache folder behind; and pickle-only
repos are refused before their .bin files are downloaded when torch is missing."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlx_audio_generate import resolve as resolver
from mlx_audio_generate.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# the variables a user's shell may set that say where caches go: a "bare" run has none but HOME
WHERE = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HF_HOME", "HF_HUB_CACHE")
CLI = "from mlx_audio_generate.cli.generate import main; main()"


def bare_run(home: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """mlx-audio-generate as a user with HOME=`home` runs it: no cache variables, downloads off."""
    env = {k: v for k, v in os.environ.items() if k not in WHERE and k != "MLX_AUDIO_GENERATE_CACHE"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_session_runs_in_a_sandbox():
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert Path.home() != real_home and Path(os.environ["HOME"]) == Path.home()
    for name in ("XDG_CACHE_HOME", "HF_HOME", "MLX_AUDIO_GENERATE_CACHE"):
        assert not Path(os.environ[name]).is_relative_to(real_home), name
    assert not resolver.cache_root().is_relative_to(real_home)
    import huggingface_hub.constants as c  # read HF_HOME at import: after conftest set it

    assert not Path(c.HF_HUB_CACHE).is_relative_to(real_home)


def test_a_generation_leaves_an_empty_home_empty(musicgen_converted, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    args = ["--model", str(musicgen_converted), "--prompt", "rain", "--seconds", "0.2", "--seed", "1"]
    r = bare_run(home, [*args, "--output", "out.wav"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.wav").is_file()
    assert everything(home) == []


@pytest.mark.parametrize("model", ["not-a-checkpoint", "facebook/musicgen-small"])
def test_failures_leave_no_cache_folder_in_home(model, tmp_path):
    """`--model FOLDER` that holds no checkpoint (was: `local--<name>--<hash>/` left in the cache) and a
    download that fails (offline, not in the HF cache; was: `facebook--musicgen-small/`)."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "not-a-checkpoint").mkdir()
    (tmp_path / "not-a-checkpoint" / "notes.txt").write_text("hello")
    r = bare_run(home, ["--model", model, "--prompt", "rain", "--seconds", "0.2"], tmp_path)
    # (a "converting ..." notice may come first: the error is the one line after it)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("mlx-audio-generate: "), (
        r.stderr
    )
    assert "Traceback" not in r.stderr and r.stderr.count("error") == 1, r.stderr
    assert everything(home) == []


def test_resolve_failures_create_no_cache_folders(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(cache))
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(UserError):
        resolver.resolve(str(folder), quiet=True)
    assert not cache.exists()

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(*args, **kwargs):
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        resolver.resolve("musicgen-small", quiet=True)
    assert not cache.exists()
    # an existing cache root keeps only what it had
    cache.mkdir()
    (cache / "keep").mkdir()
    with pytest.raises(UserError):
        resolver.resolve("musicgen-small", quiet=True)
    assert everything(cache) == ["keep"]


class FakeHub:
    """snapshot_download for a repo whose only weights are pickles: records what would be downloaded."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size, self.downloads = folder, size, []

    def __call__(self, repo, allow_patterns=None, dry_run=False, **kwargs):
        if dry_run:
            files = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
            return [
                SimpleNamespace(
                    filename=f, file_size=self.size if f.endswith(".bin") else 10, will_download=True
                )
                for f in files
            ]
        self.downloads.append(list(allow_patterns))
        return str(self.folder)


def test_pickle_weights_need_torch_before_they_are_downloaded(tmp_path, monkeypatch):
    import huggingface_hub

    from mlx_audio_generate import hub, weights

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    fake = FakeHub(snapshot, size=3_300_000_000)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(weights, "have_torch", lambda: False)
    with pytest.raises(UserError) as e:
        hub.fetch("facebook/musicgen-large")
    msg = str(e.value)
    assert "pickle" in msg and "6.6 GB to download" in msg and "pip install torch" in msg, msg
    assert "download.pytorch.org/whl/cpu" in msg and "mlx-audio-generate[torch]" not in msg
    assert not any(any(".bin" in p for p in pats) for pats in fake.downloads)  # nothing of the GBs fetched

    # with torch the pickles are fetched (and later read with torch.load(weights_only=True))
    monkeypatch.setattr(weights, "have_torch", lambda: True)
    assert hub.fetch("facebook/musicgen-large") == snapshot
    assert any("pytorch_model*.bin*" in pats for pats in fake.downloads)


def test_reading_a_pickle_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    from mlx_audio_generate.weights import torch_load

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(UserError) as e:
        torch_load(tmp_path / "pytorch_model.bin")
    assert "pip install torch" in str(e.value) and "mlx-audio-generate[torch]" not in str(e.value)
