"""Reading reference checkpoints and writing/reading ours: the one place that touches weight files.

- Safetensors are read with MLX (bf16-safe). Pickle checkpoints (`pytorch_model*.bin`) are only read
  through `torch.load(weights_only=True)`, which refuses to execute code; without torch that is a clear error.
- `Checkpoint` keeps strict key accounting: converters `take()` what they use, and `finish()` fails naming
  every tensor that was neither used nor on the converter's explicit ignore list.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import resource
import signal
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import UserError

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}

# How to get PyTorch for reading pickles (the package is not on PyPI, so no `pip install
# mlx-audio-generate[torch]`); the CPU build is the small one, and all a pickle read needs.
TORCH_INSTALL_HINT = (
    "pip install torch (Linux without an NVIDIA GPU: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu, a much smaller CPU build)"
)


def have_torch() -> bool:
    """Whether PyTorch can be imported (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _load_safetensors(path: Path) -> dict[str, mx.array]:
    try:
        return dict(mx.load(str(path)))
    except Exception as e:  # mlx raises RuntimeError/ValueError for truncated or corrupt files
        raise UserError(
            f"cannot read {path}: not a valid safetensors file ({e}); re-download or re-convert it"
        ) from None


def torch_load(path: Path, kind: str = "pickle checkpoint", instead: str = "", refused: str = "") -> Any:
    """`torch.load(path, weights_only=True)`, the one way a pickle is read (it refuses to execute code), or a
    one-line UserError: without PyTorch (naming the file a `kind`, then `instead`, e.g. ", or use ...") or
    when torch refuses or cannot read it (then `refused`, e.g. "; use ...")."""
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path.name} is a {kind}; reading it safely needs PyTorch ({TORCH_INSTALL_HINT}){instead}"
        ) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot read {path} safely with torch.load(weights_only=True): {e}{refused}"
        ) from None


def _load_torch_bin(path: Path) -> dict[str, mx.array]:
    state = torch_load(path, instead=", or use a repo that ships safetensors")
    import torch  # present: torch_load needed it

    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a dict of tensors; not a checkpoint")
    out = {}
    for k, v in state.items():
        if not hasattr(v, "detach"):
            continue
        v = v.detach()
        try:
            if v.dtype == torch.bfloat16:
                out[str(k)] = mx.array(v.float().numpy()).astype(mx.bfloat16)
            else:
                out[str(k)] = mx.array(v.numpy())
        except (TypeError, ValueError, RuntimeError) as e:  # e.g. float8 or sparse tensors numpy cannot hold
            raise UserError(f"cannot read tensor '{k}' of {path} ({v.dtype}): {e}") from None
    return out


def _index_shards(folder: Path, index: Path) -> list[Path]:
    """The shard files a `*.safetensors.index.json` names: plain file names inside `folder` only.

    The index is a downloaded file: an absolute path, a `..` component or a symlink that resolves outside the
    checkpoint would pull any local file into the conversion. In a Hugging Face cache snapshot the files are
    symlinks into the repo's own `blobs/` folder, which is allowed."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {index}: not a valid JSON index ({e}); re-download the checkpoint"
        ) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} lacks a 'weight_map' object (tensor name -> shard file); re-download it")
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # huggingface_hub's cache layout: snapshots/<rev>/ -> ../../blobs
        roots.append(folder.parent.parent.resolve() / "blobs")
    shards = []
    odd = next((v for v in weight_map.values() if not isinstance(v, str)), None)
    if odd is not None:
        raise UserError(f"{index} maps a tensor to {odd!r}, not a shard file name; re-download it")
    names = set(weight_map.values())
    for name in sorted(names):
        rel = Path(name)
        if not name or "\x00" in name or rel.is_absolute() or ".." in rel.parts:
            raise UserError(
                f"{index} names shard {name!r}: shards must be files inside the checkpoint folder"
            )
        path = folder / rel
        target = path.resolve()
        if not any(target.is_relative_to(root) for root in roots):
            raise UserError(f"{index} names shard {name!r}, which resolves outside the checkpoint ({target})")
        shards.append(path)
    return shards


def read_tensors(folder: Path, stem: str = "model", allow_pickle: bool = True) -> dict[str, mx.array]:
    """All tensors of a checkpoint folder: `{stem}.safetensors`, sharded safetensors, or pickle .bin files."""
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    files: list[Path]
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = _index_shards(folder, index)
    else:
        files = sorted(folder.glob(f"{stem}*.safetensors"))
    if files:
        tensors: dict[str, mx.array] = {}
        for f in files:
            if not f.is_file():
                raise UserError(f"checkpoint shard {f} is missing; re-download the checkpoint")
            tensors.update(_load_safetensors(f))
        return tensors
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        if not allow_pickle:
            raise UserError(f"{folder} holds only pickle checkpoints; refusing to read them")
        tensors = {}
        for f in bins:
            tensors.update(_load_torch_bin(f))
        return tensors
    raise UserError(f"no weights found in {folder} (expected {stem}.safetensors or pytorch_model*.bin)")


def fold_weight_norm(g: mx.array, v: mx.array) -> mx.array:
    """torch weight_norm (dim=0): w = g * v / ||v||, the norm over every axis but the first."""
    g32, v32 = g.astype(mx.float32), v.astype(mx.float32)
    axes = tuple(range(1, v.ndim))
    norm = mx.sqrt(mx.sum(v32 * v32, axis=axes, keepdims=True))
    return (g32.reshape(norm.shape) * v32 / norm).astype(v.dtype)


class Checkpoint:
    """A dict of reference tensors with strict accounting of which ones a converter used."""

    def __init__(self, tensors: dict[str, mx.array], name: str = "checkpoint"):
        self.tensors = tensors
        self.name = name
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def take(self, key: str, floating: bool = True) -> mx.array:
        """The tensor `key`, marked used. Weights must be floating point (`floating=False` for the rare
        genuinely integer tensor): an int or bool tensor would load and generate noise."""
        if key not in self.tensors:
            raise UserError(f"{self.name} lacks tensor '{key}': not a checkpoint of the expected model")
        value = self.tensors[key]
        if floating and not mx.issubdtype(value.dtype, mx.floating):
            kind = str(value.dtype).removeprefix("mlx.core.")
            raise UserError(
                f"{self.name}: tensor '{key}' is {kind}, not floating point; not a valid checkpoint"
            )
        self.used.add(key)
        return value

    def take_conv_weight(self, prefix: str) -> mx.array:
        """A conv weight at `prefix`, folding weight norm in any of its three saved styles."""
        if f"{prefix}.weight" in self.tensors:
            return self.take(f"{prefix}.weight")
        for g_key, v_key in (
            (f"{prefix}.weight_g", f"{prefix}.weight_v"),
            (f"{prefix}.parametrizations.weight.original0", f"{prefix}.parametrizations.weight.original1"),
        ):
            if g_key in self.tensors:
                return fold_weight_norm(self.take(g_key), self.take(v_key))
        raise UserError(f"{self.name} lacks a weight for '{prefix}': not a checkpoint of the expected model")

    def finish(self, ignore: Iterable[str] = ()) -> None:
        """Fail naming every tensor that was neither used nor matched by an `ignore` regex."""
        patterns = [re.compile(p) for p in ignore]
        left = sorted(
            k for k in self.tensors if k not in self.used and not any(p.fullmatch(k) for p in patterns)
        )
        if left:
            shown = ", ".join(left[:8]) + (f" (+{len(left) - 8} more)" if len(left) > 8 else "")
            raise UserError(f"{self.name} has {len(left)} tensor(s) the converter does not know: {shown}")


def torch_conv1d(w: mx.array) -> mx.array:
    """PyTorch Conv1d weight (out, in, k) -> MLX conv1d (out, k, in)."""
    return w.transpose(0, 2, 1)


def torch_conv_transpose1d(w: mx.array) -> mx.array:
    """PyTorch ConvTranspose1d weight (in, out, k) -> MLX conv_transpose1d (out, k, in)."""
    return w.transpose(1, 2, 0)


def cast(weights: dict[str, mx.array], dtype: str | None) -> dict[str, mx.array]:
    """Cast floating tensors to `dtype` (None keeps them); integer tensors are left alone."""
    if dtype is None:
        return weights
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    target = DTYPES[dtype]
    return {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}


def dtype_name(weights: dict[str, mx.array]) -> str:
    """The floating dtype(s) of a weight dict, as config metadata records them ("float16", "bf16+fp32")."""
    floats = [v.dtype for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)]
    return "+".join(sorted({str(d).removeprefix("mlx.core.") for d in floats}))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, name: str) -> Path:
    """A temp folder beside its final place (same file system, so the final rename is atomic)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


# Temp names are `.<name>.<random><suffix>` beside the target. A long name is cut (with a hash of the whole
# name) so that the temp name stays far below NAME_MAX (255 bytes) even where the target nearly fills it.
_TEMP_NAME_BYTES = 100
_TEMP_RANDOM = r"[a-z0-9_]{6,}"  # tempfile's random part (8 characters today)


def temp_prefix(path: Path) -> str:
    """How every temp name of `atomic_write(path)` starts."""
    raw = os.fsencode(Path(path).name)
    if len(raw) <= _TEMP_NAME_BYTES:
        return f".{Path(path).name}."
    cut = os.fsdecode(raw[: _TEMP_NAME_BYTES - 9])
    return f".{cut}~{hashlib.sha1(raw).hexdigest()[:8]}."


def _temp_suffix(path: Path, suffix: str) -> str:
    # kept because some writers pick or append an extension (mx.save_safetensors adds ".safetensors")
    suffix = suffix or path.suffix
    return suffix if len(os.fsencode(suffix)) <= 16 else ".tmp"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM wait (are delivered on exit) while a temp file is created or removed, so an
    interruption never falls between creating the file and knowing its name."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _lost_errno(tmp: str) -> OSError | None:
    """The OSError behind a writer's RuntimeError (MLX and libsndfile drop errno): the file reached the
    process's file size limit (EFBIG), or the file system is full (ENOSPC). None if neither."""
    try:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and os.stat(tmp).st_size >= limit:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG), tmp)
        st = os.statvfs(os.path.dirname(tmp) or ".")
        if st.f_bavail * st.f_frsize < 1 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    except OSError:
        pass
    return None


def atomic_write(path: Path, write: Callable[[str], object], suffix: str = "") -> None:
    """Call `write(tmp_path)` then rename into place, so a crash never leaves a half-written file.

    Whatever stops the write (an error, KeyboardInterrupt, a SIGTERM turned into an exception by the CLI)
    removes the temp file; one left by a killed process is removed by `remove_stale_temps`. A writer's
    RuntimeError caused by a full disk or the file size limit is raised as that OSError."""
    path = Path(path)
    fd = tmp = None
    try:
        with _signals_held():
            fd, tmp = tempfile.mkstemp(
                dir=path.parent, prefix=temp_prefix(path), suffix=_temp_suffix(path, suffix)
            )
        # held until the rename: remove_stale_temps leaves a file alone while its writer lives
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            write(tmp)
        except RuntimeError as e:
            lost = _lost_errno(tmp)
            if lost is None:
                raise
            raise lost from e
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the file normal permissions
        os.replace(tmp, path)
        tmp = None
    finally:
        with _signals_held():
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
            if fd is not None:
                os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files `atomic_write(path)` left behind when its process was killed (those no live
    process holds locked); returns them. Only names of that exact form, only regular files."""
    path = Path(path)
    pattern = re.compile(re.escape(temp_prefix(path)) + _TEMP_RANDOM + r"(\.[A-Za-z0-9_]{1,15})?")
    try:
        names = [n for n in os.listdir(path.parent or ".") if pattern.fullmatch(n)]
    except OSError:
        return []
    removed = []
    for name in names:
        tmp = path.parent / name
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer is alive
            os.unlink(tmp)
            removed.append(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def save_safetensors(
    path: Path, weights: dict[str, mx.array], metadata: dict[str, str] | None = None
) -> None:
    mx.eval(weights)
    atomic_write(Path(path), lambda tmp: mx.save_safetensors(tmp, weights, metadata=metadata or {}))


def load_safetensors(path: Path) -> dict[str, mx.array]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} is missing; convert the model again with mlx-audio-convert")
    return _load_safetensors(path)


def to_numpy(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x)
