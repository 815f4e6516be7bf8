"""The job queue: requests wait in order and ONE worker thread runs them.

The worker thread is the only one that touches MLX (loading and generating): MLX streams belong to the thread
that created them, and one device cannot run two generations faster than one after the other anyway. HTTP
handlers only enqueue and read snapshots, under one lock; a client that goes away changes nothing here.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio import write_audio
from ..errors import UserError
from ..weights import atomic_write
from .models import ModelEntry

log = logging.getLogger("mlx_audio_generate.server")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """More jobs are waiting than --max-queue allows."""


class JobCancelled(Exception):
    """Raised from the progress callback to stop a generation between two steps."""


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
    stage: str | None = None  # while running: "loading" (the model), "generating", "writing"
    step: int = 0
    total: int = 0
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False

    @property
    def download_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "audio"
        return f"{self.model}_{slug}_{self.seed}.wav"

    def view(self, queue_position: int | None) -> dict[str, Any]:
        if self.status == "done":
            progress = 1.0
        elif self.status == "running" and self.total:
            progress = min(1.0, self.step / self.total)
        else:
            progress = 0.0
        end = self.finished or time.time()
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
        }


class JobQueue:
    """In-order jobs over `models`, audio written to `output_dir/<job id>.wav` (+ a .json description)."""

    def __init__(
        self,
        models: dict[str, ModelEntry],
        output_dir: str | Path,
        max_queue: int = 16,
        max_jobs_kept: int = 1000,
    ):
        self.models = models
        self.output_dir = Path(output_dir)
        self.max_queue = max_queue
        self.max_jobs_kept = max_jobs_kept
        self._cv = threading.Condition()
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._waiting: deque[Job] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None

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
            self._cv.notify_all()
            return self._view(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cv:
            job = self._jobs.get(job_id)
            return None if job is None else self._view(job)

    def list(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._cv:
            return [self._view(j) for j in reversed(self._jobs.values())]

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
            return self.output_dir / f"{job.id}.wav", job.download_name

    def _view(self, job: Job) -> dict[str, Any]:
        pos = None
        if job.status == "queued":
            pos = next(i for i, j in enumerate(self._waiting) if j is job) + 1
        return job.view(pos)

    # -- the worker ------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started = "running", time.time()
                job.stage = "generating" if self.models[job.model].loaded else "loading"
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            self._generate(job)
        except JobCancelled:
            self._finish(job, "cancelled")
        except UserError as e:
            self._finish(job, "failed", str(e))
        except MemoryError:
            self._finish(job, "failed", "out of memory; try fewer seconds or a smaller model")
        except Exception as e:  # a bug must fail this job, never the worker: the next job still runs
            log.exception("job %s failed", job.id)
            msg = str(e).splitlines()[0] if str(e) else ""
            self._finish(job, "failed", f"internal error: {type(e).__name__}: {msg}")

    def _generate(self, job: Job) -> None:
        self._check_cancel(job)
        entry = self.models[job.model]
        model = entry.load()
        with self._cv:
            job.stage = "generating"

        def progress(done: int, total: int) -> None:
            with self._cv:
                job.step, job.total = int(done), int(total)
            self._check_cancel(job)

        audio = model.generate(
            job.prompt, seconds=job.seconds, seed=job.seed, progress=progress, **job.params
        )
        self._check_cancel(job)
        with self._cv:
            job.stage = "writing"
        path = self.output_dir / f"{job.id}.wav"
        write_audio(path, audio[0], entry.sample_rate)
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

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        with self._cv:
            job.status, job.error, job.stage, job.finished = status, error, None, time.time()
            if status == "done":
                job.step = job.total = max(job.total, 1)
            # Bound memory on a long-running server: forget the oldest finished jobs (their files stay).
            excess = len(self._jobs) - self.max_jobs_kept
            for old in [j for j in self._jobs.values() if j.status in FINISHED][: max(0, excess)]:
                del self._jobs[old.id]
