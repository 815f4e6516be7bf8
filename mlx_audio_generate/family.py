"""What a model family is to the rest of the tool: the `Family` description each family package exports
(`<package>/family.py: FAMILY`), and the `AudioModel` protocol that `load()` returns.

Everything outside a family package (names and downloads, conversion, loading, quantization, the CLIs, batch
files, the server and its UI) asks a `Family` (through `registry`) instead of naming one. Adding a family is
one package exporting a `Family` plus one line in registry.FAMILY_PACKAGES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .errors import UserError
from .settings import Setting, check_prompts, check_seconds, check_settings

if TYPE_CHECKING:
    from .converted import Converted

Progress = Callable[[int, int], None]
OnStage = Callable[[str, int, int], None]


@runtime_checkable
class AudioModel(Protocol):
    """A loaded model: `generate` returns float32 audio (batch, channels, round(seconds * sample_rate)).

    `generate(prompt, seconds=..., seed=..., progress=..., on_stage=..., **settings)` takes the family's
    settings as keywords (its `Family.settings`); families whose `Family.streams` is true also take
    `stream=True` and then return an iterator of (batch, channels, n) chunks. A model with a `low_memory`
    attribute frees, when it is set, the weights a call is done with (read back on the next call): the CLI
    sets it for a run of one generate call; the server and the Python API leave it off.

    A long-form model (`Family.long_form`) may also have `window_steps(seconds, **settings) -> list[int]`:
    the decoder steps of each window a `generate` call with these arguments runs (they add up to the
    "generate" stage's total), so a progress display can say which window is running (the server)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def audio_channels(self) -> int: ...

    @property
    def max_seconds(self) -> float: ...

    def generate(
        self, prompt: str | list[str], *args: Any, **kwargs: Any
    ) -> np.ndarray | Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class ModelFacts:
    """What a converted folder's config alone says about its model (no weights are read)."""

    sample_rate: int
    audio_channels: int
    max_seconds: float  # the longest clip one request may ask for (the server's and UI's limit)


@dataclass(frozen=True)
class QuantizeSpec:
    """Which layers `-q` quantizes: the `nn.Linear`s under `module` (the generative core), except those whose
    last path component is in `dense_only` (read through `.weight`, or precision-setting ends) or whose path
    starts with one of `skip_prefixes`."""

    module: str
    dense_only: frozenset[str] = frozenset()
    skip_prefixes: tuple[str, ...] = ()
    description: str = ""  # for help texts: "LM", "DiT"


@dataclass(frozen=True)
class ConvertJob:
    """One conversion, as `Family.convert` receives it: write the converted folder into `out` (an empty
    temp folder; converted.write_folder does the writing)."""

    src: Path  # the reference checkpoint folder (already fetched)
    out: Path
    dtype: str | None  # None keeps the checkpoint's own
    source: str  # what the user named (repo id or folder), recorded in the folder
    quantize_bits: int | None
    quantize_group_size: int
    progress: Progress | None
    options: Mapping[str, Any]  # the family's convert settings (`Family.convert_settings`), by name
    # fetch another checkpoint (repo id or folder) the conversion needs; optional 2nd argument: file patterns
    fetch: Callable[..., Path]


@dataclass(frozen=True)
class Preset:
    """A named starting point the web UI offers: a prompt, a length and some of the family's settings
    (those left out keep the checkpoint's defaults). Declared as data in each family's family.py."""

    name: str  # what the picker shows: "Lofi beat, 80 BPM"
    prompt: str
    seconds: float
    settings: Mapping[str, Any] = field(default_factory=dict)

    def check(self, settings: list[Setting], max_seconds: float | None = None) -> dict[str, Any]:
        """The preset's settings checked against a schema (a family's, or one checkpoint's): every key is one
        of `settings` (and offered by the server), every value passes its `Setting.check`, the prompt is a
        prompt and the seconds fit `max_seconds`. Returns the checked settings; a UserError otherwise."""
        where = f"preset {self.name!r}"
        if not self.name.strip():
            raise UserError("a preset has an empty name")
        check_prompts(self.prompt, f"{where}: prompt")
        check_seconds(self.seconds, max_seconds, f"{where}: seconds")
        offered = [st for st in settings if st.server and st.kind != "file"]
        try:
            checked = check_settings(offered, self.settings, fill_defaults=False)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        return {k: v for k, v in checked.items() if k in self.settings}

    def info(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What GET /api/models lists (with the checked settings)."""
        return {
            "name": self.name,
            "prompt": self.prompt,
            "seconds": float(self.seconds),
            "settings": settings,
        }


@dataclass(frozen=True)
class Family:
    name: str  # recorded in converted folders; `--model NAME --weights-dir DIR` names it
    label: str  # how people call it: "MusicGen"
    models: Mapping[str, str]  # short model name -> Hugging Face repo id
    example: str  # a model name for hints
    detect: Callable[[Path], bool]  # is this reference checkpoint folder one of ours? (reads configs only)
    convert: Callable[[ConvertJob], None]
    load: Callable[[Converted], AudioModel]
    facts: Callable[[dict[str, Any]], ModelFacts]  # from a converted folder's config.json
    # The generation settings (besides prompt, seconds and seed) for a converted config, or for the family
    # in general (None: defaults and choices that depend on the checkpoint are None).
    settings: Callable[[dict[str, Any] | None], list[Setting]]
    quantize: QuantizeSpec
    download_patterns: Callable[[str], list[str]] | None = None  # None: configs, tokenizers, safetensors
    extra_repos: frozenset[str] = frozenset()  # other repos its conversion may fetch (allowed like its own)
    convert_settings: tuple[Setting, ...] = ()  # extra mlx-audio-convert options (e.g. a text encoder)
    streams: bool = False  # generate(..., stream=True) is supported
    long_form: bool = False  # seconds may exceed the model's window (max_seconds) in the CLI, batch and API
    # with long_form: the longest clip one call makes (the server's and UI's limit beyond the window)
    max_total_seconds: float | None = None
    verb: str = "generating"  # the CLI's progress label for the "generate" stage
    examples: tuple[str, ...] = ()  # example prompts the web UI offers (presets a user can start from)
    presets: tuple[Preset, ...] = ()  # named prompt + settings bundles the web UI offers (Preset)
    repos: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repos", frozenset(self.models.values()))
        if self.long_form and self.max_total_seconds is None:
            raise ValueError(f"family {self.name}: long_form needs max_total_seconds (the longest clip)")
