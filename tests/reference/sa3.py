"""Stable Audio 3's original PyTorch code (`stable_audio_3`, ../shared/reference) beside CPU torch, and tiny
random checkpoints in the released layout written by that code itself.

- `reference_root()`: the folder holding the reference sources, or None (a clone without ../shared: the
  parity tests then use the committed fixtures under tests/fixtures/sa3/, made by this module).
- `import_sa3()`: the `stable_audio_3` package with stand-ins for torchaudio / torchvision (imported at module
  level, only used for resampling) and the compiled flex-attention disabled (on CPU it compiles for ~40 s;
  the chunked-halo SDPA path it falls back to equals full masked SDPA bit for bit: the reference README §3).
- `save_tiny_sa3(out, small=True, seed=0)`: `model_config.json`, `model.safetensors` (155 tensors with the
  released prefixes `model.model.*`, `conditioner.conditioners.*`, `pretransform.model.*`) and
  `t5gemma-b-b-ul2/` (a tiny T5Gemma enc-dec + tokenizer), as the recipe of README §4.1, with narrower
  T5Gemma attention/MLP (the conditioner fixes only its 768 width) so the committed fixture stays small.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def reference_root() -> Path | None:
    """`../shared/reference/stable-audio-3` beside the checkout, if present (CI and developer machines)."""
    env = os.environ.get("MLX_AUDIO_GENERATE_REFERENCE")
    root = Path(env) if env else REPO.parent / "shared" / "reference"
    folder = root / "stable-audio-3"
    return folder if (folder / "stable_audio_3").is_dir() else None


def import_sa3():
    """The `stable_audio_3` package, importable on this CPU (see the module doc)."""
    folder = reference_root()
    if folder is None:
        raise RuntimeError("the Stable Audio 3 reference sources (../shared/reference) are not here")
    from .sat import install_stubs

    install_stubs()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import stable_audio_3  # noqa: F401
    import stable_audio_3.models.transformer as transformer

    transformer.flex_attention_compiled = None
    import stable_audio_3.factory  # noqa: F401
    import stable_audio_3.inference.sampling  # noqa: F401

    return stable_audio_3


def tiny_t5gemma(t5dir: Path, seed: int = 0) -> None:
    """A tiny T5Gemma enc-dec + its tokenizer (ids <pad>=0 <eos>=1 <bos>=2 <unk>=3, <bos> prepended)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaForConditionalGeneration

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = ["lofi house loop with warm pads", "punchy kick drum fill", "footsteps on gravel"] * 4
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"])
    )
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.save_pretrained(t5dir)
    # hidden 768 is fixed by T5GemmaConditioner; heads, head_dim and the MLP are narrow to keep it small
    mod = dict(
        hidden_size=768, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, vocab_size=len(tok), query_pre_attn_scalar=32,
        sliding_window=4096, attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(seed)
    dec = dict(mod, num_hidden_layers=1, layer_types=["sliding_attention"])  # only the encoder is used
    cfg = T5GemmaConfig(encoder=mod, decoder=dec, vocab_size=len(tok))
    model = T5GemmaForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # norms are zero-initialised (Gemma's 1 + w): give every weight some spread
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / math.sqrt(p.shape[-1]))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(t5dir)


def tiny_config(small: bool, t5dir: str) -> dict:
    """The released model_config.json structure with tiny widths (README §4.1)."""
    L, P = 16, 8  # latent dim (real 256), patch size (real 256)
    blk = dict(
        channels=16, c_mults=[2], strides=[16], latent_dim=L, transformer_depths=[2], differential=True,
        dyt=True, dim_heads=16, variable_stride=True,
    )  # fmt: skip
    enc = dict(in_channels=2 * P, mask_noise=0.0, conv_mapping=False, **blk)
    dec = dict(out_channels=2 * P, mask_noise=0.01, sinusoidal_blocks=[0], **blk)
    if small:  # SAME-S: chunked attention with midpoint shift, kernel-3 decoder mapping
        enc.update(chunk_size=32, chunk_midpoint_shift=True)
        dec.update(chunk_size=32, chunk_midpoint_shift=True, conv_mapping=True)
    else:  # SAME-L: sliding window of one group each side, sin gate in the last decoder blocks
        enc.update(sliding_window=[1, 1])
        dec.update(sliding_window=[1, 1], sinusoidal_blocks=[1])
    dit = dict(
        io_channels=L, embed_dim=128, depth=2, num_heads=2, cond_token_dim=768, global_cond_dim=768,
        local_add_cond_dim=L + 1, num_memory_tokens=4, global_cond_type="adaLN",
        timestep_features_type="expo", timestep_features_logsnr=False,
        attn_kwargs={"qk_norm": "rms", "differential": not small}, norm_type="rms_norm",
        norm_kwargs={"force_fp32": True}, ff_kwargs={"mult": 4},
    )  # fmt: skip
    return {
        "model_type": "diffusion_cond_inpaint",
        "sample_rate": 44100,
        "sample_size": P * 16 * 64,
        "audio_channels": 2,
        "model": {
            "io_channels": L,
            "pretransform": {
                "type": "autoencoder",
                "config": {
                    "encoder": {"type": "same", "config": enc},
                    "decoder": {"type": "same", "config": dec},
                    "bottleneck": {
                        "type": "softnorm",
                        "config": {"dim": L, "noise_augment_dim": 0, "auto_scale": True},
                    },
                    "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": P}},
                    "latent_dim": L,
                    "downsampling_ratio": P * 16,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "cond_dim": 768,
                "configs": [
                    {
                        "id": "prompt",
                        "type": "t5gemma",
                        "config": {"max_length": 32, "padding_mode": "learned", "model_path": t5dir},
                    },
                    {
                        "id": "seconds_total",
                        "type": "number",
                        "config": {"min_val": 0, "max_val": 384, "fourier_features_type": "expo"},
                    },
                ],
            },
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


def save_tiny_sa3(out: str | Path, small: bool = True, seed: int = 0) -> Path:
    """Write a tiny SA3 checkpoint folder in the released layout; returns `out`."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t5dir = out / "t5gemma-b-b-ul2"
    if not (t5dir / "config.json").is_file():
        tiny_t5gemma(t5dir, seed)
    sa3 = import_sa3()
    cfg = tiny_config(small, str(t5dir))
    model = sa3.factory.create_diffusion_cond_from_config(cfg)
    g = torch.Generator().manual_seed(seed)  # re-draw everything (many layers are zero-initialised)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / math.sqrt(p.shape[-1]))
            elif n.endswith(("gamma", "alpha", "weight_g", "scaling_factor", "running_std")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    # as released: the T5Gemma named by repo + subfolder (the bundled copy); load_reference points at it
    prompt = cfg["model"]["conditioning"]["configs"][0]["config"]
    del prompt["model_path"]
    repo = "small-music" if small else "medium"
    prompt.update(repo_id=f"stabilityai/stable-audio-3-{repo}", subfolder="t5gemma-b-b-ul2")
    (out / "model_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def load_reference(folder: str | Path):
    """The reference model (ConditionedDiffusionModelWrapper) of a tiny folder, eval mode, on CPU."""
    sa3 = import_sa3()
    from stable_audio_3.loading_utils import load_diffusion_cond

    folder = Path(folder)
    cfg = json.loads((folder / "model_config.json").read_text())
    cond = cfg["model"]["conditioning"]["configs"][0]["config"]
    cond["model_path"] = str(folder / cond.pop("subfolder"))
    cond.pop("repo_id")
    assert sa3 is not None
    return load_diffusion_cond(cfg, str(folder / "model.safetensors"), device="cpu"), cfg
