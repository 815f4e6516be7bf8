"""The model families: the one module that lists them. Everything else asks here.

A family is a package under mlx_audio_generate whose `family.py` exports `FAMILY` (a family.Family).
Adding one is that package plus one line in FAMILY_PACKAGES. `register()` adds a family at run time (tests,
plug-ins); it then serves the CLIs, batch files, the server and `load()` like the built-in ones.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import UserError
from .family import Family
from .settings import Setting

FAMILY_PACKAGES = (
    "mlx_audio_generate.musicgen",
    "mlx_audio_generate.stable_audio",
    "mlx_audio_generate.stable_audio_3",
    "mlx_audio_generate.ace_step",
)

_families: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """name -> Family, in registration order (built-in families first)."""
    global _families
    if _families is None:
        found: dict[str, Family] = {}
        for package in FAMILY_PACKAGES:
            fam = importlib.import_module(f"{package}.family").FAMILY
            found[fam.name] = fam
        _families = found
    return _families


def register(family: Family) -> None:
    """Add (or replace) a family at run time."""
    families()[family.name] = family


def unregister(name: str) -> None:
    families().pop(name, None)


def get(name: str) -> Family:
    fam = families().get(name)
    if fam is None:
        raise UserError(f"unknown model family '{name}'; this version knows {', '.join(families())}")
    return fam


def labels() -> str:
    """'A, B or C': every family's label, for messages."""
    names = [f.label for f in families().values()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def short_names() -> dict[str, str]:
    """Every family's short model names -> repo ids."""
    return {name: repo for f in families().values() for name, repo in f.models.items()}


def known_repos() -> set[str]:
    """Repos fetched without --trust-remote-code: the families' own and those their conversions read."""
    return {r for f in families().values() for r in f.repos | f.extra_repos}


def for_model(name: str) -> Family | None:
    """The family a model name stands for (a family name, a short name or a known repo id), else None."""
    fams = families()
    if name in fams:
        return fams[name]
    repo = short_names().get(name, name)
    return next((f for f in fams.values() if repo in f.repos), None)


def detect(folder: Path) -> Family:
    """The family of a reference checkpoint folder (each family's `detect` reads only its configs)."""
    from .hub import read_json

    folder = Path(folder)
    for fam in families().values():
        if fam.detect(folder):
            return fam
    config = read_json(folder / "config.json")
    if isinstance(config, dict):
        kind = config.get("model_type") or "unknown"
        raise UserError(f"{folder} holds a '{kind}' model; expected {labels()}")
    raise UserError(f"{folder} is not a {labels()} checkpoint (no config this tool recognises)")


def all_settings() -> dict[str, tuple[Setting, list[Family]]]:
    """Every family's settings, by name: (the setting, the families that have it). A name two families
    share is one CLI flag / request field, so its kind must agree."""
    found: dict[str, tuple[Setting, list[Family]]] = {}
    for fam in families().values():
        for st in fam.settings(None):
            if st.name not in found:
                found[st.name] = (st, [fam])
            elif found[st.name][0].kind != st.kind:
                raise RuntimeError(f"setting {st.name!r} has two kinds: {found[st.name][0].kind}, {st.kind}")
            else:
                found[st.name][1].append(fam)
    return found
