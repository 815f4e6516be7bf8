"""The catalog and fetch routes (an APIRouter over a fetcher.Fetcher): GET /api/catalog lists every model
this version knows with its state; POST /api/models/fetch fetches one by its registry name in the background;
GET /api/models/fetch/{name} is its progress, DELETE cancels it. Fetched models join GET /api/models when
they are ready."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from .fetcher import Fetcher, FetchRefused


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        max_length=64, description="a model name from GET /api/catalog (never a repo id or path)"
    )
    dtype: str | None = Field(
        None, max_length=16, description="float16, bfloat16 or float32 (default: the checkpoint's own)"
    )


class FetchInfo(BaseModel):
    name: str
    repo: str
    dtype: str | None
    state: Literal["fetching", "done", "failed", "cancelled"]
    stage: Literal["queued", "download", "convert", "adding"] | None = Field(
        description="while fetching: queued, download (files and bytes), convert (tensors), adding"
    )
    progress: float = Field(ge=0, le=1, description="of the current stage")
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    tensors_done: int
    tensors_total: int
    error: str | None = Field(description="why it failed, one line")
    served_as: str | None = Field(description="once done: its name in GET /api/models")
    created: float
    started: float | None
    finished: float | None
    stage_times: dict[str, list[float | None]] = Field(description="stage -> [start, end] (Unix time)")


class CatalogEntry(BaseModel):
    name: str = Field(description="the model's name (what POST /api/models/fetch takes)")
    family: str
    family_label: str
    repo: str = Field(description="the Hugging Face repo it is fetched from")
    size_bytes: int | None = Field(description="the files a fetch downloads (approximate); null: unknown")
    downloaded: bool = Field(description="its files are in the Hugging Face cache already")
    state: Literal["served", "cached", "fetchable", "fetching", "failed"] = Field(
        description="served: in GET /api/models; cached: converted but not served (a fetch adds it at once)"
    )
    served_as: list[str] = Field(description="the names it is served as")
    fetch: FetchInfo | None = Field(description="this server's last fetch of it")


class Catalog(BaseModel):
    fetch_enabled: bool = Field(description="false: the server was started with --no-fetch")
    served: list[str] = Field(description="the names of every model served now (GET /api/models)")
    sizes_pending: bool = Field(description="the hub is being asked for sizes: ask again in a moment")
    models: list[CatalogEntry]


def fetch_router(fetcher: Fetcher) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/api/catalog", response_model=Catalog, summary="Every model this version knows, and its state"
    )
    def catalog(
        sizes: bool = Query(
            False,
            description="also ask the Hugging Face hub for the download sizes of models not in the cache "
            "(in the background: see sizes_pending); the page asks when its Models panel is opened",
        ),
    ) -> dict[str, Any]:
        return fetcher.catalog(sizes)

    @router.post(
        "/api/models/fetch",
        status_code=202,
        response_model=FetchInfo,
        summary="Download and convert a model of the catalog in the background; poll its progress",
        responses={
            403: {"description": "fetching is off on this server (--no-fetch)"},
            404: {"description": "not a model of the catalog"},
            409: {"description": "it is being fetched already, or a model of that name is served"},
        },
    )
    def fetch(req: FetchRequest, response: Response) -> dict[str, Any]:
        try:
            view = fetcher.request(req.name, req.dtype)
        except FetchRefused as e:
            raise HTTPException(e.status, str(e)) from None
        response.headers["Location"] = f"/api/models/fetch/{view['name']}"
        return view

    @router.get("/api/models/fetch/{name}", response_model=FetchInfo, summary="A fetch's state and progress")
    def get_fetch(name: str = Path(max_length=64)) -> dict[str, Any]:
        view = fetcher.get(name)
        if view is None:
            raise HTTPException(404, f"no fetch of '{name}' on this server")
        return view

    @router.delete(
        "/api/models/fetch/{name}",
        response_model=FetchInfo,
        summary="Cancel a queued or running fetch (its state becomes cancelled once it has stopped)",
        responses={404: {"description": "no such fetch"}, 409: {"description": "the fetch has ended"}},
    )
    def cancel_fetch(name: str = Path(max_length=64)) -> dict[str, Any]:
        try:
            return fetcher.cancel(name)
        except FetchRefused as e:
            raise HTTPException(e.status, str(e)) from None

    return router
