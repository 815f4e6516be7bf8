"""The server's models: converted folders by name, described from their config, loaded on first use.

A model is given as the CLI takes it: a converted folder, a model name or repo id, or a reference checkpoint
folder (the last two are fetched and converted once into the CLI's cache, resolve.py, before the server
starts). A models folder may be a folder of converted folders or the CLI's cache itself
(`<cache>/<owner--name>/<dtype>/`): each conversion in it is served under its model's short name.

Describing a model (sample rate, length limit, parameters and defaults) reads only config.json, through its
family (`Family.facts`, `Family.settings`), so the server starts at once and can validate requests before any
weights are loaded; the worker thread loads the weights the first time a job needs them and keeps the model.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from .. import registry
from ..converted import Converted, load_model, open_folder, read_meta
from ..errors import UserError
from ..settings import Setting
from .output import output_settings
from .presets import family_presets

log = logging.getLogger("mlx_audio_generate.server")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise UserError(
            f"model name '{name}' is not allowed; use letters, digits, '.', '_' or '-' (at most 64)"
        )


class ModelEntry:
    """A named converted folder: its description now, its loaded model once a job needs it."""

    def __init__(
        self,
        name: str,
        conv: Converted,
        sample_rate: int,
        max_seconds: float,
        params: list[Setting],
        max_total_seconds: float | None = None,
    ):
        self.name = name
        self.conv = conv
        self.folder = conv.folder
        self.family = conv.family
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds  # one window
        # long-form families (Family.long_form): a request may ask for more than one window, up to this
        self.long_form = max_total_seconds is not None
        self.max_total_seconds = max_seconds if max_total_seconds is None else max_total_seconds
        self.params = {p.name: p for p in params}
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, name: str, folder: str | Path) -> ModelEntry:
        check_name(name)
        folder = Path(folder).expanduser().resolve()
        if read_meta(folder) is None:
            raise UserError(f"'{folder}' is not a folder written by mlx-audio-convert")
        conv = open_folder(folder)
        fam = registry.get(conv.family)
        try:
            facts = fam.facts(conv.config)
            params = [st for st in fam.settings(conv.config) if st.server]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(
                f"cannot read '{conv.folder}/config.json' ({e!r}); convert the model again"
            ) from None
        total = fam.max_total_seconds if fam.long_form else None
        return cls(name, conv, facts.sample_rate, facts.max_seconds, params, total)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:
        """The model, loading it on first use (call from the worker thread: it owns the device)."""
        with self._lock:
            if self._model is None:
                model = load_model(self.conv)  # a failure is not cached
                self.sample_rate = int(model.sample_rate)
                self.max_seconds = float(model.max_seconds)
                if not self.long_form:
                    self.max_total_seconds = self.max_seconds
                self._model = model
            return self._model

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "family_label": registry.get(self.family).label,
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "max_total_seconds": self.max_total_seconds,
            "long_form": self.long_form,
            "loaded": self.loaded,
            "params": [p.info() for p in self.params.values()],
            "output": [p.info() for p in output_settings()],
            "examples": list(registry.get(self.family).examples),
            "presets": family_presets(self),
        }


def open_spec(name: str, spec: str | Path, dtype: str | None = None) -> ModelEntry:
    """`spec` as the CLI's --model takes it (module doc), served as `name`."""
    check_name(name)  # before anything is fetched or converted
    folder = Path(spec).expanduser()
    if folder.is_dir() and read_meta(folder) is not None:
        return ModelEntry.from_folder(name, folder)
    from ..resolve import resolve

    return ModelEntry.from_folder(name, resolve(str(spec), dtype=dtype))


def _cache_entries(child: Path) -> list[tuple[str, Path]]:
    """(name, folder) of each conversion in a cache entry `<owner--name>/<dtype>/` (resolve.py's layout):
    the registry's short name for the repo (else the folder's name), plus `-<dtype>` unless original."""
    repo = child.name.replace("--", "/", 1)
    short = {r: n for n, r in registry.short_names().items()}.get(repo, child.name)
    found = []
    for sub in sorted(p for p in child.iterdir() if p.is_dir() and read_meta(p) is not None):
        dtype = sub.name.split("--", 1)[0]  # local folders' entries carry a content key after the dtype
        found.append((short if dtype == "original" else f"{short}-{dtype}", sub))
    return found


def discover_models(
    named: dict[str, str | Path] | None = None, models_dirs: list[str | Path] | None = None
) -> dict[str, ModelEntry]:
    """Models given by name (errors are fatal) plus every converted folder directly inside `models_dirs`
    (named after the folder; folders that are not converted models are skipped)."""
    entries: dict[str, ModelEntry] = {}
    for name, folder in (named or {}).items():
        entries[name] = open_spec(name, folder)
    for d in models_dirs or []:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise UserError(f"--models-dir '{root}' is not a folder")
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if child.name in entries or not NAME_RE.match(child.name):
                continue
            if read_meta(child) is None and not (child / "config.json").is_file():
                for name, sub in _cache_entries(child):  # the CLI's cache layout
                    if name not in entries and NAME_RE.match(name):
                        try:
                            entries[name] = ModelEntry.from_folder(name, sub)
                        except UserError as e:
                            log.warning("skipping %s: %s", sub, e)
                continue
            try:
                entries[child.name] = ModelEntry.from_folder(child.name, child)
            except UserError as e:
                if (child / "config.json").is_file():  # a broken model deserves a word; other folders don't
                    log.warning("skipping %s: %s", child, e)
    return entries
