"""Qwen3 as a text encoder (a transformers `Qwen3Model` checkpoint: its `last_hidden_state`, no pooling) and
its byte-level BPE tokenizer.

The network is mlx-lm's Qwen3 (`mlx_lm.models.qwen3.Qwen3Model`): the project takes Qwen3 models from mlx-lm.
Called on token ids alone it attends causally, which is what transformers' `Qwen3Model` does when it is
called without an attention mask (`create_causal_mask`: causal, no key padding). So padded positions at the
end of a row never change the valid ones, and their own outputs match the reference too (they see every token
before them). `embed(ids)` is the bare token-embedding lookup (`Qwen3Model.embed_tokens`).

The tokenizer reproduces transformers 5.x `AutoTokenizer` on a Qwen2Tokenizer folder for
`tok(text, padding="longest", truncation=True, max_length=n)` one text at a time: tokenizer.json's BPE (NFC,
the Qwen split regex, byte-level), no special tokens added around the text, special tokens written in the
text (e.g. `<|endoftext|>`) kept as one token, truncation on the right (or tokenizer_config's side).
`batch(texts, max_length)` then right-pads the rows with the pad id (mask 0), as callers that tokenize item by
item and stack afterwards do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.qwen3 import ModelArgs, Qwen3Model

from ..config_fields import positive_int
from ..errors import UserError
from ..weights import Checkpoint
from .tokenizer_json import read_tokenizer_folder, token_text

# the config fields mlx-lm's ModelArgs needs, with transformers' Qwen3Config defaults where it has them
_DEFAULTS = {
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "head_dim": 128,
    "tie_word_embeddings": False,
}
_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


def qwen3_args(d: dict[str, Any]) -> ModelArgs:
    """mlx-lm's ModelArgs from a Qwen3 config.json; features mlx-lm's Qwen3 lacks are refused."""
    if not isinstance(d, dict):
        raise UserError(f"Qwen3 config must be a JSON object, got {type(d).__name__}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise UserError(f"Qwen3 config lacks {', '.join(missing)}: not a Qwen3 config")
    for k in _REQUIRED:
        if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 1:
            raise UserError(f"Qwen3 config field '{k}' must be a positive integer, got {d[k]!r}")
    if d["num_attention_heads"] % d["num_key_value_heads"]:
        raise UserError("Qwen3 num_attention_heads is not a multiple of num_key_value_heads")
    if d.get("attention_bias", False):
        raise UserError("Qwen3 config with attention_bias is not supported")
    if d.get("use_sliding_window", False) or any(t != "full_attention" for t in d.get("layer_types") or []):
        raise UserError("Qwen3 config with sliding-window layers is not supported")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"unsupported Qwen3 rope_type {rope.get('rope_type')!r} (supported: default)")
    theta = d.get("rope_theta", rope.get("rope_theta", 1_000_000.0))
    fields = {**_DEFAULTS, **{k: v for k, v in d.items() if v is not None}}
    fields.update(model_type="qwen3", rope_theta=float(theta), rope_scaling=None, rope_parameters=None)
    return ModelArgs.from_dict(fields)


class Qwen3TextEncoder(Qwen3Model):
    """token ids [B, L] -> last_hidden_state [B, L, hidden] (causal, no mask); `embed(ids)` -> embeddings.

    Parameter names are transformers' `Qwen3Model` names: embed_tokens, layers.{i}.{input,post_attention}_
    layernorm, layers.{i}.self_attn.{q,k,v,o}_proj / {q,k}_norm, layers.{i}.mlp.{gate,up,down}_proj, norm."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)

    def __call__(self, input_ids: mx.array) -> mx.array:  # type: ignore[override]
        return super().__call__(mx.array(input_ids))

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.embed_tokens(mx.array(input_ids))

    def sanitize(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Our parameters from a `Qwen3Model` checkpoint under `prefix` (or a causal-LM one: `model.*`)."""
        for stem in ("", "model."):
            if f"{prefix}{stem}embed_tokens.weight" in ckpt:
                base = prefix + stem
                break
        else:
            raise UserError(f"{ckpt.name} lacks tensor '{prefix}embed_tokens.weight': not a Qwen3 checkpoint")
        names = ["embed_tokens.weight", "norm.weight"]
        for i in range(self.num_hidden_layers):
            p = f"layers.{i}."
            names += [f"{p}input_layernorm.weight", f"{p}post_attention_layernorm.weight"]
            names += [f"{p}self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            names += [f"{p}self_attn.{n}.weight" for n in ("q_norm", "k_norm")]
            names += [f"{p}mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
        return {n: ckpt.take(base + n) for n in names}


def qwen3_ignore_patterns(prefix: str = "") -> list[str]:
    """Regexes (for `Checkpoint.finish(ignore=...)`) of a causal-LM checkpoint's tensors an encoder never
    uses: the LM head only turns hidden states into next-token logits."""
    return [rf"{re.escape(prefix)}lm_head\..*"]


def load_qwen3_args(folder: str | Path) -> ModelArgs:
    path = Path(folder) / "config.json"
    try:
        return qwen3_args(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read Qwen3 config {path}: {e}") from None


def load_qwen3_encoder(folder: str | Path, ckpt: Checkpoint | None = None) -> Qwen3TextEncoder:
    """The encoder of a Qwen3 folder (config.json + model.safetensors); every tensor accounted for."""
    from ..weights import read_tensors

    folder = Path(folder)
    model = Qwen3TextEncoder(load_qwen3_args(folder))
    if ckpt is None:
        ckpt = Checkpoint(read_tensors(folder), name=str(folder / "model.safetensors"))
    weights = model.sanitize(ckpt)
    ckpt.finish(ignore=qwen3_ignore_patterns())
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model


# tokenizer_config.json classes whose tokenizer.json is run as it stands (no template around the text)
_CLASSES = (None, "Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend")


class Qwen3Tokenizer:
    """A Qwen folder's tokenizer.json (+ tokenizer_config.json); see the module docstring."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        f = read_tokenizer_folder(folder, "Qwen3")
        path, config_path, spec, config, tok = f.path, f.config_path, f.spec, f.config, f.tokenizer
        cls = config.get("tokenizer_class")
        if cls not in _CLASSES:
            raise UserError(f"unsupported tokenizer_class '{cls}' in {config_path}")
        if (spec.get("model") or {}).get("type") != "BPE":
            raise UserError(f"{path} is not a BPE tokenizer, which a Qwen tokenizer is")
        # Qwen2Tokenizer's default pad token; tokenizer_config.json names it for the released folders
        pad = token_text(config.get("pad_token")) if "pad_token" in config else "<|endoftext|>"
        self.pad_id = tok.token_to_id(pad) if pad is not None else None
        if self.pad_id is None:
            raise UserError(f"{folder} has no pad token ({pad!r} is not in its vocabulary)")
        self.truncation_side = config.get("truncation_side") or "right"
        if self.truncation_side not in ("left", "right"):
            raise UserError(
                f"{config_path}: truncation_side must be left or right, got {self.truncation_side!r}"
            )
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """The ids of one text (no special tokens added), truncated to `max_length` if given."""
        if not isinstance(text, str):
            raise UserError("text prompts must be strings")
        ids = self._tok.encode(text, add_special_tokens=True).ids
        if max_length is not None:
            positive_int(max_length, "max_length")
            if len(ids) > max_length:
                ids = ids[:max_length] if self.truncation_side == "right" else ids[-max_length:]
        return ids

    def batch(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int32 [B, longest]: each text tokenized and truncated on its own, then
        the rows right-padded with the pad id (mask 0)."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t, max_length) for t in texts]
        if not rows:
            raise UserError("no text prompts given")
        n = max(len(r) for r in rows)
        ids = np.full((len(rows), n), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), n), dtype=np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask
