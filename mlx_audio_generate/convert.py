"""Conversion entry point shared by every family: fetch, detect, convert into a temp dir, move into place."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import registry
from .converted import is_converted, malformed_files, read_meta
from .errors import UserError
from .family import ConvertJob
from .hub import check_json_files, fetch, is_repo_id
from .progress import HubMeter, OnStage, tqdm_bar
from .quantize import check_options
from .weights import make_temp_dir


def _check_output(output: Path, force: bool) -> None:
    """`--output` may be new, an empty folder, or (with `force`) a previous conversion: never anything else
    (a folder of someone's files is never deleted)."""
    if output.is_symlink():
        raise UserError(f"--output '{output}' is a symbolic link; name the folder itself")
    if output.exists() and not output.is_dir():
        raise UserError(f"--output '{output}' exists and is not a folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not force:
        raise UserError(f"--output '{output}' is not empty; pass --force to overwrite it")
    if read_meta(output) is None:
        raise UserError(
            f"--output '{output}' holds files that are not a conversion by mlx-audio-convert; --force only "
            "replaces a previous conversion (or an empty folder): choose another --output"
        )


def _check_apart(output: Path, source: Path) -> None:
    """The output must not be the checkpoint being read, nor a folder containing it, nor one inside it."""
    out, src = output.resolve(), Path(source).resolve()
    if out == src or out in src.parents or src in out.parents:
        where = "is" if out == src else "contains" if out in src.parents else "is inside"
        raise UserError(
            f"--output '{output}' {where} the checkpoint being converted ('{source}'); "
            "choose another --output"
        )


def convert(
    model: str,
    output: str | Path,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    force: bool = False,
    quantize_bits: int | None = None,
    quantize_group_size: int = 64,
    quiet: bool = True,
    options: Mapping[str, Any] | None = None,
    on_stage: OnStage | None = None,
    **family_options: Any,
) -> Path:
    """Convert `model` (repo id or folder) into `output`; the folder appears only once complete.
    `quantize_bits` (None, 4 or 8) quantizes the family's core (LM / DiT) linear layers in groups of
    `quantize_group_size`. `options` (or keywords): the family's convert settings (`Family.convert_settings`,
    e.g. t5=...). Unless `quiet`, a tqdm bar on stderr counts the tensors converted (downloads show Hugging
    Face's). `on_stage(stage, done, total)` gets the same progress instead of bars: "files" and "download"
    (bytes) of each checkpoint fetched, then "convert" (tensors); the server's fetches show it (fetcher.py).
    `force` replaces a previous conversion in `output`, never other files nor the checkpoint."""
    check_options(quantize_bits, quantize_group_size)
    options = {**(options or {}), **family_options}
    output = Path(output).expanduser()
    _check_output(output, force)
    parent = output.parent
    meter = HubMeter.reporting(on_stage) if on_stage is not None else None
    src = _fetch_announced(model, trust_remote_code, quiet, tqdm_class=meter)
    _check_apart(output, src)
    _refuse_converted(model, src)
    family = registry.detect(src)
    known = {st.name for st in family.convert_settings}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in known)
    if unknown:
        raise UserError(f"--{unknown[0].replace('_', '-')} does not apply to {family.label} checkpoints")
    check_json_files(src)

    def fetch_more(name: str, patterns: list[str] | None = None) -> Path:
        # another checkpoint the conversion reads (e.g. a text encoder); `patterns`: only those files
        folder = _fetch_announced(name, trust_remote_code, quiet, patterns, tqdm_class=meter)
        _check_apart(output, folder)
        check_json_files(folder)
        return folder

    # only now, with a checkpoint in hand: a failed download or an unknown folder leaves no folder behind
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create '{parent}': {e.strerror or e}") from None
    remove_stale_partials(parent, output.name)
    try:
        # the pid in the name lets a later run remove what a killed conversion left (remove_stale_partials)
        tmp = make_temp_dir(parent, f"{output.name}.{os.getpid()}")
    except OSError as e:
        raise UserError(f"cannot write into '{parent}': {e.strerror or e}") from None
    job = ConvertJob(
        src=src,
        out=tmp,
        dtype=dtype,
        source=str(model),
        quantize_bits=quantize_bits,
        quantize_group_size=quantize_group_size,
        progress=(
            tqdm_bar(f"converting {_shown_source(model)}", quiet, unit="tensor")
            if on_stage is None
            else lambda done, total: on_stage("convert", done, total)
        ),
        options=options,
        fetch=fetch_more,
    )
    # a killed run leaves this beside the output; its name matches remove_stale_partials' pattern
    old = parent / f".{output.name}.{os.getpid()}.replaced"
    try:
        with malformed_files(f"cannot convert '{model}'", str(model), family.label):
            family.convert(job)
        _check_output(output, force)  # again: the folder may have changed during a long conversion
        if output.exists():
            output.rename(old)  # the previous conversion stays whole until the new one is in place
        tmp.rename(output)
    except OSError as e:  # disk full, permissions, ... while writing the conversion: nothing is left behind
        if old.exists() and not output.exists():
            old.rename(output)
        raise UserError(f"cannot write the conversion into '{parent}': {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and output.exists():
            shutil.rmtree(old, ignore_errors=True)
    return output


def _fetch_announced(
    model: str,
    trust_remote_code: bool,
    quiet: bool,
    patterns: list[str] | None = None,
    tqdm_class: type | None = None,
) -> Path:
    """`hub.fetch`, saying "downloading..." first when it goes to the hub (a download is most of the wait
    on first use; the "converting" bar comes after it)."""
    if not quiet and is_repo_id(model) and not Path(model).expanduser().is_dir():
        print(f"downloading {model} (or reusing the Hugging Face cache)...", file=sys.stderr, flush=True)
    return fetch(model, trust_remote_code=trust_remote_code, patterns=patterns, tqdm_class=tqdm_class)


def _shown_source(model: str) -> str:
    """A repo id as itself, a local folder by its name (the bar's label)."""
    return model if is_repo_id(model) and not Path(model).expanduser().is_dir() else Path(model).name


def _refuse_converted(model: str, src: Path) -> None:
    """A folder this tool already wrote is not a checkpoint to convert again: say how to use it."""
    if not is_converted(src):
        return
    family = read_meta(src)[1]["family"]  # type: ignore[index]
    raise UserError(
        f"'{model}' is already converted for MLX (a {registry.get(family).label} folder written by "
        f"mlx-audio-convert); use it directly: mlx-audio-generate --model '{model}' (or --model {family} "
        f"--weights-dir '{model}')"
    )


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
            if _flat(entry):  # our partials hold files only: a folder with subfolders is someone else's
                shutil.rmtree(entry, ignore_errors=True)


def _flat(folder: Path) -> bool:
    try:
        return not any(e.is_dir() for e in folder.iterdir())
    except OSError:
        return False
