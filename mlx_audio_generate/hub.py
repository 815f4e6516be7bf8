"""Where checkpoints come from: local folders, or Hugging Face repos (the families' own unless trusted).

Downloads use huggingface_hub's own cache (HF_HOME, HF_TOKEN for gated repos, resumable, HF_HUB_OFFLINE),
fetching only the files a converter reads (each family says which: `Family.download_patterns`).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from . import registry
from .errors import UserError

# What a converter may read when its family does not say otherwise: configs, tokenizer files, safetensors.
DEFAULT_PATTERNS = ["*.json", "*.model", "*.safetensors", "*.safetensors.index.json"]


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when there is no such file; invalid JSON is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def check_json_files(folder: Path) -> None:
    """Before a conversion reads them: every `*.json` at the top of a reference checkpoint folder and one
    level down (text_encoder/, tokenizer/) must be a JSON object, and a `tokenizer.json` must load with
    `tokenizers`; otherwise a UserError naming the file (not a KeyError deep inside a converter)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("[!.]*/*.json"))
    for path in files:
        if not path.is_file():
            continue
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; re-download it")
        if path.name == "tokenizer.json":
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(path))
            except Exception as e:  # tokenizers raises its own Exception type for any malformed file
                raise UserError(f"{path} is not a valid tokenizer ({e}); re-download it") from None


def download_patterns(repo_id: str) -> list[str]:
    """The files a conversion of `repo_id` reads (its family's download patterns, else DEFAULT_PATTERNS)."""
    for fam in registry.families().values():
        if repo_id in fam.repos | fam.extra_repos and fam.download_patterns is not None:
            return list(fam.download_patterns(repo_id))
    return list(DEFAULT_PATTERNS)


def is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def did_you_mean(name: str) -> str:
    """ "did you mean facebook/musicgen-small?" for a near miss of a known model name or repo id (a typo),
    else ""."""
    known = sorted(set(registry.short_names()) | registry.known_repos())
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    if not close:  # "musicgen-smal" against "facebook/musicgen-small": compare the names after the owner
        tails = {k.split("/")[-1]: k for k in known}
        close = [
            tails[t] for t in difflib.get_close_matches(name.split("/")[-1], list(tails), n=1, cutoff=0.8)
        ]
    return f"did you mean {close[0]}?" if close else ""


def fetch(
    model: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = True,
    patterns: list[str] | None = None,
    tqdm_class: type | None = None,
) -> Path:
    """A local folder for `model` (a folder path or a HF repo id), downloading into the HF cache if needed.
    `patterns` narrows the download to the files a caller reads (default: the family's download patterns);
    `tqdm_class`: huggingface_hub's progress bars (e.g. progress.HubMeter; default: its own)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not is_repo_id(model):
        raise UserError(f"'{model}' is neither an existing folder nor a Hugging Face repo id (owner/name)")
    if model not in registry.known_repos() and not trust_remote_code:
        guess = did_you_mean(model)
        if guess:
            raise UserError(
                f"'{model}' is not a known {registry.labels()} repo; {guess} "
                "(--trust-remote-code converts an unlisted repo anyway)"
            )
        raise UserError(
            f"'{model}' is not a known {registry.labels()} repo; "
            "pass --trust-remote-code to convert it anyway"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise UserError("huggingface_hub is not installed; pip install huggingface_hub") from None
    patterns = list(patterns) if patterns is not None else download_patterns(model)
    try:
        folder = Path(snapshot_download(model, allow_patterns=patterns, tqdm_class=tqdm_class))
        has_weights = any(folder.rglob("*.safetensors"))  # subfolders too (ACE-Step: vae/, ...)
        if not has_weights and allow_pickle:
            # Some repos (e.g. musicgen-large) ship only pickle weights; they are read with
            # torch.load(weights_only=True), which never executes code.
            pickles = patterns + ["pytorch_model*.bin*"]
            _check_torch_for_pickles(model, pickles)
            folder = Path(snapshot_download(model, allow_patterns=pickles, tqdm_class=tqdm_class))
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


def _check_torch_for_pickles(model: str, patterns: list[str]) -> None:
    """Before pickle weights are downloaded (musicgen-large: GBs): without PyTorch they could not be read,
    so say how to install it first. The file list comes from a dry run (no download)."""
    from huggingface_hub import snapshot_download

    from .weights import TORCH_INSTALL_HINT, have_torch

    if have_torch():
        return
    try:
        planned = snapshot_download(model, allow_patterns=patterns, dry_run=True)
    except TypeError:  # a huggingface_hub without dry runs: the read itself reports the missing torch
        return
    bins = [f for f in planned if Path(f.filename).name.startswith("pytorch_model") and ".bin" in f.filename]
    if not bins:
        return
    size = sum(f.file_size or 0 for f in bins if f.will_download) / 1e9
    download = f", {size:.1f} GB to download" if size else ""
    raise UserError(
        f"'{model}' ships its weights only as pickle files ({len(bins)} pytorch_model*.bin{download}); "
        f"reading them safely (torch.load(weights_only=True)) needs PyTorch: {TORCH_INSTALL_HINT}"
    )


def detect_family(folder: Path) -> str:
    """The family name of a reference checkpoint folder (see registry.detect)."""
    return registry.detect(folder).name
