"""Parameter checks every route gets: a NUL anywhere, and a cursor we did not make.

A NUL (``%00``) in a path or query parameter cannot be stored or compared in
PostgreSQL (the driver refuses it: a 500), and no name or id of ours holds one. An
ASGI middleware refuses it before routing, so that no route (and no route added
later) can forget to: a 400 naming the parameter, as the route declares it
(``run_id``, ``dataset``), or ``path`` when no route matches. A cursor that does not
decode to a key of ours is a 400 naming ``cursor``.

The answer is JSON: ``{"error": "...", "parameter": "..."}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from tunix_rt.store.cursor import InvalidCursorError

NUL = "\x00"

# For ``responses=`` on the read routes' decorators: the errors they can answer, so the
# served schema documents them (FastAPI adds the 422 of its own validation itself).
ERROR_SCHEMA = {"type": "object", "required": ["error"],
                "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}}}


def _json(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": ERROR_SCHEMA}}}


BAD_PARAMETER: dict[int | str, dict[str, Any]] = {
    400: _json("A parameter holds a NUL (%00), or a cursor was not made here: "
               "`parameter` names it")}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **BAD_PARAMETER, 404: _json("No such run, gate result, board or dataset")}
PAGE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **BAD_PARAMETER, 404: {"description": "No board for that dataset or judge (the page "
                                          "says so)", "content": {"text/html": {}}}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    **BAD_PARAMETER, 503: {"description": "The database cannot be reached",
                           "content": {"application/json": {"schema": {"type": "object"}}}}}
# The largest integer a query parameter may hold where the database stores an INTEGER
# (a dataset's version): a larger one is FastAPI's 422, not the database's 500.
MAX_INT = 2**31 - 1


def parameter_error(parameter: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "parameter": parameter}, status_code=400)


class UnknownParameterError(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def declared_query_only(request: Request) -> None:
    """A dependency: a query parameter the route does not declare is a 400 naming it and
    the ones it takes (``?sort_by=`` or ``?owner=`` would otherwise be ignored silently,
    and a client would read an unfiltered list as a filtered one)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    declared = {p.alias for p in dependant.query_params}
    for key in request.query_params:
        if key not in declared:
            raise UnknownParameterError(key, f"unknown query parameter {key!r}: "
                                             f"{request.url.path} takes "
                                             f"{', '.join(sorted(declared))}")


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with the error body every refusal has: ``error`` says, in words,
    which parameter is wrong and what it may be; ``detail`` keeps FastAPI's list."""
    problems, first = [], None
    for problem in exc.errors():
        loc = [str(part) for part in problem.get("loc", ()) if part not in ("query", "path",
                                                                          "header", "body")]
        name = ".".join(loc) or "request"
        first = first or name
        given = problem.get("input")
        shown = f" (got {given!r})" if isinstance(given, (str, int, float)) else ""
        problems.append(f"{name}: {problem.get('msg', 'invalid')}{shown}")
    body: dict[str, Any] = {"error": "; ".join(problems) or "invalid request",
                            "detail": jsonable_encoder(exc.errors())}
    if first:
        body["parameter"] = first
    return JSONResponse(body, status_code=422)


def nul_parameter(scope: Scope, router: Router) -> str | None:
    """The name of the first parameter of this request that holds a NUL, if any."""
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                keep_blank_values=True):
        if NUL in key or NUL in value:
            return key
    if NUL not in scope.get("path", ""):
        return None
    for route in router.routes:
        match, child = route.matches(scope)
        if match is not Match.NONE:
            for name, value in child.get("path_params", {}).items():
                if NUL in str(value):
                    return name
    return "path"


class RefuseNul:
    """ASGI middleware: a request with a NUL in a path or query parameter is a 400."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = nul_parameter(scope, self.router)
            if name is not None:
                where = "path" if name == "path" else f"parameter {name}"
                response = parameter_error(
                    name, f"{where}: a NUL character (%00) is not allowed in a URL")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    """The NUL check on every request, and a 400 for a cursor that was not made here."""
    app.add_middleware(RefuseNul, router=app.router)

    @app.exception_handler(UnknownParameterError)
    async def _unknown(_request: Request, exc: UnknownParameterError) -> JSONResponse:
        return parameter_error(exc.parameter, str(exc))

    @app.exception_handler(InvalidCursorError)
    async def _bad_cursor(_request: Request, exc: InvalidCursorError) -> JSONResponse:
        return parameter_error(exc.field or "cursor", str(exc))
