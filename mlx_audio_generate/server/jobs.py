"""The job queue: requests wait in order and ONE worker thread runs them.

The worker thread is the only one that touches MLX (loading and generating): MLX streams belong to the thread
that created them, and one device cannot run two generations faster than one after the other anyway. HTTP
handlers only enqueue and read snapshots, under one lock; a client that goes away changes nothing here.

With a `History` (history.py) every job is also a row in SQLite, written on submit and on every change of
state, and read back when the server starts: the history and its clips outlive the process.

A running job reports its stage as the model does (progress.py): "loading" (the weights, first use only),
"text", "generate", "decode", then "writing" (the loudness normalisation asked for, output.py, and the
file); each stage's start and end times are kept (`stage_times`), and the estimate of the time left (`eta`)
comes from the steps done so far plus the decode time of the model's last finished job, scaled by length.
A long-form clip's steps run window after window (`window_steps`, from the model): the view says which.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio import write_audio
from ..errors import UserError
from ..weights import atomic_write
from .history import MAX_TITLE_CHARS, History
from .models import ModelEntry
from .output import normalized

log = logging.getLogger("mlx_audio_generate.server")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
MAX_ERROR_CHARS = 500  # a job's error is one line for people, not a dump

# What clients read (job errors, HTTP error bodies) names files, never where they are on the server: an
# absolute path becomes its base name. Quoted paths may hold spaces; a bare one ends at a space or at
# punctuation that ends a clause. The lookbehind keeps URLs ("http://h:1/x"), fractions ("1/2") and
# relative paths ("a/b") as they are.
_QUOTED_PATH = re.compile(r"""(['"`])((?:file://|~)?/[^'"`\n]*)\1""")
_BARE_PATH = re.compile(r"""(?<![\w.:/~-])(?:file://|~)?/(?=[^\s/])[^\s'"`,;:()\[\]{}<>]*""")


def _base_name(path: str) -> str:
    parts = [p for p in path.split("/") if p and p not in ("file:", "~")]
    return parts[-1] if parts else "a path"


def _bare(m: re.Match[str]) -> str:
    path = m.group(0)
    stripped = path.rstrip(".")  # the full stop of a sentence is not part of the file name
    return _base_name(stripped) + path[len(stripped) :]


def next_waiting(cv: threading.Condition, waiting: deque, stopping: Callable[[], bool]) -> Any:
    """A worker thread's next item: waits on `cv` (which the caller holds) until `waiting` has one, and pops
    it; None once `stopping()` (the job worker's and the fetch thread's loop)."""
    while not waiting and not stopping():
        cv.wait()
    return None if stopping() else waiting.popleft()


def redact_paths(text: str, folders: Mapping[str | Path, str] | None = None) -> str:
    """`text` with every absolute path replaced by its base name; each of `folders` (folder -> neutral
    word) disappears entirely: the folder alone becomes the word, a path inside it the file's name."""
    for folder, word in sorted((folders or {}).items(), key=lambda fw: -len(str(fw[0]))):
        root = re.escape(str(folder).rstrip("/"))
        text = re.sub(
            root + r"(/[^'\"`\n]*?)?(?=['\"`\s,;:()]|$)",
            lambda m, w=word: _base_name(m.group(1)) if m.group(1) else w,
            text,
        )
    text = _QUOTED_PATH.sub(lambda m: m.group(1) + _base_name(m.group(2)) + m.group(1), text)
    return _BARE_PATH.sub(_bare, text)


class QueueFull(Exception):
    """More jobs are waiting than --max-queue allows."""


class JobCancelled(Exception):
    """Raised from the progress callback to stop a generation between two steps."""


TRANSIENT = {"cancel_requested", "eta_hint", "stage", "step", "total", "inputs", "window_steps"}  # not kept


@dataclass
class Job:
    model: str
    family: str
    prompt: str
    seconds: float
    seed: int
    params: dict[str, Any]
    sample_rate: int
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)
    status: str = "queued"
    stage: str | None = None  # while running: "loading", "text", "generate", "decode", "writing"
    step: int = 0
    total: int = 0
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    stage_times: dict[str, list[float | None]] = field(default_factory=dict)  # stage -> [start, end]
    title: str | None = None  # the user's notes (history.py)
    rating: int | None = None
    starred: bool = False
    eta_hint: float | None = None  # seconds of decode expected after the last step (JobQueue._decode_hint)
    inputs: dict[str, str] = field(default_factory=dict)  # file settings -> server paths, never shown
    # the output settings (output.py): the file's format, the loudness asked for and what was reached
    format: str = "wav"
    normalize: float | None = None
    loudness: dict[str, Any] | None = None
    window_steps: list[int] = field(default_factory=list)  # long form: the decoder steps of each window

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        names = set(cls.__dataclass_fields__) - TRANSIENT
        job = cls(**{k: row[k] for k in names if k in row})
        if job.status == "done":
            job.step = job.total = 1
        return job

    def row(self) -> dict[str, Any]:
        """What history.py stores."""
        names = set(self.__dataclass_fields__) - TRANSIENT
        return {k: getattr(self, k) for k in names}

    def enter(self, stage: str, now: float | None = None) -> None:
        """Stage `stage` starts now (the previous one ends)."""
        now = time.time() if now is None else now
        if self.stage is not None and self.stage in self.stage_times:
            self.stage_times[self.stage][1] = now
        self.stage = stage
        self.stage_times[stage] = [now, None]

    def eta(self, now: float) -> float | None:
        """Seconds left, once steps have been timed (module doc); None before that."""
        if self.status != "running":
            return None
        decode = self.eta_hint
        if self.stage == "decode":
            start = self.stage_times["decode"][0]
            return None if decode is None else max(0.0, decode - (now - start))
        if self.stage != "generate" or not self.step or not self.total:
            return None
        per_step = (now - self.stage_times["generate"][0]) / self.step
        return per_step * (self.total - self.step) + (decode or 0.0)

    @property
    def download_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "audio"
        return f"{self.model}_{slug}_{self.seed}.{self.format}"

    def window(self) -> int | None:
        """The window running now (1 = the first; long form), or None."""
        if self.status != "running" or self.stage != "generate" or not self.window_steps or not self.total:
            return None  # (before the first step is counted, the view has no step total to place it in)
        end = 0
        for i, steps in enumerate(self.window_steps):
            end += steps
            if self.step < end:
                return i + 1
        return len(self.window_steps)

    def view(self, queue_position: int | None) -> dict[str, Any]:
        if self.status == "done":
            progress = 1.0
        elif self.status == "running" and self.total:
            progress = min(1.0, self.step / self.total)
        else:
            progress = 0.0
        now = time.time()
        end = self.finished or now
        return {
            "id": self.id,
            "status": self.status,
            "stage": self.stage,
            "progress": progress,
            "step": self.step,
            "total": self.total,
            "queue_position": queue_position,
            "error": self.error,
            "model": self.model,
            "family": self.family,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "seed": self.seed,
            "params": dict(self.params),
            "sample_rate": self.sample_rate,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "elapsed": None if self.started is None else end - self.started,
            "download_name": self.download_name,
            "eta": self.eta(now),
            "stage_times": {k: list(v) for k, v in self.stage_times.items()},
            "title": self.title,
            "rating": self.rating,
            "starred": self.starred,
            "format": self.format,
            "normalize": self.normalize,
            "loudness": None if self.loudness is None else dict(self.loudness),
            "windows": len(self.window_steps) or None,
            "window": self.window(),
        }


class JobQueue:
    """In-order jobs over `models`, audio written to `output_dir/<job id>.<format>` (+ a .json
    description)."""

    def __init__(
        self,
        models: dict[str, ModelEntry],
        output_dir: str | Path,
        max_queue: int = 16,
        max_jobs_kept: int = 1000,
        history: History | None = None,
    ):
        self.models = models
        self.output_dir = Path(output_dir).absolute()  # errors then name it in full, and redaction finds it
        self.max_queue = max_queue
        self.max_jobs_kept = max_jobs_kept
        self._cv = threading.Condition()
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._waiting: deque[Job] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.history = history
        if history is not None:
            for row in history.load()[-max_jobs_kept:]:
                self._jobs[row["id"]] = Job.from_row(row)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mlx-audio-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step of the running job (it ends as cancelled); waiting jobs stay queued."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- used by the HTTP handlers ---------------------------------------------------------------------------

    def submit(self, job: Job) -> dict[str, Any]:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} jobs are already waiting; try again when one finishes")
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._remember(job)
            self._cv.notify_all()
            return self._view(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cv:
            job = self._jobs.get(job_id)
            return None if job is None else self._view(job)

    def list(self, query: str | None = None, starred: bool = False) -> list[dict[str, Any]]:
        """Newest first; `query`: only jobs whose prompt, title or model holds it (any case); `starred`:
        only starred ones."""
        q = (query or "").strip().casefold()
        with self._cv:
            jobs = [
                j for j in reversed(self._jobs.values())
                if (not starred or j.starred)
                and (not q or any(q in (x or "").casefold() for x in (j.prompt, j.title, j.model)))
            ]  # fmt: skip
            return [self._view(j) for j in jobs]

    def annotate(self, job_id: str, **changes: Any) -> dict[str, Any] | None:
        """Set a job's title / rating / star (None = no change for rating and starred; a title of "" clears
        it); the job's view, or None when there is no such job."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if "title" in changes:
                title = " ".join((changes["title"] or "").split())[:MAX_TITLE_CHARS]
                job.title = title or None
            if changes.get("rating") is not None:
                job.rating = int(changes["rating"]) or None  # 0 clears it
            if changes.get("starred") is not None:
                job.starred = bool(changes["starred"])
            self._remember(job)
            return self._view(job)

    def forget(self, job_id: str) -> dict[str, Any] | str | None:
        """Delete a finished job: its row, its clip and description. None: no such job; a string: why not."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status not in FINISHED:
                return f"job {job_id} is {job.status}; cancel it first"
            del self._jobs[job_id]
            view = self._view(job)
        if self.history is not None:
            self.history.delete(job_id)
        for ext in (".wav", ".json", ".flac", ".mp3", ".ogg"):  # the clip, its description, its transcodes
            (self.output_dir / f"{job_id}{ext}").unlink(missing_ok=True)  # named by the server's own id
        return view

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """A waiting job is dropped at once; a running one stops after its current step."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled")
            elif job.status == "running":
                job.cancel_requested = True
            return self._view(job)

    def audio_file(self, job_id: str) -> tuple[Path, str] | None:
        """(path, download name) of a finished job's audio; the path comes from the server's own id."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job.status != "done":
                return None
            return self.output_dir / f"{job.id}.{job.format}", job.download_name

    def redact(self, text: str) -> str:
        """`text` as a client may read it: no output or model folder, no absolute path (see redact_paths)."""
        folders: dict[str | Path, str] = {self.output_dir: "the output folder"}
        for entry in list(self.models.values()):  # a copy: the fetch thread adds models meanwhile
            folders[entry.folder] = f"the folder of model {entry.name}"
        return redact_paths(text, folders)

    def _view(self, job: Job) -> dict[str, Any]:
        pos = None
        if job.status == "queued":
            pos = next(i for i, j in enumerate(self._waiting) if j is job) + 1
        return job.view(pos)

    # -- the worker ------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                job = next_waiting(self._cv, self._waiting, lambda: self._stopping)
                if job is None:
                    return
                job.status, job.started = "running", time.time()
                job.enter("text" if self.models[job.model].loaded else "loading", job.started)
                job.eta_hint = self._decode_hint(job)
                self._remember(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            self._generate(job)
        except JobCancelled:
            self._finish(job, "cancelled")
        except UserError as e:
            log.warning("job %s failed: %s", job.id, e)  # the log keeps the paths; the client's copy has none
            self._fail(job, str(e))
        except MemoryError:
            log.warning("job %s failed: out of memory", job.id)
            self._fail(job, "out of memory; try fewer seconds or a smaller model")
        except Exception as e:  # a bug must fail this job, never the worker: the next job still runs
            log.exception("job %s failed", job.id)
            msg = str(e).splitlines()[0] if str(e) else ""
            self._fail(job, f"internal error: {type(e).__name__}: {msg}")

    def _fail(self, job: Job, message: str) -> None:
        message = self.redact(" ".join(message.split()))
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        self._finish(job, "failed", message)

    def _decode_hint(self, job: Job) -> float | None:
        """The decode time of this model's last finished job, scaled to this job's length."""
        for old in reversed(self._jobs.values()):
            times = old.stage_times.get("decode")
            if old is not job and old.model == job.model and old.status == "done" and times and times[1]:
                return (times[1] - times[0]) * job.seconds / max(old.seconds, 1e-9)
        return None

    def _generate(self, job: Job) -> None:
        self._check_cancel(job)
        entry = self.models[job.model]
        model = entry.load()
        with self._cv:
            if job.stage == "loading":
                job.enter("text")

        steps = getattr(model, "window_steps", None) if entry.long_form else None
        if steps is not None:  # which window runs, for the page (the steps of all add up to the total)
            windows = steps(job.seconds, **{**job.params, **job.inputs})
            with self._cv:
                job.window_steps = list(windows)

        def progress(done: int, total: int) -> None:
            with self._cv:
                job.step, job.total = int(done), int(total)
            self._check_cancel(job)

        def on_stage(stage: str, done: int, total: int) -> None:
            with self._cv:
                if stage != job.stage:
                    job.enter(stage)
            self._check_cancel(job)

        audio = model.generate(
            job.prompt, seconds=job.seconds, seed=job.seed, progress=progress, on_stage=on_stage,
            **{**job.params, **job.inputs},
        )  # fmt: skip
        self._check_cancel(job)
        with self._cv:
            job.enter("writing")
        clip, loudness = normalized(audio[0], entry.sample_rate, job.normalize)
        with self._cv:
            job.loudness = loudness
        path = self.output_dir / f"{job.id}.{job.format}"
        try:  # the folder may have been removed while the server runs: make it again
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = e.strerror or e
            raise UserError(f"cannot write the clip: {self.output_dir} cannot be made ({reason})") from None
        write_audio(path, clip, entry.sample_rate)
        self._finish(job, "done")
        try:  # a description beside the clip, so the output folder makes sense on its own
            text = json.dumps(self.get(job.id), indent=2)
            atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
        except OSError as e:
            log.warning("cannot write %s: %s", path.with_suffix(".json"), e)

    def _check_cancel(self, job: Job) -> None:
        with self._cv:
            if job.cancel_requested or self._stopping:
                raise JobCancelled

    def _remember(self, job: Job) -> None:
        """Write the job's row (call under the lock); a failing disk is logged, never fatal to the job."""
        if self.history is None:
            return
        try:
            self.history.save(job.row())
        except Exception as e:  # sqlite3.Error, OSError: the history is a convenience, the clip comes first
            log.warning("cannot record job %s in %s: %s", job.id, self.history.path, e)

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        with self._cv:
            job.status, job.error, job.finished = status, error, time.time()
            if job.stage is not None and job.stage in job.stage_times:
                job.stage_times[job.stage][1] = job.finished
            job.stage = None
            if status == "done":
                job.step = job.total = max(job.total, 1)
            self._remember(job)
            # Bound memory on a long-running server: forget the oldest finished jobs (their files stay).
            excess = len(self._jobs) - self.max_jobs_kept
            for old in [j for j in self._jobs.values() if j.status in FINISHED][: max(0, excess)]:
                del self._jobs[old.id]
