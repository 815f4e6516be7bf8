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

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

import mlx.core as mx
import numpy as np

from ..errors import UserError
from ..settings import named

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
    if isinstance(extend_stride, bool) or not isinstance(extend_stride, numbers.Real):
        raise UserError(f"{named('extend_stride')} must be a number of seconds, got {extend_stride!r}")
    if not np.isfinite(extend_stride) or not 0 < extend_stride < window_seconds:
        raise UserError(
            f"{named('extend_stride')} must be more than 0 and less than the {window_seconds:g} s window, "
            f"got {extend_stride:g}"
        )
    stride = round(extend_stride * frame_rate)
    if not 0 < stride < round(window_seconds * frame_rate):
        raise UserError(
            f"{named('extend_stride')} = {extend_stride:g} s rounds to {stride} frames; make it longer"
        )
    return stride


class WindowPlan(Sequence[Window]):
    """The windows audiocraft runs, computed on demand: O(1) memory whatever the length (a call is capped at
    an hour, but a plan never holds more than the window asked for). Equal to the list of its windows."""

    def __init__(self, total: int, window: int, stride: int, prompt_frames: int = 0):
        self.total, self.window, self.stride, self.prompt_frames = total, window, stride, prompt_frames

    def __len__(self) -> int:
        if self.total <= self.window:
            return 1
        # window i >= 1 exists while (i - 1) * stride + window < total (it would only repeat known frames)
        return 1 + -(-(self.total - self.window) // self.stride)

    @overload
    def __getitem__(self, i: int) -> Window: ...
    @overload
    def __getitem__(self, i: slice) -> list[Window]: ...
    def __getitem__(self, i: int | slice) -> Window | list[Window]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} of {n}")
        total, window, stride = self.total, self.window, self.stride
        if i == 0:
            return Window(0, self.prompt_frames, min(total, window) - self.prompt_frames)
        offset = i * stride
        prompt = min(total - (i - 1) * stride, window) - stride  # the previous window's tail
        return Window(offset, prompt, min(total - offset, window) - prompt)

    def index(self, w: Window, *args: int) -> int:  # type: ignore[override]
        """Position of `w` (offsets are multiples of the stride): O(1)."""
        i = w.offset // self.stride
        if i >= len(self) or self[i] != w:
            raise ValueError(f"{w} is not in this plan")
        return i

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WindowPlan | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        args = f"{self.total}, {self.window}, {self.stride}, {self.prompt_frames}"
        return f"WindowPlan({args}: {len(self)} windows)"


def plan_windows(total: int, window: int, stride: int, prompt_frames: int = 0) -> WindowPlan:
    """The windows audiocraft runs for `total` frames (all in frames, prompt included in `total`): a lazy
    sequence equal to the list audiocraft's loop builds."""
    if not 0 < stride < window:
        raise UserError(f"need 0 < stride < window (frames), got stride {stride}, window {window}")
    if prompt_frames >= min(total, window):
        raise UserError(f"a prompt of {prompt_frames} frames leaves nothing to generate")
    return WindowPlan(total, window, stride, prompt_frames)


def extend(
    plan: Sequence[Window],
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
