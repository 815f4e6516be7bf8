"""The HTTP API and web UI (FastAPI). `create_app(models, output_dir)` builds an app; cli/serve.py runs it."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import registry
from ..errors import UserError
from ..settings import MAX_PROMPT_CHARS, SEED_LIMIT, Setting, random_seed
from .body_limit import MAX_BODY_BYTES, BodyLimit
from .fetch_routes import fetch_router
from .fetcher import Fetcher
from .history import MAX_TITLE_CHARS, History
from .jobs import Job, JobQueue, QueueFull
from .models import ModelEntry
from .output import check_output, output_names, output_settings
from .preset_routes import FamilyPresetInfo, preset_router
from .upload_routes import upload_router
from .uploads import MAX_UPLOAD_BYTES, Uploads

log = logging.getLogger("mlx_audio_generate.server")

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER = "/static/vendor/swagger-ui"  # shipped in the package: /docs works offline and calls no CDN
# Error bodies are bounded too: at most this many problems listed (plus their count), short lines.
MAX_ERROR_ITEMS = 20
MAX_MESSAGE_CHARS = 1000
MAX_ITEM_CHARS = 200
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The UI loads nothing from elsewhere; the policy makes that a guarantee (and blocks injected scripts).
# Inline styles are allowed: wavesurfer.js styles its shadow DOM with a <style> element (scripts stay
# 'self' only); blob: lets it draw and play from memory.
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; "
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
    if st.kind == "file":  # never a path: the id of an upload or of a finished job (uploads.py)
        desc = f"{families}: {st.help} (the id of an upload, POST /api/uploads, or of a finished job)"
        return str | None, Field(None, max_length=36, description=desc)
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
    """JobRequest: the common fields, the output settings (output.py, every model) plus every family's
    server settings (one field per name)."""
    fields = {st.name: _field(st, "every model") for st in output_settings()}
    fields.update(
        (name, _field(st, " / ".join(f.label for f in fams)))
        for name, (st, fams) in registry.all_settings().items()
        if st.server
    )
    return create_model("JobRequest", __base__=JobRequestBase, **fields)


class RegionInfo(BaseModel):
    of: str = Field(description="the file setting whose waveform the region is selected on")
    role: Literal["start", "end", "list"]


class ParamInfo(BaseModel):
    name: str
    kind: Literal["float", "int", "choice", "text", "file"]
    default: Any
    label: str
    help: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: list[str] | None = None
    max_length: int | None = None
    region: RegionInfo | None = None


class ModelInfo(BaseModel):
    name: str
    family: str = Field(description="the model family (its settings are `params`)")
    family_label: str = Field(description="the family's name for people")
    sample_rate: int
    max_seconds: float = Field(description="the model's window: the longest clip it makes in one piece")
    max_total_seconds: float = Field(
        description="the longest clip a request may ask for: beyond max_seconds (long_form models) the clip "
        "is made of overlapping windows (extend_stride)"
    )
    long_form: bool = Field(description="seconds may exceed the window (max_seconds)")
    loaded: bool = Field(description="weights are in memory (the first job of a model loads them)")
    params: list[ParamInfo]
    output: list[ParamInfo] = Field(description="the output settings (file format, loudness): every model")
    examples: list[str] = Field(description="example prompts of the model's family")
    presets: list[FamilyPresetInfo] = Field(description="the family's presets that fit this model")


class JobCreated(BaseModel):
    id: str
    status: str
    url: str


class JobNotes(BaseModel):
    """The user's notes on a job; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str | None = Field(
        None, max_length=MAX_TITLE_CHARS, description='a name for the clip ("" clears it)'
    )
    rating: int | None = Field(None, ge=0, le=5, description="0..5 stars (0 clears it)")
    starred: bool | None = None


class JobInfo(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str | None = Field(
        description="while running: loading (first use of a model), text, generate, decode, writing"
    )
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
    eta: float | None = Field(description="estimated seconds left while running, once steps are timed")
    stage_times: dict[str, list[float | None]] = Field(description="stage -> [start, end] (Unix time)")
    title: str | None
    rating: int | None
    starred: bool
    audio_url: str | None = Field(description="the clip in its `format`, once status is done")
    format: str = Field(description="the clip's file format (other formats: ?format= on download)")
    normalize: float | None = Field(description="the loudness asked for (LUFS), null: as generated")
    loudness: dict[str, Any] | None = Field(
        description="with normalize, once written: what was reached (output_lufs, input_lufs, gain_db, "
        "true_peak_dbtp, peak_limited: the true-peak ceiling kept it short of the target) and `report`, "
        "one line for people"
    )
    windows: int | None = Field(description="long form: how many windows the clip is made of")
    window: int | None = Field(description="long form, while generating: the window running (1 = first)")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    message: str = Field(description="the problems on one line, each naming its field (the first 20)")
    detail: list[ErrorItem] = Field(description=f"the first {MAX_ERROR_ITEMS} problems")
    count: int = Field(description="how many problems there are")


# ----------------------------------------------------------------------------------------------- helpers

AUDIO_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


def _transcoded(clip: Path, fmt: str) -> Path:
    """The clip as `fmt` beside it (`<job id>.<fmt>`), made on the first request (atomically) and kept."""
    from ..audio import _available_formats, read_audio, write_audio

    target = clip.with_suffix(f".{fmt}")
    if target.is_file():
        return target
    if f".{fmt}" not in _available_formats():
        raise HTTPException(
            415, f"this machine's libsndfile cannot write {fmt}; download the {clip.suffix[1:].upper()}"
        )
    import soundfile as sf

    sample_rate = sf.info(str(clip)).samplerate
    try:
        write_audio(target, read_audio(clip), sample_rate, sidecar=False)
    except UserError as e:
        raise HTTPException(500, str(e)) from None
    return target


def _invalid(field: str, msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _loc_item(x: Any) -> str | int:
    return x if isinstance(x, int) and not isinstance(x, bool) else _cut(str(x), MAX_ITEM_CHARS)


def _validation_response(errors: list[dict[str, Any]], redact: Callable[[str], str]) -> JSONResponse:
    # Only loc/msg/type: pydantic's `input` would echo whole prompts and `ctx` may hold exceptions. Only the
    # first few problems, each cut short: a body of thousands of unknown keys gets a small answer.
    detail = [
        {
            "loc": [_loc_item(x) for x in e.get("loc", ())],
            "msg": _cut(redact(str(e.get("msg", ""))), MAX_ITEM_CHARS),
            "type": _cut(str(e.get("type", "")), 64),
        }
        for e in errors[:MAX_ERROR_ITEMS]
    ]
    parts = []
    for d in detail:
        field = ".".join(str(x) for x in d["loc"][1:]) or "body"
        parts.append(d["msg"] if d["msg"].startswith(field) else f"{field}: {d['msg']}")
    message = "; ".join(parts)
    if len(errors) > len(detail):
        message += f"; and {len(errors) - len(detail)} more"
    body = {"message": _cut(message, MAX_MESSAGE_CHARS), "detail": detail, "count": len(errors)}
    return JSONResponse(body, status_code=422)


AudioFinder = Callable[[str], "tuple[Path, float] | None"]


def _check_region(name: str, spec: Setting, value: Any, seconds: float) -> None:
    """A region value selected on a waveform lies inside the clip: the longer of the requested seconds and
    the audio it is selected on (list values: the family's generate parses them and says what is wrong)."""
    if spec.region is None or spec.region[1] == "list" or value is None:
        return
    if value > seconds + 1e-9:
        raise _invalid(name, f"{name} {value:g} s is outside the clip ({seconds:g} s)")


def build_job(req: BaseModel, models: dict[str, ModelEntry], find_audio: AudioFinder | None = None) -> Job:
    """Check a request against its model and fill in the defaults: a queued job never fails on its input.
    File settings name an upload or a finished job by id; `find_audio(id)` gives (path, seconds) or None."""
    entry = models.get(req.model)
    if entry is None:
        raise _invalid("model", f"unknown model '{req.model}'; available: {', '.join(models) or 'none'}")
    if req.seconds > entry.max_total_seconds + 1e-9:
        shown = math.floor(entry.max_total_seconds * 1000) / 1000  # never round the limit up
        raise _invalid("seconds", f"seconds must be at most {shown:g} for model '{entry.name}'")
    if round(req.seconds * entry.sample_rate) < 1:
        raise _invalid("seconds", "seconds is shorter than one sample")
    output, bad = check_output(req.model_dump(include=output_names()), req.seconds)
    if bad is not None:
        raise _invalid(*bad)
    given = req.model_dump(exclude={"model", "prompt", "seconds", "seed", *output}, exclude_none=True)
    for name in given:
        if name not in entry.params:
            raise _invalid(name, f"{name} does not apply to {entry.family} models like '{entry.name}'")
    params, inputs, lengths, values = {}, {}, {}, {}
    for name, spec in entry.params.items():
        try:  # this checkpoint's schema (e.g. its sampler names)
            value = spec.check(given.get(name))
        except UserError as e:
            raise _invalid(name, str(e)) from None
        if spec.kind == "file" and value is not None:
            found = find_audio(value) if find_audio is not None else None
            if found is None:
                raise _invalid(name, f"{name}: no upload or finished job '{value}' on this server")
            inputs[name], lengths[name] = str(found[0]), found[1]
        values[name] = value
    for name, spec in entry.params.items():
        length = max(req.seconds, lengths.get(spec.region[0], 0.0)) if spec.region else req.seconds
        _check_region(name, spec, values[name], length)
        value = values[name]
        if value is not None or spec.default is not None:  # None: off / the checkpoint decides
            params[name] = spec.default if value is None else value
    seed = req.seed if req.seed is not None else random_seed()
    job = Job(req.model, entry.family, req.prompt, req.seconds, seed, params, entry.sample_rate)
    job.inputs = inputs
    job.format, job.normalize = output["format"], output["normalize"]
    return job


def _with_url(view: dict[str, Any]) -> dict[str, Any]:
    view["audio_url"] = f"/api/jobs/{view['id']}/audio" if view["status"] == "done" else None
    return view


# ------------------------------------------------------------------------------------------------- the app


def create_app(
    models: dict[str, ModelEntry],
    output_dir: str | Path,
    max_queue: int = 16,
    allowed_hosts: list[str] | None = None,
    history: History | None = None,
    uploads_dir: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    fetch_enabled: bool = True,
    fetch_dir: str | Path | None = None,
) -> FastAPI:
    """The app; its lifespan starts and stops the worker. `allowed_hosts` (Host header names) defaults to
    loopback names only, which stops DNS-rebinding pages from reaching a server bound to 127.0.0.1.
    `history`: where jobs are remembered across restarts (history.py); None keeps them in memory only.
    `uploads_dir`: where uploaded audio is kept (default `output_dir/uploads`). `fetch_enabled`: the page may
    fetch models of the catalog into `fetch_dir` (default: the CLI's cache; fetcher.py)."""
    queue = JobQueue(models, output_dir, max_queue=max_queue, history=history)
    uploads = Uploads(Path(output_dir) / "uploads" if uploads_dir is None else uploads_dir, max_upload_bytes)
    if fetch_dir is None:
        from ..resolve import cache_root

        fetch_dir = cache_root()
    fetcher = Fetcher(models, fetch_dir, enabled=fetch_enabled)

    def find_audio(ref: str) -> tuple[Path, float] | None:
        """An upload, else a finished job's clip ("send to init / inpaint")."""
        found = uploads.get(ref)
        if found is not None:
            return found[1], found[0].seconds
        clip = queue.audio_file(ref)
        view = queue.get(ref)
        if clip is None or view is None or not clip[0].is_file():
            return None
        return clip[0], float(view["seconds"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        fetcher.start()
        yield
        fetcher.stop()
        queue.stop()

    app = FastAPI(
        title="mlx-audio-generate",
        description=f"Local text-to-audio jobs ({registry.labels()}), run one at a time.",
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own Swagger UI files
        redoc_url=None,
        responses={422: {"model": ValidationErrorBody, "description": "invalid request"}},
    )
    app.state.queue, app.state.fetcher = queue, fetcher
    # Added first, so it runs after the Host check: a refused host never has its body read.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES, larger={"/api/uploads": max_upload_bytes})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_HOSTS)

    # Every error body goes through queue.redact: clients learn file names, never server folders.
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()), queue.redact)

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's own, and the router's 404/405
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 422 and isinstance(exc.detail, list):
            return _validation_response(exc.detail, queue.redact)
        if str(exc.detail) != queue.redact(str(exc.detail)):
            log.info("HTTP %s: %s", exc.status_code, exc.detail)  # the full text stays in the log
        msg = _cut(queue.redact(str(exc.detail)), MAX_MESSAGE_CHARS)
        return JSONResponse({"message": msg, "detail": msg}, exc.status_code, exc.headers)

    @app.exception_handler(Exception)  # a bug: one line of JSON; the server still logs the traceback
    async def on_internal_error(request: Request, exc: Exception) -> JSONResponse:
        msg = f"internal error ({type(exc).__name__}); the server's log has the details"
        return JSONResponse({"message": msg, "detail": msg}, status_code=500)

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
        return [m.info() for m in list(models.values())]  # a copy: fetches add models meanwhile

    def create_job(req: BaseModel, response: Response) -> dict[str, Any]:
        job = build_job(req, models, find_audio)
        try:
            view = queue.submit(job)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": "5"}) from None
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return {"id": view["id"], "status": view["status"], "url": f"/api/jobs/{job.id}"}

    # The request class is built from the families' settings, so it is set as an object, not a name.
    create_job.__annotations__.update(req=request_model(), response=Response)
    app.post(
        "/api/jobs",
        status_code=202,
        response_model=JobCreated,
        summary="Queue a generation",
        responses={
            413: {"description": f"the body is over {MAX_BODY_BYTES} bytes"},
            429: {"description": "the queue is full"},
        },
    )(create_job)

    @app.get("/api/jobs", response_model=list[JobInfo], summary="This server's jobs, newest first")
    def list_jobs(
        q: str | None = Query(None, max_length=200, description="only jobs whose prompt, title or model "
                              "contains this (any case)"),
        starred: bool = Query(False, description="only starred jobs"),
    ) -> list[dict[str, Any]]:  # fmt: skip
        return [_with_url(v) for v in queue.list(q, starred)]

    @app.patch("/api/jobs/{job_id}", response_model=JobInfo, summary="Rename, rate or star a job")
    def annotate_job(job_id: uuid.UUID, notes: JobNotes) -> dict[str, Any]:
        view = queue.annotate(str(job_id), **notes.model_dump(exclude_unset=True))
        if view is None:
            raise HTTPException(404, f"no job {job_id} on this server")
        return _with_url(view)

    @app.delete(
        "/api/history/{job_id}",
        response_model=JobInfo,
        summary="Delete a finished job from the history, with its clip",
        responses={409: {"description": "the job is queued or running: cancel it first"}},
    )
    def forget_job(job_id: uuid.UUID) -> dict[str, Any]:
        view = queue.forget(str(job_id))
        if view is None:
            raise HTTPException(404, f"no job {job_id} on this server")
        if isinstance(view, str):
            raise HTTPException(409, view)
        view["audio_url"] = None
        return view

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
        responses={200: {"content": {f"audio/{f}": {} for f in AUDIO_TYPES}, "description": "the clip"}},
        summary="A finished job's audio (in the job's format, or WAV / FLAC / MP3 / OGG made from it once)",
    )
    def get_audio(
        job_id: uuid.UUID,
        format: Literal["wav", "flac", "mp3", "ogg"] | None = Query(None, description="default: the job's"),
    ) -> FileResponse:
        found = queue.audio_file(str(job_id))
        if found is None:
            view = queue.get(str(job_id))
            if view is None:
                raise HTTPException(404, f"no job {job_id} on this server")
            raise HTTPException(409, f"job {job_id} is {view['status']}; audio exists once it is done")
        path, name = found
        if not path.is_file():
            raise HTTPException(404, f"the audio of job {job_id} was removed from the output folder")
        format = format or path.suffix[1:]
        if f".{format}" != path.suffix:
            path = _transcoded(path, format)
            name = str(Path(name).with_suffix(f".{format}"))
        return FileResponse(
            path, media_type=AUDIO_TYPES[format], filename=name, content_disposition_type="inline"
        )

    app.include_router(upload_router(uploads))
    app.include_router(fetch_router(fetcher))

    app.include_router(preset_router(models, history))  # /api/presets: the user's presets

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        )

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
