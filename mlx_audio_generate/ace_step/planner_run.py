"""The planner as `AceStep.generate` uses it: the `planner` setting -> a loaded Planner (kept per folder),
its metadata filling what the user left unset, its codes as the DiT's 25 Hz cover hints.

Setting values (family.py): "off"; "0.6B" / "1.7B" / "4B": the released LM fetched from Hugging Face (only
its files) and converted once into the cache (`<cache>/ace-step-planner/<size>`); a folder: a converted
planner folder as is, or a released LM folder converted once into the cache (keyed by its path and content).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

from ..errors import UserError
from .family import PLANNER_FILES, PLANNER_OFF, PLANNERS
from .planner import Planner
from .planner_model import convert_planner, is_converted_planner

_LOADED: dict[Path, Planner] = {}


def _fetch(size: str) -> Path:
    repo, sub = PLANNERS[size]
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("huggingface_hub is not installed") from None
    patterns = [f"{sub}/{p}" if sub else p for p in PLANNER_FILES]
    try:
        root = Path(snapshot_download(repo, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise UserError(f"Hugging Face repo '{repo}' not found") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"the {size} planner ({repo}) is not in the local Hugging Face cache and downloading is off or "
            "the hub is unreachable; connect, or pass --planner FOLDER"
        ) from None
    except OSError as e:
        raise UserError(f"could not download the {size} planner from '{repo}': {e}") from None
    return root / sub if sub else root


def planner_folder(value: str) -> Path | None:
    """The converted planner folder a setting value names (converting once when needed), None for off."""
    from ..resolve import cache_dir, cache_root

    value = value.strip()
    if value.lower() == PLANNER_OFF:
        return None
    if value in PLANNERS:
        target = cache_root() / "ace-step-planner" / value
        if not is_converted_planner(target):
            convert_planner(_fetch(value), target, source=f"{PLANNERS[value][0]}:{value}")
        return target
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"planner '{value}' is neither off, {', '.join(PLANNERS)} nor an existing folder (a 5 Hz LM)"
        )
    if is_converted_planner(folder):
        return folder
    target = cache_dir(str(folder), None)
    if not is_converted_planner(target):
        convert_planner(folder, target, source=str(folder.resolve()))
    return target


def load_planner(value: str | None) -> Planner | None:
    folder = planner_folder(value or PLANNER_OFF)
    if folder is None:
        return None
    key = folder.resolve()
    if key not in _LOADED:
        _LOADED.clear()  # one planner in memory at a time
        _LOADED[key] = Planner.from_folder(folder)
    return _LOADED[key]


def fill_from_plan(values: dict[str, Any], seconds: float | None, metadata: dict[str, Any]) -> float | None:
    """`_update_metadata_from_lm`: unset bpm, key, time signature, duration (and language, when "unknown")
    from the planner; values the LM wrote outside the settings' ranges are ignored. Returns the seconds."""
    from .family import BPM_MAX, BPM_MIN, KEYSCALES, LANGUAGES, MAX_SECONDS, MIN_SECONDS, TIME_SIGNATURES

    bpm = metadata.get("bpm")
    if values.get("bpm") is None and isinstance(bpm, int) and BPM_MIN <= bpm <= BPM_MAX:
        values["bpm"] = bpm
    if not values.get("keyscale") and metadata.get("keyscale") in KEYSCALES:
        values["keyscale"] = metadata["keyscale"]
    sig = str(metadata.get("timesignature", "")).split("/")[0]
    if not values.get("timesignature") and sig in TIME_SIGNATURES:
        values["timesignature"] = sig
    if values.get("language") in (None, "unknown") and metadata.get("language") in LANGUAGES:
        values["language"] = metadata["language"]
    duration = metadata.get("duration")
    if seconds is None and isinstance(duration, int) and MIN_SECONDS <= duration <= MAX_SECONDS:
        seconds = float(duration)
    return seconds


def codes_hints(conditioning: Any, codes: list[int], frames: int, silence: mx.array) -> mx.array:
    """(1, frames, C) hints: the codes' 25 Hz hints (`codes_to_hints`), cut to `frames` or padded with the
    silence latent (`_prepare_precomputed_lm_hints`)."""
    if not codes:
        raise UserError("the planner wrote no audio codes")
    hints = conditioning.codes_to_hints(mx.array(codes, dtype=mx.int32)[None, :, None])
    if hints.shape[1] >= frames:
        return hints[:, :frames]
    return mx.concatenate([hints, silence[None, : frames - hints.shape[1]].astype(hints.dtype)], axis=1)
