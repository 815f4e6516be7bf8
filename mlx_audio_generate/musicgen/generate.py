"""MusicGen text -> audio: load a converted folder once, generate many times.

model = MusicGen.from_pretrained("converted/musicgen-small")
audio = model.generate("lofi piano", seconds=10, seed=0)   # (batch, channels, samples) float32
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..converted import load_weights, open_converted
from ..errors import UserError
from ..t5 import load_tokenizer
from .lm_generate import SamplingOptions, generate_codes
from .pipeline import MusicGenModel

Progress = Callable[[int, int], None]


class MusicGen:
    def __init__(self, model: MusicGenModel, tokenizer, config: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MusicGen:
        folder, config = open_converted(folder, "musicgen")
        model = MusicGenModel(config)
        load_weights(model, folder)
        # EnCodec runs in fp32 whatever the stored dtype: its LSTM state drifts ~2% in bf16, and the
        # codec is small (58M parameters), so half precision buys nothing worth that.
        model.audio_encoder.set_dtype(mx.float32)
        return cls(model, load_tokenizer(folder), config)

    @property
    def sample_rate(self) -> int:
        return self.model.audio_encoder.config.sampling_rate

    @property
    def frame_rate(self) -> int:
        return self.model.audio_encoder.config.frame_rate

    @property
    def audio_channels(self) -> int:
        return self.model.lm.config.audio_channels

    @property
    def max_seconds(self) -> float:
        # The models were trained on 30 s windows (audiocraft's max_duration); the LM's positions run out
        # soon after (2048 steps ≈ 41 s), so one window is capped at 30 s.
        return 30.0

    def encode_text(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        ids, mask = self.tokenizer.encode(prompts)
        ids, mask = mx.array(ids), mx.array(mask)
        return self.model.text_encoder(ids, mask), mask

    def decode_codes(self, codes: mx.array) -> mx.array:
        """Codes (B, K, F) -> audio (B, C, F*hop). Stereo codebooks are interleaved: the even ones are the
        left channel and the odd ones the right, each decoded by the same mono EnCodec (as transformers)."""
        codec = self.model.audio_encoder
        if self.audio_channels == 1:
            return codec.decode(codes)
        left = codec.decode(codes[:, 0::2])
        right = codec.decode(codes[:, 1::2])
        return mx.concatenate([left, right], axis=1)

    def generate(
        self,
        prompt: str | list[str],
        seconds: float = 5.0,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        guidance_coef: float = 3.0,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Audio (batch, channels, round(seconds * sample_rate)) float32 for one prompt or a list of them."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p.strip() for p in prompts):
            raise UserError("prompt is empty; describe the audio you want")
        if not math.isfinite(seconds) or seconds <= 0:
            raise UserError(f"seconds must be a positive number, got {seconds}")
        if seconds > self.max_seconds:
            raise UserError(f"seconds must be at most {self.max_seconds:g} for MusicGen, got {seconds:g}")
        samples = round(seconds * self.sample_rate)
        frames = math.ceil(samples / self.model.audio_encoder.config.hop_length)
        states, mask = self.encode_text(prompts)
        options = SamplingOptions(
            temperature=temperature, top_k=top_k, top_p=top_p or None, guidance_scale=guidance_coef
        )
        codes = generate_codes(self.model.lm, states, mask, frames, options, key=seed, progress=progress)
        audio = self.decode_codes(codes)[..., :samples]
        return np.array(audio.astype(mx.float32))
