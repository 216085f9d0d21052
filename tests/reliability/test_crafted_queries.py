"""Crafted queries: cursors that decode to out-of-range values, and a NUL in a parameter.

Each used to be a 500 (a year 99999 or a 10**30 integer reached datetime or the
database; PostgreSQL refuses a NUL in a text literal). Each is a 400 naming the
parameter: ``{"error": ..., "parameter": ...}``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.db.support import JUDGE, evaluated_run
from tests.http.conftest import Service, service, webhook_env  # noqa: F401
from tunix_rt.errors import InvalidInputError
from tunix_rt.quality.leaderboard import leaderboard_page, rebuild_leaderboard
from tunix_rt.store.cursor import ID, RANK, TIMESTAMP, decode_cursor, encode_cursor
from tunix_rt.store.db import session_scope
from tunix_rt.store.runs import list_runs

pytestmark = pytest.mark.reliability

STAMP = "2026-11-24T12:00:00+00:00"
# Cursors that decode but name something no page of ours could have produced.
RUN_CURSORS = {
    "year 99999": encode_cursor("99999-01-01T00:00:00+00:00", "id"),
    "year 0": encode_cursor("0000-01-01T00:00:00+00:00", "id"),
    "huge offset": encode_cursor("2026-11-24T12:00:00+99:00", "id"),
    "integer timestamp": encode_cursor(10**30, "id"),
    "float timestamp": encode_cursor(1e308, "id"),
    "huge id": encode_cursor(STAMP, 10**30),
    "NUL in the id": encode_cursor(STAMP, "a\x00b"),
    "NUL in the timestamp": encode_cursor(STAMP + "\x00", "id"),
    "long id": encode_cursor(STAMP, "x" * 300),
    "overlong": encode_cursor(STAMP, "x" * 5000),
    "nested": encode_cursor([STAMP], {"id": 1}),
    "NaN": "WyJOYU4iLE5hTl0",  # ["NaN",NaN]
}
BOARD_CURSORS = {
    "10**30": encode_cursor(10**30),
    "-10**30": encode_cursor(-10**30),
    "2**63": encode_cursor(2**63),
    "negative rank": encode_cursor(-1),
    "rank 0": encode_cursor(0),
    "float": encode_cursor(1.0),
    "Infinity": "WyJJbmZpbml0eSJd",  # '["Infinity"]' is a string; also try the literal:
    "Infinity literal": "W0luZmluaXR5XQ",  # [Infinity]
    "NaN literal": "W05hTl0",  # [NaN]
    "string": encode_cursor("3"),
}


def test_the_crafted_cursors_decode_as_intended() -> None:
    """The base64 literals above are what their names say."""
    import base64
    import json

    def raw(c: str) -> str:
        return base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)).decode()

    assert raw(RUN_CURSORS["NaN"]) == '["NaN",NaN]'
    assert raw(BOARD_CURSORS["Infinity literal"]) == "[Infinity]"
    assert raw(BOARD_CURSORS["NaN literal"]) == "[NaN]"
    assert json.loads(raw(BOARD_CURSORS["Infinity"])) == ["Infinity"]


def _refused(response: httpx.Response, parameter: str) -> str:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.get("parameter") == parameter, body
    assert isinstance(body.get("error"), str) and parameter in body["error"], body
    return body["error"]


@pytest.fixture
def board(engine: Engine, tmp_path: Path) -> str:
    """Two evaluated runs of ``arith`` on a rebuilt board; the id of the first."""
    first = evaluated_run(engine, tmp_path, "one", [True, False, True])
    evaluated_run(engine, tmp_path, "two", [True, True, False])
    with session_scope(engine) as session:
        assert rebuild_leaderboard(session, "arith", JUDGE) == 2
    return first


# --- the library: decode_cursor and its two callers ---------------------------------------


@pytest.mark.parametrize("name", sorted(RUN_CURSORS))
def test_list_runs_refuses_an_out_of_range_cursor(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match="invalid cursor") as info:
            list_runs(session, cursor=RUN_CURSORS[name])
    assert info.value.field == "cursor"


@pytest.mark.parametrize("name", sorted(BOARD_CURSORS))
def test_leaderboard_page_refuses_an_out_of_range_cursor(engine: Engine, board: str,
                                                         name: str) -> None:
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match="invalid cursor") as info:
            leaderboard_page(session, "arith", JUDGE, cursor=BOARD_CURSORS[name])
    assert info.value.field == "cursor"


def test_decode_cursor_refuses_what_json_alone_would_accept() -> None:
    for cursor in ("W05hTl0", "W0luZmluaXR5XQ", encode_cursor("x" * 5000), "A" * 10_000,
                   "\x00", "ñ", encode_cursor(10**30)):
        with pytest.raises(InvalidInputError, match="invalid cursor") as info:
            decode_cursor(cursor, RANK)
        assert info.value.field == "cursor"
    assert decode_cursor(encode_cursor(7), RANK) == [7]
    assert decode_cursor(encode_cursor(STAMP, "r"), TIMESTAMP, ID) == [
        datetime.fromisoformat(STAMP), "r"]


def test_good_cursors_still_page(engine: Engine, board: str) -> None:
    with session_scope(engine) as session:
        first, cursor = list_runs(session, limit=1)
        second, last = list_runs(session, limit=1, cursor=cursor)
        assert len(first) == len(second) == 1 and first[0].id != second[0].id and last is None
        page = leaderboard_page(session, "arith", JUDGE, limit=1)
        rest = leaderboard_page(session, "arith", JUDGE, limit=1, cursor=page.next_cursor)
        assert [e.rank for e in page.entries + rest.entries] == [1, 2]


# --- over HTTP: a 400 naming the parameter ------------------------------------------------


def test_out_of_range_cursors_are_400_naming_the_cursor(service: Service, board: str) -> None:
    for name, cursor in RUN_CURSORS.items():
        message = _refused(service.get("/api/runs", cursor=cursor), "cursor")
        assert "next_cursor" in message, name
    for name, cursor in BOARD_CURSORS.items():
        _refused(service.get("/api/leaderboard", dataset="arith", cursor=cursor), "cursor")
    # Garbage that is not base64 or not JSON is refused the same way.
    for cursor in ("garbage!", "%%%", encode_cursor("x")):
        _refused(service.get("/api/runs", cursor=cursor), "cursor")
        _refused(service.get("/api/leaderboard", dataset="arith", cursor=cursor), "cursor")


def _raw(service: Service, path_and_query: str) -> httpx.Response:
    """A request sent as written: httpx must not re-encode the crafted escapes."""
    return httpx.get(service.url + path_and_query, timeout=30)


NUL_QUERIES = [
    ("/api/runs/ab%00cd", "run_id"),
    ("/api/runs/%00", "run_id"),
    ("/api/runs/ab%00cd/gate", "run_id"),
    ("/api/runs/{run}/gate?judge=j%00", "judge"),
    ("/api/leaderboard?dataset=arith%00", "dataset"),
    ("/api/leaderboard?dataset=arith&judge=%00", "judge"),
    ("/api/leaderboard?dataset=arith&cursor=%00", "cursor"),
    ("/api/datasets/arith%00", "name"),
    ("/api/datasets/%00?version=1", "name"),
    ("/api/runs?dataset=%00", "dataset"),
    ("/api/runs?status=%00", "status"),
    ("/api/runs?limit=1%00", "limit"),
    ("/api/runs?cursor=%00", "cursor"),
    ("/?dataset=arith%00", "dataset"),
    ("/?judge=%00x", "judge"),
    ("/api/datasets?x%00y=1", "x\x00y"),
]


@pytest.mark.parametrize("path, parameter", NUL_QUERIES,
                         ids=[p for p, _ in NUL_QUERIES])
def test_a_nul_in_a_parameter_is_400_naming_it(service: Service, board: str, path: str,
                                               parameter: str) -> None:
    message = _refused(_raw(service, path.replace("{run}", board)), parameter)
    assert "NUL" in message


def test_a_nul_in_an_unknown_path_is_still_a_client_error(service: Service) -> None:
    response = _raw(service, "/api/nothing%00here")
    assert response.status_code == 400, response.text
    assert response.json()["parameter"] == "path"


def test_clean_parameters_still_answer(service: Service, board: str) -> None:
    assert service.get(f"/api/runs/{board}").status_code == 200
    assert service.get("/api/runs", dataset="arith").json()["runs"]
    assert service.get("/api/leaderboard", dataset="arith").status_code == 200
    assert service.get("/api/datasets/nope").status_code == 404
    # A percent-encoded byte that is not a NUL is ordinary text.
    assert _raw(service, "/api/runs/ab%01cd").status_code == 404
    assert _raw(service, "/api/runs?dataset=%C3%B1").json()["runs"] == []


def test_a_version_beyond_a_database_integer_is_422_not_500(service: Service, board: str) -> None:
    """Found by tests/reliability/test_fuzz.py: ?version=2147483648 reached PostgreSQL."""
    for version in (2**31, 10**30):
        response = service.get("/api/datasets/arith", version=version)
        assert response.status_code == 422, response.text
        assert "version" in response.text
    assert service.get("/api/datasets/arith", version=2**31 - 1).status_code == 404
    assert service.get("/api/datasets/arith", version=1).status_code == 200
