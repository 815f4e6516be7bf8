"""Tiny random Stable Audio Open checkpoints in stable-audio-tools' own format.

`save_tiny_stable_audio(dir, style)` writes `model.safetensors` + `model_config.json` exactly as the real
repos lay them out (the wrapper's state_dict: `model.model.*` DiT, `pretransform.model.*` Oobleck with
`weight_g/weight_v`, `conditioner.conditioners.*` number embedders; no T5 weights) plus a tiny T5 folder
(`t5/`: transformers `save_pretrained` + tokenizer) standing in for google-t5/t5-base.

Two styles mirror the two real configs:
- "small": rf_denoiser objective, QK LayerNorm, projected cond tokens, seconds_total only, T5 max 64.
- "1.0":   v objective, no QK norm, unprojected cond tokens with fewer KV heads (GQA), seconds_start and
           seconds_total, T5 max 128.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

from . import require
from .sat import import_sat
from .tokenizer import save_tiny_t5_tokenizer

T5_DIM = 32  # the tiny T5's d_model stands in for t5-base's 768


def tiny_t5_config():
    require("transformers")
    from transformers import T5Config

    return T5Config(
        vocab_size=96,
        d_model=T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        dropout_rate=0.0,
    )


def tiny_config(style: str = "small") -> dict:
    vae = {
        "type": "autoencoder",
        "iterate_batch": True,
        "config": {
            "encoder": {
                "type": "oobleck",
                "config": {
                    "in_channels": 2,
                    "channels": 4,
                    "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 16,
                    "use_snake": True,
                },
            },
            "decoder": {
                "type": "oobleck",
                "config": {
                    "out_channels": 2,
                    "channels": 4,
                    "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 8,
                    "use_snake": True,
                    "final_tanh": False,
                },
            },
            "bottleneck": {"type": "vae"},
            "latent_dim": 8,
            "downsampling_ratio": 2048,
            "io_channels": 2,
        },
    }
    if style == "small":
        numbers = [{"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}]
        t5_max = 64
        diffusion = {
            "cross_attention_cond_ids": ["prompt", "seconds_total"],
            "global_cond_ids": ["seconds_total"],
            "diffusion_objective": "rf_denoiser",
            "type": "dit",
            "config": {
                "io_channels": 8,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 2,
                "cond_token_dim": T5_DIM,
                "global_cond_dim": T5_DIM,
                "transformer_type": "continuous_transformer",
                "attn_kwargs": {"qk_norm": "ln"},
            },
        }
        sample_size = 2048 * 16
    elif style == "1.0":
        numbers = [
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
        ]
        t5_max = 128
        diffusion = {
            "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
            "global_cond_ids": ["seconds_start", "seconds_total"],
            "type": "dit",
            "config": {
                "io_channels": 8,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 2,
                "cond_token_dim": T5_DIM,
                "global_cond_dim": 2 * T5_DIM,
                "project_cond_tokens": False,
                "transformer_type": "continuous_transformer",
            },
        }
        sample_size = 2048 * 24
    else:
        raise ValueError(style)
    return {
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": vae,
            "conditioning": {
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5",
                        "config": {"t5_model_name": "t5-base", "max_length": t5_max},
                    }
                ]
                + numbers,
                "cond_dim": T5_DIM,
            },
            "diffusion": diffusion,
            "io_channels": 8,
        },
    }


def save_tiny_t5(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny T5 (encoder+decoder, as google-t5/t5-base ships) with its tokenizer, via save_pretrained."""
    require("torch", "transformers")
    import torch
    from transformers import T5ForConditionalGeneration

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config()).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(out_dir)
    save_tiny_t5_tokenizer(out_dir)
    return out_dir


@contextlib.contextmanager
def _tiny_t5_for_conditioner(t5_dir: Path):
    """Make stable-audio-tools' T5Conditioner load our tiny T5 in place of the hub's t5-base."""
    import transformers
    from stable_audio_tools.models.conditioners import T5Conditioner

    orig_model = transformers.T5EncoderModel.from_pretrained
    orig_tok = transformers.AutoTokenizer.from_pretrained
    orig_dims = dict(T5Conditioner.T5_MODEL_DIMS)

    def model_from_pretrained(name, *a, **k):
        return orig_model(str(t5_dir), *a, **k)

    def tok_from_pretrained(name, *a, **k):
        return orig_tok(str(t5_dir), *a, **k)

    transformers.T5EncoderModel.from_pretrained = model_from_pretrained
    transformers.AutoTokenizer.from_pretrained = tok_from_pretrained
    T5Conditioner.T5_MODEL_DIMS["t5-base"] = T5_DIM
    try:
        yield
    finally:
        transformers.T5EncoderModel.from_pretrained = orig_model
        transformers.AutoTokenizer.from_pretrained = orig_tok
        T5Conditioner.T5_MODEL_DIMS.clear()
        T5Conditioner.T5_MODEL_DIMS.update(orig_dims)


def build_tiny_stable_audio(style: str, t5_dir: Path, seed: int = 0, t5_fp32: bool = True):
    """The stable-audio-tools ConditionedDiffusionModelWrapper for a tiny config, in eval mode.

    stable-audio-tools runs its T5 in float16; `t5_fp32=True` puts it back in float32 so parity is checked
    against an fp32 run of that part (see DEVELOPERS.md).
    """
    require("torch", "transformers", "diffusers", "stable_audio_tools")
    import torch

    import_sat()
    from stable_audio_tools.models.factory import create_model_from_config

    config = tiny_config(style)
    torch.manual_seed(seed)
    with _tiny_t5_for_conditioner(Path(t5_dir)):
        model = create_model_from_config(copy.deepcopy(config)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            # Perturb everything (zero-init output layers, unit norms, Snake alphas) so no weight can hide.
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    if t5_fp32:
        # T5Conditioner loaded the T5 and cast it to float16; casting back would leave fp16-rounded weights
        # (~1e-3 off the checkpoint), so put the exact fp32 checkpoint in its place (through __dict__, as
        # T5Conditioner stores it, keeping the T5 out of the wrapper's state_dict).
        from transformers import T5EncoderModel

        t5 = T5EncoderModel.from_pretrained(str(t5_dir)).eval()
        model.conditioner.conditioners["prompt"].__dict__["model"] = t5
    return model, config


def save_tiny_stable_audio(out_dir: str | Path, style: str = "small", seed: int = 0):
    """Write model.safetensors + model_config.json (+ t5/ folder). Returns (out_dir, reference model)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t5_dir = save_tiny_t5(out_dir / "t5", seed=seed)
    model, config = build_tiny_stable_audio(style, t5_dir, seed=seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "model_config.json").write_text(json.dumps(config, indent=2))
    return out_dir, model
