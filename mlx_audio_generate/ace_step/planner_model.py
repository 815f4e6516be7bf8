"""The 5 Hz LM planner's network and files: a Qwen3 causal LM (transformers `Qwen3ForCausalLM` layout, the
released `acestep-5Hz-lm-*` folders) on mlx-lm's `qwen3.Model`, its tokenizer through mlx-lm's loader (a
transformers tokenizer: the chat template and the added `<|audio_code_N|>` tokens as the reference uses them).

Converted planner folder (its own folder, written once by `convert_planner`): `config.json` (the LM's config
plus a `mlx_audio_generate_planner` entry: format version, dtype, source, quantization), `model.safetensors`
(mlx-lm's parameter names), the tokenizer files copied. `-q` quantizes through mlx-lm's `quantize_model`;
loading re-applies it. Sizes always come from the LM's config.json.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.qwen3 import Model

from ..errors import UserError
from ..text.qwen3 import qwen3_args
from ..weights import Checkpoint, cast, dtype_name, load_safetensors, read_tensors, save_safetensors
from .planner_constraints import audio_code_tokens

META = "mlx_audio_generate_planner"
FORMAT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "generation_config.json",
)  # fmt: skip


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"planner folder {folder} has no config.json (not a 5 Hz LM)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read planner config {path}: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    if config.get("model_type") != "qwen3":
        raise UserError(
            f"{folder} is not a 5 Hz LM planner: its config.json model_type is {config.get('model_type')!r}, "
            "not 'qwen3'"
        )
    return config


def build_model(config: dict[str, Any]) -> Model:
    return Model(qwen3_args({k: v for k, v in config.items() if k != META}))


def sanitize(model: Model, ckpt: Checkpoint) -> dict[str, mx.array]:
    """Our parameters from a `Qwen3ForCausalLM` checkpoint; keys with or without the `model.` prefix (the
    reference's MLX loader notes released LM files without it); a tied head's copy is ignored."""
    names = [n for n, _ in tree_flatten(model.parameters())]
    bare = "model.embed_tokens.weight" not in ckpt and "embed_tokens.weight" in ckpt
    weights = {}
    for n in names:
        key = n.removeprefix("model.") if bare and n.startswith("model.") else n
        weights[n] = ckpt.take(key)
    ckpt.finish(ignore=[r"lm_head\.weight"] if model.args.tie_word_embeddings else [])
    return weights


def load_tokenizer(folder: Path) -> Any:
    """The transformers tokenizer (through mlx-lm's loader) of a planner folder, checked for audio codes."""
    from mlx_lm.tokenizer_utils import load as load_tok

    if not (Path(folder) / "tokenizer.json").is_file():
        raise UserError(f"planner folder {folder} has no tokenizer.json")
    try:
        tok = load_tok(Path(folder))._tokenizer
    except Exception as e:  # transformers raises many types for a bad tokenizer folder
        raise UserError(f"cannot load the planner tokenizer in {folder}: {e}") from None
    if not audio_code_tokens(tok):
        raise UserError(f"{folder} is not a 5 Hz LM planner: its tokenizer has no <|audio_code_N|> tokens")
    if not getattr(tok, "chat_template", None):
        raise UserError(f"{folder}'s tokenizer has no chat template (the planner's prompts need it)")
    return tok


def convert_planner(
    src: Path, out: Path, source: str, dtype: str | None = None, bits: int | None = None, group_size: int = 64
) -> Path:
    """A released LM folder -> our converted planner folder `out` (written in a temp folder, then renamed)."""
    from mlx_lm.utils import quantize_model

    src, out = Path(src), Path(out)
    config = read_config(src)
    load_tokenizer(src)
    if out.exists():
        raise UserError(f"{out} already exists; remove it first")
    model = build_model(config)
    ckpt = Checkpoint(read_tensors(src, allow_pickle=False), name=f"planner checkpoint {src}")
    weights = cast(sanitize(model, ckpt), dtype)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"planner checkpoint does not fit its config.json: {e}") from None
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dtype": dtype or dtype_name(weights)}
    meta["source"] = source
    body = dict(config)
    if bits is not None:
        model, qconfig = quantize_model(model, {}, group_size, bits)
        meta["quantization"] = qconfig["quantization"]
        weights = dict(tree_flatten(model.parameters()))
    body[META] = meta
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_safetensors(tmp / "model.safetensors", weights)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(body, indent=2))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_converted_planner(folder: Path) -> bool:
    try:
        return META in json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def load_planner_model(folder: Path) -> tuple[Model, Any, dict[str, Any]]:
    """(model, tokenizer, config) of a converted planner folder or a released LM folder (read as it is)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"planner folder {folder} does not exist")
    config = read_config(folder)
    tok = load_tokenizer(folder)
    model = build_model(config)
    meta = config.get(META)
    if isinstance(meta, dict):
        weights = load_safetensors(folder / "model.safetensors")
        q = meta.get("quantization")
        if q is not None:
            nn.quantize(
                model, group_size=q["group_size"], bits=q["bits"],
                class_predicate=lambda p, m: f"{p}.scales" in weights,
            )  # fmt: skip
    else:
        weights = sanitize(model, Checkpoint(read_tensors(folder, allow_pickle=False), name=str(folder)))
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"planner weights in {folder} do not fit its config.json: {e}") from None
    if tok.vocab_size > config["vocab_size"] or len(tok) > config["vocab_size"]:
        raise UserError(f"{folder}: the tokenizer has {len(tok)} tokens, the LM only {config['vocab_size']}")
    model.eval()
    return model, tok, config


def check_size_name(value: str) -> bool:
    return re.fullmatch(r"0\.6B|1\.7B|4B", value) is not None
