"""Reference outputs of Stable Audio 3's conditioning (`stable_audio_3`: T5GemmaConditioner,
NumberConditioner, MultiConditioner, ConditionedDiffusionModelWrapper.get_conditioning_inputs) on the
committed tiny checkpoints (tests/fixtures/sa3/{small,medium}), for tests/stable_audio_3/test_t5gemma.py and
test_sa3_conditioners.py.

`make(out_dir)` writes `meta.json` (the inputs) and `conditioning.safetensors`:
- `tokens.{input_ids,attention_mask}`: what the prompt conditioner's tokenizer call gives for PROMPTS
  (`truncation=True, max_length=32, padding="max_length"`), the same for both checkpoints (asserted);
- `t5gemma.last_hidden_state`: its T5GemmaEncoderModel on those tokens (both checkpoints bundle the same
  T5Gemma: asserted); `t5gemma.sliding{W}.last_hidden_state`: the same encoder with `sliding_window=W` (the
  bundled 4096 never bites at 32 tokens) on the first two prompts;
- `tokvar.<name>.{input_ids,attention_mask}`: AutoTokenizer on the bundled tokenizer.json with the
  tokenizer_config.json overrides TOKENIZER_VARIANTS (max_length 12);
- `<model>.{cross_attn_cond,cross_attn_mask,global_cond}`: `get_conditioning_inputs(conditioner(batch))` for
  PROMPTS x SECONDS (one seconds value a row); the prompt conditioner's output is `cross_attn_cond[:, :32]`
  and the seconds embedding `global_cond` (both asserted bit-equal here, so they are stored once);
  `<model>.prompt_mask`: the prompt conditioner's mask; `<model>.local_add_cond` from random `inpaint.mask` /
  `inpaint.masked_input` (generate() adds them to the conditioner's dict under `local_add_cond_ids`);
- `expo_freqs`: ExpoFourierFeatures' frequencies as its forward computes them (its own lines; asserted to give
  its output bit for bit): torch's CPU float32 exp is not correctly rounded, so the tests inject them to
  check the rest at 1e-4 and check our own frequencies separately;
- `var.*`: T5GemmaConditioner variants (`project_out` + `padding_mode: "zero"` to 64 channels; `"none"`
  without projection) and a `fourier_features_type: "learned"` NumberConditioner, with their random weights.

    python -m tests.reference.sa3_conditioning tests/fixtures/sa3/conditioning
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "sa3"
MODELS = ("small", "medium")
T5_SUBFOLDER = "t5gemma-b-b-ul2"
PROMPTS = [
    "lofi house loop with warm pads",
    "punchy kick drum fill, " * 8 + "footsteps on gravel",  # > 32 tokens: truncated
    "Café déjà vu — 日本の音楽 🎵 naïve",  # non-ASCII: unknown pieces
    "",
]
SECONDS = [0.0, 7.5, 120.0, 500.0]  # 500 > max_val 384: clamped
SLIDING = 3
INPAINT_LENGTH = 4
TOKENIZER_VARIANTS = {
    "gemma": {"tokenizer_class": "GemmaTokenizer"},  # the released class: rebuilt backend, left padding
    "gemma_right": {"tokenizer_class": "GemmaTokenizer", "padding_side": "right"},
    "left": {"padding_side": "left", "truncation_side": "left"},
    "eos_flag": {"add_bos_token": False, "add_eos_token": True},  # ignored when tokenizer.json exists
}
TOKVAR_LENGTH = 12
TEXT_VARIANTS = {  # name -> (T5GemmaConditioner kwargs, prompts)
    "proj_zero": ({"output_dim": 64, "project_out": True, "padding_mode": "zero", "max_length": 16}, PROMPTS),
    "none": ({"output_dim": 768, "padding_mode": "none", "max_length": 8}, PROMPTS),
}
NUMBER_VARIANT = {"output_dim": 32, "min_val": -2, "max_val": 30, "fourier_features_type": "learned"}
NUMBER_VALUES = [-5.0, 0.0, 7.5, 29.0, 100.0]


def _tokenizer_variants(t5dir: Path) -> dict:
    from transformers import AutoTokenizer

    base = json.loads((t5dir / "tokenizer_config.json").read_text())
    out = {}
    for name, extra in TOKENIZER_VARIANTS.items():
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(t5dir / "tokenizer.json", d)
            Path(d, "tokenizer_config.json").write_text(json.dumps({**base, **extra}))
            enc = AutoTokenizer.from_pretrained(d)(
                PROMPTS, truncation=True, max_length=TOKVAR_LENGTH, padding="max_length", return_tensors="pt"
            )
        out[f"tokvar.{name}.input_ids"] = enc["input_ids"]
        out[f"tokvar.{name}.attention_mask"] = enc["attention_mask"]
    return out


def _sliding(t5dir: Path, ids, mask):
    import torch
    from transformers import AutoConfig, T5GemmaEncoderModel

    config = AutoConfig.from_pretrained(t5dir)
    config.is_encoder_decoder = False  # as T5GemmaConditioner loads it
    config.encoder.sliding_window = SLIDING
    model = T5GemmaEncoderModel.from_pretrained(t5dir, config=config).eval()
    with torch.no_grad():
        return model(input_ids=ids[:2], attention_mask=mask[:2].bool())["last_hidden_state"]


def _expo_freqs(number) -> tuple:
    """The frequencies ExpoFourierFeatures' forward computes (its own lines), checked against its output."""
    import math

    import torch

    feats = number.embedder.embedding[0]
    ramp = torch.linspace(0, 1, feats.dim // 2, dtype=torch.float32)
    log_min, log_max = math.log(feats.min_freq), math.log(feats.max_freq)
    freqs = torch.exp(ramp * (log_max - log_min) + log_min)
    t = torch.tensor([0.0, 0.3, 1.0])
    args = t[:, None] * freqs * 2 * math.pi
    assert torch.equal(feats(t), torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    return freqs


def _variants(sa3, t5dir: Path) -> dict:
    import math

    import torch
    from stable_audio_3.models.conditioners import NumberConditioner, T5GemmaConditioner

    out = {}
    g = torch.Generator().manual_seed(11)
    for name, (kwargs, prompts) in TEXT_VARIANTS.items():
        cond = T5GemmaConditioner(model_path=str(t5dir), **kwargs).eval()
        with torch.no_grad():
            for k, p in cond.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / math.sqrt(p.shape[-1]))
                out[f"var.{name}.param.{k}"] = p.clone()
            states, mask = cond(prompts, "cpu")
        out[f"var.{name}.states"], out[f"var.{name}.mask"] = states, mask
    number = NumberConditioner(**NUMBER_VARIANT).eval()
    with torch.no_grad():
        for k, p in number.named_parameters():
            scale = 1.0 if p.ndim == 1 else 0.5 / math.sqrt(p.shape[-1])
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            out[f"var.number.param.{k}"] = p.clone()
        emb, mask = number(NUMBER_VALUES, "cpu")
    out["var.number.embedding"], out["var.number.mask"] = emb, mask
    return out


def make_model(name: str) -> dict:
    """{name: torch tensor} of one checkpoint: tokens, T5Gemma states, the assembled conditioning."""
    import torch

    from .sa3 import load_reference

    model, cfg = load_reference(FIXTURES / name)
    model.eval()
    prompt = model.conditioner.conditioners["prompt"]
    enc = prompt.tokenizer(
        PROMPTS, truncation=True, max_length=prompt.max_length, padding="max_length", return_tensors="pt"
    )  # T5GemmaConditioner.forward's call
    with torch.no_grad():
        hidden = prompt.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"].to(torch.bool))
        batch = [{"prompt": p, "seconds_total": s} for p, s in zip(PROMPTS, SECONDS, strict=True)]
        tensors = model.conditioner(batch, "cpu")
        g = torch.Generator().manual_seed(5)
        inpaint = {
            "inpaint_mask": (torch.rand(len(PROMPTS), 1, INPAINT_LENGTH, generator=g) > 0.5).float(),
            "inpaint_masked_input": torch.randn(
                len(PROMPTS), cfg["model"]["io_channels"], INPAINT_LENGTH, generator=g
            ),
        }
        cond = model.get_conditioning_inputs({**tensors, **{k: [v] for k, v in inpaint.items()}})
    length = prompt.max_length
    assert torch.equal(cond["cross_attn_cond"][:, :length], tensors["prompt"][0])
    assert torch.equal(cond["cross_attn_cond"][:, length:], tensors["seconds_total"][0])
    assert torch.equal(cond["global_cond"], tensors["seconds_total"][0][:, 0])
    return {
        "tokens.input_ids": enc["input_ids"],
        "tokens.attention_mask": enc["attention_mask"],
        "t5gemma.last_hidden_state": hidden["last_hidden_state"],
        f"{name}.cross_attn_cond": cond["cross_attn_cond"],
        f"{name}.cross_attn_mask": cond["cross_attn_mask"],
        f"{name}.global_cond": cond["global_cond"],
        f"{name}.prompt_mask": tensors["prompt"][1],
        f"{name}.inpaint.mask": inpaint["inpaint_mask"],
        f"{name}.inpaint.masked_input": inpaint["inpaint_masked_input"],
        f"{name}.local_add_cond": cond["local_add_cond"],
        "expo_freqs": _expo_freqs(model.conditioner.conditioners["seconds_total"]),
    }


def make(out_dir: str | Path) -> Path:
    """Write `meta.json` and `conditioning.safetensors` into out_dir; returns it."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from .sa3 import import_sa3

    sa3 = import_sa3()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    for name in MODELS:
        for k, v in make_model(name).items():
            if k in arrays:  # shared by both checkpoints (same tokenizer and T5Gemma): must agree
                assert torch.equal(arrays[k], v), f"{name} differs from {MODELS[0]} in {k}"
            arrays[k] = v
    t5dir = FIXTURES / MODELS[0] / T5_SUBFOLDER
    arrays[f"t5gemma.sliding{SLIDING}.last_hidden_state"] = _sliding(
        t5dir, arrays["tokens.input_ids"], arrays["tokens.attention_mask"]
    )
    arrays.update(_tokenizer_variants(t5dir))
    arrays.update(_variants(sa3, t5dir))

    def np_of(v):
        v = v.detach().contiguous()
        return v.to(torch.int32).numpy() if not v.is_floating_point() else v.float().numpy()

    save_file(
        {k: np.ascontiguousarray(np_of(v)) for k, v in arrays.items()}, str(out / "conditioning.safetensors")
    )
    meta = {
        "prompts": PROMPTS,
        "seconds": SECONDS,
        "sliding_window": SLIDING,
        "tokenizer_variants": TOKENIZER_VARIANTS,
        "tokvar_length": TOKVAR_LENGTH,
        "text_variants": {k: {"config": c, "prompts": p} for k, (c, p) in TEXT_VARIANTS.items()},
        "number_variant": {"config": NUMBER_VARIANT, "values": NUMBER_VALUES},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


live = once_per_session(make, "sa3-conditioning-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "conditioning"))
