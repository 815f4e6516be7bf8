"""What the parity tests share: relative error = max|ours - ref| / max|ref| (shapes checked first), and the
folder of reference outputs to compare with (committed, or a live rerun of the reference)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest


def rel_err(ours, ref) -> float:
    """`ours` (an mx or numpy array) against a reference array, in float32 (bfloat16 goes through MLX)."""
    if isinstance(ours, mx.array):
        ours = ours.astype(mx.float32)
    o, r = np.array(ours, dtype=np.float32), np.asarray(ref)
    assert o.shape == r.shape, (o.shape, r.shape)
    return float(np.abs(o - r).max() / np.abs(r).max())


# Parity tests compare with reference outputs twice: the committed fixtures (always), and a live rerun of the
# reference code that made them (where its sources, ../shared/reference, are here). A fixture with
# `params=SOURCES` gets its folder from `reference_outputs`.
SOURCES = ("committed", "live")
NO_SOURCES = (
    "live reference run: the reference sources (../shared/reference) are not here; "
    "the committed reference outputs were checked"
)


def reference_outputs(source: str, committed: Path, live: Callable[[], Path] | Path | None) -> Path:
    """The folder of reference outputs for `source` (one of SOURCES): `committed`, or the live rerun of the
    reference (a folder it wrote, or `live()` to run it now; None where its sources are absent: the live
    case is then skipped, and says why)."""
    if source == "committed":
        return committed
    if live is None:
        pytest.skip(NO_SOURCES)
    return live() if callable(live) else live


def meta_and_arrays(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A fixture folder's `meta.json` and `<name>.safetensors`."""
    from safetensors.numpy import load_file

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return meta, load_file(str(folder / f"{name}.safetensors"))
