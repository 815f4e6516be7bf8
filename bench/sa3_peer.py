"""The peers of bench/stable_audio_3.py: Stability's MLX runtime, the PyTorch original, diffusers' pipeline.

Each is built at the bench's sizes with random weights and `generate(batch, seconds, steps, cfg)` returns
{"total", "text", "dit", "vae", "mem"} (seconds, GB; "mem" filled by the caller for MLX).

- `MLXRuntime`: `optimized/mlx/models/defs` loaded by path (fresh module copies, so `--tiny` can shrink their
  module-level size constants), every weight the runtime's .npz files would hold redrawn in the runtime's
  dtype (DiT fp16, T5Gemma fp16, SAME decoder fp32; buffers the loaders never overwrite, such as the DiT's
  float32 `_local_zeros_1`, kept as its constructor makes them). `generate` is `scripts/sa3_mlx.py`'s main
  without the file I/O: T5Gemma on the fixed ids, the conditioning, `sample_flow_pingpong` with the CLI's
  model_fn (batched CFG + APG), its chunked decode rule ((8, 2) SAME-S, (128, 8) SAME-L) and the unpatch.
- `TorchReference`: `stable_audio_3.factory.create_diffusion_cond_from_config` with a random T5Gemma encoder
  saved by transformers to a temp folder (the conditioner loads `model_path`), parameters redrawn as the
  reference notes' tiny checkpoints, `StableAudioModel(...).generate(conditioning=[pre-tokenized], ...)`.
- `DiffusersPipeline`: `StableAudio3Pipeline` (medium: DiT + AutoencoderSAME) fed the T5Gemma states.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from common import ROOT, TorchMem, mx, torch_sync

SHARED = ROOT.parent / "shared" / "reference" / "stable-audio-3"

# ------------------------------------------------------------------------- sizes (shared with the bench)

SAMPLE_RATE = 44100
RATIO = 4096  # patch 256 x SAME stride 16
MAX_TOKENS = 256  # the prompt conditioner's max_length
PROMPT_TOKENS = 24  # a typical prompt's length in T5Gemma tokens; the rest is padding
T5GEMMA = dict(
    hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
    num_key_value_heads=12, head_dim=64, vocab_size=256000, query_pre_attn_scalar=64, sliding_window=4096,
    attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)  # fmt: skip
T5GEMMA_TINY = dict(T5GEMMA, intermediate_size=128, num_hidden_layers=1, vocab_size=1024)
DEFAULT_SECONDS = {"small": "10,30,120", "medium": "380"}
TINY_SECONDS = {"small": "2,5", "medium": "3"}


def t5gemma_config(tiny: bool) -> dict:
    return dict(T5GEMMA_TINY if tiny else T5GEMMA)


def sa3_config(name: str, tiny: bool = False, t5dir: str = "", chunked: bool = False) -> dict:
    """The released model_config.json structure of stable-audio-3-small-* / -medium at real sizes (README §5;
    `--tiny`: the same structure, narrow and shallow)."""
    if name not in ("small", "medium"):
        raise SystemExit(f"unknown Stable Audio 3 model {name!r} (small, medium)")
    small = name == "small"
    width, depth = ((128, 6) if small else (256, 12)) if not tiny else (32, 6 if small else 2)
    blk = dict(
        channels=width, c_mults=[6] if not tiny else [2], strides=[16], latent_dim=256,
        transformer_depths=[depth], differential=True, dyt=True, dim_heads=64, variable_stride=True,
    )  # fmt: skip
    enc = dict(in_channels=512, mask_noise=0.0, conv_mapping=False, **blk)
    dec = dict(out_channels=512, mask_noise=0.01, sinusoidal_blocks=[0], **blk)
    if small:  # SAME-S: chunked attention with the midpoint shift, kernel-3 decoder mapping
        enc.update(chunk_size=32, chunk_midpoint_shift=True)
        dec.update(chunk_size=32, chunk_midpoint_shift=True, conv_mapping=True)
    else:  # SAME-L: one group each side; sin gate where depth - i < sinusoidal_blocks (blocks 5..11 of 12)
        enc.update(sliding_window=[1, 1])
        dec.update(sliding_window=[1, 1], sinusoidal_blocks=[8 if not tiny else 2])
    embed, dit_depth, heads = (1024, 20, 16) if small else (1536, 24, 24)
    if tiny:
        embed, dit_depth, heads = 128, 2, 2
    dit = dict(
        io_channels=256, embed_dim=embed, depth=dit_depth, num_heads=heads, cond_token_dim=768,
        global_cond_dim=768, local_add_cond_dim=257, num_memory_tokens=64, global_cond_type="adaLN",
        timestep_features_type="expo", timestep_features_logsnr=False,
        attn_kwargs={"qk_norm": "rms", "differential": not small}, norm_type="rms_norm",
        norm_kwargs={"force_fp32": True}, ff_kwargs={"mult": 4},
    )  # fmt: skip
    pretransform = {
        "type": "autoencoder",
        "config": {
            "encoder": {"type": "same", "config": enc},
            "decoder": {"type": "same", "config": dec},
            "bottleneck": {
                "type": "softnorm",
                "config": {"dim": 256, "noise_augment_dim": 0, "auto_scale": True},
            },
            "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": 256}},
            "latent_dim": 256,
            "downsampling_ratio": RATIO,
            "io_channels": 2,
        },
    }
    if chunked:
        pretransform["chunked"] = True
    prompt = {"max_length": MAX_TOKENS, "padding_mode": "learned"}
    if t5dir:
        prompt["model_path"] = t5dir
    return {
        "model_type": "diffusion_cond_inpaint",
        "sample_rate": SAMPLE_RATE,
        "sample_size": 5292032 if small else 16777216,
        "audio_channels": 2,
        "model": {
            "io_channels": 256,
            "pretransform": pretransform,
            "conditioning": {
                "cond_dim": 768,
                "configs": [
                    {"id": "prompt", "type": "t5gemma", "config": prompt},
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 384, "fourier_features_type": "expo"},
                    },
                ],
            },  # fmt: skip
            "diffusion": {
                "type": "dit",
                "diffusion_objective": "rf_denoiser",
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "config": dit,
            },
        },
    }


def prompt_ids(batch: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed prompt every implementation encodes: (ids, mask) int32 (batch, 256), PROMPT_TOKENS real."""
    rng = np.random.default_rng(0)
    ids = np.zeros((batch, MAX_TOKENS), np.int32)
    ids[:, :PROMPT_TOKENS] = rng.integers(4, vocab, PROMPT_TOKENS)
    mask = np.zeros((batch, MAX_TOKENS), np.int32)
    mask[:, :PROMPT_TOKENS] = 1
    return ids, mask


def latents_for(seconds: float, headroom: float = 0.0, cap: int | None = None) -> int:
    """The latent frames of a clip (the reference's `_adapt_sample_size`, SAME-S/L align to 2 latents)."""
    n = -(-int((seconds + headroom) * SAMPLE_RATE) // RATIO)
    n += n % 2
    return n if cap is None else min(n, cap)


def randomize_mlx(module, dtype_of, skip: tuple[str, ...] = ()) -> None:
    """Every parameter of an MLX module redrawn: matrices N(0, 0.5 / sqrt(fan_in)), scales 1 + 0.1 N, the rest
    0.1 N (as the reference notes' tiny checkpoints), in `dtype_of(name)`; names ending in `skip` are kept."""
    from mlx.utils import tree_flatten, tree_unflatten

    new = []
    for i, (k, v) in enumerate(tree_flatten(module.parameters())):
        if k.endswith(skip):
            continue
        dt = dtype_of(k)
        key = mx.random.key(i)
        if v.ndim >= 2:
            fan_in = int(np.prod(v.shape[1:]))
            a = mx.random.normal(v.shape, dtype=dt, key=key) * (0.5 / math.sqrt(fan_in))
        elif k.endswith(("gamma", "alpha", "running_std", "bottleneck_scale")):
            a = 1 + 0.1 * mx.random.normal(v.shape, dtype=dt, key=key)
        else:
            a = 0.1 * mx.random.normal(v.shape, dtype=dt, key=key)
        new.append((k, a.astype(dt)))
        if len(new) % 64 == 0:
            mx.eval([a for _, a in new[-64:]])
    module.update(tree_unflatten(new))
    mx.eval(module.parameters())


# --------------------------------------------------------------------------------------- Stability's MLX


def _defs_dir(peer_dir: str | None) -> Path:
    p = Path(peer_dir) if peer_dir else SHARED / "optimized" / "mlx"
    for cand in (p, p / "models" / "defs", p / "optimized" / "mlx" / "models" / "defs"):
        if (cand / "dit_mlx.py").is_file():
            return cand
    raise FileNotFoundError(f"no dit_mlx.py under {p} (pass --peer-dir: optimized/mlx or its models/defs)")


_COPIES = 0


def _load(defs: Path, stem: str) -> ModuleType:
    """A fresh copy of defs/<stem>.py (its module constants can then be changed without touching others)."""
    global _COPIES
    _COPIES += 1
    spec = importlib.util.spec_from_file_location(f"_sa3_peer_{stem}_{_COPIES}", defs / f"{stem}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _shrink_dit(mod: ModuleType) -> None:
    mod.EMBED_DIM, mod.DEPTH, mod.NUM_HEADS, mod.FF_INNER = 128, 2, 2, 512
    if hasattr(mod, "CrossAttention"):  # its context width is a default argument, bound at import
        mod.CrossAttention.__init__.__defaults__ = (mod.EMBED_DIM,)


def _shrink_decoder(mod: ModuleType, small: bool) -> None:
    mod.DIM, mod.NUM_HEADS, mod.FF_INNER = 64, 1, 192
    if not small:  # SAME-S's six blocks are called by index; SAME-L loops over NUM_BLOCKS
        mod.NUM_BLOCKS, mod.SIN_START_BLOCK = 2, 1


class MLXRuntime:
    def __init__(
        self, name: str, tiny: bool, peer_dir: str | None, dit_dtype: str = "fp16", fp16_local=False
    ):
        defs = _defs_dir(peer_dir)
        self.small = name == "small"
        self.pipe = _load(defs, "sa3_pipeline")
        dit_mod = _load(defs, "dit_mlx" if self.small else "dit_mlx_medium")
        dec_mod = _load(defs, "same_s_decoder" if self.small else "same_l_decoder")
        t5_mod = _load(defs, "t5gemma_mlx")
        if tiny:
            _shrink_dit(dit_mod)
            _shrink_decoder(dec_mod, self.small)
        self.dtype = mx.float16 if dit_dtype == "fp16" else mx.float32  # the CLI's --dit-dtype
        # As shipped, DiT.__init__'s zero local condition is float32 (no .npz holds it), so from the first
        # block on the fp16 DiT computes in float32; fp16_local casts it (not the runtime as released).
        self.local_dtype = self.dtype if fp16_local else mx.float32
        self.dit = dit_mod.DiT(T_lat=2)
        randomize_mlx(self.dit, lambda k: self.dtype, skip=("_local_zeros_1", "timestep_features.freqs"))
        self.decoder = dec_mod.SAMESDecoder() if self.small else dec_mod.SAMELDecoder()
        randomize_mlx(self.decoder, lambda k: mx.float32)  # "decoder always FP32"
        self.chunk_fn = dec_mod.decode_chunked
        self.chunk, self.overlap = (8, 2) if self.small else (128, 8)  # sa3_mlx.py DECODER_CHOICES
        t5 = t5gemma_config(tiny)
        fields = t5_mod.T5GemmaConfig.__dataclass_fields__
        self.t5 = t5_mod._Encoder(t5_mod.T5GemmaConfig(**{k: v for k, v in t5.items() if k in fields}))
        randomize_mlx(self.t5, lambda k: mx.float16)  # "T5Gemma always fp16"
        self.vocab = t5["vocab_size"]
        k = mx.random.key(99)
        self.padding_emb = 0.1 * mx.random.normal((768,), key=k)
        w = mx.random.normal((768, 256), key=mx.random.split(k)[0]) / 16
        self.secs = self.pipe.SecondsTotalEmbedder(w, mx.zeros((768,)), min_val=0.0, max_val=384.0)
        mx.eval(self.padding_emb, w)

    def generate(self, batch: int, seconds: float, steps: int, cfg: float, apg: float = 1.0, seed: int = 0):
        p, dtype = self.pipe, self.dtype
        t_lat = max(1, math.ceil(seconds * SAMPLE_RATE / RATIO))
        if self.small and t_lat % 2:
            t_lat += 1
        # the DiT's T_lat only sizes its zero local condition (a float32 constant, as DiT.__init__ makes it)
        self.dit.T_lat = t_lat
        self.dit._local_zeros_1 = mx.zeros((1, t_lat, 257), dtype=self.local_dtype)
        ids, mask = prompt_ids(batch, self.vocab)
        mx.synchronize()
        t0 = time.perf_counter()
        # 1. text encoder, 2. conditioning (sa3_mlx.py main)
        mask = mx.array(mask)
        embeds = self.t5(mx.array(ids), mask)
        mx.eval(embeds, mask)
        embeds = embeds.astype(dtype)
        embeds_padded = p.apply_prompt_padding(embeds, mask, self.padding_emb.astype(dtype))
        seconds_embed = mx.broadcast_to(self.secs(seconds).astype(dtype), (batch, 1, 768))
        cross_attn = mx.concatenate([embeds_padded, seconds_embed], axis=1)
        global_cond = seconds_embed[:, 0, :]
        null_cross_attn = mx.zeros_like(cross_attn) if cfg != 1.0 else None
        mx.eval(cross_attn, global_cond, *([] if null_cross_attn is None else [null_cross_attn]))
        t1 = time.perf_counter()
        # 3. sampling
        sigmas = p.build_pingpong_schedule(steps, sigma_max=1.0, use_logsnr_shift=True)
        noise = mx.random.normal((batch, 256, t_lat), dtype=dtype, key=mx.random.key(seed))
        mx.eval(noise)
        dit = self.dit

        def model_fn(x, t):  # verbatim from sa3_mlx.py (inpainting's local_add_cond is None here)
            if cfg == 1.0:
                return dit(x, t, cross_attn, global_cond, local_add_cond=None)
            x2 = mx.concatenate([x, x], axis=0)
            t2 = mx.concatenate([t, t], axis=0)
            cross2 = mx.concatenate([cross_attn, null_cross_attn], axis=0)
            global2 = mx.concatenate([global_cond, global_cond], axis=0)
            v_batched = dit(x2, t2, cross2, global2, local_add_cond=None)
            cond_v, uncond_v = mx.split(v_batched, 2, axis=0)
            sigma = t.reshape(-1, 1, 1).astype(mx.float32)
            cond_d = x.astype(mx.float32) - cond_v.astype(mx.float32) * sigma
            uncond_d = x.astype(mx.float32) - uncond_v.astype(mx.float32) * sigma
            diff = cond_d - uncond_d
            if apg <= 0.0:
                cfg_diff = diff
            else:
                norm = mx.sqrt((cond_d * cond_d).sum(axis=(-2, -1), keepdims=True))
                unit = cond_d / mx.maximum(norm, 1e-8)
                parallel = (diff * unit).sum(axis=(-2, -1), keepdims=True) * unit
                diff_orth = diff - parallel
                cfg_diff = diff_orth if apg >= 1.0 else (apg * diff_orth + (1.0 - apg) * diff)
            cfg_d = cond_d + (cfg - 1.0) * cfg_diff
            cfg_v = (x.astype(mx.float32) - cfg_d) / sigma
            return cfg_v.astype(x.dtype)

        latents = p.sample_flow_pingpong(model_fn, noise, sigmas, seed=seed + 1)
        mx.eval(latents)
        t2 = time.perf_counter()
        # 4. decode (fp32, the CLI's chunking rule), 5. unpatch + host copy
        lat = latents.astype(mx.float32)
        kernel = self.chunk + 2 * self.overlap
        if t_lat > kernel:
            patches = self.chunk_fn(self.decoder, lat, self.chunk, self.overlap)
        elif t_lat % 2 == 0:
            patches = self.decoder(lat)
        else:
            patches = self.chunk_fn(self.decoder, lat, 2, 2)
        mx.eval(patches)
        audio = p.patched_decode(patches, patch_size=256, channels=2)
        audio = np.array(audio.astype(mx.float32))[..., : int(round(seconds * SAMPLE_RATE))]
        t3 = time.perf_counter()
        return {"total": t3 - t0, "text": t1 - t0, "dit": t2 - t1, "vae": t3 - t2,
                "finite": bool(np.isfinite(audio).all()), "latent_dtype": str(latents.dtype)}  # fmt: skip


# ------------------------------------------------------------------------------------------- torch side


def install_stubs() -> None:
    """tests/reference/sat.py's torchaudio / torchvision stand-ins, without needing diffusers installed."""
    sys.path.insert(0, str(ROOT))
    from tests.reference.sat import _StubFinder

    try:  # they probe for torchvision at first import: let them see the real, absent package
        import diffusers  # noqa: F401
    except ImportError:
        pass
    import transformers  # noqa: F401

    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())


def _ref_dir(ref_dir: str | None) -> Path:
    p = Path(ref_dir) if ref_dir else SHARED
    for cand in (p, p / "stable-audio-3"):
        if (cand / "stable_audio_3").is_dir():
            return cand
    raise FileNotFoundError(f"no stable_audio_3/ under {p} (pass --ref-dir)")


def _t5gemma_torch(tiny: bool, dtype):
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    mod = t5gemma_config(tiny)
    cfg = T5GemmaConfig(encoder=mod, decoder=mod, vocab_size=mod["vocab_size"], is_encoder_decoder=False)
    return T5GemmaEncoderModel(cfg).to(dtype).eval()


def write_t5gemma(folder: Path, tiny: bool) -> None:
    """A random T5Gemma encoder (bf16, as bundled) + a word-level tokenizer the conditioner can load (the
    bench feeds token ids, so the tokenizer is only constructed)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "a", "prompt"])}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), bos_token="<bos>",
        eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip
    tok.save_pretrained(folder)
    _t5gemma_torch(tiny, torch.bfloat16).save_pretrained(folder)


def randomize_torch(model) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(fan_in)))
            elif n.endswith(("gamma", "alpha", "weight_g", "scaling_factor", "running_std")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


class TorchReference:
    def __init__(self, name: str, tiny: bool, ref_dir: str | None, chunked: bool, flex: str):
        import torch

        os.environ.setdefault("TQDM_DISABLE", "1")  # sample_diffusion's per-step bar
        install_stubs()
        folder = str(_ref_dir(ref_dir))
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)  # before bench/, whose stable_audio_3.py would shadow the package
        mod = sys.modules.get("stable_audio_3")
        if mod is not None and not hasattr(mod, "__path__"):
            raise RuntimeError("bench/stable_audio_3.py was imported as 'stable_audio_3': run it as a script")
        import stable_audio_3.models.transformer as transformer

        cuda = torch.cuda.is_available()
        if flex == "off" or (flex == "auto" and not cuda):  # CPU: ~40 s compiles (reference notes §3)
            transformer.flex_attention_compiled = None
        from stable_audio_3.factory import create_diffusion_cond_from_config
        from stable_audio_3.model import StableAudioModel

        tmp = Path(tempfile.mkdtemp(prefix="sa3_t5gemma_"))
        try:
            write_t5gemma(tmp, tiny)
            self.cfg = sa3_config(name, tiny, t5dir=str(tmp), chunked=chunked)
            model = create_diffusion_cond_from_config(self.cfg)  # loads the T5Gemma from tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        randomize_torch(model)
        self.device = "cuda" if cuda else "cpu"
        model.to(self.device).eval().requires_grad_(False)
        if cuda:  # StableAudioModel.from_pretrained: model_half on CUDA (the T5Gemma stays bf16)
            model.to(torch.float16)
        self.sam = StableAudioModel(model, self.cfg, self.device, cuda)
        self.vocab = t5gemma_config(tiny)["vocab_size"]
        self.times: dict[str, float] = {}
        self._time(model.conditioner, "forward", "text")
        self._time(model.pretransform, "decode", "vae")

    def _time(self, obj, attr: str, key: str) -> None:
        """Wrap obj.attr to add its synchronised wall time to self.times[key]."""
        fn = getattr(obj, attr)

        def timed(*a, **k):
            torch_sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            torch_sync()
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0
            return out

        setattr(obj, attr, timed)

    def generate(self, batch: int, seconds: float, steps: int, cfg: float, headroom: float) -> dict:
        import torch

        ids, mask = prompt_ids(1, self.vocab)
        prompt = {"input_ids": torch.from_numpy(ids[0]).long(), "attention_mask": torch.from_numpy(mask[0])}
        cond = [{"prompt": prompt, "seconds_total": float(seconds)} for _ in range(batch)]
        self.times = {}
        with TorchMem() as mem:
            t0 = time.perf_counter()
            out = self.sam.generate(
                conditioning=cond, duration=seconds, steps=steps, cfg_scale=cfg, apg_scale=1.0,
                batch_size=batch, sample_size=self.cfg["sample_size"], seed=0, duration_padding_sec=headroom,
            )  # fmt: skip
            audio = out.float().cpu().numpy()
            total = time.perf_counter() - t0
        text, vae = self.times.get("text", 0.0), self.times.get("vae", 0.0)
        return {"total": total, "text": text, "dit": total - text - vae, "vae": vae, "mem": mem.peak_gb,
                "finite": bool(np.isfinite(audio).all())}  # fmt: skip


class DiffusersPipeline:
    """diffusers' StableAudio3Pipeline at the medium sizes (SAME-L; diffusers has no SAME-S)."""

    def __init__(self, name: str, tiny: bool):
        import torch
        from diffusers import (
            AutoencoderSAME,
            FlowMatchEulerDiscreteScheduler,
            StableAudio3DiTModel,
            StableAudio3Pipeline,
        )
        from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

        if name != "medium":
            raise ValueError("diffusers has no SAME-S (small)")
        d = sa3_config(name, tiny)["model"]
        dit = d["diffusion"]["config"]
        dec = d["pretransform"]["config"]["decoder"]["config"]
        cuda = torch.cuda.is_available()
        self.device, self.dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
        transformer = StableAudio3DiTModel(
            embed_dim=dit["embed_dim"], depth=dit["depth"], num_heads=dit["num_heads"],
            use_differential_attention=True,
        )  # fmt: skip
        vae = AutoencoderSAME(
            encoder_channels=dec["channels"], encoder_c_mults=tuple(dec["c_mults"]),
            encoder_transformer_depths=tuple(dec["transformer_depths"]),
            decoder_sinusoidal_blocks=tuple(dec["sinusoidal_blocks"]), sliding_window=1,
        )  # fmt: skip
        for m in (transformer, vae):
            randomize_torch(m)
        self.text_encoder = _t5gemma_torch(tiny, torch.bfloat16).to(self.device)
        self.pipe = StableAudio3Pipeline(
            vae=vae, text_encoder=self.text_encoder, tokenizer=None,
            duration_embedder=StableAudio3DurationEmbedder(), transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
        ).to(self.device)  # fmt: skip
        for m in (self.pipe.transformer, self.pipe.vae, self.pipe.duration_embedder):
            m.to(self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.vocab = t5gemma_config(tiny)["vocab_size"]

    def generate(self, batch: int, seconds: float, steps: int, cfg: float) -> dict:
        import torch

        ids, mask = prompt_ids(batch, self.vocab)
        ids = torch.from_numpy(ids).long().to(self.device)
        mask = torch.from_numpy(mask).long().to(self.device)
        with TorchMem() as mem, torch.no_grad():
            t0 = time.perf_counter()
            emb = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.to(self.dtype)
            neg = {}
            if cfg > 1.0:  # the pipeline's default negative: the empty prompt ("<bos>" alone) encoded
                nid, nmask = torch.zeros_like(ids), torch.zeros_like(mask)
                nid[:, 0], nmask[:, 0] = 2, 1
                nemb = self.text_encoder(input_ids=nid, attention_mask=nmask).last_hidden_state
                neg = dict(negative_prompt_embeds=nemb.to(self.dtype), negative_encoder_attention_mask=nmask)
            torch_sync()
            t1 = time.perf_counter()
            out = self.pipe(
                prompt_embeds=emb, encoder_attention_mask=mask, duration=seconds, num_inference_steps=steps,
                guidance_scale=cfg, generator=torch.Generator(self.device).manual_seed(0), output_type="pt",
                **neg,
            ).audios  # fmt: skip
            audio = out.float().cpu().numpy()
            total = time.perf_counter() - t0
        return {"total": total, "text": t1 - t0, "mem": mem.peak_gb, "finite": bool(np.isfinite(audio).all())}
