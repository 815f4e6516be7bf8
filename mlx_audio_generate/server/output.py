"""What a job writes besides the audio: its file format and, when asked, loudness normalisation.

Declared once, as `Setting`s (`output_settings`): the request model (app.request_model), GET /api/models
(every model's `output`) and the web UI's fields are built from them. They are the same for every model, not
a family's settings, so they never reach `generate`: the job applies them to the audio it got (jobs.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ..audio import (
    LOUDNESS_RANGE,
    MIN_LOUDNESS_SECONDS,
    _available_formats,
    loudness_normalize,
    loudness_report,
)
from ..errors import UserError
from ..settings import Setting

FORMATS = ("wav", "flac", "mp3")  # a job's file formats (the download may still transcode to others)


@cache
def output_settings() -> tuple[Setting, ...]:
    """The output settings; `format` offers what this machine's libsndfile writes (MP3 needs >= 1.1)."""
    have = tuple(f for f in FORMATS if f".{f}" in _available_formats())
    lo, hi = LOUDNESS_RANGE
    return (
        Setting(
            "normalize", "float", None, "Loudness (LUFS)",
            "normalise the loudness (ITU-R BS.1770 integrated) to this many LUFS, true peak at most -1 dBTP "
            "(as the CLI's --normalize); empty: as generated",
            lo, hi,
        ),
        Setting(
            "format", "choice", "wav", "File format",
            "the clip's file format (WAV: 32-bit float; FLAC: 24-bit; MP3); the other formats are made from "
            "it when downloaded",
            choices=have,
        ),
    )  # fmt: skip


def output_names() -> set[str]:
    return {st.name for st in output_settings()}


def check_output(values: dict[str, Any], seconds: float) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The output settings of a request, checked, with defaults filled: (values, None), or (partial values,
    (field, one-line message)) for the first bad one."""
    out: dict[str, Any] = {}
    for st in output_settings():
        value = values.get(st.name)
        if st.kind == "choice" and value is not None and value not in (st.choices or ()):
            shown = value if isinstance(value, str) and len(value) <= 20 else "that"
            return out, (
                st.name,
                f"{st.name} '{shown}' is not offered here; choose one of: {', '.join(st.choices or ())}",
            )
        try:
            value = st.check(value)
        except UserError as e:
            return out, (st.name, str(e))
        out[st.name] = st.default if value is None else value
    if out["normalize"] is not None and seconds < MIN_LOUDNESS_SECONDS:
        msg = f"normalize needs a clip of at least {MIN_LOUDNESS_SECONDS:g} s (the BS.1770 gating block)"
        return out, ("normalize", msg)
    return out, None


def normalized(audio: np.ndarray, sample_rate: int, target: float | None) -> tuple[np.ndarray, dict | None]:
    """`audio` at `target` LUFS (None: as it is) and what was reached, with `report`: one line for people
    (it says why when the true-peak ceiling kept the clip short of the target)."""
    if target is None:
        return audio, None
    audio, info = loudness_normalize(audio, sample_rate, target_lufs=target)
    return audio, {**info, "report": loudness_report(info)}
