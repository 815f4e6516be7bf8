"""transformers MusicGen checkpoint folder -> our MLX folder (config.json, model.safetensors, tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

from ..converted import write_folder
from ..errors import UserError
from ..family import ConvertJob
from ..quantize import load_and_quantize
from ..weights import Checkpoint, cast, read_tensors
from .family import FAMILY
from .full_model import MusicGenModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
# Melody repos ship the chroma feature extractor's settings here; copied so generation reads the same ones.
EXTRA_FILES = ("preprocessor_config.json",)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} has no config.json; not a transformers MusicGen checkpoint")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def convert_musicgen(job: ConvertJob) -> None:
    """Convert `job.src` into `job.out` (an existing, empty folder). Every checkpoint tensor is used or
    explicitly ignored, every model parameter is loaded (strict), and the weights are written in `job.dtype`
    (None keeps them). `job.quantize_bits` (4 or 8) then quantizes the LM's linear layers (quantize.py)."""
    src = Path(job.src)
    config = read_config(src)
    if config.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise UserError(
            f"{src} is a '{config.get('model_type')}' checkpoint; this converter reads MusicGen "
            "(musicgen-small/medium/large/stereo-*/melody*)"
        )
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src} lacks tokenizer.json (the T5 tokenizer the model was trained with)")
    model = MusicGenModel(config)
    ckpt = Checkpoint(read_tensors(src), name=f"checkpoint {job.source}")
    weights = cast(model.sanitize(ckpt), job.dtype)
    weights, meta = load_and_quantize(
        model,
        weights,
        job,
        FAMILY.quantize,
        "checkpoint does not fit the MusicGen config",
        {"source": job.source},
    )
    files = [src / n for n in TOKENIZER_FILES + EXTRA_FILES if (src / n).is_file()]
    write_folder(job.out, FAMILY.name, config, weights, meta, files)
