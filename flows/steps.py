"""Prefect deployment steps of tunix-rt (named by their dotted path in prefect.yaml).

A pull step runs in the flow run's own process, with the interpreter the worker runs,
before the flow is loaded. Being Python, not a shell command, it needs nothing on PATH:
a worker started as ``/path/to/venv/bin/prefect worker start`` without the venv
activated runs it all the same.
"""

from __future__ import annotations

import logging

log = logging.getLogger("tunix_rt.steps")

# Any constant will do: the key of the PostgreSQL advisory lock that makes concurrent
# upgrades (two flow runs starting at once on a new release) run one after the other.
_MIGRATION_LOCK_KEY = 0x7475_6E69_7872_7401


def upgrade_database() -> dict[str, str]:
    """Migrate the configured database to the schema this tunix-rt needs (``tunix-rt db
    upgrade``), so a worker on a new release never meets an old schema.

    Returns ``{"schema_revision": <head>}`` (a step's output may feed later steps).
    """
    from tunix_rt.store import db

    engine = db.get_engine(migrate_embedded=False)
    if db.current_revision(engine) != db.SCHEMA_HEAD:
        if engine.dialect.name == "sqlite":
            db.get_engine()  # SQLite is migrated on first use, under a lock beside the file
        else:
            _upgrade_locked(engine)
    return {"schema_revision": db.SCHEMA_HEAD}


def _upgrade_locked(engine) -> None:  # noqa: ANN001 - a SQLAlchemy Engine
    from sqlalchemy import text

    from tunix_rt.store import db

    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        try:
            # Another flow run may have migrated while this one waited for the lock.
            if db.current_revision(engine) != db.SCHEMA_HEAD:
                db.upgrade(engine)
                log.info("database migrated to %s", db.SCHEMA_HEAD)
        finally:
            if postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                conn.commit()
