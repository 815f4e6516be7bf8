"""T5Gemma encoder and tokenizer (the encoder half of an encoder-decoder Gemma, e.g. google/t5gemma-b-b-ul2).

Mirrors transformers 5.x `T5GemmaEncoderModel` (models/t5gemma/modeling_t5gemma.py, eager attention: the
model has no sdpa path because of the soft-capping) op for op:
- token embeddings x `tensor(sqrt(hidden), dtype)`; Gemma RMSNorm `x * rsqrt(mean(x^2) + eps) * (1 + w)` in
  float32, cast back; pre- and post-norms around attention and around the MLP, a final norm;
- GQA self-attention, RoPE (rotate-half layout, cos/sin in float32) on the whole head, scores scaled by
  `query_pre_attn_scalar ** -0.5`, then soft-capped `tanh(s / cap) * cap`, then the additive mask
  (`finfo(dtype).min` on hidden keys); bidirectional: padded keys are hidden, and on "sliding_attention"
  layers the keys farther than `sliding_window` too (|i - j| > window: transformers' bidirectional window);
- GeGLU MLP `down(act(gate(x)) * up(x))`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config_fields import REQUIRED, field, positive_int
from ..errors import UserError
from ..weights import Checkpoint
from .tokenizer_json import read_tokenizer_folder, token_text

_ACTIVATIONS = {
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_new": nn.gelu_approx,
    "gelu": nn.gelu,
}  # tanh / erf
_LAYER_TYPES = ("sliding_attention", "full_attention")


def _field(d: dict[str, Any], key: str, kind: type, default: Any = None, required: bool = False) -> Any:
    """`d[key]` checked against `kind` (ints are accepted for floats; bools never pass for numbers); a null
    field counts as missing."""
    default = REQUIRED if required else default
    return field(d, key, kind, "T5Gemma config", default, what="T5Gemma encoder config", none_is_missing=True)


@dataclass(frozen=True)
class T5GemmaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attn_logit_softcapping: float | None = 50.0
    sliding_window: int | None = 4096
    hidden_activation: str = "gelu_pytorch_tanh"
    attention_bias: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T5GemmaConfig:
        """From a T5Gemma config.json (its `encoder` section is used) or from that section itself.

        Optional fields take transformers' `T5GemmaModuleConfig` defaults, as transformers does."""
        if not isinstance(d, dict):
            raise UserError(f"T5Gemma config must be a JSON object, got {type(d).__name__}")
        if "encoder" in d:
            d = d["encoder"]
            if not isinstance(d, dict):
                raise UserError("T5Gemma config field 'encoder' must be an object")
        layers = _field(d, "num_hidden_layers", int, required=True)
        layer_types = _field(d, "layer_types", list)
        if layer_types is None:  # transformers' default: sliding, full, sliding, ...
            layer_types = [_LAYER_TYPES[i % 2] for i in range(layers)]
        if len(layer_types) != layers or any(t not in _LAYER_TYPES for t in layer_types):
            raise UserError(
                f"T5Gemma config 'layer_types' must list {layers} of {', '.join(_LAYER_TYPES)}, "
                f"got {layer_types}"
            )
        rope = _field(d, "rope_parameters", dict)
        if rope is not None:  # transformers 5 layout; older configs keep a top-level rope_theta
            if rope.get("rope_type", "default") != "default":
                raise UserError(
                    f"unsupported T5Gemma rope_type '{rope.get('rope_type')}' (supported: default)"
                )
            theta = _field(rope, "rope_theta", float, 10000.0)
        else:
            theta = _field(d, "rope_theta", float, 10000.0)
        act = _field(d, "hidden_activation", str, "gelu_pytorch_tanh")
        if act not in _ACTIVATIONS:
            raise UserError(
                f"unsupported T5Gemma hidden_activation '{act}' (supported: {', '.join(_ACTIVATIONS)})"
            )
        heads = _field(d, "num_attention_heads", int, required=True)
        kv_heads = _field(d, "num_key_value_heads", int, required=True)
        if heads % kv_heads:
            raise UserError(
                f"T5Gemma num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        return cls(
            vocab_size=_field(d, "vocab_size", int, required=True),
            hidden_size=_field(d, "hidden_size", int, required=True),
            intermediate_size=_field(d, "intermediate_size", int, required=True),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=_field(d, "head_dim", int, 256),
            layer_types=tuple(layer_types),
            query_pre_attn_scalar=_field(d, "query_pre_attn_scalar", float, 256.0),
            rms_norm_eps=_field(d, "rms_norm_eps", float, 1e-6),
            rope_theta=theta,
            attn_logit_softcapping=_field(d, "attn_logit_softcapping", float),
            sliding_window=_field(d, "sliding_window", int),
            hidden_activation=act,
            attention_bias=_field(d, "attention_bias", bool, False),
        )


class GemmaRMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        out = x32 * mx.rsqrt(mx.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (out * (1.0 + self.weight.astype(mx.float32))).astype(x.dtype)


def _rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class T5GemmaAttention(nn.Module):
    def __init__(self, config: T5GemmaConfig):
        super().__init__()
        self.config = config
        h, kv, hd, bias = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.attention_bias,
        )
        self.q_proj = nn.Linear(config.hidden_size, h * hd, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * hd, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * hd, bias=bias)
        self.o_proj = nn.Linear(h * hd, config.hidden_size, bias=bias)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        c = self.config
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, c.num_attention_heads, c.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, c.num_key_value_heads, c.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, c.num_key_value_heads, c.head_dim).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = c.num_attention_heads // c.num_key_value_heads
        if groups > 1:
            k, v = mx.repeat(k, groups, axis=1), mx.repeat(v, groups, axis=1)
        scores = (q @ k.transpose(0, 1, 3, 2)) * (c.query_pre_attn_scalar**-0.5)
        if c.attn_logit_softcapping is not None:
            scores = mx.tanh(scores / c.attn_logit_softcapping) * c.attn_logit_softcapping
        weights = mx.softmax((scores + mask).astype(mx.float32), axis=-1).astype(q.dtype)
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
        return self.o_proj(out)


class T5GemmaMLP(nn.Module):
    def __init__(self, config: T5GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = _ACTIVATIONS[config.hidden_activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class T5GemmaEncoderLayer(nn.Module):
    def __init__(self, config: T5GemmaConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.pre_self_attn_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.self_attn = T5GemmaAttention(config)
        self.post_self_attn_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.mlp = T5GemmaMLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        x = x + self.post_self_attn_layernorm(self.self_attn(self.pre_self_attn_layernorm(x), cos, sin, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class T5GemmaEncoder(nn.Module):
    """(input_ids [B, L], attention_mask [B, L] | None) -> last_hidden_state [B, L, hidden].

    Our parameter names are transformers' encoder names: embed_tokens,
    layers.{i}.{pre,post}_self_attn_layernorm, layers.{i}.self_attn.{q,k,v,o}_proj,
    layers.{i}.{pre,post}_feedforward_layernorm, layers.{i}.mlp.{gate,up,down}_proj, norm.
    """

    def __init__(self, config: T5GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [T5GemmaEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def rope(self, length: int, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
        """(cos, sin) [1, 1, L, head_dim], computed in float32 and cast as transformers does."""
        d = self.config.head_dim
        inv_freq = 1.0 / (
            self.config.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d)
        )
        freqs = mx.arange(length, dtype=mx.float32)[:, None] * mx.array(inv_freq.astype(np.float32))[None, :]
        emb = mx.concatenate([freqs, freqs], axis=-1)
        return mx.cos(emb).astype(dtype)[None, None], mx.sin(emb).astype(dtype)[None, None]

    def masks(self, keep: mx.array, dtype: mx.Dtype) -> dict[str, mx.array]:
        """Additive masks [B, 1, L, L] per layer type from the key-padding mask `keep` [B, L] (bool)."""
        n = keep.shape[1]
        neg = mx.array(mx.finfo(dtype).min, dtype=dtype)
        zero = mx.array(0.0, dtype=dtype)
        out = {"full_attention": mx.where(keep[:, None, None, :], zero, neg)}
        if "sliding_attention" in self.config.layer_types:
            window = self.config.sliding_window
            if window is None:
                raise UserError("T5Gemma config has sliding_attention layers but no 'sliding_window'")
            pos = mx.arange(n)
            near = mx.abs(pos[:, None] - pos[None, :]) <= window
            out["sliding_attention"] = mx.where(keep[:, None, None, :] & near[None, None], zero, neg)
        return out

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        ids = mx.array(input_ids)
        x = self.embed_tokens(ids)
        keep = mx.ones(ids.shape, dtype=mx.bool_) if attention_mask is None else mx.array(attention_mask) != 0
        # transformers multiplies by tensor(sqrt(hidden), dtype=x.dtype): the rounded scale, not the exact one
        x = x * mx.array(self.config.hidden_size**0.5, dtype=x.dtype)
        cos, sin = self.rope(ids.shape[1], x.dtype)
        masks = self.masks(keep, x.dtype)
        for layer, kind in zip(self.layers, self.config.layer_types, strict=True):
            x = layer(x, cos, sin, masks[kind])
        return self.norm(x)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Our parameters from a T5Gemma checkpoint under `prefix`: the full encoder-decoder
        (`model.encoder.*`, as `T5GemmaForConditionalGeneration` saves it) or an encoder-only one
        (`encoder.*`)."""
        for stem in ("model.encoder.", "encoder."):
            if f"{prefix}{stem}embed_tokens.weight" in ckpt:
                base = prefix + stem
                break
        else:
            raise UserError(
                f"{ckpt.name} lacks tensor '{prefix}model.encoder.embed_tokens.weight': "
                "not a T5Gemma checkpoint"
            )
        names = ["embed_tokens.weight", "norm.weight"]
        bias = [".bias"] if self.config.attention_bias else []
        for i in range(self.config.num_hidden_layers):
            p = f"layers.{i}."
            for n in ("pre_self_attn_layernorm", "post_self_attn_layernorm"):
                names.append(f"{p}{n}.weight")
            for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                names.append(f"{p}{n}.weight")
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names += [f"{p}self_attn.{n}{s}" for s in [".weight", *bias]]
            names += [f"{p}mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")]
        return {n: ckpt.take(base + n) for n in names}


def t5gemma_ignore_patterns(prefix: str = "") -> list[str]:
    """Regexes (for `Checkpoint.finish(ignore=...)`) of a full T5Gemma's tensors a text encoder never uses.

    The bundled checkpoint is `T5GemmaForConditionalGeneration`: its decoder stack and LM head only serve text
    generation; only the encoder's hidden states are consumed."""
    p = re.escape(prefix)
    return [rf"{p}model\.decoder\..*", rf"{p}lm_head\..*"]


def load_t5gemma_config(folder: str | Path) -> T5GemmaConfig:
    path = Path(folder) / "config.json"
    try:
        return T5GemmaConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read T5Gemma config {path}: {e}") from None


def _max_length(value: Any) -> int:
    """A positive int max_length (conditioner configs spell it in JSON)."""
    return positive_int(value, "max_length")


# tokenizer_config.json classes we reproduce; Gemma's rebuilds the pipeline and pads on the left by default
_PLAIN_CLASSES = (None, "TokenizersBackend", "PreTrainedTokenizerFast")
_GEMMA_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")


class T5GemmaTokenizer:
    """A folder's tokenizer.json (+ tokenizer_config.json) run as transformers 5.x `AutoTokenizer` runs it,
    for `tok(texts, truncation=True, max_length=n, padding="max_length")`:

    - with a tokenizer.json, transformers drops `add_bos_token` / `add_eos_token` of tokenizer_config.json:
      the special tokens are tokenizer.json's post-processor (Gemma's: `<bos> $A`, no `<eos>`), none if none;
    - `GemmaTokenizer` rebuilds the backend from the vocab and merges only (BPE with byte fallback and fused
      unknowns, spaces -> "▁" normaliser, no prefix space) and adds its default `<mask>` special token;
    - padding side: tokenizer_config's `padding_side`, else tokenizer.json's padding, else the class default
      (left for GemmaTokenizer, right otherwise); truncation side likewise (default right); the special tokens
      count towards max_length (the text is truncated, the template kept).
    """

    def __init__(self, folder: str | Path):
        from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

        folder = Path(folder)
        f = read_tokenizer_folder(folder, "T5Gemma")
        path, config_path, spec, config, tok = f.path, f.config_path, f.spec, f.config, f.tokenizer
        cls = config.get("tokenizer_class")
        if cls not in _PLAIN_CLASSES + _GEMMA_CLASSES:
            raise UserError(f"unsupported tokenizer_class '{cls}' in {config_path}")
        gemma = cls in _GEMMA_CLASSES
        names = {k: token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        if gemma:
            names = {k: v or f"<{k[:-6]}>" for k, v in names.items()}
            names["mask_token"] = token_text(config.get("mask_token")) or "<mask>"
            model = spec.get("model", {})
            if model.get("type") != "BPE":
                raise UserError(f"{path} is not a BPE tokenizer, which GemmaTokenizer needs")
            merges = [
                tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])
            ]
            post = tok.post_processor
            tok = Tokenizer(
                models.BPE(
                    vocab=model["vocab"], merges=merges, unk_token=names["unk_token"], fuse_unk=True,
                    byte_fallback=True, dropout=None,
                )
            )  # fmt: skip
            tok.normalizer = normalizers.Replace(" ", "▁")
            tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
            tok.post_processor = post
        if tok.post_processor is None:
            from tokenizers import processors

            tok.post_processor = processors.TemplateProcessing(
                single="$A:0", pair="$A:0 $B:1", special_tokens=[]
            )
        # transformers adds tokenizer_config's added tokens, then the named special tokens still missing
        have = set() if gemma else {str(t.content) for t in tok.get_added_tokens_decoder().values()}
        extra = []
        for _, t in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
            if t.get("content") not in have:
                keys = ("single_word", "lstrip", "rstrip", "normalized", "special")
                extra.append(AddedToken(t["content"], **{k: t[k] for k in keys if k in t}))
                have.add(t["content"])
        extra += [AddedToken(s, special=True) for s in names.values() if s is not None and s not in have]
        if extra:
            tok.add_special_tokens([t for t in extra if t.special])
            tok.add_tokens([t for t in extra if not t.special])
        pad = names["pad_token"] or (spec.get("padding") or {}).get("pad_token")
        self.pad_id = tok.token_to_id(pad) if pad is not None else None
        if self.pad_id is None:
            raise UserError(f"{folder} has no pad token: the text conditioner pads to max_length")
        self.pad_token = pad
        json_pad, json_trunc = spec.get("padding") or {}, spec.get("truncation") or {}
        self.padding_side = (
            config.get("padding_side") or json_pad.get("direction") or ("left" if gemma else "right")
        )
        self.truncation_side = config.get("truncation_side") or json_trunc.get("direction") or "right"
        for side in (self.padding_side, self.truncation_side):
            if side not in ("left", "right"):
                raise UserError(f"{config_path}: padding/truncation side must be left or right, got {side!r}")
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok

    def __call__(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int32 [B, max_length]: truncated and padded to `max_length`."""
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise UserError("text prompts must be strings")
        max_length = _max_length(max_length)
        tok = self._tok
        tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction=self.truncation_side)
        tok.enable_padding(
            direction=self.padding_side, pad_id=self.pad_id, pad_token=self.pad_token, length=max_length
        )
        try:
            encs = tok.encode_batch(list(texts), add_special_tokens=True)
        finally:
            tok.no_padding()
            tok.no_truncation()
        ids = np.array([e.ids for e in encs], dtype=np.int32).reshape(len(texts), max_length)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int32).reshape(len(texts), max_length)
        return ids, mask


def load_t5gemma_tokenizer(folder: str | Path) -> T5GemmaTokenizer:
    return T5GemmaTokenizer(folder)


def load_t5gemma(folder: str | Path, ckpt: Checkpoint | None = None) -> T5GemmaEncoder:
    """The encoder of a T5Gemma folder (config.json + model.safetensors); every tensor accounted for."""
    from ..weights import read_tensors

    folder = Path(folder)
    model = T5GemmaEncoder(load_t5gemma_config(folder))
    if ckpt is None:
        ckpt = Checkpoint(read_tensors(folder), name=str(folder / "model.safetensors"))
    weights = model.sanitize(ckpt)
    ckpt.finish(ignore=t5gemma_ignore_patterns())
    model.load_weights(list(weights.items()), strict=True)
    return model
