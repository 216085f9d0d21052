"""Inbound webhooks from training jobs: verification and payload validation.

Signatures follow the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, five
minutes of tolerance), checked by the ``standardwebhooks`` library against every
configured secret, so secrets can be rotated without dropping deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunix_rt.specfile import Problem, validation_problems

REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_BODY_BYTES = 256 * 1024


class MissingHeadersError(ValueError):
    """The request lacks one of the Standard Webhooks headers."""


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


class RunEvent(BaseModel):
    """The body of ``POST /webhooks/training`` (docs/CONTRACT.md)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["run.started", "run.completed", "run.failed"]
    data: RunEventData


class Verifier:
    """Checks deliveries against one or more ``whsec_`` secrets."""

    def __init__(self, secrets: str) -> None:
        from standardwebhooks.webhooks import Webhook

        parts = secrets.split()
        if not parts:
            raise ValueError("TUNIX_RT_WEBHOOK_SECRET is empty")
        self._hooks = []
        for i, secret in enumerate(parts, start=1):
            if not secret.startswith("whsec_"):
                raise ValueError(f"TUNIX_RT_WEBHOOK_SECRET: secret {i} does not start with whsec_")
            try:
                self._hooks.append(Webhook(secret))
            except Exception as exc:  # noqa: BLE001 - the library raises several kinds
                raise ValueError(f"TUNIX_RT_WEBHOOK_SECRET: secret {i} is not valid base64 "
                                 f"({exc})") from None

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise :class:`MissingHeadersError` or :class:`SignatureError`, or return."""
        lowered = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in REQUIRED_HEADERS if not lowered.get(h)]
        if missing:
            raise MissingHeadersError(f"missing header(s): {', '.join(missing)}")
        subset = {h: lowered[h] for h in REQUIRED_HEADERS}
        reason = "no matching signature"
        for hook in self._hooks:
            try:
                hook.verify(body, subset, json_parse=False)
                return
            except Exception as exc:  # noqa: BLE001 - malformed headers raise ValueError etc.
                reason = str(exc) or type(exc).__name__
                if "timestamp" in reason.lower():
                    break  # the same for every secret
        raise SignatureError(reason)


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
