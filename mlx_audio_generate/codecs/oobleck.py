"""Oobleck VAE (Stable Audio Open's pretransform): encoder, VAE bottleneck and decoder in MLX.

Mirrors stable-audio-tools `models/autoencoders.py` (OobleckEncoder/OobleckDecoder), `models/bottleneck.py`
(VAEBottleneck) and `models/pretransforms.py` (AutoencoderPretransform: encode divides by `scale`, decode
multiplies). Public tensors are channels-first `(batch, channels, time)`; internally channels-last.

Speed: on the GPU the encoder and decoder run through `mx.compile` (weights as implicit inputs), which fuses
each conv's bias add with the Snake that follows and the residual adds: at 128 channels x 2M samples every
elementwise pass over an activation costs as much as a third of a convolution. `OobleckVAE.compiled =
True/False` overrides (the CPU default is eager: its compiled kernels need a C++ compiler at run time).
On the CPU the decoder's transposed convolutions run in polyphase form as GEMMs (`upsample`), not over MLX
conv_transpose1d's zero-stuffed input (2.5x faster at small's block 1, 1024 -> 512 channels at stride 8); on
the GPU MLX's conv_transpose1d was the fastest of the three forms (H200, 2026-12-01: small's whole decode
15.8 ms against 17.0 for the GEMMs, 1.0's 33.4 against 35.3); `OobleckVAE.upsample` selects the formulation.
The residual units' dilated convolutions can run as plain ones over interleaved subsequences
(`dilated_conv`, `OobleckVAE.dilated`): on CUDA where cuDNN picks a slow algorithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..devices import on_cuda
from ..errors import UserError
from ..memory import check_bounds
from ..weights import Checkpoint, torch_conv1d, torch_conv_transpose1d

DILATIONS = (1, 3, 9)  # the three residual units of every Oobleck block


# Sanity bounds of the fields that size tensors (stable-audio-open-1.0: 128 channels, c_mults up to 16,
# strides up to 8, latent 64 (encoder 128)); a corrupt config is refused before the VAE is built from it.
CODER_BOUNDS = {
    "io_channels": (1, 16),
    "channels": (1, 4096),
    "c_mults": (1, 64),
    "strides": (1, 64),
    "latent_dim": (1, 8192),
}


@dataclass(frozen=True)
class CoderConfig:
    """One side (encoder or decoder) of the autoencoder; `latent_dim` is that side's latent width."""

    io_channels: int
    channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    latent_dim: int
    use_snake: bool

    @property
    def widths(self) -> list[int]:
        # The reference prepends 1 to c_mults: the first conv maps audio to `channels`.
        return [m * self.channels for m in (1, *self.c_mults)]


@dataclass(frozen=True)
class OobleckConfig:
    encoder: CoderConfig
    decoder: CoderConfig
    latent_dim: int
    downsampling_ratio: int
    io_channels: int
    final_tanh: bool = False
    soft_clip: bool = False
    scale: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OobleckConfig:
        """From `model.pretransform` (reads its `scale`) or from its inner `config` dict."""
        scale = 1.0
        if "config" in d and "encoder" not in d:
            if d.get("type", "autoencoder") != "autoencoder":
                raise UserError(
                    f"pretransform type '{d.get('type')}' is not supported (expected 'autoencoder')"
                )
            if d.get("model_half", False):
                raise UserError("pretransform 'model_half' is not supported; choose the dtype at conversion")
            scale = float(d.get("scale", 1.0))
            d = d["config"]
        try:
            enc, dec = d["encoder"], d["decoder"]
            latent_dim, ratio, io = int(d["latent_dim"]), int(d["downsampling_ratio"]), int(d["io_channels"])
        except KeyError as e:
            raise UserError(f"autoencoder config lacks {e}: not an Oobleck autoencoder config") from None
        for side in (enc, dec):
            if side.get("type") != "oobleck":
                raise UserError(f"autoencoder {side.get('type')!r} is not supported (only 'oobleck')")
            bad = [
                k for k in ("antialias_activation", "use_nearest_upsample") if side["config"].get(k, False)
            ]
            if bad:
                raise UserError(f"Oobleck option(s) {', '.join(bad)} are not supported")
        if (d.get("bottleneck") or {}).get("type") != "vae":
            raise UserError(f"bottleneck {d.get('bottleneck')!r} is not supported (only 'vae')")
        if d.get("pretransform") is not None:
            raise UserError("a nested pretransform inside the autoencoder is not supported")
        ec, dc = enc["config"], dec["config"]

        # Defaults are the reference constructors' defaults (OobleckEncoder/OobleckDecoder signatures).
        def side(c: dict, io_key: str) -> CoderConfig:
            return CoderConfig(
                io_channels=int(c.get(io_key, 2)),
                channels=int(c.get("channels", 128)),
                c_mults=tuple(int(m) for m in c.get("c_mults", [1, 2, 4, 8])),
                strides=tuple(int(s) for s in c.get("strides", [2, 4, 8, 8])),
                latent_dim=int(c.get("latent_dim", 32)),
                use_snake=bool(c.get("use_snake", False)),
            )

        cfg = cls(
            encoder=side(ec, "in_channels"),
            decoder=side(dc, "out_channels"),
            latent_dim=latent_dim,
            downsampling_ratio=ratio,
            io_channels=io,
            final_tanh=bool(dc.get("final_tanh", True)),
            soft_clip=bool(dec.get("soft_clip", False)),
            scale=scale,
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> OobleckConfig:
        """From a diffusers `AutoencoderOobleck` config.json (its constructor's defaults for missing keys).

        diffusers shares `channel_multiples` / `downsampling_ratios` between the sides; its encoder is
        `encoder_hidden_size` wide and emits `encoder_hidden_size` channels (mean || scale), its decoder is
        `decoder_channels` wide on `decoder_input_channels` latents; Snake everywhere, no final tanh, no
        scale."""
        if not isinstance(d, dict):
            raise UserError(f"AutoencoderOobleck config must be a JSON object, got {type(d).__name__}")
        if d.get("_class_name", "AutoencoderOobleck") != "AutoencoderOobleck":
            raise UserError(
                f"VAE class {d.get('_class_name')!r} is not supported (only 'AutoencoderOobleck')"
            )
        try:
            width = int(d.get("encoder_hidden_size", 128))
            ratios = tuple(int(r) for r in d.get("downsampling_ratios", [2, 4, 4, 8, 8]))
            mults = tuple(int(m) for m in d.get("channel_multiples", [1, 2, 4, 8, 16]))
            io, latent = int(d.get("audio_channels", 2)), int(d.get("decoder_input_channels", 64))
            dec = int(d.get("decoder_channels", 128))
        except (TypeError, ValueError) as e:
            raise UserError(f"AutoencoderOobleck config has a non-integer size: {e}") from None

        def side(channels: int, latent_dim: int) -> CoderConfig:
            return CoderConfig(io, channels, mults, ratios, latent_dim, use_snake=True)

        cfg = cls(
            encoder=side(width, width),
            decoder=side(dec, latent),
            latent_dim=latent,
            downsampling_ratio=math.prod(ratios),
            io_channels=io,
            final_tanh=False,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        e, dd = self.encoder, self.decoder
        check_bounds(
            self,
            {"latent_dim": (1, 4096), "downsampling_ratio": (1, 65536), "io_channels": (1, 16)},
            "Oobleck",
        )
        for name, c in (("encoder", e), ("decoder", dd)):
            check_bounds(c, CODER_BOUNDS, f"Oobleck {name}")
            check_bounds({"len(c_mults)": len(c.c_mults)}, {"len(c_mults)": (1, 16)}, f"Oobleck {name}")
        problems = []
        if len(e.c_mults) != len(e.strides) or len(dd.c_mults) != len(dd.strides):
            problems.append("c_mults and strides differ in length")
        if e.latent_dim != 2 * self.latent_dim:
            problems.append(
                f"encoder latent_dim {e.latent_dim} != 2 x latent_dim {self.latent_dim} (VAE mean+scale)"
            )
        if dd.latent_dim != self.latent_dim:
            problems.append(f"decoder latent_dim {dd.latent_dim} != latent_dim {self.latent_dim}")
        for name, c in (("encoder", e), ("decoder", dd)):
            if math.prod(c.strides) != self.downsampling_ratio:
                problems.append(
                    f"{name} strides {list(c.strides)} do not multiply to {self.downsampling_ratio}"
                )
        if problems:
            raise UserError("inconsistent Oobleck config: " + "; ".join(problems))


@mx.compile
def _snake(x: mx.array, alpha: mx.array, inv_beta: mx.array) -> mx.array:
    # One fused kernel; computed in fp32 whatever the storage dtype (free inside the fused kernel).
    x32 = x.astype(mx.float32)
    return (x32 + inv_beta * mx.square(mx.sin(x32 * alpha))).astype(x.dtype)


class Snake(nn.Module):
    """SnakeBeta with alpha_logscale: x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2 (blocks.py)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = mx.zeros((channels,))
        self.beta = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        # exp and reciprocal on the (C,) params, as the reference does, not per element.
        alpha = mx.exp(self.alpha.astype(mx.float32))
        inv_beta = 1.0 / (mx.exp(self.beta.astype(mx.float32)) + 1e-9)
        return _snake(x, alpha, inv_beta)


def _activation(use_snake: bool, channels: int) -> nn.Module:
    return Snake(channels) if use_snake else nn.ELU()


DILATED_MODES = ("auto", "conv", "subsequences")


def _check_dilated(mode: str) -> None:
    if mode not in DILATED_MODES:
        raise ValueError(f"unknown dilated-conv mode {mode!r} (one of {', '.join(DILATED_MODES)})")


def dilated_conv(x: mx.array, conv: nn.Conv1d, dilation: int, mode: str = "auto") -> mx.array:
    """`conv(x)`: a residual unit's kernel-7 convolution (padding 3 x `dilation`) on channels-last x.

    "subsequences" computes the same sums as a dilation-1 convolution of the `dilation` interleaved
    subsequences x[j::dilation] as one batch (the length zero-padded to a multiple of the dilation, which
    the crop removes). On CUDA, cuDNN's heuristic plan is ~20x slow for two of the decoders' dilation-9
    shapes: 512 channels x 16384 samples (small's block 1) took 5.3 ms against 0.26 ms this way, and 1024 x
    8192 (1.0's block 0) 5.4 against 0.29 (H200, 2026-12-02, bench/oobleck_conv_probe.py). At the other
    dilation-9 shapes with 512 or more channels this form was as fast or faster; below 512 channels and at
    dilation 3 the conv was faster. "auto" takes "subsequences" on CUDA for dilation 9 at 512 or more
    channels, MLX's conv1d ("conv") elsewhere."""
    _check_dilated(mode)
    channels = x.shape[-1]
    if mode == "auto":
        mode = "subsequences" if on_cuda() and dilation == 9 and channels >= 512 else "conv"
    if mode == "conv" or dilation == 1:
        return conv(x)
    n, length, _ = x.shape
    d, padded = dilation, -(-length // dilation) * dilation
    if padded != length:
        x = mx.pad(x, [(0, 0), (0, padded - length), (0, 0)])
    xs = x.reshape(n, padded // d, d, channels).transpose(0, 2, 1, 3).reshape(n * d, padded // d, channels)
    y = mx.conv1d(xs, conv.weight, padding=3)
    y = y.reshape(n, d, padded // d, -1).transpose(0, 2, 1, 3).reshape(n, padded, -1)[:, :length]
    return y + conv.bias if "bias" in conv else y


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, use_snake: bool):
        super().__init__()
        self.dilation = dilation
        self.dilated = "auto"  # see `dilated_conv`; OobleckVAE.dilated sets it for every unit
        self.act1 = _activation(use_snake, channels)
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.act2 = _activation(use_snake, channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        h = dilated_conv(self.act1(x), self.conv1, self.dilation, self.dilated)
        return x + self.conv2(self.act2(h))


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool):
        super().__init__()
        self.res = [ResidualUnit(cin, d, use_snake) for d in DILATIONS]
        self.act = _activation(use_snake, cin)
        self.down = nn.Conv1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def __call__(self, x: mx.array) -> mx.array:
        for r in self.res:
            x = r(x)
        return self.down(self.act(x))


UPSAMPLE_MODES = ("auto", "matmul", "conv", "transpose")  # auto: transpose on the GPU, matmul on the CPU


def upsample(x: mx.array, up: nn.ConvTranspose1d, stride: int, mode: str = "auto") -> mx.array:
    """`up(x)`: ConvTranspose1d(kernel 2 * stride, stride, padding ceil(stride / 2)) on channels-last x.

    "transpose" is MLX's conv_transpose1d, which convolves the stride-times zero-stuffed input (stride - 1
    of every stride products are zeros). "matmul" and "conv" compute the same sums in polyphase form: with
    kernel 2s, output sample q*s + r (before the crop) is x[q] @ W[r] + x[q - 1] @ W[s + r], i.e. a 2-tap
    stride-1 convolution of the input (one zero frame each side) into s * cout channels, whose frames
    reshape to s consecutive output samples; then the crop of the padding. "matmul" runs it as two GEMMs
    (one addmm), "conv" as one kernel-2 conv1d. Same products, only the fp32 summation order differs."""
    if mode == "auto":  # the faster form where it was measured (module doc)
        mode = "transpose" if mx.default_device() == mx.gpu else "matmul"
    w = up.weight  # (cout, 2s, cin)
    cout, k, cin = w.shape
    if mode == "transpose" or k != 2 * stride:
        return up(x)
    s, pad = stride, math.ceil(stride / 2)
    n, length, _ = x.shape
    if mode == "matmul":
        taps = w.transpose(2, 1, 0).reshape(cin, k * cout)  # one copy; column r * cout + c is W[c, r]
        w_now, w_prev = taps[:, : s * cout], taps[:, s * cout :]  # taps reading x[q] / x[q - 1]
        xp = mx.pad(x, [(0, 0), (1, 1), (0, 0)])
        z = mx.addmm(xp[:, :-1] @ w_prev, xp[:, 1:], w_now)
    elif mode == "conv":
        # output channel r * cout + c; tap 0 reads x[q - 1] (W[s + r]), tap 1 reads x[q] (W[r])
        wp = mx.stack([w[:, s:], w[:, :s]], axis=2).transpose(1, 0, 2, 3).reshape(s * cout, 2, cin)
        z = mx.conv1d(x, wp, padding=1)
    else:
        raise ValueError(f"unknown upsample mode {mode!r} (one of {', '.join(UPSAMPLE_MODES)})")
    out_len = (length - 1) * s - 2 * pad + k
    y = z.reshape(n, (length + 1) * s, cout)[:, pad : pad + out_len]
    return y + up.bias if "bias" in up else y


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool):
        super().__init__()
        self.stride = stride
        self.upsample = "auto"  # see `upsample`; OobleckVAE.upsample sets it for every block
        self.act = _activation(use_snake, cin)
        self.up = nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
        self.res = [ResidualUnit(cout, d, use_snake) for d in DILATIONS]

    def __call__(self, x: mx.array) -> mx.array:
        x = upsample(self.act(x), self.up, self.stride, self.upsample)
        for r in self.res:
            x = r(x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: CoderConfig):
        super().__init__()
        w = c.widths
        self.conv_in = nn.Conv1d(c.io_channels, w[0], 7, padding=3)
        self.blocks = [EncoderBlock(w[i], w[i + 1], s, c.use_snake) for i, s in enumerate(c.strides)]
        self.act_out = _activation(c.use_snake, w[-1])
        self.conv_out = nn.Conv1d(w[-1], c.latent_dim, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for b in self.blocks:
            x = b(x)
        return self.conv_out(self.act_out(x))


class Decoder(nn.Module):
    def __init__(self, c: CoderConfig, final_tanh: bool):
        super().__init__()
        w = c.widths
        n = len(c.strides)
        self.final_tanh = final_tanh
        self.conv_in = nn.Conv1d(c.latent_dim, w[-1], 7, padding=3)
        # Block k upsamples width w[n-k] -> w[n-k-1] by strides[n-1-k] (the encoder mirrored).
        self.blocks = [
            DecoderBlock(w[n - k], w[n - k - 1], c.strides[n - 1 - k], c.use_snake) for k in range(n)
        ]
        self.act_out = _activation(c.use_snake, w[0])
        self.conv_out = nn.Conv1d(w[0], c.io_channels, 7, padding=3, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for b in self.blocks:
            x = b(x)
        x = self.conv_out(self.act_out(x))
        return mx.tanh(x) if self.final_tanh else x


def _softplus(x: mx.array) -> mx.array:
    # torch.nn.functional.softplus (beta=1, threshold=20): linear above the threshold.
    return mx.where(x > 20, x, mx.log1p(mx.exp(mx.minimum(x, 20))))


def vae_sample(mean: mx.array, scale: mx.array, noise: mx.array) -> mx.array:
    """stable-audio-tools `vae_sample` with its `randn_like` replaced by `noise`: noise * std + mean."""
    std = _softplus(scale) + 1e-4
    return noise * std + mean


class _Compiled:
    """Compiled-function cache (a plain object, so nn.Module does not take it for part of the tree)."""

    def __init__(self) -> None:
        self.fns: dict[str, Any] = {}


class OobleckVAE(nn.Module):
    def __init__(self, config: OobleckConfig):
        super().__init__()
        # None: compile on the GPU, eager on the CPU; True/False force it.
        self.compiled: bool | None = None
        self._jit = _Compiled()
        self.config = config
        self.encoder = Encoder(config.encoder)
        self.decoder = Decoder(config.decoder, config.final_tanh)

    @property
    def downsampling_ratio(self) -> int:
        return self.config.downsampling_ratio

    @property
    def upsample(self) -> str:
        """How the decoder's transposed convolutions run (see `upsample`): "auto" (default: "transpose" on the
        GPU, "matmul" on the CPU), "matmul", "conv" or "transpose" (MLX's conv_transpose1d)."""
        return self.decoder.blocks[0].upsample

    @upsample.setter
    def upsample(self, mode: str) -> None:
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r} (one of {', '.join(UPSAMPLE_MODES)})")
        for b in self.decoder.blocks:
            b.upsample = mode
        self._jit.fns.clear()  # the compiled decoder traced the previous mode

    def _units(self) -> list[ResidualUnit]:
        return [u for part in (self.encoder, self.decoder) for b in part.blocks for u in b.res]

    @property
    def dilated(self) -> str:
        """How the residual units' dilated convolutions run (see `dilated_conv`): "auto" (default), "conv"
        (MLX's conv1d) or "subsequences"."""
        return self._units()[0].dilated

    @dilated.setter
    def dilated(self, mode: str) -> None:
        _check_dilated(mode)
        for u in self._units():
            u.dilated = mode
        self._jit.fns.clear()  # the compiled parts traced the previous mode

    def _run(self, name: str, x: mx.array) -> mx.array:
        """self.encoder / self.decoder on channels-last x, compiled or not (see the module doc)."""
        part = getattr(self, name)
        use = mx.default_device().type == mx.DeviceType.gpu if self.compiled is None else self.compiled
        if not use:
            return part(x)
        fn = self._jit.fns.get(name)
        if fn is None:
            fn = self._jit.fns[name] = mx.compile(lambda h: getattr(self, name)(h), inputs=self.state)
        return fn(x)

    def encode_pre_bottleneck(self, audio: mx.array) -> mx.array:
        """audio (B, C, T) -> encoder output (B, 2*latent_dim, T/ratio): mean ‖ scale, pre-bottleneck."""
        if audio.ndim != 3 or audio.shape[1] != self.config.encoder.io_channels:
            raise UserError(
                f"expected audio (batch, {self.config.encoder.io_channels}, samples), got {audio.shape}"
            )
        return self._run("encoder", audio.transpose(0, 2, 1)).transpose(0, 2, 1)

    def encode(self, audio: mx.array, noise: mx.array | None = None) -> mx.array:
        """audio (B, C, T) -> latents (B, latent_dim, T/ratio), divided by the pretransform scale.

        Without `noise` the VAE mean (deterministic); with `noise` (shaped like the latents) the reference's
        sample `noise * (softplus(scale) + 1e-4) + mean`, so a given torch noise reproduces its encode.
        T should be a multiple of the downsampling ratio (the reference pads audio to one before encoding).
        """
        h = self.encode_pre_bottleneck(audio)
        mean, scale = mx.split(h, 2, axis=1)
        if noise is not None and tuple(noise.shape) != tuple(mean.shape):
            raise UserError(f"VAE noise must have the latents' shape {tuple(mean.shape)}, not {noise.shape}")
        z = mean if noise is None else vae_sample(mean, scale, noise)
        return z if self.config.scale == 1.0 else z / self.config.scale

    def decode(self, latents: mx.array) -> mx.array:
        """latents (B, latent_dim, L) -> audio (B, C, L*ratio); latents are first multiplied by `scale`."""
        if latents.ndim != 3 or latents.shape[1] != self.config.latent_dim:
            raise UserError(
                f"expected latents (batch, {self.config.latent_dim}, frames), got {latents.shape}"
            )
        if self.config.scale != 1.0:
            latents = latents * self.config.scale
        y = self._run("decoder", latents.transpose(0, 2, 1)).transpose(0, 2, 1)
        return mx.tanh(y) if self.config.soft_clip else y

    def sanitize(self, ckpt: Checkpoint, prefix: str = "pretransform.model.") -> dict[str, mx.array]:
        """Take the stable-audio-tools AudioAutoencoder tensors under `prefix`; return ours (norm folded)."""
        out: dict[str, mx.array] = {}

        def conv(ref: str, ours: str, transpose: bool = False, bias: bool = True) -> None:
            w = ckpt.take_conv_weight(prefix + ref)
            out[f"{ours}.weight"] = torch_conv_transpose1d(w) if transpose else torch_conv1d(w)
            if bias:
                out[f"{ours}.bias"] = ckpt.take(f"{prefix}{ref}.bias")

        def act(ref: str, ours: str, use_snake: bool) -> None:
            if use_snake:  # ELU has no parameters
                for p in ("alpha", "beta"):
                    out[f"{ours}.{p}"] = ckpt.take(f"{prefix}{ref}.{p}")

        def res_unit(ref: str, ours: str, use_snake: bool) -> None:
            # ResidualUnit.layers = [act, conv k7, act, conv k1]
            act(f"{ref}.layers.0", f"{ours}.act1", use_snake)
            conv(f"{ref}.layers.1", f"{ours}.conv1")
            act(f"{ref}.layers.2", f"{ours}.act2", use_snake)
            conv(f"{ref}.layers.3", f"{ours}.conv2")

        # encoder.layers = [conv_in, EncoderBlock x n, act, conv_out]; block.layers = [res x3, act, conv]
        e = self.config.encoder
        n = len(e.strides)
        conv("encoder.layers.0", "encoder.conv_in")
        for i in range(n):
            ref, ours = f"encoder.layers.{1 + i}.layers", f"encoder.blocks.{i}"
            for j in range(len(DILATIONS)):
                res_unit(f"{ref}.{j}", f"{ours}.res.{j}", e.use_snake)
            act(f"{ref}.3", f"{ours}.act", e.use_snake)
            conv(f"{ref}.4", f"{ours}.down")
        act(f"encoder.layers.{1 + n}", "encoder.act_out", e.use_snake)
        conv(f"encoder.layers.{2 + n}", "encoder.conv_out")

        # decoder.layers = [conv_in, DecoderBlock x n, act, conv_out (no bias), tanh|identity];
        # block.layers = [act, conv transpose, res x3]
        d = self.config.decoder
        n = len(d.strides)
        conv("decoder.layers.0", "decoder.conv_in")
        for k in range(n):
            ref, ours = f"decoder.layers.{1 + k}.layers", f"decoder.blocks.{k}"
            act(f"{ref}.0", f"{ours}.act", d.use_snake)
            conv(f"{ref}.1", f"{ours}.up", transpose=True)
            for j in range(len(DILATIONS)):
                res_unit(f"{ref}.{2 + j}", f"{ours}.res.{j}", d.use_snake)
        act(f"decoder.layers.{1 + n}", "decoder.act_out", d.use_snake)
        conv(f"decoder.layers.{2 + n}", "decoder.conv_out", bias=False)
        return out

    def sanitize_diffusers(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Take a diffusers `AutoencoderOobleck` checkpoint's tensors under `prefix`; return ours (weight
        norm folded).

        Its layout: `{encoder,decoder}.conv1`, `.block.{i}` (encoder: `res_unit1..3`, `snake1`, `conv1`;
        decoder: `snake1`, `conv_t1`, `res_unit1..3`; a unit: `snake1`, `conv1`, `snake2`, `conv2`),
        `.snake1`, `.conv2` (no bias in the decoder); Snake parameters are (1, C, 1)."""
        out: dict[str, mx.array] = {}

        def conv(ref: str, ours: str, transpose: bool = False, bias: bool = True) -> None:
            w = ckpt.take_conv_weight(prefix + ref)
            out[f"{ours}.weight"] = torch_conv_transpose1d(w) if transpose else torch_conv1d(w)
            if bias:
                out[f"{ours}.bias"] = ckpt.take(f"{prefix}{ref}.bias")

        def snake(ref: str, ours: str) -> None:
            for p in ("alpha", "beta"):
                out[f"{ours}.{p}"] = ckpt.take(f"{prefix}{ref}.{p}").reshape(-1)

        def res_unit(ref: str, ours: str) -> None:
            snake(f"{ref}.snake1", f"{ours}.act1")
            conv(f"{ref}.conv1", f"{ours}.conv1")
            snake(f"{ref}.snake2", f"{ours}.act2")
            conv(f"{ref}.conv2", f"{ours}.conv2")

        for side, c in (("encoder", self.config.encoder), ("decoder", self.config.decoder)):
            if not c.use_snake:
                raise UserError("the diffusers Oobleck layout has Snake activations only")
            conv(f"{side}.conv1", f"{side}.conv_in")
            for i in range(len(c.strides)):
                ref, ours = f"{side}.block.{i}", f"{side}.blocks.{i}"
                if side == "encoder":
                    for j in range(len(DILATIONS)):
                        res_unit(f"{ref}.res_unit{j + 1}", f"{ours}.res.{j}")
                    snake(f"{ref}.snake1", f"{ours}.act")
                    conv(f"{ref}.conv1", f"{ours}.down")
                else:
                    snake(f"{ref}.snake1", f"{ours}.act")
                    conv(f"{ref}.conv_t1", f"{ours}.up", transpose=True)
                    for j in range(len(DILATIONS)):
                        res_unit(f"{ref}.res_unit{j + 1}", f"{ours}.res.{j}")
            snake(f"{side}.snake1", f"{side}.act_out")
            conv(f"{side}.conv2", f"{side}.conv_out", bias=side == "encoder")
        return out


def load_oobleck(config: OobleckConfig, weights: dict[str, mx.array]) -> OobleckVAE:
    """An OobleckVAE with converted `weights` loaded strictly (every parameter present, no extras)."""
    model = OobleckVAE(config)
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    return model
