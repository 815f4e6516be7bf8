"""Conversions and caches that never delete, never go stale and never read outside the checkpoint (issue 14).

- `--force` replaces only a previous conversion (or an empty folder), never other files, never the
  checkpoint being read (nor a folder containing it, nor one inside it); the cache removes only its own
  entries.
- A local checkpoint folder's cache entry is keyed by its content identity: a changed folder converts again.
- Integer / bool tensors where weights belong are refused at conversion and at load, naming the tensor.
- Shard paths of a `*.safetensors.index.json` stay inside the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_audio_generate
from mlx_audio_generate import resolve as resolver
from mlx_audio_generate.cli.convert import main as convert_main
from mlx_audio_generate.convert import convert, remove_stale_partials
from mlx_audio_generate.converted import is_converted
from mlx_audio_generate.errors import UserError


def one_line_error(fn, *words: str) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def cli_convert(capsys, *argv: str) -> str:
    """Run mlx-audio-convert in-process; it must exit 2 with one error line and no traceback."""
    with pytest.raises(SystemExit) as e:
        convert_main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("mlx-audio-convert: error:"), err
    return err


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under `folder` (to prove nothing was touched)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def src(musicgen_dir, tmp_path) -> Path:
    """A private copy of the tiny MusicGen checkpoint (tests modify it)."""
    out = tmp_path / "ckpt"
    shutil.copytree(musicgen_dir, out)
    return out


# ----------------------------------------------------------------------------------------- 1. --force


def test_force_never_deletes_a_folder_of_other_files(src, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    (thesis / "figures").mkdir()
    (thesis / "figures" / "plot.pdf").write_bytes(b"%PDF")
    before = snapshot(thesis)
    err = cli_convert(capsys, "--model", str(src), "--output", str(thesis), "--force")
    assert "not a conversion" in err
    one_line_error(lambda: convert(str(src), thesis, force=True), "not a conversion")
    assert snapshot(thesis) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "thesis"]  # no temp folder left


def test_force_never_replaces_the_source_checkpoint(src, musicgen_converted, tmp_path, capsys):
    before = snapshot(src)
    # the reference checkpoint itself (its config.json is not ours, so the first rule already refuses)
    cli_convert(capsys, "--model", str(src), "--output", str(src), "--force")
    assert snapshot(src) == before
    # a converted folder named as its own source: it passes the first rule, the second refuses
    conv = tmp_path / "conv"
    shutil.copytree(musicgen_converted, conv)
    conv_before = snapshot(conv)
    err = cli_convert(capsys, "--model", str(conv), "--output", str(conv), "--force")
    assert "is the checkpoint being converted" in err
    # an output that contains the checkpoint (a previous conversion holding it)
    shutil.copytree(src, conv / "ckpt")
    conv_before = snapshot(conv)
    err = cli_convert(capsys, "--model", str(conv / "ckpt"), "--output", str(conv), "--force")
    assert "contains the checkpoint" in err
    assert snapshot(conv) == conv_before
    # an output inside the checkpoint (even a new one, without --force)
    err = cli_convert(capsys, "--model", str(src), "--output", str(src / "mlx"))
    assert "is inside the checkpoint" in err
    assert snapshot(src) == before and not (src / "mlx").exists()
    # through a symlink to the same folder
    link = tmp_path / "link"
    link.symlink_to(conv, target_is_directory=True)
    one_line_error(lambda: convert(str(link), conv, force=True), "is the checkpoint")


def test_force_never_replaces_a_second_source(stable_audio_small, musicgen_converted, tmp_path):
    """Checkpoints a conversion fetches on the way (Stable Audio's --t5) are protected the same way."""
    sa_src = stable_audio_small[0]
    t5 = tmp_path / "t5-in-a-conversion"
    shutil.copytree(musicgen_converted, t5)  # a previous conversion: --force may replace it, but not as --t5
    before = snapshot(t5)
    one_line_error(lambda: convert(str(sa_src), t5, force=True, t5=str(t5)), "is the checkpoint")
    assert snapshot(t5) == before


def test_force_replaces_a_previous_conversion_or_an_empty_folder(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert(str(src), out)  # empty: fine without --force
    first = snapshot(out)
    one_line_error(lambda: convert(str(src), out), "not empty")
    convert(str(src), out, dtype="float16", force=True)
    assert is_converted(out) and snapshot(out) != first
    assert json.loads((out / "config.json").read_text())["mlx_audio_generate"]["dtype"] == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # the old one is gone, no temp


def test_symlinked_output_is_refused(src, musicgen_converted, tmp_path):
    conv = tmp_path / "conv"
    shutil.copytree(musicgen_converted, conv)
    link = tmp_path / "out"
    link.symlink_to(conv, target_is_directory=True)
    one_line_error(lambda: convert(str(src), link, force=True), "symbolic link")
    assert link.is_symlink() and snapshot(conv) == snapshot(musicgen_converted)


def test_stale_partial_cleanup_keeps_folders_that_are_not_ours(tmp_path):
    """A dead pid's `.name.<pid>` folder is removed only if it looks like our partial (files only)."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours, theirs = tmp_path / f".out.{dead.pid}", tmp_path / f".out.{dead.pid}.replaced"
    ours.mkdir()
    (ours / "model.safetensors").write_bytes(b"partial")
    theirs.mkdir()
    (theirs / "project").mkdir()
    (theirs / "project" / "notes.txt").write_text("keep me")
    remove_stale_partials(tmp_path, "out")
    assert not ours.exists() and (theirs / "project" / "notes.txt").is_file()


def test_cache_never_removes_what_is_not_its_own(src, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    target = resolver.cache_dir(str(src), None)
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("not a conversion")
    one_line_error(lambda: resolver.resolve(str(src), quiet=True), "did not write", str(target))
    assert (target / "mine.txt").read_text() == "not a conversion"
    # a superseded sibling that is not ours survives the next conversion's clean-up too
    (target / "mine.txt").unlink()
    target.rmdir()
    alien = target.parent / "original--0123456789ab"
    alien.mkdir()
    (alien / "mine.txt").write_text("keep")
    assert resolver.resolve(str(src), quiet=True) == target and is_converted(target)
    assert (alien / "mine.txt").read_text() == "keep"


# ------------------------------------------------------------------------- 2. content-keyed local cache


def test_changed_local_folder_converts_again(src, musicgen_stereo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    mono = mlx_audio_generate.load(str(src))
    assert mono.audio_channels == 1
    first = resolver.cache_dir(str(src), None)
    assert is_converted(first)

    # the same folder, now holding the stereo checkpoint (weights and config replaced in place)
    for f in musicgen_stereo_dir.iterdir():
        shutil.copyfile(f, src / f.name)
    second = resolver.cache_dir(str(src), None)
    assert second != first and second.parent == first.parent
    stereo = mlx_audio_generate.load(str(src))
    assert stereo.audio_channels == 2
    assert [p.name for p in second.parent.iterdir()] == [second.name]  # the stale entry is gone

    # unchanged: reused, never converted again
    import mlx_audio_generate.convert as conv_mod

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(conv_mod, "convert", no_conversion)
    assert resolver.resolve(str(src), quiet=True) == second
    assert mlx_audio_generate.load(str(src)).audio_channels == 2


def test_content_key_sees_every_file_and_ignores_hidden_ones(src):
    key = resolver.content_key(src)
    assert resolver.content_key(src) == key
    (src / ".git").mkdir()
    (src / ".git" / "index").write_text("x")
    assert resolver.content_key(src) == key  # hidden: never read by a conversion
    (src / "text_encoder").mkdir()
    (src / "text_encoder" / "config.json").write_text("{}")
    key2 = resolver.content_key(src)
    assert key2 != key  # a file one level down counts
    st = os.stat(src / "model.safetensors")
    os.utime(src / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert resolver.content_key(src) != key2  # same size, new mtime
    assert resolver.cache_dir("facebook/musicgen-small", None).parts[-2:] == (
        "facebook--musicgen-small",
        "original",
    )  # repo ids keep their name key


# -------------------------------------------------------------------------------------- 3. tensor dtypes


def rewrite_tensor(path: Path, key: str, dtype) -> None:
    tensors = dict(mx.load(str(path)))
    tensors[key] = tensors[key].astype(dtype)
    mx.save_safetensors(str(path), tensors)


@pytest.mark.parametrize("dtype", [mx.int32, mx.bool_], ids=["int32", "bool"])
@pytest.mark.parametrize(
    "key",
    [
        "decoder.model.decoder.layers.0.fc1.weight",  # a plain take()
        "audio_encoder.decoder.layers.6.conv.parametrizations.weight.original1",  # take_conv_weight()
    ],
)
def test_integer_weights_are_refused_at_conversion(src, tmp_path, dtype, key):
    rewrite_tensor(src / "model.safetensors", key, dtype)
    out = tmp_path / "out"
    one_line_error(lambda: convert(str(src), out), key, "not floating point")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("dtype", [mx.int32, mx.bool_], ids=["int32", "bool"])
def test_integer_weights_are_refused_at_load(musicgen_converted, tmp_path, dtype):
    conv = tmp_path / "conv"
    shutil.copytree(musicgen_converted, conv)
    key = next(k for k in mx.load(str(conv / "model.safetensors")) if k.endswith("fc1.weight"))
    rewrite_tensor(conv / "model.safetensors", key, dtype)
    one_line_error(lambda: mlx_audio_generate.load(conv), key, "expected float")


def test_quantized_tensors_load_and_keep_their_dtypes(src, tmp_path):
    conv = tmp_path / "q"
    convert(str(src), conv, quantize_bits=8, quantize_group_size=32)
    assert mlx_audio_generate.load(conv).audio_channels == 1  # uint32 .weight + float .scales/.biases load
    tensors = dict(mx.load(str(conv / "model.safetensors")))
    scales = next(k for k in tensors if k.endswith(".scales"))
    packed = scales.removesuffix(".scales") + ".weight"
    assert tensors[packed].dtype == mx.uint32
    for key, dtype, words in ((scales, mx.int32, "expected float"), (packed, mx.float32, "expected uint32")):
        bad = tmp_path / f"bad-{dtype}"
        shutil.copytree(conv, bad)
        rewrite_tensor(bad / "model.safetensors", key, dtype)
        one_line_error(lambda b=bad: mlx_audio_generate.load(b), key, words)


# ------------------------------------------------------------------------------- 4. shards stay inside


def shard(src: Path, names: tuple[str, str]) -> dict[str, str]:
    """Split src/model.safetensors into two shard files at `names` (relative to src), with an index."""
    tensors = dict(mx.load(str(src / "model.safetensors")))
    (src / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    weight_map = {}
    for name, part in zip(names, (keys[:half], keys[half:]), strict=True):
        path = Path(name) if Path(name).is_absolute() else src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(path), {k: tensors[k] for k in part})
        weight_map.update(dict.fromkeys(part, name))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_checkpoint_converts(src, tmp_path):
    shard(src, ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    assert is_converted(convert(str(src), tmp_path / "out"))


def test_hf_cache_snapshot_shards_may_link_into_blobs(src, tmp_path):
    """huggingface_hub's cache: snapshots/<rev>/<file> are symlinks to ../../blobs/<hash>: allowed."""
    repo = tmp_path / "models--someone--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    shard(src, ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in src.iterdir():
        blob = blobs / hashlib.sha1(f.name.encode()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    assert is_converted(convert(str(snap), tmp_path / "out"))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_shard_paths_outside_the_checkpoint_are_refused(src, tmp_path, how):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if how == "absolute":
        shard(src, ("model-00001-of-00002.safetensors", str(outside / "secret.safetensors")))
    elif how == "dotdot":
        shard(src, ("model-00001-of-00002.safetensors", "../elsewhere/secret.safetensors"))
    else:
        shard(src, ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
        (src / "model-00002-of-00002.safetensors").rename(outside / "secret.safetensors")
        (src / "model-00002-of-00002.safetensors").symlink_to(outside / "secret.safetensors")
    assert (outside / "secret.safetensors").is_file()
    out = tmp_path / "out"
    one_line_error(lambda: convert(str(src), out), "model.safetensors.index.json", "shard")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
