"""Malformed configs, tokenizers and indexes: one-line UserErrors at conversion and at load (issue 14).

Each case breaks one file of a tiny MusicGen or Stable Audio Open checkpoint (or of a converted folder) the
way a truncated download, a hand edit or a hostile repo would. The converter CLI must exit 2 with one
`error:` line naming the checkpoint (or the file), no traceback, and write nothing; `load()` must raise a
one-line UserError naming the folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_audio_generate
from mlx_audio_generate.cli.convert import main as convert_main
from mlx_audio_generate.errors import UserError


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A case: load `name` (relative to the folder), apply `change` (returns the new body, or None to keep
    the edited dict), write it back."""

    def apply(folder: Path) -> None:
        path = folder / name
        data = json.loads(path.read_text())
        new = change(data)
        path.write_text(json.dumps(data if new is None else new))

    return apply


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def change(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def deleter(*keys):
    def change(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return change


def sharded(index: object) -> Callable[[Path], None]:
    """Replace model.safetensors by one shard and an index whose body is `index`."""

    def apply(folder: Path) -> None:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    return apply


def sharded_map(weight_map) -> Callable[[Path], None]:
    return sharded({"metadata": {}, "weight_map": weight_map})


def shard_values(make) -> Callable[[Path], None]:
    """A well-formed index whose shard names are replaced by `make(name)`."""

    def apply(folder: Path) -> None:
        keys = list(mx.load(str(folder / "model.safetensors")))
        sharded_map({k: make("model-00001-of-00001.safetensors") for k in keys})(folder)

    return apply


COMMON = {  # cases of files both families read the same way
    "tokenizer-not-json": write("tokenizer.json", '{"version": "1.0", "model": '),
    "tokenizer-json-list": write("tokenizer.json", "[1, 2, 3]"),
    "tokenizer-not-a-tokenizer": write("tokenizer.json", '{"hello": "world"}'),
    "index-without-weight-map": sharded({"metadata": {}}),
    "index-weight-map-list": sharded_map(["model-00001-of-00001.safetensors"]),
    "index-is-a-list": sharded([]),
    "index-shard-not-a-string": shard_values(lambda name: 7),
    "index-shard-a-list": shard_values(lambda name: [name]),
    "index-not-json": lambda f: sharded({})(f) or (f / "model.safetensors.index.json").write_text("{nope"),
}

MUSICGEN_CASES = {
    "config-is-a-list": write("config.json", "[]"),
    "config-is-null": write("config.json", "null"),
    "config-no-decoder": edit_json("config.json", deleter("decoder")),
    "config-no-text-encoder": edit_json("config.json", deleter("text_encoder")),
    "config-decoder-a-string": edit_json("config.json", setter("decoder", "big")),
    "config-null-hidden-size": edit_json("config.json", setter("decoder", "hidden_size", None)),
    "config-zero-heads": edit_json("config.json", setter("decoder", "num_attention_heads", 0)),
    "config-t5-zero-heads": edit_json("config.json", setter("text_encoder", "num_heads", 0)),
    "config-string-vocab": edit_json("config.json", setter("decoder", "vocab_size", "many")),
    "config-null-ratios": edit_json("config.json", setter("audio_encoder", "upsampling_ratios", None)),
    "config-negative-layers": edit_json("config.json", setter("decoder", "num_hidden_layers", -3)),
    "generation-config-list": write("generation_config.json", "[]"),
    "preprocessor-config-list": write("preprocessor_config.json", "[1]"),
    **{f"{k}": v for k, v in COMMON.items()},
}

SA = "model_config.json"
SA_CASES = {
    "model-config-is-a-list": write(SA, "[]"),
    "model-config-missing-model": edit_json(SA, deleter("model")),
    "model-config-null-sample-size": edit_json(SA, setter("sample_size", None)),
    "model-config-string-sample-rate": edit_json(SA, setter("sample_rate", "fast")),
    "model-config-no-diffusion": edit_json(SA, deleter("model", "diffusion")),
    "model-config-zero-dit-heads": edit_json(SA, setter("model", "diffusion", "config", "num_heads", 0)),
    "model-config-null-pretransform": edit_json(SA, setter("model", "pretransform", "config", None)),
    "model-config-conditioning-not-list": edit_json(
        SA, setter("model", "conditioning", "configs", {"id": "prompt"})
    ),
    "model-config-null-strides": edit_json(
        SA, setter("model", "pretransform", "config", "decoder", "config", "strides", None)
    ),
    "t5-config-list": write("t5/config.json", "[]"),
    "t5-config-null-d-model": edit_json("t5/config.json", setter("d_model", None)),
    "t5-config-zero-heads": edit_json("t5/config.json", setter("num_heads", 0)),
    **{k: (lambda case: lambda f: case(f / "t5"))(v) for k, v in COMMON.items() if k.startswith("tok")},
    **{k: v for k, v in COMMON.items() if k.startswith("index")},
}


def check_convert_fails(capsys, src: Path, root: Path, extra: list[str]) -> str:
    out = root / "out"
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(SystemExit) as e:
        convert_main(["--model", str(src), "--output", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("mlx-audio-convert: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert str(src) in err, err  # names the checkpoint or a file in it
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written, no temp folder left
    return err


@pytest.mark.parametrize("case", sorted(MUSICGEN_CASES))
def test_malformed_musicgen_checkpoint(case, musicgen_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(musicgen_dir, src)
    MUSICGEN_CASES[case](src)
    check_convert_fails(capsys, src, tmp_path, [])


@pytest.mark.parametrize("case", sorted(SA_CASES))
def test_malformed_stable_audio_checkpoint(case, stable_audio_small, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(stable_audio_small[0], src)
    SA_CASES[case](src)
    check_convert_fails(capsys, src, tmp_path, ["--t5", str(src / "t5")])


# ------------------------------------------------------------------------------------ converted folders

MUSICGEN_LOAD_CASES = {
    "config-no-decoder": edit_json("config.json", deleter("decoder")),
    "config-zero-heads": edit_json("config.json", setter("decoder", "num_attention_heads", 0)),
    "config-null-hidden-size": edit_json("config.json", setter("decoder", "hidden_size", None)),
    "config-text-encoder-list": edit_json("config.json", setter("text_encoder", [1])),
    "config-family-unhashable": edit_json("config.json", setter("mlx_audio_generate", "family", ["x"])),
    "tokenizer-not-json": write("tokenizer.json", "{"),
    "tokenizer-json-list": write("tokenizer.json", "[]"),
}
MELODY_LOAD_CASES = {
    "preprocessor-bad-values": edit_json("preprocessor_config.json", setter("n_fft", "big")),
    "preprocessor-null-hop": edit_json("preprocessor_config.json", setter("hop_length", None)),
    "preprocessor-list": write("preprocessor_config.json", "[]"),
}
SA_LOAD_CASES = {
    "config-missing-model": edit_json("config.json", deleter("model_config", "model")),
    "config-null-sample-size": edit_json("config.json", setter("model_config", "sample_size", None)),
    "config-t5-zero-heads": edit_json("config.json", setter("t5", "num_heads", 0)),
    "config-dit-zero-heads": edit_json(
        "config.json", setter("model_config", "model", "diffusion", "config", "num_heads", 0)
    ),
    "tokenizer-json-list": write("tokenizer.json", "[]"),
}


def check_load_fails(folder: Path) -> None:
    with pytest.raises(UserError) as e:
        mlx_audio_generate.load(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg, msg


LOAD_CASES = {
    "musicgen_converted": MUSICGEN_LOAD_CASES,
    "melody_converted": MELODY_LOAD_CASES,
    "stable_audio_small_converted": SA_LOAD_CASES,
}


@pytest.mark.parametrize("fixture, case", [(f, c) for f, cases in LOAD_CASES.items() for c in sorted(cases)])
def test_malformed_converted_folder(fixture, case, request, tmp_path):
    folder = tmp_path / "conv"
    shutil.copytree(request.getfixturevalue(fixture), folder)
    LOAD_CASES[fixture][case](folder)
    check_load_fails(folder)
