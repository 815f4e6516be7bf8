"""Watching one module instance's calls in a test (not a test module)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def leading_dims(module) -> Iterator[list[int]]:
    """The leading dimension of `module`'s first argument at each of its calls while active (its class's
    `__call__` wrapped; other instances pass through)."""
    cls = type(module)
    call = cls.__call__
    seen: list[int] = []

    def spy(self, x, *args, **kw):
        if self is module:
            seen.append(x.shape[0])
        return call(self, x, *args, **kw)

    cls.__call__ = spy
    try:
        yield seen
    finally:
        cls.__call__ = call
