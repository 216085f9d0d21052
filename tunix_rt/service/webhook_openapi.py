"""What the served schema says about ``POST /webhooks/training``, so a client can be generated.

The route reads its body raw (the signature is over the exact bytes), so FastAPI
cannot infer the request body or the three Standard Webhooks headers: they are
declared here (``REQUEST``), with every answer the route gives (``RESPONSES``), each
with its JSON shape and an example. ``install`` puts the event's schemas (``RunEvent``
and what it nests) into the document's components, where ``REQUEST`` points.
See docs/CONTRACT.md, HTTP service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tunix_rt.service.webhooks import MAX_BODY_BYTES, MAX_ID_CHARS, RunEvent

if TYPE_CHECKING:
    from fastapi import FastAPI

REF = "#/components/schemas/{model}"


class WebhookAccepted(BaseModel):
    status: Literal["accepted"]
    run_id: str | None = Field(description="The run the delivery created or changed")
    dispatch: bool = Field(description="Whether a quality loop is owed to the run now")


class WebhookDuplicate(BaseModel):
    status: Literal["duplicate"]
    run_id: str | None


class WebhookHeaderError(BaseModel):
    error: str
    header: str | None = Field(description="The Standard Webhooks header at fault")


class WebhookError(BaseModel):
    error: str


class WebhookConflict(BaseModel):
    error: str
    field: Literal["data.external_id"]
    run_id: str = Field(description="The run the delivery may not change")


class WebhookPayloadError(BaseModel):
    error: str
    field: str | None = Field(description="The field at fault (data.name, body, ...)")


def _answer(model: type[BaseModel], description: str, example: dict[str, Any],
            headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"model": model, "description": description,
                              "content": {"application/json": {"example": example}}}
    if headers:
        answer["headers"] = headers
    return answer


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _answer(WebhookDuplicate, "This webhook-id was received before: nothing is done twice",
                 {"status": "duplicate", "run_id": "3f2a9c..."}),
    202: _answer(WebhookAccepted, "Verified and stored; a completed run's quality loop is owed",
                 {"status": "accepted", "run_id": "3f2a9c...", "dispatch": True}),
    400: _answer(WebhookHeaderError, "A Standard Webhooks header is missing or given twice, or "
                 f"the webhook-id is longer than {MAX_ID_CHARS} characters",
                 {"error": "missing header(s): webhook-signature",
                  "header": "webhook-signature"}),
    401: _answer(WebhookError, "Bad, expired or unknown signature: nothing is stored",
                 {"error": "signature rejected: bad, expired or unknown signature"}),
    409: _answer(WebhookConflict, "The external id names a run that webhooks (or this "
                 "source) did not create: nothing is stored",
                 {"error": "run 3f2a9c... was registered by cli ...",
                  "field": "data.external_id", "run_id": "3f2a9c..."}),
    413: _answer(WebhookError, f"The body is larger than {MAX_BODY_BYTES} bytes",
                 {"error": f"body larger than {MAX_BODY_BYTES} bytes"}),
    422: _answer(WebhookPayloadError, "Signed, but not a valid training event (also a NUL "
                 "character, or a predictions_uri outside TUNIX_RT_PREDICTIONS_ALLOW)",
                 {"error": "invalid payload: data.external_id: Field required",
                  "field": "data.external_id"}),
    503: _answer(WebhookError, "The delivery cannot be stored now: send it again later",
                 {"error": "cannot store the delivery; retry later"},
                 headers={"Retry-After": {"description": "Seconds to wait before sending again",
                                          "schema": {"type": "integer"}}}),
}


# What a header value the route reads can be: visible ASCII, no space at either end (HTTP
# strips those, and an empty value is a missing header: a 400).
VISIBLE = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1, "pattern": VISIBLE, **schema}}


REQUEST: dict[str, Any] = {
    "parameters": [
        _header("webhook-id", "The delivery's id, the same for every retry of it",
                maxLength=MAX_ID_CHARS),
        _header("webhook-timestamp", "Unix seconds when it was signed (5 minutes of tolerance)",
                pattern="^[0-9]+$"),
        _header("webhook-signature", 'v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> '
                "under the source's whsec_ secret; several, space-separated"),
    ],
    "requestBody": {
        "required": True,
        "description": "A training event; signed over its exact bytes",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="RunEvent")}}},
    },
}


def install(app: FastAPI) -> None:
    """Add the event's schemas to the components of ``app``'s served document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()  # FastAPI builds it once and keeps it
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "RunEvent" not in schemas:
            event = RunEvent.model_json_schema(ref_template=REF)
            schemas.update(event.pop("$defs", {}))
            schemas["RunEvent"] = event
        return document

    app.openapi = openapi  # type: ignore[method-assign]
