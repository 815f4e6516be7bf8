"""Reference outputs of ACE-Step 1.5's whole text2music generation (the original `acestep` code,
../shared/reference) on the committed tiny checkpoints (tests/fixtures/ace), for
tests/ace_step/test_ace_generate.py.

Per case, the inputs are built by the handler's own code: `MetadataMixin._build_metadata_dict` (bpm, keyscale,
time signature, duration), `ConditioningTextMixin._prepare_text_conditioning_inputs` (prompts, tokens),
`ConditioningEmbedMixin.infer_text_embeddings` / `infer_lyric_embeddings`, `ConditioningTargetMixin.
_get_silence_latent_slice` for max(128, int(round(seconds, 1) * 48000) // 1920) frames (a silent target:
`create_target_wavs` + `_prepare_target_latents_and_wavs`), chunk masks of ones, no cover, the timbre
reference silence[:, :750]. Then the model file's `generate_audio` (turbo or base) with `infer_steps`,
`shift`, guidance and `dcw_enabled=False` passed explicitly and its `prepare_noise` handing back the noise
of `torch.Generator().manual_seed(seed)` (randn (B, T, C)); then the handler's VAE decode:
`VaeDecodeChunksMixin._tiled_decode_inner` (chunk size as the case says, overlap 64) and the peak
normalisation of `GenerateMusicDecodeMixin._decode_generate_music_pred_latents` (its two lines below: the
module imports acestep.gpu_config, which the reference copy lacks).

`make(out_dir)` writes `meta.json` (the cases) and `generate.safetensors`, per case `<case>.`:
`noise` (B, T, C), `latents` (generate_audio's target_latents), `audio.strided` (the normalised decode,
every AUDIO_STRIDE-th sample: the whole clip would be megabytes), `audio.head` / `audio.tail` (the first and
last 4000 samples in full) and `peak`; `silence.tiled`: `_get_silence_latent_slice(1600)` of the turbo
checkpoint's 750-frame silence latent (tiled); and `loud.*`: the decode + normalisation of latents scaled
so the tiny VAE's output exceeds 1 (`loud.latents`, `loud.audio.strided`, `loud.peak`).

    python -m tests.reference.ace_generate tests/fixtures/ace/generate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
AUDIO_STRIDE = 37  # a prime: the kept samples fall on every phase of the VAE's 1920-sample hop
EDGE = 4000
OVERLAP = 64  # tiled_decode's default overlap
CASES = {
    "turbo": {
        "variant": "turbo", "caption": "upbeat pop with bright synths", "lyrics": "[Verse]\nHello world",
        "language": "en", "bpm": 120, "keyscale": "C major", "timesignature": "4", "seconds": 10.0,
        "seeds": [5, 6], "steps": 8, "shift": 3.0, "guidance": 1.0, "interval": [0.0, 1.0], "chunk": 512,
    },
    "turbo_short_tiled": {  # < 5.12 s: 128 frames, cut; decode windows of 96 (overlap reduced to 32)
        "variant": "turbo", "caption": "lofi beat", "lyrics": "[Instrumental]", "language": "unknown",
        "bpm": None, "keyscale": "", "timesignature": "", "seconds": 4.0, "seeds": [11], "steps": 5,
        "shift": 2.0, "guidance": 1.0, "interval": [0.0, 1.0], "chunk": 96,
    },
    "base_cfg": {
        "variant": "base", "caption": "slow jazz ballad", "lyrics": "[Chorus]\nOh oh", "language": "fr",
        "bpm": 70, "keyscale": "F# minor", "timesignature": "3", "seconds": 6.0, "seeds": [21, 22],
        "steps": 6, "shift": 3.0, "guidance": 7.0, "interval": [0.0, 1.0], "chunk": 512,
    },
    "base_interval": {
        "variant": "base", "caption": "ambient drone", "lyrics": "[Instrumental]", "language": "unknown",
        "bpm": None, "keyscale": "", "timesignature": "", "seconds": 6.0, "seeds": [23], "steps": 5,
        "shift": 1.0, "guidance": 4.0, "interval": [0.3, 0.8], "chunk": 512,
    },
}  # fmt: skip
LOUD_SCALE = 40.0
SILENCE_TILED = 1600  # frames: more than the tiny silence latent's 750


def _handler():
    import importlib

    from .ace_conditioning import _handler as text_handler

    base = text_handler()
    target = importlib.import_module("acestep.core.generation.handler.conditioning_target")
    chunks = importlib.import_module("acestep.core.generation.handler.vae_decode_chunks")
    tasks = importlib.import_module("acestep.core.generation.handler.task_utils")
    mixins = (target.ConditioningTargetMixin, chunks.VaeDecodeChunksMixin, tasks.TaskUtilsMixin)
    return type("Handler", (base, *mixins), {})


def _decode(handler, latents, chunk: int):
    """The handler's decode of (B, T, C) latents: tiled, then the peak normalisation
    (generate_music_decode.py: `peak = amax(|wav|, dims 1, 2)`; `wav / peak.clamp(min=1)` if any peak > 1)."""
    import torch

    wavs = handler._tiled_decode_inner(latents.transpose(1, 2).contiguous(), chunk, OVERLAP, False)
    wavs = wavs.float()
    peak = wavs.abs().amax(dim=[1, 2], keepdim=True)
    if torch.any(peak > 1.0):
        wavs = wavs / peak.clamp(min=1.0)
    return wavs, peak


def make(out_dir: str | Path) -> Path:
    import numpy as np
    import torch
    from diffusers import AutoencoderOobleck
    from loguru import logger
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer

    from .ace import load_reference
    from .ace_conditioning import TEXT_ENCODER, _tokens

    logger.disable("acestep")
    torch.set_grad_enabled(False)
    handler = _handler()()
    te = FIXTURES / TEXT_ENCODER
    handler.text_tokenizer = AutoTokenizer.from_pretrained(te)
    handler.text_encoder = AutoModel.from_pretrained(te).eval()
    handler.vae = AutoencoderOobleck.from_pretrained(FIXTURES / "vae").eval()
    handler.disable_tqdm, handler.device, handler.dtype = True, "cpu", torch.float32
    handler._empty_cache = lambda: None
    models = {v: load_reference(FIXTURES, v) for v in ("turbo", "base")}
    out: dict = {}
    for name, case in CASES.items():
        model = models[case["variant"]]
        ddir = FIXTURES / f"acestep-v15-{case['variant']}"
        handler.silence_latent = torch.load(ddir / "silence_latent.pt", weights_only=True).transpose(1, 2)
        silence, B = handler.silence_latent, len(case["seeds"])
        meta = handler._build_metadata_dict(
            case["bpm"], case["keyscale"], case["timesignature"], case["seconds"]
        )
        items = [
            {
                "caption": case["caption"],
                "lyrics": case["lyrics"],
                "metas": meta,
                "language": case["language"],
            }
        ] * B
        _, text_ids, text_mask, lyric_ids, lyric_mask, _, _ = _tokens(handler, items)
        text_states = handler.infer_text_embeddings(text_ids)
        lyric_embeds = handler.infer_lyric_embeddings(lyric_ids)
        # a silent target of the duration: its frames // 1920, at least 128 (_prepare_target_latents_and_wavs)
        frames = max(128, handler.create_target_wavs(case["seconds"]).shape[-1] // 1920)
        src = handler._get_silence_latent_slice(frames)[None].expand(B, -1, -1).clone()
        A = silence.shape[-1]
        noise = torch.cat(
            [torch.randn(1, frames, A, generator=torch.Generator().manual_seed(s)) for s in case["seeds"]]
        )
        model.prepare_noise = lambda context_latents, seed, _n=noise: _n.clone()
        kwargs = dict(
            text_hidden_states=text_states,
            text_attention_mask=text_mask,
            lyric_hidden_states=lyric_embeds,
            lyric_attention_mask=lyric_mask,
            refer_audio_acoustic_hidden_states_packed=silence[:, :750, :].expand(B, -1, -1).clone(),
            refer_audio_order_mask=torch.arange(B),
            src_latents=src,
            chunk_masks=torch.ones(B, frames, A),
            is_covers=torch.zeros(B, dtype=torch.bool),
            silence_latent=silence,
            seed=case["seeds"],
            infer_steps=case["steps"],
            shift=case["shift"],
            dcw_enabled=False,
        )
        if case["variant"] != "turbo":
            kwargs.update(
                diffusion_guidance_scale=case["guidance"],
                cfg_interval_start=case["interval"][0],
                cfg_interval_end=case["interval"][1],
            )
        latents = model.generate_audio(**kwargs)["target_latents"]
        audio, peak = _decode(handler, latents, case["chunk"])
        audio = audio.numpy()
        out.update(
            {
                f"{name}.noise": noise.numpy(),
                f"{name}.latents": latents.numpy(),
                f"{name}.audio.strided": audio[..., ::AUDIO_STRIDE],
                f"{name}.audio.head": audio[..., :EDGE],
                f"{name}.audio.tail": audio[..., -EDGE:],
                f"{name}.peak": peak.reshape(-1).numpy(),
            }
        )
        case["frames"] = frames
    # a song longer than the shipped silence latent: the slice is the latent tiled
    turbo = FIXTURES / "acestep-v15-turbo" / "silence_latent.pt"
    handler.silence_latent = torch.load(turbo, weights_only=True).transpose(1, 2)
    out["silence.tiled"] = handler._get_silence_latent_slice(SILENCE_TILED)[None]
    loud = torch.from_numpy(out["turbo.latents"][:, :140]) * LOUD_SCALE
    audio, peak = _decode(handler, loud, 512)
    assert (peak > 1).any(), "the loud case does not exceed 1"
    out.update({"loud.latents": loud.numpy(), "loud.audio.strided": audio.numpy()[..., ::AUDIO_STRIDE]})
    out = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    out["loud.peak"] = peak.reshape(-1).numpy()

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()},
        str(folder / "generate.safetensors"),
    )
    body = {"cases": CASES, "audio_stride": AUDIO_STRIDE, "edge": EDGE, "loud_scale": LOUD_SCALE}
    (folder / "meta.json").write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


live = once_per_session(make, "ace-generate-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "generate"))
