"""Audio the user gives the server (a melody, an init audio, audio to inpaint or continue): uploaded once,
kept in `<data dir>/uploads/<id><ext>`, named in job requests by its id.

A file setting of a family (`Setting.kind == "file"`) is, in a server request, the id of an upload or of a
finished job (its clip: "send to init / inpaint"), never a path: a request cannot make the server read a
file the user did not give it. An upload is accepted only if libsndfile reads it as audio (format sniffed
from its bytes, not trusted from its name), within the size limit; it is written to a temporary name and
renamed, so nothing half-written is ever an upload.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..weights import atomic_write

MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # ~6 min of 44.1 kHz stereo 16-bit WAV; compressed files are longer
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,5}$")
FORMAT_EXT = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff"}


class UploadError(Exception):
    """A refused upload: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    id: str
    name: str  # the file name the user gave (shown, never used as a path)
    format: str
    sample_rate: int
    channels: int
    seconds: float
    bytes: int


class Uploads:
    def __init__(self, folder: str | Path, max_bytes: int = MAX_UPLOAD_BYTES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def add(self, data: bytes, name: str) -> Upload:
        """Check `data` is audio libsndfile reads and keep it; UploadError (413 / 415) otherwise."""
        import io

        import soundfile as sf

        if len(data) > self.max_bytes:
            raise UploadError(413, f"the file is larger than {self.max_bytes // (1024 * 1024)} MB")
        if not data:
            raise UploadError(415, "the file is empty")
        try:
            info = sf.info(io.BytesIO(data))
        except Exception:  # libsndfile's message names no format; say what is accepted
            raise UploadError(
                415, "not an audio file this server reads (WAV, FLAC, OGG, MP3 or AIFF)"
            ) from None
        if info.frames < 1 or info.samplerate < 1:
            raise UploadError(415, "the audio file holds no samples")
        ext = FORMAT_EXT.get(info.format, ".audio")
        shown = Path(name or "audio").name[:120] or "audio"
        up = Upload(
            str(uuid.uuid4()), shown, info.format, int(info.samplerate), int(info.channels),
            info.frames / info.samplerate, len(data),
        )  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            atomic_write(self.folder / f"{up.id}{ext}", lambda tmp: Path(tmp).write_bytes(data))
            atomic_write(
                self.folder / f"{up.id}.json", lambda tmp: Path(tmp).write_text(json.dumps(asdict(up)))
            )
        return up

    def get(self, upload_id: str) -> tuple[Upload, Path] | None:
        """The upload and its file, or None (`upload_id` must be a UUID: it never names a path)."""
        try:
            upload_id = str(uuid.UUID(upload_id))
        except (ValueError, TypeError, AttributeError):
            return None
        meta = self.folder / f"{upload_id}.json"
        try:
            up = Upload(**json.loads(meta.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        path = self.folder / f"{up.id}{FORMAT_EXT.get(up.format, '.audio')}"
        return (up, path) if path.is_file() else None

    def describe(self, up: Upload) -> dict[str, Any]:
        return {**asdict(up), "audio_url": f"/api/uploads/{up.id}/audio"}
