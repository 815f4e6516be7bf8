"""mlx-audio-generate: text-to-audio models in MLX (the families in registry.py), numerically identical to
their reference implementations."""

__version__ = "0.1.0"

from ._blas import load_blas as _load_blas  # noqa: E402

_load_blas()  # optimised BLAS before MLX on Linux; MLX_AUDIO_GENERATE_BLAS=off disables, =/path forces one

from .api import load  # noqa: E402

__all__ = ["load", "__version__"]
