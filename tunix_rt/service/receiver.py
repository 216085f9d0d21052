"""``POST /webhooks/training``: verify, parse, store, answer, then dispatch.

The signature is checked over the raw body, the delivery and its run change are stored
in one transaction (the outbox: :mod:`tunix_rt.service.deliveries`, in batches on
PostgreSQL: :mod:`tunix_rt.service.group_commit`), the answer is sent, and only then
is the quality loop dispatched. A crash after the commit loses nothing: the sweeper
finds the pending dispatch.

The route is served by :class:`FastLane`, a plain ASGI middleware just outside
FastAPI's router, so a delivery skips the router's scan of every route, the request
handler's dependency solving and the exception and exit-stack layers. Measured under
load, that machinery cost more CPU per request than the whole bare endpoint (HTTP
parsing and the HMAC check). The middleware sits inside every other one (the server
errors' 500, the NUL check, the read token's gate, which lets the webhook through), and
answers the errors FastAPI's handlers would (a :class:`TunixRtError` is a 404 or 422);
the FastAPI route stays for the served schema and answers the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from sqlalchemy.exc import DBAPIError

from tunix_rt.errors import InvalidInputError, NotFoundError, TunixRtError, is_transient
from tunix_rt.service import deliveries, group_commit
from tunix_rt.service.deliveries import Received
from tunix_rt.service.webhooks import (MissingHeadersError, PayloadError, RunEvent,
                                       SignatureError, Verifier, parse_event)

log = logging.getLogger("tunix_rt.service.server")

PATH = "/webhooks/training"
WEBHOOKS_OFF = ("TUNIX_RT_WEBHOOK_SECRET is not set, so the webhook receiver is off "
                "(whsec_<base64>; or TUNIX_RT_WEBHOOK_SECRETS, source=whsec_<base64> ...)")


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def tunix_error(exc: TunixRtError) -> JSONResponse:
    """The answer to a :class:`TunixRtError` (the app's handler gives the same)."""
    status = 404 if isinstance(exc, NotFoundError) else 422
    field = getattr(exc, "field", None)
    return _error(status, str(exc), **({"parameter": field} if field else {}))


Store = Callable[[str, RunEvent, "str | None"], Awaitable[Received]]


class WebhookReceiver:
    """The route's logic: ``await answer(request)`` gives the response to send.

    ``verifier`` None: the receiver is off (503 naming the variable). ``dispatcher``
    is read at each delivery (``app.state.dispatcher``): it starts the loop a completed
    run owes, after the answer; None leaves it pending for the sweeper.
    """

    def __init__(self, verifier: Verifier | None, store: Store,
                 predictions_allow: list[str], max_body_bytes: int,
                 dispatcher: Callable[[], Any], session_scope: Callable[[], Any]) -> None:
        self.verifier = verifier
        self.store = store
        self.predictions_allow = predictions_allow
        self.max_body_bytes = max_body_bytes
        self.dispatcher = dispatcher
        self.session_scope = session_scope

    async def answer(self, request: Request) -> Response:
        try:
            return await self._answer(request)
        except TunixRtError as exc:
            return tunix_error(exc)

    async def _answer(self, request: Request) -> Response:
        if self.verifier is None:  # nothing stored: the sender retries after the secret is set
            return JSONResponse({"error": WEBHOOKS_OFF}, status_code=503,
                                headers={"Retry-After": "60"})
        try:
            body = await _read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            return _error(413, f"body larger than {self.max_body_bytes} bytes")
        try:
            # Every header pair: a repeated webhook-id is refused, not half-checked.
            verified = self.verifier.verify(body, request.headers.items())
        except MissingHeadersError as exc:
            return _error(400, str(exc), header=exc.header)
        except SignatureError as exc:
            # The library's reason goes to the log; the sender gets generic text.
            log.warning("webhook signature rejected: %s", exc)
            return _error(401, "signature rejected: bad, expired or unknown signature")
        try:
            event = parse_event(body, predictions_allow=self.predictions_allow)
        except PayloadError as exc:
            return _error(422, f"invalid payload: {exc}", field=exc.field)
        delivery_id = verified.delivery_id  # the id that was verified, never another
        try:
            received = await self.store(delivery_id, event, verified.source)
        except group_commit.StoreUnavailable as exc:
            return self._unavailable(delivery_id, exc)
        except deliveries.RunConflictError as exc:
            return _error(409, str(exc), field=exc.field, run_id=exc.run_id)
        except InvalidInputError as exc:
            return _error(422, f"invalid payload: {exc}", field=exc.field)
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            return self._unavailable(delivery_id, exc)
        if received.duplicate:
            return JSONResponse({"status": "duplicate", "run_id": received.run_id},
                                status_code=200)
        background = None
        dispatcher = self.dispatcher()
        if received.dispatch_id is not None and dispatcher is not None:
            background = BackgroundTasks()
            background.add_task(deliveries.dispatch_now, self.session_scope, dispatcher,
                                received.dispatch_id, received.run_id, delivery_id)
        return JSONResponse({"status": "accepted", "run_id": received.run_id,
                             "dispatch": received.dispatch_id is not None}, status_code=202,
                            background=background)

    @staticmethod
    def _unavailable(delivery_id: str, exc: Exception) -> JSONResponse:
        log.warning("cannot store delivery %s: %s", delivery_id, exc)
        return JSONResponse({"error": "cannot store the delivery; retry later"},
                            status_code=503, headers={"Retry-After": "5"})


class FastLane:
    """ASGI middleware: ``POST /webhooks/training`` straight to the receiver; any other
    request (another method on the path included: FastAPI's 405) to the app."""

    def __init__(self, app: ASGIApp, receiver: WebhookReceiver) -> None:
        self.app = app
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and _route_path(scope) == PATH):
            request = Request(scope, receive)
            response = await self.receiver.answer(request)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router would match (without the ``root_path`` a proxy mounts it at),
    as Starlette's routing computes it."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path
