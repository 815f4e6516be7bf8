"""ACE-Step 1.5's optional 5 Hz LM planner: caption + lyrics -> (metadata, 5 Hz audio codes), the reference's
`LLMHandler.generate_with_stop_condition(infer_type="llm_dit")` single-item path (acestep/llm_inference.py,
upstream 6d467e4) on mlx-lm's Qwen3 and KV cache.

planner = Planner.from_folder("converted/planner-1.7B")
metadata, codes = planner.plan("upbeat synth pop", "[Verse] ...", duration=30, seed=0)

1. phase 1 (skipped when bpm, key, time signature and duration are all given: the metadata is then the
   user's): the chat prompt (planner_prompt.py), no CFG (the reference passes cfg_scale 1.0: "CFG must not be
   applied during CoT"), constrained decoding of the `<think>` block (planner_constraints.py, the user's
   values injected, EOS forced at `</think>`), max_new_tokens 3500 (`_compute_max_new_tokens` without a
   duration: min(600 * 5 + 500, 4096 - 64)); the block parsed (`parse_lm_output`).
2. phase 2: the prompt continued with the YAML `<think>` block; CFG over the logits against the
   "NO USER INPUT" negative (`uncond + cfg_scale * (cond - uncond)`, float32, each prompt in its own cache,
   as the reference's MLX path runs them), then the codes-only mask and the duration constraint
   (int(duration * 5) codes, then EOS); max_new_tokens = 5 * clamp(duration, 10, 600) + 10.
3. each step (the reference's `_generate_with_cfg_custom` / `_generate_with_constrained_decoding`):
   constraints, top-k, top-p (mlx-lm's `apply_top_k` / `apply_top_p` on log-probabilities), then the
   temperature and a categorical draw from an MLX key (seeded, split per step), or argmax at temperature 0;
   stop at EOS or the pad token (the token is kept, as the reference keeps it).
Defaults (GenerationParams): temperature 0.85, cfg_scale 2.0, top-p 0.9, top-k off, constrained decoding on;
the reference's repetition penalty is 1.0 (off) and not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from ..errors import UserError
from .family import MAX_SECONDS, MIN_SECONDS
from .planner_constraints import PlannerConstraints
from .planner_model import load_planner_model
from .planner_prompt import (
    NO_USER_INPUT,
    code_values,
    codes_negative_prompt,
    codes_prompt,
    cot_prompt,
    format_cot,
    parse_lm_output,
)

MAX_MODEL_LEN = 4096  # LLMHandler.max_model_len
TEMPERATURE, CFG_SCALE, TOP_P = 0.85, 2.0, 0.9
Step = Callable[[int, int], None]


def max_new_tokens(target_duration: float | None, phase: str) -> int:
    """`_compute_max_new_tokens` (the GPU tier's duration cap taken as DURATION_MAX)."""
    if target_duration is not None and target_duration > 0:
        codes = int(max(MIN_SECONDS, min(MAX_SECONDS, target_duration)) * 5)
        n = codes + (10 if phase == "codes" else 500)
    else:
        n = min(MAX_MODEL_LEN - 64, int(MAX_SECONDS) * 5 + 500)
    return min(n, MAX_MODEL_LEN - 64)


class _Stream:
    """One prompt's KV cache and the logits of its next token."""

    def __init__(self, model: Any, ids: list[int]):
        self.model, self.cache = model, make_prompt_cache(model)
        self.logits = model(mx.array(ids)[None], cache=self.cache)[0, -1]

    def push(self, token: int) -> None:
        self.logits = self.model(mx.array([[token]]), cache=self.cache)[0, -1]


class Planner:
    def __init__(self, model: Any, tokenizer: Any, config: dict[str, Any]):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.constraints = PlannerConstraints(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id or tokenizer.eos_token_id

    @classmethod
    def from_folder(cls, folder: str | Path) -> Planner:
        return cls(*load_planner_model(Path(folder)))

    def encode(self, text: str) -> list[int]:
        """The reference's `llm_tokenizer(prompt)["input_ids"]` (truncation off: prompts are short)."""
        return list(self.tokenizer(text)["input_ids"])

    def logits(self, ids: list[int] | np.ndarray) -> mx.array:
        """Next-token logits (B, L, vocab) of whole sequences (the parity tests' view of the network)."""
        return self.model(mx.array(np.atleast_2d(np.asarray(ids, dtype=np.int32))))

    def decode_tokens(
        self,
        prompt: str,
        negative: str | None,
        limit: int,
        *,
        temperature: float,
        cfg_scale: float,
        top_p: float | None,
        top_k: int | None,
        key: mx.array,
        on_token: Step | None = None,
    ) -> tuple[list[int], mx.array]:
        """The new tokens of one generation (module doc, 3.) and the key left after it."""
        ids = self.encode(prompt)
        cond = _Stream(self.model, ids)
        uncond = (
            _Stream(self.model, self.encode(negative)) if cfg_scale > 1.0 and negative is not None else None
        )
        out: list[int] = []
        for _ in range(limit):
            logits = cond.logits.astype(mx.float32)
            if uncond is not None:
                u = uncond.logits.astype(mx.float32)
                logits = u + cfg_scale * (logits - u)
            scores = self.constraints(ids + out, np.array(logits))
            token, key = self._sample(scores, temperature, top_p, top_k, key)
            self.constraints.update_state(token)
            out.append(token)
            if on_token is not None:
                on_token(len(out), limit)
            if token == self.eos or (self.pad is not None and token == self.pad):
                break
            cond.push(token)
            if uncond is not None:
                uncond.push(token)
        return out, key

    @staticmethod
    def _sample(
        scores: np.ndarray, temperature: float, top_p: float | None, top_k: int | None, key: mx.array
    ) -> tuple[int, mx.array]:
        if not np.isfinite(scores).any():
            raise UserError("the planner's constraints left no token to sample (a tokenizer mismatch?)")
        if temperature <= 0:  # top-k / top-p keep the maximum: argmax is the reference's choice
            return int(np.argmax(scores)), key
        x = mx.array(scores)[None]
        x = x - mx.logsumexp(x, axis=-1, keepdims=True)
        if top_k is not None and top_k > 0:
            x = apply_top_k(x, top_k)
        if top_p is not None and 0.0 < top_p < 1.0:
            x = apply_top_p(x, top_p)
        key, sub = mx.random.split(key)
        return int(mx.random.categorical(x * (1.0 / temperature), key=sub).item()), key

    def plan(
        self,
        caption: str,
        lyrics: str,
        *,
        duration: float | None = None,
        bpm: int | None = None,
        keyscale: str | None = None,
        timesignature: str | None = None,
        seed: int = 0,
        temperature: float = TEMPERATURE,
        cfg_scale: float = CFG_SCALE,
        top_p: float | None = TOP_P,
        top_k: int | None = None,
        negative_prompt: str = NO_USER_INPUT,
        on_token: Step | None = None,
    ) -> tuple[dict[str, Any], list[int]]:
        """(metadata: bpm, caption, duration, keyscale, language, timesignature as the LM wrote them or the
        user gave them; the 5 Hz codes) for one caption (module doc)."""
        user: dict[str, Any] = {}
        if bpm is not None and bpm > 0:
            user["bpm"] = int(bpm)
        if keyscale and keyscale.strip() and keyscale.strip().lower() != "n/a":
            user["keyscale"] = keyscale.strip()
        if timesignature and timesignature.strip() and timesignature.strip().lower() != "n/a":
            user["timesignature"] = timesignature.strip()
        if duration is not None and duration > 0:
            user["duration"] = int(duration)
        key = mx.random.key(int(seed))
        c = self.constraints
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, on_token=on_token)
        if all(k in user for k in ("bpm", "keyscale", "timesignature", "duration")):
            metadata = dict(user)
        else:
            c.configure(
                phase="cot", user_metadata={k: str(v) for k, v in user.items()}, stop_at_reasoning=True
            )
            limit = max_new_tokens(None, "cot")
            tokens, key = self.decode_tokens(
                cot_prompt(self.tokenizer, caption, lyrics), None, limit, cfg_scale=1.0, key=key, **sampling
            )
            metadata, _ = parse_lm_output(self.tokenizer.decode(tokens, skip_special_tokens=False))
        target = duration
        if (target is None or target <= 0) and metadata.get("duration"):
            try:
                target = float(metadata["duration"]) if float(metadata["duration"]) > 0 else target
            except (TypeError, ValueError):
                pass
        cot = format_cot(metadata)
        c.configure(phase="codes", target_duration=target, skip_caption=True, skip_language=True)
        tokens, _ = self.decode_tokens(
            codes_prompt(self.tokenizer, caption, lyrics, cot),
            codes_negative_prompt(self.tokenizer, negative_prompt),
            max_new_tokens(target, "codes"),
            cfg_scale=cfg_scale,
            key=key,
            **sampling,
        )
        _, codes = parse_lm_output(self.tokenizer.decode(tokens, skip_special_tokens=False))
        return metadata, code_values(codes)
