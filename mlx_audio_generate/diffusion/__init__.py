"""Diffusion samplers and inpainting shared by the diffusion families."""
