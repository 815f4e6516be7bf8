"""Reference outputs of ACE-Step 1.5 with adapters on its DiT (the original PyTorch `model.decoder`), on the
committed tiny turbo checkpoint (tests/fixtures/ace/acestep-v15-turbo), for tests/ace_step/test_ace_lora.py.

Adapters, made here in the released layouts with random non-zero factors (seeded):
- `peft_a/`, `peft_b/`: PEFT LoRA folders (`adapter_config.json` + `adapter_model.safetensors`) made by
  peft itself (`get_peft_model` on the decoder, factors overwritten, `save_pretrained`): peft_a is ACE-Step's
  trainer config (LoRAConfig: r 8, alpha 16, dropout 0.1, q/k/v/o_proj); peft_b r 4, alpha 6, use_rslora,
  more targets (MLP, condition_embedder), a rank_pattern and an alpha_pattern.
- `lokr_a/`, `lokr_b/`: `lokr_weights.safetensors` as ACE-Step's LoKr trainer saves it
  (`acestep/training/lokr_utils.py`: `inject_lokr_into_dit` = `LycorisNetwork.apply_preset` with the
  target names + `create_lycoris(decoder, algo="lokr", ...)`, then `save_lokr_weights` =
  `lycoris_net.save_weights` with metadata algo / format / lokr_config JSON); lycoris-lora wraps every Linear
  and Conv1d of the decoder. lokr_a: linear_dim 2, alpha 4 (low-rank w2, scale 2); lokr_b: linear_dim 8,
  alpha 16, factor 4, decompose_both (whole w2, low-rank w1 where it is large enough).

Application, as the handler (acestep/core/generation/handler/lora/lifecycle.py, controls.py,
acestep/core/lora/): LoKr first (`_load_lokr_adapter`: apply_preset, create_lycoris from the file's
lokr_config, apply_to, load_weights; strength = `set_multiplier`), then PEFT (`PeftModel.from_pretrained`,
`load_adapter` for the next; strength = every LoRA layer's `scaling[name]` times the scale, as the
registry's scale targets do); several PEFT adapters active at once through `set_adapter([...])` (the
handler activates one; PEFT's forward sums the active ones). The upstream lifecycle module itself imports
acestep.training / debug_utils, which the reference copy lacks: its LoKr steps are repeated below.

`make(out_dir)` writes the adapters, `meta.json` (the cases) and `lora.safetensors`: `in.*` (DiT inputs of
tests/reference/ace_dit.py), `out.<case>` (one decoder call per case), and a whole turbo generation
(`gen.noise`, `gen.latents`, `gen.audio.strided`) with GEN_CASE's adapters, its noise injected as
tests/reference/ace_generate.py does.

    python -m tests.reference.ace_lora tests/fixtures/ace/lora
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
PEFT = {
    "peft_a": dict(r=8, lora_alpha=16, lora_dropout=0.1,
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "peft_b": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "gate_proj",
                   "down_proj", "condition_embedder"], rank_pattern={"down_proj": 2},
                   alpha_pattern={"layers.1.self_attn.q_proj": 3}),
}  # fmt: skip
LOKR = {
    "lokr_a": dict(linear_dim=2, linear_alpha=4),
    "lokr_b": dict(linear_dim=8, linear_alpha=16, factor=4, decompose_both=True),
}
LOKR_BASE = dict(linear_dim=64, linear_alpha=128, factor=-1, decompose_both=False, use_tucker=False,
                 use_scalar=False, weight_decompose=False,
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], full_matrix=False,
                 bypass_mode=False, rs_lora=False, unbalanced_factorization=False)  # fmt: skip
# case -> [(adapter, strength)], LoKr first (the handler's only order for a LoKr with PEFT)
CASES = {
    "peft_a_1": [("peft_a", 1.0)],
    "peft_a_half": [("peft_a", 0.5)],
    "peft_b_1": [("peft_b", 1.0)],
    "peft_ab": [("peft_a", 1.0), ("peft_b", 0.5)],
    "lokr_a_1": [("lokr_a", 1.0)],
    "lokr_a_half": [("lokr_a", 0.5)],
    "lokr_b_1": [("lokr_b", 1.0)],
    "lokr_peft": [("lokr_a", 0.5), ("peft_a", 1.0)],
}
GEN_CASE = "lokr_peft"
GEN = {"caption": "upbeat pop with bright synths", "lyrics": "[Verse]\nHello world", "language": "en",
       "bpm": 120, "keyscale": "C major", "timesignature": "4", "seconds": 10.0, "seed": 5, "steps": 8,
       "shift": 3.0}  # fmt: skip
AUDIO_STRIDE = 37
T_CASE = "tb"  # the ace_dit timestep pair of the DiT calls


def _randomize(params, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


def make_peft(folder: Path, name: str, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    from .ace import load_reference

    decoder = load_reference(FIXTURES, "turbo").decoder
    model = get_peft_model(decoder, LoraConfig(**PEFT[name]))
    _randomize([p for n, p in model.named_parameters() if "lora_" in n], seed)
    model.save_pretrained(str(folder / name))
    (folder / name / "README.md").unlink()  # peft's model card template: not part of the adapter


def _lokr_config(name: str) -> dict:
    return LOKR_BASE | LOKR[name]


def _create_lokr(decoder, c: dict):
    """`_load_lokr_adapter` / `inject_lokr_into_dit`: the network the handler builds from a lokr_config."""
    from lycoris import LycorisNetwork, create_lycoris

    LycorisNetwork.apply_preset({"unet_target_name": c["target_modules"], "target_name": c["target_modules"]})
    return create_lycoris(
        decoder, 1.0, linear_dim=c["linear_dim"], linear_alpha=c["linear_alpha"], algo="lokr",
        factor=c["factor"], decompose_both=c["decompose_both"], use_tucker=c["use_tucker"],
        use_scalar=c["use_scalar"], full_matrix=c["full_matrix"], bypass_mode=c["bypass_mode"],
        rs_lora=c["rs_lora"], unbalanced_factorization=c["unbalanced_factorization"],
    )  # fmt: skip


def make_lokr(folder: Path, name: str, seed: int) -> None:
    from .ace import load_reference

    decoder = load_reference(FIXTURES, "turbo").decoder
    net = _create_lokr(decoder, _lokr_config(name))
    net.apply_to()
    _randomize([p for p in net.parameters()], seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    meta = {
        "algo": "lokr",
        "format": "lycoris",
        "lokr_config": json.dumps(_lokr_config(name), ensure_ascii=True),
    }
    net.save_weights(str(folder / name / "lokr_weights.safetensors"), None, meta)


def adapted_model(folder: Path, adapters: list[tuple[str, float]]):
    """The reference turbo model with the adapters applied as the handler does (module doc)."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from .ace import load_reference

    model = load_reference(FIXTURES, "turbo")
    peft_names = []
    for name, strength in adapters:
        if name in LOKR:  # the handler reads the config back from the file's metadata
            path = folder / name / "lokr_weights.safetensors"
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                c = LOKR_BASE | json.loads(f.metadata()["lokr_config"])
            net = _create_lokr(model.decoder, c)
            net.apply_to()
            model.decoder._lycoris_net = net
            net.load_weights(str(path))
            net.set_multiplier(strength)
        elif not peft_names:
            model.decoder = PeftModel.from_pretrained(model.decoder, str(folder / name), adapter_name=name)
            peft_names.append(name)
        else:
            model.decoder.load_adapter(str(folder / name), adapter_name=name)
            peft_names.append(name)
        if name in PEFT:
            for m in model.decoder.modules():
                if isinstance(m, LoraLayer) and name in m.scaling:
                    m.scaling[name] = m.scaling[name] * strength
    if peft_names:
        model.decoder.base_model.set_adapter(peft_names)
    model.eval()
    torch.set_grad_enabled(False)
    return model


def _generate(model) -> dict:
    """One turbo text2music generation as tests/reference/ace_generate.py runs it (its handler, inputs,
    injected noise, decode)."""
    import torch
    from diffusers import AutoencoderOobleck
    from transformers import AutoModel, AutoTokenizer

    from .ace_conditioning import TEXT_ENCODER, _tokens
    from .ace_generate import _decode, _handler

    handler = _handler()()
    te = FIXTURES / TEXT_ENCODER
    handler.text_tokenizer = AutoTokenizer.from_pretrained(te)
    handler.text_encoder = AutoModel.from_pretrained(te).eval()
    handler.vae = AutoencoderOobleck.from_pretrained(FIXTURES / "vae").eval()
    handler.disable_tqdm, handler.device, handler.dtype = True, "cpu", torch.float32
    handler._empty_cache = lambda: None
    silence = torch.load(FIXTURES / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    handler.silence_latent = silence = silence.transpose(1, 2)
    c = GEN
    meta = handler._build_metadata_dict(c["bpm"], c["keyscale"], c["timesignature"], c["seconds"])
    items = [{"caption": c["caption"], "lyrics": c["lyrics"], "metas": meta, "language": c["language"]}]
    _, text_ids, text_mask, lyric_ids, lyric_mask, _, _ = _tokens(handler, items)
    frames = max(128, handler.create_target_wavs(c["seconds"]).shape[-1] // 1920)
    A = silence.shape[-1]
    noise = torch.randn(1, frames, A, generator=torch.Generator().manual_seed(c["seed"]))
    model.prepare_noise = lambda context_latents, seed: noise.clone()
    latents = model.generate_audio(
        text_hidden_states=handler.infer_text_embeddings(text_ids), text_attention_mask=text_mask,
        lyric_hidden_states=handler.infer_lyric_embeddings(lyric_ids), lyric_attention_mask=lyric_mask,
        refer_audio_acoustic_hidden_states_packed=silence[:, :750, :].clone(),
        refer_audio_order_mask=torch.arange(1), src_latents=handler._get_silence_latent_slice(frames)[None],
        chunk_masks=torch.ones(1, frames, A), is_covers=torch.zeros(1, dtype=torch.bool),
        silence_latent=silence, seed=[c["seed"]], infer_steps=c["steps"], shift=c["shift"], dcw_enabled=False,
    )["target_latents"]  # fmt: skip
    audio, _ = _decode(handler, latents, 512)
    return {"gen.noise": noise, "gen.latents": latents, "gen.audio.strided": audio[..., ::AUDIO_STRIDE]}


def make(out_dir: str | Path) -> Path:
    import numpy as np
    import torch
    from loguru import logger
    from safetensors.numpy import save_file

    from .ace_dit import _decode, _inputs

    logger.disable("acestep")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PEFT):
        make_peft(folder, name, 100 + i)
    for i, name in enumerate(LOKR):
        make_lokr(folder, name, 200 + i)
    out: dict = {}
    inp = None
    for case, adapters in CASES.items():
        model = adapted_model(folder, adapters)
        cfg = model.config
        if inp is None:
            inp = _inputs(cfg.audio_acoustic_hidden_dim, cfg.hidden_size, 3)
            out.update({f"in.{k}": v for k, v in inp.items()})
        t = inp[T_CASE]
        out[f"out.{case}"] = _decode(model, inp, t, t)
        if case == GEN_CASE:
            out.update(_generate(model))
    save_file(
        {k: np.ascontiguousarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
         for k, v in out.items()},
        str(folder / "lora.safetensors"),
    )  # fmt: skip
    body = {"cases": CASES, "gen_case": GEN_CASE, "gen": GEN, "t_case": T_CASE, "audio_stride": AUDIO_STRIDE}
    (folder / "meta.json").write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


live = once_per_session(make, "ace-lora-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "lora"))
