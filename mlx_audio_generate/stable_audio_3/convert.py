"""A Stable Audio 3 checkpoint (model_config.json, model.safetensors, the bundled t5gemma-b-b-ul2/) -> our MLX
folder (config.json, model.safetensors, the T5Gemma tokenizer files).

The released checkpoints name their text encoder by `repo_id` + `subfolder`: the T5Gemma copy inside the same
repo (a full encoder-decoder; its decoder half is explicitly ignored). A `model_path` that is a folder wins,
as in the reference conditioner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..converted import write_folder
from ..errors import UserError
from ..family import ConvertJob
from ..quantize import load_and_quantize
from ..weights import Checkpoint, cast, read_tensors
from .conditioners import ConditioningConfig, text_encoder_folder
from .family import FAMILY
from .full_model import SA3Model

# What T5GemmaTokenizer reads (+ the special-token names transformers keeps beside them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent} has no {path.name}; {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; re-download it")
    return data


def t5gemma_folder(model_config: dict[str, Any], src: Path) -> Path:
    """The T5Gemma folder a checkpoint's text conditioner names, checked to hold a T5Gemma."""
    texts = ConditioningConfig.from_dict(model_config).text
    if len(texts) != 1:
        raise UserError(f"Stable Audio 3 has one T5Gemma text conditioner; this config has {len(texts)}")
    folder = text_encoder_folder(texts[0], src)
    hint = "download the whole checkpoint (its T5Gemma text encoder folder included)"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{src} lacks its T5Gemma text encoder '{folder.name}/' (config + weights); {hint}")
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder} has no tokenizer.json (the T5Gemma tokenizer); {hint}")
    return folder


def convert_stable_audio_3(job: ConvertJob) -> None:
    """Convert `job.src` into `job.out` (an existing, empty folder). Every tensor of both checkpoints is used
    or explicitly ignored, every model parameter is loaded (strict), the weights are written in `job.dtype`
    (None keeps them); `job.quantize_bits` (4 or 8) then quantizes the DiT's linear layers (quantize.py)."""
    src = Path(job.src)
    model_config = read_json(src / "model_config.json", "not a Stable Audio 3 checkpoint")
    t5dir = t5gemma_folder(model_config, src)
    t5_config = read_json(t5dir / "config.json", "not a T5Gemma checkpoint")
    if t5_config.get("model_type") != "t5gemma":
        raise UserError(f"{t5dir} holds a '{t5_config.get('model_type')}' model, not T5Gemma")
    model = SA3Model(model_config, t5_config)
    ckpt = Checkpoint(read_tensors(src, allow_pickle=False), name=f"checkpoint {job.source}")
    t5_ckpt = Checkpoint(read_tensors(t5dir, allow_pickle=False), name=f"T5Gemma checkpoint {t5dir}")
    weights = cast(model.sanitize(ckpt, t5_ckpt), job.dtype)
    weights, meta = load_and_quantize(
        model,
        weights,
        job,
        FAMILY.quantize,
        "checkpoint does not fit its model_config.json",
        {"source": job.source, "t5gemma_source": str(t5dir)},
    )
    files = [t5dir / n for n in TOKENIZER_FILES if (t5dir / n).is_file()]
    write_folder(
        job.out, FAMILY.name, {"model_config": model_config, "t5gemma": t5_config}, weights, meta, files
    )
