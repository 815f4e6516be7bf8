"""Conversion entry point shared by both families: fetch, detect, convert into a temp dir, move into place."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .errors import UserError
from .hub import detect_family, fetch
from .progress import tqdm_bar
from .quantize import check_options
from .weights import make_temp_dir


def convert(
    model: str,
    output: str | Path,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    t5: str | None = None,
    force: bool = False,
    quantize_bits: int | None = None,
    quantize_group_size: int = 64,
    quiet: bool = True,
) -> Path:
    """Convert `model` (repo id or folder) into `output`; the folder appears only once complete.
    `quantize_bits` (None, 4 or 8) quantizes the LM / DiT linear layers in groups of `quantize_group_size`.
    Unless `quiet`, a tqdm bar on stderr counts the tensors converted (downloads show Hugging Face's)."""
    check_options(quantize_bits, quantize_group_size)
    q = {"quantize_bits": quantize_bits, "quantize_group_size": quantize_group_size}
    q["progress"] = tqdm_bar(f"converting {Path(str(model)).name}", quiet, unit="tensor")
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
    remove_stale_partials(parent, output.name)
    try:
        # the pid in the name lets a later run remove what a killed conversion left (remove_stale_partials)
        tmp = make_temp_dir(parent, f"{output.name}.{os.getpid()}")
    except OSError as e:
        raise UserError(f"cannot write into '{parent}': {e.strerror or e}") from None
    try:
        if family == "musicgen":
            from .musicgen.convert import convert_musicgen

            convert_musicgen(src, tmp, dtype=dtype, source=model, **q)
        else:
            from .stable_audio.convert import convert_stable_audio

            t5_src = fetch(t5 or _default_t5(src), trust_remote_code=trust_remote_code)
            convert_stable_audio(src, tmp, dtype=dtype, source=model, t5_folder=t5_src, **q)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except OSError as e:  # disk full, permissions, ... while writing the conversion: nothing is left behind
        raise UserError(f"cannot write the conversion into '{parent}': {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists (another user's)
        return True
    return True


def remove_stale_partials(parent: Path, name: str) -> None:
    """Remove the partial folders of `name` in `parent` left by killed conversions on this machine.

    They are `.{name}.{pid}` (registry staging) and `.{name}.{pid}.XXXXXXXX` (convert's temp folder, and the
    registry's `..{name}.{pid}.{pid}.XXXXXXXX`); only folders whose pid is no longer running are removed,
    so a conversion in progress in another process is never touched."""
    pattern = re.compile(rf"\.{{1,2}}{re.escape(name)}\.(\d+)(?:\.\d+)?(?:\.[a-z0-9_]{{8}})?")
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _default_t5(src: Path) -> str:
    # stable-audio-open-1.0 ships its T5 in a diffusers-style `text_encoder/` folder; small does not.
    if (src / "text_encoder" / "config.json").is_file() and (src / "tokenizer").is_dir():
        return str(src)
    from .hub import T5_BASE_REPO

    return T5_BASE_REPO
