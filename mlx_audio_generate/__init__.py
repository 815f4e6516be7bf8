"""mlx-audio-generate: text-to-audio models in MLX (the families in registry.py), numerically identical to
their reference implementations."""

__version__ = "0.1.0"

from ._blas import load_blas as _load_blas  # noqa: E402

_load_blas()  # optimised BLAS before MLX on Linux; MLX_AUDIO_GENERATE_BLAS=off disables, =/path forces one

__all__ = ["load", "save", "__version__"]


def __getattr__(name: str):
    # `load` (and numpy, mlx behind it) is imported on first use, so that `import mlx_audio_generate.cli.*`
    # reaches the console scripts' own Ctrl-C guard quickly (cli/common.py: interruptible_imports)
    if name == "load":
        from .api import load

        return load
    if name == "save":
        from .saving import save

        return save
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
