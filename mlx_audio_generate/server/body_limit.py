"""Bounded request bodies: `BodyLimit` refuses larger ones with 413 before the app reads or parses them."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A job request is a few hundred bytes (prompts are at most MAX_PROMPT_CHARS): anything much larger is refused
# before it is read in full or parsed, so no body can make the server allocate or answer megabytes.
MAX_BODY_BYTES = 64 * 1024


def _too_large(limit: int = MAX_BODY_BYTES) -> JSONResponse:
    if limit == MAX_BODY_BYTES:
        msg = f"request body is larger than {limit} bytes; a job request is a small JSON object"
    else:
        msg = f"the file is larger than {limit // (1024 * 1024)} MB"
    return JSONResponse({"message": msg, "detail": msg}, status_code=413)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 before the app reads or parses them.

    A declared Content-Length over the limit is refused at once; a body without one (chunked) is read up
    to the limit here and then handed on, so at most `limit` bytes are ever held. (The server discards the
    rest of a refused body, and the connection stays usable.)"""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES, larger: dict[str, int] | None = None):
        self.app, self.default, self.larger = app, limit, larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.default)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:  # the HTTP server holds the body to exactly this length
            try:
                declared = int(length)
            except ValueError:  # uvicorn refuses these itself; another server might not
                declared = limit + 1
            if declared > limit:
                await _too_large(limit)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _too_large(limit)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                first, body = body, None
                return first
            return await receive()  # after the body: the disconnect, whenever it comes

        await self.app(scope, replay, send)
