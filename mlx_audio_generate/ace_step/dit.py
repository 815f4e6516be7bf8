"""ACE-Step 1.5's diffusion transformer (`AceStepDiTModel`, the checkpoint's `decoder.*`) in MLX.

Mirrors `acestep/models/{turbo,base,sft,xl_*}/modeling_acestep_v15_*.py` (the network is the same in every
variant; XL only reads the condition width from `encoder_hidden_size`); layers in dit_blocks.py:
- input `concat([context_latents (src latents || chunk mask), x_t])` at 25 Hz, right-padded with zeros to a
  multiple of `patch_size`, `proj_in` Conv1d(k = s = patch_size) -> tokens; `proj_out` ConvTranspose1d back,
  cropped to the input length;
- timestep: two TimestepEmbeddings, of t and of t - r (at inference r = t), summed: `temb` for the output
  adaLN, `timestep_proj` (B, 6, D) for every layer;
- the packed condition sequence (B, S, encoder_hidden_size) goes through `condition_embedder` and is attended
  whole: the reference builds its padding masks and then resets them to None inside forward, so neither the
  latent `attention_mask` nor the condition mask has any effect; this port takes no mask;
- output `norm_out(x) (1 + scale) + shift` with (shift, scale) from `scale_shift_table (1, 2, D) + temb`.

Tensors are channels-last `(B, T, C)` at this boundary, as the reference's are (its latents are (B, T, 64)).
`AceStepDiTModel.condition` computes the cross-attention K/V of every layer once per condition, as the
reference's EncoderDecoderCache does across sampling steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import UserError
from ..weights import Checkpoint, torch_conv1d, torch_conv_transpose1d
from .dit_blocks import DiTLayer, RMSNorm, TimestepEmbedding

LAYER_TYPES = ("sliding_attention", "full_attention")
TIMESTEP_DIM = 256  # TimestepEmbedding(in_channels=256) in AceStepDiTModel
# The Sequential wrappers (transpose, conv, transpose) of the reference: its conv is item 1.
_CONVS = {"proj_in.weight": ("proj_in.1.weight", torch_conv1d), "proj_in.bias": ("proj_in.1.bias", None)}
_CONVS |= {
    "proj_out.weight": ("proj_out.1.weight", torch_conv_transpose1d),
    "proj_out.bias": ("proj_out.1.bias", None),
}


def _int(d: dict, key: str, default: int | None, low: int = 1) -> int:
    v = d.get(key, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UserError(f"ACE-Step config {key}={v!r} must be an integer >= {low}")
    return v


def _rope_theta(d: dict) -> float:
    """rope_theta from the transformers-4 key or transformers-5's `rope_parameters`; only the default RoPE."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    for p in (params, scaling):
        kind = p.get("rope_type", p.get("type", "default")) if isinstance(p, dict) else p
        if kind != "default":
            raise UserError(f"ACE-Step config RoPE type {kind!r} is not supported (only 'default')")
    theta = d.get("rope_theta", params.get("rope_theta", 1_000_000))
    if (
        isinstance(theta, bool)
        or not isinstance(theta, (int, float))
        or not math.isfinite(theta)
        or theta <= 1
    ):
        raise UserError(f"ACE-Step config rope_theta={theta!r} must be a number > 1")
    return float(theta)


@dataclass(frozen=True)
class AceDiTConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int | None  # None: sliding layers attend everything (use_sliding_window false)
    in_channels: int
    acoustic_dim: int  # audio_acoustic_hidden_dim: the latent channels (x_t, the output)
    patch_size: int
    encoder_hidden_size: int  # width of the packed condition sequence
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    is_turbo: bool = True
    model_version: str = "turbo"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AceDiTConfig:
        """From an ACE-Step 1.5 DiT `config.json` (AceStepConfig; missing keys take its defaults)."""
        if not isinstance(d, dict):
            raise UserError("ACE-Step config must be a JSON object")
        if d.get("model_type", "acestep") != "acestep":
            raise UserError(f"model_type {d.get('model_type')!r} is not an ACE-Step 1.5 DiT ('acestep')")
        if d.get("hidden_act", "silu") != "silu":
            raise UserError(
                f"ACE-Step config hidden_act={d.get('hidden_act')!r} is not supported (only 'silu')"
            )
        hidden = _int(d, "hidden_size", 2048)
        layers = _int(d, "num_hidden_layers", 24)
        heads = _int(d, "num_attention_heads", 16)
        kv_heads = d.get("num_key_value_heads")
        kv_heads = heads if kv_heads is None else _int(d, "num_key_value_heads", None)
        if heads % kv_heads:
            raise UserError(
                f"ACE-Step config: {heads} attention heads are not a multiple of {kv_heads} kv heads"
            )
        head_dim = _int(d, "head_dim", 128)
        if head_dim % 2:
            raise UserError(f"ACE-Step config head_dim={head_dim} must be even (RoPE rotates halves)")
        types = d.get("layer_types")
        if types is None:  # AceStepConfig's default: sliding, full, sliding, ...
            types = [LAYER_TYPES[i % 2] for i in range(layers)]
        if not isinstance(types, list) or len(types) != layers or any(t not in LAYER_TYPES for t in types):
            raise UserError(
                f"ACE-Step config layer_types must list {layers} of {', '.join(LAYER_TYPES)}, not {types!r}"
            )
        window = _int(d, "sliding_window", 128) if d.get("use_sliding_window", True) else None
        acoustic = _int(d, "audio_acoustic_hidden_dim", 64)
        in_channels = _int(d, "in_channels", 192)
        if in_channels != 3 * acoustic:
            # the sampler's noise is context_latents' width / 2 and must be the output's width
            raise UserError(
                f"ACE-Step config in_channels={in_channels} must be 3 x audio_acoustic_hidden_dim "
                f"({acoustic}): source latents, chunk mask and x_t"
            )
        eps = d.get("rms_norm_eps", 1e-6)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise UserError(f"ACE-Step config rms_norm_eps={eps!r} must be a number in (0, 1)")
        bias = d.get("attention_bias", False)
        if not isinstance(bias, bool):
            raise UserError(f"ACE-Step config attention_bias={bias!r} must be true or false")
        enc = d.get("encoder_hidden_size")
        version = d.get("model_version", "turbo")
        turbo = d.get("is_turbo", str(version).startswith("turbo"))
        return cls(
            hidden_size=hidden,
            intermediate_size=_int(d, "intermediate_size", 6144),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            layer_types=tuple(types),
            sliding_window=window,
            in_channels=in_channels,
            acoustic_dim=acoustic,
            patch_size=_int(d, "patch_size", 2),
            encoder_hidden_size=hidden if enc is None else _int(d, "encoder_hidden_size", None),
            rms_norm_eps=float(eps),
            rope_theta=_rope_theta(d),
            attention_bias=bias,
            is_turbo=bool(turbo),
            model_version=str(version),
        )

    @property
    def context_dim(self) -> int:
        """Width of context_latents: source latents || chunk mask."""
        return self.in_channels - self.acoustic_dim


@dataclass
class AceCondition:
    """One condition's cross-attention keys and values, per layer ((B, kv_heads, S, D) each), computed once
    by `AceStepDiTModel.condition`; `batch`: B (2B for a CFG pair, conditional rows first)."""

    kv: list[tuple[mx.array, mx.array]]
    batch: int


def sliding_mask(n: int, window: int) -> mx.array:
    """(n, n) bool, True where |i - j| <= window: create_4d_mask(is_sliding_window, not causal)."""
    i = mx.arange(n)
    return mx.abs(i[:, None] - i[None, :]) <= window


class AceStepDiTModel(nn.Module):
    def __init__(self, config: AceDiTConfig):
        super().__init__()
        c = self.config = config
        d = c.hidden_size
        self.layers = [
            DiTLayer(
                d,
                c.intermediate_size,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.rms_norm_eps,
                c.attention_bias,
                sliding=t == "sliding_attention" and c.sliding_window is not None,
            )
            for t in c.layer_types
        ]
        self.proj_in = nn.Conv1d(c.in_channels, d, kernel_size=c.patch_size, stride=c.patch_size)
        self.time_embed = TimestepEmbedding(TIMESTEP_DIM, d)
        self.time_embed_r = TimestepEmbedding(TIMESTEP_DIM, d)
        self.condition_embedder = nn.Linear(c.encoder_hidden_size, d)
        self.norm_out = RMSNorm(d, c.rms_norm_eps)
        self.proj_out = nn.ConvTranspose1d(d, c.acoustic_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.scale_shift_table = mx.zeros((1, 2, d))

    @property
    def dtype(self) -> mx.Dtype:
        return self.condition_embedder.weight.dtype

    def condition(self, encoder_hidden_states: mx.array) -> AceCondition:
        """The packed condition sequence (B, S, encoder_hidden_size) -> every layer's cross-attention K/V."""
        e = encoder_hidden_states
        if e is None or e.ndim != 3 or e.shape[-1] != self.config.encoder_hidden_size or e.shape[1] < 1:
            shape = None if e is None else tuple(e.shape)
            raise UserError(
                f"encoder_hidden_states must be (B, tokens, {self.config.encoder_hidden_size}), not {shape}"
            )
        ctx = self.condition_embedder(e.astype(self.dtype))
        return AceCondition([layer.cross_attn.kv(ctx) for layer in self.layers], e.shape[0])

    def _check(self, x: mx.array, t: mx.array, context_latents: mx.array, batch: int) -> None:
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.acoustic_dim or x.shape[1] < 1:
            raise UserError(f"hidden_states must be (B, T, {c.acoustic_dim}), not {tuple(x.shape)}")
        if context_latents.shape != (*x.shape[:2], c.context_dim):
            raise UserError(
                f"context_latents must be {(*x.shape[:2], c.context_dim)}, not {tuple(context_latents.shape)}"
            )
        if t.shape != (x.shape[0],) or batch != x.shape[0]:
            raise UserError(
                f"timestep {tuple(t.shape)} and condition batch {batch} must match the batch {x.shape[0]}"
            )

    def __call__(
        self,
        hidden_states: mx.array,
        timestep: mx.array,
        context_latents: mx.array,
        condition: AceCondition | mx.array,
        timestep_r: mx.array | None = None,
    ) -> mx.array:
        """The predicted velocity (B, T, acoustic_dim) of x_t `hidden_states` (B, T, acoustic_dim) at times
        `timestep` (B,), given context_latents (B, T, context_dim) and the condition (an AceCondition or the
        packed sequence). `timestep_r` (B,) defaults to `timestep`, as at inference."""
        if not isinstance(condition, AceCondition):
            condition = self.condition(condition)
        timestep = mx.array(timestep) if not isinstance(timestep, mx.array) else timestep
        self._check(hidden_states, timestep, context_latents, condition.batch)
        c, dtype = self.config, self.dtype
        t = timestep.astype(mx.float32)
        r = t if timestep_r is None else mx.array(timestep_r).astype(mx.float32)
        temb_t, proj_t = self.time_embed(t)
        temb_r, proj_r = self.time_embed_r(t - r)
        temb, timestep_proj = temb_t + temb_r, proj_t + proj_r

        h = mx.concatenate([context_latents, hidden_states], axis=-1).astype(dtype)
        length = h.shape[1]
        pad = -length % c.patch_size
        if pad:
            h = mx.pad(h, [(0, 0), (0, pad), (0, 0)])
        h = self.proj_in(h)
        n = h.shape[1]
        mask = None
        if c.sliding_window is not None and n > c.sliding_window + 1:  # a smaller n: the window is everything
            mask = sliding_mask(n, c.sliding_window)
        for layer, kv in zip(self.layers, condition.kv, strict=True):
            h = layer(h, timestep_proj, c.rope_theta, mask, kv)
        shift, scale = mx.split(self.scale_shift_table.astype(temb.dtype) + temb[:, None], 2, axis=1)
        h = (self.norm_out(h) * (1 + scale) + shift).astype(dtype)
        return self.proj_out(h)[:, :length]

    def sanitize(self, ckpt: Checkpoint, prefix: str = "decoder.") -> dict[str, mx.array]:
        """Our parameters from the reference checkpoint's `decoder.*` tensors (every one of them taken, so
        `ckpt.finish` names any unknown one); the Sequential convs `proj_in.1` / `proj_out.1` relaid out."""
        out = {}
        for name, ours in tree_flatten(self.parameters()):
            ref_name, relayout = _CONVS.get(name, (name, None))
            w = ckpt.take(prefix + ref_name)
            w = relayout(w) if relayout else w
            if w.shape != ours.shape:
                raise UserError(
                    f"{ckpt.name}: tensor '{prefix + ref_name}' is {tuple(w.shape)}, the config implies "
                    f"{tuple(ours.shape)}; config.json and the weights do not belong together"
                )
            out[name] = w
        return out
