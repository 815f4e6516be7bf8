"""SAME transformer autoencoder (patched audio <-> latents) in MLX, with a chunked encode/decode.

Mirrors the SAME reference code: `models/pretransforms.py` (PatchedPretransform; the
AutoencoderPretransform its factory builds has scale 1), `models/autoencoders.py` (SAMEEncoder /
SAMEDecoder / TransformerResamplingBlock, AudioAutoencoder.encode_audio / decode_audio) and
`models/bottleneck.py` (SoftNormBottleneck). Blocks and attention: `same_blocks.py`. Every size comes from
the config; the tensors from `sanitize` (weight norm folded).

- encode: audio (B, C, T) zero-padded to a multiple of the patch size, `b c (l h) -> b (c h) l`; per
  resampling block: zero-pad to the attention's multiple (chunked attention: `chunk_size` patches, sliding
  window: `stride`), mapping conv, groups of `stride` frames + 1 learned token -> transformer -> keep the
  token; Linear to the latent width; `x * scaling_factor + bias`, `/ running_std`.
- decode: `* running_std`, Linear, per block: zero-pad the frames to `chunk_size // stride` (chunked) or 1,
  groups of 1 frame + `stride` learned tokens -> transformer -> keep the tokens; mapping conv; unpatch;
  `tanh` if `soft_clip`. Nothing is cut back: like the reference, latents cover the padded audio, and with
  chunked attention an odd latent count (SAME-S: multiples of 2) decodes to the padded length.
- Chunked attention (`chunk_size`, no `sliding_window`): rows of `chunk + chunk // stride` tokens; with
  `chunk_midpoint_shift` the second half of the blocks runs on the sequence padded with its own first and
  last half-chunk (edge repeat), re-chunked, shifted back. Sliding window `[l, r]` (in groups): a band of
  `l * (stride + 1)` / `r * (stride + 1)` tokens over the whole sequence.
- `encode_chunked` / `decode_chunked`: the reference's `encode_audio` / `decode_audio(chunked=True)`
  (windows of `chunk` latents with `overlap`, the last window anchored at the end, half the overlap trimmed
  from inner edges; later windows win where trims overlap); each window is evaluated before the next, so
  memory is bounded by one window. `SAMEConfig.chunked` records the config's `pretransform.chunked` (the
  reference's pretransform then chunks its encode/decode); here the caller picks the method.
- Randomness: the reference decoder adds noise to its new tokens (`mask_noise`) even at inference; `decode`
  is deterministic unless given that noise (see `decode`, `draw_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import UserError
from ..weights import Checkpoint, torch_conv1d
from .same_blocks import ROPE_BASE, SAMEBlock, rope_inv_freq, sanitize_block

# reference tensors a converter accounts for without using (regexes for Checkpoint.finish, with reasons)
IGNORED = {
    r".*\.rope\.inv_freq": "RoPE inverse frequencies: recomputed by mx.fast.rope (sanitize checks them)",
    r".*bottleneck\.noise_scaling_factor": "zero-size (noise_augment_dim 0; other values are refused)",
}
_OFF = ("conformer", "layer_scale", "feat_scale", "cross_attn")  # options this port refuses when true


@dataclass(frozen=True)
class ResamplerConfig:
    """One TransformerResamplingBlock: `encoder` (stride frames -> 1) or decoder (1 -> stride)."""

    encoder: bool
    in_channels: int
    out_channels: int
    stride: int
    depth: int
    head_dim: int
    ff_mult: float
    chunk_size: int
    midpoint_shift: bool
    sliding_window: tuple[int, int] | None
    sinusoidal_blocks: int
    mask_noise: float
    conv_mapping: bool
    mapping_bias: bool
    variable_stride: bool

    @property
    def width(self) -> int:
        return self.out_channels if self.encoder else self.in_channels

    @property
    def heads_dim(self) -> int:
        return min(self.head_dim, self.width)  # TransformerBlock: dim_heads = min(dim_heads, dim)

    @property
    def group(self) -> int:  # tokens per group: stride frames + 1 token, or 1 latent + stride tokens
        return self.stride + 1

    @property
    def window(self) -> tuple[int, int] | None:
        w = self.sliding_window
        return None if w is None else (w[0] * self.group, w[1] * self.group)

    @property
    def row(self) -> int:  # tokens per attention chunk (chunked attention)
        return self.chunk_size + self.chunk_size // self.stride

    @property
    def new_tokens(self) -> int:  # the learned tokens' sequence length as stored
        return 1 if self.variable_stride or self.encoder else self.stride

    def sinusoidal(self, i: int) -> bool:
        return self.depth - i < self.sinusoidal_blocks


def _resampler(
    c: dict, encoder: bool, cin: int, cout: int, stride: int, depth: int, sin: int
) -> ResamplerConfig:
    window = c.get("sliding_window")
    if window is not None:
        if len(window) != 2 or any(int(w) < 0 for w in window):
            raise UserError(f"SAME sliding_window must be two group counts, got {window}")
        window = (int(window[0]), int(window[1]))
    chunk = int(c.get("chunk_size", 128))
    if window is None and (chunk <= 0 or chunk % stride):
        raise UserError(f"SAME chunk_size {chunk} must be a positive multiple of the stride {stride}")
    if window is None and bool(c.get("chunk_midpoint_shift", False)) and (chunk + chunk // stride) % 2:
        raise UserError(
            f"SAME chunk_midpoint_shift needs an even chunk row, got {chunk + chunk // stride} tokens"
        )
    if depth < 1:
        raise UserError(
            "SAME transformer_depths must be >= 1 (a block without transformers does not resample)"
        )
    return ResamplerConfig(
        encoder=encoder, in_channels=cin, out_channels=cout, stride=stride, depth=depth,
        head_dim=int(c.get("dim_heads", 128)), ff_mult=float(c.get("ff_mult", 3)), chunk_size=chunk,
        midpoint_shift=bool(c.get("chunk_midpoint_shift", False)), sliding_window=window,
        sinusoidal_blocks=sin, mask_noise=float(c.get("mask_noise", 0.0)),
        conv_mapping=bool(c.get("conv_mapping", False)), mapping_bias=bool(c.get("mapping_bias", True)),
        variable_stride=bool(c.get("variable_stride", False)),
    )  # fmt: skip


def _side(d: dict, name: str) -> dict:
    side = d[name]
    if side.get("type") != "same":
        raise UserError(f"autoencoder {name} type {side.get('type')!r} is not supported (only 'same')")
    c = side["config"]
    if not c.get("dyt", True) or not c.get("differential", True):
        raise UserError(f"SAME {name}: only DyT norms with differential attention are supported")
    on = [k for k in _OFF if c.get(k, False)]
    if on:
        raise UserError(f"SAME {name} options {', '.join(on)} are not supported")
    return c


@dataclass(frozen=True)
class SAMEConfig:
    encoder: tuple[ResamplerConfig, ...]
    decoder: tuple[ResamplerConfig, ...]
    latent_dim: int
    patch_size: int
    io_channels: int
    downsampling_ratio: int
    auto_scale: bool
    noise_regularize: bool
    soft_clip: bool
    chunked: bool  # the pretransform's default for decode (the reference's `pretransform.chunked`)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAMEConfig:
        """From `model.pretransform` ({type, config}), its inner `config`, or a standalone SAME `model`."""
        chunked = False
        if "encoder" not in d:
            if d.get("type", "autoencoder") != "autoencoder" or "config" not in d:
                raise UserError(f"pretransform type {d.get('type')!r} is not a SAME autoencoder")
            chunked = bool(d.get("chunked", False))
            d = d["config"]
        try:
            enc, dec = _side(d, "encoder"), _side(d, "decoder")
            patch, bott = d["pretransform"], d["bottleneck"]
            latent = int(d["latent_dim"])
            ratio = int(d["downsampling_ratio"])
            channels, p = int(patch["config"]["channels"]), int(patch["config"]["patch_size"])
            c_mults, strides = list(enc["c_mults"]), [int(s) for s in enc["strides"]]
            d_mults, d_strides = list(dec["c_mults"]), [int(s) for s in dec["strides"]]
            widths = [int(enc["in_channels"])] + [int(m * enc["channels"]) for m in c_mults]
            d_widths = [int(dec["out_channels"])] + [int(m * dec["channels"]) for m in d_mults]
            depths, d_depths = list(enc["transformer_depths"]), list(dec["transformer_depths"])
        except (KeyError, TypeError) as e:
            raise UserError(f"SAME autoencoder config lacks {e}: not a SAME model_config.json") from None
        if patch.get("type") != "patched":
            raise UserError(f"SAME pre-pretransform {patch.get('type')!r} is not supported (only 'patched')")
        pc = patch["config"]
        if int(pc.get("oversampling", 1)) != 1 or int(pc.get("postfilter_channels", 0)) != 0:
            raise UserError("patched pretransform oversampling / postfilter are not supported")
        if bott.get("type") != "softnorm":
            raise UserError(f"SAME bottleneck {bott.get('type')!r} is not supported (only 'softnorm')")
        bc = bott.get("config", {})
        if int(bc.get("noise_augment_dim", 0)) != 0:
            raise UserError("softnorm noise_augment_dim > 0 is not supported")
        io = int(d.get("io_channels") or channels)
        n = len(c_mults)
        checks = [
            (len(strides) == n and len(depths) == n, "encoder c_mults/strides/transformer_depths lengths"),
            (len(d_strides) == len(d_mults) == len(d_depths), "decoder c_mults/strides/transformer_depths"),
            (widths[0] == channels * p, f"encoder in_channels {widths[0]} != channels x patch_size"),
            (d_widths[0] == channels * p, f"decoder out_channels {d_widths[0]} != channels x patch_size"),
            (io == channels, f"io_channels {io} != patched channels {channels}"),
            (latent == int(enc["latent_dim"]) == int(dec["latent_dim"]) == int(bc.get("dim", 32)),
             "latent_dim of the autoencoder, encoder, decoder and bottleneck"),
            (ratio == p * math.prod(strides) == p * math.prod(d_strides),
             f"downsampling_ratio {ratio} != patch_size x prod(strides)"),
        ]  # fmt: skip
        bad = [what for ok, what in checks if not ok]
        if bad:
            raise UserError(f"inconsistent SAME config: {bad[0]}")
        sin = dec.get("sinusoidal_blocks", [0] * len(d_mults))
        if len(sin) != len(d_mults):
            raise UserError("SAME decoder sinusoidal_blocks needs one entry per block")
        enc_sin = int(enc.get("sinusoidal_blocks", 0))  # the reference passes it through as an int
        encoder = tuple(
            _resampler(enc, True, widths[i], widths[i + 1], strides[i], int(depths[i]), enc_sin)
            for i in range(n)
        )
        decoder = tuple(
            _resampler(dec, False, d_widths[i], d_widths[i - 1], d_strides[i - 1], int(d_depths[i - 1]),
                       int(sin[i - 1]))
            for i in range(len(d_mults), 0, -1)
        )  # fmt: skip
        return cls(
            encoder=encoder, decoder=decoder, latent_dim=latent, patch_size=p, io_channels=io,
            downsampling_ratio=ratio, auto_scale=bool(bc.get("auto_scale", False)),
            noise_regularize=bool(bc.get("noise_regularize", False)),
            soft_clip=bool(dec.get("soft_clip", False)), chunked=chunked,
        )  # fmt: skip


def _pad_to(x: mx.array, multiple: int, axis: int = 1) -> mx.array:
    """Zero-pad `axis` (channels-last time) at the end to a multiple (the reference's zero-pad-modulo)."""
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return mx.pad(x, widths)


class Mapping(nn.Module):
    """The resampler's weight-normed conv (folded), padding 'same'; channels-last."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool):
        super().__init__()
        self.kernel = kernel
        self.weight = mx.zeros((cout, kernel, cin))
        if bias:
            self.bias = mx.zeros((cout,))

    def __call__(self, x: mx.array) -> mx.array:
        total = self.kernel - 1  # torch 'same': the odd extra goes to the right
        if total:
            x = mx.pad(x, [(0, 0), (total // 2, total - total // 2), (0, 0)])
        y = mx.conv1d(x, self.weight)
        return y + self.bias if "bias" in self else y


class Resampler(nn.Module):
    """TransformerResamplingBlock on channels-last (B, L, C) tensors."""

    def __init__(self, c: ResamplerConfig):
        super().__init__()
        self.c = c
        if c.in_channels != c.out_channels:
            self.mapping = Mapping(c.in_channels, c.out_channels, 3 if c.conv_mapping else 1, c.mapping_bias)
        self.new_tokens = mx.zeros((1, c.new_tokens, c.width))
        inner = int(c.width * c.ff_mult)
        self.layers = [SAMEBlock(c.width, c.heads_dim, inner, c.sinusoidal(i)) for i in range(c.depth)]

    def _map(self, x: mx.array) -> mx.array:
        return self.mapping(x) if "mapping" in self else x

    def groups(self, frames: int) -> int:
        """Groups (latents) this block forms from `frames` input frames (after its padding)."""
        c = self.c
        if c.encoder:
            return -(-frames // (c.chunk_size if c.window is None else c.stride)) * (
                c.chunk_size // c.stride if c.window is None else 1
            )
        m = 1 if c.window is not None else c.chunk_size // c.stride
        return -(-frames // m) * m

    def __call__(self, x: mx.array, noise: mx.array | None = None) -> mx.array:
        c = self.c
        if c.encoder:  # pad before mapping: padded silence goes through the mapping like real frames
            x = self._map(_pad_to(x, c.chunk_size if c.window is None else c.stride))
            into, out = c.stride, 1
        else:
            x = _pad_to(x, 1 if c.window is not None else c.chunk_size // c.stride)
            into, out = 1, c.stride
        B, L, D = x.shape
        n = L // into
        tokens = mx.broadcast_to(self.new_tokens, (B * n, out, D))
        if noise is not None:  # the reference's mask_noise (or override_new_tokens), '(b n) c d' layout
            tokens = tokens + noise.reshape(B * n, out, D)
        x = mx.concatenate([x.reshape(B * n, into, D), tokens], axis=1).reshape(B, n * c.group, D)
        x = self._transformer(x)
        x = x.reshape(B * n, c.group, D)[:, -out:].reshape(B, n * out, D)
        return x if c.encoder else self._map(x)

    def _transformer(self, x: mx.array) -> mx.array:
        c = self.c
        B, N, D = x.shape
        if c.window is not None:
            for layer in self.layers:
                x = layer(x, c.window)
            return x
        row = c.row
        split = c.depth // 2 if c.midpoint_shift else c.depth
        for layer in self.layers[:split]:
            x = layer(x.reshape(-1, row, D)).reshape(B, N, D)
        if split < c.depth:  # midpoint shift: edge-repeat half a chunk each side, re-chunk, shift back
            shift = row // 2
            x = mx.concatenate([x[:, :shift], x, x[:, -shift:]], axis=1)
            for layer in self.layers[split:]:
                x = layer(x.reshape(-1, row, D)).reshape(B, N + 2 * shift, D)
            x = x[:, shift:-shift]
        return x


class SAME(nn.Module):
    """The SAME autoencoder: `encode(audio)` -> latents, `decode(latents)` -> audio (channels-first)."""

    def __init__(self, config: SAMEConfig):
        super().__init__()
        self.config = config
        enc, dec = config.encoder, config.decoder
        self.encoder_blocks = [Resampler(c) for c in enc]
        self.encoder_proj = nn.Linear(enc[-1].out_channels, config.latent_dim)
        self.decoder_proj = nn.Linear(config.latent_dim, dec[0].in_channels)
        self.decoder_blocks = [Resampler(c) for c in dec]
        self.bottleneck_scale = mx.ones((config.latent_dim,))
        self.bottleneck_bias = mx.zeros((config.latent_dim,))
        if config.auto_scale:
            self.running_std = mx.ones((1,))

    @property
    def downsampling_ratio(self) -> int:
        return self.config.downsampling_ratio

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def io_channels(self) -> int:
        return self.config.io_channels

    def latent_frames(self, samples: int) -> int:
        """Latent frames `encode` returns for `samples` audio samples (the padding rules above)."""
        frames = -(-samples // self.config.patch_size)
        for block in self.encoder_blocks:
            frames = block.groups(frames)
        return frames

    def encode(self, audio: mx.array) -> mx.array:
        """audio (B, io_channels, T) -> latents (B, latent_dim, latent_frames(T)); any T >= 1."""
        c = self.config
        if audio.ndim != 3 or audio.shape[1] != c.io_channels or audio.shape[2] < 1:
            raise UserError(f"expected audio (batch, {c.io_channels}, samples), got {tuple(audio.shape)}")
        B, C, _ = audio.shape
        x = _pad_to(audio, c.patch_size, axis=2)
        p = c.patch_size
        # 'b c (l h) -> b (c h) l', then channels-last: (B, l, c*h)
        x = x.reshape(B, C, -1, p).transpose(0, 2, 1, 3).reshape(B, -1, C * p)
        for block in self.encoder_blocks:
            x = block(x)
        z = self.encoder_proj(x) * self.bottleneck_scale + self.bottleneck_bias
        if c.auto_scale:
            z = z / self.running_std
        return z.transpose(0, 2, 1)

    def noise_shapes(self, batch: int, frames: int) -> list[tuple[int, int, int]]:
        """Shapes of `decode`'s `noise`: per decoder block (B, groups x stride, width)."""
        shapes = []
        for block in self.decoder_blocks:
            frames = block.groups(frames)
            shapes.append((batch, frames * block.c.stride, block.c.width))
            frames *= block.c.stride
        return shapes

    def draw_noise(
        self, latents: mx.array, key: mx.array | None = None
    ) -> tuple[mx.array | None, list[mx.array]]:
        """The reference decoder's random inputs at inference, scaled as it scales them.

        Returns (latent_noise, noise) for `decode`: `1e-3 * running_std * N(0, 1)` if the bottleneck has
        `noise_regularize` (else None), and per decoder block `mask_noise * N(0, 1)` over its new tokens.
        """
        c = self.config
        n = 1 + len(self.decoder_blocks)
        keys = [None] * n if key is None else list(mx.random.split(key, n))  # None: the global RNG
        B, _, L = latents.shape
        latent_noise = None
        if c.noise_regularize:
            std = self.running_std if c.auto_scale else None
            scale = std if std is not None else mx.std(latents, axis=-1, keepdims=True, ddof=1)
            latent_noise = 1e-3 * scale * mx.random.normal(latents.shape, key=keys[0])
        noise = [
            blk.c.mask_noise * mx.random.normal(s, key=k)
            for blk, s, k in zip(self.decoder_blocks, self.noise_shapes(B, L), keys[1:], strict=True)
        ]
        return latent_noise, noise

    def decode(
        self,
        latents: mx.array,
        noise: Sequence[mx.array] | None = None,
        latent_noise: mx.array | None = None,
    ) -> mx.array:
        """latents (B, latent_dim, L) -> audio (B, io_channels, groups(L) x ratio), deterministic by default.

        The reference adds fresh `randn * mask_noise` (0.01 in the released configs) to every decoder
        block's new tokens at inference too, and `noise_regularize` bottlenecks add `1e-3 * running_std *
        randn` to the latents. Torch's draws cannot be reproduced here, and a codec's output should not
        depend on a hidden RNG, so `noise=None` / `latent_noise=None` decode without them (= the reference
        with mask_noise 0). To decode as the reference does, pass `draw_noise(latents, key)`'s pair, or any
        given noise (`noise_shapes` gives the per-block shapes, the reference's '(b n) c d' order).
        """
        c = self.config
        if latents.ndim != 3 or latents.shape[1] != c.latent_dim or latents.shape[2] < 1:
            raise UserError(f"expected latents (batch, {c.latent_dim}, frames), got {tuple(latents.shape)}")
        B, _, L = latents.shape
        shapes = self.noise_shapes(B, L)
        if noise is not None and [tuple(n.shape) for n in noise] != shapes:
            raise UserError(
                f"decode noise must have the shapes {shapes}, got {[tuple(n.shape) for n in noise]}"
            )
        if latent_noise is not None and tuple(latent_noise.shape) != tuple(latents.shape):
            raise UserError(f"latent_noise must have the latents' shape {tuple(latents.shape)}")
        z = latents.transpose(0, 2, 1)
        if c.auto_scale:
            z = z * self.running_std
        if latent_noise is not None:
            z = z + latent_noise.transpose(0, 2, 1)
        x = self.decoder_proj(z)
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, None if noise is None else noise[i])
        B, L, CP = x.shape
        p = c.patch_size
        # 'b (c h) l -> b c (l h)'
        y = x.reshape(B, L, CP // p, p).transpose(0, 2, 1, 3).reshape(B, CP // p, L * p)
        return mx.tanh(y) if c.soft_clip else y

    def encode_chunked(self, audio: mx.array, chunk: int = 128, overlap: int = 32) -> mx.array:
        """`encode` in windows of `chunk` latents (reference `encode_audio(chunked=True)`); T >= chunk x ratio
        gives T // ratio latents, shorter audio is encoded whole."""
        r = self.downsampling_ratio
        _check_chunking(chunk, overlap)
        T = audio.shape[-1]
        if T < chunk * r:
            return self.encode(audio)
        starts = _starts(T, chunk * r, (chunk - overlap) * r)
        outs = [s // r for s in starts[:-1]] + [T // r - chunk]
        return _stitch(
            lambda s: self.encode(audio[..., s : s + chunk * r]), starts, outs, T // r, overlap // 2
        )

    def decode_chunked(self, latents: mx.array, chunk: int = 128, overlap: int = 32) -> mx.array:
        """`decode` in windows of `chunk` latents (reference `decode_audio(chunked=True)`), no noise;
        L >= chunk gives L x ratio samples, fewer latents are decoded whole."""
        r = self.downsampling_ratio
        _check_chunking(chunk, overlap)
        L = latents.shape[-1]
        if L < chunk:
            return self.decode(latents)
        starts = _starts(L, chunk, chunk - overlap)
        outs = [s * r for s in starts[:-1]] + [(L - chunk) * r]
        return _stitch(
            lambda s: self.decode(latents[..., s : s + chunk]), starts, outs, L * r, overlap // 2 * r
        )

    def sanitize(self, ckpt: Checkpoint, prefix: str = "pretransform.model.") -> dict[str, mx.array]:
        """Reference AudioAutoencoder tensors under `prefix` ('' for standalone SAME repos) -> ours.

        Weight norm folded; the RoPE `inv_freq` buffers are checked against the recomputed ones and left to
        `IGNORED` (like the zero-size `bottleneck.noise_scaling_factor`)."""
        c = self.config
        out: dict[str, mx.array] = {}

        def linear(ref: str, ours: str) -> None:
            out[f"{ours}.weight"] = ckpt.take(f"{prefix}{ref}.weight")
            out[f"{ours}.bias"] = ckpt.take(f"{prefix}{ref}.bias")

        def resampler(ref: str, ours: str, rc: ResamplerConfig) -> None:
            if rc.in_channels != rc.out_channels:
                out[f"{ours}.mapping.weight"] = torch_conv1d(ckpt.take_conv_weight(f"{prefix}{ref}.mapping"))
                if rc.mapping_bias:
                    out[f"{ours}.mapping.bias"] = ckpt.take(f"{prefix}{ref}.mapping.bias")
            out[f"{ours}.new_tokens"] = ckpt.take(f"{prefix}{ref}.new_tokens")
            expect = rope_inv_freq(rc.heads_dim)
            for j in range(rc.depth):
                blk = f"{prefix}{ref}.transformers.{j}"
                out.update(sanitize_block(ckpt, blk, f"{ours}.layers.{j}"))
                inv = ckpt.tensors.get(f"{blk}.rope.inv_freq")
                if inv is not None and (
                    inv.shape != expect.shape or not mx.allclose(inv.astype(mx.float32), expect, rtol=1e-5)
                ):
                    raise UserError(
                        f"{blk}.rope.inv_freq is not RoPE base {ROPE_BASE:g} over {rc.heads_dim // 2} dims"
                    )

        n = len(c.encoder)
        # encoder.layers = [resampler x n, Transpose, Linear, Transpose]
        for i, rc in enumerate(c.encoder):
            resampler(f"encoder.layers.{i}", f"encoder_blocks.{i}", rc)
        linear(f"encoder.layers.{n + 1}", "encoder_proj")
        # decoder.layers = [Transpose, Linear, Transpose, resampler x n]
        linear("decoder.layers.1", "decoder_proj")
        for k, rc in enumerate(c.decoder):
            resampler(f"decoder.layers.{3 + k}", f"decoder_blocks.{k}", rc)
        out["bottleneck_scale"] = ckpt.take(f"{prefix}bottleneck.scaling_factor").reshape(-1)
        out["bottleneck_bias"] = ckpt.take(f"{prefix}bottleneck.bias").reshape(-1)
        if c.auto_scale:
            out["running_std"] = ckpt.take(f"{prefix}bottleneck.running_std").reshape(1)
        return out


def _check_chunking(chunk: int, overlap: int) -> None:
    if chunk < 1 or not 0 <= overlap < chunk:
        raise UserError(f"chunked SAME needs chunk >= 1 and 0 <= overlap < chunk, got {chunk}, {overlap}")


def _starts(total: int, size: int, hop: int) -> list[int]:
    """Window starts every `hop`, the last one anchored to the end (it may overlap more)."""
    starts = list(range(0, total - size + 1, hop))
    if starts[-1] != total - size:
        starts.append(total - size)
    return starts


def _pieces(run, starts: list[int], outs: list[int], total: int, half: int) -> Iterator[mx.array]:
    """Each window's kept part, in order. The reference writes windows in order into a zeroed output,
    window i over [out_i + left_i, out_i + right_i) (half the overlap off inner edges); those spans leave no
    gap and later ones win, so window i keeps [lo_i, lo_{i+1}) and the last [lo_last, total)."""
    lo = [o + (0 if i == 0 else half) for i, o in enumerate(outs)]
    for i, (s, o) in enumerate(zip(starts, outs, strict=True)):
        end = lo[i + 1] if i + 1 < len(lo) else total
        piece = run(s)[..., lo[i] - o : end - o]
        mx.eval(piece)  # one window's activations at a time: bounded memory
        yield piece


def _stitch(run, starts: list[int], outs: list[int], total: int, half: int) -> mx.array:
    """The concatenation of `_pieces`."""
    return mx.concatenate(list(_pieces(run, starts, outs, total, half)), axis=-1)


def load_same(config: SAMEConfig, weights: dict[str, mx.array]) -> SAME:
    """A SAME with converted `weights` loaded strictly (every parameter present, no extras)."""
    model = SAME(config)
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model
