"""Inbound webhooks from training jobs: verification and payload validation.

Signatures follow the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, five
minutes of tolerance), checked by the ``standardwebhooks`` library against every
configured secret, so secrets can be rotated without dropping deliveries.

Each of the three headers must appear once: with two ``webhook-id`` headers the library
checks the last one, and a receiver that stored the first would let a replayed request
claim any delivery id. The id stored is the one verified, at most 255 characters.

Secrets belong to sources: ``TUNIX_RT_WEBHOOK_SECRET`` is the anonymous source, and
``TUNIX_RT_WEBHOOK_SECRETS`` (``source=whsec_... other=whsec_...``, a source named again
for rotation) names them. The source whose secret verified a delivery is its sender; a
run a source created is changed only by that source (:mod:`tunix_rt.service.deliveries`).

A verified body is also made storable: a NUL character anywhere is a
:class:`PayloadError` naming the field (PostgreSQL refuses it), and NaN or an infinity
(Python's JSON reads them) becomes null, the fields named in ``RunEvent.nonfinite``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      field_validator)

from tunix_rt.specfile import Problem, validation_problems

REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_BODY_BYTES = 256 * 1024
MAX_ID_CHARS = 255  # webhook_deliveries.id is String(255)
SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class MissingHeadersError(ValueError):
    """The request lacks one of the Standard Webhooks headers, repeats one, or has a
    ``webhook-id`` too long to store; ``header`` names it."""

    def __init__(self, message: str, header: str | None = None) -> None:
        super().__init__(message)
        self.header = header


@dataclass(frozen=True)
class Verified:
    """A delivery that passed: its ``webhook-id`` and the source whose secret signed it
    (None: the anonymous ``TUNIX_RT_WEBHOOK_SECRET``)."""

    delivery_id: str
    source: str | None


class SignatureError(ValueError):
    """Bad, expired or unknown signature."""


class PayloadError(ValueError):
    """A verified body that is not a valid training event.

    ``problems`` are its (field, message) pairs; ``field`` is the first one's field.
    """

    def __init__(self, problems: list[Problem], text: str) -> None:
        super().__init__(text)
        self.problems = problems
        self.field = problems[0].field if problems else "body"


MAX_PROGRESS_POINTS = 1000


class ProgressPoint(BaseModel):
    """One step of a ``run.progress`` delivery: the metrics at that training step."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0, le=2**63 - 1)
    metrics: dict[str, float | None] = Field(min_length=1)

    @field_validator("metrics")
    @classmethod
    def _names(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for name in value:
            if not name or len(name) > 255:
                raise ValueError("a metric name must be 1-255 characters")
        return value


class RunEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    external_id: str = Field(min_length=1, max_length=255)
    name: str | None = Field(None, min_length=1, max_length=255)
    dataset: str | None = Field(None, min_length=1, max_length=255)
    model: str | None = Field(None, min_length=1, max_length=255)
    predictions_uri: str | None = Field(None, min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    # run.progress: the time series points since the last delivery (at most 1,000).
    progress: list[ProgressPoint] = Field(default_factory=list,
                                          max_length=MAX_PROGRESS_POINTS)


class RunEvent(BaseModel):
    """The body of ``POST /webhooks/training`` (docs/CONTRACT.md)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["run.started", "run.progress", "run.completed", "run.failed"]
    data: RunEventData
    # Fields whose NaN or infinity was stored as null (data.metrics.loss, ...).
    _nonfinite: list[str] = PrivateAttr(default_factory=list)

    @property
    def nonfinite(self) -> list[str]:
        return self._nonfinite


class Verifier:
    """Checks deliveries against the ``whsec_`` secrets of one or more sources.

    ``secrets`` is the anonymous source's (space-separated, for rotation); ``sourced``
    maps a source's name to its secrets the same way.
    """

    def __init__(self, secrets: str | None, sourced: Mapping[str, Sequence[str]] | None = None
                 ) -> None:
        from standardwebhooks.webhooks import Webhook

        self._hooks: list[tuple[str | None, Any]] = []
        given = [(None, "TUNIX_RT_WEBHOOK_SECRET", secret)
                 for secret in (secrets or "").split()]
        for source, parts in (sourced or {}).items():
            given += [(source, f"TUNIX_RT_WEBHOOK_SECRETS: source {source}", secret)
                      for secret in parts]
        if not given:
            raise ValueError("TUNIX_RT_WEBHOOK_SECRET is empty")
        owners: dict[str, str | None] = {}
        for i, (source, label, secret) in enumerate(given, start=1):
            where = label if source is not None else f"{label}: secret {i}"
            if not secret.startswith("whsec_"):
                raise ValueError(f"{where}: the secret does not start with whsec_")
            if secret in owners and owners[secret] != source:
                raise ValueError(f"{where}: the same secret is given to two sources")
            owners[secret] = source
            try:
                self._hooks.append((source, Webhook(secret)))
            except Exception as exc:  # noqa: BLE001 - the library raises several kinds
                raise ValueError(f"{where}: the secret is not valid base64 ({exc})") from None

    def verify(self, body: bytes,
               headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Verified:
        """The verified id and source, or :class:`MissingHeadersError` (a missing, repeated
        or over-long header) or :class:`SignatureError`.

        ``headers`` may be a mapping or every (name, value) pair of the request, so that
        a repeated header is seen (Starlette's ``request.headers.items()`` gives all).
        """
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        seen: dict[str, list[str]] = {}
        for name, value in pairs:
            seen.setdefault(name.lower(), []).append(value)
        for header in REQUIRED_HEADERS:
            if len(seen.get(header, [])) > 1:
                raise MissingHeadersError(f"header {header} given {len(seen[header])} times: "
                                          "send it once", header)
        missing = [h for h in REQUIRED_HEADERS if not seen.get(h, [""])[0]]
        if missing:
            raise MissingHeadersError(f"missing header(s): {', '.join(missing)}", missing[0])
        subset = {h: seen[h][0] for h in REQUIRED_HEADERS}
        if len(subset["webhook-id"]) > MAX_ID_CHARS:
            raise MissingHeadersError(f"header webhook-id is longer than {MAX_ID_CHARS} "
                                      "characters", "webhook-id")
        reason = "no matching signature"
        for source, hook in self._hooks:
            try:
                hook.verify(body, subset, json_parse=False)
                return Verified(subset["webhook-id"], source)
            except Exception as exc:  # noqa: BLE001 - malformed headers raise ValueError etc.
                reason = str(exc) or type(exc).__name__
                if "timestamp" in reason.lower():
                    break  # the same for every secret
        raise SignatureError(reason)


def parse_sourced_secrets(text: str | None) -> dict[str, list[str]]:
    """``TUNIX_RT_WEBHOOK_SECRETS``: ``source=whsec_...`` entries, space-separated; a source
    named again has several secrets (rotation). ValueError naming the variable."""
    sourced: dict[str, list[str]] = {}
    for entry in (text or "").split():
        source, sep, secret = entry.partition("=")
        if not sep or not SOURCE_NAME.fullmatch(source) or not secret:
            raise ValueError(f"TUNIX_RT_WEBHOOK_SECRETS: {entry[:20]!r}... is not "
                             "source=whsec_<base64> (a source is 1-64 of A-Z a-z 0-9 _ . -)")
        sourced.setdefault(source, []).append(secret)
    return sourced


def parse_event(body: bytes, *, predictions_allow: Sequence[str] | None = None) -> RunEvent:
    """Validate a verified body; the error names every bad field (``body``: not JSON).

    A ``data.predictions_uri`` must be under one of the ``predictions_allow`` prefixes
    (default: those of the settings, ``TUNIX_RT_PREDICTIONS_ALLOW``): the receiver
    reads that file, and a sender must not make it read ``/etc/passwd``, ``/dev/zero``
    or an internal host.
    """
    try:
        event = RunEvent.model_validate_json(body)
    except ValidationError as exc:
        raise PayloadError(*validation_problems(exc, root="body")) from None
    nonfinite: list[str] = []
    cleaned = _storable(event.data.model_dump(), "data", nonfinite)
    if nonfinite:
        event = RunEvent(type=event.type, data=RunEventData.model_validate(cleaned))
        event._nonfinite = nonfinite
    uri = event.data.predictions_uri
    if uri is not None:
        from tunix_rt.errors import PredictionsError
        from tunix_rt.quality.predictions import allowed_prefixes, check_allowed

        if predictions_allow is None:
            from tunix_rt.settings import get_settings

            predictions_allow = allowed_prefixes(get_settings())
        try:
            check_allowed(uri, predictions_allow)
        except PredictionsError as exc:
            field = "data.predictions_uri"
            raise PayloadError([Problem(field, str(exc))], f"{field}: {exc}") from None
    return event


def _storable(value: Any, path: str, nonfinite: list[str]) -> Any:
    """``value`` with NaN and the infinities as None (their paths added to ``nonfinite``);
    a NUL character in a string or a key is a :class:`PayloadError` naming its path."""
    if isinstance(value, str):
        if "\x00" in value:
            raise PayloadError([Problem(path, "contains a NUL character")],
                               f"{path}: contains a NUL character")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        nonfinite.append(path)
        return None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if "\x00" in str(key):
                raise PayloadError([Problem(path, "a key contains a NUL character")],
                                   f"{path}: a key contains a NUL character")
            out[key] = _storable(item, f"{path}.{key}", nonfinite)
        return out
    if isinstance(value, (list, tuple)):
        return [_storable(item, f"{path}[{i}]", nonfinite) for i, item in enumerate(value)]
    return value
