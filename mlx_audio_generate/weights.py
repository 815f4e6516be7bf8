"""Reading reference checkpoints and writing/reading ours: the one place that touches weight files.

- Safetensors are read with MLX (bf16-safe). Pickle checkpoints (`pytorch_model*.bin`) are only read
  through `torch.load(weights_only=True)`, which refuses to execute code; without torch that is a clear error.
- `Checkpoint` keeps strict key accounting: converters `take()` what they use, and `finish()` fails naming
  every tensor that was neither used nor on the converter's explicit ignore list.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import UserError

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


def _load_safetensors(path: Path) -> dict[str, mx.array]:
    try:
        return dict(mx.load(str(path)))
    except Exception as e:  # mlx raises RuntimeError/ValueError for truncated or corrupt files
        raise UserError(
            f"cannot read {path}: not a valid safetensors file ({e}); re-download or re-convert it"
        ) from None


def _load_torch_bin(path: Path) -> dict[str, mx.array]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path.name} is a pickle checkpoint; reading it safely needs PyTorch "
            "(`pip install 'mlx-audio-generate[torch]'`), or use a repo that ships safetensors"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {path} safely with torch.load(weights_only=True): {e}") from None
    out = {}
    for k, v in state.items():
        if not hasattr(v, "detach"):
            continue
        v = v.detach()
        if v.dtype == torch.bfloat16:
            out[k] = mx.array(v.float().numpy()).astype(mx.bfloat16)
        else:
            out[k] = mx.array(v.numpy())
    return out


def read_tensors(folder: Path, stem: str = "model", allow_pickle: bool = True) -> dict[str, mx.array]:
    """All tensors of a checkpoint folder: `{stem}.safetensors`, sharded safetensors, or pickle .bin files."""
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    files: list[Path]
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
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

    def take(self, key: str) -> mx.array:
        if key not in self.tensors:
            raise UserError(f"{self.name} lacks tensor '{key}': not a checkpoint of the expected model")
        self.used.add(key)
        return self.tensors[key]

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


def atomic_write(path: Path, write, suffix: str = "") -> None:
    """Call `write(tmp_path)` then rename into place, so a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
