"""T5 encoder and tokenizer, shared by MusicGen (text_encoder) and Stable Audio (t5-base conditioner).

Mirrors transformers' `T5EncoderModel` (models/t5/modeling_t5.py, 5.x) op for op, dtype rules included:
- T5LayerNorm: RMS norm without mean subtraction or bias, variance in float32, the normalised value is cast to
  the weight's dtype *before* the weight multiply when the weight is half precision;
- attention scores are NOT scaled by 1/sqrt(d); a relative position bias computed by block 0 is added in every
  block; padded keys get `finfo(dtype).min`;
- in float16 the residual stream is clamped after each sub-layer (`clamp_value`), and the FF output
  projection runs in its weight's dtype, so a checkpoint that keeps `wo` in float32 (transformers'
  `_keep_in_fp32_modules`) behaves as in transformers.

Speed: `T5Encoder.compiled` (default False; None = compile on the GPU only, what Stable Audio sets) runs the
encoder through `mx.compile` (weights as implicit inputs, one trace per input shape): the half-precision
RMS norms and fp16 clamps are chains of elementwise ops that then fuse (t5-base on the GPU: ~590 kernels
eager), the same operations, so the same values.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import UserError
from ..memory import check_bounds
from ..weights import Checkpoint

_ACTIVATIONS = {
    "relu": nn.relu,
    # transformers maps "gated-gelu" to gelu_new: the tanh approximation.
    "gelu_new": lambda x: 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "gelu": nn.gelu,
    "silu": nn.silu,
}


# Sanity bounds of the fields that size tensors (t5-v1_1-xxl: 24 layers, 4096 wide, 64 heads, 10240 ffn,
# 32128 tokens); a corrupt config is refused before the encoder is built from it.
T5_BOUNDS = {
    "vocab_size": (1, 1_048_576),
    "d_model": (1, 16384),
    "d_kv": (1, 4096),
    "d_ff": (1, 131072),
    "num_layers": (1, 256),
    "num_heads": (1, 1024),
    "relative_attention_num_buckets": (1, 4096),
    "relative_attention_max_distance": (1, 1_048_576),
}


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "relu"
    is_gated_act: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T5Config:
        """From a transformers T5 config dict (config.json, or `text_encoder` inside a MusicGen config)."""
        proj = d.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        gated = parts[0] == "gated"
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' backward-compatible alias
        if len(parts) > 2 or (len(parts) == 2 and not gated) or act not in _ACTIVATIONS:
            raise UserError(f"unsupported T5 feed_forward_proj '{proj}' (supported: relu, gated-gelu, ...)")
        try:
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                d_model=int(d["d_model"]),
                d_kv=int(d["d_kv"]),
                d_ff=int(d["d_ff"]),
                num_layers=int(d["num_layers"]),
                num_heads=int(d["num_heads"]),
                relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
                relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
                layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
                dense_act_fn=act,
                is_gated_act=gated,
            )
        except KeyError as e:
            raise UserError(f"T5 config lacks {e}: not a T5 config") from None
        check_bounds(cfg, T5_BOUNDS, "T5")
        return cfg


def relative_position_bucket(
    relative_position: np.ndarray, num_buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
    """Bidirectional buckets exactly as transformers `T5Attention._relative_position_bucket`.

    Computed in numpy float32 like torch does, so the log-spaced bucket edges round the same way.
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    num_buckets //= 2
    buckets = (rel > 0).astype(np.int64) * num_buckets
    rel = np.abs(rel)
    max_exact = num_buckets // 2
    # max(rel, 1) avoids log(0); those positions take the exact branch anyway.
    scaled = np.log(np.maximum(rel, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(rel < max_exact, rel, large)


class T5LayerNorm(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps
        # the half-precision path's rms_norm weight: x * 1 is exact. Not a parameter; evaluated now, or a
        # compiled encoder would trace (and rerun) the `ones` that makes it.
        self._unit = mx.ones((dims,), dtype=mx.float32)
        mx.eval(self._unit)

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and self.weight.dtype == mx.float32:
            return mx.fast.rms_norm(x, self.weight, self.eps)
        # Half precision: transformers normalises in float32 (x * rsqrt(mean(x^2) + eps) on the float32 copy:
        # one rms_norm kernel) and rounds to the weight dtype before the multiply.
        x = mx.fast.rms_norm(x.astype(mx.float32), self._unit, self.eps)
        if self.weight.dtype in (mx.float16, mx.bfloat16):
            x = x.astype(self.weight.dtype)
        return self.weight * x


class T5Attention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.num_heads = config.num_heads
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        B, L, _ = x.shape
        q, k, v = (
            p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3) for p in (self.q, self.k, self.v)
        )
        # T5 folds the scale into its weights: scale=1.0.
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=bias.astype(q.dtype))
        return self.o(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class T5FeedForward(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        self.act = _ACTIVATIONS[config.dense_act_fn]
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        # As transformers: wo runs in its own weight dtype (kept fp32 in some half-precision loads).
        return self.wo(h.astype(self.wo.weight.dtype))


def _clamp_fp16(x: mx.array) -> mx.array:
    """transformers' T5Block fp16 guard: clamp to finfo.max (finfo.max - 1000 if anything overflowed)."""
    if x.dtype != mx.float16:
        return x
    fmax = float(np.finfo(np.float16).max)
    c = mx.where(mx.any(mx.isinf(x)), fmax - 1000, fmax).astype(mx.float16)
    return mx.clip(x, -c, c)


class _Compiled:
    """Compiled-function cache (a plain object, so nn.Module does not take it for part of the tree)."""

    def __init__(self) -> None:
        self.fns: dict[bool, Any] = {}


class T5Block(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.attn_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.attn = T5Attention(config)
        self.ff_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.ff = T5FeedForward(config)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        x = _clamp_fp16(x + self.attn(self.attn_norm(x), bias))
        return _clamp_fp16(x + self.ff(self.ff_norm(x)))


class T5Encoder(nn.Module):
    """transformers `T5EncoderModel`: (input_ids [B, L], attention_mask [B, L] | None) -> [B, L, d_model].

    Our parameter names: embed_tokens, relative_attention_bias (block 0's, shared by all blocks),
    blocks.{i}.{attn_norm, attn.{q,k,v,o}, ff_norm, ff.{wi | wi_0, wi_1, wo}}, final_norm.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        # False: eager; None: compiled on the GPU, eager on the CPU; True: compiled (see the module doc).
        self.compiled: bool | None = False
        self._jit = _Compiled()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
        self.blocks = [T5Block(config) for _ in range(config.num_layers)]
        self.final_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def position_bias(self, length: int) -> mx.array:
        """(1, heads, L, L) bias from bucketed (key - query) distances."""
        pos = np.arange(length)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None],
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        )
        return self.relative_attention_bias(mx.array(buckets.astype(np.int32))).transpose(2, 0, 1)[None]

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        ids = mx.array(input_ids)
        use = mx.default_device().type == mx.DeviceType.gpu if self.compiled is None else self.compiled
        if not use:
            return self._encode(ids, attention_mask)
        masked = attention_mask is not None
        fn = self._jit.fns.get(masked)
        if fn is None:
            enc = self._encode
            fn = self._jit.fns[masked] = mx.compile(
                (lambda i, m: enc(i, m)) if masked else (lambda i: enc(i, None)), inputs=self.state
            )
        return fn(ids, mx.array(attention_mask)) if masked else fn(ids)

    def _encode(self, input_ids: mx.array, attention_mask: mx.array | None) -> mx.array:
        x = self.embed_tokens(input_ids)
        bias = self.position_bias(x.shape[1])
        if attention_mask is not None:
            # Padded keys get finfo(dtype).min (transformers' mask, replacing the bias as its sdpa path does:
            # adding could overflow to -inf in fp16). exp() of it underflows to exactly 0 either way.
            keep = mx.array(attention_mask).astype(mx.bool_)[:, None, None, :]
            bias = mx.where(keep, bias, mx.array(mx.finfo(x.dtype).min, dtype=x.dtype))
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)

    def sanitize(self, ckpt: Checkpoint, prefix: str) -> dict[str, mx.array]:
        """Take a transformers T5 (encoder) state dict under `prefix` and return our parameter names."""
        config = self.config
        p = f"{prefix}encoder."
        # The encoder embedding is tied to `shared`; transformers saves either or both. `shared` wins, as in
        # transformers' tying; the other copy is marked used so strict accounting accepts it.
        names = [k for k in (f"{prefix}shared.weight", f"{p}embed_tokens.weight") if k in ckpt]
        if not names:
            raise UserError(f"{ckpt.name} lacks tensor '{prefix}shared.weight': not a T5 checkpoint")
        out = {"embed_tokens.weight": ckpt.take(names[0])}
        for extra in names[1:]:
            ckpt.take(extra)
        rel = f"{p}block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        out["relative_attention_bias.weight"] = ckpt.take(rel)
        ff_names = ["wi_0", "wi_1", "wo"] if config.is_gated_act else ["wi", "wo"]
        for i in range(config.num_layers):
            b, o = f"{p}block.{i}.layer.", f"blocks.{i}."
            out[f"{o}attn_norm.weight"] = ckpt.take(f"{b}0.layer_norm.weight")
            for n in ("q", "k", "v", "o"):
                out[f"{o}attn.{n}.weight"] = ckpt.take(f"{b}0.SelfAttention.{n}.weight")
            out[f"{o}ff_norm.weight"] = ckpt.take(f"{b}1.layer_norm.weight")
            for n in ff_names:
                out[f"{o}ff.{n}.weight"] = ckpt.take(f"{b}1.DenseReluDense.{n}.weight")
        out["final_norm.weight"] = ckpt.take(f"{p}final_layer_norm.weight")
        return out


def t5_ignore_patterns(prefix: str) -> list[str]:
    """Regexes (for `Checkpoint.finish(ignore=...)`) of a full T5's tensors that text conditioning never uses.

    google-t5/t5-base ships T5ForConditionalGeneration: its decoder stack (incl. `decoder.embed_tokens`, tied
    to `shared`) and `lm_head` only serve text generation; the encoder's hidden states are all we consume.
    """
    p = re.escape(prefix)
    return [rf"{p}decoder\..*", rf"{p}lm_head\.weight"]


class T5Tokenizer:
    """tokenizer.json run as transformers 5.x's `T5Tokenizer` runs it.

    transformers 5 rebuilds a T5 tokenizer from tokenizer.json's vocab and precompiled charsmap only, with its
    own pre-tokenizer (whitespace split + metaspace) and `$A </s>` template; we do the same so an older
    tokenizer.json (e.g. a bare Metaspace pre-tokenizer) still gives the ids transformers gives.
    """

    def __init__(self, path: Path):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors

        try:
            tok = Tokenizer.from_file(str(path))
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except Exception as e:
            raise UserError(f"cannot read tokenizer {path}: {e}") from None
        charsmap = _precompiled_charsmap(spec.get("normalizer"))
        tok.normalizer = normalizers.Precompiled(charsmap) if charsmap is not None else None
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            ]
        )
        self.pad_id = tok.token_to_id("<pad>")
        self.eos_id = tok.token_to_id("</s>")
        if self.pad_id is None or self.eos_id is None:
            raise UserError(f"{path} is not a T5 tokenizer (no <pad> or </s> token)")
        tok.post_processor = processors.TemplateProcessing(
            single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", self.eos_id)]
        )
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok

    def encode(
        self, texts: list[str], max_length: int | None = None, pad_to_max_length: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 [B, L]: right-padded with the pad id to the longest text, or to `max_length`.

        `max_length` also truncates, keeping the trailing </s> (transformers' truncation=True).
        """
        if isinstance(texts, str):
            texts = [texts]
        if pad_to_max_length and max_length is None:
            raise UserError("pad_to_max_length needs a max_length")
        if max_length is not None and max_length < 1:
            raise UserError(f"max_length must be positive, got {max_length}")
        if max_length is not None:
            # tokenizers truncates the text so that it plus </s> fits, as transformers' fast tokenizer does.
            self._tok.enable_truncation(max_length)
        try:
            encs = self._tok.encode_batch(list(texts))
        finally:
            self._tok.no_truncation()
        length = max_length if pad_to_max_length else max((len(e.ids) for e in encs), default=0)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), length), dtype=np.int32)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask


def _precompiled_charsmap(normalizer: dict[str, Any] | None) -> bytes | None:
    """The SentencePiece charsmap of a tokenizer.json normalizer (alone or inside a Sequence), if any."""
    if not normalizer:
        return None
    items = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for n in items:
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            return base64.b64decode(n["precompiled_charsmap"])
    return None


def load_tokenizer(folder: str | Path) -> T5Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"{path} is missing: the T5 tokenizer is read from tokenizer.json (as saved by transformers); "
            "download the model repo again"
        )
    return T5Tokenizer(path)
