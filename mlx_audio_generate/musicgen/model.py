"""MusicGen language model (transformers `MusicgenForCausalLM` + the top-level `enc_to_dec_proj`) in MLX.

Parameter names (ours, relative to `MusicgenLM`):
  decoder.embed_tokens.weight                 (K * (V + 1), D)  the K per-codebook tables stacked
  decoder.layers.N.self_attn.qkv_proj.weight  (3D, D)           q, k, v fused (no bias)
  decoder.layers.N.self_attn.out_proj.weight
  decoder.layers.N.encoder_attn.q_proj.weight / kv_proj.weight (2D, D) / out_proj.weight
  decoder.layers.N.{self_attn,encoder_attn,final}_layer_norm.{weight,bias}, fc1.weight, fc2.weight
  decoder.layer_norm.{weight,bias}
  decoder.lm_heads.weight                     (K * V, D)        the K heads stacked: one matmul
  enc_to_dec_proj.{weight,bias}               only when the T5 width differs from the decoder width
The sinusoidal position table is not a parameter (transformers does not save it either).
The melody decoder (`musicgen_melody_decoder`) has no encoder_attn layers: its conditioning is a prefix of
embeddings run through the causal self-attention (see melody.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import UserError
from ..memory import check_bounds
from ..quantize import residual_linear
from ..weights import Checkpoint
from .fused_decode import FusedArgs, fused_args, fused_layers, kernel_layers, use_layer_kernel

Offset = int | mx.array

# The widest decoder whose GPU decode step takes the fused CUDA kernels by default
# (MusicgenDecoder.use_kernels): musicgen-small is 1024 wide, medium 1536, large 2048.
KERNELS_MAX_WIDTH = 1024


# Sanity bounds of the fields that size tensors (musicgen-large: 48 layers, 2048 wide, 32 heads, 8192 ffn,
# 4 codebooks (stereo 8) of 2048); a corrupt config is refused before the decoder is built from it.
DECODER_BOUNDS = {
    "hidden_size": (1, 16384),
    "num_hidden_layers": (1, 512),
    "num_attention_heads": (1, 1024),
    "ffn_dim": (1, 131072),
    "num_codebooks": (1, 64),
    "vocab_size": (1, 65536),
    "max_position_embeddings": (1, 65536),
    "bos_token_id": (0, 65536),
    "pad_token_id": (0, 65536),
}


@dataclass(frozen=True)
class DecoderConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    ffn_dim: int
    num_codebooks: int
    vocab_size: int
    audio_channels: int = 1
    max_position_embeddings: int = 2048
    bos_token_id: int = 2048
    pad_token_id: int = 2048
    scale_embedding: bool = False
    activation_function: str = "gelu"
    cross_attention: bool = True  # False for the melody decoder (conditioning is prepended instead)
    layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default; transformers does not expose it

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        act = d.get("activation_function", "gelu")
        if act != "gelu":
            raise UserError(f"MusicGen decoder activation '{act}' is not supported (only 'gelu')")
        channels = int(d.get("audio_channels", 1))
        if channels not in (1, 2):
            raise UserError(f"MusicGen decoder audio_channels must be 1 or 2, got {channels}")
        cfg = cls(
            hidden_size=int(d["hidden_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            ffn_dim=int(d["ffn_dim"]),
            num_codebooks=int(d["num_codebooks"]),
            vocab_size=int(d["vocab_size"]),
            audio_channels=channels,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            bos_token_id=int(d.get("bos_token_id", d.get("pad_token_id", 2048))),
            pad_token_id=int(d.get("pad_token_id", 2048)),
            scale_embedding=bool(d.get("scale_embedding", False)),
            activation_function=act,
            cross_attention=d.get("model_type") != "musicgen_melody_decoder",
        )
        check_bounds(cfg, DECODER_BOUNDS, "MusicGen decoder")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise UserError("MusicGen decoder hidden_size is not a multiple of num_attention_heads")
        if cfg.num_codebooks % cfg.audio_channels:
            raise UserError("MusicGen stereo decoder needs an even number of codebooks")
        return cfg

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def codebooks_per_channel(self) -> int:
        return self.num_codebooks // self.audio_channels


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
    """transformers' MusicgenSinusoidalPositionalEmbedding table: [cos | sin] halves (not interleaved), the
    frequency step log(1e4)/(half-1), a zero column for odd dims. Factors in float32 as torch has them."""
    half = dim // 2
    step = np.float32(-math.log(10000) / (half - 1))
    freq = np.exp(np.arange(half, dtype=np.float32) * step)
    arg = np.arange(num_positions, dtype=np.float32)[:, None] * freq[None, :]
    arg64 = arg.astype(np.float64)  # float32 arguments, cos/sin rounded once
    emb = np.concatenate([np.cos(arg64), np.sin(arg64)], axis=1).astype(np.float32)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros((num_positions, 1), np.float32)], axis=1)
    return emb


class KVCache:
    """Preallocated self-attention cache of one layer: `state = [kv]`, one (2, B, H, max_len, Dh) buffer
    holding keys (row 0) and values (row 1), so one write per step stores both.

    Writes are slice updates, so the array keeps one shape for the whole generation: with an mx.array
    offset the step function can be `mx.compile`d passing `[c.state for c in caches]` as compile
    inputs and outputs."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype: mx.Dtype = mx.float32):
        self.state = [mx.zeros((2, batch, heads, max_len, head_dim), dtype)]

    @property
    def max_len(self) -> int:
        return self.state[0].shape[3]

    def write(self, kv: mx.array, offset: int) -> mx.array:
        """Write kv (2, B, H, S, Dh) at the int `offset` (one slice update); return the whole buffer."""
        s = kv.shape[3]
        if offset + s > self.max_len:
            raise UserError(f"KV cache holds {self.max_len} steps; step {offset + s} asked for")
        self.state[0][:, :, :, offset : offset + s, :] = kv
        return self.state[0]

    def update(self, kv: mx.array, offset: Offset) -> tuple[mx.array, mx.array]:
        """Write kv (2, B, H, S, Dh) at `offset` with one slice update; return the keys/values to attend
        (views of the buffer): with an int offset the filled prefix, with an array offset the whole buffer
        (the caller masks the unwritten tail)."""
        s = kv.shape[3]
        if isinstance(offset, int):
            self.write(kv, offset)
            out = self.state[0][:, :, :, : offset + s, :]
        else:
            start = offset.reshape(1).astype(mx.int32)
            self.state[0] = mx.slice_update(self.state[0], kv.astype(self.state[0].dtype), start, axes=(3,))
            out = self.state[0]
        k, v = mx.split(out, 2, axis=0)
        return k.squeeze(0), v.squeeze(0)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, cache: KVCache | None, offset: Offset, matvec: bool = False) -> mx.array:
        b, s, d = x.shape
        # (3, B, H, S, Dh); q and k/v are split views (integer indexing would be a gather kernel each)
        qkv = _linear(x, self.qkv_proj, matvec).reshape(b, s, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
        q, kv = mx.split(qkv, [1], axis=0)
        q = q.squeeze(0)
        mask: str | mx.array | None
        if cache is None:
            k, v = (a.squeeze(0) for a in mx.split(kv, 2, axis=0))
            mask = "causal" if s > 1 else None
        else:
            k, v = cache.update(kv, offset)  # K and V written together
            if isinstance(offset, int):
                mask = "causal" if s > 1 else None  # lower-right aligned: queries are the last s keys
            else:  # whole buffer: key j visible to query i iff j <= offset + i
                qpos = offset.astype(mx.int32) + mx.arange(s, dtype=mx.int32)[:, None]
                mask = mx.arange(k.shape[2], dtype=mx.int32)[None, :] <= qpos
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(b, s, d)  # out_proj is applied by the layer (addmm)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def keys_values(self, enc: mx.array) -> tuple[mx.array, mx.array]:
        b, t, _ = enc.shape
        kv = self.kv_proj(enc).reshape(b, t, 2, self.heads, -1).transpose(2, 0, 3, 1, 4)
        k, v = mx.split(kv, 2, axis=0)  # views, not gathers
        return k.squeeze(0), v.squeeze(0)

    def __call__(
        self, x: mx.array, kv: tuple[mx.array, mx.array], mask: mx.array | None, matvec: bool = False
    ) -> mx.array:
        b, s, d = x.shape
        q = _linear(x, self.q_proj, matvec).reshape(b, s, self.heads, -1).transpose(0, 2, 1, 3)
        o = mx.fast.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(b, s, d)  # out_proj is applied by the layer (addmm)


def _linear(x: mx.array, layer: nn.Module, matvec: bool) -> mx.array:
    """A bias-free linear layer. With `matvec` and one position per row (a decode step) it runs as
    W @ x per row, (N, D) x (B, D, 1): MLX-CUDA takes its own batched GEMV kernel for that shape, which costs
    a fraction of the host time of the cuBLAS call `x @ W.T` gets for B = 2 rows (CFG); a decode step is
    bound by that per-kernel host time, not by the GPU. Same products, fp32 accumulation either way."""
    b, s, d = x.shape
    if matvec and s == 1 and not isinstance(layer, nn.QuantizedLinear):
        return (layer.weight @ x.reshape(b, d, 1)).reshape(b, 1, -1)
    return layer(x)


def _residual(x: mx.array, o: mx.array, layer: nn.Module, matvec: bool = False) -> mx.array:
    """`x + layer(o)` for a bias-free linear: GEMV + add for a `matvec` decode step, else one addmm GEMM when
    dense (prefill / CPU), the plain sum when quantized (quantize.residual_linear)."""
    if matvec and o.shape[1] == 1:
        return x + _linear(o, layer, matvec)
    return residual_linear(x, o, layer)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.self_attn = SelfAttention(d, cfg.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        if cfg.cross_attention:
            self.encoder_attn = CrossAttention(d, cfg.num_attention_heads)
            self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, d, bias=False)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def __call__(
        self,
        x: mx.array,
        cross_kv: tuple[mx.array, mx.array] | None,
        cross_mask: mx.array | None,
        cache: KVCache | None,
        offset: Offset,
        matvec: bool = False,
    ) -> mx.array:
        # The three residual adds ride in the output GEMMs: x + o @ W.T as one addmm (fewer kernels per step).
        o = self.self_attn(self.self_attn_layer_norm(x), cache, offset, matvec)
        x = _residual(x, o, self.self_attn.out_proj, matvec)
        if cross_kv is not None:
            o = self.encoder_attn(self.encoder_attn_layer_norm(x), cross_kv, cross_mask, matvec)
            x = _residual(x, o, self.encoder_attn.out_proj, matvec)
        h = nn.gelu(_linear(self.final_layer_norm(x), self.fc1, matvec))  # exact erf GELU, as torch's
        return _residual(x, h, self.fc2, matvec)


class MusicgenDecoder(nn.Module):
    """`MusicgenForCausalLM`: tokens (B, K, S) -> logits (B, K, S, V)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.num_codebooks * (c.vocab_size + 1), c.hidden_size)
        self.layers = [DecoderLayer(c) for _ in range(c.num_hidden_layers)]
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.lm_heads = nn.Linear(c.hidden_size, c.num_codebooks * c.vocab_size, bias=False)
        # Offsets that send codebook k's ids into its slice of the stacked embedding table.
        self._code_offsets = mx.arange(c.num_codebooks, dtype=mx.int32)[:, None] * (c.vocab_size + 1)
        self._positions = mx.array(sinusoidal_positions(c.max_position_embeddings, c.hidden_size))
        # Decode steps (one position) run their linears as matrix-vector products (see `_linear`): on the
        # GPU by default, where a step is bound by per-kernel host time; the CPU keeps the GEMMs.
        self.matvec: bool | None = None  # None = auto
        self.fused = True  # with matvec: the compiled parts (fused_decode.fused_layers)
        # In those parts, the fused CUDA kernels of decode_kernels.py (None = auto: see use_kernels).
        self.kernels: bool | None = None
        # Each layer of a decode step as one CUDA kernel (layer_kernel.py; None = wherever it is supported,
        # unless MLX_AUDIO_GENERATE_LAYER_KERNEL=0).
        self.layer_kernel: bool | None = None
        self._fused: FusedArgs | None = None
        # `scale_embedding` is read but never applied: transformers' MusicGen decoders compute embed_scale and
        # do not use it (every released checkpoint has it false anyway).

    def use_matvec(self) -> bool:
        if self.matvec is None:
            return mx.default_device() == mx.gpu
        return self.matvec

    def use_kernels(self) -> bool:
        """Auto: on up to KERNELS_MAX_WIDTH wide. Measured on an H100 (docs/benchmarks.md) with the first
        kernels (one warp per weight row): musicgen-small's host-bound step gained ~19%, musicgen-large's
        (100 MB of weights per layer) lost ~10% against MLX's GEMV. The split-K kernels of round 3 are
        measured by bench/kernel_probe.py; the width is the one constant to move after such a run."""
        if self.kernels is None:
            return self.config.hidden_size <= KERNELS_MAX_WIDTH
        return self.kernels

    def ensure_positions(self, n: int) -> None:
        """Grow the position table to `n` rows (transformers extends it the same way past max positions).
        Call before compiling a step that takes an mx.array offset."""
        if n > self._positions.shape[0]:
            self._positions = mx.array(sinusoidal_positions(n, self.config.hidden_size))

    def make_cache(self, batch: int, max_len: int, dtype: mx.Dtype | None = None) -> list[KVCache]:
        c = self.config
        dtype = dtype or self.layer_norm.weight.dtype
        heads, hd = c.num_attention_heads, c.head_dim
        return [KVCache(batch, heads, max_len, hd, dtype) for _ in range(c.num_hidden_layers)]

    def precompute_cross_kv(self, encoder_states: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Cross-attention keys/values of every layer for (B, T, D) projected text states: once per
        generation instead of every step."""
        if not self.config.cross_attention:
            raise UserError(
                "this MusicGen decoder has no cross-attention (melody checkpoints prepend instead)"
            )
        kv = [layer.encoder_attn.keys_values(encoder_states) for layer in self.layers]
        if self.use_matvec():
            # MLX-CUDA's decode SDPA copies K/V whose batch and head strides do not nest (these split views)
            # to contiguous, 2 copy kernels per layer and step: copy them once per generation instead.
            kv = [(mx.contiguous(k), mx.contiguous(v)) for k, v in kv]
        return kv

    def __call__(
        self,
        tokens: mx.array,
        cross_kv: list[tuple[mx.array, mx.array]] | None = None,
        cross_mask: mx.array | None = None,
        cache: list[KVCache] | None = None,
        offset: Offset = 0,
        last_only: bool = False,
        prefix: mx.array | None = None,
    ) -> mx.array:
        """tokens (B, K, S) ints in [0, V]; `cross_mask` from `cross_attention_mask`; `offset` = position of
        the first input (= positions already in `cache`). `prefix` (B, P, D): conditioning embeddings placed
        before the tokens (the melody decoder's), counted by the positions like tokens, as transformers does.
        `last_only` computes the heads for the last step only. Returns logits (B, K, P + S or 1, V)."""
        c = self.config
        b, k, s = tokens.shape
        if k != c.num_codebooks:
            raise UserError(f"decoder expects {c.num_codebooks} codebooks, got {k}")
        ids = tokens.astype(mx.int32) + self._code_offsets
        x = self.embed_tokens(ids).sum(axis=1)  # (B, S, D): sum over codebooks
        if prefix is not None:
            x = mx.concatenate([prefix.astype(x.dtype), x], axis=1)
            s = x.shape[1]
        if isinstance(offset, int):
            self.ensure_positions(offset + s)
            pos = self._positions[offset : offset + s]
        else:
            pos = mx.take(self._positions, offset.astype(mx.int32) + mx.arange(s, dtype=mx.int32), axis=0)
        x = x + pos.astype(x.dtype)
        matvec = self.use_matvec() and x.shape[1] == 1
        # decode steps of a dense decoder take the compiled parts (fused_decode.fused_layers)
        fused = matvec and self.fused and cache is not None and isinstance(offset, int)
        args = fused_args(self, cross_kv, cross_mask) if fused else None
        if args is not None and use_layer_kernel(self, x, args):
            x = kernel_layers(self, x, args, cache, offset)
        elif args is not None and args.dense:
            x = fused_layers(self, x, args, cache, offset)
        else:
            x = self._layers(x, cross_kv, cross_mask, cache, offset, matvec)
        if last_only:
            x = x[:, -1:]
        x = self.layer_norm(x)  # nn.LayerNorm runs mx.fast.layer_norm
        logits = _linear(x, self.lm_heads, matvec).reshape(b, x.shape[1], k, c.vocab_size)
        return logits.transpose(0, 2, 1, 3)

    def _layers(
        self,
        x: mx.array,
        cross_kv: list[tuple[mx.array, mx.array]] | None,
        cross_mask: mx.array | None,
        cache: list[KVCache] | None,
        offset: Offset,
        matvec: bool,
    ) -> mx.array:
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                None if cross_kv is None else cross_kv[i],
                cross_mask,
                None if cache is None else cache[i],
                offset,
                matvec,
            )
        return x

    def sanitize(self, ckpt: Checkpoint, prefix: str = "decoder.") -> dict[str, mx.array]:
        """Take `MusicgenForCausalLM` tensors under `prefix` (`decoder.` in a MusicgenForConditionalGeneration
        checkpoint, empty in a standalone decoder one); fuse q/k/v, cross k/v, embeddings and heads."""
        c = self.config
        src = f"{prefix}model.decoder."
        out: dict[str, mx.array] = {}
        tables = [ckpt.take(f"{src}embed_tokens.{i}.weight") for i in range(c.num_codebooks)]
        heads = [ckpt.take(f"{prefix}lm_heads.{i}.weight") for i in range(c.num_codebooks)]
        _check_shape(tables[0], (c.vocab_size + 1, c.hidden_size), f"{src}embed_tokens.0.weight")
        _check_shape(heads[0], (c.vocab_size, c.hidden_size), f"{prefix}lm_heads.0.weight")
        out["embed_tokens.weight"] = mx.concatenate(tables, axis=0)
        out["lm_heads.weight"] = mx.concatenate(heads, axis=0)
        for n in range(c.num_hidden_layers):
            ref, ours = f"{src}layers.{n}.", f"layers.{n}."
            sa, ca = ref + "self_attn.", ref + "encoder_attn."
            out[ours + "self_attn.qkv_proj.weight"] = mx.concatenate(
                [ckpt.take(f"{sa}{p}_proj.weight") for p in "qkv"], axis=0
            )
            out[ours + "self_attn.out_proj.weight"] = ckpt.take(sa + "out_proj.weight")
            norms = ["self_attn_layer_norm", "final_layer_norm"]
            if c.cross_attention:
                out[ours + "encoder_attn.q_proj.weight"] = ckpt.take(ca + "q_proj.weight")
                out[ours + "encoder_attn.kv_proj.weight"] = mx.concatenate(
                    [ckpt.take(f"{ca}{p}_proj.weight") for p in "kv"], axis=0
                )
                out[ours + "encoder_attn.out_proj.weight"] = ckpt.take(ca + "out_proj.weight")
                norms.append("encoder_attn_layer_norm")
            for name in norms:
                for p in ("weight", "bias"):
                    out[f"{ours}{name}.{p}"] = ckpt.take(f"{ref}{name}.{p}")
            for fc in ("fc1", "fc2"):
                out[f"{ours}{fc}.weight"] = ckpt.take(f"{ref}{fc}.weight")
        for p in ("weight", "bias"):
            out[f"layer_norm.{p}"] = ckpt.take(f"{src}layer_norm.{p}")
        return out


def _check_shape(x: mx.array, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != shape:
        raise UserError(f"tensor '{name}' has shape {tuple(x.shape)}, the config implies {shape}")


def cross_attention_mask(mask: mx.array | None) -> mx.array | None:
    """(B, T) 0/1 text mask -> boolean SDPA mask (B, 1, 1, T), True = attend.

    A row with no valid token (the guidance branch) is attended in full instead: transformers adds the most
    negative float to every score, so its softmax is uniform over states that `project_text` zeroed (no bias
    in k/v), giving exactly 0 — the same result, without the NaN a fully masked SDPA row would give.

    When that leaves every position attended (no padding: a single prompt, or prompts of one length, with or
    without the guidance rows) it returns None, so SDPA takes its fused path instead of matmul + softmax.
    (One host sync, once per generation.)"""
    if mask is None:
        return None
    keep = mask.astype(mx.bool_)
    keep = keep | ~mx.any(keep, axis=-1, keepdims=True)
    if mx.all(keep).item():
        return None
    return keep[:, None, None, :]


@dataclass
class Conditioning:
    """What the decoder sees besides the codes, already batched for guidance (2B rows when guided):
    cross-attention keys/values + mask (MusicGen) or a prefix of embeddings (MusicGen-Melody)."""

    cross_kv: list[tuple[mx.array, mx.array]] | None = None
    cross_mask: mx.array | None = None
    prefix: mx.array | None = None

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]


class MusicgenLM(nn.Module):
    """The decoder plus the text-to-decoder projection of MusicgenForConditionalGeneration."""

    has_melody = False

    def __init__(self, config: DecoderConfig, text_hidden_size: int):
        super().__init__()
        self.config = config
        self.decoder = MusicgenDecoder(config)
        # transformers creates enc_to_dec_proj only when the widths differ (musicgen-medium/large).
        if text_hidden_size != config.hidden_size:
            self.enc_to_dec_proj = nn.Linear(text_hidden_size, config.hidden_size, bias=True)
        else:
            self.enc_to_dec_proj = None

    def project_text(
        self, text_states: mx.array, text_mask: mx.array | None, guidance: bool
    ) -> tuple[mx.array, mx.array | None]:
        """T5 last hidden states (B, T, Dt) and their 0/1 mask (B, T) -> decoder cross states and mask.

        Exactly transformers' order: with guidance the batch becomes [conditional; unconditional] (2B) with
        zero T5 states and an all-zero mask appended *before* the projection; then the projection (whose
        bias makes the zeros nonzero), then states * mask, zeroing padding and the unconditional half."""
        if guidance:
            text_states = mx.concatenate([text_states, mx.zeros_like(text_states)], axis=0)
            if text_mask is not None:
                text_mask = mx.concatenate([text_mask, mx.zeros_like(text_mask)], axis=0)
        if self.enc_to_dec_proj is not None:
            text_states = self.enc_to_dec_proj(text_states)
        if text_mask is not None:
            text_states = text_states * text_mask[..., None].astype(text_states.dtype)
        # (Without a mask transformers leaves the unconditional half at proj(0) = bias; so do we. Its generate
        # always builds a mask from the tokenizer output, so pass one.)
        return text_states, text_mask

    def conditioning(
        self, text_states: mx.array, text_mask: mx.array | None, guided: bool, chroma: mx.array | None = None
    ) -> Conditioning:
        """T5 states (B, T, Dt) + mask -> cross-attention keys/values of every layer and the SDPA mask."""
        if chroma is not None:
            raise UserError("this checkpoint has no melody conditioning; use a musicgen-melody model")
        states, mask = self.project_text(text_states, text_mask, guided)
        dec = self.decoder
        kv = dec.precompute_cross_kv(states.astype(dec.layer_norm.weight.dtype))
        return Conditioning(cross_kv=kv, cross_mask=cross_attention_mask(mask))

    def sanitize(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Tensors `{prefix}decoder.*` and `{prefix}enc_to_dec_proj.*` of a
        MusicgenForConditionalGeneration checkpoint, named as this module's parameters."""
        out = {f"decoder.{k}": v for k, v in self.decoder.sanitize(ckpt, f"{prefix}decoder.").items()}
        if self.enc_to_dec_proj is not None:
            for p in ("weight", "bias"):
                out[f"enc_to_dec_proj.{p}"] = ckpt.take(f"{prefix}enc_to_dec_proj.{p}")
            _check_shape(
                out["enc_to_dec_proj.weight"],
                tuple(self.enc_to_dec_proj.weight.shape),
                f"{prefix}enc_to_dec_proj.weight",
            )
        elif f"{prefix}enc_to_dec_proj.weight" in ckpt:
            raise UserError("checkpoint has enc_to_dec_proj but the text and decoder widths are equal")
        return out
