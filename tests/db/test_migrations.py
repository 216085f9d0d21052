"""Migrations: one head that the code expects, a schema equal to the models, a clean round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from tests.db.support import JUDGE, count, evaluated_run
from tests.factories import correctness
from tests.pgserver import create_database
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.errors import DatabaseNotMigratedError
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.store.models import (Base, Baseline, BaselinePromotion, Evaluation, GateResult,
                             LeaderboardEntry, Run, Verdict)
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.quality.stats import GatePolicy

TABLES = {t.name for t in Base.metadata.sorted_tables}
ALL_MODELS = (Run, Evaluation, Verdict, LeaderboardEntry, Baseline, BaselinePromotion,
              GateResult)


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
    base = evaluated_run(engine, tmp_path, "base", correctness(40, 0.6, seed=1))
    cand = evaluated_run(engine, tmp_path, "cand", correctness(40, 0.7, seed=2))
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE)
        set_baseline(session, base, JUDGE)
        gate_run(session, cand, JUDGE, GatePolicy())
    for model in ALL_MODELS:
        assert count(engine, model) > 0, model.__tablename__


def test_downgrade_to_base_and_back_with_rows_present(engine: Engine, tmp_path: Path) -> None:
    _populate(engine, tmp_path)

    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())

    db.upgrade(engine)
    assert db.current_revision(engine) == db.SCHEMA_HEAD
    assert TABLES <= set(inspect(engine).get_table_names())
    for model in ALL_MODELS:
        assert count(engine, model) == 0, model.__tablename__

    # Usable again: the whole write path works on the recreated tables.
    run_id = evaluated_run(engine, tmp_path / "again", "after", correctness(20, 0.5, seed=3))
    with session_scope(engine) as session:
        assert rebuild_leaderboard(session, "arith", JUDGE) == 1
        assert set_baseline(session, run_id, JUDGE).run_id == run_id
    assert count(engine, Verdict) == 20


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
