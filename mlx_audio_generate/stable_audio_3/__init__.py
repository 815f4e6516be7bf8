"""Stable Audio 3 (small-music, small-sfx, medium): text conditioning, DiT and SAME autoencoders in MLX."""
