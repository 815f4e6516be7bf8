"""Constrained decoding of the 5 Hz LM planner: a port of the reference's `MetadataConstrainedLogitsProcessor`
(acestep/constrained_logits_processor.py, upstream 6d467e4) on numpy logits.

The finite-state machine walks the `<think>` block the LM writes in phase 1 and the codes of phase 2:
`<think>`, newline, then the fields in the order bpm, caption, duration, (genres), keyscale, language,
timesignature (each "name:" forced token by token, its value constrained), `</think>`, then audio codes.
- numeric values (bpm 30..300, duration 10..600, time signature 2/3/4/6), keys (the 70 "C major" style
  names) and languages follow prefix trees of their actual tokenization after "field: ";
- the language's first token is the top-1 of the valid first tokens (the reference's greedy choice);
- the caption blocks backticks and audio codes, at most 512 tokens, and ends when, after a newline, the top
  token does not start with a space or tab (the LM is writing the next field name);
- values the user gave are injected token by token (" value\\n");
- codes: only `<|audio_code_N|>` (N <= 63999) and EOS; EOS blocked before `target_codes` = int(duration * 5)
  codes, forced after.
Rules the planner never reaches are left out (and refused where they could be asked for): the genres
vocabulary (phase 1 always skips genres), the "understand" phase, per-phase temperatures (the reference only
sets them when a caller passes them; its generation entry point does not), debug logging.

`tokenizer` is a transformers tokenizer (the planner's, loaded through mlx-lm): `encode(text,
add_special_tokens=False)`, `decode([id])`, `len()`, `eos_token_id`, exactly the calls the reference makes.
"""

from __future__ import annotations

import re
from enum import Enum, auto
from typing import Any

import numpy as np

from .family import BPM_MAX, BPM_MIN, KEYSCALES, LANGUAGES, MAX_SECONDS, MIN_SECONDS, TIME_SIGNATURES

MAX_AUDIO_CODE = 63999  # codebook size 64000
CAPTION_MAX_TOKENS = 512
AUDIO_CODE = re.compile(r"^<\|audio_code_(\d+)\|>$")
FIELD_ORDER = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
NEG_INF = np.float32(-np.inf)


class State(Enum):
    THINK_TAG = auto()
    NEWLINE_AFTER_THINK = auto()
    BPM_NAME = auto()
    BPM_VALUE = auto()
    CAPTION_NAME = auto()
    CAPTION_VALUE = auto()
    DURATION_NAME = auto()
    DURATION_VALUE = auto()
    GENRES_NAME = auto()
    GENRES_VALUE = auto()
    KEYSCALE_NAME = auto()
    KEYSCALE_VALUE = auto()
    LANGUAGE_NAME = auto()
    LANGUAGE_VALUE = auto()
    TIMESIG_NAME = auto()
    TIMESIG_VALUE = auto()
    THINK_END_TAG = auto()
    CODES_GENERATION = auto()
    COMPLETED = auto()


NAME_STATE = {
    "bpm": State.BPM_NAME,
    "caption": State.CAPTION_NAME,
    "duration": State.DURATION_NAME,
    "genres": State.GENRES_NAME,
    "keyscale": State.KEYSCALE_NAME,
    "language": State.LANGUAGE_NAME,
    "timesignature": State.TIMESIG_NAME,
}
VALUE_STATE = {
    "duration": State.DURATION_VALUE,
    "genres": State.GENRES_VALUE,
    "keyscale": State.KEYSCALE_VALUE,
    "language": State.LANGUAGE_VALUE,
    "timesignature": State.TIMESIG_VALUE,
}  # the fields a caption can run into (update_state's caption-ending map)
FIXED_STRINGS = {
    State.THINK_TAG: "<think>",
    State.NEWLINE_AFTER_THINK: "\n",
    **{s: f"{name}:" for name, s in NAME_STATE.items()},
    State.THINK_END_TAG: "</think>",
}
NUMERIC = (State.BPM_VALUE, State.DURATION_VALUE, State.TIMESIG_VALUE)


def audio_code_tokens(tokenizer: Any) -> dict[int, int]:
    """token id -> code value of every `<|audio_code_N|>` token with 0 <= N <= 63999 (the reference decodes
    each id of the vocabulary; the codes are added tokens, so their vocabulary entries are their text)."""
    found = {}
    for text, tid in tokenizer.get_vocab().items():
        m = AUDIO_CODE.match(text)
        if m and int(m.group(1)) <= MAX_AUDIO_CODE and tokenizer.decode([tid]) == text:
            found[tid] = int(m.group(1))
    return found


def _last(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[-1] if ids else None


class PlannerConstraints:
    """The reference processor's state machine; `__call__(ids, scores)` masks a (vocab,) float32 logit row,
    `update_state(token)` advances after each sampled token. Build once per tokenizer, `reset()` +
    `configure(...)` per generation (the reference's shared processor and `_setup_constrained_processor`)."""

    def __init__(self, tokenizer: Any, max_duration: int = int(MAX_SECONDS)):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_token_id = tokenizer.eos_token_id
        self.newline_token = _last(tokenizer, "\n")
        self.backtick_token = _last(tokenizer, "`")
        self.digit_tokens = {d: t for d in range(10) if (t := _last(tokenizer, str(d))) is not None}
        self.codes = audio_code_tokens(tokenizer)
        ids = np.array(sorted(self.codes), dtype=np.int64)
        self.audio_code_mask = self.non_audio_code_mask = None
        if len(ids):
            self.audio_code_mask = np.zeros(self.vocab_size, np.float32)
            self.audio_code_mask[ids] = NEG_INF
            self.non_audio_code_mask = np.full(self.vocab_size, NEG_INF, np.float32)
            self.non_audio_code_mask[ids] = 0
            if self.eos_token_id is not None:
                self.non_audio_code_mask[self.eos_token_id] = 0
        self.max_duration = max_duration
        self.bpm_tree = self._tree([str(v) for v in range(BPM_MIN, BPM_MAX + 1)], "bpm")
        self.duration_tree = self._tree(
            [str(v) for v in range(int(MIN_SECONDS), max_duration + 1)], "duration"
        )
        self.timesig_tree = self._tree(list(TIME_SIGNATURES), "timesignature")
        self.keyscale_tree = self._tree(KEYSCALES, "keyscale", first_is_note=True)
        self.language_tree = self._tree(LANGUAGES, "language", skip_empty=True)
        self.skip_genres, self.skip_caption, self.skip_language = True, False, False
        self.stop_at_reasoning = False
        self.generation_phase = "cot"
        self.user_metadata: dict[str, str | None] = dict.fromkeys(FIELD_ORDER)
        self.target_duration: float | None = None
        self.target_codes: int | None = None
        self._build_transitions()
        self.reset()

    # -- set-up (the reference's _build_*_prefix_tree, set_* and _build_state_transitions) -----------------

    def _tree(
        self, values, field: str, first_is_note: bool = False, skip_empty: bool = False
    ) -> dict[tuple[int, ...], set[int]]:
        """token-id prefix -> allowed next tokens for each value tokenized after "field: " (the state machine
        writes "field:"; the space merges into the value's first token); a whole value allows newline."""
        tok = self.tokenizer
        context = tok.encode(f"{field}:", add_special_tokens=False)
        tree: dict[tuple[int, ...], set[int]] = {}
        for value in values:
            full = tok.encode(f"{field}: {value}", add_special_tokens=False)
            if full[: len(context)] != context:
                continue
            ids = full[len(context) :]
            if (first_is_note or skip_empty) and not ids:
                continue
            if first_is_note:
                first = tok.decode([ids[0]]).lstrip()
                if (first[0].upper() if first else "") not in "ABCDEFG":
                    continue
            for i in range(len(ids) + 1):
                allowed = tree.setdefault(tuple(ids[:i]), set())
                if i < len(ids):
                    allowed.add(ids[i])
                elif self.newline_token:
                    allowed.add(self.newline_token)
        return tree

    def _next_field(self, field: str) -> State:
        skips = {"genres": self.skip_genres, "caption": self.skip_caption, "language": self.skip_language}
        for name in FIELD_ORDER[FIELD_ORDER.index(field) + 1 :] if field in FIELD_ORDER else ():
            if not skips.get(name, False):
                return NAME_STATE[name]
        return State.THINK_END_TAG

    def _build_transitions(self) -> None:
        n = {
            State.THINK_TAG: State.NEWLINE_AFTER_THINK,
            State.NEWLINE_AFTER_THINK: State.BPM_NAME,
            State.THINK_END_TAG: State.CODES_GENERATION,
            State.CODES_GENERATION: State.COMPLETED,
            State.BPM_NAME: State.BPM_VALUE,
            State.BPM_VALUE: self._next_field("bpm"),
            State.DURATION_NAME: State.DURATION_VALUE,
            State.DURATION_VALUE: self._next_field("duration"),
            State.KEYSCALE_NAME: State.KEYSCALE_VALUE,
            State.KEYSCALE_VALUE: self._next_field("keyscale"),
            State.TIMESIG_NAME: State.TIMESIG_VALUE,
            State.TIMESIG_VALUE: State.THINK_END_TAG,
        }
        if not self.skip_caption:
            n[State.CAPTION_NAME] = State.CAPTION_VALUE
            n[State.CAPTION_VALUE] = self._next_field("caption")
        if not self.skip_genres:
            n[State.GENRES_NAME] = State.GENRES_VALUE
            n[State.GENRES_VALUE] = self._next_field("genres")
        if not self.skip_language:
            n[State.LANGUAGE_NAME] = State.LANGUAGE_VALUE
            n[State.LANGUAGE_VALUE] = self._next_field("language")
        self.next_state = n

    def reset(self) -> None:
        self.state = State.THINK_TAG
        self.position_in_state = 0
        self.accumulated_value = ""
        self.accumulated_token_ids: list[int] = []
        self.codes_count = 0
        self.user_field_token_queue: list[int] = []
        self.current_user_field: str | None = None
        self.caption_after_newline = False
        self.caption_token_count = 0
        self.caption_ending = False
        self.pending_field_name = ""

    def configure(
        self,
        *,
        phase: str,
        target_duration: float | None = None,
        user_metadata: dict[str, Any] | None = None,
        stop_at_reasoning: bool = False,
        skip_caption: bool = False,
        skip_language: bool = False,
    ) -> None:
        """`_setup_constrained_processor` for one single-item generation (genres always skipped)."""
        if phase not in ("cot", "codes"):
            raise ValueError(f"unsupported planner phase {phase!r}")
        self.reset()
        self.target_duration = target_duration
        self.target_codes = (
            int(target_duration * 5) if target_duration is not None and target_duration > 0 else None
        )
        metadata = user_metadata or {}
        if "genres" in metadata and metadata["genres"] is not None:
            raise ValueError("a user genres field is not supported (the planner skips genres)")
        self.user_metadata = {f: metadata.get(f) for f in FIELD_ORDER}
        self.stop_at_reasoning = stop_at_reasoning
        self.skip_genres, self.skip_caption, self.skip_language = True, skip_caption, skip_language
        self.generation_phase = phase
        self._build_transitions()

    # -- masking ---------------------------------------------------------------------------------------------

    @staticmethod
    def _whitelist(scores: np.ndarray, allowed) -> None:
        keep = np.array(sorted(set(allowed)), dtype=np.int64) if allowed else np.zeros(0, np.int64)
        saved = scores[keep].copy()
        scores.fill(NEG_INF)
        scores[keep] = saved

    def _fixed_string_tokens(self, fixed: str) -> list[int]:
        """The longest prefix of the rest of `fixed` that is one token; else the candidate first tokens."""
        remaining = fixed[self.position_in_state :]
        if not remaining:
            return []
        enc = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        for end in range(len(remaining), 0, -1):
            ids = enc(remaining[:end])
            if len(ids) == 1:
                return [ids[0]]
        found: dict[int, int] = {}
        for end in range(1, min(len(remaining) + 1, 20)):
            prefix = remaining[:end]
            ids = enc(prefix)
            if ids:
                first = ids[0]
                p, d = prefix.lstrip().lower(), self.tokenizer.decode([first]).lstrip().lower()
                if d.startswith(p) or p.startswith(d):
                    if first not in found or end > found[first]:
                        found[first] = end
        return [t for t, _ in sorted(found.items(), key=lambda x: x[1], reverse=True)]

    def _inject_user_value(self, field: str, scores: np.ndarray) -> bool:
        """A user-given value not yet started: queue " value\\n" and force its first token."""
        value = self.user_metadata.get(field)
        started = self.accumulated_value if field == "caption" else self.accumulated_token_ids
        if value is None or self.user_field_token_queue or started:
            return False
        ids = self.tokenizer.encode(f" {value}\n", add_special_tokens=False)
        if not ids:
            return False
        self.user_field_token_queue = list(ids)
        self.current_user_field = field
        self._whitelist(scores, [ids[0]])
        return True

    def _prefix_field(self, tree: dict, scores: np.ndarray) -> None:
        """keyscale / timesignature: a complete value allows only newline, else its continuations."""
        allowed = tree.get(tuple(self.accumulated_token_ids))
        if allowed is not None and self.newline_token in allowed:
            if self.newline_token:
                self._whitelist(scores, [self.newline_token])
        elif allowed:
            self._whitelist(scores, list(allowed))
        elif tree is self.timesig_tree:
            self._whitelist(scores, [])
        elif self.newline_token:
            self._whitelist(scores, [self.newline_token])

    def __call__(self, input_ids: list[int], scores: np.ndarray) -> np.ndarray:
        """Masked logits of one row (a new float32 array; `input_ids` = prompt + generated so far)."""
        scores = np.array(scores, dtype=np.float32, copy=True)
        if self.state == State.COMPLETED:
            return scores
        if self.generation_phase == "codes" and self.state == State.THINK_TAG:
            end = self.tokenizer.encode("</think>", add_special_tokens=False)
            seq = list(input_ids)
            if end and any(seq[i : i + len(end)] == end for i in range(len(seq) - len(end) + 1)):
                self.state, self.codes_count = State.CODES_GENERATION, 0
        if self.state == State.CODES_GENERATION:
            if self.non_audio_code_mask is not None:
                scores = scores + self.non_audio_code_mask
            if self.target_codes is not None and self.eos_token_id is not None:
                if self.codes_count < self.target_codes:
                    scores[self.eos_token_id] = NEG_INF
                else:
                    self._whitelist(scores, [self.eos_token_id])
            return scores
        return self._process(input_ids, scores)

    def _process(self, input_ids: list[int], scores: np.ndarray) -> np.ndarray:
        if self.user_field_token_queue:
            self._whitelist(scores, [self.user_field_token_queue[0]])
            return scores
        s = self.state
        if s in FIXED_STRINGS:
            fixed = FIXED_STRINGS[s]
            allowed = self._fixed_string_tokens(fixed)
            stop = s == State.THINK_END_TAG and self.stop_at_reasoning and self.eos_token_id is not None
            if allowed:
                if stop and len(fixed) - self.position_in_state <= 10:
                    self._whitelist(scores, [self.eos_token_id])
                    return scores
                self._whitelist(scores, allowed)
                return scores
            if stop:
                self._whitelist(scores, [self.eos_token_id])
                return scores
            self._transition()
            if self.state in FIXED_STRINGS:
                return scores
            scores.fill(0)
            return self._process(input_ids, scores)
        if s == State.BPM_VALUE or (s == State.DURATION_VALUE and self.target_duration is None):
            field, tree = ("bpm", self.bpm_tree) if s == State.BPM_VALUE else ("duration", self.duration_tree)
            if self._inject_user_value(field, scores):
                return scores
            prefix = tuple(self.accumulated_token_ids)
            allowed = list(tree.get(prefix, ()))
            if prefix in tree and self.newline_token in tree[prefix]:
                allowed = allowed + [self.newline_token]
            self._whitelist(scores, allowed)
        elif s == State.DURATION_VALUE:
            if self._inject_user_value("duration", scores):
                return scores
            target = str(int(self.target_duration))
            pos = len(self.accumulated_value)
            if pos < len(target):
                if int(target[pos]) in self.digit_tokens:
                    self._whitelist(scores, [self.digit_tokens[int(target[pos])]])
            elif self.newline_token:
                self._whitelist(scores, [self.newline_token])
        elif s == State.CAPTION_VALUE:
            if self._inject_user_value("caption", scores):
                return scores
            if self.caption_after_newline:
                top = self.tokenizer.decode([int(np.argmax(scores))])
                self.caption_after_newline = False
                if len(top) > 0 and top[0] not in " \t":
                    self.caption_ending, self.pending_field_name = True, ""
                    return scores
            if self.caption_ending:
                return scores
            if self.backtick_token is not None:
                scores[self.backtick_token] = NEG_INF
            if self.audio_code_mask is not None:
                scores = scores + self.audio_code_mask
            if self.caption_token_count >= CAPTION_MAX_TOKENS and self.newline_token is not None:
                self._whitelist(scores, [self.newline_token])
            return scores
        elif s == State.KEYSCALE_VALUE:
            if not self._inject_user_value("keyscale", scores):
                self._prefix_field(self.keyscale_tree, scores)
        elif s == State.LANGUAGE_VALUE:
            if self._inject_user_value("language", scores):
                return scores
            if not self.accumulated_token_ids:
                first = list(self.language_tree.get((), ()))
                if first:
                    # the reference indexes a tensor with the set's list order: the first maximum of that
                    # order wins a tie; a tie between different tokens' logits is measure-zero in practice
                    best = first[int(np.argmax(scores[np.array(first, dtype=np.int64)]))]
                    self._whitelist(scores, [best])
                elif self.newline_token:
                    self._whitelist(scores, [self.newline_token])
            else:
                self._prefix_field(self.language_tree, scores)
        elif s == State.TIMESIG_VALUE:
            if not self._inject_user_value("timesignature", scores):
                self._prefix_field(self.timesig_tree, scores)
        elif s == State.GENRES_VALUE:  # pragma: no cover - configure() always skips genres
            raise RuntimeError("genres decoding is not supported")
        return scores

    # -- state updates ---------------------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        self.position_in_state = 0
        self.accumulated_value = ""
        self.accumulated_token_ids = []

    def _transition(self) -> None:
        if self.state in self.next_state:
            self._set_state(self.next_state[self.state])
            self.caption_after_newline = False
            self.caption_token_count = 0
            self.caption_ending = False
            self.pending_field_name = ""

    def update_state(self, token: int) -> None:
        """Advance after `token` was sampled (the reference's update_state)."""
        if self.state == State.COMPLETED:
            return
        if self.state == State.CODES_GENERATION:
            self.codes_count += 1
            return
        if self.user_field_token_queue:
            self.user_field_token_queue.pop(0)
            if not self.user_field_token_queue:
                field, self.current_user_field = self.current_user_field, None
                self._set_state(self._next_field(field))
            return
        text = self.tokenizer.decode([token])
        s = self.state
        if s in FIXED_STRINGS:
            self.position_in_state += len(text)
            if self.position_in_state >= len(FIXED_STRINGS[s]):
                if s == State.THINK_END_TAG and self.stop_at_reasoning:
                    self._set_state(State.COMPLETED)
                else:
                    self._transition()
        elif s in NUMERIC or s in (State.KEYSCALE_VALUE, State.LANGUAGE_VALUE):
            if token == self.newline_token:
                self._transition()
            else:
                self.accumulated_token_ids.append(token)
                if s not in NUMERIC:
                    self.accumulated_value += text
                elif text.strip().isdigit():
                    self.accumulated_value += text.strip()
        elif s == State.CAPTION_VALUE:
            self.caption_token_count += 1
            self.accumulated_value += text
            self.caption_after_newline = "\n" in text
            if self.caption_ending:
                self.pending_field_name += text
                if ":" in text:
                    name = self.pending_field_name.strip().rstrip(":").strip().lower()
                    if name in VALUE_STATE:
                        self._set_state(VALUE_STATE[name])
                        self.caption_ending, self.pending_field_name = False, ""
                    else:
                        self.caption_ending, self.pending_field_name = False, ""
                        self._transition()
