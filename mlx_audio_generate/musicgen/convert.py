"""transformers MusicGen checkpoint folder -> our MLX folder (config.json, model.safetensors, tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..converted import FORMAT_VERSION
from ..errors import UserError
from ..progress import Progress, eval_weights
from ..quantize import model_weights, quantize_model
from ..weights import Checkpoint, cast, read_tensors, save_safetensors
from .pipeline import MusicGenModel

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


def convert_musicgen(
    src: Path,
    out: Path,
    dtype: str | None = None,
    source: str | None = None,
    quantize_bits: int | None = None,
    quantize_group_size: int = 64,
    progress: Progress | None = None,
) -> None:
    """Convert into `out` (an existing, empty folder). Every checkpoint tensor is used or explicitly ignored,
    every model parameter is loaded (strict), and the weights are written in `dtype` (None keeps them).
    `quantize_bits` (4 or 8) then quantizes the LM's linear layers (quantize.py)."""
    src, out = Path(src), Path(out)
    config = read_config(src)
    if config.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise UserError(
            f"{src} is a '{config.get('model_type')}' checkpoint; this converter reads MusicGen "
            "(musicgen-small/medium/large/stereo-*/melody*)"
        )
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src} lacks tokenizer.json (the T5 tokenizer the model was trained with)")
    model = MusicGenModel(config)
    ckpt = Checkpoint(read_tensors(src), name=f"checkpoint {source or src}")
    weights = cast(model.sanitize(ckpt), dtype)
    # Strict load: a missing parameter or a wrong shape fails here, before anything is written.
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"checkpoint does not fit the MusicGen config: {e}") from None
    eval_weights(weights, progress)  # the conversion's work, tensor by tensor: `progress(done, total)`
    stored_dtype = dtype or str(next(iter(weights.values())).dtype).removeprefix("mlx.core.")
    quantization = None
    if quantize_bits is not None:
        quantization = quantize_model(model, "musicgen", quantize_bits, quantize_group_size)
        weights = model_weights(model)
    save_safetensors(out / "model.safetensors", weights)
    config = dict(config)
    config["mlx_audio_generate"] = {
        "family": "musicgen",
        "format_version": FORMAT_VERSION,
        "dtype": stored_dtype,
        "source": source or str(src),
    }
    if quantization is not None:
        config["mlx_audio_generate"]["quantization"] = quantization
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES + EXTRA_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
