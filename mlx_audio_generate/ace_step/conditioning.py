"""ACE-Step 1.5's condition encoder (`AceStepConditionEncoder`, the checkpoint's `encoder.*`), its
`null_condition_emb` and `prepare_condition`, in MLX.

Mirrors `acestep/models/{turbo,base,sft,xl_*}/modeling_acestep_v15_*.py` (CPU / SDPA path):
- `text_projector`: Linear(text_hidden_dim -> H, no bias) on the text encoder's hidden states of the prompt;
- lyric encoder: Linear(text_hidden_dim -> H) on the text encoder's *token embeddings* of the lyric prompt,
  encoder layers (pre-norm, Qwen3 attention with q/k norm and RoPE over positions 0..L-1, bidirectional),
  final RMSNorm. Masks as `create_4d_mask` builds them: additive `finfo.min` on padded keys, and on a sliding
  layer also where |i - j| > window; with `use_sliding_window` false a sliding layer gets no mask at all. A
  row whose keys are all hidden (a padded query farther than the window from every valid token) then softmaxes
  uniformly over all keys, as the reference does: those outputs are packed into the condition and attended;
- timbre encoder: Linear(timbre_hidden_dim -> H) on the packed reference latents (N, T, C), layers without a
  padding mask, norm, the output at position 0 (XL prepends its learned `special_token` first; the 2B models
  have one in the checkpoint but do not use it), unpacked to (B, max refs, H) by `refer_audio_order_mask`;
- `pack_sequences`: concatenate, stable-sort each row so valid positions come first, mask = first sum(mask);
  lyrics + timbre, then + text;
- the layers run are `layers[:num_hidden_layers]` (the reference slices by the decoder's layer count).

`prepare_condition` also builds `context_latents = concat(src_latents, chunk_masks)`, where a cover row takes
the 25 Hz hints of `tokenize` -> `detokenize` (audio_tokens.py) instead of its source latents.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import UserError
from ..weights import Checkpoint
from .condition_blocks import AceConditionConfig, EncoderStack


class LyricEncoder(EncoderStack):
    def __init__(self, c: AceConditionConfig):
        super().__init__(c, c.text_hidden_dim, c.lyric_layers, limit=c.num_hidden_layers)

    def __call__(self, embeds: mx.array, mask: mx.array) -> mx.array:
        """Lyric token embeddings (B, L, text_hidden_dim) + padding mask (B, L) -> (B, L, H)."""
        return self.run(self.embed_tokens(embeds), mask)


def unpack_timbre(embs: mx.array, order: np.ndarray) -> tuple[mx.array, np.ndarray]:
    """unpack_timbre_embeddings: packed (N, H) + batch index per row -> (B, max count, H), mask (B, max)
    (int); rows of one item keep their packed order; empty slots are zero."""
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if order.size != embs.shape[0] or order.size == 0 or order.min() < 0:
        raise UserError(
            f"refer_audio_order_mask must give one batch index >= 0 per reference ({embs.shape[0]})"
        )
    batch = int(order.max()) + 1
    counts = np.bincount(order, minlength=batch)
    width = int(counts.max())
    index = np.zeros(batch * width, dtype=np.int32)
    mask = np.zeros(batch * width, dtype=np.int32)
    seen = np.zeros(batch, dtype=np.int64)
    for n, b in enumerate(order):
        index[b * width + seen[b]], mask[b * width + seen[b]] = n, 1
        seen[b] += 1
    out = embs[mx.array(index)] * mx.array(mask, dtype=embs.dtype)[:, None]
    return out.reshape(batch, width, -1), mask.reshape(batch, width)


class TimbreEncoder(EncoderStack):
    def __init__(self, c: AceConditionConfig):
        super().__init__(c, c.timbre_hidden_dim, c.timbre_layers, limit=c.num_hidden_layers)
        self.special_token = mx.zeros((1, 1, c.hidden_size))

    def __call__(self, packed: mx.array, order: np.ndarray) -> tuple[mx.array, np.ndarray]:
        """Packed reference latents (N, T, timbre_hidden_dim), batch index per row -> (B, refs, H), mask."""
        x = self.embed_tokens(packed)
        if self.config.timbre_cls:
            x = mx.concatenate([mx.broadcast_to(self.special_token, (x.shape[0], 1, x.shape[2])), x], axis=1)
        return unpack_timbre(self.run(x)[:, 0, :], order)


def pack_sequences(h1: mx.array, h2: mx.array, m1: np.ndarray, m2: np.ndarray) -> tuple[mx.array, np.ndarray]:
    """Concatenate along the sequence, stable-sort each row's positions valid-first; mask = first sum."""
    mask = np.concatenate([np.asarray(m1).astype(np.int64), np.asarray(m2).astype(np.int64)], axis=1)
    order = np.argsort(-mask, axis=1, kind="stable").astype(np.int32)
    h = mx.concatenate([h1, h2], axis=1)
    packed = mx.take_along_axis(h, mx.array(order)[:, :, None], axis=1)
    new = (np.arange(mask.shape[1])[None, :] < mask.sum(axis=1, keepdims=True)).astype(np.int32)
    return packed, new


class ConditionEncoder(nn.Module):
    """AceStepConditionEncoder: (text states, lyric embeddings, timbre references) -> packed (B, S, H)."""

    def __init__(self, c: AceConditionConfig):
        super().__init__()
        self.text_projector = nn.Linear(c.text_hidden_dim, c.hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(c)
        self.timbre_encoder = TimbreEncoder(c)

    def __call__(
        self,
        text_states: mx.array,
        text_mask: np.ndarray,
        lyric_embeds: mx.array,
        lyric_mask: np.ndarray,
        refer_packed: mx.array,
        refer_order: np.ndarray,
    ) -> tuple[mx.array, np.ndarray]:
        text = self.text_projector(text_states)
        lyrics = self.lyric_encoder(lyric_embeds, mx.array(np.asarray(lyric_mask)))
        timbre, timbre_mask = self.timbre_encoder(refer_packed, refer_order)
        h, m = pack_sequences(lyrics, timbre, lyric_mask, timbre_mask)
        return pack_sequences(h, text, m, text_mask)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "encoder.") -> dict[str, mx.array]:
        names = ["text_projector.weight"]
        names += [f"lyric_encoder.{n}" for n in self.lyric_encoder.param_names()]
        names += [f"timbre_encoder.{n}" for n in self.timbre_encoder.param_names(("special_token",))]
        return {n: ckpt.take(prefix + n) for n in names}


def context_latents(
    src_latents: mx.array, chunk_masks: mx.array, is_covers: np.ndarray, hints: mx.array | None
) -> mx.array:
    """prepare_condition's tail: cover rows take the 25 Hz hints (cropped to the source length) as source,
    then concat(source, chunk mask) on the channel axis."""
    covers = np.asarray(is_covers).reshape(-1).astype(bool)
    if covers.any():
        if hints is None:
            raise UserError("cover rows need the 25 Hz hints of their source (tokenize + detokenize)")
        sel = mx.array(covers)[:, None, None]
        src_latents = mx.where(sel, hints[:, : src_latents.shape[1], :], src_latents)
    return mx.concatenate([src_latents, chunk_masks.astype(src_latents.dtype)], axis=-1)


class AceConditioning(nn.Module):
    """Everything of the checkpoint but the DiT: `encoder.*`, `tokenizer.*`, `detokenizer.*` and
    `null_condition_emb` (1, 1, H), the unconditional condition of classifier-free guidance (broadcast over
    the packed sequence)."""

    def __init__(self, c: AceConditionConfig):
        from .audio_tokens import AudioDetokenizer, AudioTokenizer

        super().__init__()
        self.config = c
        self.encoder = ConditionEncoder(c)
        self.tokenizer = AudioTokenizer(c)
        self.detokenizer = AudioDetokenizer(c)
        self.null_condition_emb = mx.zeros((1, 1, c.hidden_size))

    def tokenize(self, latents: mx.array, silence: mx.array) -> tuple[mx.array, mx.array]:
        """25 Hz latents (B, T, C) -> (quantized 5 Hz states (B, ceil(T/P), H), FSQ indices)."""
        return self.tokenizer(latents, silence)

    def detokenize(self, quantized: mx.array) -> mx.array:
        return self.detokenizer(quantized)

    def codes_to_hints(self, codes: mx.array) -> mx.array:
        """5 Hz FSQ indices (B, N, quantizers) -> 25 Hz hints (B, N * P, C) (the LM-codes path)."""
        return self.detokenizer(self.tokenizer.quantizer.from_indices(codes))

    def prepare_condition(
        self,
        text_states: mx.array,
        text_mask: np.ndarray,
        lyric_embeds: mx.array,
        lyric_mask: np.ndarray,
        refer_packed: mx.array,
        refer_order: np.ndarray,
        src_latents: mx.array,
        chunk_masks: mx.array,
        is_covers: np.ndarray,
        silence: mx.array,
        hints: mx.array | None = None,
    ) -> tuple[mx.array, np.ndarray, mx.array]:
        """AceStepConditionGenerationModel.prepare_condition with hidden_states = src_latents (as
        generate_audio calls it): (packed condition (B, S, H), its mask (B, S), context_latents (B, T, 2C)).
        `hints`: precomputed 25 Hz hints (from LM codes); else a cover row's are its source's tokenize ->
        detokenize."""
        states, mask = self.encoder(
            text_states, text_mask, lyric_embeds, lyric_mask, refer_packed, refer_order
        )
        if hints is None and np.asarray(is_covers).astype(bool).any():
            hints = self.detokenize(self.tokenize(src_latents, silence)[0])
        return states, mask, context_latents(src_latents, chunk_masks, is_covers, hints)

    def sanitize(self, ckpt: Checkpoint, prefix: str = "") -> dict[str, mx.array]:
        """Our parameters from an ACE-Step 1.5 checkpoint (`encoder.*`, `tokenizer.*`, `detokenizer.*`,
        `null_condition_emb`; the `decoder.*` tensors are the DiT's)."""
        from .audio_tokens import sanitize_part

        out = {f"encoder.{k}": v for k, v in self.encoder.sanitize(ckpt, prefix + "encoder.").items()}
        for name in ("tokenizer", "detokenizer"):
            part = sanitize_part(getattr(self, name), ckpt, f"{prefix}{name}.")
            out.update({f"{name}.{k}": v for k, v in part.items()})
        out["null_condition_emb"] = ckpt.take(prefix + "null_condition_emb")
        return out


# ------------------------------------------------------------------------------------- prompt formats
# acestep/constants.py and the handler's PromptMixin / MetadataMixin / ConditioningTextMixin.

TASK_INSTRUCTIONS = {  # constants.TASK_INSTRUCTIONS (modes.instruction picks a task's)
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    "cover-nofsq": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
TEXT_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048
_TEXT_PROMPT = "# Instruction\n{}\n\n# Caption\n{}\n\n# Metas\n{}<|endoftext|>\n"  # SFT_GEN_PROMPT
_DEFAULT_METAS = "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"


def format_instruction(instruction: str | None) -> str:
    """The instruction (default: text2music's), ending in a colon."""
    instruction = instruction or TASK_INSTRUCTIONS["text2music"]
    return instruction if instruction.endswith(":") else instruction + ":"


def format_metas(metas: dict[str, Any] | str | None) -> str:
    """_parse_metas of one item: a string as is, a dict as the four "- key: value" lines (bpm / tempo,
    timesignature / time_signature, keyscale / key / scale: "N/A" when absent; duration: an int number of
    seconds, default 30), anything else the default block."""
    if isinstance(metas, str):
        return metas
    if not isinstance(metas, dict):
        return _DEFAULT_METAS
    bpm = metas.get("bpm", metas.get("tempo", "N/A"))
    sig = metas.get("timesignature", metas.get("time_signature", "N/A"))
    key = metas.get("keyscale", metas.get("key", metas.get("scale", "N/A")))
    duration = metas.get("duration", metas.get("length", 30))
    if isinstance(duration, (int, float)):
        duration = f"{int(duration)} seconds"
    elif not isinstance(duration, str):
        duration = "30 seconds"
    return f"- bpm: {bpm}\n- timesignature: {sig}\n- keyscale: {key}\n- duration: {duration}\n"


def text_prompt(
    caption: str, metas: dict[str, Any] | str | None = None, instruction: str | None = None
) -> str:
    """The text encoder's prompt: instruction, caption and metadata blocks, ending in <|endoftext|>."""
    return _TEXT_PROMPT.format(format_instruction(instruction), caption, format_metas(metas))


def lyric_prompt(lyrics: str, language: str = "en") -> str:
    """The lyric prompt (only its token embeddings are used): language header, then the lyrics."""
    return f"# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"


def tokenize_prompts(tokenizer: Any, texts: list[str], lyrics: list[str]) -> tuple[np.ndarray, ...]:
    """(text_ids, text_mask, lyric_ids, lyric_mask): each prompt tokenized on its own (truncated to 256 /
    2048 tokens), the batch right-padded with the pad id; `tokenizer` is text.qwen3.Qwen3Tokenizer."""
    if len(texts) != len(lyrics):
        raise UserError(f"{len(texts)} text prompts but {len(lyrics)} lyric prompts")
    text_ids, text_mask = tokenizer.batch(texts, TEXT_MAX_TOKENS)
    lyric_ids, lyric_mask = tokenizer.batch(lyrics, LYRIC_MAX_TOKENS)
    return text_ids, text_mask, lyric_ids, lyric_mask
