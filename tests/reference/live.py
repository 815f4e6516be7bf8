"""The reference builders' `live()`: each builder module's `make(out_dir)` reruns the reference code; the
parity tests compare with the committed outputs and, where the reference sources are here, with one such
rerun per session (tests/reference/parity.py: reference_outputs). Standard library only: the builders keep
their heavy imports inside `make`."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path


def once_per_session(make: Callable[[str], Path], prefix: str) -> Callable[[], Path]:
    """A builder's `live()`: its `make` run into a temporary folder the first time it is asked for, that
    folder every time after."""
    return functools.cache(lambda: make(tempfile.mkdtemp(prefix=prefix)))
