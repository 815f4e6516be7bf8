"""Import stable-audio-tools beside CPU torch.

stable-audio-tools 0.0.19 pins a CUDA torch and imports torchvision/torchaudio/clip at module level; their
PyPI wheels do not work beside the CPU torch used here. The model and sampling code we compare against
never calls them, so small stand-ins are registered in `sys.modules` before the import (the same recipe as
../shared/notes/environment.md). Anything that *would* call them fails loudly.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from . import require


class _StubModule(types.ModuleType):
    """A module whose every attribute is another stand-in (submodule-like or a class that refuses use)."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        full = f"{self.__name__}.{attr}"
        if full not in sys.modules:
            sys.modules[full] = _StubModule(full)
            sys.modules[full].__path__ = []
        return sys.modules[full]

    def __call__(self, *a, **k):
        raise RuntimeError(f"{self.__name__} is a stand-in: not available in the parity test environment")


class _StubFinder:
    """Resolves `import torchaudio.x.y` etc. to stand-ins."""

    roots = ("torchaudio", "torchvision", "clip")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


def install_stubs() -> None:
    require("torch", "transformers", "diffusers", "stable_audio_tools")
    # transformers/diffusers probe for torchvision at their first import and would record the stand-in
    # as installed (version "N/A"); import them first so they see the real, absent package.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())


def import_sat():
    """Return the stable_audio_tools package with the stand-ins in place."""
    install_stubs()
    import stable_audio_tools  # noqa: F401
    import stable_audio_tools.inference.generation  # noqa: F401
    import stable_audio_tools.inference.sampling  # noqa: F401
    import stable_audio_tools.models.factory  # noqa: F401

    return stable_audio_tools
