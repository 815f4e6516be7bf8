"""The upload routes (an APIRouter over an uploads.Uploads): POST /api/uploads takes audio for a file
setting, GET /api/uploads/{id}/audio gives it back. Request bodies are bounded by app.BodyLimit."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from .uploads import UploadError, Uploads


class UploadInfo(BaseModel):
    id: str
    name: str
    format: str
    sample_rate: int
    channels: int
    seconds: float
    bytes: int
    audio_url: str


def upload_router(uploads: Uploads) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/uploads",
        status_code=201,
        response_model=UploadInfo,
        summary="Upload audio for a file setting (melody, init / inpaint audio, audio prompt)",
        responses={413: {"description": "the file is too large"}, 415: {"description": "not audio"}},
        openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
    )
    async def upload(
        request: Request, name: str = Query("audio", max_length=255, description="the file's name")
    ) -> dict[str, Any]:
        data = await request.body()  # bounded by BodyLimit
        try:
            up = uploads.add(data, name)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        return uploads.describe(up)

    @router.get(
        "/api/uploads/{upload_id}/audio",
        response_class=FileResponse,
        summary="An uploaded file, as it was uploaded",
    )
    def get_upload(upload_id: uuid.UUID) -> FileResponse:
        found = uploads.get(str(upload_id))
        if found is None:
            raise HTTPException(404, f"no upload {upload_id} on this server")
        up, path = found
        return FileResponse(path, filename=up.name, content_disposition_type="inline")

    return router
