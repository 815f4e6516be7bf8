"""Builders for tiny checkpoints written by the reference libraries themselves.

Everything here runs the *reference* code (transformers, stable-audio-tools, diffusers) to produce
real files with real key names; our code is then tested against those files and those libraries.
"""

from __future__ import annotations

from types import ModuleType

import pytest

# Where the skip reason sends someone whose environment lacks the reference libraries (e.g. after `uv sync`).
INSTALL_HINT = (
    "the parity tests need torch and the reference libraries: `bash scripts/test.sh` installs them with a "
    'CPU torch (with uv: README, "With uv")'
)


def require(*names: str) -> ModuleType:
    """Import the reference modules `names` (the first is returned), or skip the calling test, fixture or
    test module with a reason that says how to install them. Never used for our own dependencies."""
    modules = [pytest.importorskip(name, reason=f"{name} is not installed; {INSTALL_HINT}") for name in names]
    return modules[0]


REFERENCE_ROOTS = {"torch", "transformers", "diffusers", "stable_audio_tools", "k_diffusion", "torchsde"}


def missing_reference(exc: BaseException | None, depth: int = 0) -> str | None:
    """The reference library whose ImportError is anywhere in `exc`'s chain (__cause__ and __context__: also
    behind a one-line UserError raised `from None`), or None."""
    while exc is not None and depth < 20:
        name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
        if name and name.split(".")[0] in REFERENCE_ROOTS:
            return name.split(".")[0]
        inner = missing_reference(exc.__cause__, depth + 1) if exc.__cause__ is not None else None
        if inner:
            return inner
        exc, depth = exc.__context__, depth + 1
    return None
