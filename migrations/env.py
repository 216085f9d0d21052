"""Alembic environment for tunix-rt.

The engine comes from ``tunix_rt.store.db.alembic_config`` (``config.attributes["engine"]``)
when tunix-rt runs a migration itself, or from ``sqlalchemy.url`` / the configured
``TUNIX_RT_DATABASE_URL`` when a developer runs ``alembic`` by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

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


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_engine(_url())
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a SQLite table by copy-and-drop, which enforced foreign
            # keys forbid while other tables point at it. The pragma only takes effect
            # outside a transaction.
            connection.commit()
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
