"""The JSON the read API answers, as pydantic models, so the served schema describes it.

Each route of tunix_rt/service/server.py declares one of these as its
``response_model``: FastAPI validates the answer against it (a field that drifts
from the model is a 500 in the tests, not a silent change on the wire) and puts it
in /openapi.json, so a client can be generated. The wire format is
docs/CONTRACT.md's: the models add no field and rename none (tests/http/test_openapi.py
compares them with what the store's ``to_dict`` functions give).

``install`` also finishes the served document where FastAPI's inference stops short:
an optional query parameter is absent or a value, never JSON null; a string
parameter cannot hold a NUL (tunix_rt.service.params refuses one with a 400); a
cursor has ``format: cursor`` (only a ``next_cursor`` is one); and, with
``TUNIX_RT_API_TOKEN`` set, the bearer and cookie schemes and the 401 and 429 every
protected operation can answer.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunix_rt.store.models import DatasetSource, GateDecision, RunOrigin, RunStatus

if TYPE_CHECKING:
    from fastapi import FastAPI

# Read by the schema post-processing below and by the fuzz test's cursor strategy.
CURSOR_FORMAT = "cursor"
NO_NUL = r"^[^\x00]*$"
# Paths the token does not guard (tunix_rt.service.auth.OPEN_PATHS).
OPEN_OPERATIONS = {("post", "/webhooks/training"), ("get", "/healthz")}


class _Answer(BaseModel):
    # A field added to a ``to_dict`` reaches the caller even before it is declared here
    # (tests/http/test_openapi.py fails until it is): never dropped, never a 500.
    model_config = ConfigDict(extra="allow")


# --- errors -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every refusal: ``error`` says what is wrong in words; the rest names where."""

    error: str = Field(description="What is wrong, in words")
    parameter: str | None = Field(None, description="The path or query parameter at fault")
    retry_after: int | None = Field(None, description="429: seconds until a credential is "
                                                      "checked again")
    detail: list[dict[str, Any]] | None = Field(
        None, description="422: FastAPI's validation errors, one per problem")


# --- runs ---------------------------------------------------------------------------------


class RunOut(_Answer):
    """A run as the API and ``--format json`` show it (docs/CONTRACT.md, HTTP service)."""

    id: str
    external_id: str | None
    name: str
    dataset: str
    model: str
    status: RunStatus
    dry_run: bool
    origin: RunOrigin
    predictions_uri: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = Field(description="Why the job failed")
    loop_error: str | None = Field(description="Why its quality loop could not run; null "
                                               "once a loop completes")
    exit_code: int | None
    log_uri: str | None
    study_id: str | None
    trial_id: str | None
    created_at: str = Field(description="ISO 8601 with a UTC offset")
    updated_at: str | None
    started_at: str | None
    completed_at: str | None


class RunPage(_Answer):
    runs: list[RunOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= (with the same sort and "
                                                "filters) for the next page; null on the last")


class MetricPoint(_Answer):
    step: int
    value: float | None = Field(description="null: the trainer reported a non-finite number")


class RunMetrics(_Answer):
    run_id: str
    series: dict[str, list[MetricPoint]] = Field(
        description="Each metric's points in step order")


class GateOut(_Answer):
    """The run's latest gate decision: the CLI's ``tunix-rt gate --format json``."""

    run_id: str
    dataset: str
    judge: str
    decision: GateDecision
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    n_paired: int
    baseline_run_id: str | None
    reason: str
    policy: dict[str, Any]
    created_at: str
    n_excluded: int


# --- the leaderboard ----------------------------------------------------------------------


class BoardEntry(_Answer):
    rank: int
    run_id: str
    run_name: str
    model: str
    score: float = Field(description="Mean over the whole item set (missing items count 0)")
    ci_low: float
    ci_high: float
    n_items: int
    judge_version: str
    n_missing: int | None
    n_unscored: int
    dataset_version: int | None
    flag: Literal["unscored", "coverage_unknown"] | None = Field(
        description="Why the entry ranks below every complete one")
    coverage: float | None = Field(description="The share of the item set answered")


class BoardPage(_Answer):
    dataset: str
    judge: str
    entries: list[BoardEntry]
    next_cursor: str | None


# --- datasets -----------------------------------------------------------------------------


class DatasetOut(_Answer):
    """A dataset version, as ``tunix-rt datasets show --format json``."""

    id: int
    name: str
    version: int
    content_hash: str = Field(description="sha256 over the items' [id, prompt, reference]")
    n_items: int
    source: DatasetSource
    source_run_id: str | None
    created_at: str


class DatasetSummary(DatasetOut):
    """A dataset's latest version and how many it has."""

    versions: int


class DatasetList(_Answer):
    datasets: list[DatasetSummary]


class Health(_Answer):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]


# --- answers for ``responses=`` -----------------------------------------------------------


def error(description: str, **extra: Any) -> dict[str, Any]:
    """A documented refusal with the error body."""
    return {"model": ErrorBody, "description": description, **extra}


BAD_PARAMETER = {400: error("A parameter holds a NUL (%00), is not one this operation takes, "
                            "or a cursor was not made here for this sort: `parameter` "
                            "names it")}
INVALID = {422: error("A parameter is not valid (a value outside its enum or range): "
                      "`error` says which and what it may be")}
NOT_FOUND_RUN = {404: error("No run with that id or external id")}
UNAVAILABLE = {503: {"model": Health, "description": "The database cannot be reached"}}


def responses(*groups: dict[int, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for group in groups:
        out.update(group)
    return out


# --- the served document ------------------------------------------------------------------

_AUTH_RESPONSES = {
    "401": {"description": "TUNIX_RT_API_TOKEN is set and the request has no valid "
                           "`Authorization: Bearer` token or session cookie",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref":
                                                        "#/components/schemas/ErrorBody"}}}},
    "429": {"description": "Too many failed credential checks from this address: every "
                           "credential is refused until Retry-After seconds have passed",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {"application/json": {"schema": {"$ref":
                                                        "#/components/schemas/ErrorBody"}}}},
}
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "TUNIX_RT_API_TOKEN, as `Authorization: Bearer <token>`"},
    "session": {"type": "apiKey", "in": "cookie", "name": "tunix_rt_session",
                "description": "The cookie `POST /login` sets (the page's sign-in)"},
}


def _parameter_schema(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema")
    if not isinstance(schema, dict):
        return
    variants = schema.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        # Absent means "no value": a query or path parameter is never JSON null (sent as
        # an empty string, which the enums and formats refuse).
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    for variant in [schema, *schema.get("anyOf", [])]:
        if variant.get("type") == "string" and "enum" not in variant \
                and "pattern" not in variant and variant.get("format") != CURSOR_FORMAT:
            variant["pattern"] = NO_NUL
    if parameter.get("name") == "cursor" and schema.get("type") == "string":
        schema["format"] = CURSOR_FORMAT
        schema.pop("pattern", None)
        schema.setdefault("description", "The next_cursor of the previous page; a value "
                                         "not made here is a 400")


def finish(document: dict[str, Any], *, protected: bool) -> dict[str, Any]:
    """Complete ``document`` in place (idempotent): parameters, auth."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    if "ErrorBody" not in schemas:
        schemas["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}")
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") in ("query", "path"):
                    _parameter_schema(parameter)
            invalid = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(invalid.get("content", "")):
                # The app's handler answers every validation error with the error body
                # (params.validation_error), FastAPI's ``detail`` list kept in it.
                operation["responses"]["422"] = {
                    "description": INVALID[422]["description"],
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/ErrorBody"}}}}
            if protected and (method, path) not in OPEN_OPERATIONS:
                operation.setdefault("security", [{"bearer": []}, {"session": []}])
                for code, answer in _AUTH_RESPONSES.items():
                    operation["responses"].setdefault(code, copy.deepcopy(answer))
                ok = operation["responses"].get("200", {}).get("content", {})
                if "text/html" in ok:  # a page: a browser is answered the login form
                    operation["responses"]["401"]["content"].setdefault(
                        "text/html", {"schema": {"type": "string"}})
    if protected:
        components.setdefault("securitySchemes", _SECURITY_SCHEMES)
    return document


def install(app: FastAPI, *, protected: bool) -> None:
    """Serve the finished document; ``protected``: TUNIX_RT_API_TOKEN is set."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return finish(generate(), protected=protected)

    app.openapi = openapi  # type: ignore[method-assign]
