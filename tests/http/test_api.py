"""The read API over real HTTP, on SQLite and PostgreSQL (the pages: tests/http/test_pages.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
from sqlalchemy import Engine

from tests.db.support import JUDGE, evaluate, evaluated_run, set_created_at
from tests.factories import correctness, make_run, write_predictions
from tests.http.conftest import Service
from tunix_rt.store.cursor import encode_cursor
from tunix_rt.store.db import session_scope
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.store import runs as runs_store
from tunix_rt.store.models import RunOrigin, RunStatus
from tunix_rt.store.runs import register_run
from tunix_rt.quality.stats import GatePolicy

RUN_FIELDS = {"id", "external_id", "name", "dataset", "model", "status", "dry_run", "origin",
              "created_at"}
ENTRY_FIELDS = {"rank", "run_id", "run_name", "score", "ci_low", "ci_high", "n_items"}


def _hits(n: int, right: int) -> list[bool]:
    return [i < right for i in range(n)]


def _rebuild(engine: Engine, dataset: str = "arith", judge: str = JUDGE) -> int:
    with session_scope(engine) as session:
        return rebuild_leaderboard(session, dataset, judge)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def _three_evaluated(engine: Engine, tmp_path: Path) -> dict[str, str]:
    """Three runs of ``arith`` scored 0.9, 0.6 and 0.3 on 10 items, on a rebuilt board."""
    ids = {name: evaluated_run(engine, tmp_path, name, _hits(10, right))
           for name, right in (("mid", 6), ("best", 9), ("worst", 3))}
    assert _rebuild(engine) == 3
    return ids


# --- health ---------------------------------------------------------------------------


def test_healthz_reports_the_database(service: Service) -> None:
    response = service.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


# --- runs -----------------------------------------------------------------------------


def test_runs_pages_through_every_run_once_newest_first(service: Service, engine: Engine,
                                                         tmp_path: Path) -> None:
    ids = [make_run(engine, tmp_path, f"run{i}", _hits(3, 2)) for i in range(7)]
    # Ties on created_at must be broken by id, across page boundaries too.
    same = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    for run_id in ids[:4]:
        set_created_at(engine, run_id, same)

    seen, pages, cursor = [], 0, None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = service.get("/api/runs", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"runs", "next_cursor"}
        assert len(body["runs"]) <= 2
        for run in body["runs"]:
            assert RUN_FIELDS <= set(run)
        seen += body["runs"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"

    assert pages == 4
    assert sorted(r["id"] for r in seen) == sorted(ids)
    assert len({r["id"] for r in seen}) == len(ids)
    keys = [(r["created_at"], r["id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)
    # The three runs not moved back are newest, so they come first.
    assert {r["id"] for r in seen[:3]} == set(ids[4:])

    whole = service.get("/api/runs").json()
    assert whole["next_cursor"] is None
    assert [r["id"] for r in whole["runs"]] == [r["id"] for r in seen]


def test_runs_filter_by_dataset_and_status(service: Service, engine: Engine,
                                           tmp_path: Path) -> None:
    arith = make_run(engine, tmp_path, "a", _hits(3, 1))
    gsm = make_run(engine, tmp_path, "g", _hits(3, 1), dataset="gsm8k")
    pending = make_run(engine, tmp_path, "p", _hits(3, 1), dataset="gsm8k",
                       status=RunStatus.pending)

    def listed(**params: str) -> list[str]:
        response = service.get("/api/runs", **params)
        assert response.status_code == 200, response.text
        return sorted(r["id"] for r in response.json()["runs"])

    assert listed(dataset="arith") == [arith]
    assert listed(dataset="gsm8k") == sorted([gsm, pending])
    assert listed(status="pending") == [pending]
    assert listed(dataset="gsm8k", status="completed") == [gsm]
    assert listed(dataset="nope") == []
    run = service.get("/api/runs", status="pending").json()["runs"][0]
    assert (run["name"], run["dataset"], run["status"], run["dry_run"]) == \
        ("p", "gsm8k", "pending", False)


def test_runs_refuse_bad_status_cursor_and_limit(service: Service, engine: Engine,
                                                 tmp_path: Path) -> None:
    make_run(engine, tmp_path, "a", _hits(3, 1))

    message = _error(service.get("/api/runs", status="finished"), 422)
    assert "finished" in message and "completed" in message

    for cursor in ("garbage!", encode_cursor("x"), encode_cursor("2024-01-01T00:00:00", "id"),
                   encode_cursor("not a date", "id"), encode_cursor(1, 2)):
        response = service.get("/api/runs", cursor=cursor)
        message = _error(response, 400)
        assert "cursor" in message and response.json()["parameter"] == "cursor"

    for limit in (0, -1, 501, "many"):
        assert service.get("/api/runs", limit=limit).status_code == 422
    assert service.get("/api/runs", limit=500).status_code == 200


def _runs_for_sorting(engine: Engine, tmp_path: Path) -> list[dict[str, object]]:
    """Nine runs with ties on every sort field: three names, three statuses, two origins,
    two models, and four sharing one created_at."""
    made = []
    for i, (name, status, origin, model) in enumerate([
            ("bravo", RunStatus.completed, RunOrigin.cli, "m1"),
            ("alpha", RunStatus.failed, RunOrigin.webhook, "m2"),
            ("bravo", RunStatus.pending, RunOrigin.cli, "m1"),
            ("charlie", RunStatus.completed, RunOrigin.webhook, "m1"),
            ("bravo", RunStatus.failed, RunOrigin.cli, "m2"),
            ("alpha", RunStatus.completed, RunOrigin.cli, "m1"),
            ("charlie", RunStatus.pending, RunOrigin.cli, "m2"),
            ("bravo", RunStatus.completed, RunOrigin.webhook, "m1"),
            ("alpha", RunStatus.pending, RunOrigin.cli, "m1")]):
        with session_scope(engine) as session:
            run = register_run(session, name=name, dataset="arith", model=model,
                               predictions_uri=f"file:///nowhere/{i}.jsonl", status=status,
                               origin=origin)
            made.append({"id": run.id, "name": name, "status": status.value,
                         "origin": origin.value, "model": model})
    same = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
    for i, run in enumerate(made):
        when = same if i % 2 else datetime(2025, 3, 2, 8, i, tzinfo=timezone.utc)
        set_created_at(engine, str(run["id"]), when)
        run["created_at"] = when
    return made


def _walk(service: Service, limit: int, **params: str) -> list[dict]:
    seen, cursor = [], None
    for _ in range(50):
        response = service.get("/api/runs", limit=limit, **params,
                               **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        seen += body["runs"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("pagination does not end")


def test_runs_sort_by_every_allowed_field_pages_each_run_once(service: Service, engine: Engine,
                                                              tmp_path: Path) -> None:
    made = _runs_for_sorting(engine, tmp_path)
    for sort in runs_store.SORTS:
        field, descending = sort.lstrip("-"), sort.startswith("-")
        expected = sorted(made, key=lambda r: (r[field], r["id"]), reverse=descending)
        # Pages of 2 put a boundary inside every tie (tests/db/test_runs.py tries more).
        seen = _walk(service, 2, sort=sort)
        assert [r["id"] for r in seen] == [r["id"] for r in expected], sort
    # The default is newest first.
    assert service.get("/api/runs").json()["runs"] == \
        service.get("/api/runs", sort="-created_at").json()["runs"]


def test_runs_filter_by_origin_and_model_with_any_sort(service: Service, engine: Engine,
                                                       tmp_path: Path) -> None:
    made = _runs_for_sorting(engine, tmp_path)
    wanted = sorted((r for r in made if r["origin"] == "cli" and r["model"] == "m1"),
                    key=lambda r: (r["name"], r["id"]))
    seen = _walk(service, 2, origin="cli", model="m1", sort="name")
    assert [r["id"] for r in seen] == [r["id"] for r in wanted] and len(wanted) == 4
    assert {(r["origin"], r["model"]) for r in seen} == {("cli", "m1")}
    assert _walk(service, 5, origin="tuning") == []
    webhook_failed = [r["id"] for r in made if r["origin"] == "webhook" and
                      r["status"] == "failed"]
    assert [r["id"] for r in _walk(service, 5, origin="webhook", status="failed")] == \
        webhook_failed


def test_runs_refuse_a_cursor_of_another_sort(service: Service, engine: Engine,
                                              tmp_path: Path) -> None:
    _runs_for_sorting(engine, tmp_path)
    by_name = service.get("/api/runs", limit=2, sort="name").json()["next_cursor"]
    newest = service.get("/api/runs", limit=2).json()["next_cursor"]
    for cursor, sort in ((by_name, "-name"), (by_name, "-created_at"), (newest, "name"),
                         (newest, "created_at"), (by_name, "status")):
        response = service.get("/api/runs", sort=sort, cursor=cursor)
        message = _error(response, 400)
        assert response.json()["parameter"] == "cursor"
        assert f"this request has sort={sort}" in message, message
    # The same cursor with its own sort still pages, and with other filters too.
    assert service.get("/api/runs", sort="name", cursor=by_name).status_code == 200
    assert service.get("/api/runs", sort="name", cursor=by_name, model="m2").status_code == 200


def test_runs_refuse_sorts_and_parameters_off_the_allow_list(service: Service) -> None:
    for sort in ("dataset", "-id", "created_at,name", "", "NAME", "config"):
        response = service.get("/api/runs", sort=sort)
        message = _error(response, 422)
        assert response.json()["parameter"] == "sort"
        for allowed in runs_store.SORTS:
            assert f"'{allowed}'" in message, message
    for name, value in (("owner", "x"), ("sort_by", "name"), ("order", "desc"),
                        ("external_id", "job-1")):
        response = service.get("/api/runs", **{name: value})
        message = _error(response, 400)
        assert response.json()["parameter"] == name
        assert "dataset, limit, model, origin, sort, status" in message, message
    # An empty enum value is refused by name, as the schema says (no "" in its enum).
    for name in ("status", "origin"):
        response = service.get("/api/runs", **{name: ""})
        assert name in _error(response, 422) and response.json()["parameter"] == name
    assert "'tuning'" in _error(service.get("/api/runs", origin="ray"), 422)


def test_run_by_id_and_by_external_id(service: Service, engine: Engine, tmp_path: Path) -> None:
    uri = write_predictions(tmp_path / "ext.jsonl", _hits(3, 3))
    with session_scope(engine) as session:
        run_id = register_run(session, name="ext", dataset="arith", model="tiny",
                              predictions_uri=uri, external_id="job-42",
                              metrics={"loss": 0.25}).id

    by_id = service.get(f"/api/runs/{run_id}")
    assert by_id.status_code == 200, by_id.text
    run = by_id.json()
    assert RUN_FIELDS <= set(run)
    assert (run["id"], run["external_id"], run["name"], run["model"], run["status"]) == \
        (run_id, "job-42", "ext", "tiny", "completed")
    assert run["dry_run"] is False and run["origin"] == "cli"
    assert run["metrics"] == {"loss": 0.25}
    assert datetime.fromisoformat(run["created_at"]).tzinfo is not None

    by_external = service.get("/api/runs/job-42")
    assert by_external.status_code == 200
    assert by_external.json() == run


def test_an_unknown_run_is_404_naming_it(service: Service) -> None:
    message = _error(service.get("/api/runs/no-such-run"), 404)
    assert "no-such-run" in message
    message = _error(service.get("/api/runs/no-such-run/gate"), 404)
    assert "no-such-run" in message


# --- leaderboard ----------------------------------------------------------------------


def test_leaderboard_ranks_runs_by_score(service: Service, engine: Engine,
                                         tmp_path: Path) -> None:
    ids = _three_evaluated(engine, tmp_path)

    response = service.get("/api/leaderboard", dataset="arith")
    assert response.status_code == 200, response.text
    board = response.json()
    assert (board["dataset"], board["judge"], board["next_cursor"]) == ("arith", JUDGE, None)
    entries = board["entries"]
    for entry in entries:
        assert ENTRY_FIELDS <= set(entry)
        assert entry["ci_low"] <= entry["score"] <= entry["ci_high"]
        assert entry["n_items"] == 10
    assert [e["rank"] for e in entries] == [1, 2, 3]
    assert [e["run_name"] for e in entries] == ["best", "mid", "worst"]
    assert [e["run_id"] for e in entries] == [ids["best"], ids["mid"], ids["worst"]]
    assert [e["score"] for e in entries] == [0.9, 0.6, 0.3]

    # Naming the judge gives the same board.
    assert service.get("/api/leaderboard", dataset="arith", judge=JUDGE).json() == board


def test_leaderboard_pages_by_cursor(service: Service, engine: Engine, tmp_path: Path) -> None:
    _three_evaluated(engine, tmp_path)

    ranks, names, cursor = [], [], None
    for _ in range(5):
        params = {"dataset": "arith", "limit": 1, **({"cursor": cursor} if cursor else {})}
        response = service.get("/api/leaderboard", **params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["entries"]) == 1
        ranks.append(page["entries"][0]["rank"])
        names.append(page["entries"][0]["run_name"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ranks == [1, 2, 3] and names == ["best", "mid", "worst"]

    first_two = service.get("/api/leaderboard", dataset="arith", limit=2).json()
    assert [e["rank"] for e in first_two["entries"]] == [1, 2]
    rest = service.get("/api/leaderboard", dataset="arith", cursor=first_two["next_cursor"])
    assert [e["rank"] for e in rest.json()["entries"]] == [3]


def test_leaderboard_refuses_bad_input(service: Service, engine: Engine,
                                       tmp_path: Path) -> None:
    _three_evaluated(engine, tmp_path)

    message = _error(service.get("/api/leaderboard", dataset="unknown-set"), 404)
    assert "unknown-set" in message
    for cursor in (encode_cursor("x"), "%%%", encode_cursor(-1), encode_cursor(10**30)):
        response = service.get("/api/leaderboard", dataset="arith", cursor=cursor)
        assert "cursor" in _error(response, 400) and response.json()["parameter"] == "cursor"
    for limit in (0, 501):
        assert service.get("/api/leaderboard", dataset="arith", limit=limit).status_code == 422
    response = service.get("/api/leaderboard")  # dataset is required: named
    assert "dataset" in _error(response, 422) and response.json()["parameter"] == "dataset"
    # The board has one order: a sort (or any parameter it does not take) is refused.
    response = service.get("/api/leaderboard", dataset="arith", sort="-score")
    assert "cursor, dataset, judge, limit" in _error(response, 400)
    assert response.json()["parameter"] == "sort"


def test_leaderboard_with_several_judges_asks_which(service: Service, engine: Engine,
                                                    tmp_path: Path) -> None:
    run_id = evaluated_run(engine, tmp_path, "twice", _hits(10, 5))
    evaluate(engine, run_id, "mock")
    _rebuild(engine)
    _rebuild(engine, judge="mock")

    message = _error(service.get("/api/leaderboard", dataset="arith"), 422)
    assert JUDGE in message and "mock" in message
    chosen = service.get("/api/leaderboard", dataset="arith", judge="mock")
    assert chosen.status_code == 200
    assert chosen.json()["judge"] == "mock"
    assert [e["run_id"] for e in chosen.json()["entries"]] == [run_id]


# --- gate -----------------------------------------------------------------------------


def test_gate_is_404_until_the_run_is_gated(service: Service, engine: Engine,
                                            tmp_path: Path) -> None:
    base = correctness(60, 0.5, seed=3)
    better = [True] * 60
    baseline = evaluated_run(engine, tmp_path, "baseline", base)
    candidate = evaluated_run(engine, tmp_path, "candidate", better)
    with session_scope(engine) as session:
        set_baseline(session, baseline, JUDGE)

    message = _error(service.get(f"/api/runs/{candidate}/gate"), 404)
    assert candidate in message

    policy = GatePolicy(min_items=30)
    with session_scope(engine) as session:
        report = gate_run(session, candidate, JUDGE, policy).to_dict()

    response = service.get(f"/api/runs/{candidate}/gate")
    assert response.status_code == 200, response.text
    gate = response.json()
    assert gate["decision"] == "pass"
    assert gate["baseline_run_id"] == baseline
    assert gate["n_paired"] == 60
    assert gate["delta"] > 0 and gate["ci_low"] <= gate["delta"] <= gate["ci_high"]
    assert gate["run_id"] == candidate and gate["judge"] == JUDGE
    assert gate == report
    # With the judge named, the same result; another judge has none.
    assert service.get(f"/api/runs/{candidate}/gate", judge=JUDGE).json() == gate
    assert "mock" in _error(service.get(f"/api/runs/{candidate}/gate", judge="mock"), 404)


# --- datasets -------------------------------------------------------------------------


def test_datasets_are_listed_and_shown_with_their_versions(service: Service, engine: Engine,
                                                           tmp_path: Path) -> None:
    assert service.get("/api/datasets").json() == {"datasets": []}
    _three_evaluated(engine, tmp_path)  # the first run registers "arith" implicitly
    listed = service.get("/api/datasets").json()["datasets"]
    assert [(d["name"], d["version"], d["n_items"], d["source"], d["versions"])
            for d in listed] == [("arith", 1, 10, "implicit", 1)]
    shown = service.get("/api/datasets/arith").json()
    assert shown["content_hash"] == listed[0]["content_hash"] and len(shown["content_hash"]) == 64
    assert shown["source_run_id"] is not None
    assert service.get("/api/datasets/arith", version=1).json() == shown
    assert "it has v1" in _error(service.get("/api/datasets/arith", version=2), 404)
    assert "no dataset named 'gsm8k'" in _error(service.get("/api/datasets/gsm8k"), 404)
    assert service.get("/api/datasets/arith", version=0).status_code == 422


def test_board_entries_carry_coverage(service: Service, engine: Engine, tmp_path: Path) -> None:
    evaluated_run(engine, tmp_path, "full", _hits(10, 6))
    short = make_run(engine, tmp_path, "short", [], predictions=write_predictions(
        tmp_path / "short.jsonl", [True] * 4))
    evaluate(engine, short)
    _rebuild(engine)
    entries = service.get("/api/leaderboard", dataset="arith").json()["entries"]
    assert [(e["run_name"], e["score"], e["n_items"], e["n_missing"], e["coverage"], e["flag"])
            for e in entries] == [("full", 0.6, 10, 0, 1.0, None),
                                  ("short", 0.4, 10, 6, 0.4, None)]
