"""Model names -> ready converted folders: short names, repo ids, converted or reference folders.

On first use of a short name or repo id the checkpoint is fetched through the Hugging Face cache (HF_HOME,
HF_TOKEN for gated repos, resumable, HF_HUB_OFFLINE), converted once into our cache
(`$MLX_AUDIO_GENERATE_CACHE`, default `~/.cache/mlx-audio-generate`), and reused afterwards. A conversion is
written to a temp folder and renamed into place, so an interrupted one never leaves a broken cache entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from . import registry
from .converted import is_converted
from .errors import UserError
from .hub import is_repo_id


def cache_root() -> Path:
    env = os.environ.get("MLX_AUDIO_GENERATE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx-audio-generate"


def cache_dir(model: str, dtype: str | None) -> Path:
    """Where the conversion of `model` (repo id or local reference folder) in `dtype` lives."""
    if is_repo_id(model) and not Path(model).expanduser().exists():
        key = model.replace("/", "--")
    else:  # a local reference checkpoint: keyed by its absolute path
        path = str(Path(model).expanduser().resolve())
        key = f"local--{Path(path).name}--{hashlib.sha1(path.encode()).hexdigest()[:10]}"
    return cache_root() / key / (dtype or "original")


def resolve(
    model: str,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    quiet: bool = False,
) -> Path:
    """A converted folder for `model`: a converted folder as is; otherwise fetched + converted once."""
    fams = registry.families()
    if model in fams:
        example = fams[model].example
        raise UserError(f"--model {model} needs --weights-dir; or name a checkpoint, e.g. --model {example}")
    names = registry.short_names()
    repo = names.get(model, model)
    path = Path(repo).expanduser()
    if path.is_dir() and is_converted(path):
        return path
    if not path.is_dir() and not is_repo_id(repo):
        raise UserError(f"unknown model '{model}': use one of {', '.join(names)}, a HF repo id, or a folder")
    target = cache_dir(repo, dtype)
    if is_converted(target):
        return target
    from .convert import convert, remove_stale_partials

    if not quiet:
        print(f"converting {repo} for MLX (once; cached in {target})", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent, target.name)  # what killed conversions left behind
    staging = target.parent / f".{target.name}.{os.getpid()}"
    try:
        convert(repo, staging, dtype=dtype, trust_remote_code=trust_remote_code, force=True, quiet=quiet)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first (or a stale partial entry is there).
            if not is_converted(target):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
