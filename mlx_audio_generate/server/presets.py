"""Presets: the families' declared ones as each served model can take them, and the user's saved ones.

A family's presets (`Family.presets`, data in its family.py) are offered for a model only when they fit that
checkpoint: every setting is one the model takes and its value passes the checkpoint's own check (sampler
names, step limits), and the length fits the model's window. A preset that does not fit is left out, never
half-applied.

User presets ("Save settings as preset" in the page) are rows of their own table in the server's SQLite
file, the history's (`<data dir>/history.sqlite3`, history.py), so they survive restarts with the history;
without a history they live in memory. Only this module reads or writes the `presets` table. The rows hold
what the routes (preset_routes.py) checked: a name, the model and its family, prompt, seconds, optional
seed and the settings given (never an audio input: uploads are not kept with presets).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..errors import UserError

if TYPE_CHECKING:
    from .models import ModelEntry

MAX_NAME_CHARS = 80
MAX_PRESETS = 500  # a bound on the table (each row is at most a few kB: prompt and settings are bounded)


def family_presets(entry: ModelEntry) -> list[dict[str, Any]]:
    """The presets of the model's family that fit this checkpoint (module doc), as GET /api/models lists
    them."""
    found = []
    for preset in registry.get(entry.family).presets:
        try:
            settings = preset.check(list(entry.params.values()), entry.max_total_seconds)
        except UserError:
            continue  # e.g. a base-model step count on a distilled checkpoint
        found.append(preset.info(settings))
    return found


class PresetExists(Exception):
    """A preset of that name is already saved (names are unique, ignoring case)."""


class TooManyPresets(Exception):
    pass


class Presets:
    """The user's presets by id, in SQLite (`path`, shared with the history) or in memory (`path` None)."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path), check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")  # as the history's connection
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS presets (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, folded TEXT NOT NULL UNIQUE,
                    model TEXT NOT NULL, family TEXT NOT NULL, prompt TEXT NOT NULL, seconds REAL NOT NULL,
                    seed INTEGER, settings TEXT NOT NULL, created REAL NOT NULL)"""
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def list(self) -> list[dict[str, Any]]:
        """Every preset, by name (any case)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM presets ORDER BY folded").fetchall()
        return [_row(r) for r in rows]

    def add(
        self, name: str, model: str, family: str, prompt: str, seconds: float, seed: int | None,
        settings: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        """Save a checked preset; PresetExists when the name is taken, TooManyPresets past MAX_PRESETS."""
        row = {
            "id": str(uuid.uuid4()), "name": name, "folded": name.casefold(), "model": model,
            "family": family, "prompt": prompt, "seconds": float(seconds), "seed": seed,
            "settings": json.dumps(settings), "created": time.time(),
        }  # fmt: skip
        with self._lock:
            if self._db.execute("SELECT COUNT(*) FROM presets").fetchone()[0] >= MAX_PRESETS:
                raise TooManyPresets(f"{MAX_PRESETS} presets are saved already; delete some first")
            try:
                names = ", ".join(row)
                self._db.execute(
                    f"INSERT INTO presets ({names}) VALUES ({', '.join(':' + k for k in row)})", row
                )
            except sqlite3.IntegrityError:
                raise PresetExists(
                    f"a preset named {name!r} exists already; delete it first or pick another name"
                ) from None
        return _row(row)

    def delete(self, preset_id: str) -> dict[str, Any] | None:
        """Remove a preset; its row as it was, or None when there is none with that id."""
        with self._lock:
            found = self._db.execute("SELECT * FROM presets WHERE id=?", (preset_id,)).fetchone()
            if found is None:
                return None
            self._db.execute("DELETE FROM presets WHERE id=?", (preset_id,))
        return _row(found)


def _row(r: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    row = dict(r)
    row.pop("folded")
    row["settings"] = json.loads(row["settings"])
    return row
