"""The server's memory: every job's settings, seed, timings, file and the user's notes, in SQLite.

One file, `<data dir>/history.sqlite3`, one table. The job queue writes a row when a job is submitted and
updates it when the job changes state; a restarted server reads the rows back, so the history (and the clips
beside it) survive restarts. Jobs that were queued or running when the server stopped come back as cancelled,
with a reason: they never finished and will not be run behind the user's back.

SQLite is used from the HTTP threads and the worker thread: one connection with `check_same_thread=False`
under this object's lock (SQLite serialises writers anyway; a job's row is a few hundred bytes). WAL keeps a
reader from waiting on a writer and survives a killed process without a half-written row.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: the output settings (format, normalize) and the loudness reached
STOPPED = "the server stopped before this job finished"
COLUMNS = (
    "id", "model", "family", "prompt", "seconds", "seed", "params", "sample_rate", "status", "error",
    "created", "started", "finished", "stage_times", "title", "rating", "starred",
    "format", "normalize", "loudness",
)  # fmt: skip
# Columns added after schema 1, added to an older file when it is opened (its rows: WAV, not normalised).
ADDED_COLUMNS = {"format": "TEXT NOT NULL DEFAULT 'wav'", "normalize": "REAL", "loudness": "TEXT"}
MAX_TITLE_CHARS = 200


class History:
    """Rows of jobs by id; `params` and `stage_times` are JSON objects."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS jobs (
                    id TEXT PRIMARY KEY, model TEXT NOT NULL, family TEXT NOT NULL, prompt TEXT NOT NULL,
                    seconds REAL NOT NULL, seed INTEGER NOT NULL, params TEXT NOT NULL,
                    sample_rate INTEGER NOT NULL, status TEXT NOT NULL, error TEXT,
                    created REAL NOT NULL, started REAL, finished REAL,
                    stage_times TEXT NOT NULL DEFAULT '{}',
                    title TEXT, rating INTEGER, starred INTEGER NOT NULL DEFAULT 0)"""
            )
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} was written by a newer mlx-audio-generate (schema {version})"
                )
            have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the queue's side ------------------------------------------------------------------------------------

    def save(self, row: dict[str, Any]) -> None:
        """Insert or update a job's row (the queue holds the job, notes included; the row follows it)."""
        values = {k: row.get(k) for k in COLUMNS}
        values["starred"] = int(bool(values["starred"]))
        values["params"] = json.dumps(values["params"] or {})
        values["stage_times"] = json.dumps(values["stage_times"] or {})
        values["format"] = values["format"] or "wav"
        values["loudness"] = None if values["loudness"] is None else json.dumps(values["loudness"])
        names = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        update = ", ".join(f"{k}=excluded.{k}" for k in values if k != "id")
        with self._lock:
            self._db.execute(
                f"INSERT INTO jobs ({names}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {update}", values
            )

    def load(self) -> list[dict[str, Any]]:
        """Every row, oldest first; unfinished jobs are marked cancelled (module doc) in the file too."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status='cancelled', error=?, "
                "finished=COALESCE(finished, started, created) WHERE status IN ('queued', 'running')",
                (STOPPED,),
            )
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created, rowid").fetchall()
        return [_row(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount > 0


def _row(r: sqlite3.Row) -> dict[str, Any]:
    row = dict(r)
    row["params"] = json.loads(row["params"] or "{}")
    row["stage_times"] = json.loads(row["stage_times"] or "{}")
    row["starred"] = bool(row["starred"])
    row["loudness"] = None if row["loudness"] is None else json.loads(row["loudness"])
    return row
