"""Faults in schema migration: upgrades that race, die half-way, or start from any earlier
revision.

Upgrades race when a deploy runs ``tunix-rt db upgrade`` on two hosts, or a Prefect pull
step runs it before each of two flow runs that start together. They run here as real
processes on a real PostgreSQL (and on the embedded SQLite file), released together by
a start line after their imports so that the race is not left to chance, and the
database is checked afterwards: at head exactly once, the schema the models declare,
nothing on stderr but the note that one waited. Commands that start while an upgrade
runs wait for it; a process killed half-way through an upgrade leaves the database at
the revision it started from.

An installed tunix-rt may be any earlier release, so a database at each earlier
revision, with rows in every table it has, is taken to head in one ``upgrade``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from tests.cli.conftest import COMMAND, UNREACHABLE_PREFECT
from tests.db.test_migrations import _assert_survived, _populate, _revisions, _snapshot
from tests.pgserver import create_database
from tests.reliability.processes import Receiver, free_port, tunix_rt_env
from tests.waiting import wait_for
from tunix_rt.store import db
from tunix_rt.store.models import Base

pytestmark = [pytest.mark.reliability, pytest.mark.cli]

# A race need not show every time: before the fix PostgreSQL's lost 3 rounds of 5.
# SQLite's file lock is cheaper to show, and its WAL race has a test of its own.
PG_ROUNDS, SQLITE_ROUNDS = 5, 3
TIMEOUT_S = 180

# A contender does its imports, says it is ready, and waits for the start line: the
# processes then reach the database within milliseconds of each other, which a bare
# `tunix-rt db upgrade` (a second of imports each) leaves to chance.
CONTENDER = r"""
import pathlib, sys, time
import alembic.command, psycopg, sqlalchemy.dialects.sqlite  # what the first query needs
import tunix_rt.store.db, tunix_rt.store.models
from tunix_rt.cli import main
pathlib.Path(sys.argv[1]).touch()
start = pathlib.Path(sys.argv[2])
while not start.exists():
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


@dataclass(frozen=True)
class Outcome:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"$ tunix-rt {' '.join(self.args)}: exit {self.code}\n--- stdout\n"
                f"{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-4000:]}")


def at_once(url: str, *commands: Sequence[str]) -> list[Outcome]:
    """Run each ``tunix-rt`` command in its own process, released together; their outcomes.

    Output goes to files, not pipes, so that a process blocked on a full pipe never
    holds a lock another one waits for.
    """
    env = dict(os.environ, TUNIX_RT_DATABASE_URL=url, PREFECT_API_URL=UNREACHABLE_PREFECT)
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp, "start")
        started = []
        for i, args in enumerate(commands):
            out, err = Path(tmp, f"{i}.out").open("w+"), Path(tmp, f"{i}.err").open("w+")
            proc = subprocess.Popen(
                [sys.executable, "-c", CONTENDER, str(Path(tmp, f"{i}.ready")), str(start),
                 *args], env=env, stdout=out, stderr=err, text=True)
            started.append((tuple(args), proc, out, err))
        try:
            for i, (_, proc, _, err) in enumerate(started):
                wait_for(lambda i=i: Path(tmp, f"{i}.ready").exists(), TIMEOUT_S,
                         f"contender {i} to finish its imports", proc=proc,
                         log=Path(err.name))
            start.touch()
            outcomes = []
            for args, proc, out, err in started:
                code = proc.wait(timeout=TIMEOUT_S)
                with out, err:
                    out.seek(0)
                    err.seek(0)
                    outcomes.append(Outcome(args, code, out.read(), err.read()))
            return outcomes
        finally:
            for _, proc, _, _ in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def schema_diff(engine: Engine) -> list:
    """What differs between the database's schema and the models (empty: nothing)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def assert_at_head_once(engine: Engine) -> None:
    """One alembic_version row, the head, and the schema the models declare."""
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [db.SCHEMA_HEAD]
    assert schema_diff(engine) == []


# The one note an upgrade that waited for another may print; anything else on stderr is
# an error or a warning a user would have to read.
WAITING = "tunix-rt: another migration of this database is running; waiting for it to finish"


def assert_quiet_success(outcome: Outcome) -> None:
    assert outcome.code == 0, str(outcome)
    assert [line for line in outcome.stderr.splitlines() if line != WAITING] == [], str(outcome)


def assert_upgraded(outcomes: list[Outcome], before: str | None) -> None:
    """Every upgrade exited 0 and quietly and says the database is at head; exactly one
    found it at ``before`` and migrated it, the others found it at head once they held
    the lock."""
    was = before or "empty"
    for outcome in outcomes:
        assert_quiet_success(outcome)
    said = sorted(o.stdout.strip() for o in outcomes)
    assert said == sorted([f"database at {db.SCHEMA_HEAD} (was {was})"] + [
        f"database at {db.SCHEMA_HEAD} (was {db.SCHEMA_HEAD})"] * (len(outcomes) - 1)), \
        "\n".join(map(str, outcomes))


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    engine = db.make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _spawn(url: str, args: Sequence[str], folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    """``tunix-rt ARGS`` started on ``url`` with its output in files; the process and files."""
    env = dict(os.environ, TUNIX_RT_DATABASE_URL=url, PREFECT_API_URL=UNREACHABLE_PREFECT)
    name = "-".join(args).replace("/", "_")
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([*COMMAND, *args], env=env, stdout=stdout, stderr=stderr,
                                text=True)
    return proc, out, err


def _finish(proc: subprocess.Popen, out: Path, err: Path, args: Sequence[str]) -> Outcome:
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Outcome(tuple(args), code, out.read_text(), err.read_text())


def _spawn_serve(url: str, folder: Path) -> Receiver:
    """``tunix-rt serve`` on a free loopback port, not waited for (it may be waiting)."""
    folder.mkdir(parents=True)
    port, log = free_port(), folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*COMMAND, "serve", "--port", str(port)],
                                env=tunix_rt_env(url, folder / "prefect"), cwd=folder,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Receiver(proc, f"http://127.0.0.1:{port}", log, folder / "prefect")


# --- Two upgrades at once -------------------------------------------------------------

@pytest.mark.postgres
def test_two_upgrades_at_once_on_a_new_postgres_database_migrate_it_once(
        pg_admin_url: str) -> None:
    """Before: one of the two failed on "duplicate key value violates unique constraint
    pg_type_typname_nsp_index" (both created alembic_version), an internal error, exit 4."""
    for _ in range(PG_ROUNDS):
        url = create_database(pg_admin_url, prefix="race")
        outcomes = at_once(url, ["db", "upgrade"], ["db", "upgrade"])
        assert_upgraded(outcomes, None)
        with engine_for(url) as engine:
            assert_at_head_once(engine)


def test_two_upgrades_at_once_on_a_new_sqlite_file_migrate_it_once(tmp_path: Path) -> None:
    """Before: one of the two failed on "table alembic_version already exists" or "table
    runs already exists" (`db upgrade` did not take the lock the first-use path takes)."""
    for r in range(SQLITE_ROUNDS):
        url = f"sqlite:///{tmp_path / f'race{r}.db'}"
        outcomes = at_once(url, ["db", "upgrade"], ["db", "upgrade"])
        assert_upgraded(outcomes, None)
        with engine_for(url) as engine:
            assert_at_head_once(engine)


def test_an_upgrade_and_a_first_use_at_once_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """`tunix-rt db upgrade` and a command that migrates the embedded file on first use,
    started together: both succeed, the file is migrated once."""
    for r in range(SQLITE_ROUNDS):
        url = f"sqlite:///{tmp_path / f'mixed{r}.db'}"
        upgraded, listed = at_once(url, ["db", "upgrade"], ["runs", "list", "--format", "json"])
        assert_quiet_success(upgraded)
        assert_quiet_success(listed)
        assert json.loads(listed.stdout)["runs"] == [], str(listed)
        with engine_for(url) as engine:
            assert_at_head_once(engine)


def _clone(engine: Engine, db_url: str, pg_admin_url: str | None, folder: Path,
           name: str) -> str:
    """A copy of the database behind ``engine``, as it is now; its URL."""
    if engine.dialect.name == "sqlite":
        path = folder / f"{name}.db"
        with engine.connect() as conn:
            conn.exec_driver_sql(f"VACUUM INTO '{path}'")
        return f"sqlite:///{path}"
    from sqlalchemy.engine import make_url

    engine.dispose()  # a template must have no open connections
    return create_database(pg_admin_url, prefix="from", template=make_url(db_url).database)


# --- From every earlier revision --------------------------------------------------------

def test_one_upgrade_from_every_earlier_revision_keeps_the_rows(
        engine: Engine, db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """For each revision before head: a database at it with rows in every table it has,
    taken to head by one upgrade (as a user skipping releases does), keeps every row in
    the columns both revisions have, and ends with the schema the models declare."""
    admin = request.getfixturevalue("pg_admin_url") if engine.dialect.name != "sqlite" else None
    _populate(engine, tmp_path)
    revisions = _revisions(engine)
    assert len(revisions) >= 2 and revisions[-1] == db.SCHEMA_HEAD
    for revision in reversed(revisions[:-1]):
        db.downgrade(engine, revision)  # one step down from the previous one
        at_revision = _snapshot(engine)
        empty = sorted(name for name, rows in at_revision.items() if not rows)
        assert empty == [], f"at {revision} these tables have no rows: {empty}"

        url = _clone(engine, db_url, admin, tmp_path, revision)
        with engine_for(url) as copy:
            assert db.upgrade(copy) == revision
            assert_at_head_once(copy)
            _assert_survived(at_revision, _snapshot(copy), f"upgrade {revision} -> head")


@pytest.mark.postgres
def test_two_upgrades_at_once_from_the_first_revision_with_rows(
        tmp_path: Path, pg_admin_url: str, pg_template: str) -> None:
    """The longest upgrade there is, twice at once, on a database full of rows: one
    migrates it, the other waits and finds head; every row is still there."""
    url = create_database(pg_admin_url, template=pg_template)
    with engine_for(url) as engine:
        _populate(engine, tmp_path)
        first = _revisions(engine)[0]
        db.downgrade(engine, first)
        before = _snapshot(engine)
    outcomes = at_once(url, ["db", "upgrade"], ["db", "upgrade"])
    assert_upgraded(outcomes, first)
    with engine_for(url) as engine:
        assert_at_head_once(engine)
        _assert_survived(before, _snapshot(engine), f"two upgrades {first} -> head")


# --- Commands that start while an upgrade runs ------------------------------------------

@pytest.mark.postgres
def test_commands_started_during_an_upgrade_wait_for_it(
        tmp_path: Path, pg_admin_url: str, pg_template: str) -> None:
    """An upgrade held mid-way (its first step done, its transaction open, blocked on a
    lock the test holds on alembic_version): a second `db upgrade` says it waits and
    waits; a command that reads (`runs list`) and `tunix-rt serve` wait rather than
    refuse or read a half-migrated schema; once the upgrade commits, all succeed.

    Before: `runs list` and `serve` exited 3 at once, "the database is at schema revision
    ...; run `tunix-rt db upgrade`", while the upgrade they named was running."""
    url = create_database(pg_admin_url, template=pg_template)
    with engine_for(url) as engine:
        first = _revisions(engine)[0]
        db.downgrade(engine, first)
    holder = db.make_engine(url)
    server = None
    try:
        with holder.connect() as hold:
            # Readers of alembic_version pass; the upgrade's UPDATE of it waits.
            hold.exec_driver_sql("LOCK TABLE alembic_version IN EXCLUSIVE MODE")

            def waiting(query: str) -> int:
                # On another connection: a transaction sees one snapshot of pg_stat_activity.
                with holder.connect() as conn:
                    return conn.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock' AND query LIKE :q"),
                        {"q": query}).scalar()

            upgrading = _spawn(url, ["db", "upgrade"], tmp_path)
            wait_for(lambda: waiting("UPDATE alembic_version%"), TIMEOUT_S,
                     "the upgrade to block on alembic_version", proc=upgrading[0],
                     log=upgrading[2])
            (tmp_path / "second").mkdir()
            (tmp_path / "reader").mkdir()
            second = _spawn(url, ["db", "upgrade"], tmp_path / "second")
            reader = _spawn(url, ["runs", "list", "--format", "json"], tmp_path / "reader")
            server = _spawn_serve(url, tmp_path / "serve")
            wait_for(lambda: second[2].read_text() == WAITING + "\n", TIMEOUT_S,
                     "the second upgrade to say it waits", proc=second[0], log=second[2])
            wait_for(lambda: waiting("SELECT pg_advisory_lock%") == 3, TIMEOUT_S,
                     "the second upgrade, the reader and serve to wait for the migration "
                     "lock", alive=lambda: reader[0].poll() is None and server.alive(),
                     log=server.log)
            assert second[0].poll() is None and reader[0].poll() is None and server.alive()
            hold.rollback()  # the lock goes: the first upgrade finishes
        upgraded = _finish(*upgrading, ["db", "upgrade"])
        waited = _finish(*second, ["db", "upgrade"])
        listed = _finish(*reader, ["runs", "list"])
        wait_for(lambda: server.healthz() == 200, TIMEOUT_S, "serve's /healthz",
                 proc=server.proc, log=server.log)
        answer = httpx.get(f"{server.url}/api/runs", timeout=30)
        assert answer.status_code == 200 and answer.json()["runs"] == []
    finally:
        if server is not None:
            server.stop()
        holder.dispose()
    assert_upgraded([upgraded, waited], first)
    assert waited.stdout.strip() == f"database at {db.SCHEMA_HEAD} (was {db.SCHEMA_HEAD})"
    assert_quiet_success(listed)
    assert json.loads(listed.stdout)["runs"] == []
    with engine_for(url) as engine:
        assert_at_head_once(engine)


# --- Two processes opening a new embedded file --------------------------------------------

def _has_open(proc: subprocess.Popen, path: Path) -> bool:
    """Whether ``proc`` has ``path`` open (Linux: its /proc/PID/fd links)."""
    folder = Path(f"/proc/{proc.pid}/fd")
    try:
        return any(os.path.realpath(link) == str(path.resolve()) for link in folder.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_first_use_of_a_new_file_another_process_is_converting(tmp_path: Path) -> None:
    """A process converting a new embedded file to WAL holds a write lock for a moment;
    another that opens the file then must wait for it, not fail.

    Before: SQLite answered "database is locked" at once to the second process's
    `PRAGMA journal_mode=WAL` (its busy handler is not used there), and `tunix-rt runs
    list` exited 3. About one start in a hundred on a new file lost this race; here the
    other process is a connection of the test holding the write lock it would hold."""
    import sqlite3

    path = tmp_path / "new.db"
    path.touch(mode=0o600)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        args = ["runs", "list", "--format", "json"]
        proc, out, err = _spawn(f"sqlite:///{path}", args, tmp_path)
        wait_for(lambda: _has_open(proc, path), TIMEOUT_S, "the command to open the file",
                 proc=proc, log=err)
        holder.rollback()
        listed = _finish(proc, out, err, args)
    finally:
        holder.close()
    assert_quiet_success(listed)
    assert json.loads(listed.stdout)["runs"] == []
    with engine_for(f"sqlite:///{path}") as engine:
        assert_at_head_once(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# --- An upgrade that dies half-way ---------------------------------------------------------

# An upgrade in a process that dies (os._exit: no cleanup, as a kill -9 or a lost host)
# just before it records its Nth revision: by then it has changed the schema that far.
DIES = r"""
import os, sys
from sqlalchemy import event
from tunix_rt.store import db
engine = db.make_engine(sys.argv[1])
stamps = []
@event.listens_for(engine, "before_cursor_execute")
def die(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("UPDATE ALEMBIC_VERSION"):
        stamps.append(statement)
        if len(stamps) == int(sys.argv[2]):
            os._exit(9)
db.upgrade(engine)
"""


def test_an_upgrade_that_dies_half_way_leaves_the_database_as_it_was(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """A process killed in the middle of an upgrade from the first revision leaves the
    database at that revision with its rows, not between two, and `tunix-rt db upgrade`
    then takes it to head.

    Before, on SQLite: each statement of a migration committed on its own, so the death
    left the schema of the revision after the one recorded, and every later upgrade
    failed on the table or column it had already made ("table ... already exists")."""
    _populate(engine, tmp_path)
    revisions = _revisions(engine)
    first = revisions[0]
    db.downgrade(engine, first)
    before = _snapshot(engine)
    engine.dispose()

    stamp = min(2, len(revisions) - 1)  # dies before recording its second revision
    proc = subprocess.run([sys.executable, "-c", DIES, db_url, str(stamp)], text=True,
                          capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 9, f"the upgrade did not die where planned\n{proc.stderr}"
    assert db.current_revision(engine) == first
    assert _snapshot(engine) == before  # every table, column and row as it was
    engine.dispose()

    args = ["db", "upgrade"]
    upgraded = _finish(*_spawn(db_url, args, tmp_path), args)
    assert_quiet_success(upgraded)
    assert upgraded.stdout.strip() == f"database at {db.SCHEMA_HEAD} (was {first})"
    assert_at_head_once(engine)
    _assert_survived(before, _snapshot(engine), f"upgrade {first} -> head after a death")


# --- A database a newer tunix-rt migrated ---------------------------------------------------

NEWER = "29991231_9999"  # a revision of a tunix-rt newer than this one


def test_a_database_a_newer_tunix_rt_migrated_is_refused_clearly(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """Rolling tunix-rt back after a newer one migrated the database: `db upgrade` and
    every other command say what happened and what to do (exit 3), and leave the
    database as it is.

    Before: `db upgrade` (and on SQLite every command) was an internal error with a
    traceback, "Can't locate revision identified by ..." (exit 4); on PostgreSQL the
    other commands said to run `tunix-rt db upgrade`, which then failed that way."""
    _populate(engine, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
    before = _snapshot(engine)
    engine.dispose()

    for args in (["db", "upgrade"], ["runs", "list"]):
        outcome = _finish(*_spawn(db_url, args, tmp_path), args)
        assert outcome.code == 3, str(outcome)
        assert outcome.stdout == "", str(outcome)
        [line] = outcome.stderr.splitlines()
        assert line.startswith("tunix-rt: error: "), str(outcome)
        assert f"at schema revision {NEWER}, which this tunix-rt" in line
        assert f"newest is {db.SCHEMA_HEAD}" in line and "newer tunix-rt" in line
        assert "db upgrade`" not in line  # it would not help
    assert _snapshot(engine) == before
