"""Clips longer than one window: audiocraft's sliding-window extension (`genmodel.py::_generate_tokens`).

The model is trained on 30 s windows. For longer clips audiocraft generates a first window, then repeatedly
keeps the last (window - stride) seconds of tokens as the audio prompt of the next window and generates
`stride` more seconds, until the total length is reached (the last window may be shorter). Every window is a
fresh `generate` call with an audio-code prompt, so the delay pattern is rebuilt around the prompt each time
and the kept frames are complete frames: the concatenated codes form one continuous sequence.

With a melody, each window's melody is the reference waveform read from the window's start time, wrapped
around (tiled) when it runs out, `window` seconds long (audiocraft's `positions % wav_length`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import UserError

DEFAULT_WINDOW = 30.0  # audiocraft's max_duration for MusicGen
DEFAULT_STRIDE = 18.0  # audiocraft's extend_stride


@dataclass(frozen=True)
class Window:
    offset: int  # first frame of this window in the whole sequence
    prompt_frames: int  # frames it is given (the audio prompt, then the previous window's tail)
    new_frames: int  # frames it generates


def stride_frames(extend_stride: float | None, window_seconds: float, frame_rate: float) -> int:
    """The stride in frames, checked: 0 < stride < window. None = audiocraft's 18 s for a 30 s window
    (the same 60 % of any other window)."""
    if extend_stride is None:
        extend_stride = window_seconds * DEFAULT_STRIDE / DEFAULT_WINDOW
    if not np.isfinite(extend_stride) or not 0 < extend_stride < window_seconds:
        raise UserError(
            f"extend stride must be more than 0 and less than the {window_seconds:g} s window, "
            f"got {extend_stride:g}"
        )
    stride = round(extend_stride * frame_rate)
    if not 0 < stride < round(window_seconds * frame_rate):
        raise UserError(f"extend stride {extend_stride:g} s rounds to {stride} frames; make it longer")
    return stride


def plan_windows(total: int, window: int, stride: int, prompt_frames: int = 0) -> list[Window]:
    """The windows audiocraft runs for `total` frames (all in frames, prompt included in `total`)."""
    if not 0 < stride < window:
        raise UserError(f"need 0 < stride < window (frames), got stride {stride}, window {window}")
    if prompt_frames >= min(total, window):
        raise UserError(f"a prompt of {prompt_frames} frames leaves nothing to generate")
    if total <= window:
        return [Window(0, prompt_frames, total - prompt_frames)]
    plan, offset, prompt = [], 0, prompt_frames
    while offset + prompt < total:
        chunk = min(total - offset, window)
        plan.append(Window(offset, prompt, chunk - prompt))
        prompt = chunk - stride
        offset += stride
    return plan


def extend(
    plan: list[Window],
    stride: int,
    generate_window: Callable[[Window, mx.array | None], mx.array],
    prompt_codes: mx.array | None = None,
) -> mx.array:
    """Run the windows. `generate_window(window, prompt)` returns codes (B, K, prompt + new frames) that start
    with `prompt`; returns the whole sequence (B, K, total) (the audio prompt included, as audiocraft)."""
    pieces = [] if prompt_codes is None else [prompt_codes]
    prompt = prompt_codes
    for w in plan:
        got = 0 if prompt is None else prompt.shape[2]
        if got != w.prompt_frames:
            raise UserError(f"window at frame {w.offset} expects a {w.prompt_frames}-frame prompt, got {got}")
        codes = generate_window(w, prompt)
        pieces.append(codes[:, :, w.prompt_frames :])
        prompt = codes[:, :, stride:]
        mx.eval(prompt)  # one window at a time: keep the graph (and memory) bounded
    return mx.concatenate(pieces, axis=2)


def melody_window(wav: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` samples of the melody from sample `start`, wrapping around (audiocraft's tiling)."""
    return wav[..., (start + np.arange(length)) % wav.shape[-1]]
