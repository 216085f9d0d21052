"""Alembic environment for tunix-rt.

When tunix-rt runs a migration itself (``tunix_rt.store.db.upgrade``) it hands over a
connection that already holds the migration lock (``config.attributes["connection"]``).
When a developer runs ``alembic`` by hand the engine comes from ``sqlalchemy.url`` or the
configured ``TUNIX_RT_DATABASE_URL``, and the lock is taken here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from tunix_rt.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from tunix_rt.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        _migrate_sqlite(connection)
        return
    # PostgreSQL has transactional DDL: every revision of one upgrade in one transaction.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


def _migrate_sqlite(connection: Connection) -> None:
    """Every revision of one upgrade in one SQLite transaction, as on PostgreSQL.

    Python's sqlite3 lets each DDL statement commit on its own, so a process that died
    half-way left the schema of a revision the version table did not record, and every
    later upgrade failed on a table it had already made. With the driver's own
    transaction handling off, one BEGIN IMMEDIATE covers the whole upgrade: a death rolls
    it back, and readers (WAL) see the old schema until the commit.
    """
    connection.commit()
    # Batch mode rebuilds a SQLite table by copy-and-drop, which enforced foreign keys
    # forbid while other tables point at it. The pragma only takes effect outside a
    # transaction.
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    raw = connection.connection.driver_connection
    legacy = raw.isolation_level
    raw.isolation_level = None  # the driver no longer begins or commits by itself
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if connection.in_transaction():
            connection.rollback()
        raw.isolation_level = legacy
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def run_migrations_online() -> None:
    """On the connection tunix-rt hands over (it holds the migration lock), else on a new
    one that takes the lock here, so that `alembic upgrade` by hand is serialized too."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    from tunix_rt.store.db import migration_lock

    engine = config.attributes.get("engine") or create_engine(_url())
    with engine.connect() as connection, migration_lock(connection):
        _migrate(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
