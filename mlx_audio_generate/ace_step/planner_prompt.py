"""The 5 Hz LM planner's text side, as the reference's `LLMHandler` writes and reads it
(acestep/llm_inference.py, upstream 6d467e4): the chat prompts of both phases and their CFG negatives,
the `<think>` block fed to phase 2, and the parser of what the LM wrote.

Prompts go through the checkpoint's own chat template (`apply_chat_template(..., tokenize=False,
add_generation_prompt=True)` of its transformers tokenizer), system "# Instruction\\n{instruction}\\n\\n":
- phase 1 ("cot"): user "# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}\\n" (`build_formatted_prompt`); the
  reference runs it without CFG, so its negative is never used;
- phase 2 ("codes"): the same user turn, the open assistant turn continued with the `<think>` block + "\\n\\n"
  (`build_formatted_prompt_with_cot`); the CFG negative's user turn is the negative prompt itself ("NO USER
  INPUT" unless one is given) with an empty "<think>\\n\\n</think>".
"""

from __future__ import annotations

import re
from typing import Any

import yaml

INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"  # DEFAULT_LM_INSTRUCTION
NO_USER_INPUT = "NO USER INPUT"
EMPTY_THINK = "<think>\n\n</think>"
COT_KEYS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
_CODE = re.compile(r"<\|audio_code_\d+\|>")
_CODE_VALUE = re.compile(r"<\|audio_code_(\d+)\|>")
_REASONING = (r"<think>(.*?)</think>", r"<reasoning>(.*?)</reasoning>")


def _chat(tokenizer: Any, user: str) -> str:
    return tokenizer.apply_chat_template(
        [
            {"role": "system", "content": f"# Instruction\n{INSTRUCTION}\n\n"},
            {"role": "user", "content": user},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )


def has_negative_prompt(negative_prompt: str | None) -> bool:
    """`_has_meaningful_negative_prompt`: not empty and not the default."""
    return bool(negative_prompt and negative_prompt.strip() and negative_prompt.strip() != NO_USER_INPUT)


def cot_prompt(tokenizer: Any, caption: str, lyrics: str) -> str:
    """Phase 1's prompt (the LM writes the `<think>` block)."""
    return _chat(tokenizer, f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n")


def codes_prompt(tokenizer: Any, caption: str, lyrics: str, cot_text: str) -> str:
    """Phase 2's prompt: the `<think>` block already written, the LM continues with codes."""
    return _chat(tokenizer, f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n") + cot_text + "\n\n"


def codes_negative_prompt(tokenizer: Any, negative_prompt: str = NO_USER_INPUT) -> str:
    """Phase 2's CFG negative (`build_formatted_prompt_with_cot(..., is_negative_prompt=True)`)."""
    user = negative_prompt if has_negative_prompt(negative_prompt) else NO_USER_INPUT
    return _chat(tokenizer, user) + EMPTY_THINK + "\n\n"


def format_cot(metadata: dict[str, Any]) -> str:
    """`_format_metadata_as_cot`: the known fields as sorted YAML between <think> tags ("4/4" -> 4)."""
    items = {}
    for key in COT_KEYS:
        value = metadata.get(key)
        if value is None:
            continue
        if key == "timesignature" and str(value).endswith("/4"):
            value = str(value).split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"<think>\n{body}\n</think>"


def postprocess_caption(caption: str) -> str:
    """A YAML multi-line caption as one line (each line stripped, joined by spaces)."""
    if not caption:
        return caption
    return " ".join(line.strip() for line in caption.split("\n") if line.strip())


def _field(metadata: dict[str, Any], key: str | None, lines: list[str]) -> None:
    if not key or not lines:
        return
    value = "\n".join(lines)
    if key in ("bpm", "duration"):
        try:
            metadata[key] = int(value.strip())
        except ValueError:
            metadata[key] = value.strip()
    elif key == "caption":
        metadata[key] = postprocess_caption(value)
    elif key in ("genres", "keyscale", "language", "timesignature"):
        metadata[key] = value.strip()


def parse_lm_output(text: str) -> tuple[dict[str, Any], str]:
    """`parse_lm_output`: (metadata from the reasoning block, the `<|audio_code_N|>` tokens joined)."""
    codes = "".join(_CODE.findall(text))
    reasoning = None
    for pattern in _REASONING:
        m = re.search(pattern, text, re.DOTALL)
        if m:
            reasoning = m.group(1).strip()
            break
    if not reasoning:
        reasoning = (text.split("<|audio_code_")[0] if "<|audio_code_" in text else text).strip()
    metadata: dict[str, Any] = {}
    key, lines = None, []
    for line in reasoning.split("\n") if reasoning else []:
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            _field(metadata, key, lines)
            name, first = line.split(":", 1)
            key, lines = name.strip().lower(), ([first] if first.strip() else [])
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    _field(metadata, key, lines)
    return metadata, codes


def code_values(codes: str) -> list[int]:
    """`_parse_audio_code_string`: the code of each `<|audio_code_N|>`, clamped to [0, 63999]."""
    return [max(0, min(int(x), 63999)) for x in _CODE_VALUE.findall(codes)]
