"""The training-side client: tell ``tunix-rt serve`` that a run started, progressed
(``run.progress``: metrics by step), completed or failed.

It runs inside training jobs, so it is light: the standard library, plus ``httpx`` imported
only when a notification is sent. It never imports tunix, jax, numpy, Prefect or SQLAlchemy.

Configuration comes from arguments or the environment:

- ``TUNIX_RT_URL``: the base URL of ``tunix-rt serve`` (e.g. ``http://127.0.0.1:8000``);
  notifications go to ``{url}/webhooks/training``.
- ``TUNIX_RT_WEBHOOK_SECRET``: the receiver's ``whsec_<base64>`` secret (when it holds
  several, space-separated, for rotation, the first one signs).

One notification is one Standard Webhooks delivery: a single ``webhook-id``
(``msg_<uuid hex>``) for all of its attempts, so the receiver stores it once however many
retries reach it. Connection errors, timeouts, 5xx, 408 and 429 are retried with
exponential backoff and full jitter (a ``Retry-After`` on 503/429 is honoured instead);
other 4xx answers (401 bad secret, 422 bad payload) are not, since resending cannot help.

Nothing here raises into the training job by default: a notification that cannot be
delivered is logged as a warning (logger ``tunix_rt.client``) and reported in the returned
:class:`NotifyResult`; pass ``raise_on_error=True`` to get a :class:`NotifyError` instead.
Programming errors (an unknown event type, an empty ``external_id``) do raise ``ValueError``.

Plain use, from any training script::

    from tunix_rt.client import notify

    notify("run.started", external_id="job-42", name="arith-lr01", dataset="arithmetic",
           model="gemma-2b-lora", config={"learning_rate": 1e-4})
    ...  # train, write predictions
    notify("run.completed", external_id="job-42", dataset="arithmetic", model="gemma-2b-lora",
           predictions_uri="file:///data/runs/job-42/predictions.jsonl",
           metrics={"train_loss": 0.31})

With a Tunix trainer, prefer :class:`tunix_rt.integrations.tunix.TunixRtHooks` (the
``tunix`` extra): a real ``tunix.sft.hooks.TrainingHooks`` that also sends the loss curve
(``run.progress``). :class:`TunixRtHook` here needs no Tunix: it has the shape of Tunix's
training hooks (an object with ``on_train_start(train_ctx)`` and ``on_train_end(train_ctx)``;
every other ``on_*`` hook method is accepted and does nothing). Pass it where your trainer (e.g. a
``PeftTrainer``) accepts training hooks; ``train_ctx`` is whatever the trainer hands its
hooks, and is only given to your own ``predictions_uri``/``metrics_fn`` callables::

    hook = TunixRtHook(external_id="job-42", name="arith-lr01", dataset="arithmetic",
                       model="gemma-2b-lora", config={"learning_rate": 1e-4},
                       predictions_uri=lambda ctx: write_predictions(ctx),  # -> "file:///..."
                       metrics_fn=lambda ctx: {"train_loss": last_loss})
    with hook:            # a training error becomes run.failed (and is re-raised)
        trainer.train(...)  # a trainer configured with the hook

The hook's deliveries have ids derived from ``external_id`` and the event type under the
job's webhook secret (an HMAC), so when every process of a multi-host job calls the hook,
or a job process retries, the receiver keeps one of each; and nobody without the secret
can compute them from the external id (which ``/api/runs`` shows) to claim one first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tunix_rt.jsonsafe import json_safe
from tunix_rt.retrying import retry_delay

__all__ = ["EVENT_TYPES", "NotifyError", "NotifyResult", "TunixRtHook", "notify",
           "sign_delivery"]

log = logging.getLogger("tunix_rt.client")

EVENT_TYPES = ("run.started", "run.progress", "run.completed", "run.failed")
WEBHOOK_PATH = "/webhooks/training"
URL_ENV = "TUNIX_RT_URL"
SECRET_ENV = "TUNIX_RT_WEBHOOK_SECRET"
MAX_DELAY_S = 60.0  # cap on one wait between attempts, backoff or Retry-After
_RETRY_STATUSES = frozenset({408, 429})  # besides every 5xx
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_USER_AGENT = "tunix-rt-client/0.1"


class NotifyError(RuntimeError):
    """A notification that was not delivered (only with ``raise_on_error=True``)."""

    def __init__(self, result: NotifyResult) -> None:
        super().__init__(f"tunix-rt notification {result.delivery_id} not delivered after "
                         f"{result.attempts} attempt(s): {result.error}")
        self.result = result


@dataclass(frozen=True)
class NotifyResult:
    """What became of one notification.

    ``ok`` when the receiver answered 2xx: 202 accepted, or 200 for a delivery id it had
    already received. ``status`` is the last HTTP status (None when no answer came),
    ``attempts`` the requests made (0 when the client is not configured), ``response`` the
    last JSON answer.
    """

    ok: bool
    status: int | None
    attempts: int
    delivery_id: str
    error: str | None = None
    response: dict[str, Any] | None = None


def _secret_key(secret: str) -> bytes:
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not whsec_<base64>") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign_delivery(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``.

    ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256, keyed by the decoded
    ``whsec_<base64>`` secret, of ``"{msg_id}.{timestamp}.{body}"``.
    """
    ts = str(int(timestamp))
    digest = hmac.new(_secret_key(secret), f"{msg_id}.{ts}.".encode() + body,
                      hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


def new_delivery_id() -> str:
    """A fresh ``webhook-id``: ``msg_<uuid hex>``."""
    return f"msg_{uuid.uuid4().hex}"


def stable_delivery_id(external_id: str, event_type: str, secret: str) -> str:
    """The same ``webhook-id`` for the same run and event, from any process holding
    ``secret`` (the job's ``whsec_`` secret); unguessable without it.

    ``msg_`` and 32 hex digits of HMAC-SHA256, keyed by a key derived from the secret
    (so the id is never an HMAC the signatures also compute), of the external id and the
    event type.
    """
    key = hmac.new(_secret_key(secret), b"tunix-rt delivery ids", hashlib.sha256).digest()
    message = json.dumps([external_id, event_type]).encode()
    return f"msg_{hmac.new(key, message, hashlib.sha256).hexdigest()[:32]}"


def _endpoint(url: str) -> str:
    base = url.strip().rstrip("/")
    return base if base.endswith(WEBHOOK_PATH) else base + WEBHOOK_PATH


def _json_body(response: Any) -> dict[str, Any] | None:
    try:
        parsed = response.json()
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _describe(status: int, answer: dict[str, Any] | None, text: str) -> str:
    detail = (answer or {}).get("error") or (answer or {}).get("detail") or text[:200]
    return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"


def notify(event_type: str, *, external_id: str, name: str | None = None,
           dataset: str | None = None, model: str | None = None,
           predictions_uri: str | None = None, config: Mapping[str, Any] | None = None,
           metrics: Mapping[str, Any] | None = None, error: str | None = None,
           progress: list[Mapping[str, Any]] | None = None, url: str | None = None, secret: str | None = None, retries: int = 5,
           backoff: float = 0.5, timeout: float = 10.0, raise_on_error: bool = False,
           delivery_id: str | None = None) -> NotifyResult:
    """Send one signed training event to ``{url}/webhooks/training``.

    ``retries`` is the most attempts in all (at least 1); the wait before attempt n+1 is
    uniform in [0, backoff * 2**(n-1)] (capped at 60 s), or the receiver's Retry-After.
    ``progress`` (``run.progress``) is a list of ``{"step": int, "metrics": {name:
    number}}`` points, stored as the run's time series (at most 1,000 a delivery).
    ``delivery_id`` (default: a fresh ``msg_<uuid hex>``) is the ``webhook-id`` of every
    attempt; passing the same one again later makes the receiver answer 200 and do nothing.
    Missing or invalid ``url``/``secret`` configuration is a failed delivery with
    ``attempts == 0``, like any other failure (a warning, or NotifyError when asked).
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type must be one of {', '.join(EVENT_TYPES)}; "
                         f"got {event_type!r}")
    if not isinstance(external_id, str) or not external_id.strip():
        raise ValueError("external_id must be a non-empty string")
    if retries < 1:
        raise ValueError("retries must be at least 1 (it counts attempts)")
    delivery_id = delivery_id or new_delivery_id()
    data = {"external_id": external_id, "name": name, "dataset": dataset, "model": model,
            "predictions_uri": predictions_uri, "config": config, "metrics": metrics,
            "error": error, "progress": progress or None}
    payload = {"type": event_type,
               "data": {k: json_safe(v) for k, v in data.items() if v is not None}}
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()

    def finish(result: NotifyResult) -> NotifyResult:
        if result.ok:
            log.debug("tunix-rt %s for %s delivered (%s, HTTP %s, %d attempt(s))", event_type,
                      external_id, delivery_id, result.status, result.attempts)
            return result
        if raise_on_error:
            raise NotifyError(result)
        log.warning("tunix-rt %s for %s not delivered (%s) after %d attempt(s): %s",
                    event_type, external_id, delivery_id, result.attempts, result.error)
        return result

    url = url or os.environ.get(URL_ENV, "")
    secret = secret or (os.environ.get(SECRET_ENV, "").split() or [""])[0]
    problem = None
    if not url.strip():
        problem = f"no receiver URL: pass url= or set {URL_ENV}"
    elif not secret.strip():
        problem = f"no webhook secret: pass secret= or set {SECRET_ENV}"
    else:
        try:
            _secret_key(secret)
        except ValueError as exc:
            problem = str(exc)
    if problem:
        return finish(NotifyResult(False, None, 0, delivery_id, problem))

    import httpx  # lazily: importing this module stays cheap

    endpoint = _endpoint(url)
    status: int | None = None
    answer: dict[str, Any] | None = None
    last_error = "not attempted"
    attempts = 0
    with httpx.Client(timeout=timeout, headers={"user-agent": _USER_AGENT}) as client:
        while attempts < retries:
            attempts += 1
            headers = sign_delivery(secret, delivery_id, int(time.time()), body)
            headers["content-type"] = "application/json"
            retry_after: str | None = None  # honoured on 429 and 503 only
            try:
                response = client.post(endpoint, content=body, headers=headers)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                return finish(NotifyResult(False, None, attempts, delivery_id,
                                           f"bad receiver URL {endpoint!r}: {exc}"))
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                status, answer = None, None
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status, answer = response.status_code, _json_body(response)
                if 200 <= status < 300:
                    return finish(NotifyResult(True, status, attempts, delivery_id, None,
                                               answer))
                last_error = _describe(status, answer, response.text)
                if not (status >= 500 or status in _RETRY_STATUSES):
                    return finish(NotifyResult(False, status, attempts, delivery_id,
                                               last_error, answer))
                if status in _RETRY_AFTER_STATUSES:
                    retry_after = response.headers.get("retry-after")
            if attempts < retries:
                delay = retry_delay(attempts, base=backoff, cap=MAX_DELAY_S,
                                    retry_after=retry_after)
                log.info("tunix-rt %s for %s: attempt %d failed (%s); retrying in %.2f s",
                         event_type, external_id, attempts, last_error, delay)
                time.sleep(delay)
    return finish(NotifyResult(False, status, attempts, delivery_id, last_error, answer))


class TunixRtHook:
    """Training hooks that report a run to tunix-rt: started, then completed or failed.

    ``predictions_uri`` is a string, or a callable ``train_ctx -> str`` evaluated when
    training ends (after the trainer has written the predictions). ``metrics_fn(train_ctx)``
    returns the metrics sent with ``run.completed``. When either callable raises, the hook
    sends ``run.failed`` naming the error, then re-raises it. Every notification's
    :class:`NotifyResult` is appended to ``results``; delivery problems never raise unless
    ``raise_on_error=True``.
    """

    def __init__(self, external_id: str, *, name: str | None = None,
                 dataset: str | None = None, model: str | None = None,
                 predictions_uri: str | Callable[[Any], str] | None = None,
                 config: Mapping[str, Any] | None = None,
                 metrics_fn: Callable[[Any], Mapping[str, Any]] | None = None,
                 url: str | None = None, secret: str | None = None, retries: int = 5,
                 backoff: float = 0.5, timeout: float = 10.0,
                 raise_on_error: bool = False) -> None:
        if not isinstance(external_id, str) or not external_id.strip():
            raise ValueError("external_id must be a non-empty string")
        self.external_id = external_id
        self.name = name
        self.dataset = dataset
        self.model = model
        self.predictions_uri = predictions_uri
        self.config = dict(config) if config else None
        self.metrics_fn = metrics_fn
        self.results: list[NotifyResult] = []
        self._options = {"url": url, "secret": secret, "retries": retries,
                         "backoff": backoff, "timeout": timeout,
                         "raise_on_error": raise_on_error}

    def delivery_id(self, event_key: str) -> str | None:
        """The stable id of this run's ``event_key`` delivery (None without a usable
        secret: notify then reports that, with a fresh id)."""
        secret = self._options["secret"] or (os.environ.get(SECRET_ENV, "").split() or [""])[0]
        try:
            return stable_delivery_id(self.external_id, event_key, secret)
        except ValueError:
            return None

    def _send(self, event_type: str, *, event_key: str | None = None,
              **fields: Any) -> NotifyResult:
        """One delivery; ``event_key`` (default: the event type) keys its stable id."""
        delivery_id = self.delivery_id(event_key or event_type)
        result = notify(event_type, external_id=self.external_id, name=self.name,
                        dataset=self.dataset, model=self.model, config=self.config,
                        delivery_id=delivery_id, **fields, **self._options)
        self.results.append(result)
        return result

    def on_train_start(self, train_ctx: Any = None, *args: Any, **kwargs: Any) -> None:
        self._send("run.started")

    def on_train_end(self, train_ctx: Any = None, *args: Any, **kwargs: Any) -> None:
        try:
            uri = (self.predictions_uri(train_ctx) if callable(self.predictions_uri)
                   else self.predictions_uri)
            metrics = self.metrics_fn(train_ctx) if self.metrics_fn is not None else None
        except Exception as exc:
            self.report_failure(f"tunix-rt hook could not gather the results: {exc!r}")
            raise
        self._send("run.completed", predictions_uri=uri, metrics=metrics)

    def report_failure(self, error: str) -> NotifyResult:
        """Send ``run.failed`` with ``error`` (kept to its last 4,000 characters)."""
        return self._send("run.failed", error=str(error)[-4000:])

    # A context manager around training: an exception inside becomes run.failed.
    def __enter__(self) -> TunixRtHook:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit):
            self.report_failure("".join(traceback.format_exception(exc_type, exc, tb)))

    # Every other hook a trainer may call (on_train_step_end, on_eval_start, ...) does nothing.
    def _noop(self, *args: Any, **kwargs: Any) -> None:
        return None

    on_train_step_start = on_train_step_end = on_train_micro_step_end = _noop
    on_eval_start = on_eval_end = on_eval_step_start = on_eval_step_end = _noop
    on_eval_micro_step_end = _noop

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("on_"):
            return self._noop
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")
