"""HTTP routes of the user's presets (presets.py keeps them): list, save, delete.

A saved preset is checked exactly as a job request would be (the same request model and `build_job`, so
the same bounds, strict types and per-checkpoint checks), with a model this server runs: a preset that is
saved can be applied and run. Settings are only the model's own (any other key is refused, as in a job);
audio inputs are refused (uploads are not kept with presets); the output settings (format, loudness) are
kept too. Errors are 4xx with one-line messages that
name the field (`settings.<name>` for a setting).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ..settings import MAX_PROMPT_CHARS, SEED_LIMIT
from .history import History
from .models import ModelEntry
from .output import output_settings
from .presets import MAX_NAME_CHARS, MAX_PRESETS, PresetExists, Presets, TooManyPresets


class PresetIn(BaseModel):
    """A preset to save: what the page's form holds (settings: the model's own, by name)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=MAX_NAME_CHARS, description="shown in the picker; unique, ignoring case")
    model: str = Field(max_length=64, description="a name from GET /api/models")
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    seconds: float = Field(gt=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="null: a random seed each run")
    settings: dict[str, Any] = Field(default_factory=dict, description="setting name -> value (see params)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        name = " ".join(v.split())  # one line
        if not name:
            raise PydanticCustomError("empty_name", "name is empty; name the preset")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise PydanticCustomError("bad_name", "name must not hold control characters")
        return name


class FamilyPresetInfo(BaseModel):
    """One of a family's presets (family.Preset), as GET /api/models lists it for a model."""

    name: str
    prompt: str
    seconds: float
    settings: dict[str, Any] = Field(description="setting name -> value; the others keep their defaults")


class PresetInfo(BaseModel):
    id: str
    name: str
    model: str = Field(description="the model it was saved with")
    family: str
    prompt: str
    seconds: float
    seed: int | None
    settings: dict[str, Any]
    created: float


def _invalid(loc: list[str | int], msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def _setting_loc(loc: Any, settings: dict[str, Any]) -> list[str | int]:
    """A job request's error location as this body has it: settings are under "settings"."""
    loc = [x for x in loc if x != "body"]
    return ["settings", *loc] if loc and loc[0] in settings else loc


def check_preset(body: PresetIn, models: dict[str, ModelEntry], job_request: type[BaseModel]) -> dict:
    """The settings of `body` checked as a job request of its model (module doc), normalised by each
    Setting's check; an HTTPException 422 otherwise."""
    from .app import build_job  # app.py includes this module's router

    entry = models.get(body.model)
    if entry is None:
        raise _invalid(["model"], f"unknown model '{body.model}'; available: {', '.join(models) or 'none'}")
    specs = {**{st.name: st for st in output_settings()}, **entry.params}  # format / loudness too
    for name in body.settings:
        spec = specs.get(name)
        if spec is None:
            takes = ", ".join(n for n, s in specs.items() if s.kind != "file")
            raise _invalid(["settings", name], f"{name} is not a setting of model '{entry.name}'; it takes: "
                           f"{takes}")  # fmt: skip
        if spec.kind == "file":
            raise _invalid(["settings", name], f"{name} is an audio input; presets keep settings, not audio")
    fields = {"model": body.model, "prompt": body.prompt, "seconds": body.seconds, "seed": body.seed}
    try:  # JSON again: the very parsing (strict types, bounds) of POST /api/jobs
        req = job_request.model_validate_json(json.dumps({**fields, **body.settings}))
    except ValidationError as e:
        errors = [{**err, "loc": ["body", *_setting_loc(err["loc"], body.settings)]} for err in e.errors()]
        raise HTTPException(422, detail=errors) from None
    try:
        build_job(req, models)  # this checkpoint's own checks (sampler names, limits, regions)
    except HTTPException as e:
        if isinstance(e.detail, list):
            for d in e.detail:
                d["loc"] = ["body", *_setting_loc(d["loc"], body.settings)]
        raise
    return {name: specs[name].check(value) for name, value in body.settings.items()}


def preset_router(models: dict[str, ModelEntry], history: History | None) -> APIRouter:
    """The routes over a `Presets` store in the history's SQLite file (in memory without a history)."""
    from .app import request_model

    store = Presets(None if history is None else history.path)
    job_request = request_model()
    router = APIRouter(prefix="/api/presets", tags=["presets"])

    @router.get("", response_model=list[PresetInfo], summary="The user's saved presets, by name")
    def list_presets() -> list[dict[str, Any]]:
        return store.list()

    @router.post(
        "",
        status_code=201,
        response_model=PresetInfo,
        summary="Save a preset (checked as a job request of its model)",
        responses={409: {"description": f"the name is taken, or {MAX_PRESETS} presets are saved"}},
    )
    def save_preset(body: PresetIn) -> dict[str, Any]:
        settings = check_preset(body, models, job_request)
        entry = models[body.model]
        try:
            return store.add(
                body.name, body.model, entry.family, body.prompt.strip(), body.seconds, body.seed, settings
            )
        except (PresetExists, TooManyPresets) as e:
            raise HTTPException(409, str(e)) from None

    @router.delete("/{preset_id}", response_model=PresetInfo, summary="Delete a saved preset")
    def delete_preset(preset_id: uuid.UUID) -> dict[str, Any]:
        found = store.delete(str(preset_id))
        if found is None:
            raise HTTPException(404, f"no preset {preset_id} on this server")
        return found

    return router
