"""ACE-Step 1.5's original PyTorch code (`acestep`, ../shared/reference) beside CPU torch, and tiny random
checkpoints in the released layouts written by that code itself (the reference README §4.2 recipe).

- `reference_root()`: the upstream source folder, or None (a clone without ../shared: the parity tests then
  use the committed fixtures under tests/fixtures/ace/, made by this module).
- `import_ace()`: makes `acestep` importable under transformers 5 (a stand-in for the removed
  `transformers.modeling_attn_mask_utils`, from which the model files import one unused name).
- `save_tiny_ace(root, variant)`: `root/Qwen3-Embedding-0.6B/` (a tiny Qwen3Model + byte-level BPE
  tokenizer), `root/vae/` (AutoencoderOobleck with the real 48 kHz ratios, tiny channels) and
  `root/acestep-v15-<variant>/` (config.json, model.safetensors with the released prefixes,
  silence_latent.pt).
- `load_reference(root, variant)`: the reference AceStepConditionGenerationModel built eagerly and loaded with
  load_state_dict (transformers 5's meta-device from_pretrained trips ResidualFSQ; README §2.9).
"""

from __future__ import annotations

import math
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
VARIANTS = {"turbo": "turbo", "base": "base", "sft": "sft"}


def reference_root() -> Path | None:
    env = os.environ.get("MLX_AUDIO_GENERATE_REFERENCE")
    root = Path(env) if env else REPO.parent / "shared" / "reference"
    folder = root / "ace-step-1.5" / "upstream-6d467e4"
    return folder if (folder / "acestep" / "models").is_dir() else None


def import_ace():
    folder = reference_root()
    if folder is None:
        raise RuntimeError("the ACE-Step reference sources (../shared/reference) are not here")
    try:
        import transformers.modeling_attn_mask_utils  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("transformers.modeling_attn_mask_utils")
        stand_in._prepare_4d_causal_attention_mask = None
        sys.modules["transformers.modeling_attn_mask_utils"] = stand_in
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import acestep.models.common.configuration_acestep_v15  # noqa: F401

    return sys.modules["acestep"]


def model_class(variant: str):
    import importlib

    import_ace()
    mod = importlib.import_module(f"acestep.models.{variant}.modeling_acestep_v15_{variant}")
    return mod.AceStepConditionGenerationModel


def save_tiny_ace(root: str | Path, variant: str = "turbo", A: int = 8, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderOobleck
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3Model

    import_ace()
    from acestep.models.common.configuration_acestep_v15 import AceStepConfig

    root = Path(root)
    te = root / "Qwen3-Embedding-0.6B"
    if not (te / "config.json").is_file():
        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        bpe.decoder = decoders.ByteLevel()
        corpus = [
            "# Instruction\nFill the audio semantic mask",
            "# Caption\nupbeat pop",
            "# Lyric\n[Verse]",
        ] * 4
        bpe.train_from_iterator(
            corpus,
            trainers.BpeTrainer(
                vocab_size=400,
                special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        tok = Qwen2TokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            unk_token=None,
            bos_token=None,
        )
        tok.save_pretrained(te)
        torch.manual_seed(seed)
        qcfg = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=True,
        )
        Qwen3Model(qcfg).save_pretrained(te)
    vae_dir = root / "vae"
    if not (vae_dir / "config.json").is_file():
        torch.manual_seed(seed)
        vae = AutoencoderOobleck(
            encoder_hidden_size=2 * A,
            downsampling_ratios=[2, 4, 4, 6, 10],
            channel_multiples=[1, 2, 4, 8, 16],
            decoder_channels=4,
            decoder_input_channels=A,
            audio_channels=2,
            sampling_rate=48000,
        ).eval()
        vae.save_pretrained(vae_dir)
    else:
        vae = AutoencoderOobleck.from_pretrained(vae_dir).eval()
    cfg = AceStepConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        num_lyric_encoder_hidden_layers=2,
        num_timbre_encoder_hidden_layers=2,
        num_attention_pooler_hidden_layers=1,
        text_hidden_dim=32,
        timbre_hidden_dim=A,
        audio_acoustic_hidden_dim=A,
        in_channels=3 * A,
        patch_size=2,
        pool_window_size=5,
        fsq_dim=64,
        fsq_input_levels=[8, 8, 8, 5, 5, 5],
        model_version=variant,
    )
    cfg.is_turbo = variant == "turbo"
    model = model_class(variant)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.7 / math.sqrt(p.shape[-1]))
            elif n.endswith("norm.weight") or "layernorm" in n:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    ddir = root / f"acestep-v15-{variant}"
    model.save_pretrained(ddir)
    with torch.no_grad():  # the silence latent as shipped: (1, C, T); the pipeline transposes it on load
        silence = vae.encode(torch.zeros(1, 2, 48000 * 30)).latent_dist.mean
    torch.save(silence, ddir / "silence_latent.pt")
    for f in ddir.glob("*.py"):  # save_pretrained copies the model code; the released folders ship it too
        f.unlink()
    return ddir


def load_reference(root: str | Path, variant: str = "turbo"):
    from safetensors.torch import load_file

    import_ace()
    from acestep.models.common.configuration_acestep_v15 import AceStepConfig

    ddir = Path(root) / f"acestep-v15-{variant}"
    cfg = AceStepConfig.from_pretrained(ddir)
    cfg._attn_implementation = "sdpa"
    model = model_class(variant)(cfg).eval()
    model.load_state_dict(load_file(str(ddir / "model.safetensors")))
    return model


if __name__ == "__main__":  # python -m tests.reference.ace tests/fixtures/ace
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/ace")
    for v in ("turbo", "base"):
        save_tiny_ace(out, v)
