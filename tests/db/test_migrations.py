"""Migrations: one head that the code expects, a schema equal to the models, a clean round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, select

from tests.db.support import JUDGE, count, evaluated_run
from tests.factories import correctness
from tests.pgserver import create_database
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.errors import DatabaseNotMigratedError
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.store.models import (Base, Dispatch, DispatchStatus, Evaluation, EvaluationChunk,
                                   JudgeCacheEntry, LeaderboardEntry,
                                   Run, RunMetric, Study, StudyStatus, Trial, TrialResult, TrialStatus,
                                   Verdict, WebhookDelivery, utcnow)
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.quality.stats import GatePolicy

TABLES = {t.name for t in Base.metadata.sorted_tables}


def test_one_head_and_it_is_the_schema_head_the_code_expects() -> None:
    engine = db.make_engine("sqlite://")
    try:
        script = ScriptDirectory.from_config(db.alembic_config(engine))
        assert script.get_heads() == [db.SCHEMA_HEAD]
        # Every revision is reachable from the head: no orphaned branch.
        revisions = list(script.walk_revisions())
        assert revisions[0].revision == db.SCHEMA_HEAD
        assert revisions[-1].down_revision is None
    finally:
        engine.dispose()


def test_migrated_database_is_at_head(engine: Engine) -> None:
    assert db.current_revision(engine) == db.SCHEMA_HEAD
    assert TABLES <= set(inspect(engine).get_table_names())


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def _populate(engine: Engine, tmp_path: Path) -> None:
    """A row in every table: the quality loop's own write path, then the rest by hand.

    Whichever table the models declare must end up with at least one row, so a table
    added later without test data here fails this test instead of going untested.
    """
    base = evaluated_run(engine, tmp_path, "base", correctness(40, 0.6, seed=1))
    cand = evaluated_run(engine, tmp_path, "cand", correctness(40, 0.7, seed=2))
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE)
        set_baseline(session, base, JUDGE)
        gate_run(session, cand, JUDGE, GatePolicy())
    with session_scope(engine) as session:
        # Rows that point at runs and studies, so that the columns and foreign keys
        # the migrations add and drop have something to carry.
        study = Study(name="sweep", dataset="arith", metric="accuracy", mode="max",
                      spec={"param_space": {"lr": {"choice": [0.1, 0.2]}}},
                      storage_path=str(tmp_path / "ray"), status=StudyStatus.completed.value,
                      best_trial_id="t0", finished_at=utcnow())
        session.add(study)
        session.flush()
        trial = Trial(study_id=study.id, trial_id="t0", config={"lr": 0.1},
                      status=TrialStatus.completed.value, iterations=2,
                      last_metrics={"accuracy": 0.7}, run_id=cand, started_at=utcnow(),
                      finished_at=utcnow())
        session.add(trial)
        session.flush()
        session.add_all([TrialResult(trial_pk=trial.id, iteration=i,
                                     metrics={"accuracy": 0.5 + i / 10}) for i in (1, 2)])
        run = session.get(Run, cand)
        run.study_id, run.trial_id = study.id, trial.trial_id
        run.exit_code, run.log_uri = 0, str(tmp_path / "cand.log")
        run.source = "alpha"  # 0009: the webhook source (TUNIX_RT_WEBHOOK_SECRETS)
        session.add(WebhookDelivery(id="msg_cand", event_type="run.completed",
                                    payload={"external_id": "cand"}, run_id=cand))
        session.add(Dispatch(key="msg_cand", run_id=cand, status=DispatchStatus.dispatched.value,
                             target="local", attempts=1, dispatched_at=utcnow(),
                             lease_until=utcnow(), claimed_by="loop:flow-run", claims=1))
        session.add(RunMetric(run_id=cand, name="train_loss", step=1, value=0.5))  # 0010
        session.add(JudgeCacheEntry(key="0" * 64, judge="llm", judge_version="1",
                                    verdict={"score": 1.0, "rationale": "ok"}))
        evaluation = session.scalars(select(Evaluation).where(Evaluation.run_id == cand)).one()
        evaluation.cost = {"calls": 40, "cache_hits": 0}
        evaluation.agreement_rate, evaluation.agreement_repeats = 0.9, 3
        session.add(EvaluationChunk(evaluation_id=evaluation.id, chunk_index=0, byte_start=0,
                                    byte_end=100, first_line=1, digest="0" * 64, n_verdicts=40,
                                    n_extra=0, cost=None, finished_at=utcnow()))  # 0012
    empty = sorted(t.name for t in Base.metadata.sorted_tables if count(engine, t) == 0)
    assert empty == [], f"_populate leaves these tables empty; give each a row: {empty}"


def _revisions(engine: Engine) -> list[str]:
    """Every revision from the first to the head."""
    script = ScriptDirectory.from_config(db.alembic_config(engine))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows as the database has them now (reflected, not as the models say)."""
    tables = MetaData()
    tables.reflect(engine)
    rows = {}
    with engine.connect() as conn:
        for table in tables.sorted_tables:
            if table.name == "alembic_version":
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            rows[table.name] = [dict(row) for row in
                                conn.execute(select(table).order_by(*order)).mappings()]
    return rows


def _assert_survived(before: dict[str, list[dict[str, Any]]],
                     after: dict[str, list[dict[str, Any]]], step: str) -> None:
    """Every table in both snapshots kept its rows, in the columns both have."""
    for name in before.keys() & after.keys():
        old, new = before[name], after[name]
        common = (old[0].keys() & new[0].keys()) if old and new else set()
        assert len(new) == len(old), f"{step}: {name} had {len(old)} rows, has {len(new)}"
        assert [{c: r[c] for c in common} for r in new] == \
            [{c: r[c] for c in common} for r in old], f"{step}: {name} rows changed"


def test_each_migration_keeps_the_rows_of_the_tables_it_keeps(engine: Engine,
                                                              tmp_path: Path) -> None:
    """Down one revision at a time from a full head and up again, data present each way.

    Each step down keeps every row of the tables it does not drop; each step up, run
    with every row that revision can hold, keeps them all and adds the tables it makes.
    """
    _populate(engine, tmp_path)
    revisions = _revisions(engine)
    assert revisions[-1] == db.SCHEMA_HEAD

    for lower, upper in reversed(list(zip(revisions, revisions[1:]))):
        at_upper = _snapshot(engine)
        db.downgrade(engine, lower)
        assert db.current_revision(engine) == lower
        at_lower = _snapshot(engine)
        assert at_lower.keys() <= at_upper.keys()
        assert any(at_lower.values()), f"no rows left at {lower}"
        _assert_survived(at_upper, at_lower, f"downgrade {upper} -> {lower}")

        db.upgrade(engine, upper)
        assert db.current_revision(engine) == upper
        again = _snapshot(engine)
        assert again.keys() == at_upper.keys()
        _assert_survived(at_lower, again, f"upgrade {lower} -> {upper}")

        db.downgrade(engine, lower)


def test_downgrade_to_base_and_back_with_rows_present(engine: Engine, tmp_path: Path) -> None:
    _populate(engine, tmp_path)

    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())

    db.upgrade(engine)
    assert db.current_revision(engine) == db.SCHEMA_HEAD
    assert TABLES <= set(inspect(engine).get_table_names())
    for table in Base.metadata.sorted_tables:
        assert count(engine, table) == 0, table.name

    # Usable again: the whole write path works on the recreated tables.
    run_id = evaluated_run(engine, tmp_path / "again", "after", correctness(20, 0.5, seed=3))
    with session_scope(engine) as session:
        assert rebuild_leaderboard(session, "arith", JUDGE) == 1
        assert set_baseline(session, run_id, JUDGE).run_id == run_id
    assert count(engine, Verdict) == 20
    # And populating every table again works: nothing the models need is missing.
    _populate(engine, tmp_path / "twice")


def test_evaluations_made_before_datasets_carry_over_with_coverage_unknown(
        engine: Engine, tmp_path: Path) -> None:
    """0.5.0's evaluations keep their scores; their coverage is unknown, never invented:
    their board entries are flagged and ranked below, and a gate against one says what
    to re-evaluate instead of comparing."""
    base = evaluated_run(engine, tmp_path, "base", correctness(40, 0.6, seed=1))
    cand = evaluated_run(engine, tmp_path, "cand", correctness(40, 0.7, seed=2))
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE)
        set_baseline(session, base, JUDGE)
    db.downgrade(engine, "20261124_0005")  # back to 0.5.0's schema, rows kept
    db.upgrade(engine)

    with session_scope(engine) as session:
        evaluations = session.scalars(select(Evaluation)).all()
        assert [(e.dataset_id, e.n_missing, e.n_extra) for e in evaluations] == [
            (None, None, None)] * 2
        assert {e.n_items for e in evaluations} == {40}  # the stored counts stay as they were
        entries = session.scalars(select(LeaderboardEntry)).all()
        assert [e.flag for e in entries] == ["coverage_unknown"] * 2
        rebuild_leaderboard(session, "arith", JUDGE)
        assert {e.flag for e in session.scalars(select(LeaderboardEntry))} == {
            "coverage_unknown"}
        report = gate_run(session, cand, JUDGE, GatePolicy())
    assert report.decision == "inconclusive"
    assert "predates datasets, so its item set is unknown" in report.reason
    assert f"`tunix-rt evaluate {cand} --judge {JUDGE} --force`" in report.reason


@pytest.mark.postgres
def test_unmigrated_postgres_is_refused_until_upgraded(pg_admin_url: str) -> None:
    url = create_database(pg_admin_url)
    try:
        for _ in range(2):  # refused every time, not only on the first call
            with pytest.raises(DatabaseNotMigratedError) as excinfo:
                db.get_engine(url)
            message = str(excinfo.value)
            assert "`tunix-rt db upgrade`" in message
            assert db.SCHEMA_HEAD in message
            assert "revision none" in message
        # Nothing was created behind the user's back.
        assert inspect(db.make_engine(url)).get_table_names() == []

        db.upgrade(db.make_engine(url))
        engine = db.get_engine(url)
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    finally:
        db.dispose_engines()


@pytest.mark.parametrize("touch", [False, True], ids=["new-file", "empty-file"])
def test_embedded_sqlite_is_migrated_on_first_use(tmp_path: Path, touch: bool) -> None:
    path = tmp_path / "nested" / "tunix_rt.db"
    if touch:
        path.parent.mkdir(parents=True)
        path.touch()
    url = f"sqlite:///{path}"
    try:
        engine = db.get_engine(url)
        assert path.exists()
        assert db.current_revision(engine) == db.SCHEMA_HEAD
        assert TABLES <= set(inspect(engine).get_table_names())
        assert db.get_engine(url) is engine  # cached
    finally:
        db.dispose_engines()
