"""Runs: registering, finding, refusing, listing a page at a time, and their JSON shape."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.db.support import count, set_created_at
from tests.factories import make_run
from tunix_rt.store.cursor import encode_cursor
from tunix_rt.store.db import session_scope
from tunix_rt.errors import InvalidInputError, NotFoundError, RunNotEvaluableError
from tunix_rt.store.models import Run, RunOrigin, RunStatus
from tunix_rt.store.runs import ensure_evaluable, get_run, list_runs, register_run, run_to_dict

CONTRACT_KEYS = {"id", "external_id", "name", "dataset", "model", "status", "dry_run", "origin",
                 "created_at"}


def _register(engine: Engine, **overrides: object) -> Run:
    fields: dict[str, object] = {"name": "r", "dataset": "arith", "model": "m",
                                 "predictions_uri": "file:///tmp/p.jsonl"}
    fields.update(overrides)
    with session_scope(engine) as session:
        return register_run(session, **fields)


# --- register_run -----------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("name", ""), ("name", None), ("dataset", "   "),
                                          ("model", "")])
def test_register_refuses_empty_text_naming_the_field(engine: Engine, field: str,
                                                      value: str | None) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field} must not be empty"):
        _register(engine, **{field: value})
    assert count(engine, Run) == 0


def test_register_refuses_overlong_name(engine: Engine) -> None:
    with pytest.raises(InvalidInputError, match="name is longer than 255"):
        _register(engine, name="x" * 256)


def test_register_strips_text_fields(engine: Engine) -> None:
    run = _register(engine, name="  lr-0.1  ", dataset=" arith ")
    assert (run.name, run.dataset) == ("lr-0.1", "arith")


@pytest.mark.parametrize("uri", [None, ""])
def test_completed_run_needs_predictions(engine: Engine, uri: str | None) -> None:
    with pytest.raises(InvalidInputError, match="predictions"):
        _register(engine, predictions_uri=uri)
    assert count(engine, Run) == 0


def test_pending_and_dry_runs_need_no_predictions(engine: Engine) -> None:
    pending = _register(engine, predictions_uri=None, status=RunStatus.pending)
    dry = _register(engine, predictions_uri=None, dry_run=True)
    assert pending.status == "pending" and pending.completed_at is None
    assert dry.status == "completed" and dry.dry_run is True
    assert count(engine, Run) == 2


@pytest.mark.parametrize("field, value", [("config", [1, 2]), ("config", "lr=0.1"),
                                          ("metrics", 3)])
def test_register_refuses_non_object_config_and_metrics(engine: Engine, field: str,
                                                        value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field} must be a JSON object"):
        _register(engine, **{field: value})
    assert count(engine, Run) == 0


def test_register_stores_config_and_metrics_round_trip(engine: Engine) -> None:
    config = {"learning_rate": 0.01, "layers": [16, 32], "nested": {"a": None, "b": True}}
    run_id = _register(engine, config=config, metrics={"loss": 0.5},
                       origin=RunOrigin.webhook).id
    with session_scope(engine) as session:
        run = get_run(session, run_id)
        assert run.config == config
        assert run.metrics == {"loss": 0.5}
        assert run.origin == "webhook"


def test_duplicate_external_id_is_refused_naming_the_existing_run(engine: Engine) -> None:
    first = _register(engine, external_id="job-17")
    with pytest.raises(InvalidInputError) as excinfo:
        _register(engine, name="again", external_id="job-17")
    assert first.id in str(excinfo.value)
    assert "job-17" in str(excinfo.value)
    assert count(engine, Run) == 1
    # Runs without an external id never collide with each other.
    _register(engine)
    _register(engine)
    assert count(engine, Run) == 3


# --- get_run / ensure_evaluable ---------------------------------------------------------

def test_get_run_by_id_and_by_external_id(engine: Engine) -> None:
    run_id = _register(engine, name="found", external_id="ext-1").id
    with session_scope(engine) as session:
        assert get_run(session, run_id).name == "found"
        assert get_run(session, "ext-1").id == run_id


def test_get_run_unknown_is_not_found(engine: Engine) -> None:
    _register(engine, external_id="ext-1")
    with session_scope(engine) as session:
        with pytest.raises(NotFoundError, match="'nope'.*tunix-rt runs list"):
            get_run(session, "nope")


@pytest.mark.parametrize("kwargs, expected", [
    ({"status": RunStatus.pending, "predictions_uri": None}, "is pending; only completed"),
    ({"status": RunStatus.running}, "is running; only completed"),
    ({"status": RunStatus.failed}, "is failed; only completed"),
    ({"dry_run": True}, "is a dry run"),
])
def test_ensure_evaluable_refuses_with_the_reason(engine: Engine, kwargs: dict,
                                                  expected: str) -> None:
    run = _register(engine, name="subject", **kwargs)
    with pytest.raises(RunNotEvaluableError) as excinfo:
        ensure_evaluable(run)
    assert expected in str(excinfo.value)
    assert run.id in str(excinfo.value) and "subject" in str(excinfo.value)


def test_ensure_evaluable_accepts_a_completed_run(engine: Engine) -> None:
    ensure_evaluable(_register(engine))


# --- list_runs --------------------------------------------------------------------------

def _walk(engine: Engine, **kwargs: object) -> tuple[list[Run], int]:
    seen: list[Run] = []
    pages = 0
    cursor = None
    while True:
        with session_scope(engine) as session:
            page, cursor = list_runs(session, cursor=cursor, **kwargs)
        pages += 1
        seen.extend(page)
        if cursor is None:
            return seen, pages
        assert pages < 100, "pagination does not terminate"


def test_keyset_pagination_returns_every_run_once_newest_first(engine: Engine,
                                                               tmp_path: Path) -> None:
    ids = [make_run(engine, tmp_path, f"run{i:02d}", [True]) for i in range(23)]
    # Ties on created_at are real (runs registered in one batch): give five runs the
    # very same timestamp, so the page boundaries must fall inside a tie.
    start = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    for i, run_id in enumerate(ids):
        when = start + timedelta(seconds=min(i, 10)) if i < 15 else start + timedelta(
            seconds=i)
        set_created_at(engine, run_id, when)

    runs, pages = _walk(engine, limit=5)
    assert pages == 5
    assert sorted(r.id for r in runs) == sorted(ids)
    assert len({r.id for r in runs}) == 23
    keys = [(r.created_at, r.id) for r in runs]
    assert keys == sorted(keys, reverse=True)
    assert all(r.created_at.tzinfo is not None for r in runs)


def test_pagination_exact_multiple_has_no_empty_last_page(engine: Engine,
                                                          tmp_path: Path) -> None:
    for i in range(10):
        make_run(engine, tmp_path, f"run{i}", [True])
    with session_scope(engine) as session:
        first, cursor = list_runs(session, limit=5)
        second, last = list_runs(session, limit=5, cursor=cursor)
    assert len(first) == len(second) == 5
    assert last is None


def test_list_runs_filters_by_dataset_and_status(engine: Engine, tmp_path: Path) -> None:
    a = {make_run(engine, tmp_path, f"a{i}", [True], dataset="a") for i in range(7)}
    b_done = {make_run(engine, tmp_path, f"b{i}", [True], dataset="b") for i in range(3)}
    b_failed = {make_run(engine, tmp_path, f"bf{i}", [True], dataset="b",
                         status=RunStatus.failed) for i in range(4)}

    runs, _ = _walk(engine, dataset="a", limit=2)
    assert {r.id for r in runs} == a and len(runs) == 7
    runs, _ = _walk(engine, dataset="b", limit=2)
    assert {r.id for r in runs} == b_done | b_failed and len(runs) == 7
    runs, _ = _walk(engine, dataset="b", status="failed", limit=3)
    assert {r.id for r in runs} == b_failed
    runs, _ = _walk(engine, status="completed", limit=50)
    assert {r.id for r in runs} == a | b_done
    runs, _ = _walk(engine, dataset="nothing")
    assert runs == []


GARBAGE_CURSORS = ["garbage!!", "bm90IGpzb24", encode_cursor("x"),
                   encode_cursor("not-a-date", "id"), encode_cursor(12, "id"),
                   encode_cursor(None, None),
                   encode_cursor("2026-11-24T12:00:00", "id"),        # naive timestamp
                   encode_cursor("2026-11-24T12:00:00+00:00", 5)]    # id not a string


def test_list_runs_rejects_a_garbage_cursor(engine: Engine) -> None:
    _register(engine)
    for cursor in GARBAGE_CURSORS:
        with session_scope(engine) as session:
            with pytest.raises(InvalidInputError, match="invalid cursor"):
                list_runs(session, cursor=cursor)
    with session_scope(engine) as session:  # and the database is still fine afterwards
        assert len(list_runs(session)[0]) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"limit": 0}, "limit must be between 1 and 500"),
    ({"limit": 501}, "limit must be between 1 and 500"),
    ({"status": "done"}, "unknown status 'done'"),
])
def test_list_runs_rejects_bad_arguments(engine: Engine, kwargs: dict, match: str) -> None:
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match=match):
            list_runs(session, **kwargs)


# --- run_to_dict ------------------------------------------------------------------------

def test_run_to_dict_has_the_contract_keys_with_aware_timestamps(engine: Engine) -> None:
    run_id = _register(engine, external_id="ext-9", config={"lr": 0.1}).id
    with session_scope(engine) as session:  # read back from the database, not the identity map
        out = run_to_dict(get_run(session, run_id))
    assert CONTRACT_KEYS <= set(out)
    assert out["id"] == run_id and out["external_id"] == "ext-9"
    assert (out["name"], out["dataset"], out["model"]) == ("r", "arith", "m")
    assert out["status"] == "completed" and out["dry_run"] is False and out["origin"] == "cli"
    json.dumps(out)  # JSON-able as is
    for key in ("created_at", "updated_at", "completed_at"):
        parsed = datetime.fromisoformat(out[key])
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0), key
    assert out["started_at"] is None
    assert abs(datetime.now(timezone.utc) - datetime.fromisoformat(out["created_at"])) < \
        timedelta(minutes=5)


# --- list_runs: sorts of the allow-list ---------------------------------------------------


def test_every_sort_pages_each_run_once_in_one_order(engine: Engine, tmp_path: Path) -> None:
    """Keyset pages of any size join into the one-page order, ties and odd names included
    (a newline, a non-Latin name: the cursor carries any name a run can hold)."""
    names = ["b", "a", "b", "line\nbreak", "b", "ä", "a", "Ω", "b", "a"]
    statuses = [RunStatus.completed, RunStatus.failed, RunStatus.pending]
    ids = []
    for i, name in enumerate(names):
        with session_scope(engine) as session:
            ids.append(register_run(session, name=name, dataset="d", model="m",
                                    predictions_uri="file:///p.jsonl",
                                    status=statuses[i % 3]).id)
    same = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i, run_id in enumerate(ids):
        set_created_at(engine, run_id, same if i % 3 else same + timedelta(minutes=i))
    for sort in ("-created_at", "created_at", "name", "-name", "status", "-status"):
        with session_scope(engine) as session:
            whole = [r.id for r in list_runs(session, sort=sort, limit=500)[0]]
        assert sorted(whole) == sorted(ids)
        field = sort.lstrip("-")
        with session_scope(engine) as session:
            keys = [(getattr(r, field), r.id) for r in list_runs(session, sort=sort,
                                                                limit=500)[0]]
        if field != "name":  # names: the database's collation decides; the rest is plain
            assert keys == sorted(keys, reverse=sort.startswith("-")), sort
        for limit in (1, 2, 3, 4):
            paged = [r.id for r in _walk(engine, sort=sort, limit=limit)[0]]
            assert paged == whole, (sort, limit)


def test_list_runs_refuses_a_sort_off_the_allow_list_and_a_foreign_cursor(
        engine: Engine, tmp_path: Path) -> None:
    for i in range(3):
        make_run(engine, tmp_path, f"r{i}", [True])
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match="cannot sort by 'config'") as info:
            list_runs(session, sort="config")
        assert info.value.field == "sort"
        with pytest.raises(InvalidInputError, match="unknown origin 'ray'"):
            list_runs(session, origin="ray")
        _, cursor = list_runs(session, sort="name", limit=1)
        with pytest.raises(InvalidInputError, match="made for sort=name, this request has "
                                                    "sort=-name") as info:
            list_runs(session, sort="-name", cursor=cursor)
        assert info.value.field == "cursor"
        # A cursor of before sorts existed (created_at, id) is refused, not misread.
        with pytest.raises(InvalidInputError, match="invalid cursor"):
            list_runs(session, cursor=encode_cursor("2026-01-01T00:00:00+00:00", "id"))
