"""ACE-Step 1.5's audio tokenizer (25 Hz latents -> 5 Hz FSQ codes, the checkpoint's `tokenizer.*`) and
detokenizer (codes -> 25 Hz "LM hints", `detokenizer.*`), in MLX.

Mirrors `AceStepAudioTokenizer`, `AttentionPooler`, `AudioTokenDetokenizer` and
`AceStepConditionGenerationModel.tokenize` of `acestep/models/*/modeling_acestep_v15_*.py`, and
`vector_quantize_pytorch` 1.32's `ResidualFSQ` as the model builds it (`dim=fsq_dim`, the config's levels,
`preserve_symmetry`, `bound_hard_clamp`):
- tokenize: right-pad the latents (B, T, C) to a multiple of `pool_window_size` P with the silence
  latent's first frames, group into (B, T/P, P, C); `audio_acoustic_proj`; the pooler prepends its learned
  token to each group, runs its layers (positions 0..P, no padding mask), norms, and keeps the token's
  output -> (B, T/P, H);
- ResidualFSQ: `project_in` (H -> len(levels)), soft clamp `tanh(x / c) * c` with c = 1 + 1 / (L - 1), then
  per quantizer (scale L^-q) `clamp(-1, 1)`, `floor((L - 1)(z + 1) / 2 + 0.5)` -> code `2 b / (L - 1) - 1`,
  index `sum(b * basis)`; the codes summed, `project_out`; indices (B, T/P, num_quantizers) int32;
- detokenize: `embed_tokens`, each 5 Hz state repeated P times + the P learned `special_tokens`, layers
  (positions 0..P-1), norm, `proj_out` (H -> C) -> (B, T, C).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import UserError
from ..weights import Checkpoint
from .condition_blocks import AceConditionConfig, EncoderStack


class ResidualFSQ(nn.Module):
    """The quantizer's projections (`project_in` / `project_out`, absent when fsq_dim == len(levels))."""

    def __init__(self, dim: int, levels: tuple[int, ...], quantizers: int):
        super().__init__()
        self.levels = np.array(levels, dtype=np.int64)
        self.quantizers = quantizers
        self.projected = dim != len(levels)
        if self.projected:
            self.project_in = nn.Linear(dim, len(levels))
            self.project_out = nn.Linear(len(levels), dim)
        self._basis = mx.array(np.cumprod([1, *levels[:-1]]).astype(np.float32))
        self._lm1 = mx.array((self.levels - 1).astype(np.float32))
        self._clamp = mx.array((1 + 1 / (self.levels - 1)).astype(np.float32))

    def _scale(self, q: int) -> mx.array:
        return mx.array(self.levels.astype(np.float32) ** -q)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(B, N, dim) -> (quantized (B, N, dim), indices (B, N, quantizers) int32)."""
        if self.projected:
            x = self.project_in(x)
        x = x.astype(mx.float32)
        x = mx.tanh(x / self._clamp) * self._clamp
        residual, total, indices = x, mx.zeros_like(x), []
        for q in range(self.quantizers):
            scale = self._scale(q)
            z = mx.clip(residual / scale, -1.0, 1.0)
            bracket = mx.floor(self._lm1 * (z + 1) / 2.0 + 0.5)
            codes = (2.0 / self._lm1) * bracket - 1.0
            # codes_to_indices: ((code + 1) / (2 / (L - 1)) * basis).sum().round()
            indices.append(
                mx.round(((codes + 1.0) / (2.0 / self._lm1) * self._basis).sum(-1)).astype(mx.int32)
            )
            quantized = codes * scale
            residual = residual - quantized
            total = total + quantized
        out = total.astype(self.project_out.weight.dtype) if self.projected else total
        return (self.project_out(out) if self.projected else out), mx.stack(indices, axis=-1)

    def from_indices(self, indices: mx.array) -> mx.array:
        """get_output_from_indices: indices (B, N, quantizers) -> (B, N, dim)."""
        idx = mx.array(indices).astype(mx.int32)
        if idx.ndim != 3 or idx.shape[-1] != self.quantizers:
            raise UserError(f"audio codes must be (batch, frames, {self.quantizers}), got {tuple(idx.shape)}")
        if (idx < 0).any().item() or (idx >= int(np.prod(self.levels))).any().item():
            raise UserError(f"audio codes must lie in [0, {int(np.prod(self.levels))})")
        levels = mx.array(self.levels.astype(np.int32))
        basis = self._basis.astype(mx.int32)
        total = 0.0
        for q in range(self.quantizers):
            level_idx = (idx[..., q : q + 1] // basis) % levels
            total = total + (level_idx.astype(mx.float32) * (2.0 / self._lm1) - 1.0) * self._scale(q)
        return self.project_out(total) if self.projected else total

    def param_names(self) -> list[str]:
        return (
            [f"project_{s}.{p}" for s in ("in", "out") for p in ("weight", "bias")] if self.projected else []
        )


class AttentionPooler(EncoderStack):
    def __init__(self, c: AceConditionConfig):
        super().__init__(c, c.hidden_size, c.pooler_layers)
        self.special_token = mx.zeros((1, 1, c.hidden_size))

    def __call__(self, x: mx.array) -> mx.array:
        """(B, T, P, H) -> the pooling token's output (B, T, H)."""
        b, t, p, h = x.shape
        x = self.embed_tokens(x)
        cls = mx.broadcast_to(self.special_token.astype(x.dtype)[:, :, None, :], (b, t, 1, h))
        x = mx.concatenate([cls, x], axis=2).reshape(b * t, p + 1, h)
        return self.run(x)[:, 0, :].reshape(b, t, h)


class AudioTokenizer(nn.Module):
    def __init__(self, c: AceConditionConfig):
        super().__init__()
        self.config = c
        self.audio_acoustic_proj = nn.Linear(c.acoustic_dim, c.hidden_size)
        self.attention_pooler = AttentionPooler(c)
        self.quantizer = ResidualFSQ(c.fsq_dim, c.fsq_levels, c.fsq_quantizers)

    def __call__(self, latents: mx.array, silence: mx.array) -> tuple[mx.array, mx.array]:
        """AceStepConditionGenerationModel.tokenize: latents (B, T, C), silence latent (1, >= P, C) ->
        (quantized (B, ceil(T / P), H), indices (B, ceil(T / P), quantizers))."""
        p = self.config.pool_window_size
        b, t, c = latents.shape
        if t % p:
            pad = p - t % p
            if silence.ndim != 3 or silence.shape[1] < pad or silence.shape[2] != c:
                raise UserError(f"the silence latent must be (1, >= {pad}, {c}) to pad the latents")
            fill = mx.broadcast_to(silence[:1, :pad, :].astype(latents.dtype), (b, pad, c))
            latents = mx.concatenate([latents, fill], axis=1)
        x = self.audio_acoustic_proj(latents.reshape(b, -1, p, c))
        return self.quantizer(self.attention_pooler(x))

    def param_names(self) -> list[str]:
        names = ["audio_acoustic_proj.weight", "audio_acoustic_proj.bias"]
        names += [f"attention_pooler.{n}" for n in self.attention_pooler.param_names(("special_token",))]
        return names + [f"quantizer.{n}" for n in self.quantizer.param_names()]


class AudioDetokenizer(EncoderStack):
    def __init__(self, c: AceConditionConfig):
        super().__init__(c, c.hidden_size, c.pooler_layers)
        self.special_tokens = mx.zeros((1, c.pool_window_size, c.hidden_size))
        self.proj_out = nn.Linear(c.hidden_size, c.acoustic_dim)

    def __call__(self, quantized: mx.array) -> mx.array:
        """(B, T, H) 5 Hz states -> (B, T * P, acoustic_dim) 25 Hz hints."""
        b, t, h = quantized.shape
        p = self.config.pool_window_size
        x = self.embed_tokens(quantized)[:, :, None, :] + self.special_tokens.astype(quantized.dtype)[:, None]
        x = self.run(x.reshape(b * t, p, h))
        return self.proj_out(x).reshape(b, t * p, -1)

    def param_names(self, extra: tuple[str, ...] = ()) -> list[str]:
        return super().param_names(("special_tokens", "proj_out.weight", "proj_out.bias", *extra))


def sanitize_part(module: nn.Module, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
    """The tensors under `prefix` named by `module.param_names()` (our names are the reference's)."""
    return {n: ckpt.take(prefix + n) for n in module.param_names()}
