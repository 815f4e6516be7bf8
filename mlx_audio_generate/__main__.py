"""`python -m mlx_audio_generate ...` runs `mlx-audio-generate ...` (for where the script is not on PATH)."""

from .cli.generate import main

if __name__ == "__main__":
    main()
