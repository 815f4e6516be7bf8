"""Stable Audio 3 conditioning: `stable_audio_3.models.conditioners` (T5GemmaConditioner, NumberConditioner,
MultiConditioner) and `ConditionedDiffusionModelWrapper.get_conditioning_inputs`, built from
model_config.json `model.conditioning` (+ the id lists of `model.diffusion`).

- text (`"t5gemma"`): tokens (`truncation=True, max_length, padding="max_length"`) -> T5Gemma encoder
  `last_hidden_state` -> `proj_out` (Linear when `project_out` or the widths differ, else identity) ->
  padding: `"learned"` puts the learned `padding_embedding` at padded positions, `"zero"` zeroes them,
  `"none"` keeps them; returns (states [B, L, D], mask [B, L]);
- number (`"number"`): float -> clamp(min, max) -> (x - min) / (max - min) -> Fourier features (`"expo"`:
  ExpoFourierFeatures(256) = [cos, sin](2 pi x f), f = 0.5 .. 1e4 log-spaced; `"learned"`:
  [x, sin, cos](2 pi x w) with learned w) -> Linear -> (embedding [B, 1, D], mask ones [B, 1]);
- assembly: `cross_attn_cond` = the `cross_attention_cond_ids` outputs concatenated over the sequence (prompt
  tokens then the seconds token), `cross_attn_mask` likewise (float, as torch.cat promotes bool with float),
  `global_cond` = the `global_cond_ids` outputs concatenated over channels, squeezed to [B, D].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..config_fields import REQUIRED, field
from ..errors import UserError
from ..text.t5gemma import T5GemmaConfig, T5GemmaEncoder, T5GemmaTokenizer
from ..weights import Checkpoint
from .fourier import expo_frequencies

TEXT_MODELS = ("google/t5gemma-b-b-ul2",)  # T5GemmaConditioner.T5GEMMA_MODELS
PADDING_MODES = ("none", "zero", "learned")
FOURIER_TYPES = ("learned", "expo")
NUMBER_FEATURES = 256  # NumberEmbedder's default `dim`; NumberConditioner never passes another
EXPO_FREQ_RANGE = (0.5, 10000.0)  # ExpoFourierFeatures defaults
_TEXT_KEYS = {
    "max_length",
    "padding_mode",
    "project_out",
    "model_name",
    "enable_grad",
    "model_path",
    "repo_id",
}
_TEXT_KEYS |= {"subfolder", "output_dim"}
_NUMBER_KEYS = {"min_val", "max_val", "fourier_features_type", "output_dim"}


def _get(
    d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = REQUIRED
) -> Any:
    return field(d, key, kind, where, default, what="Stable Audio 3 model_config.json")


@dataclass(frozen=True)
class TextConditionerConfig:
    id: str
    output_dim: int
    max_length: int = 128
    padding_mode: str = "zero"
    project_out: bool = False
    model_name: str = "google/t5gemma-b-b-ul2"
    model_path: str | None = None
    subfolder: str | None = None


@dataclass(frozen=True)
class NumberConditionerConfig:
    id: str
    output_dim: int
    min_val: float = 0.0
    max_val: float = 1.0
    fourier_features_type: str = "learned"


def _text_config(cid: str, c: dict[str, Any], cond_dim: int) -> TextConditionerConfig:
    where = f"conditioner '{cid}'"
    unknown = sorted(set(c) - _TEXT_KEYS)
    if unknown:
        raise UserError(f"{where} has unknown field(s) {', '.join(unknown)}")
    name = _get(c, "model_name", str, where, "google/t5gemma-b-b-ul2")
    if name not in TEXT_MODELS:
        raise UserError(f"{where}: unknown T5Gemma model_name '{name}' (supported: {', '.join(TEXT_MODELS)})")
    mode = _get(c, "padding_mode", str, where, "zero")
    if mode not in PADDING_MODES:
        raise UserError(f"{where}: unknown padding_mode '{mode}' (supported: {', '.join(PADDING_MODES)})")
    max_length = _get(c, "max_length", int, where, 128)
    if max_length < 1:
        raise UserError(f"{where}: max_length must be positive, got {max_length}")
    return TextConditionerConfig(
        id=cid,
        output_dim=_get(c, "output_dim", int, where, cond_dim),
        max_length=max_length,
        padding_mode=mode,
        project_out=_get(c, "project_out", bool, where, False),
        model_name=name,
        model_path=_get(c, "model_path", (str, type(None)), where, None),
        subfolder=_get(c, "subfolder", (str, type(None)), where, None),
    )


def _number_config(cid: str, c: dict[str, Any], cond_dim: int) -> NumberConditionerConfig:
    where = f"conditioner '{cid}'"
    unknown = sorted(set(c) - _NUMBER_KEYS)
    if unknown:
        raise UserError(f"{where} has unknown field(s) {', '.join(unknown)}")
    kind = _get(c, "fourier_features_type", str, where, "learned")
    if kind not in FOURIER_TYPES:
        raise UserError(
            f"{where}: unknown fourier_features_type '{kind}' (supported: {', '.join(FOURIER_TYPES)})"
        )
    lo = float(_get(c, "min_val", (int, float), where, 0))
    hi = float(_get(c, "max_val", (int, float), where, 1))
    if not hi > lo:
        raise UserError(f"{where}: max_val ({hi}) must exceed min_val ({lo})")
    return NumberConditionerConfig(
        id=cid,
        output_dim=_get(c, "output_dim", int, where, cond_dim),
        min_val=lo,
        max_val=hi,
        fourier_features_type=kind,
    )


@dataclass(frozen=True)
class ConditioningConfig:
    cond_dim: int
    conditioners: tuple[TextConditionerConfig | NumberConditionerConfig, ...]
    cross_attention_ids: tuple[str, ...]
    global_cond_ids: tuple[str, ...]
    local_add_cond_ids: tuple[str, ...] = ()  # filled by the generator (inpainting mask and input)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ConditioningConfig:
        """From a model_config.json dict (or its `model` section)."""
        model = config.get("model", config) if isinstance(config, dict) else None
        if not isinstance(model, dict):
            raise UserError("model_config.json must be a JSON object")
        cond = _get(model, "conditioning", dict, "model_config.json 'model'")
        diffusion = _get(model, "diffusion", dict, "model_config.json 'model'")
        where = "model_config.json 'conditioning'"
        cond_dim = _get(cond, "cond_dim", int, where)
        if _get(cond, "pre_encoded_keys", list, where, []):
            raise UserError(f"{where}: pre_encoded_keys are not supported")
        if _get(cond, "default_keys", dict, where, {}):
            raise UserError(f"{where}: default_keys are not supported")
        items = []
        for i, info in enumerate(_get(cond, "configs", list, where)):
            if not isinstance(info, dict):
                raise UserError(f"{where} configs[{i}] must be an object")
            cid = _get(info, "id", str, f"{where} configs[{i}]")
            kind = _get(info, "type", str, f"conditioner '{cid}'")
            c = _get(info, "config", dict, f"conditioner '{cid}'", {})
            if kind == "t5gemma":
                items.append(_text_config(cid, c, cond_dim))
            elif kind == "number":
                items.append(_number_config(cid, c, cond_dim))
            else:
                raise UserError(f"conditioner '{cid}': unknown type '{kind}' (supported: t5gemma, number)")
        ids = [c.id for c in items]
        if len(set(ids)) != len(ids):
            raise UserError(f"{where}: duplicate conditioner ids in {ids}")
        dwhere = "model_config.json 'diffusion'"
        cross = tuple(_get(diffusion, "cross_attention_cond_ids", list, dwhere, []))
        glob = tuple(_get(diffusion, "global_cond_ids", list, dwhere, []))
        local = tuple(_get(diffusion, "local_add_cond_ids", list, dwhere, []))
        for key in cross + glob:
            if key not in ids:
                raise UserError(f"{dwhere} names conditioner '{key}', which 'conditioning' does not define")
        return cls(
            cond_dim=cond_dim,
            conditioners=tuple(items),
            cross_attention_ids=cross,
            global_cond_ids=glob,
            local_add_cond_ids=local,
        )

    @property
    def text(self) -> list[TextConditionerConfig]:
        return [c for c in self.conditioners if isinstance(c, TextConditionerConfig)]


class NumberConditioner(nn.Module):
    """floats [B] -> (embedding [B, 1, D], mask ones [B, 1]). Parameters: embedding.{weight,bias} (+
    `weights`, the learned Fourier frequencies, for `fourier_features_type: "learned"`)."""

    def __init__(self, config: NumberConditionerConfig):
        super().__init__()
        self.config = config
        if config.fourier_features_type == "expo":
            self._freqs = mx.array(expo_frequencies(NUMBER_FEATURES, *EXPO_FREQ_RANGE))
            self.embedding = nn.Linear(NUMBER_FEATURES, config.output_dim)
        else:
            self.weights = mx.zeros((NUMBER_FEATURES // 2,))
            self.embedding = nn.Linear(NUMBER_FEATURES + 1, config.output_dim)

    def features(self, x: mx.array) -> mx.array:
        """Fourier features of the normalised values x [B] (float32), in the reference's operation order."""
        x = x[:, None]
        if self.config.fourier_features_type == "expo":
            args = x * self._freqs * 2 * math.pi
            return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)
        freqs = x * self.weights[None, :] * 2 * math.pi
        return mx.concatenate([x, mx.sin(freqs), mx.cos(freqs)], axis=-1)

    def __call__(self, values: list[float]) -> tuple[mx.array, mx.array]:
        c = self.config
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"conditioner '{c.id}' needs numbers, got {values!r}") from None
        x = mx.clip(mx.array(floats, dtype=mx.float32), c.min_val, c.max_val)
        x = (x - c.min_val) / (c.max_val - c.min_val)
        emb = self.embedding(self.features(x.astype(self.embedding.weight.dtype)))[:, None, :]
        return emb, mx.ones((len(floats), 1), dtype=mx.float32)

    def sanitize(self, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
        """`embedder.embedding` is Sequential(features, Linear): index 0 holds the learned frequencies
        (none for "expo", whose frequencies are fixed), index 1 the Linear."""
        p = f"{prefix}embedder.embedding."
        out = {"embedding.weight": ckpt.take(f"{p}1.weight"), "embedding.bias": ckpt.take(f"{p}1.bias")}
        if self.config.fourier_features_type == "learned":
            out["weights"] = ckpt.take(f"{p}0.weights")
        return out


class TextConditioner(nn.Module):
    """(input_ids [B, L], attention_mask [B, L]) -> (states [B, L, D], mask [B, L] bool). Parameters:
    encoder.* (T5Gemma, from its own checkpoint), proj_out.{weight,bias} when projecting, padding_embedding
    for `padding_mode: "learned"`."""

    def __init__(self, config: TextConditionerConfig, encoder_config: T5GemmaConfig):
        super().__init__()
        self.config = config
        self.encoder = T5GemmaEncoder(encoder_config)
        dim = encoder_config.hidden_size
        self.projects = config.project_out or dim != config.output_dim
        if self.projects:
            self.proj_out = nn.Linear(dim, config.output_dim)
        if config.padding_mode == "learned":
            self.padding_embedding = mx.zeros((config.output_dim,))

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> tuple[mx.array, mx.array]:
        keep = mx.array(attention_mask) != 0
        x = self.encoder(input_ids, keep)
        if self.projects:
            x = self.proj_out(x.astype(self.proj_out.weight.dtype))
        mode = self.config.padding_mode
        if mode == "zero":
            x = x * keep[..., None].astype(mx.float32)
        elif mode == "learned":
            x = mx.where(keep[..., None], x, self.padding_embedding)
        return x, keep

    def sanitize(self, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
        """The conditioner's own tensors (the T5Gemma weights come from `sanitize_encoder`)."""
        out = {}
        if self.projects:
            out["proj_out.weight"] = ckpt.take(f"{prefix}proj_out.weight")
            out["proj_out.bias"] = ckpt.take(f"{prefix}proj_out.bias")
        if self.config.padding_mode == "learned":
            out["padding_embedding"] = ckpt.take(f"{prefix}padding_embedding")
        return out


class Conditioners(nn.Module):
    """MultiConditioner: one conditioner per config id. Parameters: conditioners.<id>.*"""

    def __init__(self, config: ConditioningConfig, text_configs: dict[str, T5GemmaConfig]):
        super().__init__()
        self.config = config
        self.conditioners = {}
        for c in config.conditioners:
            if isinstance(c, TextConditionerConfig):
                if c.id not in text_configs:
                    raise UserError(f"no T5Gemma config given for text conditioner '{c.id}'")
                self.conditioners[c.id] = TextConditioner(c, text_configs[c.id])
            else:
                self.conditioners[c.id] = NumberConditioner(c)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, tuple[mx.array, mx.array]]:
        """id -> (tensor, mask). Text conditioners take (input_ids, attention_mask) (see `TextTokenizers`),
        number conditioners a list of floats."""
        out = {}
        for cid, cond in self.conditioners.items():
            if cid not in inputs:
                raise UserError(f"conditioning input '{cid}' is missing")
            value = inputs[cid]
            out[cid] = cond(*value) if isinstance(cond, TextConditioner) else cond(value)
        return out

    def sanitize(self, ckpt: Checkpoint, prefix: str = "conditioner.conditioners.") -> dict[str, mx.array]:
        """The conditioner tensors of model.safetensors (`conditioner.conditioners.<id>.*`), our names."""
        out = {}
        for cid, cond in self.conditioners.items():
            for k, v in cond.sanitize(ckpt, f"{prefix}{cid}.").items():
                out[f"conditioners.{cid}.{k}"] = v
        return out

    def sanitize_encoder(self, cid: str, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """The T5Gemma weights of text conditioner `cid` from its own checkpoint (the bundled enc-dec)."""
        cond = self.conditioners.get(cid)
        if not isinstance(cond, TextConditioner):
            raise UserError(f"'{cid}' is not a text conditioner")
        return {f"conditioners.{cid}.encoder.{k}": v for k, v in cond.encoder.sanitize(ckpt, prefix).items()}


def conditioning_inputs(config: ConditioningConfig, tensors: dict[str, Any]) -> dict[str, mx.array | None]:
    """`get_conditioning_inputs`: {cross_attn_cond [B, S, D], cross_attn_mask [B, S], global_cond [B, D],
    local_add_cond [B, C, T]} (None where the config lists no ids). `tensors` maps ids to the conditioners'
    (tensor, mask) and the `local_add_cond_ids` (e.g. inpaint_mask [B, 1, T], inpaint_masked_input
    [B, io, T]) to a channels-first tensor."""
    cross = mask = glob = local = None
    if config.cross_attention_ids:
        parts, masks = [], []
        for key in config.cross_attention_ids:
            x, m = tensors[key]
            if x.ndim == 2:  # a sequence axis where a conditioner gives one vector
                x, m = x[:, None], m[:, None]
            parts.append(x)
            masks.append(m)
        cross = mx.concatenate(parts, axis=1)
        # torch.cat promotes the text conditioner's bool mask with the number conditioner's float ones
        floating = any(mx.issubdtype(m.dtype, mx.floating) for m in masks)
        mask = mx.concatenate([m.astype(mx.float32) if floating else m for m in masks], axis=1)
    if config.global_cond_ids:
        glob = mx.concatenate([tensors[key][0] for key in config.global_cond_ids], axis=-1)
        if glob.ndim == 3 and glob.shape[1] == 1:  # torch's squeeze(1)
            glob = glob[:, 0]
    if config.local_add_cond_ids:
        missing = [k for k in config.local_add_cond_ids if k not in tensors]
        if missing:
            raise UserError(f"local conditioning input(s) {', '.join(missing)} missing")
        local = mx.concatenate([mx.array(tensors[k]) for k in config.local_add_cond_ids], axis=1)
    return {"cross_attn_cond": cross, "cross_attn_mask": mask, "global_cond": glob, "local_add_cond": local}


def text_encoder_folder(config: TextConditionerConfig, checkpoint_folder: str | Path) -> Path:
    """Where a text conditioner's T5Gemma lives: `model_path` if it is a folder, else `subfolder` (the copy
    bundled with the released checkpoint, as `repo_id` + `subfolder` name it)."""
    if config.model_path and Path(config.model_path).is_dir():
        return Path(config.model_path)
    if config.subfolder:
        return Path(checkpoint_folder) / config.subfolder
    raise UserError(
        f"text conditioner '{config.id}' names no bundled T5Gemma folder (model_path / subfolder)"
    )


class TextTokenizers:
    """The tokenizer of each text conditioner: (input_ids, attention_mask) as its conditioner takes them."""

    def __init__(self, config: ConditioningConfig, folders: dict[str, str | Path]):
        self.config = {c.id: c for c in config.text}
        self.tokenizers = {cid: T5GemmaTokenizer(folders[cid]) for cid in self.config}

    def __call__(self, cid: str, texts: list[str]) -> tuple[mx.array, mx.array]:
        ids, mask = self.tokenizers[cid](texts, self.config[cid].max_length)
        return mx.array(ids), mx.array(mask)
