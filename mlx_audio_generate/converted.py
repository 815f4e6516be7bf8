"""Opening a folder written by mlx-audio-convert: shared checks with clear errors for both families."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.nn as nn

from .errors import UserError
from .quantize import apply_saved_quantization
from .weights import load_safetensors

FORMAT_VERSION = 1


def open_converted(folder: str | Path, family: str) -> tuple[Path, dict[str, Any]]:
    """Validate a converted folder of `family` and return (folder, config)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"weights folder '{folder}' does not exist; convert a model with mlx-audio-convert")
    if not folder.is_dir():
        raise UserError(f"--weights-dir '{folder}' is not a folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"'{folder}' has no config.json; it is not a folder written by mlx-audio-convert")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e}); convert the model again") from None
    meta = config.get("mlx_audio_generate") if isinstance(config, dict) else None
    if not isinstance(meta, dict):
        raise UserError(f"'{folder}' was not written by mlx-audio-convert; convert the checkpoint first")
    if meta.get("family") != family:
        raise UserError(
            f"'{folder}' holds a {meta.get('family')} model, not {family}; pass --model {meta.get('family')}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"'{folder}' was converted by another version of this tool; convert it again")
    return folder, config


def load_weights(model: nn.Module, folder: Path, config: dict[str, Any] | None = None) -> None:
    """Load model.safetensors strictly: every parameter present, nothing extra, shapes checked. A quantized
    folder (config metadata `quantization`) has the same layers quantized first, so it also loads strictly."""
    weights = load_safetensors(folder / "model.safetensors")
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    meta = config.get("mlx_audio_generate") or {}
    apply_saved_quantization(model, weights, meta, str(folder))
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(
            f"'{folder}/model.safetensors' does not match its config ({e}); convert again"
        ) from None
    model.eval()
