"""`resolve()` in a child process that reports over a pipe: the server's fetches (server/fetcher.py) run it
with multiprocessing's "spawn", so the conversion has its own interpreter (its MLX arrays, its memory) and
the server's generation thread keeps the device. This module imports little: the child starts fast."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from .errors import UserError

log = logging.getLogger("mlx_audio_generate.server")

REPORT_EVERY_SECONDS = 0.1  # progress messages: at most this often per stage, plus each stage's last


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def resolve_in_child(repo: str, dtype: str | None, dest: str, conn: Any) -> None:
    """Resolve `repo` into the cache at `dest` (resolve.resolve), sending ("stage", stage, done, total)
    messages (convert.convert's on_stage: at most one per stage every REPORT_EVERY_SECONDS, and the last
    state of a burst a moment later) on `conn`, then ("done", folder) or ("failed", one line)."""
    os.environ["MLX_AUDIO_GENERATE_CACHE"] = dest
    # A cancelled fetch ends this process with SIGTERM: as an exception, so the conversion's `finally`
    # blocks remove its temp folders (the default action would end it on the spot, leaving them).
    signal.signal(signal.SIGTERM, _terminated)
    lock = threading.Lock()  # huggingface_hub reports from its download threads
    latest: dict[str, tuple[int, int]] = {}  # per stage, the last state not sent yet
    sent: dict[str, float] = {}

    def send(stage: str) -> None:  # under the lock
        done, total = latest.pop(stage)
        sent[stage] = time.monotonic()
        conn.send(("stage", stage, done, total))

    def on_stage(stage: str, done: int, total: int) -> None:
        with lock:
            latest[stage] = (int(done), int(total))
            if done >= total or time.monotonic() - sent.get(stage, 0.0) >= REPORT_EVERY_SECONDS:
                send(stage)

    def flush() -> None:  # the state a burst of reports ended on, REPORT_EVERY_SECONDS later at most
        while True:
            time.sleep(REPORT_EVERY_SECONDS)
            with lock:
                if conn.closed:
                    return
                for stage in list(latest):
                    send(stage)

    threading.Thread(target=flush, name="progress-flush", daemon=True).start()
    try:
        from .resolve import resolve

        folder = resolve(repo, dtype=dtype, quiet=True, on_stage=on_stage)
        conn.send(("done", str(folder)))
    except UserError as e:
        conn.send(("failed", str(e)))
    except MemoryError:
        conn.send(("failed", "out of memory while converting; close other programs or pick a smaller model"))
    except Exception as e:  # a bug: one line for the page; the server's log gets the traceback
        log.exception("fetching %s failed", repo)
        first = str(e).splitlines()[0] if str(e) else ""
        conn.send(("failed", f"internal error: {type(e).__name__}: {first}"))
    finally:
        with lock:
            conn.close()
