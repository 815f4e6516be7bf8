"""Model names -> ready converted folders: short names, repo ids, converted or reference folders.

On first use of a short name or repo id the checkpoint is fetched through the Hugging Face cache (HF_HOME,
HF_TOKEN for gated repos, resumable, HF_HUB_OFFLINE), converted once into our cache
(`$MLX_AUDIO_GENERATE_CACHE`, default `~/.cache/mlx-audio-generate`), and reused afterwards. A conversion is
written to a temp folder and renamed into place, so an interrupted one never leaves a broken cache entry.

A local reference folder is keyed by its path *and* what it holds (`content_key`): after its weights or
configs change, the next run converts again instead of reusing a stale conversion. The cache only ever
removes its own entries (folders holding our config.json metadata, or empty ones).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import sys
from pathlib import Path

from . import registry
from .converted import FORMAT_VERSION, is_converted, read_meta
from .errors import UserError
from .hub import did_you_mean, is_repo_id
from .progress import OnStage

# content_key's bounds: a checkpoint is a handful of files a few folders deep; a huge tree (someone's home
# folder named by mistake) is fingerprinted on its first files, breadth-first, so the top-level configs and
# weights that conversions read always count.
FINGERPRINT_MAX_FILES = 4096
FINGERPRINT_MAX_DEPTH = 4
_CONTENT_DIGITS = 12


def cache_root() -> Path:
    env = os.environ.get("MLX_AUDIO_GENERATE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx-audio-generate"


def content_key(folder: Path) -> str:
    """A digest of a local checkpoint folder's content identity: relative path, size and mtime_ns of each
    regular file (symlinks followed: Hugging Face snapshots link into blobs/), hidden names skipped (.git,
    .cache), walked breadth-first within FINGERPRINT_MAX_DEPTH levels and FINGERPRINT_MAX_FILES files."""
    folder = Path(folder)
    skip = {cache_root().expanduser().resolve()}
    digest = hashlib.sha256()
    level, depth, count = [folder], 0, 0
    while level and depth <= FINGERPRINT_MAX_DEPTH and count < FINGERPRINT_MAX_FILES:
        below = []
        for d in level:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.startswith(".") or count >= FINGERPRINT_MAX_FILES:
                    continue
                try:
                    st = os.stat(e.path)
                except OSError:  # a dangling link: nothing a conversion could read
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if Path(e.path).resolve() not in skip:
                        below.append(Path(e.path))
                elif stat.S_ISREG(st.st_mode):
                    rel = Path(e.path).relative_to(folder).as_posix()
                    digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    count += 1
        level, depth = below, depth + 1
    return digest.hexdigest()[:_CONTENT_DIGITS]


def cache_dir(model: str, dtype: str | None) -> Path:
    """Where the conversion of `model` (repo id or local reference folder) in `dtype` lives: repo ids by
    name; local folders by absolute path, with their `content_key` in the entry's name."""
    if is_repo_id(model) and not Path(model).expanduser().exists():
        return cache_root() / model.replace("/", "--") / (dtype or "original")
    folder = Path(model).expanduser().resolve()
    key = f"local--{folder.name}--{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
    return cache_root() / key / f"{dtype or 'original'}--{content_key(folder)}"


def cached_conversion(repo: str, dtype: str | None = None, root: Path | None = None) -> Path | None:
    """The usable conversion of repo id `repo` in `dtype` in the cache at `root` (default: cache_root()),
    or None when there is none (yet)."""
    base = cache_root() if root is None else Path(root).expanduser()
    target = base / repo.replace("/", "--") / (dtype or "original")
    return target if _usable(target) else None


def _ours(folder: Path) -> bool:
    """A folder the cache may remove: one written by this tool (our config.json metadata), or empty."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if read_meta(folder) is not None:
        return True
    try:
        return not any(folder.iterdir())
    except OSError:
        return False


def _usable(folder: Path) -> bool:
    found = read_meta(folder)
    return is_converted(folder) and found is not None and found[1].get("format_version") == FORMAT_VERSION


def _remove_superseded(target: Path) -> None:
    """Drop the conversions of the same local folder's earlier contents (same dtype), now stale, and the
    entry of the path-only layout of earlier versions (named just the dtype)."""
    base = target.name.rsplit("--", 1)[0]
    pattern = re.compile(rf"{re.escape(base)}(--[0-9a-f]{{{_CONTENT_DIGITS}}})?")
    for entry in target.parent.iterdir():
        if entry.name != target.name and pattern.fullmatch(entry.name) and _ours(entry):
            shutil.rmtree(entry, ignore_errors=True)


def resolve(
    model: str,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    quiet: bool = False,
    on_stage: OnStage | None = None,
) -> Path:
    """A converted folder for `model`: a converted folder as is; otherwise fetched + converted once.
    `on_stage`: the fetch's and conversion's progress (convert.convert), for callers that draw their own."""
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
        guess = did_you_mean(model)
        if guess:
            raise UserError(f"unknown model '{model}'; {guess} (or a HF repo id, or a folder)")
        raise UserError(f"unknown model '{model}': use one of {', '.join(names)}, a HF repo id, or a folder")
    target = cache_dir(repo, dtype)
    if _usable(target):
        return target
    if (target.exists() or target.is_symlink()) and not _ours(target):
        raise UserError(f"cache entry '{target}' holds files this tool did not write; move them away")
    from .convert import convert, remove_stale_partials

    if not quiet:
        # the announcement of what is coming; convert() then says "downloading..." and draws the "converting"
        # bar, each when it starts
        print(
            f"first use of {repo}: fetched and converted for MLX once (cached in {target})", file=sys.stderr
        )
    # Staged at the top of the cache, not inside the entry's folder, and that folder made only once the
    # conversion is complete: a failed download or a folder that is no checkpoint leaves nothing behind.
    key = f"{target.parent.name}--{target.name}"
    remove_stale_partials(cache_root(), key)  # what killed conversions left behind
    remove_stale_partials(target.parent, target.name)  # (and those of earlier versions, staged beside)
    staging = cache_root() / f".{key}.{os.getpid()}"
    try:
        convert(
            repo, staging, dtype=dtype, trust_remote_code=trust_remote_code, force=True, quiet=quiet,
            on_stage=on_stage,
        )  # fmt: skip
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the cache folder '{target.parent}': {e.strerror or e}") from None
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first, or an old entry of ours is in the way
            # (another format version, or a partial one): only then is it replaced.
            if not _usable(target):
                if not _ours(target):
                    raise UserError(
                        f"cache entry '{target}' holds files this tool did not write; move them away"
                    ) from None
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        if _ours(staging):
            shutil.rmtree(staging, ignore_errors=True)
    if target.name != (dtype or "original"):
        _remove_superseded(target)
    return target
