"""Models fetched from the web page: the catalog of registry models and the fetches running in the background.

The catalog lists every short model name of the registry (`registry.short_names()`) with its state: served
(a model of this server was converted from its repo), cached (converted in the destination cache, not served),
fetchable, fetching (with progress) or failed (one line). Only those names can be fetched: a request never
names a repo id or a path.

A fetch is `resolve.resolve(repo, dtype)` (download through the Hugging Face cache, convert once into the
destination, which has the CLI cache's layout), run by ONE fetch thread, one fetch after the other, each in a
child process: the generation worker keeps the device and keeps running jobs meanwhile (MLX arrays belong to
the thread that makes them; a conversion's memory is returned when its process ends; a server that stops ends
the process, and the next conversion removes what it left). The child reports its progress (progress.py's
stages "files" and "download" from huggingface_hub, then "convert", tensors); when it is done the converted
folder is described (config.json only) and added to the served models, so GET /api/models lists it at once.

Sizes: a cached Hugging Face snapshot's files are measured on disk; otherwise, with fetching on and the hub
not offline (HF_HUB_OFFLINE), the first catalog request that asks for sizes (`?sizes=true`: the page sends it
while its Models panel is open) starts a thread that asks the hub for the file listing of each repo (a dry
run: nothing is downloaded); until then (or offline) the size is unknown.
"""

from __future__ import annotations

import difflib
import logging
import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from ..errors import UserError
from ..resolve_child import resolve_in_child
from .jobs import MAX_ERROR_CHARS, next_waiting, redact_paths
from .models import ModelEntry

log = logging.getLogger("mlx_audio_generate.server")

DTYPES = ("float16", "bfloat16", "float32")  # mlx-audio-convert --dtype (weights.DTYPES; that imports MLX)


class FetchRefused(Exception):
    """A fetch request that is not accepted: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def served_name(short: str, dtype: str | None) -> str:
    """The name a fetched model is served as: as discover_models names the cache's conversions."""
    return short if dtype is None else f"{short}-{dtype}"


@dataclass
class Fetch:
    name: str  # the registry's short name
    repo: str
    dtype: str | None
    state: str = "fetching"  # fetching -> done | failed | cancelled
    stage: str = "queued"  # queued, download (files and bytes), convert (tensors), adding
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    tensors_done: int = 0
    tensors_total: int = 0
    error: str | None = None
    served_as: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage_times: dict[str, list[float | None]] = field(default_factory=dict)  # stage -> [start, end]
    cancel_requested: bool = False  # Fetcher.cancel: the fetch thread stops its child process

    def enter(self, stage: str) -> None:
        now = time.time()
        if self.stage in self.stage_times:
            self.stage_times[self.stage][1] = now
        self.stage = stage
        self.stage_times[stage] = [now, None]

    def report(self, stage: str, done: int, total: int) -> None:
        if stage not in ("files", "download", "convert"):
            return
        shown = "download" if stage == "files" else stage  # files and bytes move together: one stage
        if shown != self.stage:
            self.enter(shown)  # (a conversion may download another checkpoint: back to "download")
        if stage == "files":
            self.files_done, self.files_total = done, total
        elif stage == "download":
            self.bytes_done, self.bytes_total = done, total
        else:
            self.tensors_done, self.tensors_total = done, total

    def end(self, state: str, error: str | None = None) -> None:
        self.finished = time.time()
        if self.stage in self.stage_times:
            self.stage_times[self.stage][1] = self.finished
        self.state, self.error = state, error

    @property
    def progress(self) -> float:
        """0..1 within the current stage (bytes while downloading, tensors while converting)."""
        if self.state == "done":
            return 1.0
        if self.stage == "convert" and self.tensors_total:
            return min(1.0, self.tensors_done / self.tensors_total)
        if self.stage in ("files", "download"):
            if self.bytes_total:
                return min(1.0, self.bytes_done / self.bytes_total)
            if self.files_total:
                return min(1.0, self.files_done / self.files_total)
        return 0.0

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repo": self.repo,
            "dtype": self.dtype,
            "state": self.state,
            "stage": self.stage if self.state == "fetching" else None,
            "progress": self.progress,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "tensors_done": self.tensors_done,
            "tensors_total": self.tensors_total,
            "error": self.error,
            "served_as": self.served_as,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "stage_times": {k: list(v) for k, v in self.stage_times.items()},
        }


# -------------------------------------------------------------------------------------------- the fetcher


class Fetcher:
    """The catalog and the fetch thread over `models` (the server's served models: fetched ones are added
    to this very dict). `dest`: the cache the conversions go to (the CLI cache's layout)."""

    def __init__(
        self,
        models: dict[str, ModelEntry],
        dest: str | Path,
        enabled: bool = True,
        ask_hub_for_sizes: bool | None = None,
    ):
        self.models = models
        self.dest = Path(dest).expanduser().absolute()
        self.enabled = enabled
        if ask_hub_for_sizes is None:
            from huggingface_hub import constants

            ask_hub_for_sizes = enabled and not constants.HF_HUB_OFFLINE
        self.ask_hub_for_sizes = ask_hub_for_sizes
        self._cv = threading.Condition()
        self._fetches: dict[str, Fetch] = {}
        self._waiting: deque[Fetch] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._child: Any = None
        self._local: dict[str, tuple[bool, int | None]] = {}  # repo -> (in the HF cache, its size)
        self._hub_sizes: dict[str, int] = {}
        self._size_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mlx-audio-fetch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the running fetch (its child process) and the thread; waiting fetches are dropped."""
        with self._cv:
            self._stopping = True
            child = self._child
            self._cv.notify_all()
        if child is not None and child.is_alive():
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- used by the HTTP handlers ---------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """An error as clients read it: no cache folder, no absolute path (jobs.redact_paths)."""
        from huggingface_hub import constants

        folders = {self.dest: "the model cache", constants.HF_HUB_CACHE: "the Hugging Face cache"}
        text = redact_paths(" ".join(text.split()), folders)
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    def request(self, name: str, dtype: str | None = None) -> dict[str, Any]:
        """Queue a fetch of the registry model `name`; its view. FetchRefused when it is not accepted."""
        if not self.enabled:
            raise FetchRefused(
                403, "fetching models is off on this server (--no-fetch); its owner can fetch them with "
                "mlx-audio-convert or start it without --no-fetch",
            )  # fmt: skip
        names = registry.short_names()
        repo = names.get(name)
        if repo is None:
            # a near miss, or a repo id whose model is listed: name the catalog's name (never the repo id)
            by_repo = {r: n for n, r in names.items()}
            close = difflib.get_close_matches(name.split("/")[-1], list(names), n=1, cutoff=0.8)
            guess = by_repo.get(name) or (close[0] if close else None)
            hint = (
                f"did you mean {guess}?"
                if guess
                else "GET /api/catalog lists the models this server can fetch"
            )
            raise FetchRefused(404, f"'{name[:64]}' is not a model this server can fetch; {hint}")
        if dtype is not None and dtype not in DTYPES:
            raise FetchRefused(
                422, f"dtype must be one of {', '.join(DTYPES)} (or omitted: keep the checkpoint's)"
            )
        with self._cv:
            old = self._fetches.get(name)
            if old is not None and old.state == "fetching":
                raise FetchRefused(
                    409, f"{name} is already being fetched ({old.stage}); wait for it to finish"
                )
            target = served_name(name, dtype)
            if target in self.models:
                raise FetchRefused(409, f"a model named '{target}' is already served; select it in the list")
            fetch = Fetch(name, repo, dtype)
            self._fetches[name] = fetch
            self._waiting.append(fetch)
            self._cv.notify_all()
            return fetch.view()

    def get(self, name: str) -> dict[str, Any] | None:
        with self._cv:
            fetch = self._fetches.get(name)
            return None if fetch is None else fetch.view()

    def catalog(self, sizes: bool = False) -> dict[str, Any]:
        """Every registry model with its state (module doc), in the registry's order; with `sizes`, the hub
        is asked (once, in the background) for the sizes of the models not in the cache. Only on request:
        a page that is merely open never makes the server contact the hub."""
        with self._cv:  # requests are answered in several threads: one asking thread only
            if sizes and self.ask_hub_for_sizes and self._size_thread is None:
                self._size_thread = threading.Thread(
                    target=self._ask_sizes, name="mlx-audio-sizes", daemon=True
                )
                self._size_thread.start()
        from ..resolve import cached_conversion

        served_by_source: dict[str, list[str]] = {}
        for entry in list(self.models.values()):
            source = str(entry.conv.meta.get("source", ""))  # what it was converted from
            served_by_source.setdefault(source, []).append(entry.name)
        items = []
        for fam in registry.families().values():
            for name, repo in fam.models.items():
                with self._cv:
                    fetch = self._fetches.get(name)
                    view = None if fetch is None else fetch.view()
                served = sorted(set(served_by_source.get(repo, []) + served_by_source.get(name, [])))
                if view is not None and view["state"] == "done" and view["served_as"] not in served:
                    served.append(view["served_as"])
                downloaded, size = self._local_size(repo)
                if view is not None and view["state"] == "fetching":
                    state = "fetching"
                elif served:
                    state = "served"
                elif view is not None and view["state"] == "failed":
                    state = "failed"
                elif cached_conversion(repo, None, self.dest) is not None:
                    state = "cached"
                else:
                    state = "fetchable"
                if view is not None and view["bytes_total"]:
                    size = size or view["bytes_total"]
                items.append({
                    "name": name, "family": fam.name, "family_label": fam.label, "repo": repo,
                    "size_bytes": size if size is not None else self._hub_sizes.get(repo),
                    "downloaded": downloaded, "state": state, "served_as": served, "fetch": view,
                })  # fmt: skip
        pending = self._size_thread is not None and self._size_thread.is_alive()
        return {
            "fetch_enabled": self.enabled,
            "served": list(self.models),
            "sizes_pending": pending,
            "models": items,
        }

    # -- sizes -------------------------------------------------------------------------------------------

    def _local_size(self, repo: str) -> tuple[bool, int | None]:
        """(whether the files a conversion reads are in the Hugging Face cache, their size on disk); kept
        until a fetch of the repo ends."""
        with self._cv:
            known = self._local.get(repo)
        if known is not None:
            return known
        found: tuple[bool, int | None] = (False, None)
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.utils import filter_repo_objects

            from ..hub import download_patterns

            patterns = download_patterns(repo)
            folder = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
            files = [p for p in folder.rglob("*") if p.is_file()]
            rel = {p.relative_to(folder).as_posix(): p for p in files}
            chosen = list(filter_repo_objects(rel, allow_patterns=patterns))
            if any(r.endswith(".safetensors") or ".bin" in r for r in chosen):
                found = (True, sum(rel[r].stat().st_size for r in chosen))
        except Exception:  # not in the cache (LocalEntryNotFoundError), or unreadable: not downloaded
            pass
        with self._cv:
            self._local[repo] = found
        return found

    def _ask_sizes(self) -> None:
        """The hub's file sizes of each repo not in the Hugging Face cache (module doc); errors: unknown."""
        from huggingface_hub import snapshot_download

        from ..hub import download_patterns

        for repo in list(registry.short_names().values()):
            if self._stopping:
                return
            if self._local_size(repo)[0] or repo in self._hub_sizes:
                continue
            try:
                planned = snapshot_download(repo, allow_patterns=download_patterns(repo), dry_run=True)
                self._hub_sizes[repo] = int(sum(f.file_size or 0 for f in planned))
            except Exception as e:  # offline, gated, a hub error: the size stays unknown
                log.info("no size for %s: %s", repo, e)

    def cancel(self, name: str) -> dict[str, Any]:
        """Stop a queued or running fetch of `name`: a queued one is dropped, a running one's child process
        is ended (SIGTERM: its conversion removes its temp folder; a partial download is left to the Hugging
        Face cache, huggingface_hub's own). Its view, state "cancelled" once it has stopped.
        FetchRefused 404 when there is no such fetch, 409 when it has ended already."""
        with self._cv:
            fetch = self._fetches.get(name)
            if fetch is None:
                raise FetchRefused(404, f"no fetch of '{name[:64]}' on this server")
            if fetch.state != "fetching":
                raise FetchRefused(409, f"the fetch of {name} has ended already ({fetch.state})")
            fetch.cancel_requested = True
            if fetch in self._waiting:
                self._waiting.remove(fetch)
                fetch.end("cancelled")
            elif self._child is not None:
                self._child.terminate()
            return fetch.view()

    # -- the fetch thread ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                fetch = next_waiting(self._cv, self._waiting, lambda: self._stopping)
                if fetch is None:
                    return
                fetch.started = time.time()
            try:
                self._run(fetch)
            except Exception as e:  # a bug must fail this fetch, never the thread
                log.exception("fetch of %s failed", fetch.name)
                with self._cv:
                    fetch.end("failed", self.redact(f"internal error: {type(e).__name__}: {e}"))
            with self._cv:
                self._local.pop(fetch.repo, None)  # measure its Hugging Face files again

    def _run(self, fetch: Fetch) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no MLX state, no inherited threads
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=resolve_in_child, args=(fetch.repo, fetch.dtype, str(self.dest), send), daemon=True,
            name=f"mlx-audio-fetch-{fetch.name}",
        )  # fmt: skip
        with self._cv:
            if self._stopping:
                return
            if fetch.cancel_requested:  # cancelled between the queue and here
                fetch.end("cancelled")
                return
            self._child = child
            fetch.enter("download")
        child.start()
        send.close()  # the child holds the sending end: when it exits, recv() sees the end
        outcome: tuple[Any, ...] | None = None
        try:
            while outcome is None:
                if not receive.poll(0.2):
                    if self._stopping or fetch.cancel_requested:
                        child.terminate()
                    continue
                try:
                    message = receive.recv()
                except EOFError:
                    break
                if message[0] == "stage":
                    with self._cv:
                        fetch.report(*message[1:])
                else:
                    outcome = message
        finally:
            receive.close()
            child.join(30)
            with self._cv:
                self._child = None
        if outcome is None and fetch.cancel_requested:
            with self._cv:
                fetch.end("cancelled")
            log.info("fetch of %s cancelled", fetch.name)
            return
        if outcome is None:
            with self._cv:
                why = (
                    "the server is stopping"
                    if self._stopping
                    else f"it ended with exit code {child.exitcode}"
                )
                fetch.end("failed", f"the fetch process stopped before it finished ({why})")
            return
        if outcome[0] == "failed":
            log.warning("fetch of %s failed: %s", fetch.name, outcome[1])
            with self._cv:
                fetch.end("failed", self.redact(outcome[1]))
            return
        with self._cv:
            fetch.enter("adding")
        name = served_name(fetch.name, fetch.dtype)
        try:
            entry = ModelEntry.from_folder(name, outcome[1])
        except UserError as e:
            with self._cv:
                fetch.end("failed", self.redact(str(e)))
            return
        with self._cv:
            self.models[name] = entry  # served from now on (the job queue shares this dict)
            fetch.served_as = name
            fetch.end("done")
        log.info("fetched %s: serving it as %s", fetch.repo, name)
