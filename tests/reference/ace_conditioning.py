"""Reference outputs of ACE-Step 1.5's conditioning (the original `acestep` code, ../shared/reference) on the
committed tiny checkpoints (tests/fixtures/ace), for tests/ace_step/test_qwen3_encoder.py and
test_ace_conditioning.py.

The prompts go through the handler's own code: `ConditioningTextMixin._prepare_text_conditioning_inputs`
(SFT_GEN_PROMPT with the instruction, caption and metas; the lyric prompt with its language; the tokenizer
called with `padding="longest", truncation=True, max_length=256 / 2048` per item, the batch then right-padded
with the pad id) and `ConditioningEmbedMixin.infer_text_embeddings` / `infer_lyric_embeddings` (the Qwen3Model
called without an attention mask; the lyric path only looks up token embeddings). Then
`AceStepConditionGenerationModel.prepare_condition` of the tiny turbo checkpoint, plus its
`tokenize` / `detokenize` (5 Hz FSQ codes and 25 Hz hints) on the same source latents.

`make(out_dir)` writes `meta.json` (the inputs) and `conditioning.safetensors`, per case `<case>.`:
- `text_ids`, `text_mask`, `lyric_ids`, `lyric_mask`: the handler's padded batch tensors;
- `text_states` (Qwen3Model.last_hidden_state), `lyric_embeds` (embed_tokens);
- `refer_packed`, `refer_order`: the packed timbre references (the silence latent [:, :750] for an item
  without reference audio, as `infer_refer_latent` does; seeded random latents standing in for encoded
  reference audio otherwise); `src_latents`, `chunk_masks`, `is_covers`;
- `encoder_states`, `encoder_mask`, `context_latents`: prepare_condition's outputs; `lyric_encoded`,
  `timbre_embs`, `timbre_mask`: the encoder's parts; `codes`, `quantized`, `hints`: tokenize's indices and
  quantized 5 Hz states and the detokenized 25 Hz hints;
- `trunc.<name>.{text,lyric}_ids`: tokens only, for prompts long enough to be truncated (256 / 2048);
- `fsq.{latents,codes,quantized,hints}`: tokenize / detokenize of seeded random latents (not silence);
- `variant.xl_timbre`: xl_turbo's AceStepTimbreEncoder with the turbo weights on `pair.refer_packed`;
  `variant.no_sliding_lyric`: the lyric encoder with `use_sliding_window` false on the pair's lyrics;
- `tokens.<i>`: AutoTokenizer(text).input_ids for the odd strings of TOKEN_TEXTS.

    python -m tests.reference.ace_conditioning tests/fixtures/ace/conditioning
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
TEXT_ENCODER = "Qwen3-Embedding-0.6B"
LATENT_FRAMES = 23  # not a multiple of pool_window_size 5: tokenize pads with silence
TIMBRE_FRAMES = 750
DEFAULT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"  # constants.py

# name -> items (caption, lyrics, metas (dict | str | None), language, instruction | None) + references.
# references: per item None (no reference audio: the silence latent) or the number of reference clips.
CASES = {
    "single": {
        "items": [
            {
                "caption": "upbeat pop with bright synths",
                "lyrics": "[Verse]\nHello world, here we go\n[Chorus]\nSing it loud",
                "metas": {"bpm": 120, "timesignature": "4", "keyscale": "C major", "duration": 30},
                "language": "en",
                "instruction": None,
            }
        ],
        "references": [None],
        "is_covers": [False],
    },
    "pair": {
        "items": [
            {
                "caption": "slow jazz ballad, brushed drums",
                "lyrics": "[Instrumental]",
                "metas": None,
                "language": "unknown",
                # no colon: _format_instruction adds one
                "instruction": "Repaint the mask area based on the given conditions",
            },
            {
                "caption": "Café déjà vu — 日本の音楽 🎵, punchy drums",
                "lyrics": "[Verse]\nLa la la, one two three\n[Chorus]\nOh oh\n[Bridge]\nwhisper low and slow",
                "metas": "- bpm: 90\n- timesignature: 3\n- keyscale: A minor\n- duration: 12 seconds\n",
                "language": "fr",
                "instruction": None,
            },
        ],
        "references": [2, None],  # item 0: two reference clips; item 1: none
        "is_covers": [False, True],  # item 1 takes the detokenized hints as source
    },
}
TRUNCATION = {
    "long": {"caption": "drum fill, " * 120, "lyrics": "la la la oh yeah " * 700, "language": "en"},
}
TOKEN_TEXTS = [
    "<|endoftext|>",
    "a<|im_start|>b<|im_end|>",
    "  two  spaces\n\n\ttab\r\nCRLF",
    "naïve Ｆｕｌｌ ｗｉｄｔｈ e\u0301",  # NFC normalisation
    "I'm we'll THEY'RE 12345",
    "",
]


def _handler():
    """The handler mixins that build the prompts and embeddings, imported without the handler package's
    __init__ (which pulls in the GPU / service modules)."""
    import importlib

    from .ace import import_ace

    import_ace()
    base = Path(sys.modules["acestep"].__path__[0]) / "core" / "generation" / "handler"
    for name, path in (
        ("acestep.core", base.parents[1]),
        ("acestep.core.generation", base.parent),
        ("acestep.core.generation.handler", base),
    ):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(path)]
            sys.modules[name] = mod
    mixins = [
        importlib.import_module(f"acestep.core.generation.handler.{m}")
        for m in ("prompt_utils", "metadata_utils", "conditioning_text", "conditioning_embed")
    ]
    classes = (
        mixins[0].PromptMixin,
        mixins[1].MetadataMixin,
        mixins[2].ConditioningTextMixin,
        mixins[3].ConditioningEmbedMixin,
    )
    return type("Handler", classes, {})


def _tokens(handler, items) -> tuple:
    return handler._prepare_text_conditioning_inputs(
        len(items),
        [
            it.get("instruction") or "Fill the audio semantic mask based on the given conditions:"
            for it in items
        ],
        [it["caption"] for it in items],
        [it["lyrics"] for it in items],
        handler._parse_metas([it.get("metas") for it in items]),
        [it["language"] for it in items],
        1.0,
    )


def _variants(model, lyric_embeds, lyric_mask, refer_packed, refer_order) -> dict:
    """The tiny turbo encoders' weights in the code paths its config does not take: the XL timbre encoder
    (xl_turbo's class: prepends its special token) and a lyric encoder with `use_sliding_window` false."""
    import copy
    import importlib

    xl = importlib.import_module("acestep.models.xl_turbo.modeling_acestep_v15_xl_turbo")
    turbo = importlib.import_module("acestep.models.turbo.modeling_acestep_v15_turbo")
    timbre = xl.AceStepTimbreEncoder(model.config).eval()
    timbre.load_state_dict(model.encoder.timbre_encoder.state_dict())
    embs, _ = timbre(refer_packed, refer_order)
    cfg = copy.deepcopy(model.config)
    cfg.use_sliding_window, cfg.sliding_window = False, None
    lyric = turbo.AceStepLyricEncoder(cfg).eval()
    lyric.load_state_dict(model.encoder.lyric_encoder.state_dict())
    states = lyric(inputs_embeds=lyric_embeds, attention_mask=lyric_mask).last_hidden_state
    return {"variant.xl_timbre": embs, "variant.no_sliding_lyric": states}


def make(out_dir: str | Path) -> Path:
    import numpy as np
    import torch
    from loguru import logger
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer

    from .ace import load_reference

    logger.disable("acestep")  # the handler logs every prompt at INFO
    torch.set_grad_enabled(False)
    te = FIXTURES / TEXT_ENCODER
    handler = _handler()()
    handler.text_tokenizer = AutoTokenizer.from_pretrained(te)
    handler.text_encoder = AutoModel.from_pretrained(te).eval()
    model = load_reference(FIXTURES, "turbo")
    ddir = FIXTURES / "acestep-v15-turbo"
    silence = torch.load(ddir / "silence_latent.pt", weights_only=True).transpose(1, 2)  # as the handler
    A = silence.shape[-1]
    out: dict = {}
    g = torch.Generator().manual_seed(3)
    for name, case in CASES.items():
        items = case["items"]
        _, text_ids, text_mask, lyric_ids, lyric_mask, _, _ = _tokens(handler, items)
        text_states = handler.infer_text_embeddings(text_ids)
        lyric_embeds = handler.infer_lyric_embeddings(lyric_ids)
        packed, order = [], []
        for b, refs in enumerate(case["references"]):
            if refs is None:
                packed.append(silence[:, :TIMBRE_FRAMES, :])
                order.append(b)
            else:
                for _ in range(refs):
                    packed.append(torch.randn(1, TIMBRE_FRAMES, A, generator=g) * 0.8)
                    order.append(b)
        packed, order = torch.cat(packed, 0), torch.tensor(order, dtype=torch.long)
        B = len(items)
        src = silence[:, :LATENT_FRAMES, :].expand(B, -1, -1).clone()
        chunk = torch.ones(B, LATENT_FRAMES, A)
        covers = torch.tensor(case["is_covers"])
        mask = torch.ones(B, LATENT_FRAMES)
        enc, enc_mask, context = model.prepare_condition(
            text_hidden_states=text_states,
            text_attention_mask=text_mask,
            lyric_hidden_states=lyric_embeds,
            lyric_attention_mask=lyric_mask,
            refer_audio_acoustic_hidden_states_packed=packed,
            refer_audio_order_mask=order,
            hidden_states=src,
            attention_mask=mask,
            silence_latent=silence,
            src_latents=src,
            chunk_masks=chunk,
            is_covers=covers,
        )
        lyric_encoded = model.encoder.lyric_encoder(inputs_embeds=lyric_embeds, attention_mask=lyric_mask)
        timbre, timbre_mask = model.encoder.timbre_encoder(packed, order)
        quantized, codes, _ = model.tokenize(src, silence, mask)
        hints = model.detokenize(quantized)
        arrays = {
            "text_ids": text_ids,
            "text_mask": text_mask,
            "lyric_ids": lyric_ids,
            "lyric_mask": lyric_mask,
            "text_states": text_states,
            "lyric_embeds": lyric_embeds,
            "refer_packed": packed,
            "refer_order": order,
            "src_latents": src,
            "chunk_masks": chunk,
            "is_covers": covers,
            "encoder_states": enc,
            "encoder_mask": enc_mask,
            "context_latents": context,
            "lyric_encoded": lyric_encoded.last_hidden_state,
            "timbre_embs": timbre,
            "timbre_mask": timbre_mask,
            "codes": codes,
            "quantized": quantized,
            "hints": hints,
        }
        out.update({f"{name}.{k}": v for k, v in arrays.items()})
    pair = {k: out[f"pair.{k}"] for k in ("lyric_embeds", "lyric_mask", "refer_packed", "refer_order")}
    out.update(_variants(model, **pair))
    # tokenize / detokenize on latents that are not silence (codes of every level; 12 frames: padded)
    lat = torch.randn(2, 12, A, generator=g) * 1.5
    quantized, codes, _ = model.tokenize(lat, silence, torch.ones(2, 12))
    out.update({"fsq.latents": lat, "fsq.codes": codes, "fsq.quantized": quantized})
    out["fsq.hints"] = model.detokenize(quantized)
    for name, item in TRUNCATION.items():
        _, text_ids, _, lyric_ids, _, _, _ = _tokens(handler, [{**item, "metas": None}])
        assert text_ids.shape[1] == 256 and lyric_ids.shape[1] == 2048, "the prompt was not truncated"
        out[f"trunc.{name}.text_ids"], out[f"trunc.{name}.lyric_ids"] = text_ids, lyric_ids
    for i, text in enumerate(TOKEN_TEXTS):
        out[f"tokens.{i}"] = torch.tensor(handler.text_tokenizer(text).input_ids, dtype=torch.int32)

    def np_of(v):
        v = v.detach().contiguous()
        return v.to(torch.int32).numpy() if not v.is_floating_point() else v.float().numpy()

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(np_of(v)) for k, v in out.items()}, str(folder / "conditioning.safetensors")
    )
    meta = {
        "cases": CASES,
        "truncation": TRUNCATION,
        "token_texts": TOKEN_TEXTS,
        "latent_frames": LATENT_FRAMES,
        "timbre_frames": TIMBRE_FRAMES,
        "pad_id": handler.text_tokenizer.pad_token_id,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


live = once_per_session(make, "ace-conditioning-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "conditioning"))
