"""Start the real `mlx-audio-server` process on a free loopback port and wait until it answers.

For the tests and bench/server_load.py, which drive the server over HTTP as a separate process:

    with serve(["--model", f"tiny={folder}"], log_path=tmp / "server.log") as (proc, url):
        httpx.get(f"{url}/api/models")

`start_server` runs `python -m mlx_audio_generate.cli.serve --host 127.0.0.1 --port P ARGS` (the same
interpreter, this copy of the package), sends its stdout/stderr to `log_path` and returns
`Launched(proc, base_url)` once GET /api/models answers 200; a server that exits or stays silent past
`timeout` is stopped and raises ServerStartError with its log. `stop_server` ends it (SIGTERM, then
SIGKILL after `grace` seconds). Readiness is polled with the standard library, with proxies off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

HOST = "127.0.0.1"
READY_PATH = "/api/models"
# The folder holding the package: `python -m` run there imports this very copy of it.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class ServerStartError(RuntimeError):
    """The server process exited, or did not answer in time, before it was ready (its log attached)."""


class Launched(NamedTuple):
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT, no trailing slash

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def free_port(host: str = HOST) -> int:
    """A port free on `host` right now (the OS picks it; another process could still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(url + READY_PATH, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_text(log_path: Path | None) -> str:
    if log_path is None:
        return "(no log kept)"
    try:
        return Path(log_path).read_text(errors="replace")
    except OSError as e:
        return f"(log unreadable: {e})"


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the server process: SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_server(
    args: Sequence[str] = (),
    *,
    log_path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    port: int | None = None,
    cwd: str | os.PathLike | None = None,
) -> Launched:
    """Start `mlx-audio-server ARGS` on 127.0.0.1 (`port`, else a free one) and wait until it answers.

    `env` is added to this process's environment; output goes to `log_path` (discarded when None);
    `cwd` defaults to the folder holding the package.
    """
    port = free_port() if port is None else port
    url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "mlx_audio_generate.cli.serve", "--host", HOST, "--port", str(port)]
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [*cmd, *args],
            cwd=_PACKAGE_PARENT if cwd is None else cwd,
            env=None if env is None else {**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # the child has its own descriptor
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"server exited with {proc.returncode}:\n{_log_text(log_path)}")
        if _answers(url):
            return Launched(proc, url)
        if time.monotonic() > deadline:
            stop_server(proc)
            raise ServerStartError(f"server did not answer within {timeout} s:\n{_log_text(log_path)}")
        time.sleep(0.1)


@contextmanager
def serve(args: Sequence[str] = (), **options: Any) -> Iterator[Launched]:
    """`start_server(args, **options)` as a context manager: yields `(proc, url)` and always stops the
    process."""
    launched = start_server(args, **options)
    try:
        yield launched
    finally:
        stop_server(launched.proc)
