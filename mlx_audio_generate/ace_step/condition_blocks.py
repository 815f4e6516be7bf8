"""The building blocks of ACE-Step 1.5's condition side (`AceStepEncoderLayer` and the embed -> layers -> norm
stacks of the lyric / timbre encoders, the attention pooler and the detokenizer), with the config they read.

Masks are `create_4d_mask`'s (CPU / SDPA path): additive `finfo(dtype).min` on padded keys, and on a sliding
layer also where |i - j| > window; with `use_sliding_window` false a sliding layer gets no mask at all. A row
whose keys are all hidden softmaxes uniformly over all keys, as the reference's does. Attention, norms and MLP
are the DiT's (dit_blocks.py: Qwen3 attention with q/k norm and rotate-half RoPE over positions 0..n-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from .dit_blocks import MLP, Attention, RMSNorm

LAYER_TYPES = ("sliding_attention", "full_attention")


def _int(d: dict, key: str, default: int | None) -> int:
    v = d.get(key, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"ACE-Step config {key}={v!r} must be a positive integer")
    return v


@dataclass(frozen=True)
class AceConditionConfig:
    """The condition side of an AceStepConfig (XL: the `encoder_*` sizes replace the decoder's)."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    num_hidden_layers: int  # the decoder's: the encoders run at most this many layers
    sliding_window: int | None  # None: use_sliding_window is false (sliding layers get no mask)
    lyric_layers: int
    timbre_layers: int
    pooler_layers: int
    text_hidden_dim: int
    timbre_hidden_dim: int
    acoustic_dim: int
    pool_window_size: int
    fsq_dim: int
    fsq_levels: tuple[int, ...]
    fsq_quantizers: int
    timbre_cls: bool  # XL: the timbre encoder prepends its special token
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AceConditionConfig:
        """From an ACE-Step 1.5 `config.json`; missing keys take AceStepConfig's defaults. XL (the
        `encoder_hidden_size` differs from `hidden_size`, or `model_version` starts with "xl") uses the
        xl_* model code: encoder sizes from `encoder_*` and a timbre CLS token."""
        if not isinstance(d, dict):
            raise UserError("ACE-Step config must be a JSON object")
        if d.get("hidden_act", "silu") != "silu":
            raise UserError(
                f"ACE-Step config hidden_act={d.get('hidden_act')!r} is not supported (only 'silu')"
            )
        hidden = _int(d, "hidden_size", 2048)
        enc = _int(d, "encoder_hidden_size", None) if d.get("encoder_hidden_size") else hidden
        xl = str(d.get("model_version", "turbo")).startswith("xl") or enc != hidden

        def enc_int(key: str, default: int) -> int:  # the reference: getattr(config, f"encoder_{key}") or ...
            if enc != hidden and d.get(f"encoder_{key}"):
                return _int(d, f"encoder_{key}", None)
            return _int(d, key, default)

        heads = enc_int("num_attention_heads", 16)
        if enc != hidden and d.get("encoder_num_key_value_heads"):
            kv = _int(d, "encoder_num_key_value_heads", None)
        elif "num_key_value_heads" in d and d["num_key_value_heads"] is None:  # AceStepConfig: None -> heads
            kv = _int(d, "num_attention_heads", 16)
        else:
            kv = _int(d, "num_key_value_heads", 8)
        if heads % kv:
            raise UserError(f"ACE-Step config: {heads} attention heads are not a multiple of {kv} kv heads")
        layers = _int(d, "num_hidden_layers", 24)
        types = d.get("layer_types")
        if types is None:
            types = [LAYER_TYPES[i % 2] for i in range(layers)]
        if not isinstance(types, list) or any(t not in LAYER_TYPES for t in types):
            raise UserError(f"ACE-Step config layer_types must list {', '.join(LAYER_TYPES)}, not {types!r}")
        counts = {k: _int(d, k, v) for k, v in _LAYER_COUNTS.items()}
        deepest = max(counts.values())
        if deepest > len(types):  # the reference indexes layer_types by layer index
            raise UserError(
                f"ACE-Step config layer_types lists {len(types)} layers; the encoders need {deepest}"
            )
        levels = d.get("fsq_input_levels", [8, 8, 8, 5, 5, 5])
        if not isinstance(levels, list) or not levels or any(not isinstance(v, int) or v < 2 for v in levels):
            raise UserError(f"ACE-Step config fsq_input_levels={levels!r} must list integers >= 2")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise UserError(f"ACE-Step config RoPE type {rope.get('rope_type')!r} is not supported")
        theta = d.get("rope_theta", rope.get("rope_theta", 1_000_000))
        eps = d.get("rms_norm_eps", 1e-6)
        for name, v in (("rope_theta", theta), ("rms_norm_eps", eps)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise UserError(f"ACE-Step config {name}={v!r} must be a positive number")
        head_dim = _int(d, "head_dim", 128)
        if head_dim % 2:
            raise UserError(f"ACE-Step config head_dim={head_dim} must be even (RoPE rotates halves)")
        return cls(
            hidden_size=enc,
            intermediate_size=enc_int("intermediate_size", 6144),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            layer_types=tuple(types),
            num_hidden_layers=layers,
            sliding_window=_int(d, "sliding_window", 128) if d.get("use_sliding_window", True) else None,
            lyric_layers=counts["num_lyric_encoder_hidden_layers"],
            timbre_layers=counts["num_timbre_encoder_hidden_layers"],
            pooler_layers=counts["num_attention_pooler_hidden_layers"],
            text_hidden_dim=_int(d, "text_hidden_dim", 1024),
            timbre_hidden_dim=_int(d, "timbre_hidden_dim", 64),
            acoustic_dim=_int(d, "audio_acoustic_hidden_dim", 64),
            pool_window_size=_int(d, "pool_window_size", 5),
            fsq_dim=_int(d, "fsq_dim", 2048),
            fsq_levels=tuple(levels),
            fsq_quantizers=_int(d, "fsq_input_num_quantizers", 1),
            timbre_cls=xl,
            rms_norm_eps=float(eps),
            rope_theta=float(theta),
            attention_bias=bool(d.get("attention_bias", False)),
        )


_LAYER_COUNTS = {
    "num_lyric_encoder_hidden_layers": 8,
    "num_timbre_encoder_hidden_layers": 4,
    "num_attention_pooler_hidden_layers": 2,
}


def attention_masks(
    config: AceConditionConfig, n: int, keep: mx.array | None, dtype: mx.Dtype
) -> dict[str, mx.array | None]:
    """create_4d_mask per layer type: additive (B|1, 1, n, n), `finfo(dtype).min` where a key is hidden
    (padding from `keep` (B, n); |i - j| > window on sliding layers); None where nothing is hidden."""
    neg, zero = mx.array(mx.finfo(dtype).min, dtype=dtype), mx.array(0.0, dtype=dtype)
    pad = None if keep is None else (mx.array(keep) != 0)[:, None, None, :]
    out: dict[str, mx.array | None] = {"full_attention": None if pad is None else mx.where(pad, zero, neg)}
    if config.sliding_window is None:
        out["sliding_attention"] = None  # the reference passes no mask to sliding layers then
    else:
        pos = mx.arange(n)
        near = (mx.abs(pos[:, None] - pos[None, :]) <= config.sliding_window)[None, None]
        out["sliding_attention"] = mx.where(near if pad is None else near & pad, zero, neg)
    return out


class EncoderLayer(nn.Module):
    """AceStepEncoderLayer: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, c: AceConditionConfig, index: int):
        super().__init__()
        self.kind = c.layer_types[index]
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(
            c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps, c.attention_bias
        )
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c.hidden_size, c.intermediate_size)

    def __call__(self, x: mx.array, rope_theta: float, masks: dict[str, mx.array | None]) -> mx.array:
        x = x + self.self_attn.self_attention(self.input_layernorm(x), rope_theta, masks[self.kind])
        return x + self.mlp(self.post_attention_layernorm(x))


def _layer_names(prefix: str, bias: bool) -> list[str]:
    names = [f"{prefix}input_layernorm.weight", f"{prefix}post_attention_layernorm.weight"]
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        names += [f"{prefix}self_attn.{n}.weight"] + ([f"{prefix}self_attn.{n}.bias"] if bias else [])
    names += [f"{prefix}self_attn.q_norm.weight", f"{prefix}self_attn.k_norm.weight"]
    return names + [f"{prefix}mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]


class EncoderStack(nn.Module):
    """embed_tokens (Linear) -> layers -> norm, the shape of every ACE-Step encoder; `limit` caps the layers
    run (the lyric and timbre encoders slice `layers[:num_hidden_layers]`)."""

    def __init__(self, c: AceConditionConfig, in_dim: int, n_layers: int, limit: int | None = None):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Linear(in_dim, c.hidden_size)
        self.layers = [EncoderLayer(c, i) for i in range(n_layers)]
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self._limit = n_layers if limit is None else min(n_layers, limit)

    def run(self, x: mx.array, keep: mx.array | None = None) -> mx.array:
        """Layers + norm on already embedded x (B, n, H); `keep` (B, n) hides padded keys."""
        masks = attention_masks(self.config, x.shape[1], keep, x.dtype)
        for layer in self.layers[: self._limit]:
            x = layer(x, self.config.rope_theta, masks)
        return self.norm(x)

    def param_names(self, extra: tuple[str, ...] = ()) -> list[str]:
        names = ["embed_tokens.weight", "embed_tokens.bias", "norm.weight", *extra]
        for i in range(len(self.layers)):
            names += _layer_names(f"layers.{i}.", self.config.attention_bias)
        return names
