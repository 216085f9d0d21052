"""Read access: with ``TUNIX_RT_API_TOKEN`` set, every request but two needs the token.

Open whatever the token: ``POST /webhooks/training`` (it has its own signatures) and
``GET /healthz`` (it says only ok or unavailable), and the login form itself.
Everything else (the read API, the page, FastAPI's /docs and /openapi.json, unknown
paths) answers 401 with ``WWW-Authenticate: Bearer`` unless the request carries

* ``Authorization: Bearer <token>`` (compared in constant time), or
* the page's session cookie: ``POST /login`` with the token in a form (no JavaScript)
  sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the token, never the
  token. A new token invalidates every cookie.

A token in the query string is not accepted: URLs end up in logs and browser history.
Unset, nothing is checked (the README's Security section says so plainly).

Guessing is throttled: a client address (an IPv6 address by its /64) whose credentials
failed ``TUNIX_RT_AUTH_MAX_FAILURES`` times within ``TUNIX_RT_AUTH_FAILURE_WINDOW_S``
(a wrong token at ``POST /login``, a wrong bearer token, a forged cookie) gets 429 with
``Retry-After`` for every credential it presents until the oldest failure leaves the
window, the right token included (else the answer would tell a guess apart). A
request without credentials tests nothing and is not counted; a success is not
counted. Behind a proxy every client shares the proxy's address.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("tunix_rt.service.auth")

COOKIE = "tunix_rt_session"
OPEN_PATHS = frozenset({"/webhooks/training", "/healthz"})
LOGIN_PATH = "/login"
MAX_FORM_BYTES = 4096
_COOKIE_CONTEXT = b"tunix-rt page session v1"
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_CLIENTS = 10_000  # addresses with recent failures kept; the least recent go

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def session_cookie_value(token: str) -> str:
    """What the page's cookie holds: an HMAC keyed by the token, not the token."""
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def _digest(secret: bytes) -> bytes:
    # compare_digest on the raw values would leak the token's length; digests are equal-sized.
    return hashlib.sha256(secret).digest()


def client_key(scope: Scope) -> str:
    """Whose failures these are: the peer address, an IPv6 one by its /64 (one host
    commonly holds a whole /64, so counting its addresses apart would count nothing)."""
    host = (scope.get("client") or ("unknown", 0))[0] or "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Failed credential checks per client in a sliding window, in bounded memory.

    Each client keeps at most ``limit`` timestamps, and at most ``max_clients`` clients
    are kept (the one whose last failure is oldest goes first). Used from the event
    loop's one thread only.
    """

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 max_clients: int = MAX_TRACKED_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may present credentials again; None: it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        now = self._clock()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < self.limit:
            return None
        return times[0] + self.window_s - now

    def failed(self, client: str) -> None:
        times = self._failures.pop(client, None) or deque(maxlen=self.limit)
        times.append(self._clock())
        self._failures[client] = times  # now the most recent
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


class ApiTokenMiddleware:
    """A pure ASGI middleware (request bodies stream through untouched)."""

    def __init__(self, app: Any, token: str, *, max_failures: int = MAX_FAILURES,
                 failure_window_s: float = FAILURE_WINDOW_S) -> None:
        self.app = app
        self._token = _digest(token.encode())
        self._cookie_value = session_cookie_value(token)
        self._cookie = _digest(self._cookie_value.encode())
        self.limiter = FailureLimiter(max_failures, failure_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if path == LOGIN_PATH:
            await self._login(scope, receive, send)
            return
        verdict = self._authorized(scope)
        if verdict is True:
            await self.app(scope, receive, send)
            return
        if verdict is not None:  # credentials were presented: throttled, or wrong
            await self._too_many(scope, send, verdict, page=False)
            return
        await self._refuse(scope, send)

    # --- checks -----------------------------------------------------------------------

    def _authorized(self, scope: Scope) -> bool | float | None:
        """True: let it through; None: no credentials, or wrong ones (counted);
        a number: the client is throttled for that many more seconds."""
        headers = _headers(scope)
        scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return self._check(scope, credentials.strip().encode(), self._token)
        if scope.get("method") in ("GET", "HEAD"):
            cookie = _cookies(headers.get("cookie", "")).get(COOKIE)
            if cookie:
                return self._check(scope, cookie.encode(), self._cookie)
        return None

    def _check(self, scope: Scope, given: bytes, expected: bytes) -> bool | float | None:
        client = client_key(scope)
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return wait
        if hmac.compare_digest(_digest(given), expected):
            return True
        self._failed(client)
        return None

    def _failed(self, client: str) -> None:
        self.limiter.failed(client)
        if self.limiter.retry_after(client) is not None:
            log.warning("%s: %d failed credential checks within %g s: throttled",
                        client, self.limiter.limit, self.limiter.window_s)

    async def _too_many(self, scope: Scope, send: Send, wait: float, *, page: bool) -> None:
        seconds = max(1, math.ceil(wait))
        text = (f"too many failed credential checks from this address: try again in "
                f"{seconds} s")
        headers = [(b"retry-after", str(seconds).encode())]
        if page:
            await _respond(send, 429, _login_page(text), "text/html; charset=utf-8", headers)
        else:
            await _respond(send, 429, f'{{"error":"{text}","retry_after":{seconds}}}'.encode(),
                           "application/json", headers)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        path = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD") and not path.startswith("/api/") \
                and "application/json" not in _headers(scope).get("accept", ""):
            await _respond(send, 401, _login_page(), "text/html; charset=utf-8",
                           [(b"www-authenticate", b'Bearer realm="tunix-rt"')])
            return
        await _respond(send, 401, b'{"error":"authentication required: '
                                  b'Authorization: Bearer <TUNIX_RT_API_TOKEN>"}',
                       "application/json",
                       [(b"www-authenticate", b'Bearer realm="tunix-rt"')])

    # --- the login form ---------------------------------------------------------------

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if method in ("GET", "HEAD"):
            await _respond(send, 200, _login_page(), "text/html; charset=utf-8")
            return
        if method != "POST":
            await _respond(send, 405, b'{"error":"method not allowed"}', "application/json",
                           [(b"allow", b"GET, POST")])
            return
        client = client_key(scope)
        wait = self.limiter.retry_after(client)
        if wait is not None:  # before reading the form: a right guess must look the same
            await self._too_many(scope, send, wait, page=True)
            return
        body = await _read_form(receive)
        given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0] \
            if body is not None else ""
        if not given or not hmac.compare_digest(_digest(given.encode()), self._token):
            log.warning("login refused from %s: wrong or missing token", client)
            self._failed(client)
            await _respond(send, 401, _login_page("wrong token"), "text/html; charset=utf-8",
                           [(b"www-authenticate", b'Bearer realm="tunix-rt"')])
            return
        attributes = "; Path=/; HttpOnly; SameSite=Strict"
        if scope.get("scheme") == "https":
            attributes += "; Secure"
        await _respond(send, 303, b"", "text/plain",
                       [(b"location", b"/"),
                        (b"set-cookie", f"{COOKIE}={self._cookie_value}{attributes}".encode()),
                        (b"cache-control", b"no-store")])


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers") or []}


def _cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            cookies.setdefault(name, value.strip().strip('"'))
    return cookies


async def _read_form(receive: Receive) -> bytes | None:
    """The request body, or None past MAX_FORM_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: str,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _login_page(problem: str | None = None) -> bytes:
    note = f"<p><strong>{html.escape(problem)}</strong></p>" if problem else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunix-rt · sign in</title>
<style>body {{ font: 15px/1.4 system-ui, sans-serif; margin: 4rem auto; max-width: 24rem }}</style>
</head><body><h1>tunix-rt</h1>{note}
<form method="post" action="/login">
<label>API token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
<p><small>The token is TUNIX_RT_API_TOKEN; the API takes it as Authorization: Bearer.</small></p>
</body></html>""".encode()
