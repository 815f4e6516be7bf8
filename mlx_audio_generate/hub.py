"""Where checkpoints come from: local folders, or Hugging Face repos (whitelisted unless trusted).

Downloads use huggingface_hub's own cache (HF_HOME, HF_TOKEN for gated repos, resumable, HF_HUB_OFFLINE),
fetching only the files a converter reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

MUSICGEN_REPOS = {
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-stereo-small",
    "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large",
    "facebook/musicgen-melody",
    "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
}
STABLE_AUDIO_REPOS = {
    "stabilityai/stable-audio-open-small",
    "stabilityai/stable-audio-open-1.0",
}
# Stable Audio's T5 conditioner loads "t5-base" by name; its weights live in this repo.
T5_BASE_REPO = "google-t5/t5-base"
WHITELIST = MUSICGEN_REPOS | STABLE_AUDIO_REPOS | {T5_BASE_REPO}

# Only what the converters read: configs, tokenizer files, weights (safetensors preferred over pickle).
# Globs match across folders, so Stable Audio 1.0's diffusers copies of the weights (transformer/, vae/)
# are excluded by naming exactly what its converter reads.
_PATTERNS = ["*.json", "*.model", "*.safetensors", "*.safetensors.index.json"]
_STABLE_AUDIO_PATTERNS = ["model.safetensors", "model_config.json", "text_encoder/*", "tokenizer/*"]
_T5_PATTERNS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "spiece.model"]


def _patterns(repo_id: str) -> list[str]:
    if repo_id in STABLE_AUDIO_REPOS:
        return list(_STABLE_AUDIO_PATTERNS)
    if repo_id == T5_BASE_REPO:
        return list(_T5_PATTERNS)
    return list(_PATTERNS)


def detect_family(folder: Path) -> str:
    """'musicgen' or 'stable_audio' for a reference checkpoint folder."""
    folder = Path(folder)
    if (folder / "model_config.json").is_file():
        return "stable_audio"
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            model_type = json.loads(cfg.read_text()).get("model_type", "")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg} is not valid JSON ({e}); re-download the checkpoint") from None
        if model_type.startswith("musicgen"):
            return "musicgen"
        raise UserError(
            f"{folder} holds a '{model_type or 'unknown'}' model; expected MusicGen or Stable Audio"
        )
    raise UserError(
        f"{folder} is not a MusicGen or Stable Audio checkpoint (no config.json or model_config.json)"
    )


def is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def fetch(model: str, trust_remote_code: bool = False, allow_pickle: bool = True) -> Path:
    """A local folder for `model` (a folder path or a HF repo id), downloading into the HF cache if needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not is_repo_id(model):
        raise UserError(f"'{model}' is neither an existing folder nor a Hugging Face repo id (owner/name)")
    if model not in WHITELIST and not trust_remote_code:
        raise UserError(
            f"'{model}' is not a known MusicGen/Stable Audio repo; "
            "pass --trust-remote-code to convert it anyway"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise UserError("huggingface_hub is not installed; pip install huggingface_hub") from None
    patterns = _patterns(model)
    try:
        folder = Path(snapshot_download(model, allow_patterns=patterns))
        has_weights = any(folder.glob("*.safetensors"))
        if not has_weights and allow_pickle:
            # Some repos (e.g. musicgen-large) ship only pickle weights; they are read with
            # torch.load(weights_only=True), which never executes code.
            folder = Path(snapshot_download(model, allow_patterns=patterns + ["pytorch_model*.bin*"]))
    except GatedRepoError:
        raise UserError(
            f"'{model}' is gated: accept its licence on huggingface.co and set HF_TOKEN (or `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"Hugging Face repo '{model}' not found (or private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"'{model}' is not in the local Hugging Face cache and downloading is off (HF_HUB_OFFLINE) "
            "or the hub is unreachable; connect, or pass a local folder"
        ) from None
    except OSError as e:
        raise UserError(f"could not download '{model}': {e}") from None
    return folder
