"""Schemathesis against tunix-rt's served schema: what a client could really send.

A schema cannot say which cursors or ids exist. A positive ("schema-valid") case must
be accepted, so its ``cursor`` is the ``next_cursor`` of the same request without one
(the previous page, as a client would have it), or no cursor when there is no next
page; and, one case in two, a path id (``run_id``, ``name``, ``study_id``) or a query
name (``dataset``, ``judge``, ``baseline``) is a real one, so the fuzzing reaches past
the 404. Negative cases are left as drawn. Cursors look like ours (``format: cursor``).

tests/reliability/test_fuzz.py calls :func:`realistic` on every case. For the command
line, this module registers it as a hook:

    SCHEMATHESIS_HOOKS=tests.reliability.schemathesis_hooks \\
        schemathesis run http://127.0.0.1:8080/openapi.json --checks all
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

import requests
import schemathesis
from hypothesis import strategies as st

from tunix_rt.service.api_models import CURSOR_FORMAT

CURSORS = st.from_regex(r"\A[A-Za-z0-9_-]{1,60}\Z")
_known: dict[str, dict[str, list[str]]] = {}


def register_formats() -> None:
    schemathesis.openapi.format(CURSOR_FORMAT, CURSORS)


def known(base_url: str, session: requests.Session | None = None) -> dict[str, list[str]]:
    """The ids and names the live service holds (read once per service)."""
    base_url = base_url.rstrip("/")
    if base_url in _known:
        return _known[base_url]
    http = session or requests.Session()

    def get(path: str, **params: Any) -> Any:
        response = http.get(f"{base_url}{path}", params=params, timeout=60)
        return response.json() if response.status_code == 200 else None

    runs = (get("/api/runs", limit=500) or {}).get("runs", [])
    ids = [r["id"] for r in runs] + [r["external_id"] for r in runs if r["external_id"]]
    judges = {"exact_match"}
    for run in runs:
        gate = get(f"/api/runs/{run['id']}/gate")
        if gate:
            judges.add(gate["judge"])
    found = {
        "run_id": ids, "baseline": ids,
        "name": [d["name"] for d in (get("/api/datasets") or {}).get("datasets", [])],
        "study_id": [s["id"] for s in (get("/api/studies", limit=100) or {})
                     .get("studies", [])],
        "judge": sorted(judges),
    }
    found["dataset"] = found["name"]
    _known[base_url] = {k: v for k, v in found.items() if v}
    return _known[base_url]


def _pick(drawn: Any, choices: list[str]) -> str | None:
    """Deterministically, for one drawn value in two, a real one instead."""
    digest = zlib.crc32(repr(drawn).encode())
    return choices[(digest >> 1) % len(choices)] if digest % 2 == 0 else None


def realistic(case: Any, session: requests.Session | None = None,
              base_url: str | None = None) -> Any:
    """``case`` as a client could send it, when it is a positive one (see the module)."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return case
    base_url = base_url or case.operation.base_url
    names = known(base_url, session)
    for name, value in list((case.path_parameters or {}).items()):
        if names.get(name) and (real := _pick(value, names[name])) is not None:
            case.path_parameters[name] = real
    for name in ("dataset", "judge", "baseline"):
        if case.query and name in case.query and names.get(name):
            real = _pick(case.query[name], names[name])
            if real is not None:
                case.query[name] = real
    if case.query and "cursor" in case.query:
        query = {k: v for k, v in case.query.items() if k != "cursor"}
        first = case.operation.Case(path_parameters=case.path_parameters, query=query,
                                    headers=case.headers)
        response = first.call(base_url=base_url, session=session, timeout=60)
        cursor = None
        if response.status_code == 200 and "json" in response.headers.get("content-type", ""):
            cursor = response.json().get("next_cursor")
        elif response.status_code == 200:  # a page: the cursor of a link it shows
            found = re.search(r"[?&;]cursor=([A-Za-z0-9_-]+)", response.text)
            cursor = found.group(1) if found else None
        if cursor:
            case.query["cursor"] = cursor
        else:
            del case.query["cursor"]
    return case


def map_case(context: Any, case: Any) -> Any:  # noqa: ARG001 - the hook's signature
    return realistic(case)


register_formats()
if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # loaded by the command line only
    schemathesis.hook(map_case)
