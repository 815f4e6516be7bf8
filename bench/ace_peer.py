"""The peers of bench/ace_step.py, each built from the random released-layout checkpoints of ace_weights.py.

`generate(batch, seconds, steps, guidance)` returns {"total", "text", "dit", "vae", "mem", "finite", ...}
(seconds, GB). Every peer gets the same fixed token ids (ace_weights.FixedTokens), the same song length in
latents (max(128, int(round(s, 1) * 48000) // 1920), as the handler's silent target), batch rows of one
prompt, shift 3, DCW off (upstream's default `dcw_enabled=True` is a no-op without pytorch_wavelets; ours
has no DCW), ODE Euler, no LM planner.

- `UpstreamTorch`: the handler's PyTorch path on its device and dtype (`initialize_service`: CUDA bf16,
  CPU fp32; attention "sdpa", no torch.compile): Qwen3Model on the text ids (no mask) and its embed_tokens on
  the lyric ids (`infer_text_embeddings` / `infer_lyric_embeddings`), the silence latent as timbre reference
  and source, the model file's `generate_audio` (which calls `prepare_condition`, timed as "text"), then
  `VaeDecodeChunksMixin._tiled_decode_inner` (chunk 512, overlap 64: `_get_auto_decode_chunk_size` with
  >= 24 GB free; on CPU 256) with diffusers' AutoencoderOobleck in the VAE dtype (`_get_vae_dtype`: CUDA bf16,
  CPU fp32) and the peak normalisation.
- `UpstreamMLX`: the handler's MLX path (`_initialize_mlx_backends`, which upstream enables on mps / cpu;
  built here on any device since this is a speed comparison): the same torch conditioning (torch on the
  bench's device), `mlx_generate_diffusion` with `MLXDiTDecoder` (weights converted by its `dit_convert`:
  float32, no mx.compile unless --upstream-mlx-compile) and `MlxVaeDecodeNativeMixin._mlx_vae_decode`
  (`MLXAutoEncoderOobleck` via its `vae_convert`, float32 unless ACESTEP_MLX_VAE_FP16, mx.compile'd decode,
  one item at a time, windows of 512 latents).
- `DiffusersAce`: diffusers 0.42.1's `AceStepPipeline` (bf16 on CUDA, fp32 on CPU), the checkpoint mapped to
  `AceStepTransformer1DModel` / `AceStepConditionEncoder` with the renames of reference README §6.9 (strict
  load), a stand-in tokenizer returning the fixed ids.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
from ace_weights import LYRIC_MAX, TEXT_MAX, FixedTokens, import_ace, model_class
from common import TorchMem, mx, torch_sync

OVERLAP = 64


def frames_for(seconds: float) -> int:
    """The handler's latent frames of a silent target (`_prepare_target_latents_and_wavs`)."""
    return max(128, int(round(seconds, 1) * 48000) // 1920)


def torch_setup(device: str):
    import torch

    cuda = device == "cuda" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("torch sees no CUDA device")
    return ("cuda" if cuda else "cpu"), (torch.bfloat16 if cuda else torch.float32)


def _handler_module(name: str):
    """acestep.core.generation.handler.<name>, without the handler package's __init__ (GPU imports)."""
    base = Path(sys.modules["acestep"].__path__[0]) / "core" / "generation" / "handler"
    for pkg, path in (
        ("acestep.core", base.parents[1]),
        ("acestep.core.generation", base.parent),
        ("acestep.core.generation.handler", base),
    ):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = [str(path)]
            sys.modules[pkg] = mod
    return importlib.import_module(f"acestep.core.generation.handler.{name}")


class _TorchSide:
    """The upstream torch model + Qwen3 text encoder + silence latent, and the handler's text2music inputs."""

    def __init__(self, root: Path, variant: str, ref_dir: str | None, device: str, tokens: FixedTokens):
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel

        self.notes = import_ace(ref_dir)
        from acestep.models.common.configuration_acestep_v15 import AceStepConfig

        self.dev, self.dtype = torch_setup(device)
        ddir = root / f"acestep-v15-{variant}"
        cfg = AceStepConfig.from_pretrained(ddir)
        cfg._attn_implementation = "sdpa"
        _, cls = model_class(variant)
        with torch.device(self.dev):  # eager build (transformers 5's meta from_pretrained trips ResidualFSQ)
            model = cls(cfg)
        model.load_state_dict(load_file(str(ddir / "model.safetensors")))
        self.model = model.to(self.dtype).eval().requires_grad_(False)
        te = AutoModel.from_pretrained(root / "Qwen3-Embedding-0.6B", dtype=self.dtype)
        self.text_encoder = te.to(self.dev).eval().requires_grad_(False)
        silence = torch.load(ddir / "silence_latent.pt", weights_only=True).transpose(1, 2)
        self.silence = silence.to(self.dev).to(self.dtype)  # init_service_loader: .to(device).to(dtype)
        self.tokens = tokens
        self.turbo = variant == "turbo"
        self.times: dict[str, float] = {}
        fn = self.model.prepare_condition

        def timed_prepare(*a, **k):  # generate_audio calls it first: counted as conditioning ("text")
            torch_sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            torch_sync()
            self.times["prep"] = self.times.get("prep", 0.0) + time.perf_counter() - t0
            return out

        self.model.prepare_condition = timed_prepare

    def silence_slice(self, n: int):
        s = self.silence[0]
        if n > s.shape[0]:
            s = s.repeat(math.ceil(n / s.shape[0]), 1)
        return s[:n]

    def inputs(self, batch: int, seconds: float) -> dict:
        """Text states + lyric embeddings (timed by the caller) and generate_audio's other arguments."""
        import torch

        rep = lambda a: torch.from_numpy(np.repeat(a[None], batch, axis=0)).long().to(self.dev)  # noqa: E731
        tids, lids = rep(self.tokens.ids("text")), rep(self.tokens.ids("lyric"))
        with torch.inference_mode():
            text = self.text_encoder(input_ids=tids).last_hidden_state
            lyric = self.text_encoder.embed_tokens(lids)
        n, c = frames_for(seconds), self.silence.shape[-1]
        return dict(
            text_hidden_states=text,
            text_attention_mask=torch.ones_like(tids),
            lyric_hidden_states=lyric,
            lyric_attention_mask=torch.ones_like(lids),
            refer_audio_acoustic_hidden_states_packed=self.silence[:, :750].expand(batch, -1, -1).clone(),
            refer_audio_order_mask=torch.arange(batch, device=self.dev),
            src_latents=self.silence_slice(n)[None].expand(batch, -1, -1).clone(),
            chunk_masks=torch.ones(batch, n, c, device=self.dev, dtype=self.dtype),
            is_covers=torch.zeros(batch, dtype=torch.bool, device=self.dev),
            silence_latent=self.silence,
        )


def _peak_normalize(wavs):
    import torch

    wavs = wavs.float()
    peak = wavs.abs().amax(dim=[1, 2], keepdim=True)
    return wavs / peak.clamp(min=1.0) if torch.any(peak > 1.0) else wavs


class UpstreamTorch:
    def __init__(self, root: Path, variant: str, ref_dir: str | None, device: str, tokens: FixedTokens):
        try:
            from diffusers import AutoencoderOobleck  # the handler's VAE class
        except ImportError as e:
            raise RuntimeError(f"upstream decodes with diffusers' AutoencoderOobleck: {e}") from None

        self.side = _TorchSide(root, variant, ref_dir, device, tokens)
        s = self.side
        vae = AutoencoderOobleck.from_pretrained(root / "vae")
        self.vae = vae.to(s.dev).to(s.dtype).eval().requires_grad_(False)  # _get_vae_dtype
        chunks = _handler_module("vae_decode_chunks")
        host = type("Host", (chunks.VaeDecodeChunksMixin,), {})()
        host.vae, host.disable_tqdm, host._empty_cache = self.vae, True, lambda: None
        self.host = host
        self.chunk = 512 if s.dev == "cuda" else 256  # _get_auto_decode_chunk_size (>= 24 GB free / CPU)
        self.notes = s.notes
        self.label = f"upstream PyTorch ({s.dev} {str(s.dtype).removeprefix('torch.')})"

    def generate(self, batch: int, seconds: float, steps: int, guidance: float) -> dict:
        import torch

        s = self.side
        s.times = {}
        kw = dict(
            seed=list(range(batch)), infer_steps=steps, shift=3.0, dcw_enabled=False, use_progress_bar=False
        )
        if not s.turbo:
            kw.update(diffusion_guidance_scale=guidance, cfg_interval_start=0.0, cfg_interval_end=1.0)
        with TorchMem() as mem, torch.inference_mode():
            t0 = time.perf_counter()
            args = s.inputs(batch, seconds)
            torch_sync()
            t1 = time.perf_counter()
            latents = s.model.generate_audio(**args, **kw)["target_latents"]
            torch_sync()
            t2 = time.perf_counter()
            wavs = self.host._tiled_decode_inner(
                latents.transpose(1, 2).contiguous(), self.chunk, OVERLAP, False
            )
            audio = _peak_normalize(wavs).cpu().numpy()
            t3 = time.perf_counter()
        prep = s.times.get("prep", 0.0)
        return {
            "total": t3 - t0,
            "text": t1 - t0 + prep,
            "dit": t2 - t1 - prep,
            "vae": t3 - t2,
            "mem": mem.peak_gb,
            "finite": bool(np.isfinite(audio).all()),
            "frames": latents.shape[1],
        }


class UpstreamMLX:
    def __init__(
        self,
        root: Path,
        variant: str,
        ref_dir: str | None,
        device: str,
        tokens: FixedTokens,
        compile_dit: bool = False,
    ):
        import os

        import torch
        from safetensors.torch import load_file

        self.side = _TorchSide(root, variant, ref_dir, device, tokens)
        self.notes = self.side.notes
        from acestep.models.mlx.dit_convert import convert_and_load as load_dit
        from acestep.models.mlx.dit_generate import mlx_generate_diffusion
        from acestep.models.mlx.dit_model import MLXDiTDecoder
        from acestep.models.mlx.vae_convert import convert_and_load as load_vae
        from acestep.models.mlx.vae_model import MLXAutoEncoderOobleck

        self.run_diffusion = mlx_generate_diffusion
        # _init_mlx_dit: from the torch model's config and decoder weights (converted to float32)
        self.decoder = MLXDiTDecoder.from_config(self.side.model.config)
        load_dit(self.side.model, self.decoder)
        self.decoder.materialize_static_buffers()
        self.compile_dit = compile_dit
        # _init_mlx_vae converts the loaded torch VAE: its config + state dict, read here from the files
        cfg = types.SimpleNamespace(**json.loads((root / "vae" / "config.json").read_text()))
        sd = load_file(str(root / "vae" / "diffusion_pytorch_model.safetensors"))
        pt_vae = types.SimpleNamespace(
            config=cfg, state_dict=lambda: {k: v.to(torch.float32) for k, v in sd.items()}
        )
        vae = MLXAutoEncoderOobleck.from_pytorch_config(pt_vae)
        load_vae(pt_vae, vae)
        fp16 = os.environ.get("ACESTEP_MLX_VAE_FP16", "0").lower() in ("1", "true", "yes")
        if fp16:
            from mlx.utils import tree_map

            vae.update(tree_map(lambda v: v.astype(mx.float16), vae.parameters()))
            mx.eval(vae.parameters())
        decode = _handler_module("mlx_vae_decode_native")
        host = type("Host", (decode.MlxVaeDecodeNativeMixin,), {})()
        host.mlx_vae, host._mlx_compiled_decode = vae, mx.compile(vae.decode)
        host._mlx_vae_dtype, host.disable_tqdm = (mx.float16 if fp16 else mx.float32), True
        self.host = host
        dev = self.side.dev
        self.label = (
            f"upstream MLX (DiT fp32{', mx.compile' if compile_dit else ''}, VAE "
            f"{'fp16' if fp16 else 'fp32'}; torch conditioning {dev} "
            f"{str(self.side.dtype).removeprefix('torch.')})"
        )

    def generate(self, batch: int, seconds: float, steps: int, guidance: float) -> dict:
        import torch

        s = self.side
        mx.synchronize()
        mx.reset_peak_memory()
        with TorchMem() as mem, torch.inference_mode():
            t0 = time.perf_counter()
            args = s.inputs(batch, seconds)
            # service_generate_execute: prepare_condition in torch, then the MLX diffusion
            enc, _, ctx = s.model.prepare_condition(
                text_hidden_states=args["text_hidden_states"],
                text_attention_mask=args["text_attention_mask"],
                lyric_hidden_states=args["lyric_hidden_states"],
                lyric_attention_mask=args["lyric_attention_mask"],
                refer_audio_acoustic_hidden_states_packed=args["refer_audio_acoustic_hidden_states_packed"],
                refer_audio_order_mask=args["refer_audio_order_mask"],
                hidden_states=args["src_latents"],
                attention_mask=torch.ones(args["src_latents"].shape[:2], device=s.dev, dtype=s.dtype),
                silence_latent=s.silence,
                src_latents=args["src_latents"],
                chunk_masks=args["chunk_masks"],
                is_covers=args["is_covers"],
                precomputed_lm_hints_25Hz=None,
            )
            enc_np, ctx_np = enc.float().cpu().numpy(), ctx.float().cpu().numpy()  # _mlx_run_diffusion
            null = s.model.null_condition_emb.float().cpu().numpy()
            t1 = time.perf_counter()
            out = self.run_diffusion(
                mlx_decoder=self.decoder,
                encoder_hidden_states_np=enc_np,
                context_latents_np=ctx_np,
                src_latents_shape=tuple(args["src_latents"].shape),
                seed=list(range(batch)),
                shift=3.0,
                infer_steps=steps,
                guidance_scale=1.0 if s.turbo else guidance,
                null_condition_emb_np=null,
                compile_model=self.compile_dit,
                disable_tqdm=True,
                dcw_enabled=False,
            )
            latents = torch.from_numpy(out["target_latents"]).to(device=s.dev, dtype=s.dtype)
            t2 = time.perf_counter()
            wavs = self.host._mlx_vae_decode(latents.transpose(1, 2))
            audio = _peak_normalize(wavs).cpu().numpy()
            t3 = time.perf_counter()
        mlx_gb = mx.get_peak_memory() / 1e9
        return {
            "total": t3 - t0,
            "text": t1 - t0,
            "dit": t2 - t1,
            "vae": t3 - t2,
            "mem": mlx_gb + mem.peak_gb,
            "mem_mlx": mlx_gb,
            "mem_torch": mem.peak_gb,
            "finite": bool(np.isfinite(audio).all()),
            "frames": latents.shape[1],
        }


# ----------------------------------------------------------------------------------------------- diffusers

_RENAMES = (
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("o_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("proj_in.1.", "proj_in_conv."),
    ("proj_out.1.", "proj_out_conv."),
)


def _rename(key: str) -> str:
    for a, b in _RENAMES:
        key = key.replace(f".{a}", f".{b}") if not a.endswith(".") else key.replace(a, b)
    return key


def _strict(module, state: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{what}: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")


class _Tok:
    """AceStepPipeline.encode_prompt's tokenizer(texts, max_length=...): .input_ids, .attention_mask."""

    def __init__(self, tokens: FixedTokens):
        self.tokens = tokens

    def __call__(self, texts, max_length: int, **_):
        import torch

        ids, mask = self.tokens.batch(list(texts), TEXT_MAX if max_length == TEXT_MAX else LYRIC_MAX)
        return types.SimpleNamespace(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
        )


def _timed(obj, attr: str, key: str, store: dict) -> None:
    """Wrap obj.attr so its synchronised wall time adds to store[key]."""
    fn = getattr(obj, attr)

    def run(*a, **k):
        torch_sync()
        t0 = time.perf_counter()
        out = fn(*a, **k)
        torch_sync()
        store[key] = store.get(key, 0.0) + time.perf_counter() - t0
        return out

    setattr(obj, attr, run)


class DiffusersAce:
    def __init__(self, root: Path, variant: str, device: str, tokens: FixedTokens):
        import inspect

        import torch
        from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
        from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
        from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder
        from safetensors.torch import load_file
        from transformers import AutoModel

        self.dev, self.dtype = torch_setup(device)
        ddir = root / f"acestep-v15-{variant}"
        cfg = json.loads((ddir / "config.json").read_text())
        sd = load_file(str(ddir / "model.safetensors"))

        def kwargs(cls) -> dict:
            names = set(inspect.signature(cls.__init__).parameters)
            return {k: v for k, v in cfg.items() if k in names}

        with torch.device(self.dev):
            dit = AceStepTransformer1DModel(**kwargs(AceStepTransformer1DModel))
            enc = AceStepConditionEncoder(**kwargs(AceStepConditionEncoder))
        _strict(
            dit, {_rename(k[len("decoder.") :]): v for k, v in sd.items() if k.startswith("decoder.")}, "DiT"
        )
        enc_sd = {_rename(k[len("encoder.") :]): v for k, v in sd.items() if k.startswith("encoder.")}
        enc_sd["null_condition_emb"] = sd["null_condition_emb"]
        silence = torch.load(ddir / "silence_latent.pt", weights_only=True).transpose(1, 2)
        enc_sd["silence_latent"] = silence
        _strict(enc, enc_sd, "condition encoder")
        te = AutoModel.from_pretrained(root / "Qwen3-Embedding-0.6B", dtype=self.dtype)
        vae = AutoencoderOobleck.from_pretrained(root / "vae")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
        self.pipe = AceStepPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=_Tok(tokens),
            transformer=dit,
            condition_encoder=enc,
            scheduler=sched,
        ).to(self.dev, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.times: dict[str, float] = {}
        for obj, attr, key in ((te, "forward", "text"), (enc, "forward", "text"), (vae, "decode", "vae")):
            _timed(obj, attr, key, self.times)
        self.turbo = variant == "turbo"
        self.notes: list[str] = []
        self.label = f"diffusers AceStepPipeline ({self.dev} {str(self.dtype).removeprefix('torch.')})"

    def generate(self, batch: int, seconds: float, steps: int, guidance: float) -> dict:
        import torch

        self.times.clear()
        with TorchMem() as mem, torch.inference_mode():
            t0 = time.perf_counter()
            out = self.pipe(
                prompt=["a prompt"] * batch,
                lyrics=["[Verse]"] * batch,
                audio_duration=seconds,
                num_inference_steps=steps,
                guidance_scale=1.0 if self.turbo else guidance,
                shift=3.0,
                generator=torch.Generator(self.dev).manual_seed(0),
                output_type="pt",
            ).audios
            audio = out.float().cpu().numpy()
            total = time.perf_counter() - t0
        text, vae = self.times.get("text", 0.0), self.times.get("vae", 0.0)
        return {
            "total": total,
            "text": text,
            "dit": total - text - vae,
            "vae": vae,
            "mem": mem.peak_gb,
            "finite": bool(np.isfinite(audio).all()),
            "frames": math.ceil(seconds * 25),
        }
