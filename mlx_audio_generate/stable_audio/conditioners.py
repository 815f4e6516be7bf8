"""Stable Audio Open conditioning in MLX: number conditioners, T5 post-processing, and their assembly.

Mirrors stable-audio-tools `models/conditioners.py` (NumberConditioner, T5Conditioner, MultiConditioner),
`models/adp.py` (NumberEmbedder = LearnedPositionalEmbedding + Linear) and
`models/diffusion.py::ConditionedDiffusionModelWrapper.get_conditioning_inputs`:
- a number is clamped to [min_val, max_val], normalised to [0, 1], embedded as `[x, sin(2*pi*x*w),
  cos(2*pi*x*w)]` (learned w) and projected by a Linear; it yields one token and a mask of ones;
- the T5 output (padded to the conditioner's `max_length`) goes through `proj_out` when the checkpoint has
  one, then is multiplied by the attention mask (padding tokens become zeros, but stay in the sequence);
- the cross-attention input concatenates, along the tokens, the outputs listed in `cross_attention_cond_ids`
  (in that order); the global conditioning concatenates, along the channels, those in `global_cond_ids`.
The T5 encoder itself lives in `mlx_audio_generate/t5.py`; this module takes its hidden states as arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from ..memory import check_bounds
from ..weights import Checkpoint

# T5Conditioner.T5_MODEL_DIMS: the encoder width, which decides whether a `proj_out` Linear exists.
T5_MODEL_DIMS = {
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
    "google/t5-v1_1-xl": 2048, "google/t5-v1_1-xxl": 4096, "google/flan-t5-small": 512,
    "google/flan-t5-base": 768, "google/flan-t5-large": 1024, "google/flan-t5-3b": 1024,
    "google/flan-t5-11b": 1024, "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096,
}  # fmt: skip


# Sanity bounds of the fields that size tensors (stable-audio-open-1.0: 768 wide, T5 max_length 128).
_COND_BOUNDS = {
    "cond_dim": (1, 16384),
    "output_dim": (1, 16384),
    "t5_dim": (1, 16384),
    "max_length": (1, 4096),
}


@dataclass(frozen=True)
class NumberConfig:
    output_dim: int
    min_val: float = 0.0
    max_val: float = 1.0
    features: int = 256  # NumberEmbedder(features=output_dim) uses TimePositionalEmbedding(dim=256): fixed


@dataclass(frozen=True)
class T5CondConfig:
    output_dim: int
    t5_dim: int  # the encoder's d_model (T5_MODEL_DIMS[t5_model_name] for the real models)
    t5_model_name: str = "t5-base"
    max_length: int = 128  # T5Conditioner's default when the config gives none
    project_out: bool = False

    @property
    def has_proj(self) -> bool:
        return self.t5_dim != self.output_dim or self.project_out


@dataclass(frozen=True)
class ConditioningConfig:
    cond_dim: int
    numbers: dict[str, NumberConfig]
    t5: dict[str, T5CondConfig]
    cross_attention_cond_ids: tuple[str, ...]
    global_cond_ids: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any], t5_dim: int | None = None) -> ConditioningConfig:
        """From a whole `model_config.json` dict (reads `model.conditioning` and `model.diffusion`).

        `t5_dim`: the width of the T5 actually used; by default the reference's table for `t5_model_name`.
        """
        m = d.get("model", d)
        cond, diffusion = m.get("conditioning"), m.get("diffusion", {})
        if cond is None:
            raise UserError(
                "model_config.json has no model.conditioning: not a conditioned Stable Audio model"
            )
        if cond.get("default_keys") or cond.get("pre_encoded_keys"):
            raise UserError("conditioning default_keys / pre_encoded_keys are not supported")
        cond_dim = int(cond["cond_dim"])
        numbers: dict[str, NumberConfig] = {}
        t5: dict[str, T5CondConfig] = {}
        for entry in cond["configs"]:
            cid, kind, c = entry["id"], entry["type"], dict(entry.get("config", {}))
            c = {
                "output_dim": cond_dim,
                **c,
            }  # the reference sets output_dim first; the entry may override it
            if kind == "number":
                numbers[cid] = NumberConfig(
                    output_dim=int(c["output_dim"]),
                    min_val=float(c.get("min_val", 0)),
                    max_val=float(c.get("max_val", 1)),
                )
            elif kind == "t5":
                name = c.get("t5_model_name", "t5-base")
                if name not in T5_MODEL_DIMS:
                    raise UserError(f"unknown T5 model '{name}' in the conditioning config")
                if c.get("enable_grad"):
                    raise UserError("T5 conditioner with enable_grad is not supported")
                t5[cid] = T5CondConfig(
                    output_dim=int(c["output_dim"]),
                    t5_dim=T5_MODEL_DIMS[name] if t5_dim is None else int(t5_dim),
                    t5_model_name=name,
                    max_length=int(c.get("max_length", 128)),
                    project_out=bool(c.get("project_out", False)),
                )
            else:
                raise UserError(f"conditioner type '{kind}' (id '{cid}') is not supported")
        for key in ("input_concat_ids", "prepend_cond_ids"):
            if diffusion.get(key):
                raise UserError(f"diffusion.{key} is not supported")
        cross = tuple(diffusion.get("cross_attention_cond_ids", []))
        glob = tuple(diffusion.get("global_cond_ids", []))
        for cid in cross + glob:
            if cid not in numbers and cid not in t5:
                raise UserError(f"conditioning id '{cid}' is used by the diffusion model but not configured")
        check_bounds({"cond_dim": cond_dim}, _COND_BOUNDS, "conditioning")
        for cid, c in [*numbers.items(), *t5.items()]:
            check_bounds(c, {k: v for k, v in _COND_BOUNDS.items() if hasattr(c, k)}, f"conditioner '{cid}'")
        return cls(cond_dim, numbers, t5, cross, glob)


class NumberConditioner(nn.Module):
    """A float per batch item -> one conditioning token (B, 1, output_dim) and its mask (B, 1) of ones."""

    def __init__(self, config: NumberConfig):
        super().__init__()
        self.config = config
        self.weights = mx.zeros((config.features // 2,))  # LearnedPositionalEmbedding.weights
        self.linear = nn.Linear(config.features + 1, config.output_dim)

    def embed(self, x: mx.array) -> mx.array:
        """NumberEmbedder on already normalised values x (B,) -> (B, output_dim)."""
        x = x.astype(self.weights.dtype)[:, None]
        freqs = x * self.weights[None, :] * 2 * math.pi  # same operation order as the reference
        return self.linear(mx.concatenate([x, mx.sin(freqs), mx.cos(freqs)], axis=-1))

    def normalize(self, values: Sequence[float] | mx.array) -> mx.array:
        c = self.config
        v = mx.array(values, dtype=mx.float32).reshape(-1)  # torch.tensor(list of floats): float32
        v = mx.clip(v, c.min_val, c.max_val)
        return (v - c.min_val) / (c.max_val - c.min_val)

    def __call__(self, values: Sequence[float] | mx.array) -> tuple[mx.array, mx.array]:
        emb = self.embed(self.normalize(values))[:, None, :]
        return emb, mx.ones((emb.shape[0], 1), dtype=mx.bool_)

    def sanitize(self, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
        """`prefix` is `conditioner.conditioners.<id>.` in a stable-audio-tools checkpoint."""
        return {
            "weights": ckpt.take(f"{prefix}embedder.embedding.0.weights"),
            "linear.weight": ckpt.take(f"{prefix}embedder.embedding.1.weight"),
            "linear.bias": ckpt.take(f"{prefix}embedder.embedding.1.bias"),
        }


def t5_condition(
    hidden: mx.array, mask: mx.array, max_length: int, proj: nn.Linear | None = None
) -> tuple[mx.array, mx.array]:
    """T5Conditioner after the encoder: hidden (B, S, t5_dim), mask (B, S), S <= max_length
    -> (B, max_length, D) embeddings and a bool mask (B, max_length).

    The reference tokenizes with padding="max_length"; padded positions are zeroed by the mask, so encoding
    only the S real tokens and padding afterwards gives the same tensors. `proj` is the conditioner's
    `proj_out` (present only when the T5 width differs from cond_dim or `project_out` is set).
    """
    b, s, _ = hidden.shape
    if s > max_length:
        raise UserError(
            f"T5 output has {s} tokens, more than max_length {max_length}: truncate when tokenizing"
        )
    mask = mask.astype(mx.bool_)
    if s < max_length:
        hidden = mx.concatenate(
            [hidden, mx.zeros((b, max_length - s, hidden.shape[-1]), hidden.dtype)], axis=1
        )
        mask = mx.concatenate([mask, mx.zeros((b, max_length - s), mx.bool_)], axis=1)
    if proj is not None:
        hidden = proj(hidden.astype(proj.weight.dtype))
    # `embeddings * attention_mask.unsqueeze(-1).float()`: the product is float32 even for a float16 T5.
    return hidden * mask[..., None].astype(mx.float32), mask


class T5Conditioner(nn.Module):
    """The T5 conditioner's own weights (only `proj_out`, if any) around `t5_condition`."""

    def __init__(self, config: T5CondConfig):
        super().__init__()
        self.config = config
        if config.has_proj:
            self.proj_out = nn.Linear(config.t5_dim, config.output_dim)

    def __call__(self, hidden: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        if hidden.shape[-1] != self.config.t5_dim:
            raise UserError(
                f"T5 hidden size {hidden.shape[-1]} != {self.config.t5_dim} ({self.config.t5_model_name})"
            )
        proj = self.proj_out if self.config.has_proj else None
        return t5_condition(hidden, mask, self.config.max_length, proj)

    def sanitize(self, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
        """`prefix` is `conditioner.conditioners.<id>.`; the T5 weights are not in the checkpoint."""
        if not self.config.has_proj:
            return {}
        return {
            "proj_out.weight": ckpt.take(f"{prefix}proj_out.weight"),
            "proj_out.bias": ckpt.take(f"{prefix}proj_out.bias"),
        }


@dataclass
class Conditioning:
    """The DiT's conditioning inputs, as `get_conditioning_inputs` returns them.

    cross_attn_cond (B, S, cond_dim), cross_attn_mask (B, S) bool (the DiT ignores it, the negative-prompt
    path uses it), global_cond (B, G). None where the config lists no id.
    """

    cross_attn_cond: mx.array | None
    cross_attn_mask: mx.array | None
    global_cond: mx.array | None


def assemble(
    tensors: Mapping[str, tuple[mx.array, mx.array]],
    cross_attention_cond_ids: Sequence[str],
    global_cond_ids: Sequence[str],
) -> Conditioning:
    """`ConditionedDiffusionModelWrapper.get_conditioning_inputs` on outputs `{id: (tensor, mask)}`."""
    cross = mask = glob = None
    if cross_attention_cond_ids:
        parts, masks = [], []
        for key in cross_attention_cond_ids:
            x, m = tensors[key]
            if x.ndim == 2:  # add the sequence axis
                x, m = x[:, None], m[:, None]
            parts.append(x)
            masks.append(m.astype(mx.bool_))
        cross = mx.concatenate(parts, axis=1)
        mask = mx.concatenate(masks, axis=1)
    if global_cond_ids:
        glob = mx.concatenate([tensors[key][0] for key in global_cond_ids], axis=-1)
        if glob.ndim == 3 and glob.shape[1] == 1:  # torch's squeeze(1) only drops a size-1 axis
            glob = glob[:, 0]
    return Conditioning(cross, mask, glob)


class StableAudioConditioner(nn.Module):
    """A Stable Audio MultiConditioner (T5 post-processing + number embedders) and its assembly."""

    def __init__(self, config: ConditioningConfig):
        super().__init__()
        self.config = config
        self.numbers = {cid: NumberConditioner(c) for cid, c in config.numbers.items()}
        self.text = {cid: T5Conditioner(c) for cid, c in config.t5.items()}

    @property
    def text_id(self) -> str:
        if len(self.config.t5) != 1:
            raise UserError(f"expected one T5 conditioner, the config has {len(self.config.t5)}")
        return next(iter(self.config.t5))

    def __call__(
        self,
        text: Mapping[str, tuple[mx.array, mx.array]] | tuple[mx.array, mx.array],
        numbers: Mapping[str, Sequence[float] | mx.array],
    ) -> Conditioning:
        """T5 outputs `{id: (hidden (B, S, t5_dim), mask (B, S))}` (or one pair for the single T5
        conditioner) and numbers `{id: B floats}` -> the DiT's conditioning. Only the ids the DiT uses are
        needed."""
        if isinstance(text, tuple):
            text = {self.text_id: text}
        used = dict.fromkeys(self.config.cross_attention_cond_ids + self.config.global_cond_ids)
        out: dict[str, tuple[mx.array, mx.array]] = {}
        for cid in used:
            if cid in self.text:
                if cid not in text:
                    raise UserError(f"missing T5 output for conditioner '{cid}'")
                out[cid] = self.text[cid](*text[cid])
            else:
                if cid not in numbers:
                    raise UserError(f"missing value for number conditioner '{cid}'")
                out[cid] = self.numbers[cid](numbers[cid])
        batches = {v[0].shape[0] for v in out.values()}
        if len(batches) > 1:
            raise UserError(f"conditioning inputs disagree on the batch size: {sorted(batches)}")
        return assemble(out, self.config.cross_attention_cond_ids, self.config.global_cond_ids)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "conditioner.conditioners.") -> dict[str, mx.array]:
        out: dict[str, mx.array] = {}
        for group, mods in (("numbers", self.numbers), ("text", self.text)):
            for cid, mod in mods.items():
                for k, v in mod.sanitize(ckpt, f"{prefix}{cid}.").items():
                    out[f"{group}.{cid}.{k}"] = v
        return out
