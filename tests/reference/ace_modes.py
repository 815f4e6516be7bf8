"""Reference outputs of ACE-Step 1.5's generation tasks (repaint, cover from audio / from codes, retake,
timbre reference, lego, extract, complete) by the original `acestep` handler (../shared/reference) on the
committed tiny checkpoints (tests/fixtures/ace), for tests/ace_step/test_ace_modes.py.

Each case runs the handler's own request path as `generate_music` does (its LM-free part):
`_resolve_generate_music_task` (text2music + codes -> cover), `_prepare_reference_and_source_audio`
(`process_src_audio` / `process_reference_audio` of float WAV files of the case's audio),
`_prepare_generate_music_service_inputs` (durations, padding, repaint window), then `service_generate`
(`_prepare_batch`, `preprocess_batch`, `_build_service_generate_kwargs`, the model file's `generate_audio`)
with the `generate_music` defaults it would pass (`_resolve_repaint_config("balanced", 0.5)`: injection 0.5,
12 crossfade frames, chunk_mask_mode "auto"), dcw_enabled=False and the task's instruction
(`generate_instruction`, as the UI sets it); then the handler's tiled VAE decode + peak normalisation
(tests/reference/ace_generate.py) and, for repaint / lego, `apply_repaint_waveform_splice` (0.025 s).

What is random in the reference is fixed and saved, to be injected into ours:
- the DiT noise: `prepare_noise` returns randn of `torch.Generator().manual_seed(seed)` per item (retake: the
  second call, of the retake seeds);
- the VAE posterior: `latent_dist.sample()` draws from torch's global generator; every VAE encode is
  wrapped so its draw comes from a generator seeded per call and is saved (`vae_noise.<k>`, in call order);
- the timbre segments: `process_reference_audio`'s `random.randint` calls are recorded (`offsets`);
- `acestep.gpu_config` (absent from the reference copy) is stood in with 24 GB, so the handler's PyTorch
  encode takes 30 s windows as its MLX path (and ours) does.

    python -m tests.reference.ace_modes tests/fixtures/ace/modes
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

from .live import once_per_session

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ace"
AUDIO_STRIDE = 37
SR = 48000
_SRC = {"seconds": 6.4, "seed": 1}  # 160 frames: a whole number of 1920-sample hops
_REF = {"seconds": 12.0, "seed": 2}  # shorter than 30 s: repeated, then three random segments
_COMMON = {"lyrics": "[Verse]\nHello", "language": "en", "bpm": 100, "keyscale": "A minor",
           "timesignature": "4", "seeds": [5]}  # fmt: skip
CASES = {
    "repaint_turbo": {
        **_COMMON, "variant": "turbo", "task": "repaint", "caption": "rock ballad", "src": _SRC,
        "repaint": [1.5, 4.0], "steps": 4, "shift": 3.0, "seeds": [5, 6],
    },
    "cover_audio_turbo": {
        **_COMMON, "variant": "turbo", "task": "cover", "caption": "jazz cover", "src": _SRC, "steps": 5,
        "shift": 3.0, "cover_strength": 0.6, "cover_noise": 0.3,
    },
    "cover_codes_base": {
        **_COMMON, "variant": "base", "task": "text2music", "caption": "synth pop", "codes": 30, "steps": 4,
        "shift": 3.0, "guidance": 3.0, "cover_strength": 0.5,
    },
    "retake_timbre_base": {
        **_COMMON, "variant": "base", "task": "text2music", "caption": "folk song", "seconds": 6.0,
        "steps": 4, "shift": 1.0, "guidance": 2.5, "retake": [0.4, 77], "ref": _REF,
    },
    "repaint_base": {
        **_COMMON, "variant": "base", "task": "repaint", "caption": "piano piece", "src": _SRC,
        "repaint": [0.0, 2.2], "steps": 4, "shift": 3.0, "guidance": 3.0,
    },
    "lego_base": {
        **_COMMON, "variant": "base", "task": "lego", "caption": "add a guitar", "src": _SRC,
        "repaint": [1.0, 5.0], "track": "guitar", "steps": 3, "shift": 3.0, "guidance": 2.0,
    },
    "extract_base": {
        **_COMMON, "variant": "base", "task": "extract", "caption": "drums only", "src": _SRC,
        "track": "drums", "steps": 2, "shift": 3.0, "guidance": 2.0,
    },
    "complete_base": {
        **_COMMON, "variant": "base", "task": "complete", "caption": "full band", "src": _SRC,
        "track": "bass", "steps": 2, "shift": 3.0, "guidance": 2.0,
    },
}  # fmt: skip


def test_audio(seconds: float, seed: int):
    """A stereo test clip: two sines and noise, |x| < 1 (float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 1.0) + 0.1 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


def test_codes(n: int, seed: int = 4):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 64000, size=n).astype(np.int32)


def _handler():
    import importlib

    from .ace_generate import _handler as gen_handler

    base = gen_handler()
    # one stand-in shared with the planner's builder (ace_planner.py): each adds only what it needs
    stand_in = sys.modules.setdefault("acestep.gpu_config", types.ModuleType("acestep.gpu_config"))
    stand_in.get_gpu_memory_gb = lambda: 24.0
    names = {
        "generate_music_request": "GenerateMusicRequestMixin", "padding_utils": "PaddingMixin",
        "batch_prep": "BatchPrepMixin", "conditioning_batch": "ConditioningBatchMixin",
        "conditioning_masks": "ConditioningMaskMixin", "audio_codes": "AudioCodesMixin",
        "io_audio": "IoAudioMixin", "vae_encode": "VaeEncodeMixin",
        "vae_encode_chunks": "VaeEncodeChunksMixin", "service_generate": "ServiceGenerateMixin",
        "service_generate_request": "ServiceGenerateRequestMixin",
        "service_generate_execute": "ServiceGenerateExecuteMixin",
        "service_generate_outputs": "ServiceGenerateOutputsMixin",
    }  # fmt: skip
    mods = {m: importlib.import_module(f"acestep.core.generation.handler.{m}") for m in names}
    mixins = tuple(getattr(mods[m], c) for m, c in names.items())
    return type("Handler", (base, *mixins), {}), mods


class _VaeNoise:
    """Wraps `vae.encode` so each posterior draw is torch.randn of a generator seeded per call; keeps them."""

    def __init__(self, vae):
        self.draws, self._encode = [], vae.encode
        vae.encode = self

    def __call__(self, x, *args, **kwargs):
        import torch

        out = self._encode(x, *args, **kwargs)
        dist = out.latent_dist
        noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(1000 + len(self.draws)))
        self.draws.append(noise.numpy())
        dist.sample = lambda generator=None, _n=noise, _d=dist: _d.mean + _d.std * _n
        return out


def _run_case(handler, mods, model, name: str, case: dict, work: Path) -> dict:
    import random

    import soundfile as sf
    import torch

    from .ace_generate import _decode

    out: dict = {}
    src_path = ref_path = None
    if "src" in case:
        audio = test_audio(**case["src"])
        src_path = work / f"{name}.src.wav"
        sf.write(src_path, audio.T, SR, subtype="FLOAT")
    if "ref" in case:
        audio = test_audio(**case["ref"])
        ref_path = work / f"{name}.ref.wav"
        sf.write(ref_path, audio.T, SR, subtype="FLOAT")
    codes = ""
    if "codes" in case:
        ints = test_codes(case["codes"])
        out[f"{name}.codes"] = ints
        codes = "".join(f"<|audio_code_{c}|>" for c in ints)
    seeds = case["seeds"]
    B = len(seeds)
    offsets: list[int] = []
    real_randint = random.randint

    def randint(a, b):
        v = real_randint(a, b)
        offsets.append(v)
        return v

    mods["io_audio"].random = types.SimpleNamespace(randint=randint)
    vae_noise = _VaeNoise(handler.vae)
    track = case.get("track")
    text = handler.generate_instruction(case["task"], track, [track] if track else None)
    task, instruction = handler._resolve_generate_music_task(case["task"], codes, text)
    refer_audios, src, err = handler._prepare_reference_and_source_audio(
        str(ref_path) if ref_path else None, str(src_path) if src_path else None, codes, B, task
    )
    assert err is None, err
    if src is not None:
        duration = src.shape[-1] / SR
    elif codes:
        duration = case["codes"] * 5 * 1920 / SR  # ours: the codes' length (tests/ace_step/test_ace_modes.py)
    else:
        duration = case["seconds"]
    window = case.get("repaint", [0.0, None])
    inputs = handler._prepare_generate_music_service_inputs(
        B, src, duration, case["caption"], "", case["lyrics"], case["language"], instruction,
        case["bpm"], case["keyscale"], case["timesignature"], task, codes, window[0], window[1], "auto",
    )  # fmt: skip
    A = handler.silence_latent.shape[-1]
    noises: list = []

    def prepare_noise(context_latents, seed):
        seed = seed if isinstance(seed, list) else [seed]
        n = torch.cat(
            [
                torch.randn(1, context_latents.shape[1], A, generator=torch.Generator().manual_seed(s))
                for s in seed
            ]
        )
        noises.append(n.numpy())
        return n

    model.prepare_noise = prepare_noise
    retake = case.get("retake", [0.0, None])
    result = handler.service_generate(
        captions=inputs["captions_batch"], global_captions=inputs["global_captions_batch"],
        lyrics=inputs["lyrics_batch"], metas=inputs["metas_batch"],
        vocal_languages=inputs["vocal_languages_batch"], refer_audios=refer_audios,
        target_wavs=inputs["target_wavs_tensor"], infer_steps=case["steps"],
        guidance_scale=case.get("guidance", 1.0), seed=seeds,
        repainting_start=inputs["repainting_start_batch"],
        repainting_end=inputs["repainting_end_batch"], instructions=inputs["instructions_batch"],
        audio_cover_strength=case.get("cover_strength", 1.0),
        cover_noise_strength=case.get("cover_noise", 0.0),
        shift=case["shift"], audio_code_hints=inputs["audio_code_hints_batch"],
        chunk_mask_modes=inputs["chunk_mask_modes_batch"], repaint_crossfade_frames=12,
        repaint_injection_ratio=0.5, dcw_enabled=False, task_type=task,
        retake_seed=[retake[1]] * B if retake[0] > 0 else None, retake_variance=retake[0],
    )  # fmt: skip
    latents = result["target_latents"]
    audio, _ = _decode(handler, latents, 512)
    if inputs["repainting_start_batch"] is not None:
        audio = mods["repaint_waveform_splice"].apply_repaint_waveform_splice(
            audio, inputs["target_wavs_tensor"], inputs["repainting_start_batch"],
            inputs["repainting_end_batch"], SR, 0.05 * (1.0 - 0.5),
        )  # fmt: skip
    audio = audio.numpy()
    handler.vae.encode = vae_noise._encode
    mods["io_audio"].random = random
    out.update(
        {
            f"{name}.noise": noises[0],
            f"{name}.latents": latents.numpy(),
            f"{name}.audio.strided": audio[..., ::AUDIO_STRIDE],
            f"{name}.audio.head": audio[..., :4000],
        }
    )
    if len(noises) > 1:
        out[f"{name}.retake_noise"] = noises[1]
    for k, d in enumerate(vae_noise.draws):
        out[f"{name}.vae_noise.{k}"] = d
    case["offsets"] = offsets
    case["samples"] = int(audio.shape[-1])
    case["vae_draws"] = len(vae_noise.draws)
    return out


def make(out_dir: str | Path) -> Path:
    import importlib

    import numpy as np
    import torch
    from diffusers import AutoencoderOobleck
    from loguru import logger
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer

    from .ace import load_reference
    from .ace_conditioning import TEXT_ENCODER

    logger.disable("acestep")
    torch.set_grad_enabled(False)
    cls, mods = _handler()
    mods["repaint_waveform_splice"] = importlib.import_module(
        "acestep.core.generation.handler.repaint_waveform_splice"
    )
    handler = cls()
    te = FIXTURES / TEXT_ENCODER
    handler.text_tokenizer = AutoTokenizer.from_pretrained(te)
    handler.text_encoder = AutoModel.from_pretrained(te).eval()
    handler.vae = AutoencoderOobleck.from_pretrained(FIXTURES / "vae").eval()
    handler.disable_tqdm, handler.device, handler.dtype = True, "cpu", torch.float32
    handler.sample_rate, handler.batch_size = SR, 1
    handler.use_mlx_vae, handler.mlx_vae, handler.use_mlx_dit, handler.mlx_decoder = False, None, False, None
    handler._empty_cache = lambda: None
    handler._load_model_context = lambda *a, **k: __import__("contextlib").nullcontext()
    handler._ensure_silence_latent_on_device = lambda: None
    handler._get_vae_dtype = lambda: torch.float32
    # memory_utils.is_silence (its module imports GPU helpers the reference copy lacks)
    handler.is_silence = lambda audio: bool(torch.all(audio.abs() < 1e-6))
    models = {v: load_reference(FIXTURES, v) for v in ("turbo", "base")}
    out: dict = {}
    work = Path(tempfile.mkdtemp(prefix="ace-modes-"))
    for name, case in CASES.items():
        model = models[case["variant"]]
        handler.model, handler.config = model, model.config
        ddir = FIXTURES / f"acestep-v15-{case['variant']}"
        handler.silence_latent = torch.load(ddir / "silence_latent.pt", weights_only=True).transpose(1, 2)
        out.update(_run_case(handler, mods, model, name, case, work))
    # the cover's codes: the tokenizer's FSQ indices of the src clip's latents (convert_src_audio_to_codes)
    model = models["turbo"]
    handler.silence_latent = torch.load(
        FIXTURES / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True
    ).transpose(1, 2)
    lat = torch.from_numpy(out["repaint_turbo.latents"][:1, :158])  # 158 frames: not a multiple of 5
    _, indices, _ = model.tokenize(lat, handler.silence_latent, torch.ones(1, lat.shape[1], dtype=torch.bool))
    out["codes.latents"], out["codes.indices"] = lat.numpy(), indices.numpy().astype(np.int32)

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        k: np.ascontiguousarray(v, dtype=np.int32 if v.dtype.kind in "iu" else np.float32)
        for k, v in out.items()
    }
    save_file(arrays, str(folder / "modes.safetensors"))
    body = {"cases": CASES, "audio_stride": AUDIO_STRIDE}
    (folder / "meta.json").write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


live = once_per_session(make, "ace-modes-")  # the tests' rerun of the reference


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else FIXTURES / "modes"))
