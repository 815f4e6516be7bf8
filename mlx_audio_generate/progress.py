"""Progress reporting: the models report, the command-line tools draw.

Generation reports through two optional callbacks of `generate`:
- `progress(done, total)`: the per-step callback (MusicGen decoder steps / diffusion steps), unchanged;
- `on_stage(stage, done, total)`: every stage in order, each from `(stage, 0, total)` up to
  `(stage, total, total)` with `done` increasing: "text" (the T5 encoder, 0/1 -> 1/1), "generate" (one
  call per step) and "decode" (the codec: MusicGen reports each EnCodec decoder layer of each audio
  channel, Stable Audio's VAE decodes in one piece, 0/1 -> 1/1).

`tqdm_bar` / `tqdm_stages` turn them into tqdm bars on stderr (a separate bar per stage); when stderr is not
a terminal (a log file, a pipe) the same meter text is written as whole lines instead, without the carriage
returns of a redrawn bar: at most one every LOG_EVERY_SECONDS, and the completed one; `eval_weights`
evaluates a converted weight dict tensor by tensor, reporting `(done, total)` to a bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx

Progress = Callable[[int, int], None]
OnStage = Callable[[str, int, int], None]
STAGES = ("text", "generate", "decode")
LOG_EVERY_SECONDS = 10.0


def report_stage(on_stage: OnStage | None, stage: str, done: int, total: int) -> None:
    if on_stage is not None:
        on_stage(stage, done, total)


def step_reporter(
    progress: Progress | None, on_stage: OnStage | None, total: int, done_before: int = 0
) -> Progress | None:
    """The per-step `(done, total)` callback of a generation loop, feeding both `progress` and the "generate"
    stage with `done_before + done` of `total` (a window's steps after the earlier windows'); None when
    neither is set, so the loop does no reporting at all."""
    if progress is None and on_stage is None:
        return None

    def report(done: int, _total: int) -> None:
        if progress is not None:
            progress(done_before + done, total)
        report_stage(on_stage, "generate", done_before + done, total)

    return report


def tqdm_bar(desc: str, quiet: bool = False, unit: str = "step") -> Progress | None:
    """A `(done, total)` callback drawing one tqdm bar on stderr (created on the first call, closed at
    `done >= total`); None when `quiet`."""
    if quiet:
        return None
    if not is_terminal(sys.stderr):
        return _line_bar(desc, unit)
    from tqdm import tqdm

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.disable:  # disable: closed, a new run of the same stage
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # show the completed bar even when the last updates came within tqdm's interval
            bar.close()

    return callback


def is_terminal(stream: object) -> bool:
    """Whether `stream` is an interactive terminal (bars redraw there; elsewhere they are lines)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _line_bar(desc: str, unit: str) -> Progress:
    """`tqdm_bar` for a log: tqdm's meter text ("decoding: 100%|##########| 4/4 [00:01<00:00, 3.2chunk/s]")
    as whole lines, when LOG_EVERY_SECONDS have passed since the last one and when the bar completes."""
    from tqdm import tqdm

    start = last = None

    def callback(done: int, total: int) -> None:
        nonlocal start, last
        now = time.monotonic()
        if start is None:  # a new run of this stage
            start = last = now
        if done >= total or now - last >= LOG_EVERY_SECONDS:
            line = tqdm.format_meter(done, total, now - start, prefix=desc, unit=unit, ascii=True)
            print(line, file=sys.stderr, flush=True)
            last = now
        if done >= total:
            start = None

    return callback


def tqdm_stages(
    descs: dict[str, str], quiet: bool = False, units: dict[str, str] | None = None
) -> OnStage | None:
    """An `on_stage` callback with a separate tqdm bar per stage named in `descs` (stage -> bar label);
    other stages are not drawn. None when `quiet`."""
    if quiet:
        return None
    units = units or {}
    bars = {stage: tqdm_bar(desc, unit=units.get(stage, "step")) for stage, desc in descs.items()}

    def on_stage(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is not None:
            bar(done, total)

    return on_stage


def eval_weights(weights: dict[str, mx.array], progress: Progress | None = None) -> None:
    """Evaluate every tensor of a (lazy) weight dict, one at a time, calling `progress(done, total)` after
    each: the conversion's real work (reading, renaming layouts, casting) happens here, so a bar over it
    shows real time. The values are the same as a single `mx.eval(weights)`."""
    import mlx.core as mx

    if progress is None:
        mx.eval(weights)
        return
    total = len(weights)
    progress(0, total)
    for i, value in enumerate(weights.values()):
        mx.eval(value)
        progress(i + 1, total)


class HubMeter:
    """A stand-in for the tqdm class huggingface_hub's `snapshot_download(tqdm_class=...)` draws with: it
    draws nothing and reports to `on_stage` instead: "files" (files fetched of the snapshot's files) and
    "download" (bytes written of the files' total size, the bar huggingface_hub calls "Reconstructing").
    The other bar (network bytes, whose total is a guess) is not reported. Subclass it per download with
    `HubMeter.reporting(on_stage)`: huggingface_hub makes its bars from the class, in several threads."""

    on_stage: OnStage | None = None

    @classmethod
    def reporting(cls, on_stage: OnStage) -> type[HubMeter]:
        return type("HubMeterReporting", (cls,), {"on_stage": staticmethod(on_stage)})

    def __init__(self, *args: object, total: float | None = None, initial: float = 0, desc: str = "",
                 unit: str = "it", **kwargs: object):  # fmt: skip
        self.total, self.n, self.desc, self.unit = total, initial or 0, desc or "", unit
        self.format_dict: dict[str, object] = {}

    def _stage(self) -> str | None:
        if self.unit == "B":
            return "download" if self.desc.startswith("Reconstruct") else None
        return "files" if self.desc.startswith("Fetching") else None

    def refresh(self, *args: object, **kwargs: object) -> None:
        stage = self._stage()
        if stage is not None and self.on_stage is not None and self.total:
            self.on_stage(stage, int(min(self.n, self.total)), int(self.total))

    def update(self, n: float | None = 1) -> None:
        self.n += n or 0
        self.refresh()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> HubMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
