"""Conversion entry point shared by both families: fetch, detect, convert into a temp dir, move into place."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError
from .hub import detect_family, fetch
from .weights import make_temp_dir


def convert(
    model: str,
    output: str | Path,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    t5: str | None = None,
    force: bool = False,
) -> Path:
    """Convert `model` (repo id or folder) into `output`; the folder appears only once complete."""
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise UserError(f"--output '{output}' exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"--output '{output}' is not empty; pass --force to overwrite it")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create '{parent}': {e.strerror or e}") from None
    src = fetch(model, trust_remote_code=trust_remote_code)
    family = detect_family(src)
    try:
        tmp = make_temp_dir(parent, output.name)
    except OSError as e:
        raise UserError(f"cannot write into '{parent}': {e.strerror or e}") from None
    try:
        if family == "musicgen":
            from .musicgen.convert import convert_musicgen

            convert_musicgen(src, tmp, dtype=dtype, source=model)
        else:
            from .stable_audio.convert import convert_stable_audio

            t5_src = fetch(t5 or _default_t5(src), trust_remote_code=trust_remote_code)
            convert_stable_audio(src, tmp, dtype=dtype, source=model, t5_folder=t5_src)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output


def _default_t5(src: Path) -> str:
    # stable-audio-open-1.0 ships its T5 in a diffusers-style `text_encoder/` folder; small does not.
    if (src / "text_encoder" / "config.json").is_file() and (src / "tokenizer").is_dir():
        return str(src)
    from .hub import T5_BASE_REPO

    return T5_BASE_REPO
