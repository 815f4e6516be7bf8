"""Stable Audio 3's diffusion transformer (DiT) in MLX: small (plain attention) and medium (differential).

Mirrors `stable_audio_3/models/dit.py` (DiffusionTransformer, called through `DiTWrapper`) and
`models/transformer.py` (ContinuousTransformer) for the options the released models use (blocks in
dit_blocks.py):
- timestep: ExpoFourierFeatures(256, 0.5..10000 Hz) = [cos, sin](t * f * 2 * pi) of t (or, with
  `timestep_features_logsnr`, of the normalised log-SNR) -> Linear-SiLU-Linear, plus `to_global_embed`
  (Linear-SiLU-Linear, no bias) of the global condition -> `global_cond_embedder` (Linear E->E, SiLU,
  Linear E->6E) -> per block adaLN (scale, shift, gate) x 2;
- cross tokens through `to_cond_embed` (no bias); the cross-attention mask is ignored (the reference sets it
  to None);
- `num_memory_tokens` learned tokens prepended (rotary positions count them), dropped at the end; 1x1
  pre/post convs with a residual around them, `project_in/out` without bias;
- `local_add_cond` (B, C_local, T) = concat(inpaint_mask, masked latents), embedded per block; None stands
  for the all-zero tensor the reference is fed without inpainting (computed as one constant vector).

Classifier-free guidance is the reference's batch-CFG path (`guided`): one batch of 2B, conditional tokens
first, then zeros (or a negative prompt's tokens, zeroed where its mask is False); the global and local
conditions and the padding mask are shared; rectified-flow denoised estimates `x - v * t`; APG keeps the
part of their difference orthogonal to the conditional estimate (float32, over (C, T), restricted to the
valid positions under a padding mask), blended with the plain difference for 0 < apg_scale < 1;
v = (x - guided) / t.
Not ported (defaults of `StableAudioModel.generate`): cfg_interval (always (0, 1)), cfg_norm_threshold and
scale_phi (0), cfg dropout and LoRA (training / separate feature).

`forward` and `guided` run through `mx.compile` on the GPU and eagerly on the CPU (compiled CPU kernels need
a C++ compiler at run time); `SA3DiT.compiled = True/False` overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..config_fields import int_at_least
from ..diffusion.dit_parts import MLP, DiTWidths, check_inv_freq, take_conv1x1, take_linears, uncond_tokens
from ..diffusion.dit_parts import Compiled as _Compiled
from ..diffusion.dit_parts import on_gpu as _on_gpu
from ..diffusion.dit_parts import rope_inv_freq as _rope_inv_freq
from ..errors import UserError
from ..weights import Checkpoint
from .dit_blocks import TransformerBlock
from .fourier import expo_frequencies

# DiffusionTransformer / ContinuousTransformer / TransformerBlock / Attention options whose reference value we
# implement; any other value changes the computation, so it is refused rather than ignored.
_FIXED: dict[str, Any] = {
    "patch_size": 1,
    "input_concat_dim": 0,
    "prepend_cond_dim": 0,
    "transformer_type": "continuous_transformer",
    "global_cond_type": "adaLN",
    "timestep_cond_type": "global",
    "timestep_features_type": "expo",
    "causal": False,
    "rotary_pos_emb": True,
    "cross_attn_rotary_pos_emb": False,
    "conformer": False,
    "use_sinusoidal_emb": False,
    "use_abs_pos_emb": False,
    "final_cross_attn_ix": -1,
    "sliding_window": None,
    "layer_scale": False,
    "add_rope": False,
    "norm_type": "rms_norm",
    "modular_local_cond_configs": None,
}
_KNOWN = {
    "io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "project_cond_tokens",
    "global_cond_dim", "project_global_cond", "local_add_cond_dim", "num_memory_tokens",
    "timestep_features_dim", "timestep_features_logsnr", "attn_kwargs", "ff_kwargs", "norm_kwargs",
    "zero_init_branch_outputs", "timestep_embed_dim", "diffusion_objective",
}  # fmt: skip
_OBJECTIVES = ("rectified_flow", "rf_denoiser")  # both: x_0 estimate = x - v * t
_EXPO_FREQS = (0.5, 10000.0)  # hard-coded in DiffusionTransformer
_LOGSNR_RANGE = (-12.0, 5.0)  # DiffusionTransformer._LOGSNR_MIN / _MAX


def _int(d: dict, key: str, default: int | None = None, low: int = 1) -> int:
    return int_at_least(d, key, default, low, "DiT config")


@dataclass(frozen=True)
class SA3DiTConfig(DiTWidths):
    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: int
    local_add_cond_dim: int
    num_memory_tokens: int
    project_cond_tokens: bool = True
    project_global_cond: bool = True
    differential: bool = False
    qk_norm_eps: float = 1e-6
    norm_eps: float = 1e-5
    norm_force_fp32: bool = False
    ff_mult: float = 4.0
    timestep_features_dim: int = 256
    timestep_features_logsnr: bool = False
    diffusion_objective: str = "rf_denoiser"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SA3DiTConfig:
        """From a whole `model_config.json`, its `model.diffusion` entry, or that entry's inner `config`."""
        objective, modular = "v", None
        if "model" in d:
            d = d["model"]
        if "diffusion" in d:
            d = d["diffusion"]
        if "config" in d:
            if d.get("type", "dit") != "dit":
                raise UserError(f"diffusion model type '{d.get('type')}' is not supported (expected 'dit')")
            objective = d.get("diffusion_objective", "v")  # the factory's default
            modular = d.get("modular_local_cond_configs") or None
            d = dict(d["config"], modular_local_cond_configs=modular)
        objective = d.get("diffusion_objective", objective)
        if objective not in _OBJECTIVES:
            raise UserError(f"diffusion_objective '{objective}' is not supported ({', '.join(_OBJECTIVES)})")
        for key, want in _FIXED.items():
            if d.get(key, want) != want:
                raise UserError(f"DiT option {key}={d[key]!r} is not supported (only {want!r})")
        unknown = sorted(set(d) - _KNOWN - set(_FIXED))
        if unknown:
            raise UserError(f"DiT config has options this port does not implement: {', '.join(unknown)}")
        attn = dict(d.get("attn_kwargs") or {})
        if attn.pop("qk_norm", "none") != "rms" or attn.pop("feat_scale", False) or attn.pop("causal", False):
            raise UserError(f"DiT attn_kwargs {d.get('attn_kwargs')} are not supported (qk_norm 'rms' only)")
        differential = attn.pop("differential", False)
        qk_eps = attn.pop("qk_norm_eps", 1e-6)
        if attn or not isinstance(differential, bool):
            raise UserError(f"DiT attn_kwargs {d.get('attn_kwargs')} are not supported")
        ff = dict(d.get("ff_kwargs") or {})
        mult = ff.pop("mult", 4)
        if ff.pop("glu", True) is not True or ff.pop("no_bias", False) or ff.pop("use_conv", False):
            raise UserError(f"DiT ff_kwargs {d.get('ff_kwargs')} are not supported (SwiGLU with biases only)")
        if ff.pop("sinusoidal", False) or ff or not isinstance(mult, (int, float)) or mult <= 0:
            raise UserError(f"DiT ff_kwargs {d.get('ff_kwargs')} are not supported")
        norm = dict(d.get("norm_kwargs") or {})
        eps, fp32 = norm.pop("eps", 1e-5), norm.pop("force_fp32", False)
        if norm.pop("fix_scale", False) or norm:
            raise UserError(f"DiT norm_kwargs {d.get('norm_kwargs')} are not supported")
        embed_dim, num_heads = _int(d, "embed_dim", 768), _int(d, "num_heads", 8)
        if embed_dim % num_heads:
            raise UserError(f"DiT embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        cond_dim = _int(d, "cond_token_dim", 0, low=0)
        if cond_dim == 0:
            raise UserError("DiT cond_token_dim must be > 0 (Stable Audio 3 always cross-attends)")
        tdim = _int(d, "timestep_features_dim", 256, low=2)
        if tdim % 2:
            raise UserError(f"DiT timestep_features_dim {tdim} must be even")
        cfg = cls(
            io_channels=_int(d, "io_channels", 32),
            embed_dim=embed_dim,
            depth=_int(d, "depth", 12),
            num_heads=num_heads,
            cond_token_dim=cond_dim,
            global_cond_dim=_int(d, "global_cond_dim", 0, low=0),
            local_add_cond_dim=_int(d, "local_add_cond_dim", 0, low=0) if d.get("local_add_cond_dim") else 0,
            num_memory_tokens=_int(d, "num_memory_tokens", 0, low=0),
            project_cond_tokens=bool(d.get("project_cond_tokens", True)),
            project_global_cond=bool(d.get("project_global_cond", True)),
            differential=differential,
            qk_norm_eps=float(qk_eps),
            norm_eps=float(eps),
            norm_force_fp32=bool(fp32),
            ff_mult=float(mult),
            timestep_features_dim=tdim,
            timestep_features_logsnr=bool(d.get("timestep_features_logsnr", False)),
            diffusion_objective=objective,
        )
        if cfg.cond_embed_dim % cfg.head_dim or cfg.num_heads % (cfg.cond_embed_dim // cfg.head_dim):
            raise UserError(
                f"cross-attention width {cfg.cond_embed_dim} does not fit head_dim {cfg.head_dim}"
            )
        if not cfg.project_global_cond and cfg.global_cond_dim and cfg.global_cond_dim != embed_dim:
            raise UserError("an unprojected global condition must be embed_dim wide (it is added to t's)")
        return cfg


@dataclass
class SA3Conditioning:
    """One generation's conditioning, independent of x and t, computed once (`SA3DiT.condition`).

    `kv`: per block the cross-attention (k, v) or (k, k2, v); `global_embed`: `to_global_embed` of the global
    condition (N, E) or None; `local`: the local condition channels-last (N, T, C_local), or None for the
    all-zero one (then `local_const` holds each block's (E,) embedding of it); `padding_mask` (N, T) bool or
    None; `batch`: N (2B for a CFG pair, conditional rows first); `null_uncond`: a CFG pair whose
    unconditional rows are the null context (zeros: no negative prompt). Its values are zero (no bias in
    `to_cond_embed` or `kv`), so that half's cross-attention adds exactly 0 and the blocks skip it.
    """

    kv: list[tuple[mx.array, ...]]
    global_embed: mx.array | None
    local: mx.array | None
    local_const: list[mx.array] | None
    padding_mask: mx.array | None
    batch: int
    cfg_pair: bool = False
    null_uncond: bool = False


def apg_project(v0: mx.array, v1: mx.array, padding_mask: mx.array | None) -> tuple[mx.array, mx.array]:
    """DiffusionTransformer.apg_project: (parallel, orthogonal) parts of v0 w.r.t. v1 over (C, T), float32.
    With a padding mask (B, T) only valid positions define the direction and the orthogonal part is zero
    over the padding (the parallel part is that of the masked v0, as the reference)."""
    dtype = v0.dtype
    v0, v1 = v0.astype(mx.float32), v1.astype(mx.float32)
    axes = (-2, -1)
    if padding_mask is None:
        v1 = v1 / mx.maximum(mx.sqrt(mx.sum(v1 * v1, axis=axes, keepdims=True)), 1e-12)  # F.normalize
        par = mx.sum(v0 * v1, axis=axes, keepdims=True) * v1
        orth = v0 - par
    else:
        m = padding_mask[:, None, :].astype(mx.float32)
        v1m = v1 * m
        v1n = v1m / mx.maximum(mx.sqrt(mx.sum(v1m * v1m, axis=axes, keepdims=True)), 1e-8)
        par = mx.sum(v0 * m * v1n, axis=axes, keepdims=True) * v1n
        orth = (v0 - mx.sum(v0 * v1n, axis=axes, keepdims=True) * v1n) * m
    return par.astype(dtype), orth.astype(dtype)


class SA3DiT(nn.Module):
    def __init__(self, config: SA3DiTConfig):
        super().__init__()
        self.compiled: bool | None = None  # None: compiled on the GPU only (module doc)
        # A CFG pair's halves are equal until the first cross-attention: its self-attention runs once.
        # False: the whole pair through it (what the reference does; for tests and A/B benches).
        self.share_first = True
        self._jit = _Compiled()
        c = self.config = config
        e = c.embed_dim
        self.to_timestep_embed = MLP(c.timestep_features_dim, e, e, bias=True)
        self.to_cond_embed = MLP(c.cond_token_dim, c.cond_embed_dim, c.cond_embed_dim, bias=False)
        if c.global_cond_dim:
            self.to_global_embed = MLP(c.global_cond_dim, c.global_embed_dim, c.global_embed_dim, bias=False)
        self.preprocess_conv = nn.Linear(c.io_channels, c.io_channels, bias=False)  # 1x1 convs
        self.postprocess_conv = nn.Linear(c.io_channels, c.io_channels, bias=False)
        self.project_in = nn.Linear(c.io_channels, e, bias=False)
        self.project_out = nn.Linear(e, c.io_channels, bias=False)
        if c.num_memory_tokens:
            self.memory_tokens = mx.zeros((c.num_memory_tokens, e))
        self.global_cond_embedder = MLP(e, e, 6 * e, bias=True)
        inner = int(e * c.ff_mult)
        self.blocks = [
            TransformerBlock(
                e,
                c.head_dim,
                inner,
                c.differential,
                c.norm_eps,
                c.norm_force_fp32,
                c.qk_norm_eps,
                c.cond_embed_dim,
                c.local_add_cond_dim,
            )  # fmt: skip
            for _ in range(c.depth)
        ]
        # Underscored constants (not parameters: they stay float32 whatever the weights are cast to).
        self._expo_freqs = mx.array(expo_frequencies(c.timestep_features_dim, *_EXPO_FREQS))
        self._inv_freq = _rope_inv_freq(c.rotary_dim)
        # MLX's rope takes periods (1 / inv_freq); the reference's angles are matched to ~1e-7.
        self._rope_periods = mx.array(1.0 / self._inv_freq)

    @property
    def dtype(self) -> mx.Dtype:
        return self.project_in.weight.dtype

    # -- conditioning (independent of x and t) ---------------------------------------------------------------

    def condition(
        self,
        cross_attn_cond: mx.array,
        global_cond: mx.array | None = None,
        local_add_cond: mx.array | None = None,
        padding_mask: mx.array | None = None,
    ) -> SA3Conditioning:
        """Project the conditioning once per generation: cross tokens (N, S, cond_token_dim) -> every block's
        K/V; global (N, global_cond_dim); local (N, C_local, T) or None (= zeros); padding mask (N, T)."""
        c, dt = self.config, self.dtype
        if (
            cross_attn_cond is None
            or cross_attn_cond.ndim != 3
            or cross_attn_cond.shape[-1] != c.cond_token_dim
        ):
            shape = None if cross_attn_cond is None else cross_attn_cond.shape
            raise UserError(f"cross_attn_cond must be (B, tokens, {c.cond_token_dim}), not {shape}")
        n = cross_attn_cond.shape[0]
        ctx = self.to_cond_embed(cross_attn_cond.astype(dt))
        kv = [blk.cross_attn.context_kv(ctx) for blk in self.blocks]
        g = None
        if global_cond is not None:
            if not c.global_cond_dim:
                raise UserError("this DiT takes no global conditioning")
            if global_cond.ndim == 3 and global_cond.shape[1] == 1:
                global_cond = global_cond[:, 0]  # the wrapper squeezes a (B, 1, D) global condition
            if global_cond.shape != (n, c.global_cond_dim):
                raise UserError(f"global_cond must be ({n}, {c.global_cond_dim}), not {global_cond.shape}")
            g = self.to_global_embed(global_cond.astype(dt))  # exists whenever global_cond_dim > 0
        local, const = None, None
        if local_add_cond is not None:
            if not c.local_add_cond_dim:
                raise UserError("this DiT takes no local (inpainting) conditioning")
            if local_add_cond.ndim != 3 or local_add_cond.shape[:2] != (n, c.local_add_cond_dim):
                raise UserError(
                    f"local_add_cond must be ({n}, {c.local_add_cond_dim}, T), not {local_add_cond.shape}"
                )
            local = local_add_cond.astype(dt).transpose(0, 2, 1)
        elif c.local_add_cond_dim:
            const = [blk.local_constant() for blk in self.blocks]
        if padding_mask is not None:
            if padding_mask.ndim != 2 or padding_mask.shape[0] != n:
                raise UserError(f"padding_mask must be ({n}, T), not {padding_mask.shape}")
            padding_mask = padding_mask.astype(mx.bool_)
        return SA3Conditioning(kv, g, local, const, padding_mask, n)

    def cfg_condition(
        self,
        cross_attn_cond: mx.array,
        global_cond: mx.array | None,
        cfg_scale: float,
        local_add_cond: mx.array | None = None,
        padding_mask: mx.array | None = None,
        negative_cross_attn_cond: mx.array | None = None,
        negative_cross_attn_mask: mx.array | None = None,
    ) -> SA3Conditioning:
        """Conditioning for `guided`: the reference's batch-CFG inputs, or a single batch at cfg_scale 1.

        Unconditional tokens are zeros, or the negative prompt's with its masked-out tokens zeroed; global,
        local and padding mask are the conditional ones (a negative global condition is dropped by the
        reference's DiTWrapper, so it is not taken here)."""
        if cfg_scale == 1.0:
            return self.condition(cross_attn_cond, global_cond, local_add_cond, padding_mask)
        uncond = uncond_tokens(
            cross_attn_cond,
            negative_cross_attn_cond,
            negative_cross_attn_mask,
            "negative_cross_attn_cond {} must match cross_attn_cond {}",
        )

        def twice(a: mx.array | None) -> mx.array | None:
            return None if a is None else mx.concatenate([a, a], axis=0)

        cond = self.condition(
            mx.concatenate([cross_attn_cond, uncond], axis=0),
            twice(global_cond),
            twice(local_add_cond),
            twice(padding_mask),
        )
        return replace(cond, cfg_pair=True, null_uncond=negative_cross_attn_cond is None)

    # -- denoiser --------------------------------------------------------------------------------------------

    def timestep_embed(self, t: mx.array) -> mx.array:
        """t (N,) float32 -> (N, E): ExpoFourierFeatures (float32) of t or its normalised log-SNR."""
        if self.config.timestep_features_logsnr:
            lo, hi = _LOGSNR_RANGE
            tc = mx.clip(t, 1e-7, 1 - 1e-7)
            logsnr = mx.clip(mx.log((1 - tc) / tc), lo, hi)
            t = (hi - logsnr) / (hi - lo)
        t = t.astype(self.dtype).astype(mx.float32)  # the reference casts t to the model dtype first
        args = t[:, None] * self._expo_freqs * 2 * math.pi  # same operation order as the reference
        feats = mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1).astype(self.dtype)
        return self.to_timestep_embed(feats)

    def _check(self, shape: tuple[int, ...], cond: SA3Conditioning) -> None:
        c = self.config
        if len(shape) != 3 or shape[1] != c.io_channels:
            raise UserError(f"x must be (batch, {c.io_channels}, T), not {shape}")
        if shape[0] != cond.batch:
            raise UserError(f"x has batch {shape[0]} but the conditioning has batch {cond.batch}")
        for name, a in (("local_add_cond", cond.local), ("padding_mask", cond.padding_mask)):
            if a is not None and a.shape[1] != shape[2]:
                raise UserError(f"{name} has length {a.shape[1]} but x has {shape[2]}")

    def _denoise(
        self,
        x: mx.array,
        t: mx.array,
        cond: SA3Conditioning,
        cross_rows: int | None = None,
        pair: bool = False,
    ) -> mx.array:
        """The model pass itself, without checks (what mx.compile traces): x (N, C, T), t (N,) -> v;
        `cross_rows`: only the first rows take the cross-attention (SA3Conditioning.null_uncond).
        `pair`: the model batch is x's twice (a CFG pair, `cond` of 2N rows). Both halves see the same x, t,
        global condition and padding mask, so they are equal until the first cross-attention: the input
        projections, the timestep embedding and the first block's self-attention run on N rows."""
        c, dt = self.config, self.dtype
        n, _, length = x.shape
        m = c.num_memory_tokens
        g = self.timestep_embed(mx.broadcast_to(t.astype(mx.float32).reshape(-1), (n,)))
        if cond.global_embed is not None:
            g = cond.global_embed[:n] + g
        g = self.global_cond_embedder(g)
        h = x.astype(dt).transpose(0, 2, 1)  # channels-last (N, T, C)
        h = self.project_in(self.preprocess_conv(h) + h)
        if m:
            h = mx.concatenate([mx.broadcast_to(self.memory_tokens[None], (n, m, c.embed_dim)), h], axis=1)
        if pair:
            g = mx.concatenate([g, g], axis=0)
            n *= 2
            if not self.share_first:
                h = mx.concatenate([h, h], axis=0)
        pm = cond.padding_mask
        if pm is not None and m:  # memory tokens are always valid
            pm = mx.concatenate([mx.ones((n, m), dtype=mx.bool_), pm], axis=1)
        # per block: the local condition itself, its zero-input embedding, or nothing
        locals_ = cond.local_const or [cond.local] * len(self.blocks)
        for i, (blk, kv, local) in enumerate(zip(self.blocks, cond.kv, locals_, strict=True)):
            twice = pair and self.share_first and i == 0  # the pair's halves are equal up to here
            h = blk(h, g, kv, local, m, self._rope_periods, c.rotary_dim, pm, cross_rows, twice)
        h = self.project_out(h[:, m:])
        h = self.postprocess_conv(h) + h
        return h.transpose(0, 2, 1)

    def _use_compiled(self) -> bool:
        return _on_gpu() if self.compiled is None else bool(self.compiled)

    def _run(self, name: str, body, x: mx.array, t: mx.array, cond: SA3Conditioning, *extra: mx.array):
        """body(x, t, cond, *extra), compiled (one trace per structure of `cond`) or eager."""
        if not self._use_compiled():
            return body(x, t, cond, *extra)
        parts = (cond.global_embed, cond.local, cond.local_const, cond.padding_mask)
        has = tuple(p is not None for p in parts)
        null = cond.null_uncond
        key = (name, has, len(cond.kv[0]), null, self.share_first)
        fn = self._jit.fns.get(key)
        if fn is None:

            def traced(x, t, kv, g, local, const, pm, *extra):
                flat = [a if h else None for a, h in zip((g, local, const, pm), has, strict=True)]
                return body(x, t, SA3Conditioning(kv, *flat, batch=x.shape[0], null_uncond=null), *extra)

            fn = self._jit.fns[key] = mx.compile(traced, inputs=self.state)
        dummies = [p if p is not None else mx.array(0.0) for p in parts]
        return fn(x, t, cond.kv, *dummies, *extra)

    def forward(self, x: mx.array, t: mx.array, cond: SA3Conditioning) -> mx.array:
        """One model pass: x (N, C, T), t (N,) or scalar -> velocity (N, C, T), N = cond.batch."""
        self._check(tuple(x.shape), cond)
        return self._run("forward", self._denoise, x, mx.array(t), cond)

    def _guide(
        self, x: mx.array, t: mx.array, cond: SA3Conditioning, scale: mx.array, apg_scale: float
    ) -> mx.array:
        b = x.shape[0]
        sigma = mx.broadcast_to(t.astype(mx.float32).reshape(-1), (b,))
        rows = b if cond.null_uncond else None
        out = self._denoise(x, sigma, cond, rows, pair=True)
        x = x.astype(self.dtype)
        s = sigma[:, None, None]
        cond_den = x - out[:b] * s  # float32, as the reference (sigma is float32)
        diff = cond_den - (x - out[b:] * s)
        pm = None if cond.padding_mask is None else cond.padding_mask[:b]
        if apg_scale == 0.0:
            cfg_diff = diff
        else:
            _, orth = apg_project(diff, cond_den, pm)
            cfg_diff = orth if apg_scale == 1.0 else apg_scale * orth + (1 - apg_scale) * diff
        return (x - (cond_den + (scale - 1) * cfg_diff)) / s

    def guided(
        self, x: mx.array, t: mx.array, cond: SA3Conditioning, cfg_scale: float, apg_scale: float = 1.0
    ) -> mx.array:
        """The reference `DiffusionTransformer.forward(..., cfg_scale=..., apg_scale=...)` given
        `cfg_condition(...)` at the same cfg_scale: x (B, C, T), t (B,) -> guided velocity (B, C, T), float32
        (the reference's CFG arithmetic promotes to float32). At cfg_scale 1 a single pass."""
        if not cond.cfg_pair:
            return self.forward(x, t, cond)
        self._check((2 * x.shape[0], *x.shape[1:]), cond)
        apg = float(apg_scale)
        scale = mx.array(cfg_scale, dtype=mx.float32)
        return self._run(
            f"guided{apg}", lambda x, t, c, s: self._guide(x, t, c, s, apg), x, mx.array(t), cond, scale
        )

    def __call__(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn_cond: mx.array,
        global_cond: mx.array | None = None,
        local_add_cond: mx.array | None = None,
        cross_attn_mask: mx.array | None = None,
        padding_mask: mx.array | None = None,
    ) -> mx.array:
        """Single pass as `DiTWrapper(x, t, cross_attn_cond=..., cross_attn_mask=..., global_cond=...,
        local_add_cond=..., padding_mask=...)`; `cross_attn_mask` is accepted and ignored, as the
        reference does."""
        del cross_attn_mask
        return self.forward(x, t, self.condition(cross_attn_cond, global_cond, local_add_cond, padding_mask))

    # -- weights ---------------------------------------------------------------------------------------------

    def sanitize(self, ckpt: Checkpoint, prefix: str = "model.model.") -> dict[str, mx.array]:
        """Take the reference DiffusionTransformer tensors under `prefix`, return ours (fused projections keep
        the reference's layouts; the 1x1 convs become (out, in) matrices; `rotary_pos_emb.inv_freq` is
        checked against ours and dropped)."""
        c = self.config
        out: dict[str, mx.array] = {}
        lin, mlp = take_linears(ckpt, prefix, out)
        mlp("to_timestep_embed", "to_timestep_embed", True)
        mlp("to_cond_embed", "to_cond_embed", False)
        if c.global_cond_dim:
            mlp("to_global_embed", "to_global_embed", False)
        for conv in ("preprocess_conv", "postprocess_conv"):
            out[f"{conv}.weight"] = take_conv1x1(ckpt, f"{prefix}{conv}.weight")
        lin("transformer.project_in", "project_in")
        lin("transformer.project_out", "project_out")
        if c.num_memory_tokens:
            out["memory_tokens"] = ckpt.take(f"{prefix}transformer.memory_tokens")
        mlp("transformer.global_cond_embedder", "global_cond_embedder", True)
        inv_key = f"{prefix}transformer.rotary_pos_emb.inv_freq"
        check_inv_freq(ckpt, inv_key, self._inv_freq, 1e-6, f"RotaryEmbedding({c.rotary_dim})")
        for i in range(c.depth):
            r, o = f"transformer.layers.{i}.", f"blocks.{i}."
            for ref, ours in (
                ("pre_norm", "pre_norm"),
                ("cross_attend_norm", "cross_norm"),
                ("ff_norm", "ff_norm"),
            ):
                out[f"{o}{ours}.weight"] = ckpt.take(f"{prefix}{r}{ref}.gamma")
            lin(f"{r}self_attn.to_qkv", f"{o}self_attn.qkv")
            lin(f"{r}cross_attn.to_q", f"{o}cross_attn.q")
            lin(f"{r}cross_attn.to_kv", f"{o}cross_attn.kv")
            for a in ("self_attn", "cross_attn"):
                lin(f"{r}{a}.to_out", f"{o}{a}.out")
                for qk in ("q_norm", "k_norm"):
                    out[f"{o}{a}.{qk}.weight"] = ckpt.take(f"{prefix}{r}{a}.{qk}.gamma")
            lin(f"{r}ff.ff.0.proj", f"{o}ff.proj_in", bias=True)
            lin(f"{r}ff.ff.2", f"{o}ff.proj_out", bias=True)
            out[f"{o}scale_shift_gate"] = ckpt.take(f"{prefix}{r}to_scale_shift_gate")
            if c.local_add_cond_dim:
                mlp(f"{r}to_local_embed", f"{o}local_embed", True)
        return out
