"""The HTTP API and web UI (FastAPI). `create_app(models, output_dir)` builds an app; cli/serve.py runs it."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import registry
from ..errors import UserError
from ..settings import MAX_PROMPT_CHARS, SEED_LIMIT, Setting, random_seed
from .jobs import Job, JobQueue, QueueFull
from .models import ModelEntry

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The UI loads nothing from elsewhere; the policy makes that a guarantee (and blocks injected scripts).
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# ------------------------------------------------------------------------------------------------- schemas


class JobRequestBase(BaseModel):
    """A generation request. Settings of other families are refused; omitted ones take the model's defaults
    (see GET /api/models). The settings fields are added from the families' schema (`request_model`)."""

    # strict: "5" is not a number and true is not 1; forbid: a misspelt parameter is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(max_length=64, description="a name from GET /api/models")
    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="text description of the audio")
    seconds: float = Field(gt=0, allow_inf_nan=False, description="duration, at most the model's max_seconds")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="same seed, same audio; default: random")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("empty_prompt", "prompt is empty; describe the audio you want")
        return v.strip()


def _field(st: Setting, families: str) -> tuple[Any, Any]:
    """A request field for a setting: its JSON type and the schema's bounds (checked again per model)."""
    if st.kind in ("float", "int"):
        bounds: dict[str, Any] = {}
        if st.minimum is not None:
            bounds["gt" if st.exclusive_minimum else "ge"] = st.minimum
        if st.maximum is not None:
            bounds["lt" if st.exclusive_maximum else "le"] = st.maximum
        if st.kind == "float":
            bounds["allow_inf_nan"] = False
        kind = float if st.kind == "float" else int
        return kind | None, Field(None, description=f"{families}: {st.help}", **bounds)
    limit = st.max_length or 64
    return str | None, Field(None, max_length=limit, description=f"{families}: {st.help}")


def request_model() -> type[BaseModel]:
    """JobRequest: the common fields plus every family's server settings (one field per name)."""
    fields = {
        name: _field(st, " / ".join(f.label for f in fams))
        for name, (st, fams) in registry.all_settings().items()
        if st.server
    }
    return create_model("JobRequest", __base__=JobRequestBase, **fields)


class ParamInfo(BaseModel):
    name: str
    kind: Literal["float", "int", "choice", "text"]
    default: Any
    label: str
    help: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: list[str] | None = None
    max_length: int | None = None


class ModelInfo(BaseModel):
    name: str
    family: str = Field(description="the model family (its settings are `params`)")
    family_label: str = Field(description="the family's name for people")
    sample_rate: int
    max_seconds: float
    loaded: bool = Field(description="weights are in memory (the first job of a model loads them)")
    params: list[ParamInfo]


class JobCreated(BaseModel):
    id: str
    status: str
    url: str


class JobInfo(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str | None = Field(description="while running: loading, generating or writing")
    progress: float = Field(ge=0, le=1)
    step: int
    total: int
    queue_position: int | None = Field(description="1 = next to run; null unless queued")
    error: str | None
    model: str
    family: str
    prompt: str
    seconds: float
    seed: int
    params: dict[str, Any]
    sample_rate: int
    created: float
    started: float | None
    finished: float | None
    elapsed: float | None
    download_name: str
    audio_url: str | None = Field(description="the WAV, once status is done")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    message: str = Field(description="all problems on one line, each naming its field")
    detail: list[ErrorItem]


# ----------------------------------------------------------------------------------------------- helpers


def _invalid(field: str, msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])


def _validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    # Only loc/msg/type: pydantic's `input` would echo whole prompts and `ctx` may hold exceptions.
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in errors
    ]
    parts = []
    for d in detail:
        field = ".".join(str(x) for x in d["loc"][1:]) or "body"
        parts.append(d["msg"] if d["msg"].startswith(field) else f"{field}: {d['msg']}")
    return JSONResponse({"message": "; ".join(parts), "detail": detail}, status_code=422)


def build_job(req: BaseModel, models: dict[str, ModelEntry]) -> Job:
    """Check a request against its model and fill in the defaults: a queued job never fails on its input."""
    entry = models.get(req.model)
    if entry is None:
        raise _invalid("model", f"unknown model '{req.model}'; available: {', '.join(models) or 'none'}")
    if req.seconds > entry.max_seconds + 1e-9:
        shown = math.floor(entry.max_seconds * 1000) / 1000  # never round the limit up
        raise _invalid("seconds", f"seconds must be at most {shown:g} for model '{entry.name}'")
    if round(req.seconds * entry.sample_rate) < 1:
        raise _invalid("seconds", "seconds is shorter than one sample")
    given = req.model_dump(exclude={"model", "prompt", "seconds", "seed"}, exclude_none=True)
    for name in given:
        if name not in entry.params:
            raise _invalid(name, f"{name} does not apply to {entry.family} models like '{entry.name}'")
    params = {}
    for name, spec in entry.params.items():
        try:  # this checkpoint's schema (e.g. its sampler names)
            value = spec.check(given.get(name))
        except UserError as e:
            raise _invalid(name, str(e)) from None
        params[name] = spec.default if value is None else value
    seed = req.seed if req.seed is not None else random_seed()
    return Job(req.model, entry.family, req.prompt, req.seconds, seed, params, entry.sample_rate)


def _with_url(view: dict[str, Any]) -> dict[str, Any]:
    view["audio_url"] = f"/api/jobs/{view['id']}/audio" if view["status"] == "done" else None
    return view


# ------------------------------------------------------------------------------------------------- the app


def create_app(
    models: dict[str, ModelEntry],
    output_dir: str | Path,
    max_queue: int = 16,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app; its lifespan starts and stops the worker. `allowed_hosts` (Host header names) defaults to
    loopback names only, which stops DNS-rebinding pages from reaching a server bound to 127.0.0.1."""
    queue = JobQueue(models, output_dir, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        yield
        queue.stop()

    app = FastAPI(
        title="mlx-audio-generate",
        description=f"Local text-to-audio jobs ({registry.labels()}), run one at a time.",
        lifespan=lifespan,
        responses={422: {"model": ValidationErrorBody, "description": "invalid request"}},
    )
    app.state.queue = queue
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's own, and the router's 404/405
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 422 and isinstance(exc.detail, list):
            return _validation_response(exc.detail)
        return JSONResponse({"message": str(exc.detail), "detail": exc.detail}, exc.status_code, exc.headers)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        path = request.url.path
        if path == "/" or path.startswith("/static/"):
            response.headers["Content-Security-Policy"] = UI_CSP
        return response

    @app.get("/api/models", response_model=list[ModelInfo], summary="Models this server can run")
    def list_models() -> list[dict[str, Any]]:
        return [m.info() for m in models.values()]

    def create_job(req: BaseModel, response: Response) -> dict[str, Any]:
        job = build_job(req, models)
        try:
            view = queue.submit(job)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": "5"}) from None
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return {"id": view["id"], "status": view["status"], "url": f"/api/jobs/{job.id}"}

    # The request class is built from the families' settings, so it is set as an object, not a name.
    create_job.__annotations__.update(req=request_model(), response=Response)
    app.post("/api/jobs", status_code=202, response_model=JobCreated, summary="Queue a generation")(
        create_job
    )

    @app.get("/api/jobs", response_model=list[JobInfo], summary="This server's jobs, newest first")
    def list_jobs() -> list[dict[str, Any]]:
        return [_with_url(v) for v in queue.list()]

    # Ids are typed as UUIDs: anything else is a 422 before a handler runs, and files are only ever
    # looked up through the server's own job records, so no request can name a path.
    @app.get("/api/jobs/{job_id}", response_model=JobInfo, summary="A job's status and progress")
    def get_job(job_id: uuid.UUID) -> dict[str, Any]:
        view = queue.get(str(job_id))
        if view is None:
            raise HTTPException(404, f"no job {job_id} on this server")
        return _with_url(view)

    @app.delete("/api/jobs/{job_id}", response_model=JobInfo, summary="Cancel a queued or running job")
    def cancel_job(job_id: uuid.UUID) -> dict[str, Any]:
        view = queue.cancel(str(job_id))
        if view is None:
            raise HTTPException(404, f"no job {job_id} on this server")
        return _with_url(view)

    @app.get(
        "/api/jobs/{job_id}/audio",
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}, "description": "the WAV file"}},
        summary="A finished job's audio",
    )
    def get_audio(job_id: uuid.UUID) -> FileResponse:
        found = queue.audio_file(str(job_id))
        if found is None:
            view = queue.get(str(job_id))
            if view is None:
                raise HTTPException(404, f"no job {job_id} on this server")
            raise HTTPException(409, f"job {job_id} is {view['status']}; audio exists once it is done")
        path, name = found
        if not path.is_file():
            raise HTTPException(404, f"the audio of job {job_id} was removed from the output folder")
        return FileResponse(path, media_type="audio/wav", filename=name, content_disposition_type="inline")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
