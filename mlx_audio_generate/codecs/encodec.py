"""EnCodec (SEANet encoder/decoder + residual vector quantizer) in MLX, matching transformers' EncodecModel.

Mirrors `transformers/models/encodec/modeling_encodec.py`: the module tree and parameter names follow the
reference (`encoder.layers.{i}.conv.weight`, `decoder.layers.{i}.lstm.weight_ih_l0`, ...) with weight norm
folded, so `sanitize` is a rename plus layout change. Tensors are channels-last `(batch, time, channels)`
inside; the public `encode`/`decode` take and return channels-first audio like the reference.

Only the single-chunk, `normalize=False` path is supported: that is what every MusicGen checkpoint uses
(MusicGen itself refuses chunked codecs), and it means `decode` has no audio scale to apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import UserError
from ..memory import check_bounds
from ..weights import Checkpoint, torch_conv1d, torch_conv_transpose1d

_PAD_MODES = ("reflect", "constant")  # the modes whose torch semantics _pad_time reproduces


# Sanity bounds of the fields that size tensors (MusicGen's 32 kHz codec: 128 hidden, 64 filters, ratios
# (8, 5, 4, 4), 2048 codes); a corrupt config is refused before the codec is built from it.
ENCODEC_BOUNDS = {
    "sampling_rate": (1, 384_000),
    "audio_channels": (1, 8),
    "hidden_size": (1, 8192),
    "num_filters": (1, 4096),
    "num_residual_layers": (1, 64),
    "upsampling_ratios": (1, 64),
    "kernel_size": (1, 64),
    "last_kernel_size": (1, 64),
    "residual_kernel_size": (1, 64),
    "dilation_growth_rate": (1, 16),
    "compress": (1, 64),
    "num_lstm_layers": (0, 16),
    "codebook_size": (2, 65536),
    "target_bandwidths": (0, 1000),
}


@dataclass(frozen=True)
class EncodecConfig:
    """transformers' EncodecConfig; the defaults are the reference's, used where a config.json omits a key."""

    sampling_rate: int = 24_000
    audio_channels: int = 1
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> EncodecConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("upsampling_ratios", "target_bandwidths"):
            if key in kw:
                kw[key] = tuple(kw[key])
        if kw.get("codebook_dim") is None:  # the reference defaults it to hidden_size
            kw["codebook_dim"] = kw.get("hidden_size", cls.hidden_size)
        cfg = cls(**kw)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        check_bounds(self, ENCODEC_BOUNDS, "EnCodec")
        check_bounds(
            {"len(upsampling_ratios)": len(self.upsampling_ratios), "hop_length": self.hop_length},
            {"len(upsampling_ratios)": (1, 8), "hop_length": (1, 65536)},
            "EnCodec",
        )
        check_bounds(  # the residual quantizer's codebooks (32 for the 32 kHz codec at 24 kbps)
            {"num_quantizers": self.num_quantizers if self.target_bandwidths else 1},
            {"num_quantizers": (0, 1024)},
            "EnCodec",
        )
        bad = None
        if self.normalize:
            bad = "normalize=true (per-chunk audio scales)"
        elif self.chunk_length_s is not None:
            bad = f"chunk_length_s={self.chunk_length_s} (chunked encoding)"
        elif self.norm_type != "weight_norm":
            bad = f"norm_type={self.norm_type!r}"
        elif self.pad_mode not in _PAD_MODES:
            bad = f"pad_mode={self.pad_mode!r}"
        elif self.codebook_dim != self.hidden_size:
            bad = f"codebook_dim={self.codebook_dim} != hidden_size={self.hidden_size}"
        elif self.codebook_size <= 0 or 2**self.codebook_nbits != self.codebook_size:
            bad = f"codebook_size={self.codebook_size} (must be a power of 2)"
        elif not self.target_bandwidths:
            bad = "empty target_bandwidths"
        elif not self.use_causal_conv and self.trim_right_ratio != 1.0:
            bad = "trim_right_ratio != 1.0 with non-causal convolutions"
        if bad:
            raise UserError(f"unsupported EnCodec config: {bad}; this is not an EnCodec this port reads")

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        """Codebooks the model holds (reference formula, float floor division included)."""
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    def num_quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        """Codebooks `encode` emits at `bandwidth` (kbps), as EncodecResidualVectorQuantizer computes it."""
        n = self.num_quantizers
        if bandwidth is not None and bandwidth > 0.0:
            n = int(max(1, math.floor(bandwidth * 1000 / (math.log2(self.codebook_size) * self.frame_rate))))
        return n


def _elu(x: mx.array) -> mx.array:
    # torch's ELU uses expm1, which keeps small negative inputs accurate.
    return mx.where(x > 0, x, mx.expm1(x))


class _ELU(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return _elu(x)


def _pad_time(x: mx.array, left: int, right: int, mode: str) -> mx.array:
    """Pad axis 1 of (B, T, C) like torch's F.pad, with EncodecConv1d._pad1d's small-input reflect trick."""
    if left == 0 and right == 0:
        return x
    if mode == "constant":
        return mx.pad(x, [(0, 0), (left, right), (0, 0)])
    length = x.shape[1]
    extra = 0
    if length <= max(left, right):
        # torch can't reflect more than length-1 samples: zero-extend, reflect, then drop the extension.
        extra = max(left, right) - length + 1
        x = mx.pad(x, [(0, 0), (0, extra), (0, 0)])
        length += extra
    idx = np.concatenate(
        [np.arange(left, 0, -1), np.arange(length), np.arange(length - 2, length - 2 - right, -1)]
    )
    if extra:
        idx = idx[: len(idx) - extra]
    return mx.take(x, mx.array(idx.astype(np.int32)), axis=1)


class EncodecConv1d(nn.Module):
    """Conv1d with EnCodec's padding: symmetric-ish (non-causal) or left (causal), plus extra right padding
    so that the last window is complete."""

    def __init__(
        self, cfg: EncodecConfig, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1
    ):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation)
        self.causal = cfg.use_causal_conv
        self.pad_mode = cfg.pad_mode
        self.stride_ = stride
        self.kernel_eff = (kernel - 1) * dilation + 1
        self.padding_total = self.kernel_eff - stride

    def _extra_padding(self, length: int) -> int:
        # The reference divides int64 tensors, i.e. in float32; np.float32 reproduces its rounding exactly.
        num = np.float32(length - self.kernel_eff + self.padding_total)
        n = num / np.float32(self.stride_) + np.float32(1)
        n_frames = int(np.ceil(n)) - 1
        return n_frames * self.stride_ + self.kernel_eff - self.padding_total - length

    def __call__(self, x: mx.array) -> mx.array:
        extra = self._extra_padding(x.shape[1])
        if self.causal:
            left, right = self.padding_total, extra
        else:
            right = self.padding_total // 2  # odd totals put the extra sample on the left
            left, right = self.padding_total - right, right + extra
        return self.conv(_pad_time(x, left, right, self.pad_mode))


class EncodecConvTranspose1d(nn.Module):
    """ConvTranspose1d that trims the fixed padding (kernel - stride) afterwards, like the reference.

    Computed as one matmul (every input frame times every tap) plus an overlap-add of the kernel/stride
    shifted blocks: exactly the transposed convolution's sums, without the stride-times-zero-stuffed input
    that mx.conv_transpose1d works on (4x slower on CPU for the upsampling layers here)."""

    def __init__(self, cfg: EncodecConfig, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel, stride=stride)  # holds weight (out, k, in), bias
        self.kernel, self.stride_ = kernel, stride
        total = kernel - stride
        if cfg.use_causal_conv:
            right = math.ceil(total * cfg.trim_right_ratio)
        else:
            right = total // 2
        self.trim_left, self.trim_right = total - right, right

    def __call__(self, x: mx.array) -> mx.array:
        batch, steps, cin = x.shape
        k, s = self.kernel, self.stride_
        w = self.conv.weight
        cout = w.shape[0]
        taps = (x @ w.transpose(2, 1, 0).reshape(cin, k * cout)).reshape(batch, steps, k, cout)
        blocks = -(-k // s)
        if blocks * s != k:
            taps = mx.pad(taps, [(0, 0), (0, 0), (0, blocks * s - k), (0, 0)])
        taps = taps.reshape(batch, steps, blocks, s, cout)
        # Input frame n, tap i*s + j lands on output sample (n + i)*s + j: shift block i by i frames and add.
        y = taps[:, :, 0]
        if blocks > 1:
            y = mx.pad(y, [(0, 0), (0, blocks - 1), (0, 0), (0, 0)])
            for i in range(1, blocks):
                y = y + mx.pad(taps[:, :, i], [(0, 0), (i, blocks - 1 - i), (0, 0), (0, 0)])
        length = (steps - 1) * s + k
        y = y.reshape(batch, (steps + blocks - 1) * s, cout)[:, :length]
        return y[:, self.trim_left : length - self.trim_right] + self.conv.bias


class LSTM(nn.Module):
    """Multi-layer unidirectional torch.nn.LSTM (zero initial state) with torch's parameter names and gate
    order (i, f, g, o). The input projection of all timesteps is one matmul; only the recurrence loops."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            setattr(self, f"weight_ih_l{layer}", mx.zeros((4 * hidden_size, fan_in)))
            setattr(self, f"weight_hh_l{layer}", mx.zeros((4 * hidden_size, hidden_size)))
            setattr(self, f"bias_ih_l{layer}", mx.zeros((4 * hidden_size,)))
            setattr(self, f"bias_hh_l{layer}", mx.zeros((4 * hidden_size,)))

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, T, input_size) -> hidden states of the last layer, (B, T, hidden_size)."""
        batch, steps, _ = x.shape
        for layer in range(self.num_layers):
            w_ih, w_hh = self[f"weight_ih_l{layer}"], self[f"weight_hh_l{layer}"]
            b_ih, b_hh = self[f"bias_ih_l{layer}"], self[f"bias_hh_l{layer}"]
            x_proj = x @ w_ih.T + b_ih
            # Materialise the transpose once: a transposed view makes every step's matmul ~2.5x slower on CPU.
            w_hh_t = mx.contiguous(w_hh.T)
            h = mx.zeros((batch, self.hidden_size), dtype=x.dtype)
            c = h
            outs = []
            for t in range(steps):
                h, c = _lstm_cell(x_proj[:, t], h, c, w_hh_t, b_hh)
                outs.append(h)
            x = mx.stack(outs, axis=1)
        return x


@mx.compile
def _lstm_cell(
    x_proj: mx.array, h: mx.array, c: mx.array, w_hh_t: mx.array, b_hh: mx.array
) -> tuple[mx.array, mx.array]:
    gates = x_proj + (h @ w_hh_t + b_hh)
    i, f, g, o = mx.split(gates, 4, axis=-1)
    c = mx.sigmoid(f) * c + mx.sigmoid(i) * mx.tanh(g)
    h = mx.sigmoid(o) * mx.tanh(c)
    return h, c


class EncodecLSTM(nn.Module):
    """The LSTM with its input added back (skip connection)."""

    def __init__(self, cfg: EncodecConfig, dim: int):
        super().__init__()
        self.lstm = LSTM(dim, dim, cfg.num_lstm_layers)

    def __call__(self, x: mx.array) -> mx.array:
        return self.lstm(x) + x


class EncodecResnetBlock(nn.Module):
    def __init__(self, cfg: EncodecConfig, dim: int, dilations: tuple[int, int]):
        super().__init__()
        hidden = dim // cfg.compress
        kernels = (cfg.residual_kernel_size, 1)
        self.block = [
            _ELU(),
            EncodecConv1d(cfg, dim, hidden, kernels[0], dilation=dilations[0]),
            _ELU(),
            EncodecConv1d(cfg, hidden, dim, kernels[1], dilation=dilations[1]),
        ]
        self.use_shortcut = cfg.use_conv_shortcut
        if cfg.use_conv_shortcut:
            self.shortcut = EncodecConv1d(cfg, dim, dim, 1)

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        for layer in self.block:
            y = layer(y)
        return (self.shortcut(x) if self.use_shortcut else x) + y


class EncodecEncoder(nn.Module):
    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        layers: list[nn.Module] = [EncodecConv1d(cfg, cfg.audio_channels, cfg.num_filters, cfg.kernel_size)]
        scaling = 1
        for ratio in reversed(cfg.upsampling_ratios):
            dim = scaling * cfg.num_filters
            for j in range(cfg.num_residual_layers):
                layers.append(EncodecResnetBlock(cfg, dim, (cfg.dilation_growth_rate**j, 1)))
            layers += [_ELU(), EncodecConv1d(cfg, dim, dim * 2, ratio * 2, stride=ratio)]
            scaling *= 2
        dim = scaling * cfg.num_filters
        layers += [EncodecLSTM(cfg, dim), _ELU()]
        layers.append(EncodecConv1d(cfg, dim, cfg.hidden_size, cfg.last_kernel_size))
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class EncodecDecoder(nn.Module):
    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        scaling = 2 ** len(cfg.upsampling_ratios)
        dim = scaling * cfg.num_filters
        layers: list[nn.Module] = [
            EncodecConv1d(cfg, cfg.hidden_size, dim, cfg.kernel_size),
            EncodecLSTM(cfg, dim),
        ]
        for ratio in cfg.upsampling_ratios:
            dim = scaling * cfg.num_filters
            layers += [_ELU(), EncodecConvTranspose1d(cfg, dim, dim // 2, ratio * 2, stride=ratio)]
            for j in range(cfg.num_residual_layers):
                layers.append(EncodecResnetBlock(cfg, dim // 2, (cfg.dilation_growth_rate**j, 1)))
            scaling //= 2
        layers += [_ELU(), EncodecConv1d(cfg, cfg.num_filters, cfg.audio_channels, cfg.last_kernel_size)]
        self.layers = layers

    def __call__(self, x: mx.array, progress: Callable[[int], None] | None = None) -> mx.array:
        """`progress(i)` after layer i (1-based) is evaluated: a decode's time is visible layer by layer.
        Evaluating a layer's output before the next runs computes the same values (no fusion happens
        outside mx.compile), so the audio is identical with or without it."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if progress is not None:
                mx.eval(x)
                progress(i + 1)
        return x


class EuclideanCodebook(nn.Module):
    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        self.embed = mx.zeros((cfg.codebook_size, cfg.codebook_dim))

    def encode(self, x: mx.array) -> mx.array:
        """x: (N, D) -> nearest code (N,), by the reference's distance expression (same rounding and ties)."""
        embed_t = self.embed.T
        dist = -(mx.sum(x * x, axis=1, keepdims=True) - (2 * x) @ embed_t + mx.sum(embed_t * embed_t, axis=0))
        return mx.argmax(dist, axis=-1).astype(mx.int32)

    def decode(self, codes: mx.array) -> mx.array:
        return mx.take(self.embed, codes, axis=0)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        self.layers = [EuclideanCodebook(cfg) for _ in range(cfg.num_quantizers)]

    def encode(self, x: mx.array, n_q: int) -> mx.array:
        """x: (B, T, D) -> codes (B, n_q, T)."""
        batch, steps, dim = x.shape
        residual = x.reshape(-1, dim)
        codes = []
        for layer in self.layers[:n_q]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx.reshape(batch, steps))
        return mx.stack(codes, axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """codes: (B, K, T) -> summed embeddings (B, T, D), added in codebook order like the reference."""
        out = self.layers[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            out = out + self.layers[k].decode(codes[:, k])
        return out


class Encodec(nn.Module):
    """EnCodec audio codec. `encode`: audio (B, C, T) -> codes (B, K, ceil(T / hop)); `decode`: codes
    (B, K, F) -> audio (B, C, F * hop)."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        self.config = cfg
        self.encoder = EncodecEncoder(cfg)
        self.decoder = EncodecDecoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg)

    def encode(self, audio: mx.array, bandwidth: float | None = None) -> mx.array:
        """Like EncodecModel.encode(audio, bandwidth).audio_codes[0]: the bandwidth defaults to
        target_bandwidths[0] (MusicGen passes none), which picks how many codebooks are emitted."""
        cfg = self.config
        if bandwidth is None:
            bandwidth = cfg.target_bandwidths[0]
        if bandwidth not in cfg.target_bandwidths:
            raise UserError(f"EnCodec bandwidth {bandwidth} is not one of {list(cfg.target_bandwidths)}")
        if audio.ndim != 3 or audio.shape[1] != cfg.audio_channels or audio.shape[2] < 1:
            raise UserError(
                f"EnCodec expects audio shaped (batch, {cfg.audio_channels}, samples), "
                f"got {tuple(audio.shape)}"
            )
        x = self.encoder(audio.transpose(0, 2, 1))
        return self.quantizer.encode(x, cfg.num_quantizers_for_bandwidth(bandwidth))

    def decode(self, codes: mx.array, progress: Callable[[int], None] | None = None) -> mx.array:
        """Like EncodecModel.decode(codes[None], [None]).audio_values: codes (B, K, F) -> audio (B, C, T).
        `progress(i)`: after each of the `len(decoder.layers)` decoder layers (EncodecDecoder)."""
        cfg = self.config
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= cfg.num_quantizers or codes.shape[2] < 1:
            raise UserError(
                f"EnCodec codes must be shaped (batch, 1..{cfg.num_quantizers}, frames>=1), "
                f"got {tuple(codes.shape)}"
            )
        lo, hi = mx.min(codes).item(), mx.max(codes).item()
        if lo < 0 or hi >= cfg.codebook_size:
            raise UserError(f"EnCodec codes must lie in [0, {cfg.codebook_size}), got [{lo}, {hi}]")
        x = self.quantizer.decode(codes.astype(mx.int32))
        return self.decoder(x, progress).transpose(0, 2, 1)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "audio_encoder.") -> dict[str, mx.array]:
        """Take this model's reference tensors under `prefix` and name them as our parameters: weight norm
        folded, conv layouts made MLX's (out, k, in). The codebook training buffers are left to
        `encodec_ignore_patterns`."""
        out: dict[str, mx.array] = {}
        for name, module in self.named_modules():
            if isinstance(module, EncodecConv1d | EncodecConvTranspose1d):
                ref = f"{prefix}{name}.conv"
                w = ckpt.take_conv_weight(ref)
                to_mlx = torch_conv1d if isinstance(module, EncodecConv1d) else torch_conv_transpose1d
                out[f"{name}.conv.weight"] = to_mlx(w)
                out[f"{name}.conv.bias"] = ckpt.take(f"{ref}.bias")
            elif isinstance(module, LSTM):
                for layer in range(module.num_layers):
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        key = f"{name}.{kind}_l{layer}"
                        out[key] = ckpt.take(prefix + key)
        for i in range(len(self.quantizer.layers)):
            out[f"quantizer.layers.{i}.embed"] = ckpt.take(f"{prefix}quantizer.layers.{i}.codebook.embed")
        return out


def encodec_ignore_patterns(prefix: str = "audio_encoder.") -> list[str]:
    """Regexes (fullmatch) of EnCodec checkpoint tensors a converter may leave unused."""
    codebook = re.escape(prefix) + r"quantizer\.layers\.\d+\.codebook\."
    return [
        # Running sum of assigned vectors for the EMA codebook update: training only; `embed` is the result.
        codebook + "embed_avg",
        # EMA count of vectors assigned to each code: training only (k-means init / dead-code restarts).
        codebook + "cluster_size",
        # Flag that the k-means initialisation ran: training only.
        codebook + "inited",
    ]
