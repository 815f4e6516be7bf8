"""What conversion says in the cases a newcomer meets: a folder that is already converted, a typo in a model
name or repo id ("did you mean"), Stable Audio's separate T5 when it cannot be fetched (--t5), and
"downloading..." before "converting..." on first use."""

from __future__ import annotations

import pytest

from mlx_audio_generate import convert as convert_module
from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.hub import fetch
from mlx_audio_generate.resolve import resolve


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache with downloads off, and a private model cache."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "ours"))


def test_converting_a_converted_folder_says_so(musicgen_converted, tmp_path, capsys):
    with pytest.raises(UserError, match="already converted") as e:
        convert(str(musicgen_converted), tmp_path / "again")
    msg = str(e.value)
    assert "--weights-dir" in msg and "--model musicgen" in msg and "MusicGen" in msg, msg
    assert "not a T5 checkpoint" not in msg and "lacks tensor" not in msg
    assert not (tmp_path / "again").exists()
    with pytest.raises(SystemExit) as ex:
        convert_cli.main(["--model", str(musicgen_converted), "--output", str(tmp_path / "again")])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and len(err) == 1 and "already converted" in err[0], err


def test_a_typo_in_a_repo_id_suggests_the_known_one(offline_empty_hub):
    with pytest.raises(UserError, match=r"did you mean facebook/musicgen-small\?") as e:
        fetch("facebook/musicgen-smal")
    assert "--trust-remote-code" in str(e.value)  # still said, as the way to use an unlisted repo
    with pytest.raises(UserError, match=r"did you mean stabilityai/stable-audio-open-small\?"):
        fetch("stabilityai/stable-audio-open-smal")
    with pytest.raises(UserError, match="pass --trust-remote-code") as e:  # nothing near it: no guess
        fetch("someone/totally-different")
    assert "did you mean" not in str(e.value)


def test_a_typo_in_a_short_name_suggests_the_known_one(offline_empty_hub):
    with pytest.raises(UserError, match=r"unknown model 'musicgen-smal'; did you mean musicgen-small\?"):
        resolve("musicgen-smal")
    with pytest.raises(UserError, match=r"did you mean facebook/musicgen-small\?"):
        resolve("facebook/musicgen-smal")


def test_stable_audio_t5_offline_names_the_t5_flag(stable_audio_small, offline_empty_hub, tmp_path):
    src = stable_audio_small[0]  # small-style: its T5 is google-t5/t5-base, fetched from the hub
    with pytest.raises(UserError, match="google-t5/t5-base") as e:
        convert(str(src), tmp_path / "out")
    assert "pass --t5 a local T5 folder" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_downloading_is_said_before_converting(musicgen_dir, tmp_path, monkeypatch, capsys):
    seen = []

    # the hub, here: what stderr said when it was called
    def fake_fetch(model, trust_remote_code=False, patterns=None, tqdm_class=None):
        seen.append(capsys.readouterr().err)
        return musicgen_dir

    monkeypatch.setattr(convert_module, "fetch", fake_fetch)
    convert("facebook/musicgen-small", tmp_path / "out", quiet=False)
    err = capsys.readouterr().err
    assert "downloading facebook/musicgen-small" in seen[0] and "converting" not in seen[0], seen
    assert "converting facebook/musicgen-small: 100%" in err  # the conversion's bar, after the download
    # a local folder is not downloaded: no such line
    convert(str(musicgen_dir), tmp_path / "local", quiet=False)
    err = capsys.readouterr().err
    assert "downloading" not in err and f"converting {musicgen_dir.name}: 100%" in err
