"""A stable-audio-tools checkpoint + a T5 checkpoint -> our MLX folder (config.json, model.safetensors,
tokenizer).

The Stable Audio checkpoints hold no T5 weights (the reference loads "t5-base" from the hub at run time), so
the converter bundles the T5 given: a google-t5/t5-base style folder (full encoder-decoder; its decoder half
is explicitly ignored) or a diffusers-style repo with `text_encoder/` + `tokenizer/` (stable-audio-open-1.0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..converted import write_folder
from ..errors import UserError
from ..family import ConvertJob
from ..quantize import load_and_quantize
from ..weights import Checkpoint, cast, read_tensors
from .family import FAMILY, T5_BASE_REPO
from .full_model import StableAudioModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent} has no {path.name}; {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; re-download it")
    return data


def t5_folders(t5_folder: Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a T5 source: t5-base style, or a repo with text_encoder/."""
    t5_folder = Path(t5_folder)
    if not t5_folder.is_dir():
        raise UserError(f"T5 folder '{t5_folder}' does not exist; pass --t5 a T5 checkpoint folder or repo")
    if (t5_folder / "text_encoder" / "config.json").is_file():
        return t5_folder / "text_encoder", t5_folder / "tokenizer"
    return t5_folder, t5_folder


def read_t5(t5_folder: Path) -> tuple[dict[str, Any], dict[str, mx.array], Path]:
    """The T5 config dict, its tensors and the folder holding its tokenizer.json."""
    enc_dir, tok_dir = t5_folders(t5_folder)
    hint = "pass --t5 a T5 checkpoint folder (e.g. google-t5/t5-base)"
    config = _read_json(enc_dir / "config.json", f"it is not a T5 checkpoint; {hint}")
    if config.get("model_type") != "t5":
        raise UserError(f"{enc_dir} holds a '{config.get('model_type')}' model, not T5; {hint}")
    if not (tok_dir / "tokenizer.json").is_file():
        if (tok_dir / "spiece.model").is_file():
            raise UserError(
                f"{tok_dir} has only spiece.model; write tokenizer.json once with transformers: "
                f"AutoTokenizer.from_pretrained('{tok_dir}').save_pretrained('{tok_dir}')"
            )
        raise UserError(f"{tok_dir} has no tokenizer.json (the T5 tokenizer); {hint}")
    return config, read_tensors(enc_dir), tok_dir


def default_t5(src: Path) -> str:
    """stable-audio-open-1.0 ships its T5 in a diffusers-style `text_encoder/` folder; small does not."""
    if (src / "text_encoder" / "config.json").is_file() and (src / "tokenizer").is_dir():
        return str(src)
    return T5_BASE_REPO


def convert_stable_audio(job: ConvertJob) -> None:
    """Convert `job.src` (+ the T5 of `job.options["t5"]`, default `default_t5`) into `job.out` (an existing,
    empty folder). Every tensor of both checkpoints is used or explicitly ignored, every model parameter is
    loaded (strict), and the weights are written in `job.dtype` (None keeps them). `job.quantize_bits` (4 or
    8) then quantizes the DiT's linear layers (quantize.py)."""
    src = Path(job.src)
    model_config = _read_json(src / "model_config.json", "not a stable-audio-tools checkpoint")
    t5_name = job.options.get("t5") or default_t5(src)
    try:
        t5_folder = job.fetch(t5_name)
    except UserError as e:  # offline, a typo, ...: the T5 is a separate checkpoint the user can point at
        raise UserError(
            f"the T5 text encoder this conversion bundles ('{t5_name}') cannot be used: {e}; "
            "pass --t5 a local T5 folder (e.g. a copy of google-t5/t5-base)"
        ) from None
    t5_config, t5_tensors, tok_dir = read_t5(Path(t5_folder))
    model = StableAudioModel(model_config, t5_config)
    ckpt = Checkpoint(read_tensors(src), name=f"checkpoint {job.source}")
    t5_ckpt = Checkpoint(t5_tensors, name=f"T5 checkpoint {t5_folder}")
    weights = cast(model.sanitize(ckpt, t5_ckpt), job.dtype)
    weights, meta = load_and_quantize(
        model,
        weights,
        job,
        FAMILY.quantize,
        "checkpoint does not fit its model_config.json",
        {"source": job.source, "t5_source": str(t5_folder)},
    )
    files = [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]
    write_folder(job.out, FAMILY.name, {"model_config": model_config, "t5": t5_config}, weights, meta, files)
