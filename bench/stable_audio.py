"""Stable Audio Open, ours (MLX) and the references side by side: whole clip, real sizes, random weights.

    python bench/stable_audio.py --models small,1.0 --dtype float16 --out sa.md
    python bench/stable_audio.py --models small --steps-small 2 --refs sat           # a CPU run
    git archive <commit> mlx_audio_generate | tar -x -C /tmp/base                    # an A/B:
    python bench/stable_audio.py --ab-base /tmp/base --refs diffusers --out sa.md

Random weights cost what trained ones do. Whole clip = T5 + conditioning + every sampler step (the DiT with
CFG) + the Oobleck decode of the full window, after one warm-up generation (compilation, kernel caches).
References: diffusers `StableAudioPipeline` (1.0 only: diffusers has no QK-norm / projected-token DiT for
small) fed the T5 output, and stable-audio-tools (DiT wrapper + pretransform + T5 in fp16, `sample_rf` /
`sample_k` exactly as `generate_diffusion_cond` calls them; conditioning tokens from a random-weight T5).
`--tiny` shrinks every model (a smoke test of the script, not a benchmark).

Kernel counts: the non-view MLX primitives of each part of one generation (T5 + conditioning, one DiT call,
one whole sampler step, the VAE decode) as the GPU runs them (on the CPU `common.gpu_fast_ops` makes each
mx.fast op one primitive, as on the GPU). `--ab-base DIR` times another checkout's package (B, e.g. main
before a change) against this one (A) in the same process on the same weights, in alternating rounds.
`--profile-vae` times each decoder block and the whole decode per `OobleckVAE.upsample` formulation.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    Report,
    TorchMem,
    apply_sets,
    count_ops,
    gpu_fast_ops,
    log,
    mlx_device,
    mx,
    mx_dtype,
    mx_free,
    mx_peak_gb,
    mx_reset_mem,
    mx_sync,
    parse_list,
    torch_free,
    torch_sync,
)

T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
    feed_forward_proj="relu", dropout_rate=0.0,
)  # fmt: skip
PROMPT_TOKENS = 20  # a typical prompt's T5 length


def oobleck(channels: int = 128) -> dict:
    side = {"channels": channels, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8], "use_snake": True}
    return {
        "type": "autoencoder",
        "iterate_batch": True,
        "config": {
            "encoder": {"type": "oobleck", "config": {**side, "in_channels": 2, "latent_dim": 128}},
            "decoder": {
                "type": "oobleck",
                "config": {**side, "out_channels": 2, "latent_dim": 64, "final_tanh": False},
            },
            "bottleneck": {"type": "vae"},
            "latent_dim": 64,
            "downsampling_ratio": 2048,
            "io_channels": 2,
        },
    }


def sa_config(name: str, tiny: bool = False) -> dict:
    """The public model_config.json of stable-audio-open-small / -1.0 (sizes as released)."""
    if name == "small":
        numbers = [{"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}]
        t5_max, sample_size = 64, 524288
        cross, glob = ["prompt", "seconds_total"], ["seconds_total"]
        dit = dict(io_channels=64, embed_dim=1024, depth=16, num_heads=8, cond_token_dim=768,
                   global_cond_dim=768, project_cond_tokens=True, transformer_type="continuous_transformer",
                   attn_kwargs={"qk_norm": "ln"})  # fmt: skip
        extra = {"diffusion_objective": "rf_denoiser"}
    elif name == "1.0":
        numbers = [
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
        ]
        t5_max, sample_size = 128, 2097152
        cross, glob = ["prompt", "seconds_start", "seconds_total"], ["seconds_start", "seconds_total"]
        dit = dict(io_channels=64, embed_dim=1536, depth=24, num_heads=24, cond_token_dim=768,
                   global_cond_dim=1536, project_cond_tokens=False,
                   transformer_type="continuous_transformer")  # fmt: skip
        extra = {}
    else:
        raise SystemExit(f"unknown Stable Audio model {name!r} (small, 1.0)")
    if tiny:
        dit.update(depth=1, embed_dim=768 if name == "1.0" else 128, num_heads=12 if name == "1.0" else 2)
        sample_size = 2048 * 32
    return {
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": oobleck(4 if tiny else 128),
            "conditioning": {
                "configs": [{"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base",
                                                                     "max_length": t5_max}}]
                + numbers,
                "cond_dim": 768,
            },
            "diffusion": {"cross_attention_cond_ids": cross, "global_cond_ids": glob, "type": "dit",
                          "config": dit, **extra},
            "io_channels": 64,
        },
    }  # fmt: skip


def t5_config(tiny: bool) -> dict:
    return {**T5_BASE, "num_layers": 1, "d_ff": 256} if tiny else dict(T5_BASE)


SETTINGS = {  # model card settings: steps, cfg scale, sampler (ours / stable-audio-tools), seconds_total
    "small": dict(steps=8, cfg=1.0, sampler="pingpong", seconds=11.0),
    "1.0": dict(steps=100, cfg=7.0, sampler="dpmpp-3m-sde", seconds=47.0),
}


# ---------------------------------------------------------------------------------------------------- ours


def build_ours(name: str, dtype: str, tiny: bool):
    from mlx_audio_generate.stable_audio.full_model import StableAudioModel

    m = StableAudioModel(sa_config(name, tiny), t5_config(tiny))
    m.set_dtype(mx_dtype(dtype))
    mx.eval(m.parameters())
    return m


def import_base(root: str):
    """The other checkout's package as `mag_b` (its imports are relative): (full_model, samplers)."""
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(Path(root) / "mlx_audio_generate", tmp / "mag_b")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("mag_b.stable_audio.full_model"), importlib.import_module(
        "mag_b.diffusion.samplers"
    )


def _samplers():
    return importlib.import_module("mlx_audio_generate.diffusion.samplers")


def attention_of(variant: str) -> str:
    """The DiT's attention of a variant: compiled (the library's "auto"), compiled-sdpa / -short / -matmul."""
    _, _, impl = variant.partition("-")
    return impl or "auto"


def set_variant(m, variant: str, samplers=None) -> None:
    """compiled / compiled-matmul / eager on the DiT, the VAE, T5 and the samplers' fused step arithmetic."""
    m.dit.compiled = m.vae.compiled = m.t5.compiled = variant.startswith("compiled")
    m.dit.attention = attention_of(variant)
    steps = getattr(samplers or _samplers(), "fs", None)  # the fused step arithmetic (absent in older code)
    if steps is not None:
        steps.FUSE = variant.startswith("compiled")


def cond_arrays(dc) -> list:
    """Every array of a DiTConditioning (a base checkout's may lack `arrays()`)."""
    if hasattr(dc, "arrays"):
        return dc.arrays()
    return [a for k, v in dc.kv or [] for a in (k, v)] + [a for a in (dc.global_embed,) if a is not None]


def run_ours(
    m, batch: int, steps: int, cfg: float, sampler: str, seconds: float, seed: int = 0, samplers=None
) -> dict:
    sample = (samplers or _samplers()).sample
    rng = np.random.default_rng(seed)
    t: dict = {}
    mx_sync()
    t0 = time.perf_counter()
    ids = mx.array(rng.integers(5, 32000, (batch, PROMPT_TOKENS)).astype(np.int32))
    mask = mx.ones((batch, PROMPT_TOKENS), dtype=mx.int32)
    hidden = m.t5(ids, mask)
    cond = m.conditioner((hidden, mask), {"seconds_start": [0.0] * batch, "seconds_total": [seconds] * batch})
    dc = m.dit.cfg_condition(cond.cross_attn_cond, cond.global_cond, cfg)
    mx.eval(cond_arrays(dc))
    t1 = time.perf_counter()
    key = mx.random.key(seed)
    noise = mx.random.normal((batch, m.dit.config.io_channels, m.latent_frames), key=key).astype(m.dit.dtype)
    lat = sample(
        lambda x, tt: m.dit.guided(x, tt, dc, cfg),
        noise,
        steps,
        objective=m.objective,
        sampler=sampler,
        key=key,
    )
    mx.eval(lat)
    t2 = time.perf_counter()
    audio = m.vae.decode(lat.astype(m.vae.decoder.conv_in.weight.dtype))
    mx.eval(audio)
    t3 = time.perf_counter()
    t.update(text=t1 - t0, dit=t2 - t1, vae=t3 - t2, total=t3 - t0, step=(t2 - t1) / steps)
    return t


def count_kernels(m, st: dict, samplers=None) -> list[list]:
    """(part, all primitives, non-view) of one generation at batch 1, as the GPU runs it (see the module doc).

    A sampler step is counted as the graph of k + 1 steps less that of k (nothing evaluated in between):
    pingpong's noisy step, dpmpp-3m-sde's third-order step, each with its DiT call, update and noise."""
    S = samplers or _samplers()
    cfg, sampler = st["cfg"], st["sampler"]
    rows = []
    fns = [j.fns for j in (m.dit._jit, m.vae._jit, getattr(m.t5, "_jit", None)) if j is not None]
    saved_step = S._step
    with gpu_fast_ops():
        for f in fns:
            f.clear()
        try:
            ids = mx.array(np.random.default_rng(0).integers(5, 32000, (1, PROMPT_TOKENS)).astype(np.int32))
            mask = mx.ones((1, PROMPT_TOKENS), dtype=mx.int32)
            cond = m.conditioner((m.t5(ids, mask), mask), {"seconds_start": [0.0], "seconds_total": [10.0]})
            dc = m.dit.cfg_condition(cond.cross_attn_cond, cond.global_cond, cfg)
            rows.append(["T5 + conditioning", *count_ops(*cond_arrays(dc))[:2]])
            mx.eval(cond_arrays(dc))  # (values are the stand-ins': only the graph is of interest)
            shape = (1, m.dit.config.io_channels, m.latent_frames)
            x = mx.zeros(shape, dtype=m.dit.dtype)
            tt = mx.array(np.full((1,), 0.5, np.float32))
            mx.eval(x, tt)
            rows.append(["one DiT call" + (" (CFG pair)" if cfg != 1 else ""),
                         *count_ops(m.dit.guided(x, tt, dc, cfg))[:2]])  # fmt: skip
            S._step = lambda *a, **k: None  # nothing evaluated: the graph of every step stays

            def graph(k: int):
                fn = lambda x, t: m.dit.guided(x, t, dc, cfg)  # noqa: E731
                return count_ops(
                    S.sample(fn, x, k, objective=m.objective, sampler=sampler, key=mx.random.key(0))
                )[:2]

            k = 3 if sampler.startswith("dpmpp-3m") else 2
            (a1, n1), (a0, n0) = graph(k + 1), graph(k)
            rows.append([f"one sampler step ({sampler}: DiT + update + noise)", a1 - a0, n1 - n0])
            S._step = saved_step
            lat = mx.zeros((1, m.vae.config.latent_dim, m.latent_frames), dtype=m.dit.dtype)
            mx.eval(lat)
            rows.append(["VAE decode", *count_ops(m.vae.decode(lat))[:2]])
        finally:
            S._step = saved_step
            for f in fns:
                f.clear()
    return rows


def profile_vae(name: str, m, rep: Report) -> None:
    """Each decoder block and the whole (compiled) decode per OobleckVAE.upsample formulation."""
    vae, dec, dt = m.vae, m.vae.decoder, m.dit.dtype
    modes = [u for u in ("matmul", "conv", "transpose") if hasattr(vae, "upsample")] or ["transpose"]
    z = mx.random.normal((1, m.latent_frames, vae.config.latent_dim)).astype(dt)
    lat = z.transpose(0, 2, 1)
    mx.eval(z, lat)
    rows = []
    for mode in modes:
        if hasattr(vae, "upsample"):
            vae.upsample = mode
        h = dec.conv_in(z)
        mx.eval(h)
        for i, b in enumerate(dec.blocks):
            fn = mx.compile(lambda a, b=b: b(a))
            t = _time(lambda fn=fn, h=h: fn(h), reps=3)
            nxt = fn(h)
            mx.eval(nxt)
            rows.append(
                [mode, f"block {i}: {h.shape[-1]} -> {nxt.shape[-1]} ch, {nxt.shape[1]} samples", 1000 * t]
            )
            h = nxt
        vae.compiled = True
        rows.append([mode, "whole decode (compiled)", 1000 * _time(lambda: vae.decode(lat), reps=3)])
    if hasattr(vae, "upsample"):
        vae.upsample = "auto"
    rep.table(["upsample", f"VAE decode part ({name}, {m.window_samples} samples)", "ms"], rows)


# ---------------------------------------------------------------------------------------------- references


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def build_t5_torch(tiny: bool, dev, tdt):
    import torch
    from transformers import T5Config, T5EncoderModel

    with torch.device(dev):
        t5 = T5EncoderModel(T5Config(**t5_config(tiny))).eval()
    return t5.to(tdt)


def run_diffusers(name: str, dtype: str, steps: int, cfg: float, seconds: float, tiny: bool, batch: int = 1):
    import torch
    from common import torch_device
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    c = sa_config(name, tiny)
    d = c["model"]["diffusion"]["config"]
    ch = c["model"]["pretransform"]["config"]["encoder"]["config"]["channels"]
    dev, tdt = torch_device(), torch_dtype(dtype)
    with torch.device(dev):
        transformer = StableAudioDiTModel(
            sample_size=c["sample_size"] // 2048, in_channels=64, num_layers=d["depth"],
            attention_head_dim=d["embed_dim"] // d["num_heads"], num_attention_heads=d["num_heads"],
            num_key_value_attention_heads=768 // (d["embed_dim"] // d["num_heads"]), out_channels=64,
            cross_attention_dim=768, time_proj_dim=256, global_states_input_dim=1536,
            cross_attention_input_dim=768,
        )  # fmt: skip
        vae = AutoencoderOobleck(
            encoder_hidden_size=ch, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
            decoder_channels=ch, decoder_input_channels=64, audio_channels=2, sampling_rate=44100,
        )  # fmt: skip
        proj = StableAudioProjectionModel(
            text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512
        )
    t5 = build_t5_torch(tiny, dev, tdt)
    sched = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
        sigma_schedule="exponential",
    )  # fmt: skip
    pipe = StableAudioPipeline(
        vae=vae, text_encoder=t5, projection_model=proj, tokenizer=None, transformer=transformer,
        scheduler=sched,
    ).to(dev, tdt)  # fmt: skip
    seconds = min(seconds, c["sample_size"] / 44100 - 0.01)
    pipe.set_progress_bar_config(disable=True)
    max_len = c["model"]["conditioning"]["configs"][0]["config"]["max_length"]
    ids = torch.randint(5, 32000, (batch, max_len), device=dev)
    mask = torch.zeros((batch, max_len), dtype=torch.long, device=dev)
    mask[:, :PROMPT_TOKENS] = 1  # the tokenizer pads to model_max_length (128)

    def once(n_steps):
        with torch.no_grad():
            emb = t5(input_ids=ids, attention_mask=mask).last_hidden_state
            out = pipe(
                prompt_embeds=emb, attention_mask=mask, audio_end_in_s=seconds, num_inference_steps=n_steps,
                guidance_scale=cfg, generator=torch.Generator(dev).manual_seed(0), output_type="pt",
            ).audios  # fmt: skip
        torch_sync()
        return out

    once(2)  # warm-up
    with TorchMem() as mem:
        t0 = time.perf_counter()
        once(steps)
        total = time.perf_counter() - t0
    return {"total": total, "mem": mem.peak_gb}


def run_sat(name: str, dtype: str, steps: int, cfg: float, tiny: bool, batch: int = 1):
    import torch
    from common import torch_device

    from tests.reference.sat import import_sat

    import_sat()
    from stable_audio_tools.inference.sampling import sample_k, sample_rf
    from stable_audio_tools.models.diffusion import DiTWrapper
    from stable_audio_tools.models.factory import create_pretransform_from_config

    c = sa_config(name, tiny)
    diff = c["model"]["diffusion"]
    dev, tdt = torch_device(), torch_dtype(dtype)
    obj = diff.get("diffusion_objective", "v")
    with torch.device(dev):
        dit = DiTWrapper(diffusion_objective=obj, **copy.deepcopy(diff["config"])).eval()
        pre = create_pretransform_from_config(copy.deepcopy(c["model"]["pretransform"]), 44100).eval()
    dit, pre = dit.to(tdt), pre.to(tdt)
    # stable-audio-tools runs T5 in float16 (bfloat16 runs keep that: it is what the reference does).
    t5 = build_t5_torch(tiny, dev, torch.float16 if dev.type == "cuda" else torch.float32)
    max_len = c["model"]["conditioning"]["configs"][0]["config"]["max_length"]
    n_numbers = len(diff["cross_attention_cond_ids"]) - 1
    ids = torch.randint(5, 32000, (batch, max_len), device=dev)
    mask = torch.zeros((batch, max_len), dtype=torch.bool, device=dev)
    mask[:, :PROMPT_TOKENS] = True
    latents = c["sample_size"] // 2048

    def once(n_steps):
        with torch.no_grad():
            emb = t5(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
            emb = emb * mask[..., None]
            nums = torch.randn(batch, n_numbers, 768, device=dev)  # the number embedders' tokens
            cross = torch.cat([emb, nums], dim=1).to(tdt)
            cmask = torch.cat([mask, torch.ones(batch, n_numbers, dtype=torch.bool, device=dev)], dim=1)
            glob = nums.reshape(batch, -1).to(tdt)
            torch.manual_seed(0)
            noise = torch.randn(batch, 64, latents, device=dev).to(tdt)
            kw = dict(cross_attn_cond=cross, cross_attn_mask=cmask, global_cond=glob, cfg_scale=cfg,
                      batch_cfg=True, rescale_cfg=True, device=dev)  # fmt: skip
            if obj == "v":
                lat = sample_k(dit, noise, None, n_steps, sampler_type="dpmpp-3m-sde", sigma_min=0.3,
                               sigma_max=500, rho=1.0, **kw)  # fmt: skip
            else:
                lat = sample_rf(dit, noise, steps=n_steps, sampler_type="pingpong", **kw)
            audio = pre.decode(lat.to(tdt))
        torch_sync()
        return audio

    once(2)
    with TorchMem() as mem:
        t0 = time.perf_counter()
        once(steps)
        total = time.perf_counter() - t0
    return {"total": total, "mem": mem.peak_gb}


# ------------------------------------------------------------------------------------------------ profile


def guided_inputs(m, cfg: float) -> tuple:
    """(x, t, conditioning) of one guided DiT call at `cfg` (the CFG pair where it is not 1): random latents
    at t = 0.5, zero conditioning of the real shapes; all evaluated."""
    c = m.dit.config
    ctx = m.text_max_length + len(m.conditioner.config.cross_attention_cond_ids) - 1
    glob = mx.zeros((1, c.global_cond_dim)) if c.global_cond_dim else None
    dc = m.dit.cfg_condition(mx.zeros((1, ctx, c.cond_token_dim)), glob, cfg)
    x = mx.random.normal((1, c.io_channels, m.latent_frames)).astype(m.dit.dtype)
    t = mx.full((1,), 0.5)
    mx.eval(cond_arrays(dc), x, t)
    return x, t, dc


def dit_call(m, st: dict):
    """One guided DiT call at the model card's cfg (`guided_inputs`), as a function."""
    x, t, dc = guided_inputs(m, st["cfg"])
    return lambda: m.dit.guided(x, t, dc, st["cfg"])


def _time(fn, reps: int = 5) -> float:
    """Median wall seconds of fn() (evaluated and synchronised), after one warm call."""
    mx_sync(fn())
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx_sync(fn())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def profile(name: str, dtype: str, tiny: bool, rep: Report) -> None:
    """Where a DiT step goes (matmuls, attention, the rest) and what each VAE decoder block costs."""
    m = build_ours(name, dtype, tiny)
    c, dt = m.dit.config, mx_dtype(dtype)
    st = SETTINGS[name]
    n = 2 if st["cfg"] != 1.0 else 1  # the CFG batch
    tokens = m.latent_frames + 1
    d, heads, hd = c.embed_dim, c.num_heads, c.head_dim
    ctx = m.text_max_length + len(m.conditioner.config.cross_attention_cond_ids) - 1
    kvh = c.cond_embed_dim // hd
    h = mx.random.normal((n, tokens, d)).astype(dt)
    blk = m.dit.blocks[0]
    weights = [blk.self_attn.qkv.weight, blk.self_attn.out.weight, blk.cross_attn.q.weight,
               blk.cross_attn.out.weight, blk.ff.proj_in.weight, blk.ff.proj_out.weight]  # fmt: skip
    ff_in = mx.random.normal((n, tokens, blk.ff.proj_out.weight.shape[1])).astype(dt)
    q = mx.random.normal((n, heads, tokens, hd)).astype(dt)
    kc = mx.random.normal((n, kvh, ctx, hd)).astype(dt)
    mx.eval(h, ff_in, q, kc)

    def gemms():
        outs = []
        for w in weights:
            x = ff_in if w.shape[1] != d else h
            outs.append(x @ w.T)
        return outs

    flops = sum(2 * n * tokens * w.shape[0] * w.shape[1] for w in weights)
    t_gemm = _time(gemms)
    t_self = _time(lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=hd**-0.5))
    t_cross = _time(lambda: mx.fast.scaled_dot_product_attention(q, kc, kc, scale=hd**-0.5))
    from mlx_audio_generate.stable_audio.dit_blocks import _attend

    t_self_mm = _time(lambda: _attend(q, q, q, hd**-0.5, "matmul"))
    t_cross_mm = _time(lambda: _attend(q, kc, kc, hd**-0.5, "matmul"))
    call = dit_call(m, st)
    steps = {}
    for variant in ("eager", "compiled", "compiled-matmul"):
        m.dit.compiled = variant.startswith("compiled")
        m.dit.attention = attention_of(variant)
        steps[variant] = _time(call)
    m.dit.attention = "auto"
    depth = c.depth
    rows = [
        ["whole DiT call, compiled", 1000 * steps["compiled"], None],
        ["whole DiT call, eager", 1000 * steps["eager"], None],
        ["whole DiT call, compiled, matmul attention", 1000 * steps["compiled-matmul"], None],
        [f"{depth} x the 6 block matmuls ({flops / 1e9:.0f} GFLOP per block)", 1000 * depth * t_gemm,
         flops / t_gemm / 1e12],
        [f"{depth} x self-attention SDPA ({n}x{heads}x{tokens}x{hd})", 1000 * depth * t_self,
         4 * n * heads * tokens * tokens * hd / t_self / 1e12],
        [f"{depth} x cross-attention SDPA ({ctx} keys, {kvh} KV heads)", 1000 * depth * t_cross, None],
        [f"{depth} x self-attention as matmuls + softmax", 1000 * depth * t_self_mm,
         4 * n * heads * tokens * tokens * hd / t_self_mm / 1e12],
        [f"{depth} x cross-attention as matmuls + softmax", 1000 * depth * t_cross_mm, None],
    ]  # fmt: skip
    rest = steps["compiled"] - depth * (t_gemm + t_self + t_cross)
    rows.append(["everything else (norms, rope, GLU, adds, copies, launches)", 1000 * rest, None])
    rep.table(["DiT step part (" + name + ", batch " + str(n) + ")", "ms", "TFLOP/s"], rows)

    # VAE decoder, block by block (compiled per block, like the whole decoder is)
    vae = m.vae
    dec = vae.decoder
    z = mx.random.normal((1, m.latent_frames, vae.config.latent_dim)).astype(dt)
    mx.eval(z)
    vrows = []
    hcur = dec.conv_in(z)
    mx.eval(hcur)
    for i, b in enumerate(dec.blocks):
        fn = mx.compile(lambda a, b=b: b(a))
        inp = hcur
        t = _time(lambda fn=fn, inp=inp: fn(inp), reps=3)
        hcur = fn(inp)
        mx.eval(hcur)
        vrows.append([f"decoder block {i}: {inp.shape[-1]} -> {hcur.shape[-1]} ch, {hcur.shape[1]} samples",
                      1000 * t])  # fmt: skip
    for variant in ("eager", "compiled"):
        vae.compiled = variant == "compiled"
        lat = mx.random.normal((1, vae.config.latent_dim, m.latent_frames)).astype(dt)
        vrows.append([f"whole decode, {variant}", 1000 * _time(lambda lat=lat: vae.decode(lat), reps=3)])
    rep.table(["VAE decode part (" + name + ")", "ms"], vrows)


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,1.0")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--ref-dtype", default=None, help="dtype of the references (default: --dtype)")
    ap.add_argument("--refs", default="diffusers,sat", help="comma list of diffusers, sat (or none)")
    ap.add_argument("--sat-models", default="small,1.0", help="models stable-audio-tools runs")
    ap.add_argument("--variants", default="compiled,compiled-matmul,eager",
                    help="ours: compiled (auto attention), compiled-sdpa/-short/-matmul, eager")  # fmt: skip
    ap.add_argument("--batches", default="1,4", help="ours' batch sizes for throughput")
    ap.add_argument("--steps-small", type=int, default=None, help="override small's 8 steps")
    ap.add_argument("--steps-1.0", dest="steps_10", type=int, default=None, help="override 1.0's 100 steps")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of ours (the best is kept)")
    ap.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of this script")
    ap.add_argument("--no-warmup", action="store_true", help="skip ours' warm-up (CPU: nothing to compile)")
    ap.add_argument("--profile", action="store_true", help="time the DiT step's parts and the VAE's blocks")
    ap.add_argument("--profile-vae", action="store_true", help="decoder blocks per upsample formulation")
    ap.add_argument("--set", action="append", default=[], help="module.NAME=value in this checkout (A)")
    ap.add_argument("--ab-base", help="another checkout (holding mlx_audio_generate/) to time as B against A")
    ap.add_argument("--ab-rounds", type=int, default=3, help="alternating A/B rounds (median reported)")
    ap.add_argument("--out")
    args = ap.parse_args()
    apply_sets("mlx_audio_generate", args.set)
    ref_dtype = args.ref_dtype or args.dtype
    refs = [r for r in parse_list(args.refs) if r != "none"]
    rep = Report(f"Stable Audio Open ({args.dtype}{', TINY models' if args.tiny else ''})", args.out)
    if args.profile:
        for name in parse_list(args.models):
            try:
                profile(name, args.dtype, args.tiny, rep)
                mx_free()
            except Exception as e:
                log(f"profile {name} failed: {e!r}")
    rows, prof_rows, thr_rows, count_rows, ab_rows = [], [], [], [], []
    base = None
    if args.ab_base and (Path(args.ab_base) / "mlx_audio_generate").is_dir():
        base = import_base(args.ab_base)
    elif args.ab_base:
        log(f"--ab-base {args.ab_base} holds no mlx_audio_generate/: no A/B")
    for name in parse_list(args.models):
        st = dict(SETTINGS[name])
        override = args.steps_small if name == "small" else args.steps_10
        if override:
            st["steps"] = override
        clip = f"{name}, {st['steps']} steps {st['sampler']}, cfg {st['cfg']:g}"
        log(f"== {clip}: ours")
        m = build_ours(name, args.dtype, args.tiny)
        window = m.window_samples / m.sample_rate
        for variant in parse_list(args.variants):
            set_variant(m, variant)
            for batch in parse_list(args.batches, int):
                if variant == "eager" and batch != 1:
                    continue
                try:
                    # warm-up: traces, compiles and caches every kernel of the timed run
                    if not args.no_warmup:
                        run_ours(m, batch, min(st["steps"], 2), st["cfg"], st["sampler"], st["seconds"])
                    best = None
                    for _ in range(args.repeats):
                        mx_reset_mem()
                        r = run_ours(m, batch, st["steps"], st["cfg"], st["sampler"], st["seconds"])
                        r["mem"] = mx_peak_gb()
                        best = r if best is None or r["total"] < best["total"] else best
                except Exception as e:  # keep the other rows
                    log(f"ours {variant} batch {batch} failed: {e!r}")
                    continue
                if batch == 1:
                    rows.append([clip, f"ours MLX {args.dtype} ({variant})", best["total"], best["mem"]])
                    prof_rows.append([clip, variant, best["text"], best["dit"], 1000 * best["step"],
                                      best["vae"], best["total"]])  # fmt: skip
                thr_rows.append([clip, variant, batch, best["total"], batch * window / best["total"]])
                log(f"   {variant} batch {batch}: {best}")
        set_variant(m, "compiled")
        try:
            for part, a, nv in count_kernels(m, st):
                count_rows.append([clip, "A (this checkout)" if base else "ours", part, nv, a])
        except Exception as e:
            log(f"kernel count failed: {e!r}")
        if base is not None:
            try:
                ab_rows += ab_run(m, base, name, args, st, clip, count_rows)
            except Exception as e:
                log(f"A/B {name} failed: {e!r}")
        if args.profile_vae:
            try:
                profile_vae(name, m, rep)
            except Exception as e:
                log(f"VAE profile {name} failed: {e!r}")
        del m
        mx_free()
        for ref in refs:
            if (ref == "diffusers" and name != "1.0") or (ref == "sat" and name not in args.sat_models):
                continue
            log(f"== {clip}: {ref}")
            try:
                fn = run_diffusers if ref == "diffusers" else run_sat
                kw = dict(seconds=st["seconds"]) if ref == "diffusers" else {}
                r = fn(name, ref_dtype, st["steps"], st["cfg"], tiny=args.tiny, **kw)
                torch_free()
                import torch

                dev = "CUDA" if torch.cuda.is_available() else f"CPU {torch.get_num_threads()} threads"
                label = {"diffusers": "diffusers StableAudioPipeline", "sat": "stable-audio-tools"}[ref]
                rows.append([clip, f"{label} torch {ref_dtype} ({dev})", r["total"], r["mem"]])
                log(f"   {r}")
            except Exception as e:
                log(f"{ref} failed: {e!r}")
                rows.append([clip, f"{ref}: failed ({type(e).__name__}: {str(e)[:120]})", None, None])
        rep.table(["clip", "implementation", "whole clip (s)", "peak memory (GB)"], rows, key="clips")
    mem_note = (
        "Peak memory: MLX `mx.get_peak_memory()` (weights included); torch on CUDA `max_memory_allocated()`, "
        "on CPU the peak RSS growth during the run (weights built before it are not counted)."
    )
    rep.para(mem_note)
    rep.table(
        ["clip", "ours", "T5 + cond (s)", "sampling (s)", "ms / step", "VAE decode (s)", "total (s)"],
        prof_rows,
        note="Where the time goes (batch 1; every part synchronised).",
    )
    rep.table(
        ["clip", "ours", "batch", "wall (s)", "audio s / s"],
        thr_rows,
        note="Throughput: batch x the model's window (47.6 s for 1.0, 11.9 s for small) / wall time.",
    )
    rep.table(
        ["clip", "checkout", "part", "kernels (non-view primitives)", "all primitives"],
        count_rows,
        note="Kernels of one generation's parts (batch 1, compiled; on the CPU counted as the GPU runs it).",
    )
    if ab_rows:
        rep.table(
            ["clip", "checkout", "whole clip (s), median", "rounds (s)", "ms / step", "T5 + cond (s)",
             "VAE decode (s)"],
            ab_rows,
            note=f"A/B, one process, same weights, alternating rounds (B = {args.ab_base}), compiled; "
            f"A sets {args.set or 'nothing'}.",
        )  # fmt: skip
    rep.para(f"MLX device: {mlx_device()}.")


def ab_run(m, base, name: str, args, st: dict, clip: str, count_rows: list) -> list[list]:
    """Time A (`m`, this checkout) and B (the base checkout's model on m's weights) in alternating rounds."""
    full_model_b, samplers_b = base
    b = full_model_b.StableAudioModel(sa_config(name, args.tiny), t5_config(args.tiny))
    b.update(m.parameters())
    set_variant(m, "compiled")
    set_variant(b, "compiled", samplers_b)
    for part, a, nv in count_kernels(b, st, samplers_b):
        count_rows.append([clip, "B (base)", part, nv, a])
    runs = {"A (this checkout)": (m, None), "B (base)": (b, samplers_b)}
    args_run = (1, st["steps"], st["cfg"], st["sampler"], st["seconds"])
    for model, smp in runs.values():  # warm-up of both
        run_ours(model, 1, min(st["steps"], 2), *args_run[2:], samplers=smp)
    res: dict = {k: [] for k in runs}
    for _ in range(args.ab_rounds):
        for k, (model, smp) in runs.items():
            res[k].append(run_ours(model, *args_run, samplers=smp))
    out = []
    for k, rs in res.items():
        med = lambda key, rs=rs: statistics.median(r[key] for r in rs)  # noqa: E731
        out.append([clip, k, med("total"), " / ".join(f"{r['total']:.3f}" for r in rs), 1000 * med("step"),
                    med("text"), med("vae")])  # fmt: skip
        log(f"   A/B {k}: {out[-1]}")
    del b
    return out


if __name__ == "__main__":
    main()
