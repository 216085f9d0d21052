"""Engines, sessions and schema migration.

Engines are cached per URL. Sessions come from :func:`session_scope`, which owns the
transaction: query functions elsewhere take a session and never commit.

The embedded default (a SQLite file) is migrated to head on first use, so
``tunix-rt`` works with nothing configured. Any other database must be migrated on
purpose with ``tunix-rt db upgrade``; until then every command says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from tunix_rt.errors import DatabaseNotMigratedError
from tunix_rt.settings import database_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The Alembic head this code expects. tests/db/test_migrations.py checks it against
# the revisions in migrations/versions, so the two cannot drift apart.
SCHEMA_HEAD = "20261130_0013"

_engines: dict[str, Engine] = {}
_checked: set[str] = set()
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers (the CLI, the
    # HTTP service) proceed while a flow writes; busy_timeout waits out a writer.
    cursor.execute("PRAGMA foreign_keys=ON")
    _journal_mode_wal(cursor)
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _journal_mode_wal(cursor) -> None:  # noqa: ANN001 - a DB-API cursor
    """Switch the file to WAL, retrying "database is locked" for up to 30 s.

    Two processes opening a new file at once both convert it, and SQLite answers one of
    them "database is locked" at once, without its busy handler (a CLI and a service
    started together on the embedded default: one failed). Once the file is in WAL the
    pragma only reads, so only the first connections ever retry.
    """
    import sqlite3
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` with the pragmas and pool settings tunix-rt relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            _create_private(parsed.database)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _create_private(path: str) -> None:
    """Create a new SQLite file readable by its owner only (its -wal and -shm files follow
    its mode); an existing file is left as it is."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def get_engine(url: str | None = None, *, migrate_embedded: bool = True) -> Engine:
    """The cached engine for ``url`` (default: the configured database), schema checked.

    The first call for a URL checks the schema revision: a SQLite database behind
    head is upgraded in place; any other database behind head, once any upgrade running
    on it has finished, raises :class:`DatabaseNotMigratedError` with the command that
    fixes it.
    """
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        if url not in _checked and migrate_embedded:
            _ensure_schema(engine)
            _checked.add(url)
    return engine


def dispose_engines() -> None:
    """Close every cached engine (tests, and processes that fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _checked.clear()


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" in str(exc):
            return None
        raise


def _ensure_schema(engine: Engine) -> None:
    revision = current_revision(engine)
    if revision == SCHEMA_HEAD:
        return
    if engine.dialect.name == "sqlite":
        # Under the migration lock: a process that waited finds head and does nothing.
        upgrade(engine)
        return
    # An upgrade may be running (a deploy's, a flow run's pull step): wait it out, then
    # look again, so that a process starting meanwhile neither refuses nor reads a schema
    # half-way between revisions. With no upgrade running the lock is free at once.
    with engine.connect() as connection, migration_lock(connection):
        pass
    revision = current_revision(engine)
    if revision == SCHEMA_HEAD:
        return
    _refuse_unknown(engine, revision)
    raise DatabaseNotMigratedError(
        f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision "
        f"{revision or 'none'}, this tunix-rt needs {SCHEMA_HEAD}; run `tunix-rt db upgrade`")


# The key of the PostgreSQL advisory lock every migration holds: "tunixrt" in ASCII.
# Advisory locks are scoped to one database, so databases on one server do not contend.
MIGRATION_LOCK_KEY = 0x74756E69787274


@contextmanager
def migration_lock(connection: Connection,
                   on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the database's migration lock on ``connection`` while a migration runs on it.

    Two upgrades at once (two hosts deploying, two flow runs' pull steps, a service and a
    CLI on a new embedded file) would otherwise both create the same tables, and all but
    one fail. With the lock the later one waits, then finds the database at head.
    PostgreSQL: a session advisory lock, released by the server if the process dies.
    SQLite: an exclusive lock on a file beside the database. ``on_wait`` is called once
    if another migration holds the lock.
    """
    if connection.dialect.name == "postgresql":
        with _advisory_lock(connection, on_wait):
            yield
    elif connection.dialect.name == "sqlite":
        with _file_lock(connection.engine.url.database, on_wait):
            yield
    else:
        yield


@contextmanager
def _advisory_lock(connection: Connection,
                   on_wait: Callable[[], None] | None) -> Iterator[None]:
    key = {"key": MIGRATION_LOCK_KEY}
    if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
        if on_wait is not None:
            on_wait()
        connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
    connection.commit()  # a session lock outlives the transaction that took it
    try:
        yield
    finally:
        try:
            if connection.in_transaction():
                connection.rollback()  # a failed migration's transaction
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            connection.commit()
        except DBAPIError:
            # The session is gone or unusable: closing it releases the lock, and a pooled
            # connection must not go back to the pool still holding it.
            connection.invalidate()


@contextmanager
def _file_lock(database: str | None, on_wait: Callable[[], None] | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    import fcntl
    import os

    with os.fdopen(os.open(f"{database}.migrate.lock", os.O_WRONLY | os.O_CREAT, 0o600),
                   "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alembic_config(engine: Engine):  # noqa: ANN201  (alembic is imported lazily)
    """An Alembic config bound to ``engine``, wherever tunix-rt is installed."""
    from alembic.config import Config

    from tunix_rt import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine | None = None, revision: str = "head", *,
            on_wait: Callable[[], None] | None = None) -> str | None:
    """Migrate the database to ``revision`` (Alembic ``upgrade``) under the migration
    lock; returns the revision it was at once the lock was held (what this call migrated
    from: head if another process had just migrated it)."""
    from alembic import command
    from alembic.migration import MigrationContext

    engine = engine or get_engine(migrate_embedded=False)
    with engine.connect() as connection, migration_lock(connection, on_wait):
        before = MigrationContext.configure(connection).get_current_revision()
        connection.commit()
        if revision == "head":
            _refuse_unknown(engine, before)
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection  # migrations/env.py runs on it
        command.upgrade(cfg, revision)
    return before


def _refuse_unknown(engine: Engine, revision: str | None) -> None:
    """Raise if the database is at a revision this tunix-rt has no migration for.

    A newer tunix-rt migrated it (a deploy rolled back): upgrading cannot help, and
    Alembic's own error is an internal one with a traceback.
    """
    if revision is None or revision == SCHEMA_HEAD:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    if revision in {rev.revision for rev in script.walk_revisions()}:
        return
    from tunix_rt import __version__

    raise DatabaseNotMigratedError(
        f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision "
        f"{revision}, which this tunix-rt {__version__} does not know (its newest is "
        f"{SCHEMA_HEAD}): a newer tunix-rt migrated it; run that version, or restore a copy "
        "of the database from before")


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (Alembic ``downgrade``), under the lock."""
    from alembic import command

    with engine.connect() as connection, migration_lock(connection):
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    from sqlalchemy.orm import Session

    with Session(engine or get_engine(), expire_on_commit=False) as session, session.begin():
        yield session
