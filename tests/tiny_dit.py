"""The tiny Stable Audio DiT that the CUDA kernel tests run (attention, q / k, row kernels): its inputs and
its float32 forward on the CPU, the yardstick of their fp16 GPU runs."""

from __future__ import annotations

import mlx.core as mx

from mlx_audio_generate.stable_audio.dit import DiTConfig, StableAudioDiT


def tiny_dit(qk_norm: str = "ln") -> StableAudioDiT:
    """Width 256 in 2 heads of 128 (small's head dim), 2 blocks, cross-attention and a global condition."""
    cfg = DiTConfig(io_channels=8, embed_dim=256, depth=2, num_heads=2, cond_token_dim=32, global_cond_dim=16,
                    qk_norm=qk_norm)  # fmt: skip
    mx.random.seed(3)
    dit = StableAudioDiT(cfg)
    mx.eval(dit.parameters())
    return dit


def dit_inputs() -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """(x, t, cross tokens, global condition) for a batch of 2."""
    mx.random.seed(4)
    x, t = mx.random.normal((2, 8, 40)), mx.array([0.3, 0.7])
    return x, t, mx.random.normal((2, 11, 32)), mx.random.normal((2, 16))


def cpu_forward(dit: StableAudioDiT, x: mx.array, t: mx.array, ctx: mx.array, glob: mx.array) -> mx.array:
    """The DiT's forward in its current dtype (float32 before `set_dtype`) on the CPU."""
    with mx.stream(mx.cpu):
        out = dit.forward(x, t, dit.condition(ctx, glob))
        mx.eval(out)
    return out
