"""A Hugging Face hub on a loopback port, for tests that download for real (HF_ENDPOINT=its url): it serves
folders as model repos through the endpoints huggingface_hub's `snapshot_download` uses (repo info, the
file tree, HEAD / GET of each file under resolve/), so downloads go through huggingface_hub's own code,
cache and progress bars. Files are sent in CHUNK-byte pieces, `delay` seconds apart (slow enough to watch
the progress); a repo it does not hold answers 404 as the hub does.

    with LocalHub({"facebook/musicgen-small": folder}, delay=0.01) as hub:
        env = {"HF_ENDPOINT": hub.url}
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024
COMMIT = "f" * 40


class LocalHub:
    def __init__(self, repos: dict[str, Path], delay: float = 0.0):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.delay = delay
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the endpoints -----------------------------------------------------------------------------------

    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append(f"{h.command} {path}")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        if m:
            repo = m.group(1)
            if repo not in self.repos:
                return self._not_found(h, body)
            files = self._files(repo)
            if m.group(2) == "revision":
                return self._json(
                    h, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                )
            tree = [
                {"type": "file", "path": f, "size": p.stat().st_size, "oid": _blob_id(p)}
                for f, p in files.items()
            ]
            return self._json(h, tree)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.repos and m.group(3) in self._files(m.group(1)):
            return self._file(h, self._files(m.group(1))[m.group(3)], body)
        return self._not_found(h, body)

    def _json(self, h: BaseHTTPRequestHandler, data: Any) -> None:
        raw = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _not_found(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        raw = b'{"error": "Repository not found"}'
        h.send_response(404)
        h.send_header("X-Error-Code", "RepoNotFound")
        h.send_header("X-Error-Message", "Repository not found")
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if body:
            h.wfile.write(raw)

    def _file(self, h: BaseHTTPRequestHandler, path: Path, body: bool) -> None:
        data = path.read_bytes()
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "") or "")
        if ranged:
            start = int(ranged.group(1))
        h.send_response(206 if ranged else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{_blob_id(path)}"')
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if not body:
            return
        for i in range(start, len(data), CHUNK):
            h.wfile.write(data[i : i + CHUNK])
            h.wfile.flush()
            if self.delay:
                time.sleep(self.delay)


def _blob_id(path: Path) -> str:
    """The git blob id of a file (what the hub calls a non-LFS file's oid and etag)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
