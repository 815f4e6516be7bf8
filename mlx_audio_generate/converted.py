"""The converted-folder format, shared by every family: one writer, one reader.

A converted folder holds `model.safetensors` (our parameter names), `config.json` (the family's own config
plus an `mlx_audio_generate` entry: family, format_version, dtype, source, quantization) and the files the
model needs at run time (tokenizers, feature-extractor settings). `write_folder` writes one; `open_folder`
opens one once (config.json parsed a single time) and hands down its family and config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import UserError
from .quantize import apply_saved_quantization
from .weights import load_safetensors, save_safetensors

if TYPE_CHECKING:
    from .family import AudioModel

FORMAT_VERSION = 1
META_KEY = "mlx_audio_generate"

# What malformed config values raise deep inside model construction and weight mapping (a missing key, a null
# or zero size, a list where an object belongs): `malformed_files` turns them into one line naming the folder.
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError)


@dataclass(frozen=True)
class Converted:
    """An opened converted folder: where it is, its family name, its config.json and our metadata entry."""

    folder: Path
    family: str
    config: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.config[META_KEY]


def write_folder(
    out: Path,
    family: str,
    config: Mapping[str, Any],
    weights: dict[str, mx.array],
    meta: Mapping[str, Any],
    files: Iterable[Path] = (),
) -> None:
    """Write a converted folder into `out` (an existing temp folder): the weights, `config` with our metadata
    entry (family, format version and `meta`: dtype, source, quantization, ...) and copies of `files`."""
    out = Path(out)
    save_safetensors(out / "model.safetensors", weights)
    body = dict(config)
    body[META_KEY] = {"family": family, "format_version": FORMAT_VERSION, **meta}
    (out / "config.json").write_text(json.dumps(body, indent=2))
    for f in files:
        shutil.copyfile(f, out / Path(f).name)


def read_meta(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(config, metadata entry) of a folder written by this tool, or None if it is not one."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    meta = config.get(META_KEY) if isinstance(config, dict) else None
    return (config, meta) if isinstance(meta, dict) else None


def is_converted(folder: Path) -> bool:
    """A folder written by this tool, of a family this version knows, with its weights file."""
    from . import registry

    found = read_meta(folder)
    return (
        found is not None
        and isinstance(found[1].get("family"), str)
        and found[1]["family"] in registry.families()
        and (Path(folder) / "model.safetensors").is_file()
    )


def open_folder(folder: str | Path, family: str | None = None) -> Converted:
    """Validate a converted folder (of `family`, if given) and return it opened; clear errors otherwise."""
    from . import registry

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
    meta = config.get(META_KEY) if isinstance(config, dict) else None
    if not isinstance(meta, dict):
        raise UserError(f"'{folder}' was not written by mlx-audio-convert; convert the checkpoint first")
    found = meta.get("family")
    if not isinstance(found, str) or found not in registry.families():
        raise UserError(f"'{folder}' holds a model of an unknown family ({found!r}); convert it again")
    if family is not None and found != family:
        raise UserError(f"'{folder}' holds a {found} model, not {family}; pass --model {found}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"'{folder}' was converted by another version of this tool; convert it again")
    return Converted(folder, found, config)


def check_dtypes(model: nn.Module, weights: Mapping[str, mx.array], where: str) -> None:
    """Every stored tensor must have the kind of its parameter: floating where the parameter is floating
    (any precision), the exact integer dtype otherwise (quantized `.weight`s); an int or bool tensor in a
    floating parameter would load and make noise."""
    params = dict(tree_flatten(model.parameters()))
    for key, value in weights.items():
        param = params.get(key)
        if param is None:
            continue  # unknown names: the strict load reports them
        if mx.issubdtype(param.dtype, mx.floating):
            ok = mx.issubdtype(value.dtype, mx.floating)
        else:
            ok = value.dtype == param.dtype
        if not ok:
            got, want = (str(d).removeprefix("mlx.core.") for d in (value.dtype, param.dtype))
            raise UserError(f"'{where}' stores tensor '{key}' as {got}, expected {want}; convert again")


def load_weights(model: nn.Module, conv: Converted) -> None:
    """Load model.safetensors strictly: every parameter present, nothing extra, shapes and dtypes checked.
    A quantized folder (metadata `quantization`) has the same layers quantized first, so it also loads
    strictly."""
    weights = load_safetensors(conv.folder / "model.safetensors")
    apply_saved_quantization(model, weights, conv.meta, str(conv.folder))
    check_dtypes(model, weights, f"{conv.folder}/model.safetensors")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(
            f"'{conv.folder}/model.safetensors' does not match its config ({e}); convert again"
        ) from None
    model.eval()


@contextmanager
def malformed_files(what: str, where: str, label: str) -> Iterator[None]:
    """The conversion / load boundary (`what`: "cannot convert 'X'"; `where`: the folder): a MALFORMED
    exception from inside becomes `UserError(what: ... (Type: detail))`, the exception type kept in the
    message (and chained, for --debug) so that a real bug still reads as one instead of vanishing; a
    UserError that does not say which folder it is about gets `what` in front."""
    try:
        yield
    except UserError as e:
        if where in str(e):
            raise
        raise UserError(f"{what}: {e}") from e
    except MALFORMED as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(
            f"{what}: its files do not describe a valid {label} model ({type(e).__name__}: {detail})"
        ) from e


def load_model(conv: Converted) -> AudioModel:
    """The family's model for an opened converted folder; malformed files give a UserError naming it."""
    from . import registry

    family = registry.get(conv.family)
    with malformed_files(f"cannot load '{conv.folder}'", str(conv.folder), family.label):
        return family.load(conv)
