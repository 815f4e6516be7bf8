"""ACE-Step 1.5 (songs with lyrics, 48 kHz) in MLX: DiT, samplers, condition encoder."""
