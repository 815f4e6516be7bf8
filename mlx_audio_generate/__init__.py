"""mlx-audio-generate: MusicGen and Stable Audio Open in MLX, numerically identical to the references."""

__version__ = "0.1.0"

from .api import load  # noqa: E402

__all__ = ["load", "__version__"]
