"""An ACE-Step 1.5 checkpoint -> our MLX folder (config.json, model.safetensors, the Qwen3 tokenizer files).

The released layout (`huggingface-cli download ACE-Step/Ace-Step1.5 --local-dir checkpoints`, then the
other DiTs into `checkpoints/acestep-v15-base/`, ...): a DiT folder (`config.json` with model_type
"acestep", `model.safetensors`, `silence_latent.pt`) with `vae/` and `Qwen3-Embedding-0.6B/` beside it.
The converter takes the DiT folder or the repo folder holding `acestep-v15-turbo/`, and finds the VAE and
text encoder
- where the `components` convert setting says (a folder holding both, or a repo id), else
- in the repo folder given, or beside the DiT folder (one level up: the `checkpoints/` layout), else
- for a DiT named by repo id (ACE-Step/acestep-v15-base, -sft): in the main repo ACE-Step/Ace-Step1.5.

`silence_latent.pt` is a pickle: it is read only with `torch.load(weights_only=True)` (which never runs code;
torch is the optional `[torch]` extra) and stored in our safetensors, so loading needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

from ..converted import write_folder
from ..errors import UserError
from ..family import ConvertJob
from ..hub import is_repo_id, read_json
from ..progress import eval_weights
from ..quantize import model_weights, quantize_model
from ..weights import TORCH_INSTALL_HINT, Checkpoint, cast, dtype_name, read_tensors
from .family import (
    COMPONENT_PATTERNS,
    FAMILY,
    MAIN_REPO,
    MODEL_TYPE,
    SILENCE_FILE,
    TEXT_ENCODER_FOLDER,
    TURBO_FOLDER,
    VAE_FOLDER,
    is_dit_folder,
)
from .full_model import TIMBRE_FRAMES, AceStepModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what text.qwen3.Qwen3Tokenizer reads
VAE_STEM = "diffusion_pytorch_model"


def _json(path: Path, what: str) -> dict[str, Any]:
    data = read_json(path)
    if data is None:
        raise UserError(f"{path.parent} has no {path.name}; {what}")
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; re-download it")
    return data


def dit_folder(src: Path) -> Path:
    """The DiT folder of what the user named: the folder itself, or the repo folder's acestep-v15-turbo/
    (else its only acestep-v15-* DiT)."""
    src = Path(src)
    if is_dit_folder(src):
        return src
    if is_dit_folder(src / TURBO_FOLDER):
        return src / TURBO_FOLDER
    found = [d for d in sorted(src.glob("acestep-v15-*")) if d.is_dir() and is_dit_folder(d)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(d.name for d in found)
        raise UserError(f"{src} holds several ACE-Step DiTs ({names}); name the DiT folder itself")
    raise UserError(f"{src} holds no ACE-Step 1.5 DiT (a config.json with model_type '{MODEL_TYPE}')")


def _has_components(folder: Path) -> bool:
    return (folder / VAE_FOLDER / "config.json").is_file() and (
        folder / TEXT_ENCODER_FOLDER / "config.json"
    ).is_file()


def _missing(folder: Path) -> str:
    gone = [f"{n}/" for n in (VAE_FOLDER, TEXT_ENCODER_FOLDER) if not (folder / n / "config.json").is_file()]
    return " and ".join(gone)


def components_folder(job: ConvertJob, src: Path, dit: Path) -> Path:
    """The folder holding vae/ and Qwen3-Embedding-0.6B/ (module doc)."""
    named = job.options.get("components")
    if named:
        folder = job.fetch(str(named))
        if not _has_components(folder):
            raise UserError(
                f"--components '{named}' lacks {_missing(folder)} (the ACE-Step VAE / text encoder)"
            )
        return folder
    for folder in dict.fromkeys((Path(src), dit.parent)):
        if _has_components(folder):
            return folder
    if is_repo_id(job.source) and not Path(job.source).expanduser().exists():
        # only the VAE and the text encoder: not the main repo's turbo DiT (about 4.8 GB) nor its LM
        folder = job.fetch(MAIN_REPO, COMPONENT_PATTERNS)
        if not _has_components(folder):
            raise UserError(f"{MAIN_REPO} lacks {_missing(folder)}; re-download it")
        return folder
    raise UserError(
        f"{dit} has no {_missing(dit.parent)} beside it (the ACE-Step VAE and text encoder); download "
        f"{MAIN_REPO} next to it or pass --components FOLDER|{MAIN_REPO}"
    )


def read_silence(path: Path) -> mx.array:
    """silence_latent.pt (1, C, T) -> (1, T, C) float32, read with torch.load(weights_only=True) only."""
    if not path.is_file():
        raise UserError(
            f"{path.parent} has no {path.name} (the silence latent); download the whole DiT folder"
        )
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path.name} is a pickle; reading it safely needs PyTorch: {TORCH_INSTALL_HINT}"
        ) from None
    try:
        t = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad or unsafe pickle
        raise UserError(f"cannot read {path} safely with torch.load(weights_only=True): {e}") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 1 or not t.is_floating_point():
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise UserError(f"{path} must hold a (1, channels, frames) float tensor, got {shape}")
    return mx.array(t.detach().float().transpose(1, 2).contiguous().numpy())


def convert_ace_step(job: ConvertJob) -> None:
    """Convert `job.src` into `job.out`: every tensor of the DiT, VAE and Qwen3 checkpoints used (strict),
    the silence latent stored, weights written in `job.dtype` (None keeps them; the silence latent stays
    float32); `job.quantize_bits` then quantizes the DiT's linear layers."""
    src = Path(job.src)
    dit = dit_folder(src)
    dit_cfg = _json(dit / "config.json", "not an ACE-Step checkpoint")
    silence = read_silence(dit / SILENCE_FILE)
    comp = components_folder(job, src, dit)
    te_dir, vae_dir = comp / TEXT_ENCODER_FOLDER, comp / VAE_FOLDER
    te_cfg = _json(te_dir / "config.json", "not a Qwen3 text encoder")
    vae_cfg = _json(vae_dir / "config.json", "not a VAE")
    if not (te_dir / "tokenizer.json").is_file():
        raise UserError(f"{te_dir} has no tokenizer.json (the Qwen3 tokenizer); re-download it")
    config = {"dit": dit_cfg, "text_encoder": te_cfg, "vae": vae_cfg, "silence_frames": int(silence.shape[1])}
    if silence.shape[1] < TIMBRE_FRAMES:
        raise UserError(
            f"{dit / SILENCE_FILE} has {silence.shape[1]} frames; the model needs {TIMBRE_FRAMES}"
        )
    model = AceStepModel(config)
    ckpt = Checkpoint(read_tensors(dit, allow_pickle=False), name=f"checkpoint {dit}")
    te_ckpt = Checkpoint(read_tensors(te_dir, allow_pickle=False), name=f"text encoder {te_dir}")
    vae_ckpt = Checkpoint(read_tensors(vae_dir, VAE_STEM, allow_pickle=False), name=f"VAE {vae_dir}")
    weights = model.sanitize(ckpt, te_ckpt, vae_ckpt, silence)
    weights = {**cast(weights, job.dtype), "silence_latent": silence}
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"checkpoint does not fit its config.json: {e}") from None
    eval_weights(weights, job.progress)
    meta = {
        "dtype": job.dtype or dtype_name({k: v for k, v in weights.items() if k.startswith("dit.")}),
        "source": job.source,
        "components_source": str(comp),
    }
    if job.quantize_bits is not None:
        meta["quantization"] = quantize_model(
            model, FAMILY.quantize, job.quantize_bits, job.quantize_group_size
        )
        weights = model_weights(model)
    files = [te_dir / n for n in TOKENIZER_FILES if (te_dir / n).is_file()]
    write_folder(job.out, FAMILY.name, config, weights, meta, files)
