"""MusicGen text -> audio: load a converted folder once, generate many times.

model = MusicGen.from_pretrained("converted/musicgen-small")
audio = model.generate("lofi piano", seconds=10, seed=0)   # (batch, channels, samples) float32

Also: `melody=` (melody checkpoints: a file or mono samples at the model's rate), `audio_prompt=` (a file or
channels × samples to continue: the output starts with it, `seconds` is the total length, as audiocraft's
`generate_continuation`), and `seconds` beyond the 30 s window by sliding-window extension (`extend_stride`,
longform.py). One melody / audio prompt is shared by every text prompt of a batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..audio import match_channels, read_audio
from ..converted import Converted, load_weights, open_folder
from ..errors import UserError
from ..progress import OnStage, report_stage, step_reporter
from ..settings import check_prompts, check_seconds, check_settings, named, resolve_seed
from ..text.t5 import load_tokenizer
from .chroma import ChromaConfig, chroma_features
from .delay import num_steps, revert_delay_pattern
from .family import FAMILY, MAX_TOTAL_SECONDS, SETTINGS
from .full_model import MusicGenModel
from .lm_generate import SamplingOptions, generate_codes, generate_steps, head_columns
from .longform import DEFAULT_WINDOW, Window, WindowPlan, extend, melody_window, plan_windows, stride_frames
from .memory import check_request

Progress = Callable[[int, int], None]
# Frames of EnCodec's right-hand receptive field (~3.75 at 32 kHz: a 7-tap conv at the frame rate plus the
# upsampling convs); audio this close to the last decoded frame can still change.
_STREAM_MARGIN = 5
AudioInput = str | Path | np.ndarray
# The sampling settings `generate` checks against the schema (the audio inputs are files or arrays).
_SAMPLING = [s for s in SETTINGS if s.name in ("temperature", "top_k", "top_p", "guidance_coef")]


@dataclass(frozen=True)
class _Plan:
    """What `MusicGen._plan` prepares before the first decoder step."""

    windows: WindowPlan  # lazy: O(1) memory however many windows
    stride: int  # frames
    prompt_codes: mx.array | None  # the encoded audio prompt, one row per text prompt
    window_args: Callable[[Window], dict]  # generate_codes / generate_steps arguments of a window
    num_codebooks: int
    audio_channels: int

    def steps(self, w: Window) -> int:
        """Decoder steps of window `w`."""
        return num_steps(w.new_frames, self.num_codebooks, self.audio_channels)

    @property
    def total_steps(self) -> int:
        return sum(self.steps(w) for w in self.windows)

    def steps_before(self, w: Window) -> int:
        """Decoder steps of the windows before `w`."""
        return sum(self.steps(self.windows[i]) for i in range(self.windows.index(w)))


def _real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def window_keys(seed: int | list[int], index: int) -> int | list[int]:
    """The seed(s) of window `index` for a clip seed or one seed per batch row."""
    if isinstance(seed, list):
        return [window_seed(s, index) for s in seed]
    return window_seed(seed, index)


def window_seed(seed: int, index: int) -> int:
    """Seed of window `index` of a long clip: the clip's seed for the first (so a one-window clip is the
    plain generation), an independent stream for the others."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint64)[0] % (2**63))


class MusicGen:
    def __init__(self, model: MusicGenModel, tokenizer, config: dict, chroma: ChromaConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.chroma_config = chroma or ChromaConfig()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MusicGen:
        return cls.from_converted(open_folder(folder, FAMILY.name))

    @classmethod
    def from_converted(cls, conv: Converted) -> MusicGen:
        folder, config = conv.folder, conv.config
        model = MusicGenModel(config)
        load_weights(model, conv)
        # EnCodec runs in fp32 whatever the stored dtype: its LSTM state drifts ~2% in bf16, and the
        # codec is small (58M parameters), so half precision buys nothing worth that.
        model.audio_encoder.set_dtype(mx.float32)
        chroma = ChromaConfig.from_folder(folder) if model.lm.has_melody else None
        return cls(model, load_tokenizer(folder), config, chroma)

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
    def is_melody(self) -> bool:
        return self.model.lm.has_melody

    @property
    def max_seconds(self) -> float:
        # One window: the models were trained on 30 s (audiocraft's max_duration). Longer clips are made of
        # overlapping windows (`extend_stride`).
        return DEFAULT_WINDOW

    def encode_text(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        ids, mask = self.tokenizer.encode(prompts)
        ids, mask = mx.array(ids), mx.array(mask)
        return self.model.text_encoder(ids, mask), mask

    def decode_codes(self, codes: mx.array, progress: Progress | None = None) -> mx.array:
        """Codes (B, K, F) -> audio (B, C, F*hop). Stereo codebooks are interleaved: the even ones are the
        left channel and the odd ones the right, each decoded by the same mono EnCodec (as transformers).

        `progress(done, total)`: a chunk per EnCodec decoder layer of each channel (total = C x layers),
        each evaluated before it is reported (0/total first), so a long clip's decode shows its progress;
        the audio is the same with or without it."""
        codec = self.model.audio_encoder
        channels = self.audio_channels
        per = len(codec.decoder.layers)
        if progress is not None:
            progress(0, channels * per)
        pieces = []
        for c in range(channels):
            step = None if progress is None else (lambda i, c=c: progress(c * per + i, channels * per))
            pieces.append(codec.decode(codes if channels == 1 else codes[:, c::channels], step))
        return pieces[0] if channels == 1 else mx.concatenate(pieces, axis=1)

    # -- audio inputs -------------------------------------------------------------------------------------

    def _read(self, audio: AudioInput, what: str, channels: int, max_frames: int) -> np.ndarray:
        """A file (any rate/channels soundfile reads, resampled) or an array at the model's rate, as
        float32 channels × samples with `channels` channels (mono: the channel mean; stereo from mono: both
        sides). Of a file only the first `max_frames` samples (at the model's rate) are read: what is used."""
        if isinstance(audio, str | Path):
            x = read_audio(audio, sample_rate=self.sample_rate, channels=channels, max_frames=max_frames)
        else:
            try:
                x = np.asarray(audio, dtype=np.float32)
            except (TypeError, ValueError):
                raise UserError(f"{what} must be a file path or an array of samples") from None
            if x.ndim == 1:
                x = x[None]
            if x.ndim != 2 or x.shape[1] == 0:
                raise UserError(f"{what} must be samples or channels × samples, got shape {x.shape}")
            if x.shape[0] > x.shape[1]:
                raise UserError(f"{what} has shape {x.shape}: expected channels × samples, not the transpose")
            x = match_channels(x, channels, what)
        if not np.isfinite(x).all():
            raise UserError(f"{what} holds NaN or infinite samples")
        return x

    def melody_chroma(self, wav: np.ndarray) -> mx.array:
        """Mono melody samples at the model's rate -> one-hot chroma (1, frames, 12), as transformers'
        MusicgenMelodyFeatureExtractor."""
        if self.chroma_config.sampling_rate != self.sample_rate:
            raise UserError("the melody feature extractor's sampling rate differs from the model's")
        return mx.array(chroma_features(np.asarray(wav, np.float32).reshape(-1), self.chroma_config))[None]

    def encode_audio(self, audio: np.ndarray) -> mx.array:
        """Audio (C, T) at the model's rate and channel count -> codes (1, K, ceil(T / hop)). Stereo: L and R
        are encoded separately by the mono codec and interleaved (transformers / audiocraft)."""
        codec = self.model.audio_encoder
        kc = self.model.lm.config.codebooks_per_channel
        if codec.config.num_quantizers_for_bandwidth(codec.config.target_bandwidths[0]) != kc:
            raise UserError("this checkpoint's EnCodec does not emit as many codebooks as the decoder reads")
        x = mx.array(np.asarray(audio, np.float32))
        codes = [codec.encode(x[c][None, None]) for c in range(x.shape[0])]
        if len(codes) == 1:
            return codes[0]
        return mx.stack(codes, axis=2).reshape(1, 2 * kc, -1)  # [L0, R0, L1, R1, ...]

    # -- generation ---------------------------------------------------------------------------------------

    def _plan(
        self,
        prompt: str | list[str],
        seconds: float,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        guidance_coef: float | None,
        seed: int | list[int] | None,
        melody: AudioInput | None,
        audio_prompt: AudioInput | None,
        extend_stride: float | None,
        window_seconds: float | None,
        on_stage: OnStage | None = None,
    ) -> _Plan:
        """Check `generate`'s arguments, read the audio inputs, encode the text ("text" stage) and plan the
        windows: everything before the first decoder step (shared by `generate_tokens` and `stream`)."""
        if not isinstance(prompt, str | list | tuple):
            raise UserError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = check_prompts(prompt)
        seconds = check_seconds(seconds, MAX_TOTAL_SECONDS)
        window_seconds = self.max_seconds if window_seconds is None else window_seconds
        if not _real(window_seconds) or window_seconds <= 0:
            raise UserError(f"window must be a positive number of seconds, got {window_seconds}")
        given = dict(temperature=temperature, top_k=top_k, top_p=top_p, guidance_coef=guidance_coef)
        s = check_settings(_SAMPLING, given)
        temperature, top_k, top_p, guidance_coef = (s[k] for k in given)
        seed = resolve_seed(seed, len(prompts))
        if melody is not None and not self.is_melody:
            raise UserError(f"{named('melody')} needs a melody checkpoint (facebook/musicgen-melody*)")
        options = SamplingOptions(
            temperature=temperature, top_k=top_k, top_p=top_p or None, guidance_scale=guidance_coef
        )
        hop = self.model.audio_encoder.config.hop_length
        samples, total, window, stride = self._frames(seconds, window_seconds, extend_stride)

        window_samples = round(window_seconds * self.sample_rate)
        windows = len(plan_windows(total, window, stride))  # the count does not depend on a prompt
        # The samples of the inputs that are used (a longer file is read only this far, see _read): one
        # window takes the melody's first chunk_length seconds (the feature extractor cuts there), several
        # read it from each window's start, wrapping only when it runs out (melody_window); a prompt must be
        # shorter than both the result and the window.
        used = (
            self.chroma_config.max_samples if windows == 1 else (windows - 1) * stride * hop + window_samples
        )
        cap = min(samples, window * hop)
        tokens = max(len(p) for p in prompts) + 2  # sentencepiece: at most about one token a character
        check_request(
            dec=self.model.lm.config,
            codec=self.model.audio_encoder.config,
            t5=self.model.text_encoder.config,
            rows=len(prompts),
            guided=options.guided,
            window_frames=min(total, window),
            total_frames=total,
            text_tokens=tokens,
            prefix=self.model.lm.chroma_length + tokens if self.is_melody else 0,  # the melody LM's prefix
            prompt_samples=0 if audio_prompt is None else cap,
            melody_samples=0 if melody is None else min(used, window_samples),
            itemsize=self.model.lm.decoder.layer_norm.weight.dtype.size,
        )
        wav = None if melody is None else self._read(melody, "melody", 1, used)[0]
        codes = None
        if audio_prompt is not None:
            audio = self._read(audio_prompt, "audio prompt", self.audio_channels, cap)
            # a file read up to `cap` may be longer still: say so instead of the length read
            length = (
                f"{'at least ' if audio.shape[1] >= cap else ''}{audio.shape[1] / self.sample_rate:.2f} s"
            )
            if audio.shape[1] >= samples:
                raise UserError(
                    f"{named('audio_prompt')} ({length}) must be shorter than --seconds ({seconds:g} s), "
                    "the total length of the result"
                )
            if math.ceil(audio.shape[1] / hop) >= window:
                raise UserError(
                    f"{named('audio_prompt')} ({length}) must be shorter than the {window_seconds:g} s window"
                )
            codes = self.encode_audio(audio)
            codes = mx.broadcast_to(codes, (len(prompts), *codes.shape[1:]))
        plan = plan_windows(total, window, stride, 0 if codes is None else codes.shape[2])

        report_stage(on_stage, "text", 0, 1)
        states, mask = self.encode_text(prompts)
        if on_stage is not None:
            mx.eval(states, mask)  # the stage's real time (the same values as evaluated with the first step)
        report_stage(on_stage, "text", 1, 1)

        def window_args(w: Window) -> dict:
            """generate_codes / generate_steps arguments of window `w` (all but prompt_codes)."""
            i = plan.index(w)
            chroma = None
            if wav is not None:
                # one window: the whole melody, as transformers; several: audiocraft's moving, tiled melody
                part = wav if len(plan) == 1 else melody_window(wav, w.offset * hop, window_samples)
                chroma = self.melody_chroma(part)
            return dict(
                lm=self.model.lm,
                text_states=states,
                text_mask=mask,
                frames=w.new_frames,
                options=options,
                key=window_keys(seed, i),
                chroma=chroma,
            )

        return _Plan(
            plan, stride, codes, window_args, self.model.lm.config.num_codebooks, self.audio_channels
        )

    def _frames(
        self, seconds: float, window_seconds: float, extend_stride: float | None
    ) -> tuple[int, int, int, int]:
        """(samples, total frames, window frames, stride frames) of a clip (`stride_frames` checks the
        stride)."""
        samples = round(seconds * self.sample_rate)
        total = math.ceil(samples / self.model.audio_encoder.config.hop_length)
        window = round(window_seconds * self.frame_rate)
        return samples, total, window, stride_frames(extend_stride, window_seconds, self.frame_rate)

    def window_steps(
        self,
        seconds: float,
        audio_prompt: AudioInput | None = None,
        extend_stride: float | None = None,
        window_seconds: float | None = None,
        **_: object,
    ) -> list[int]:
        """The decoder steps of each window `generate` runs for these arguments (one entry: one window);
        they add up to the "generate" stage's total, so a progress display can name the window that runs
        (the server). Of the inputs only the audio prompt is read (its length sets the first window)."""
        seconds = check_seconds(seconds, MAX_TOTAL_SECONDS)
        window_seconds = self.max_seconds if window_seconds is None else window_seconds
        samples, total, window, stride = self._frames(seconds, window_seconds, extend_stride)
        prompt = 0
        if audio_prompt is not None:
            hop = self.model.audio_encoder.config.hop_length
            cap = min(samples, window * hop)
            prompt = math.ceil(
                self._read(audio_prompt, "audio prompt", self.audio_channels, cap).shape[1] / hop
            )
        plan = plan_windows(total, window, stride, min(prompt, max(0, min(total, window) - 1)))
        k = self.model.lm.config.num_codebooks
        return [num_steps(w.new_frames, k, self.audio_channels) for w in plan]

    def generate_tokens(
        self,
        prompt: str | list[str],
        seconds: float = 5.0,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_coef: float | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        melody: AudioInput | None = None,
        audio_prompt: AudioInput | None = None,
        extend_stride: float | None = None,
        window_seconds: float | None = None,
        *,
        on_stage: OnStage | None = None,
    ) -> mx.array:
        """Codes (batch, K, ceil(seconds * rate / hop)) for `generate`'s arguments (before decoding);
        `on_stage` sees the "text" and "generate" stages."""
        p = self._plan(
            prompt, seconds, temperature, top_k, top_p, guidance_coef, seed, melody, audio_prompt,
            extend_stride, window_seconds, on_stage,
        )  # fmt: skip
        total = p.total_steps
        report_stage(on_stage, "generate", 0, total)

        def run(w: Window, prompt_codes: mx.array | None) -> mx.array:
            hook = step_reporter(progress, on_stage, total, p.steps_before(w))
            return generate_codes(**p.window_args(w), prompt_codes=prompt_codes, progress=hook)

        return extend(p.windows, p.stride, run, p.prompt_codes)

    def generate(
        self,
        prompt: str | list[str],
        seconds: float = 5.0,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_coef: float | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        melody: AudioInput | None = None,
        audio_prompt: AudioInput | None = None,
        extend_stride: float | None = None,
        window_seconds: float | None = None,
        stream: bool = False,
        *,
        on_stage: OnStage | None = None,
    ) -> np.ndarray | Iterator[np.ndarray]:
        """Audio (batch, channels, round(seconds * sample_rate)) float32 for one prompt or a list of them.

        seed: one seed for every row, or one per prompt (variations: the same prompt with several seeds).
            A row depends only on its own prompt and seed, not on the rest of the batch.
        melody: file path or mono samples at `sample_rate` (melody checkpoints only).
        audio_prompt: file path or (channels ×) samples at `sample_rate` to continue; the result starts with
            its EnCodec reconstruction and is `seconds` long in total.
        extend_stride: seconds added per extra window when `seconds` exceeds the window (default 18 s for the
            30 s window); window_seconds: the window (default 30 s; smaller values are for tests).
        stream: return an iterator of audio chunks instead (see `stream`; one window at most).
        progress: `progress(done, total)` after each decoder step (all windows together).
        on_stage: `on_stage(stage, done, total)` for each stage in order, "text" (0/1, 1/1), "generate"
            (0/total, then after each decoder step) and "decode" (0/C*L, then after each of the L EnCodec
            decoder layers of each of the C channels); see progress.py."""
        if stream:
            if extend_stride is not None or window_seconds is not None:
                raise UserError(
                    f"streaming covers one window; {named('extend_stride', 'window_seconds')} do not apply"
                )
            return self.stream(
                prompt,
                seconds,
                temperature,
                top_k,
                top_p,
                guidance_coef,
                seed,
                progress,
                melody,
                audio_prompt,
                on_stage=on_stage,
            )
        codes = self.generate_tokens(
            prompt,
            seconds,
            temperature,
            top_k,
            top_p,
            guidance_coef,
            seed,
            progress,
            melody,
            audio_prompt,
            extend_stride,
            window_seconds,
            on_stage=on_stage,
        )
        samples = round(seconds * self.sample_rate)
        decoded = None if on_stage is None else (lambda done, total: on_stage("decode", done, total))
        audio = self.decode_codes(codes, decoded)[..., :samples]
        return np.array(audio.astype(mx.float32))

    def stream(
        self,
        prompt: str | list[str],
        seconds: float = 5.0,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_coef: float | None = None,
        seed: int | list[int] | None = None,
        progress: Progress | None = None,
        melody: AudioInput | None = None,
        audio_prompt: AudioInput | None = None,
        chunk_seconds: float = 1.0,
        *,
        on_stage: OnStage | None = None,
    ) -> Iterator[np.ndarray]:
        """`generate`, yielding audio (batch, channels, n) chunks while the tokens are still being generated;
        the chunks joined equal `generate`'s result for the same arguments.

        EnCodec's decoder is non-causal over ~4 frames (its convolutions) and causal beyond (its LSTM), so
        every `chunk_seconds` the codes so far are decoded and the audio up to `_STREAM_MARGIN` frames before
        their end, which no later code can change, is emitted. One window (30 s) at most.

        on_stage: as `generate`'s, but the stages interleave: "decode" counts the samples emitted so far
        (of round(seconds * sample_rate)), reported after each chunk is decoded."""
        if not _real(chunk_seconds) or chunk_seconds <= 0:
            raise UserError(f"chunk_seconds must be a positive number, got {chunk_seconds!r}")
        seconds = check_seconds(seconds, MAX_TOTAL_SECONDS)
        if seconds > self.max_seconds:
            raise UserError(f"streaming covers one {self.max_seconds:g} s window; use generate() for longer")
        plan = self._plan(
            prompt, seconds, temperature, top_k, top_p, guidance_coef, seed, melody, audio_prompt,
            None, None, on_stage,
        )  # fmt: skip
        (w,) = plan.windows
        prompt_codes = plan.prompt_codes
        args = plan.window_args(w)
        lm = self.model.lm
        b = args["text_states"].shape[0]
        hop, kc = self.model.audio_encoder.config.hop_length, lm.config.codebooks_per_channel
        samples = round(seconds * self.sample_rate)
        cols = [head_columns(lm, b, w.new_frames, prompt_codes)]
        total = num_steps(w.new_frames, lm.config.num_codebooks, self.audio_channels)
        every = max(1, round(chunk_seconds * self.frame_rate))
        sent = 0  # samples already yielded
        report_stage(on_stage, "generate", 0, total)
        report_stage(on_stage, "decode", 0, samples)
        for t, col in enumerate(generate_steps(**args, prompt_codes=prompt_codes)):
            cols.append(col[..., None])
            if progress is not None:
                progress(t + 1, total)
            report_stage(on_stage, "generate", t + 1, total)
            done = t + 1 == total
            frames = sum(c.shape[2] for c in cols) - kc  # complete frames so far (delay reverted)
            if not done and (frames < 1 or (t + 1) % every):
                continue
            codes = revert_delay_pattern(mx.concatenate(cols, axis=2), self.audio_channels)
            audio = self.decode_codes(codes)
            end = samples if done else min(samples, (frames - _STREAM_MARGIN) * hop)
            if end > sent:
                chunk = np.array(audio[..., sent:end].astype(mx.float32))
                sent = end
                report_stage(on_stage, "decode", sent, samples)
                yield chunk
