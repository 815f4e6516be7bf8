"""Stable Audio Open's diffusion transformer (DiT) in MLX.

Mirrors stable-audio-tools `models/dit.py` (DiffusionTransformer, called through `DiTWrapper`) and
`models/transformer.py` (ContinuousTransformer, TransformerBlock, Attention) for the options the released
models use:
- timestep: FourierFeatures(1, 256) = `[cos, sin](2*pi*t*w)` -> Linear-SiLU-Linear, added to the projected
  global conditioning; the sum is **prepended** as one token (`global_cond_type="prepend"`) and dropped from
  the output;
- cross-attention tokens go through `to_cond_embed` (Linear-SiLU-Linear, no bias) whether or not
  `project_cond_tokens` is set (it only chooses the width); the cross-attention **mask is ignored** by the
  reference (`cross_attn_cond_mask = None` in `DiffusionTransformer.forward`), so zeroed padding tokens are
  attended to, and here too;
- blocks: pre-LayerNorm (eps 1e-5, gamma/beta) self-attention with a fused QKV projection, optional
  per-head LayerNorm on q/k (eps 1e-6) *before* rotary, partial rotary embedding (dim = max(head_dim // 2,
  32), half-split layout, positions count the prepended token) on self-attention only, cross-attention whose
  key/value heads may be fewer than the query heads (repeat_interleave grouping), GLU-SiLU feed-forward;
- 1x1 pre/post convolutions with a residual around them.

Speed: `forward` and `guided` run through `mx.compile` (one trace per shape/dtype, the weights passed as
implicit inputs so reloading or casting them is seen) on the GPU, eagerly on the CPU, whose compiled kernels
need a C++ compiler at run time; `StableAudioDiT.compiled = True/False` overrides. Compiling fuses the
elementwise work around the matmuls (norm/bias/residual adds, GLU, CFG combination) and removes the Python
cost of building ~25 ops per block every step; the cross-attention K/V and the prepended token's constant
part (global conditioning + the timestep MLP's output bias, `DiTConditioning.token_bias`) come from
`condition` once per generation; a CFG pair runs its input projections, timestep token and first
self-attention on B rows (its halves are equal until the first cross-attention).

Classifier-free guidance follows the reference's batch-CFG path: one batch of 2B with the conditional tokens
first and zeros (or the negative prompt's tokens, zeroed where its mask is False) second; the global
conditioning is shared; `uncond + (cond - uncond) * scale`, then optional CFG rescale `scale_phi`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..diffusion.dit_parts import MLP as _MLP
from ..diffusion.dit_parts import Compiled as _Compiled
from ..diffusion.dit_parts import (
    DiTWidths,
    check_inv_freq,
    rope_inv_freq,
    take_conv1x1,
    take_linears,
    uncond_tokens,
)
from ..diffusion.dit_parts import on_gpu as _on_gpu
from ..errors import UserError
from ..memory import check_bounds
from ..quantize import residual_linear
from ..weights import Checkpoint
from .dit_blocks import TransformerBlock

# DiffusionTransformer/ContinuousTransformer/TransformerBlock options whose reference defaults we implement.
# Any other value in a config changes the computation, so it is refused rather than ignored.
_DEFAULTS: dict[str, Any] = {
    "input_concat_dim": 0,
    "prepend_cond_dim": 0,
    "transformer_type": "continuous_transformer",
    "global_cond_type": "prepend",
    "timestep_cond_type": "global",
    "causal": False,
    "rotary_pos_emb": True,
    "conformer": False,
    "use_sinusoidal_emb": False,
    "use_abs_pos_emb": False,
    "num_memory_tokens": 0,
    "final_cross_attn_ix": -1,
    "layer_scale": False,
    "remove_norms": False,
    "add_rope": False,
    "sliding_window": None,
}
_KNOWN = {
    "io_channels", "patch_size", "embed_dim", "cond_token_dim", "project_cond_tokens", "global_cond_dim",
    "project_global_cond", "depth", "num_heads", "attn_kwargs", "ff_kwargs", "norm_kwargs",
    "zero_init_branch_outputs", "timestep_embed_dim", "diffusion_objective",
}  # fmt: skip
_OBJECTIVES = ("v", "rectified_flow", "rf_denoiser")


# Sanity bounds of the fields that size tensors (stable-audio-open-1.0: 1536 wide, 24 layers, 24 heads,
# 768-wide T5 tokens, 64 latent channels); a corrupt config is refused before the DiT is built from it.
DIT_BOUNDS = {
    "io_channels": (1, 4096),
    "embed_dim": (1, 16384),
    "depth": (1, 512),
    "num_heads": (1, 1024),
    "cond_token_dim": (0, 16384),
    "global_cond_dim": (0, 16384),
    "patch_size": (1, 64),
    "ff_mult": (0, 64),
}


@dataclass(frozen=True)
class DiTConfig(DiTWidths):
    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int = 0
    global_cond_dim: int = 0
    project_cond_tokens: bool = True
    project_global_cond: bool = True
    patch_size: int = 1
    qk_norm: str = "none"
    ff_mult: float = 4.0
    timestep_features_dim: int = 256  # hard-coded in DiffusionTransformer
    diffusion_objective: str = "v"
    global_cond_type: str = "prepend"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """From a whole `model_config.json`, its `model.diffusion` entry, or that entry's inner `config`."""
        objective = "v"
        if "model" in d:
            d = d["model"]
        if "diffusion" in d:
            d = d["diffusion"]
        if "config" in d:
            if d.get("type", "dit") != "dit":
                raise UserError(f"diffusion model type '{d.get('type')}' is not supported (expected 'dit')")
            objective = d.get("diffusion_objective", "v")  # ConditionedDiffusionModelWrapper's default
            d = d["config"]
        objective = d.get("diffusion_objective", objective)
        if objective not in _OBJECTIVES:
            raise UserError(
                f"diffusion_objective '{objective}' is not supported (one of {', '.join(_OBJECTIVES)})"
            )
        for key, default in _DEFAULTS.items():
            if d.get(key, default) != default:
                raise UserError(f"DiT option {key}={d[key]!r} is not supported (only {default!r})")
        unknown = sorted(set(d) - _KNOWN - set(_DEFAULTS))
        if unknown:
            raise UserError(f"DiT config has options this port does not implement: {', '.join(unknown)}")
        attn = dict(d.get("attn_kwargs", {}))
        qk_norm = attn.pop("qk_norm", "none")
        if qk_norm not in ("none", "ln", "l2") or attn.get("differential") or attn.get("feat_scale"):
            raise UserError(f"DiT attn_kwargs {d.get('attn_kwargs')} are not supported")
        ff = dict(d.get("ff_kwargs", {}))
        if ff.get("glu", True) is not True or ff.get("use_conv", False) or ff.get("no_bias", False):
            raise UserError(f"DiT ff_kwargs {ff} are not supported (GLU feed-forward with biases only)")
        norm = dict(d.get("norm_kwargs", {}))
        if norm.get("eps", 1e-5) != 1e-5 or norm.get("force_fp32", False):
            raise UserError(f"DiT norm_kwargs {norm} are not supported")
        embed_dim = int(d.get("embed_dim", 768))
        num_heads = int(d.get("num_heads", 8))
        check_bounds({"embed_dim": embed_dim, "num_heads": num_heads}, DIT_BOUNDS, "DiT")
        if embed_dim % num_heads:
            raise UserError(f"DiT embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        cfg = cls(
            io_channels=int(d.get("io_channels", 32)),
            embed_dim=embed_dim,
            depth=int(d.get("depth", 12)),
            num_heads=num_heads,
            cond_token_dim=int(d.get("cond_token_dim", 0)),
            global_cond_dim=int(d.get("global_cond_dim", 0)),
            project_cond_tokens=bool(d.get("project_cond_tokens", True)),
            project_global_cond=bool(d.get("project_global_cond", True)),
            patch_size=int(d.get("patch_size", 1)),
            qk_norm=qk_norm,
            ff_mult=float(ff.get("mult", 4)),
            diffusion_objective=objective,
        )
        check_bounds(cfg, DIT_BOUNDS, "DiT")
        return cfg


@dataclass
class DiTConditioning:
    """Everything of one generation's conditioning that does not depend on x or t, computed once.

    `kv`: per block, the cross-attention keys/values (N, kv_heads, S, head_dim), None without cross-attention;
    `global_embed`: the projected global conditioning (N, D) before the timestep embedding is added (or None);
    `batch`: N, the model batch (2B when it holds a CFG pair: conditional rows first);
    `token_bias`: the prepended token's constant part, `global_embed` + the timestep MLP's output bias (its
    last GEMM adds it: one kernel fewer a step), (N, D), or (D,) without global conditioning;
    `null_uncond`: a CFG pair whose unconditional rows are the null context (zeros: no negative prompt),
    whose cross-attention adds exactly 0 (see TransformerBlock.unsummed), so the blocks skip it.
    """

    kv: list[tuple[mx.array, mx.array]] | None
    global_embed: mx.array | None
    batch: int
    cfg_pair: bool = False
    token_bias: mx.array | None = None
    null_uncond: bool = False

    def arrays(self) -> list[mx.array]:
        """Every array of the conditioning (to evaluate it once, before the steps)."""
        out = [a for k, v in self.kv or [] for a in (k, v)]
        return out + [a for a in (self.global_embed, self.token_bias) if a is not None]

    def first_half(self) -> DiTConditioning:
        """The conditional half of a CFG pair (what the reference runs outside `cfg_interval`)."""
        h = self.batch // 2
        kv = None if self.kv is None else [(k[:h], v[:h]) for k, v in self.kv]
        g = None if self.global_embed is None else self.global_embed[:h]
        tb = self.token_bias
        return DiTConditioning(kv, g, h, cfg_pair=False, token_bias=tb[:h] if _rows(tb) else tb)


def _rows(a: mx.array | None) -> bool:
    """Whether a token bias has a row per batch entry (not one (D,) row for all)."""
    return a is not None and a.ndim == 2


def _rescale(cond_out: mx.array, cfg_out: mx.array, scale_phi: float) -> mx.array:
    """CFG rescale: blend in cfg_out scaled to the conditional output's channel-wise (unbiased) std."""
    cond_std = mx.std(cond_out, axis=1, keepdims=True, ddof=1)
    cfg_std = mx.std(cfg_out, axis=1, keepdims=True, ddof=1)
    return scale_phi * (cfg_out * (cond_std / cfg_std)) + (1 - scale_phi) * cfg_out


class StableAudioDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        # None: compile on the GPU, run eagerly on the CPU (see the module doc); True/False force it.
        self.compiled: bool | None = None
        # "sdpa" (MLX's fused attention), "short" (attention_kernel's one launch where it takes the shape),
        # "matmul" (see dit_blocks._attend) or "auto": "short" (MLX's fused attention wherever the kernel
        # does not run: the CPU, Metal, long sequences).
        self.attention = "auto"
        # A CFG pair's halves are equal until the first cross-attention: its self-attention runs once.
        # False: the whole pair through it (what the reference does; for tests and A/B benches).
        self.share_first = True
        self._jit = _Compiled()
        c = self.config = config
        self.timestep_features = {"weight": mx.zeros((c.timestep_features_dim // 2, 1))}
        self.to_timestep_embed = _MLP(c.timestep_features_dim, c.embed_dim, c.embed_dim, bias=True)
        if c.cond_token_dim > 0:
            self.to_cond_embed = _MLP(c.cond_token_dim, c.cond_embed_dim, c.cond_embed_dim, bias=False)
        if c.global_cond_dim > 0:
            self.to_global_embed = _MLP(c.global_cond_dim, c.global_embed_dim, c.global_embed_dim, bias=False)
        dim_in = c.io_channels * c.patch_size
        self.preprocess_conv = nn.Linear(c.io_channels, c.io_channels, bias=False)  # 1x1 conv
        self.project_in = nn.Linear(dim_in, c.embed_dim, bias=False)
        self.blocks = [TransformerBlock(c) for _ in range(c.depth)]
        self.project_out = nn.Linear(c.embed_dim, dim_in, bias=False)
        self.postprocess_conv = nn.Linear(c.io_channels, c.io_channels, bias=False)
        # RotaryEmbedding.inv_freq and its reciprocal for MLX's rope (dit_parts.rope_inv_freq).
        # Underscored: not a parameter, so it stays float32 whatever dtype the weights are cast to.
        self._inv_freq = rope_inv_freq(c.rotary_dim)
        self._rope_freqs = mx.array(1.0 / self._inv_freq)
        self._cos_row = mx.array([[True], [False]])  # timestep_embed's [cos, sin] halves

    @property
    def dtype(self) -> mx.Dtype:
        return self.project_in.weight.dtype

    # -- conditioning (independent of x and t) ---------------------------------------------------------------

    def condition(self, cross_attn_cond: mx.array | None, global_cond: mx.array | None) -> DiTConditioning:
        """Project the conditioning and compute every block's cross-attention K/V once (for all steps)."""
        c, dt = self.config, self.dtype
        if (cross_attn_cond is None) != (c.cond_token_dim == 0):
            raise UserError("cross_attn_cond must be given exactly when the DiT has cross-attention")
        if global_cond is not None and c.global_cond_dim == 0:
            raise UserError("this DiT takes no global conditioning")
        kv = None
        batch = None
        if cross_attn_cond is not None:
            if cross_attn_cond.ndim != 3 or cross_attn_cond.shape[-1] != c.cond_token_dim:
                raise UserError(
                    f"cross_attn_cond must be (B, tokens, {c.cond_token_dim}), not {cross_attn_cond.shape}"
                )
            ctx = self.to_cond_embed(cross_attn_cond.astype(dt))
            kv = [blk.cross_attn.context_kv(ctx) for blk in self.blocks]
            batch = cross_attn_cond.shape[0]
        g = None
        if global_cond is not None:
            if global_cond.ndim != 2 or global_cond.shape[-1] != c.global_cond_dim:
                raise UserError(f"global_cond must be (batch, {c.global_cond_dim}), got {global_cond.shape}")
            g = self.to_global_embed(global_cond.astype(dt))
            batch = global_cond.shape[0] if batch is None else batch
        return DiTConditioning(kv, g, batch if batch is not None else 0, token_bias=self._token_bias(g))

    def _token_bias(self, global_embed: mx.array | None) -> mx.array | None:
        """global_embed + the timestep MLP's fc2 bias (None: a quantized fc2, which adds its own bias)."""
        fc2 = self.to_timestep_embed.fc2
        if isinstance(fc2, nn.QuantizedLinear):
            return global_embed
        return fc2.bias if global_embed is None else global_embed + fc2.bias

    def cfg_condition(
        self,
        cross_attn_cond: mx.array,
        global_cond: mx.array | None,
        cfg_scale: float,
        negative_cross_attn_cond: mx.array | None = None,
        negative_cross_attn_mask: mx.array | None = None,
    ) -> DiTConditioning:
        """Conditioning for guided sampling: the reference's batch-CFG inputs, or a single batch at scale 1.

        The unconditional rows are zeros, or the negative prompt's tokens with those where its mask is False
        zeroed; the global conditioning is shared (a negative global conditioning is ignored, as in the
        reference). At `cfg_scale == 1` there is no doubled batch (the reference runs a single pass then).
        """
        if cfg_scale == 1.0:
            return self.condition(cross_attn_cond, global_cond)
        uncond = uncond_tokens(
            cross_attn_cond,
            negative_cross_attn_cond,
            negative_cross_attn_mask,
            "negative cond. {} must match {}",
        )
        g2 = None if global_cond is None else mx.concatenate([global_cond, global_cond], axis=0)
        cond = self.condition(mx.concatenate([cross_attn_cond, uncond], axis=0), g2)
        cond.cfg_pair = True
        cond.null_uncond = negative_cross_attn_cond is None
        return cond

    # -- denoiser --------------------------------------------------------------------------------------------

    def timestep_embed(self, t: mx.array, bias: mx.array | None = None) -> mx.array:
        """to_timestep_embed(FourierFeatures(t)) in the model's dtype, t (N,) or (N, 1, 1); `bias` (a
        `token_bias`) replaces fc2's bias."""
        w = self.timestep_features["weight"]  # (F/2, 1)
        # FourierFeatures: f = 2*pi*t @ weight.T, then [cos f, sin f]. With one input feature the matmul is a
        # single product, so it is computed elementwise (the same roundings) and, with the cast of t, in one
        # fused kernel: (N, 2, F/2) picks cos in row 0 and sin in row 1, a view of (N, F) once contiguous.
        t = t.reshape(-1, 1, 1)
        f = (2 * math.pi * t.astype(self.dtype)) * w[:, 0]
        feats = mx.where(self._cos_row, mx.cos(f), mx.sin(f)).reshape(t.shape[0], -1)
        mlp = self.to_timestep_embed
        if bias is None or isinstance(mlp.fc2, nn.QuantizedLinear):
            out = mlp(feats)
            return out if bias is None else out + bias
        return mx.addmm(bias, nn.silu(mlp.fc1(feats)), mlp.fc2.weight.T)

    def _attention_impl(self) -> str:
        return "short" if self.attention == "auto" else self.attention

    def _use_compiled(self) -> bool:
        return _on_gpu() if self.compiled is None else bool(self.compiled)

    def _compiled_fn(self, key: tuple, make) -> Any:
        """`mx.compile(make())` cached by `key`, with every parameter as an implicit input."""
        fn = self._jit.fns.get(key)
        if fn is None:
            fn = self._jit.fns[key] = mx.compile(make(), inputs=self.state)
        return fn

    def _check(self, shape: tuple[int, ...], batch: int) -> None:
        """x's shape (N, io, L) against the config and the conditioning's batch N."""
        c = self.config
        if len(shape) != 3 or shape[1] != c.io_channels or shape[2] % c.patch_size:
            raise UserError(
                f"x must be (batch, {c.io_channels}, L) with L a multiple of {c.patch_size}, got {shape}"
            )
        if batch and batch != shape[0]:
            raise UserError(f"x has batch {shape[0]} but the conditioning has batch {batch}")

    def forward(self, x: mx.array, t: mx.array, cond: DiTConditioning) -> mx.array:
        """One model pass: x (N, io, L), t (N,) or scalar -> (N, io, L), N = cond.batch (if it is set)."""
        self._check(tuple(x.shape), cond.batch)
        t = mx.array(t)
        bias = self._bias_of(cond)
        if not self._use_compiled():
            return self._denoise(x, t, cond.kv, bias)
        has_kv, has_b = cond.kv is not None, bias is not None

        def make():
            def fn(x, t, kv, b):
                return self._denoise(x, t, kv if has_kv else None, b if has_b else None)

            return fn

        fn = self._compiled_fn(("forward", has_kv, has_b, self._attention_impl()), make)
        return fn(x, t, cond.kv or [], bias if has_b else mx.array(0.0))

    def _bias_of(self, cond: DiTConditioning) -> mx.array | None:
        """The token bias of `cond` (made from its global_embed for a DiTConditioning built without one)."""
        return cond.token_bias if cond.token_bias is not None else self._token_bias(cond.global_embed)

    def _denoise(
        self,
        x: mx.array,
        t: mx.array,
        kv: list[tuple[mx.array, mx.array]] | None,
        bias: mx.array | None,
        pair: bool = False,
        cross_rows: int | None = None,
    ) -> mx.array:
        """The model pass itself, without checks (what mx.compile traces). With `pair` the model batch is
        x's batch twice (a CFG pair: both halves see the same x, t and global conditioning, so the input
        projections and the timestep token run once and are repeated by the token concatenation).
        `cross_rows`: only the first rows take the cross-attention (DiTConditioning.null_uncond). With
        `share_first` the first block's self-attention runs once for the pair too (TransformerBlock's
        `twice`)."""
        c, dt = self.config, self.dtype
        n, ch, length = x.shape
        # The reference casts x, t and the conditioning to the model's dtype (timestep features included).
        x = x.astype(dt)
        # (views only: the cast of t fuses with the timestep features)
        g = self.timestep_embed(mx.broadcast_to(t.reshape(-1, 1, 1), (n, 1, 1)), bias)  # the prepended token
        h = x.transpose(0, 2, 1)  # channels-last (N, L, io)
        h = residual_linear(h, h, self.preprocess_conv)  # 1x1 conv + residual: one GEMM
        if c.patch_size > 1:  # "b (t p) c -> b t (c p)"
            p = c.patch_size
            h = h.reshape(n, length // p, p, ch).transpose(0, 1, 3, 2).reshape(n, length // p, ch * p)
        h = self.project_in(h)
        h = mx.concatenate([g[:, None, :], h], axis=1)
        if pair and not self.share_first:
            h = mx.concatenate([h, h], axis=0)
        impl = self._attention_impl()
        f = None  # each block's feed-forward output, added by the next block's pre-norm (see unsummed)
        for i, blk in enumerate(self.blocks):
            kv_i = None if kv is None else kv[i]
            twice = pair and self.share_first and i == 0  # the pair's halves are equal up to here
            h, f = blk.unsummed(h, f, kv_i, self._rope_freqs, c.rotary_dim, impl, cross_rows, twice)
        if pair:
            n *= 2
        if isinstance(h, tuple):
            h = mx.concatenate(h, axis=0)
        h = self.project_out(h if f is None else h + f)[:, 1:]  # drop the prepended global token
        if c.patch_size > 1:  # "b (c p) t -> b c (t p)"
            p = c.patch_size
            h = h.reshape(n, length // p, ch, p).transpose(0, 1, 3, 2).reshape(n, length, ch)
        h = residual_linear(h, h, self.postprocess_conv)
        return h.transpose(0, 2, 1)

    def _cfg_pair(
        self,
        x: mx.array,
        t: mx.array,
        kv: list | None,
        bias: mx.array | None,
        scale: mx.array,
        null_uncond: bool = False,
    ) -> tuple[mx.array, mx.array]:
        """Both CFG passes as one batch of 2B; returns (conditional output, guided output)."""
        b = x.shape[0]
        rows = b if null_uncond else None
        out = self._denoise(x, mx.broadcast_to(t.reshape(-1), (b,)), kv, bias, pair=True, cross_rows=rows)
        cond_out, uncond_out = out[:b], out[b:]
        # A Python float scale multiplies in the output's dtype; so does this array scale.
        return cond_out, uncond_out + (cond_out - uncond_out) * scale.astype(out.dtype)

    def guided(
        self,
        x: mx.array,
        t: mx.array,
        cond: DiTConditioning,
        cfg_scale: float,
        scale_phi: float = 0.0,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
    ) -> mx.array:
        """The reference `DiffusionTransformer.forward` with CFG, given `cfg_condition(...)` (same scale).

        x (B, io, L), t (B,). With a CFG pair: run x twice as one batch of 2B, `uncond + (cond - uncond) *
        cfg_scale`, then, if `scale_phi` != 0, rescale by the ratio of the channel-wise (unbiased) standard
        deviations. Outside `cfg_interval` (noise level sin(t*pi/2) for "v", t otherwise) only the
        conditional pass runs.
        """
        if not cond.cfg_pair:
            return self.forward(x, t, cond)
        if tuple(cfg_interval) != (
            0.0,
            1.0,
        ):  # with (0, 1) and t in [0, 1] the reference's test always passes
            t0 = float(mx.array(t).reshape(-1)[0].item())
            sigma = math.sin(t0 * math.pi / 2) if self.config.diffusion_objective == "v" else t0
            if not cfg_interval[0] <= sigma <= cfg_interval[1]:
                return self.forward(x, t, cond.first_half())
        self._check((2 * x.shape[0], *x.shape[1:]), cond.batch)
        t = mx.array(t)
        scale = mx.array(cfg_scale, dtype=mx.float32)
        phi = float(scale_phi)
        bias = self._pair_bias(cond)
        null = cond.null_uncond and cond.kv is not None
        if not self._use_compiled():
            cond_out, cfg_out = self._cfg_pair(x, t, cond.kv, bias, scale, null)
            return cfg_out if phi == 0.0 else _rescale(cond_out, cfg_out, phi)
        has_kv, has_b = cond.kv is not None, bias is not None

        def make():
            def fn(x, t, kv, b, scale):
                kv, b = kv if has_kv else None, b if has_b else None
                cond_out, cfg_out = self._cfg_pair(x, t, kv, b, scale, null)
                return cfg_out if phi == 0.0 else _rescale(cond_out, cfg_out, phi)

            return fn

        key = ("guided", has_kv, has_b, phi, null, self.share_first, self._attention_impl())
        fn = self._compiled_fn(key, make)
        return fn(x, t, cond.kv or [], bias if has_b else mx.array(0.0), scale)

    def _pair_bias(self, cond: DiTConditioning) -> mx.array | None:
        """A CFG pair's token bias for its B conditional rows (the halves share the global conditioning)."""
        tb = self._bias_of(cond)
        return tb[: cond.batch // 2] if _rows(tb) else tb

    def __call__(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn_cond: mx.array | None = None,
        global_cond: mx.array | None = None,
        cross_attn_mask: mx.array | None = None,
    ) -> mx.array:
        """Single pass, as `DiTWrapper(x, t, cross_attn_cond=..., cross_attn_mask=..., global_cond=...)`.

        `cross_attn_mask` is accepted and ignored, exactly as the reference does.
        """
        del cross_attn_mask
        return self.forward(x, t, self.condition(cross_attn_cond, global_cond))

    # -- weights ---------------------------------------------------------------------------------------------

    def sanitize(self, ckpt: Checkpoint, prefix: str = "model.model.") -> dict[str, mx.array]:
        """Take the reference DiffusionTransformer tensors under `prefix` and return our parameter names."""
        c = self.config
        out: dict[str, mx.array] = {}
        lin, mlp = take_linears(ckpt, prefix, out)

        def norm(ref: str, ours: str, names: tuple[str, str]) -> None:
            out[f"{ours}.weight"] = ckpt.take(f"{prefix}{ref}.{names[0]}")
            out[f"{ours}.bias"] = ckpt.take(f"{prefix}{ref}.{names[1]}")

        out["timestep_features.weight"] = ckpt.take(f"{prefix}timestep_features.weight")
        mlp("to_timestep_embed", "to_timestep_embed", bias=True)
        if c.cond_token_dim > 0:
            mlp("to_cond_embed", "to_cond_embed", bias=False)
        if c.global_cond_dim > 0:
            mlp("to_global_embed", "to_global_embed", bias=False)
        for conv in ("preprocess_conv", "postprocess_conv"):
            out[f"{conv}.weight"] = take_conv1x1(ckpt, f"{prefix}{conv}.weight")
        tp = f"{prefix}transformer."
        lin("transformer.project_in", "project_in")
        lin("transformer.project_out", "project_out")
        inv_key = f"{tp}rotary_pos_emb.inv_freq"
        check_inv_freq(ckpt, inv_key, self._inv_freq, 1e-3, f"RotaryEmbedding({c.rotary_dim}), base 10000")
        for i in range(c.depth):
            r, o = f"transformer.layers.{i}.", f"blocks.{i}."
            ln = ("gamma", "beta")  # stable-audio-tools LayerNorm: gamma parameter, beta buffer (saved)
            norm(f"{r}pre_norm", f"{o}pre_norm", ln)
            lin(f"{r}self_attn.to_qkv", f"{o}self_attn.qkv")
            lin(f"{r}self_attn.to_out", f"{o}self_attn.out")
            attns = ["self_attn"]
            if c.cond_token_dim > 0:
                norm(f"{r}cross_attend_norm", f"{o}cross_norm", ln)
                lin(f"{r}cross_attn.to_q", f"{o}cross_attn.q")
                lin(f"{r}cross_attn.to_kv", f"{o}cross_attn.kv")
                lin(f"{r}cross_attn.to_out", f"{o}cross_attn.out")
                attns.append("cross_attn")
            if c.qk_norm == "ln":
                for a in attns:
                    for qk in ("q_norm", "k_norm"):
                        norm(f"{r}{a}.{qk}", f"{o}{a}.{qk}", ("weight", "bias"))
            norm(f"{r}ff_norm", f"{o}ff_norm", ln)
            lin(f"{r}ff.ff.0.proj", f"{o}ff.proj_in", bias=True)
            lin(f"{r}ff.ff.2", f"{o}ff.proj_out", bias=True)
        return out
