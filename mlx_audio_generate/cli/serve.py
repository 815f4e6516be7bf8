"""`mlx-audio-server`: a local web UI and HTTP API that queue generations on this machine."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .common import ArgumentParser, add_version_flag, run_main

DEFAULT_PORT = 8420


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="mlx-audio-server",
        description="Serve a web UI and HTTP API for generating audio on this machine, one job at a time.",
    )
    add_version_flag(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]MODEL",
        help="serve MODEL as NAME (repeatable): a converted folder, a model name or repo id as "
        "mlx-audio-generate takes it (downloaded and converted once), or a checkpoint folder; NAME defaults "
        "to the model's name",
    )
    p.add_argument(
        "--models-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="serve every converted folder inside DIR, named after its folder (repeatable); DIR may be "
        "mlx-audio-generate's cache (~/.cache/mlx-audio-generate). Models fetched from the page are "
        "converted into the first DIR (without one: into that cache)",
    )
    p.add_argument(
        "--no-fetch",
        action="store_true",
        help="the page lists the models it could fetch but may not download or convert any (shared servers)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the history (history.sqlite3) and, unless --output-dir, the clips (clips/) are kept "
        f"(default {default_data_dir()}; survives restarts)",
    )
    p.add_argument("--output-dir", default=None, help="where clips are written (default: DATA_DIR/clips)")
    p.add_argument(
        "--max-queue", type=int, default=16, help="jobs allowed to wait; more get HTTP 429 (default 16)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=64,
        help="largest audio file a client may upload (melody, init / inpaint audio; default 64)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and log every request")
    return p


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mlx-audio-generate"


def _example() -> str:
    from .. import registry

    return next(iter(registry.families().values())).example


def parse_models(specs: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if (
            not sep
        ):  # a bare model: named after its last path part ("facebook/musicgen-small" -> musicgen-small)
            name, folder = Path(spec.rstrip("/")).name, spec
        if not name or not folder:
            raise UserError(f"--model '{spec}' must be [NAME=]MODEL, e.g. --model {_example()}")
        if name in named:
            raise UserError(f"--model name '{name}' is given twice")
        named[name] = folder
    return named


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare_dir(path: str | Path, flag: str) -> Path:
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {flag} '{out}': {e.strerror or e}") from None
    if not out.is_dir() or not os.access(out, os.W_OK):
        raise UserError(f"{flag} '{out}' is not a writable folder")
    return out


def open_history(data_dir: Path) -> Any:
    import sqlite3

    from ..server.history import History

    path = data_dir / "history.sqlite3"
    try:
        return History(path)
    except sqlite3.Error as e:
        raise UserError(f"cannot open the history {path}: {e}; move it away to start a new one") from None


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), made here rather than by uvicorn so that a busy port or an address
    that is not this machine's is a one-line UserError (exit 2), not uvicorn's log and exit 3."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET  # as uvicorn picks it: "localhost" is IPv4
    try:
        found = socket.getaddrinfo(bare, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise UserError(f"cannot listen on '{host}': {reason}; give an address of this machine") from None
    fam, kind, proto, _, address = found[0]
    sock = socket.socket(fam, kind, proto)
    try:
        # As uvicorn does: a restarted server can reuse its port at once (a port with a listener stays busy).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} is in use on {host} (another server is running?); "
                "stop it or pick another --port"
            ) from None
        if e.errno == errno.EACCES:
            raise UserError(f"cannot listen on port {port}: permission denied; pick another --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"cannot listen on '{host}': it is not an address of this machine") from None
        raise UserError(f"cannot listen on '{host}' port {port}: {e.strerror or e}") from None
    return sock


def _serve(app: Any, sock: socket.socket, host: str, port: int, debug: bool) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # uvicorn says this itself only when it binds the socket
                url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
                logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", url)

    config = uvicorn.Config(app, host=host, port=port, access_log=debug, log_level="info")
    Server(config).run(sockets=[sock])


def _main(argv: list[str] | None) -> int:
    args = setup_arg_parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.max_queue < 1:
        raise UserError(f"--max-queue must be >= 1, got {args.max_queue}")
    if not 1 <= args.max_upload_mb <= 4096:
        raise UserError(f"--max-upload-mb must be in 1..4096, got {args.max_upload_mb}")
    named = parse_models(args.model)
    if not named and not args.models_dir:
        raise UserError(
            f"no models: pass --model [NAME=]MODEL (e.g. --model {_example()}) or --models-dir DIR (e.g. "
            "mlx-audio-generate's cache ~/.cache/mlx-audio-generate: the page fetches more into it)"
        )

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    from ..server import discover_models

    models = discover_models(named, args.models_dir)
    if not models and args.no_fetch:  # with fetching on, the page can fetch the first one
        raise UserError(
            f"no converted models found in {', '.join(args.models_dir)}; convert one with mlx-audio-convert"
        )
    sock = listen_socket(args.host, args.port)
    try:
        _run_server(args, models, sock)
    finally:
        sock.close()
    return 0


def _run_server(args: Any, models: dict[str, Any], sock: socket.socket) -> None:
    from ..server import create_app
    from ..server.app import LOOPBACK_HOSTS

    # after the bind: a failed start makes no folders
    data_dir = prepare_dir(args.data_dir or default_data_dir(), "--data-dir")
    output_dir = prepare_dir(args.output_dir or data_dir / "clips", "--output-dir")
    history = open_history(data_dir)

    if is_loopback(args.host):
        # Only loopback names in the Host header (see create_app: no DNS rebinding).
        allowed_hosts = [*LOOPBACK_HOSTS, args.host.strip("[]").lower()]
    else:
        allowed_hosts = ["*"]
        print(
            f"mlx-audio-server: warning: listening on {args.host}: anyone who can reach it can run jobs "
            "(there is no authentication)",
            file=sys.stderr,
        )
    app = create_app(
        models, output_dir, max_queue=args.max_queue, allowed_hosts=allowed_hosts, history=history,
        uploads_dir=data_dir / "uploads", max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        fetch_enabled=not args.no_fetch, fetch_dir=args.models_dir[0] if args.models_dir else None,
    )  # fmt: skip

    listed = (
        ", ".join(f"{m.name} ({m.family})" for m in models.values()) or "none yet (fetch them on the page)"
    )
    bare = args.host.strip("[]")
    host = f"[{bare}]" if ":" in bare else bare
    print(
        f"mlx-audio-server: http://{host}:{args.port}/  models: {listed}  clips: {output_dir}  "
        f"history: {history.path}",
        flush=True,
    )
    _serve(app, sock, bare, args.port, args.debug)


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-server"))


if __name__ == "__main__":
    main()
