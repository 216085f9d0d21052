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
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("tunix_rt.service.auth")

COOKIE = "tunix_rt_session"
OPEN_PATHS = frozenset({"/webhooks/training", "/healthz"})
LOGIN_PATH = "/login"
MAX_FORM_BYTES = 4096
_COOKIE_CONTEXT = b"tunix-rt page session v1"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def session_cookie_value(token: str) -> str:
    """What the page's cookie holds: an HMAC keyed by the token, not the token."""
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


class ApiTokenMiddleware:
    """A pure ASGI middleware (request bodies stream through untouched)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()
        self._cookie = session_cookie_value(token).encode()

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
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, send)

    # --- checks -----------------------------------------------------------------------

    def _authorized(self, scope: Scope) -> bool:
        headers = _headers(scope)
        scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return hmac.compare_digest(credentials.strip().encode(), self._token)
        if scope.get("method") in ("GET", "HEAD"):
            cookie = _cookies(headers.get("cookie", "")).get(COOKIE)
            if cookie:
                return hmac.compare_digest(cookie.encode(), self._cookie)
        return False

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
        body = await _read_form(receive)
        given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0] \
            if body is not None else ""
        if not given or not hmac.compare_digest(given.encode(), self._token):
            client = scope.get("client") or ("?", 0)
            log.warning("login refused from %s: wrong or missing token", client[0])
            await _respond(send, 401, _login_page("wrong token"), "text/html; charset=utf-8",
                           [(b"www-authenticate", b'Bearer realm="tunix-rt"')])
            return
        attributes = "; Path=/; HttpOnly; SameSite=Strict"
        if scope.get("scheme") == "https":
            attributes += "; Secure"
        await _respond(send, 303, b"", "text/plain",
                       [(b"location", b"/"),
                        (b"set-cookie", f"{COOKIE}={self._cookie.decode()}{attributes}".encode()),
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
