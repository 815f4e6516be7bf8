"""Reading a Hugging Face tokenizer folder (tokenizer.json + optional tokenizer_config.json) with the
`tokenizers` library: what the Qwen3 and T5Gemma tokenizers share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError


@dataclass
class TokenizerFiles:
    path: Path  # tokenizer.json
    config_path: Path  # tokenizer_config.json (may not exist)
    spec: dict[str, Any]  # tokenizer.json's JSON
    config: dict[str, Any]  # tokenizer_config.json's JSON, {} without one
    tokenizer: Any  # tokenizers.Tokenizer built from `spec`


def read_tokenizer_folder(folder: Path, name: str) -> TokenizerFiles:
    """The folder's tokenizer files, or a one-line UserError ("the {name} tokenizer is read from ...")."""
    from tokenizers import Tokenizer

    path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: the {name} tokenizer is read from tokenizer.json")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        tok = Tokenizer.from_str(json.dumps(spec))
    except Exception as e:
        raise UserError(f"cannot read tokenizer {folder}: {e}") from None
    return TokenizerFiles(path, config_path, spec, config, tok)


def token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None
